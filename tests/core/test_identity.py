"""Ed25519 identities, base58 and libp2p peer ids (p2pnode.core.identity)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnode.core import identity as identity_module
from p2pnode.core.identity import (
    Identity,
    b58decode,
    b58encode,
    peer_id_from_public_key,
    public_key_from_peer_id,
    short_id,
    verify_signature,
)
from p2pnode.errors import BadSignature, DecodeError

# The Ed25519 test vector of the libp2p peer-id spec (specs/peer-ids/peer-ids.md, "Test vectors").
SPEC_SEED = bytes.fromhex("7e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d")
SPEC_PUBLIC_KEY = bytes.fromhex("1ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e")
SPEC_PEER_ID = "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq"

B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
FUZZ = settings(max_examples=200, deadline=None)


def make_identity(n: int) -> Identity:
    """A fixed identity per small integer, so failures reproduce."""
    return Identity.from_seed(bytes([n]) * 32)


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# ---- the libp2p spec vector -------------------------------------------------------------------------------


def test_spec_vector_seed_gives_public_key_and_peer_id():
    identity = Identity.from_seed(SPEC_SEED)
    assert identity.public_key == SPEC_PUBLIC_KEY
    assert identity.peer_id == SPEC_PEER_ID
    assert identity.seed() == SPEC_SEED
    assert repr(identity) == f"Identity({SPEC_PEER_ID})"


def test_spec_vector_peer_id_from_public_key():
    assert peer_id_from_public_key(SPEC_PUBLIC_KEY) == SPEC_PEER_ID


def test_spec_vector_public_key_from_peer_id():
    assert public_key_from_peer_id(SPEC_PEER_ID) == SPEC_PUBLIC_KEY


def test_spec_vector_signature_checks_out_with_only_the_peer_id():
    signature = Identity.from_seed(SPEC_SEED).sign(b"hello")
    assert verify_signature(SPEC_PEER_ID, signature, b"hello") is None


# ---- identities -------------------------------------------------------------------------------------------


def test_generated_identities_are_distinct_and_rebuild_from_their_seed():
    a, b = Identity.generate(), Identity.generate()
    assert a.peer_id != b.peer_id
    rebuilt = Identity.from_seed(a.seed())
    assert (rebuilt.peer_id, rebuilt.public_key) == (a.peer_id, a.public_key)


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_from_seed_refuses_a_seed_that_is_not_32_bytes(length):
    with pytest.raises(ValueError):
        Identity.from_seed(b"\x01" * length)


@pytest.mark.parametrize("length", [0, 31, 33])
def test_peer_id_from_public_key_refuses_a_key_that_is_not_32_bytes(length):
    with pytest.raises(ValueError):
        peer_id_from_public_key(b"\x01" * length)


def test_every_ed25519_peer_id_starts_with_the_same_eight_characters():
    # The id is base58 of a fixed 6-byte prefix + 32 key bytes; the encoding is monotonic in the key for a
    # fixed length, so the smallest and largest keys bound every id: all share "12D3KooW".
    lowest = peer_id_from_public_key(b"\x00" * 32)
    highest = peer_id_from_public_key(b"\xff" * 32)
    assert lowest == "12D3KooW9pNAk8aiBuGVQtWRdbkLmo5qVL3e2h5UxbN2Nz9ttwiw"
    assert highest == "12D3KooWT3gYEvLJyx1FyyHqrmvdy1tMjpgxmu9aSeKMEuafQtyC"
    assert len(lowest) == len(highest) == 52


# ---- base58 -----------------------------------------------------------------------------------------------

# Bitcoin Core's src/test/data/base58_encode_decode.json, plus the empty and all-zero edge cases.
B58_VECTORS = [
    ("", ""),
    ("00", "1"),
    ("0000", "11"),
    ("61", "2g"),
    ("626262", "a3gV"),
    ("636363", "aPEr"),
    ("73696d706c792061206c6f6e6720737472696e67", "2cFupjhnEsSn59qHXstmK2ffpLv2"),
    ("00eb15231dfceb60925886b67d065299925915aeb172c06647", "1NS17iag9jJgTHD1VXjvLCEnZuQ3rJDE9L"),
    ("516b6fcd0f", "ABnLTmg"),
    ("bf4f89001e670274dd", "3SEo3LWLoPntC"),
    ("572e4794", "3EFU7m"),
    ("ecac89cad93923c02321", "EJDM8drfXA6uyA"),
    ("10c8511e", "Rt5zm"),
    ("00000000000000000000", "1111111111"),
]


@pytest.mark.parametrize(("hex_data", "text"), B58_VECTORS)
def test_base58_known_vectors(hex_data, text):
    assert b58encode(bytes.fromhex(hex_data)) == text
    assert b58decode(text) == bytes.fromhex(hex_data)


@FUZZ
@given(st.binary(max_size=80))
def test_base58_round_trip(data):
    text = b58encode(data)
    assert set(text) <= set(B58_ALPHABET)
    assert b58decode(text) == data


@FUZZ
@given(st.integers(min_value=0, max_value=10), st.binary(max_size=40))
def test_base58_keeps_leading_zero_bytes_as_leading_ones(zeros, body):
    data = b"\x00" * zeros + body.lstrip(b"\x00")
    text = b58encode(data)
    assert text.startswith("1" * zeros)
    assert not text[zeros:].startswith("1")
    assert b58decode(text) == data


@pytest.mark.parametrize("text", ["0", "O", "I", "l", "+", "/", " ", "12D3 KooW", "é", "\x00", "1\n"])
def test_base58_decode_refuses_characters_outside_the_alphabet(text):
    with pytest.raises(DecodeError):
        b58decode(text)


# ---- peer ids ---------------------------------------------------------------------------------------------


@FUZZ
@given(
    st.binary(min_size=32, max_size=32).filter(
        lambda k: k[:31] + bytes([k[31] & 0x7F]) not in identity_module._SMALL_ORDER_KEYS
    )
)
def test_public_key_from_peer_id_round_trip(public_key):
    peer_id = peer_id_from_public_key(public_key)
    assert peer_id.startswith("12D3KooW")
    assert len(peer_id) == 52
    assert public_key_from_peer_id(peer_id) == public_key


def _b58(hex_data: str) -> str:
    return b58encode(bytes.fromhex(hex_data))


GARBAGE_IDS = [
    pytest.param("", id="empty"),
    pytest.param("x", id="one-char"),
    pytest.param("0OIl", id="outside-alphabet"),
    pytest.param("12D3KooW", id="prefix-only"),
    pytest.param(SPEC_PEER_ID[:-1], id="truncated"),
    pytest.param(SPEC_PEER_ID + "1", id="one-char-too-many"),
    pytest.param("1" + SPEC_PEER_ID, id="extra-leading-zero"),
    pytest.param(SPEC_PEER_ID[:20] + "0" + SPEC_PEER_ID[21:], id="invalid-char-inside"),
    pytest.param("z" * 65, id="over-64-chars"),
    # a sha256-multihash peer id (RSA keys): valid base58, wrong multihash
    pytest.param("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", id="sha256-multihash"),
    # identity multihash of a protobuf secp256k1 key (type 2), 33 bytes
    pytest.param(_b58("00250802122102" + "11" * 32), id="secp256k1-key"),
    # identity multihash whose protobuf says Ed25519 but with key type byte changed
    pytest.param(_b58("002408021220" + "11" * 32), id="wrong-key-type"),
    # right prefix, 31-byte key
    pytest.param(_b58("002408011220" + "11" * 31), id="short-key"),
    # sha2-256 multihash code instead of identity
    pytest.param(_b58("122408011220" + "11" * 32), id="wrong-multihash-code"),
    pytest.param(SPEC_PEER_ID.encode(), id="bytes-not-str"),
    pytest.param(None, id="none"),
    pytest.param(12, id="int"),
]


@pytest.mark.parametrize("peer_id", GARBAGE_IDS)
def test_garbage_peer_ids_raise_decode_error(peer_id):
    with pytest.raises(DecodeError):
        public_key_from_peer_id(peer_id)


@pytest.mark.slow
@FUZZ
@given(st.one_of(st.text(max_size=70), st.text(alphabet=B58_ALPHABET, min_size=40, max_size=60)))
def test_public_key_from_peer_id_on_any_text_returns_a_key_or_raises_decode_error(text):
    try:
        key = public_key_from_peer_id(text)
    except DecodeError:
        return
    assert len(key) == 32
    assert peer_id_from_public_key(key) == text


# ---- signatures -------------------------------------------------------------------------------------------

DATA = b"dcn test payload"


def test_verify_signature_accepts_a_good_signature():
    alice = make_identity(1)
    assert verify_signature(alice.peer_id, alice.sign(DATA), DATA) is None


def test_verify_signature_rejects_the_wrong_key():
    alice, bob = make_identity(1), make_identity(2)
    with pytest.raises(BadSignature):
        verify_signature(bob.peer_id, alice.sign(DATA), DATA)


@pytest.mark.parametrize("index", [0, 7, len(DATA) - 1])
def test_verify_signature_rejects_tampered_data(index):
    alice = make_identity(1)
    with pytest.raises(BadSignature):
        verify_signature(alice.peer_id, alice.sign(DATA), flip(DATA, index))


def test_verify_signature_rejects_extended_or_truncated_data():
    alice = make_identity(1)
    signature = alice.sign(DATA)
    for data in (DATA + b"\x00", DATA[:-1], b""):
        with pytest.raises(BadSignature):
            verify_signature(alice.peer_id, signature, data)


@pytest.mark.parametrize("index", [0, 31, 32, 63])
def test_verify_signature_rejects_a_tampered_signature(index):
    alice = make_identity(1)
    with pytest.raises(BadSignature):
        verify_signature(alice.peer_id, flip(alice.sign(DATA), index), DATA)


@pytest.mark.parametrize("length", [0, 1, 32, 63, 65, 128])
def test_verify_signature_rejects_signatures_that_are_not_64_bytes(length):
    alice = make_identity(1)
    signature = (alice.sign(DATA) * 2)[:length]
    with pytest.raises(BadSignature, match="64 bytes"):
        verify_signature(alice.peer_id, signature, DATA)


@pytest.mark.parametrize("signature", [None, "x" * 64, bytearray(64), 64])
def test_verify_signature_rejects_signatures_that_are_not_bytes(signature):
    alice = make_identity(1)
    with pytest.raises(BadSignature):
        verify_signature(alice.peer_id, signature, DATA)


@pytest.mark.parametrize("peer_id", ["", "nope", SPEC_PEER_ID[:-1], "z" * 65])
def test_verify_signature_turns_an_unusable_signer_id_into_bad_signature(peer_id):
    alice = make_identity(1)
    with pytest.raises(BadSignature) as info:
        verify_signature(peer_id, alice.sign(DATA), DATA)
    assert isinstance(info.value.__cause__, DecodeError)


@pytest.mark.slow
@FUZZ
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=64, max_size=64), st.binary(max_size=64))
def test_verify_signature_on_random_keys_and_signatures_raises_only_bad_signature(public_key, signature, data):
    # About half of all 32-byte strings are not points on the curve: still a BadSignature, never a ValueError.
    # (It may return None: a small-order "weak" key such as 32 zero bytes with an all-zero signature verifies
    # for about a quarter of all messages; OpenSSL, like Go's crypto/ed25519 used by libp2p, accepts those.)
    try:
        verify_signature(peer_id_from_public_key(public_key), signature, data)
    except BadSignature:
        pass


# ---- short ids --------------------------------------------------------------------------------------------


def test_short_id_is_eight_characters_of_a_peer_id():
    ids = [make_identity(n).peer_id for n in range(1, 6)]
    shorts = [short_id(p) for p in ids]
    assert all(len(s) == 8 for s in shorts)
    assert all(s in p for s, p in zip(shorts, ids))
    assert len(set(shorts)) == len(ids)


@pytest.mark.parametrize("text", ["", "abc", "x" * 16])
def test_short_id_returns_short_strings_unchanged(text):
    assert short_id(text) == text


def test_short_id_leaves_out_the_whole_constant_prefix():
    # every character of a short id tells peers apart: none is part of the shared "12D3KooW"
    assert short_id(SPEC_PEER_ID) == "Btg3aaRM"
    assert {short_id(peer_id_from_public_key(bytes([n]) * 32))[:2] for n in range(256)} != {"oW"}


@pytest.mark.parametrize("weak", sorted(identity_module._SMALL_ORDER_KEYS))
@pytest.mark.parametrize("sign_bit", [0x00, 0x80])
def test_peer_ids_with_small_order_keys_are_refused(weak, sign_bit):
    key = weak[:31] + bytes([weak[31] | sign_bit])
    peer_id = b58encode(b"\x00\x24\x08\x01\x12\x20" + key)
    with pytest.raises(DecodeError, match="weak"):
        public_key_from_peer_id(peer_id)
    # The classic forgery: the identity point with an all-zero signature "verifies" anything.
    with pytest.raises(BadSignature):
        verify_signature(peer_id, bytes(64), b"any message")
