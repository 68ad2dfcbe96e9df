"""Peer message codec and its limits (p2pnode.core.wire)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnode.core.wire import (
    Auth,
    Hello,
    Ping,
    Pong,
    Rumors,
    SyncReply,
    SyncRequest,
    WireLimits,
    decode,
    encode,
    handshake_transcript,
)
from p2pnode.errors import DecodeError, LocalProtocolError

PEER_A = "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq"
PEER_B = "12D3KooW9pNAk8aiBuGVQtWRdbkLmo5qVL3e2h5UxbN2Nz9ttwiw"
FUZZ = settings(max_examples=200, deadline=None)
HELLO, AUTH, RUMORS, SYNC_REQUEST, SYNC_REPLY = 1, 2, 3, 4, 5


def make_hello(peer_id: str = PEER_A, *, nonce: bytes = b"\x01" * 32, network: str = "open", version: int = 1) -> Hello:
    return Hello(version=version, peer_id=peer_id, nonce=nonce, network=network)


def pack(*body) -> bytes:
    """Raw msgpack of a message array, to build what encode() never would."""
    return msgpack.packb(list(body), use_bin_type=True)


def frame(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(2, "big") + p for p in parts)


# ---- round trips ------------------------------------------------------------------------------------------

MESSAGES = [
    pytest.param(make_hello(), id="hello"),
    pytest.param(make_hello(PEER_B, nonce=bytes(range(32)), network="f" * 64, version=65535), id="hello-edges"),
    pytest.param(Auth(signature=b"\x02" * 64, record=b"\x94envelope"), id="auth"),
    pytest.param(Auth(signature=b"\x00" * 64, record=b""), id="auth-empty-record"),
    pytest.param(Rumors(items=()), id="rumors-empty"),
    pytest.param(Rumors(items=(b"one", b"", b"\xff" * 300)), id="rumors"),
    pytest.param(SyncRequest(digest={}), id="sync-request-empty"),
    pytest.param(SyncRequest(digest={PEER_A: 0, PEER_B: 2**64 - 1}), id="sync-request"),
    pytest.param(SyncReply(items=(), want=()), id="sync-reply-empty"),
    pytest.param(SyncReply(items=(b"env1", b"env2"), want=(PEER_A, PEER_B)), id="sync-reply"),
    pytest.param(Ping(), id="ping"),
    pytest.param(Pong(), id="pong"),
]


@pytest.mark.parametrize("message", MESSAGES)
def test_round_trip(message):
    data = encode(message)
    assert decode(data) == message
    assert decode(bytearray(data)) == message


def test_wire_layout_is_an_array_led_by_the_type():
    assert msgpack.unpackb(encode(make_hello()), raw=False) == [HELLO, 1, PEER_A, b"\x01" * 32, "open"]
    assert msgpack.unpackb(encode(Auth(b"s" * 64, b"r")), raw=False) == [AUTH, b"s" * 64, b"r"]
    assert encode(Rumors((b"a",))) == b"\x92\x03\x91\xc4\x01a"
    assert msgpack.unpackb(encode(SyncRequest({PEER_A: 5})), raw=False) == [SYNC_REQUEST, {PEER_A: 5}]
    assert msgpack.unpackb(encode(SyncReply((b"e",), (PEER_B,))), raw=False) == [SYNC_REPLY, [b"e"], [PEER_B]]
    assert (encode(Ping()), encode(Pong())) == (b"\x91\x06", b"\x91\x07")


@pytest.mark.parametrize("data", [b"\x92\x06\x00", b"\x92\x07\xc0"])
def test_ping_and_pong_carry_nothing(data):
    with pytest.raises(DecodeError, match="fields, expected 0"):
        decode(data)


@pytest.mark.parametrize("message", [None, b"\x93", "hello", object(), [HELLO, 1, PEER_A]])
def test_encode_refuses_what_is_not_a_message(message):
    with pytest.raises(LocalProtocolError):
        encode(message)


# ---- fuzzing: decode raises only DecodeError --------------------------------------------------------------

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=70)
    | st.binary(max_size=70),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=70), children, max_size=4),
    max_leaves=12,
)


def check_decode(data) -> None:
    try:
        message = decode(data)
    except DecodeError:
        return
    # what decodes must encode back to the same message
    assert decode(encode(message)) == message


@FUZZ
@given(st.binary(max_size=300))
def test_decode_on_arbitrary_bytes_raises_only_decode_error(data):
    check_decode(data)


@pytest.mark.slow
@FUZZ
@given(st.integers(min_value=-1, max_value=6) | st.booleans() | st.floats(), st.lists(msgpack_values, max_size=5))
def test_decode_on_arbitrary_msgpack_messages_raises_only_decode_error(kind, fields):
    check_decode(pack(kind, *fields))


@FUZZ
@given(st.sampled_from(MESSAGES), st.data())
def test_decode_on_mutated_messages_raises_only_decode_error(param, data):
    encoded = bytearray(encode(param.values[0]))
    position = data.draw(st.integers(0, len(encoded) - 1))
    encoded[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    check_decode(bytes(encoded[:cut]))


# ---- limits and shapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [None, "\x92\x03\x90", memoryview(b"\x92\x03\x90"), 3, [3, []]])
def test_non_binary_input_is_refused(data):
    with pytest.raises(DecodeError, match="binary"):
        decode(data)


def test_max_message_bytes_is_inclusive():
    data = encode(Rumors((b"x" * 100,)))
    assert decode(data, WireLimits(max_message_bytes=len(data))) == Rumors((b"x" * 100,))
    with pytest.raises(DecodeError, match="over the"):
        decode(data, WireLimits(max_message_bytes=len(data) - 1))


def test_default_max_message_bytes_is_one_mebibyte():
    data = pack(RUMORS, [b"x" * 16_000] * 66)
    assert len(data) > 1024 * 1024
    with pytest.raises(DecodeError, match="over the 1048576-byte limit"):
        decode(data)


def test_max_items_is_inclusive():
    limits = WireLimits(max_items=4)
    assert decode(encode(Rumors((b"a",) * 4)), limits) == Rumors((b"a",) * 4)
    for message in (Rumors((b"a",) * 5), SyncReply((b"a",) * 5, ())):
        with pytest.raises(DecodeError, match="at most 4 items"):
            decode(encode(message), limits)


def test_default_max_items():
    assert len(decode(encode(Rumors((b"",) * 1024))).items) == 1024
    with pytest.raises(DecodeError):
        decode(encode(Rumors((b"",) * 1025)))


def test_max_item_bytes_is_inclusive():
    limits = WireLimits(max_item_bytes=16)
    assert decode(encode(Rumors((b"x" * 16,))), limits) == Rumors((b"x" * 16,))
    with pytest.raises(DecodeError):
        decode(encode(Rumors((b"x" * 17,))), limits)
    with pytest.raises(DecodeError):
        decode(encode(Auth(b"s" * 64, b"x" * 17)), limits)


def test_max_digest_bounds_sync_request_and_want():
    limits = WireLimits(max_digest=3)
    digest = {f"peer{i}": i for i in range(3)}
    assert decode(encode(SyncRequest(digest)), limits) == SyncRequest(digest)
    with pytest.raises(DecodeError):
        decode(encode(SyncRequest({**digest, "peer3": 3})), limits)
    with pytest.raises(DecodeError):
        decode(encode(SyncReply((), tuple(f"peer{i}" for i in range(4)))), WireLimits(max_digest=3, max_items=3))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x92\x03" + b"\x91" * 100_000 + b"\x90", id="nested-arrays"),
        pytest.param(b"\x92\x04" + b"\x81\xa1k" * 50_000 + b"\x80", id="nested-maps"),
        pytest.param(pack(RUMORS, [[[[[[b"deep"]]]]]]), id="nested-items"),
    ],
)
def test_deeply_nested_data_is_refused(data):
    with pytest.raises(DecodeError):
        decode(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(pack(SYNC_REQUEST, {f"p{i}": i for i in range(8193)}), id="map-over-max-digest"),
        pytest.param(b"\x92\x04\xdf\xff\xff\xff\xff", id="map32-header-claims-4G-entries"),
        pytest.param(b"\x92\x03\xdd\xff\xff\xff\xff", id="array32-header-claims-4G-items"),
        pytest.param(b"\xdd\xff\xff\xff\xff", id="outer-array32-header-only"),
        pytest.param(b"\x92\x03\x91\xc6\xff\xff\xff\xff", id="bin32-header-claims-4GiB"),
        pytest.param(pack(RUMORS, list(range(9000))), id="array-over-max-array-len"),
    ],
)
def test_huge_containers_are_refused(data):
    with pytest.raises(DecodeError):
        decode(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1", id="reserved-byte"),
        pytest.param(encode(make_hello())[:-1], id="truncated"),
        pytest.param(encode(Rumors(())) + b"\x00", id="trailing-bytes"),
        pytest.param(b"\x92\x03\x91\xd4\xff\x00", id="bad-timestamp-ext"),
        pytest.param(b"\x92\x03\x91\xa2\xff\xfe", id="invalid-utf8"),
        pytest.param(pack(SYNC_REQUEST, {1: 1}), id="int-map-key"),
    ],
)
def test_not_msgpack_is_refused(data):
    with pytest.raises(DecodeError, match="not a msgpack message"):
        decode(data)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param([], id="empty-array"),
        pytest.param({"t": 3}, id="map"),
        pytest.param(3, id="bare-int"),
        pytest.param(b"\x03", id="bin"),
        pytest.param([True, 1, PEER_A, b"\x01" * 32, "open"], id="true-as-hello-tag"),
        pytest.param([False], id="false-tag"),
        pytest.param([1.0, 1, PEER_A, b"\x01" * 32, "open"], id="float-tag"),
        pytest.param(["3", []], id="str-tag"),
        pytest.param([b"\x03", []], id="bin-tag"),
        pytest.param([None, []], id="nil-tag"),
        pytest.param([[3], []], id="array-tag"),
    ],
)
def test_message_must_be_an_array_led_by_an_int_type(body):
    with pytest.raises(DecodeError, match="array starting with its type"):
        decode(msgpack.packb(body, use_bin_type=True))


@pytest.mark.parametrize("kind", [0, 8, 255, -1, 2**63, 2**64 - 1])
def test_unknown_type_is_refused(kind):
    with pytest.raises(DecodeError, match="unknown message type"):
        decode(pack(kind, []))


VALID_FIELDS = {
    HELLO: [1, PEER_A, b"\x01" * 32, "open"],
    AUTH: [b"\x02" * 64, b"record"],
    RUMORS: [[b"a"]],
    SYNC_REQUEST: [{PEER_A: 1}],
    SYNC_REPLY: [[b"a"], [PEER_A]],
}


@pytest.mark.parametrize("kind", list(VALID_FIELDS))
def test_wrong_arity_is_refused(kind):
    fields = VALID_FIELDS[kind]
    decode(pack(kind, *fields))  # the reference is valid
    with pytest.raises(DecodeError, match="fields, expected"):
        decode(pack(kind, *fields[:-1]))
    with pytest.raises(DecodeError, match="fields, expected"):
        decode(pack(kind, *fields, None))


def _with(kind: int, index: int, value) -> bytes:
    fields = list(VALID_FIELDS[kind])
    fields[index] = value
    return pack(kind, *fields)


BAD_FIELDS = [
    # Hello.version
    (HELLO, 0, 0), (HELLO, 0, 65536), (HELLO, 0, -1), (HELLO, 0, True), (HELLO, 0, 1.0), (HELLO, 0, "1"),
    # Hello.peer_id
    (HELLO, 1, ""), (HELLO, 1, "x" * 65), (HELLO, 1, PEER_A.encode()), (HELLO, 1, None),
    # Hello.nonce
    (HELLO, 2, b"\x01" * 31), (HELLO, 2, b"\x01" * 33), (HELLO, 2, "n" * 32), (HELLO, 2, None),
    # Hello.network
    (HELLO, 3, "n" * 65), (HELLO, 3, b"open"), (HELLO, 3, None),
    # Auth
    (AUTH, 0, b"\x02" * 63), (AUTH, 0, b"\x02" * 65), (AUTH, 0, "s" * 64), (AUTH, 1, "record"), (AUTH, 1, None),
    # Rumors.items
    (RUMORS, 0, b"a"), (RUMORS, 0, ["a"]), (RUMORS, 0, [b"a", 1]), (RUMORS, 0, None), (RUMORS, 0, {"a": b"a"}),
    # SyncRequest.digest
    (SYNC_REQUEST, 0, [PEER_A, 1]), (SYNC_REQUEST, 0, {PEER_A: -1}), (SYNC_REQUEST, 0, {PEER_A: True}),
    (SYNC_REQUEST, 0, {PEER_A: 1.0}), (SYNC_REQUEST, 0, {PEER_A: "1"}), (SYNC_REQUEST, 0, {PEER_A.encode(): 1}),
    (SYNC_REQUEST, 0, {"x" * 65: 1}), (SYNC_REQUEST, 0, None),
    # SyncReply
    (SYNC_REPLY, 0, ["a"]), (SYNC_REPLY, 0, b"a"), (SYNC_REPLY, 1, PEER_A), (SYNC_REPLY, 1, [PEER_A.encode()]),
    (SYNC_REPLY, 1, ["x" * 65]), (SYNC_REPLY, 1, [None]), (SYNC_REPLY, 1, {PEER_A: 1}),
]


@pytest.mark.parametrize(
    ("kind", "index", "value"), BAD_FIELDS, ids=[f"{k}-{i}={v!r:.16}" for k, i, v in BAD_FIELDS]
)
def test_malformed_fields_are_refused(kind, index, value):
    with pytest.raises(DecodeError):
        decode(_with(kind, index, value))


# ---- handshake transcript ---------------------------------------------------------------------------------

INITIATOR = make_hello(PEER_A, nonce=b"\x0a" * 32)
RESPONDER = make_hello(PEER_B, nonce=b"\x0b" * 32)


def test_transcript_exact_bytes():
    expected = frame(
        b"dcn-handshake-1",
        b"I",
        b"\x00\x01", PEER_A.encode(), b"\x0a" * 32, b"open",
        b"\x00\x01", PEER_B.encode(), b"\x0b" * 32, b"open",
    )  # fmt: skip
    assert handshake_transcript(INITIATOR, RESPONDER, True) == expected


def test_transcript_is_deterministic():
    assert handshake_transcript(INITIATOR, RESPONDER, True) == handshake_transcript(
        make_hello(PEER_A, nonce=b"\x0a" * 32), make_hello(PEER_B, nonce=b"\x0b" * 32), True
    )


def test_transcript_differs_by_role():
    assert handshake_transcript(INITIATOR, RESPONDER, True) != handshake_transcript(INITIATOR, RESPONDER, False)


@pytest.mark.parametrize("role", [True, False])
def test_transcript_differs_by_each_nonce(role):
    base = handshake_transcript(INITIATOR, RESPONDER, role)
    other_nonce = b"\x0c" * 32
    assert handshake_transcript(make_hello(PEER_A, nonce=other_nonce), RESPONDER, role) != base
    assert handshake_transcript(INITIATOR, make_hello(PEER_B, nonce=other_nonce), role) != base


@pytest.mark.parametrize("role", [True, False])
def test_transcript_differs_by_every_hello_field(role):
    base = handshake_transcript(INITIATOR, RESPONDER, role)
    variants = [
        (make_hello(PEER_B, nonce=b"\x0a" * 32), RESPONDER),
        (make_hello(PEER_A, nonce=b"\x0a" * 32, network="abc"), RESPONDER),
        (make_hello(PEER_A, nonce=b"\x0a" * 32, version=2), RESPONDER),
        (INITIATOR, make_hello(PEER_A, nonce=b"\x0b" * 32)),
        (INITIATOR, make_hello(PEER_B, nonce=b"\x0b" * 32, network="abc")),
        (INITIATOR, make_hello(PEER_B, nonce=b"\x0b" * 32, version=2)),
    ]
    transcripts = {handshake_transcript(i, r, role) for i, r in variants}
    assert len(transcripts) == len(variants)
    assert base not in transcripts


def test_transcript_differs_when_the_hellos_swap_places():
    # B cannot reflect A's Auth back at A: the roles and the order of the hellos both change the bytes.
    signed_by_a = handshake_transcript(INITIATOR, RESPONDER, True)
    assert handshake_transcript(RESPONDER, INITIATOR, True) != signed_by_a
    assert handshake_transcript(RESPONDER, INITIATOR, False) != signed_by_a
    assert handshake_transcript(INITIATOR, RESPONDER, False) != signed_by_a


def test_transcript_framing_keeps_field_boundaries():
    # Moving a character from one length-prefixed field to the next gives different bytes.
    a = handshake_transcript(make_hello("ab", network="c"), make_hello("d"), True)
    b = handshake_transcript(make_hello("a", network="bc"), make_hello("d"), True)
    c = handshake_transcript(make_hello("ab", network=""), make_hello("cd"), True)
    assert len({a, b, c}) == 3
