"""The Noise handshake ``Noise_NNpsk0_25519_ChaChaPoly_SHA256`` and its transport ciphers.

Revision 34 of the Noise Protocol Framework (https://noiseprotocol.org/noise.html), pattern NNpsk0::

    -> psk, e
    <- e, ee

Only peers holding the same 32-byte pre-shared key (the network key) complete it; the two ephemeral keys give
forward secrecy. Neither side is authenticated by the handshake itself: callers sign :attr:`handshake_hash`
with their identity keys to bind who they are to this session (channel binding, spec §11.2).

Pure: no I/O, no clock, no randomness. The caller passes a fresh ephemeral key for every handshake, so tests
can inject the keys of published test vectors. Garbage from a peer raises :class:`RemoteProtocolError`, and
calls out of turn raise :class:`LocalProtocolError`.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from p2pnode.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["PROTOCOL_NAME", "PSK_BYTES", "CipherState", "NoiseHandshake"]

PROTOCOL_NAME = b"Noise_NNpsk0_25519_ChaChaPoly_SHA256"
PSK_BYTES = 32
_KEY_BYTES = 32  # DHLEN of 25519 and HASHLEN of SHA256
_TAG_BYTES = 16
# Spec §3; our handshake messages are 48 bytes plus the payload.
_MAX_HANDSHAKE_MESSAGE = 65535
_MAX_NONCE = 2**64 - 1  # reserved by the spec (§5.1): reaching it ends the session


def _sha256(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


def _hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> list[bytes]:
    """Noise's HKDF (§4.3) is RFC 5869 HKDF-SHA256 with salt = chaining key and empty info."""
    okm = HKDF(hashes.SHA256(), _KEY_BYTES * outputs, chaining_key, b"").derive(ikm)
    return [okm[i : i + _KEY_BYTES] for i in range(0, len(okm), _KEY_BYTES)]


