"""Ed25519 identities and libp2p-style peer ids.

A peer id is the base58btc string of the *identity* multihash of the protobuf-encoded public key, exactly as
libp2p does for Ed25519 keys, so ids start with ``12D3KooW`` and the public key can be read back from the id:
anyone can check a signature knowing only the id.
"""

from __future__ import annotations

import functools

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from p2pnode.errors import BadSignature, DecodeError

__all__ = [
    "Identity",
    "b58decode",
    "b58encode",
    "peer_id_from_public_key",
    "public_key_from_peer_id",
    "short_id",
    "verify_signature",
]

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}
# protobuf PublicKey{Type: Ed25519 (field 1 = 1), Data (field 2, 32 bytes)}
_PROTOBUF_ED25519_PREFIX = b"\x08\x01\x12\x20"
# identity multihash: code 0x00, length 36 (= 4-byte protobuf header + 32-byte key)
_MULTIHASH_PREFIX = b"\x00\x24" + _PROTOBUF_ED25519_PREFIX
_PEER_ID_BYTES = len(_MULTIHASH_PREFIX) + 32
MAX_PEER_ID_CHARS = 64
# Encodings (sign bit cleared) of the Ed25519 points of small order, and of non-canonical 0/1 (p-1, p, p+1):
# a "public key" among them verifies signatures nobody made, so no peer id may carry one (libsodium's list).
_SMALL_ORDER_KEYS = frozenset(
    bytes.fromhex(h)
    for h in (
        "00" * 32,
        "01" + "00" * 31,
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "ec" + "ff" * 30 + "7f",
        "ed" + "ff" * 30 + "7f",
        "ee" + "ff" * 30 + "7f",
    )
)


def b58encode(data: bytes) -> str:
    """Base58btc (Bitcoin alphabet); leading zero bytes become leading '1's."""
    zeros = len(data) - len(data.lstrip(b"\x00"))
    n = int.from_bytes(data, "big")
    digits = []
    while n:
        n, rem = divmod(n, 58)
        digits.append(_B58_ALPHABET[rem])
    return "1" * zeros + "".join(reversed(digits))


def b58decode(text: str) -> bytes:
    """Inverse of :func:`b58encode`; raises :class:`DecodeError` on characters outside the alphabet."""
    n = 0
    for char in text:
        try:
            n = n * 58 + _B58_INDEX[char]
        except KeyError:
            raise DecodeError(f"invalid base58 character {char!r}") from None
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\x00" * zeros + body


def peer_id_from_public_key(public_key: bytes) -> str:
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return b58encode(_MULTIHASH_PREFIX + public_key)


@functools.lru_cache(maxsize=4096)
def _public_key_object(peer_id: str) -> Ed25519PublicKey:
    if not isinstance(peer_id, str) or not 0 < len(peer_id) <= MAX_PEER_ID_CHARS:
        raise DecodeError("peer id must be a short string")
    raw = b58decode(peer_id)
    if len(raw) != _PEER_ID_BYTES or not raw.startswith(_MULTIHASH_PREFIX):
        raise DecodeError(f"not an Ed25519 identity peer id: {peer_id[:16]!r}")
    key = raw[len(_MULTIHASH_PREFIX) :]
    if key[:31] + bytes([key[31] & 0x7F]) in _SMALL_ORDER_KEYS:
        raise DecodeError("peer id holds a weak (small-order) Ed25519 key")
    return Ed25519PublicKey.from_public_bytes(key)


def public_key_from_peer_id(peer_id: str) -> bytes:
    """The 32-byte public key inside a peer id; :class:`DecodeError` if it is not a valid Ed25519 peer id."""
    return _public_key_object(peer_id).public_bytes(Encoding.Raw, PublicFormat.Raw)


def verify_signature(peer_id: str, signature: bytes, data: bytes) -> None:
    """Check that ``signature`` over ``data`` was made by the key of ``peer_id``; raise :class:`BadSignature` if not."""
    try:
        key = _public_key_object(peer_id)
    except DecodeError as exc:
        raise BadSignature(f"unusable signer id: {exc}") from exc
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise BadSignature("an Ed25519 signature is 64 bytes")
    try:
        key.verify(signature, data)
    except InvalidSignature:
        raise BadSignature(f"signature does not match peer {short_id(peer_id)}") from None


def short_id(peer_id: str) -> str:
    """The 8 characters of a peer id that tell peers apart in logs (the first 8, "12D3KooW", are always the same)."""
    return peer_id[8:16] if len(peer_id) > 16 else peer_id


class Identity:
    """A node's Ed25519 key pair and the peer id derived from it."""

    __slots__ = ("_private", "peer_id", "public_key")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self.public_key = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.peer_id = peer_id_from_public_key(self.public_key)

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """Rebuild from the 32-byte private seed (as stored in the data dir)."""
        if len(seed) != 32:
            raise ValueError("an Ed25519 private seed is 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def seed(self) -> bytes:
        return self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)

    def __repr__(self) -> str:
        return f"Identity({self.peer_id})"