class CipherState:
    """One direction of a session: a ChaCha20-Poly1305 key and a 64-bit counter nonce (spec §5.1).

    Every message uses the next nonce, so messages must be decrypted in the order they were encrypted: a
    replayed, dropped or reordered message fails. A failed decryption does not use up the nonce.
    Noise limits messages to 65535 bytes; we do not, because our websocket frames each message and carries
    its length, so one message may hold a whole frame.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != _KEY_BYTES:
            raise ValueError("a ChaChaPoly key is 32 bytes")
        self._aead = ChaCha20Poly1305(key)
        self._nonce = 0

    @property
    def nonce(self) -> int:
        """How many messages this cipher has encrypted or decrypted."""
        return self._nonce

    def encrypt(self, plaintext: bytes, ad: bytes = b"") -> bytes:
        """Ciphertext of ``plaintext`` (16 bytes longer), authenticating ``ad`` too."""
        if self._nonce >= _MAX_NONCE:
            raise LocalProtocolError("nonce exhausted: this session cannot send more")
        ciphertext = self._aead.encrypt(self._nonce_bytes(), plaintext, ad)
        self._nonce += 1
        return ciphertext

    def decrypt(self, ciphertext: bytes, ad: bytes = b"") -> bytes:
        """Plaintext of the next message; :class:`RemoteProtocolError` if it does not authenticate."""
        if self._nonce >= _MAX_NONCE:
            raise RemoteProtocolError("nonce exhausted: the peer sent too much")
        try:
            plaintext = self._aead.decrypt(self._nonce_bytes(), ciphertext, ad)
        except InvalidTag:
            raise RemoteProtocolError(
                "cannot decrypt: wrong network key, or a tampered, replayed "
                "or reordered message"
            ) from None
        self._nonce += 1
        return plaintext

    def _nonce_bytes(self) -> bytes:
        return b"\x00" * 4 + self._nonce.to_bytes(8, "little")  # spec §12.3


class NoiseHandshake:
    """One side of an NNpsk0 handshake: the initiator writes the first message, the responder the second.

    Initiator: ``write_message`` then ``read_message``. Responder: ``read_message`` then ``write_message``.
    Both payloads are encrypted (under the psk only for the first one). Once :attr:`complete`,
    :meth:`split` gives the transport ciphers and :attr:`handshake_hash` the value to sign. A failed read
    ends the handshake: every later call raises :class:`LocalProtocolError`.
    """

    def __init__(
        self,
        *,
        initiator: bool,
        psk: bytes,
        ephemeral: x25519.X25519PrivateKey,
        prologue: bytes = b"",
    ) -> None:
        if len(psk) != PSK_BYTES:
            raise ValueError(f"the pre-shared key must be {PSK_BYTES} bytes")
        self.initiator = initiator
        self._psk = bytes(psk)
        self._ephemeral = ephemeral
        self._remote_ephemeral = b""
        # Messages done: 0 before "-> psk, e", 1 before "<- e, ee", 2 when complete.
        self._step = 0
        self._failed = False
        self._split = False
        self._h = _sha256(PROTOCOL_NAME)  # the name is longer than 32 bytes (§5.2)
        self._ck = self._h
        self._cipher: CipherState  # keyed by the psk token, before any payload
        self._mix_hash(prologue)

    @property
    def complete(self) -> bool:
        return self._step == 2

    @property
    def handshake_hash(self) -> bytes:
        """The transcript hash h, unique to this session: sign it to bind an identity to it."""
        if not self.complete:
            raise LocalProtocolError("the handshake hash is final only once complete")
        return self._h

    def write_message(self, payload: bytes = b"") -> bytes:
        """Our next handshake message, carrying ``payload`` encrypted."""
        self._check_turn(writing=True)
        if _KEY_BYTES + len(payload) + _TAG_BYTES > _MAX_HANDSHAKE_MESSAGE:
            raise LocalProtocolError("handshake payload too long")
        e = self._ephemeral.public_key().public_bytes_raw()
        self._tokens(e)
        ciphertext = self._cipher.encrypt(payload, self._h)  # EncryptAndHash
        self._mix_hash(ciphertext)
        self._step += 1
        return e + ciphertext

    def read_message(self, message: bytes) -> bytes:
        """The payload of the peer's handshake message; :class:`RemoteProtocolError` if it is refused."""
        self._check_turn(writing=False)
        if not _KEY_BYTES + _TAG_BYTES <= len(message) <= _MAX_HANDSHAKE_MESSAGE:
            raise RemoteProtocolError(f"handshake message of {len(message)} bytes")
        # Failed until the message checks out: by then h and ck have already moved on.
        self._failed = True
        self._remote_ephemeral = bytes(message[:_KEY_BYTES])
        self._tokens(self._remote_ephemeral)
        ciphertext = bytes(message[_KEY_BYTES:])
        payload = self._cipher.decrypt(ciphertext, self._h)  # DecryptAndHash
        self._mix_hash(ciphertext)
        self._failed = False
        self._step += 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """``(send, receive)`` ciphers for this side; callable once, after the handshake is complete."""
        if not self.complete:
            raise LocalProtocolError("split() before the handshake is complete")
        if self._split:
            raise LocalProtocolError("split() twice would reuse nonces")
        self._split = True
        # c1 carries initiator -> responder messages, c2 the replies (§5.2 Split).
        c1, c2 = (CipherState(k) for k in _hkdf(self._ck, b"", 2))
        return (c1, c2) if self.initiator else (c2, c1)

    def _check_turn(self, *, writing: bool) -> None:
        if self._failed:
            raise LocalProtocolError("the handshake already failed")
        if self.complete:
            raise LocalProtocolError("handshake complete: use the split() ciphers")
        if writing != ((self._step == 0) == self.initiator):
            action = "write" if writing else "read"
            raise LocalProtocolError(f"not our turn to {action}")

    def _tokens(self, e: bytes) -> None:
        """The tokens before the payload: "psk, e" in the first message, "e, ee" in the second."""
        if self._step == 0:
            self._mix_key_and_hash(self._psk)
        self._mix_hash(e)
        self._mix_key(e)  # psk modes mix e into the key too (§9.2)
        if self._step == 1:
            self._mix_key(self._dh())

    def _dh(self) -> bytes:
        try:
            remote = x25519.X25519PublicKey.from_public_bytes(self._remote_ephemeral)
            return self._ephemeral.exchange(remote)
        except ValueError:  # cryptography refuses low-order points (an all-zero result)
            raise RemoteProtocolError("the peer's ephemeral key is invalid") from None

    def _mix_hash(self, data: bytes) -> None:
        self._h = _sha256(self._h + data)

    def _mix_key(self, ikm: bytes) -> None:
        self._ck, key = _hkdf(self._ck, ikm, 2)
        self._cipher = CipherState(key)

    def _mix_key_and_hash(self, ikm: bytes) -> None:
        self._ck, temp_h, key = _hkdf(self._ck, ikm, 3)
        self._mix_hash(temp_h)
        self._cipher = CipherState(key)
