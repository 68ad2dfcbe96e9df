"""Peer message codec and its limits (p2pnode.core.wire)."""

from __future__ import annotations

from dataclasses import replace

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnode.core.wire import (
    Auth,
    JobCancel,
    JobChunk,
    JobCredit,
    JobEnd,
    JobOpen,
    Ping,
    Pong,
    Rumors,
    SyncReply,
    SyncRequest,
    WireLimits,
    decode,
    auth_transcript,
    encode,
    job_transcript,
)
from p2pnode.errors import DecodeError, LocalProtocolError

PEER_A = "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq"
PEER_B = "12D3KooW9pNAk8aiBuGVQtWRdbkLmo5qVL3e2h5UxbN2Nz9ttwiw"
FUZZ = settings(max_examples=200, deadline=None)
AUTH, RUMORS, SYNC_REQUEST, SYNC_REPLY = 2, 3, 4, 5
JOB_OPEN, JOB_CHUNK, JOB_END, JOB_CANCEL, JOB_CREDIT = 10, 11, 12, 13, 14
USER_MESSAGE = {"role": "user", "content": "hi"}
SIG = b"\x05" * 64


def make_auth(peer_id: str = PEER_A, *, version: int = 2, signature: bytes = b"\x02" * 64, record: bytes = b"env") -> Auth:
    return Auth(version=version, peer_id=peer_id, signature=signature, record=record)


def pack(*body) -> bytes:
    """Raw msgpack of a message array, to build what encode() never would."""
    return msgpack.packb(list(body), use_bin_type=True)


def frame(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(2, "big") + p for p in parts)


# ---- round trips ------------------------------------------------------------------------------------------

MESSAGES = [
    pytest.param(make_auth(record=b"\x94envelope"), id="auth"),
    pytest.param(make_auth(PEER_B, version=65535, signature=bytes(64), record=b""), id="auth-edges"),
    pytest.param(
        JobOpen(1, "m:1b", (USER_MESSAGE,), {"temperature": 0.5, "stop": ["x"]}, 30.0, "ann", 32, "", True, SIG), id="job-open"
    ),
    pytest.param(JobOpen(2**32 - 1, "m", (USER_MESSAGE,) * 3, {}, 3600.0, "", 1, "laptop", False, SIG), id="job-open-attached"),
    pytest.param(JobChunk(7, "token"), id="job-chunk"),
    pytest.param(JobEnd(7, "stop", 3, 12, 0, ""), id="job-end"),
    pytest.param(JobEnd(7, "length", 3, 12, 0, "", "the whole answer " * 2000), id="job-end-with-the-answer"),
    pytest.param(JobEnd(7, "", 0, 0, 429, "busy"), id="job-end-busy"),
    pytest.param(JobCancel(7), id="job-cancel"),
    pytest.param(JobCredit(7, 16), id="job-credit"),
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
    assert msgpack.unpackb(encode(make_auth(signature=b"s" * 64, record=b"r")), raw=False) == [
        AUTH, 2, PEER_A, b"s" * 64, b"r"
    ]
    assert encode(Rumors((b"a",))) == b"\x92\x03\x91\xc4\x01a"
    assert msgpack.unpackb(encode(SyncRequest({PEER_A: 5})), raw=False) == [SYNC_REQUEST, {PEER_A: 5}]
    assert msgpack.unpackb(encode(SyncReply((b"e",), (PEER_B,))), raw=False) == [SYNC_REPLY, [b"e"], [PEER_B]]
    assert (encode(Ping()), encode(Pong())) == (b"\x91\x06", b"\x91\x07")


@pytest.mark.parametrize("data", [b"\x92\x06\x00", b"\x92\x07\xc0"])
def test_ping_and_pong_carry_nothing(data):
    with pytest.raises(DecodeError, match="fields, expected 0"):
        decode(data)


@pytest.mark.parametrize("message", [None, b"\x93", "hello", object(), [AUTH, 1, PEER_A]])
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
        decode(encode(make_auth(record=b"x" * 17)), limits)


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
        pytest.param(encode(make_auth())[:-1], id="truncated"),
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
    AUTH: [2, PEER_A, b"\x02" * 64, b"record"],
    JOB_OPEN: [1, "m", [USER_MESSAGE], {}, 30.0, "ann", 8, "", True, SIG],
    JOB_CHUNK: [1, "text"],
    JOB_END: [1, "stop", 1, 2, 0, "", ""],
    JOB_CANCEL: [1],
    JOB_CREDIT: [1, 4],
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
    # Auth.version, .peer_id, .signature, .record
    (AUTH, 0, 0), (AUTH, 0, 65536), (AUTH, 0, -1), (AUTH, 0, True), (AUTH, 0, 1.0), (AUTH, 0, "1"),
    (AUTH, 1, ""), (AUTH, 1, "x" * 65), (AUTH, 1, PEER_A.encode()), (AUTH, 1, None),
    (AUTH, 2, b"\x02" * 63), (AUTH, 2, b"\x02" * 65), (AUTH, 2, "s" * 64), (AUTH, 3, "record"), (AUTH, 3, None),
    (AUTH, 3, b"r" * (16 * 1024 + 1)),
    # JobOpen: job, model, messages, options, timeout, user, window, target
    (JOB_OPEN, 0, -1), (JOB_OPEN, 0, 2**32), (JOB_OPEN, 1, "m" * 201), (JOB_OPEN, 1, None),
    (JOB_OPEN, 2, []), (JOB_OPEN, 2, [USER_MESSAGE] * 1001), (JOB_OPEN, 2, [{"role": "user"}]),
    (JOB_OPEN, 2, [{"role": "user", "content": "x", "extra": 1}]), (JOB_OPEN, 2, [{"role": "r" * 17, "content": ""}]),
    (JOB_OPEN, 3, []), (JOB_OPEN, 3, {f"o{i}": 1 for i in range(65)}), (JOB_OPEN, 3, {"o": {"nested": 1}}),
    (JOB_OPEN, 3, {"o": [[1]]}), (JOB_OPEN, 3, {"o": None}), (JOB_OPEN, 4, 0), (JOB_OPEN, 4, 3601), (JOB_OPEN, 4, True),
    (JOB_OPEN, 4, float("nan")), (JOB_OPEN, 5, "u" * 129), (JOB_OPEN, 6, 4097), (JOB_OPEN, 7, "t" * 129),
    (JOB_OPEN, 7, None), (JOB_OPEN, 8, 1), (JOB_OPEN, 8, None), (JOB_OPEN, 9, b""), (JOB_OPEN, 9, "s" * 64),
    (JOB_OPEN, 9, b"s" * 65),
    # JobChunk, JobEnd, JobCancel, JobCredit
    (JOB_CHUNK, 0, -1), (JOB_CHUNK, 1, b"bytes"), (JOB_CHUNK, 1, "x" * (16 * 1024 + 1)),
    (JOB_END, 1, "r" * 33), (JOB_END, 4, 1000), (JOB_END, 5, "e" * 1025), (JOB_END, 2, -1), (JOB_END, 6, None), (JOB_END, 6, b"x"),
    (JOB_CANCEL, 0, "1"), (JOB_CREDIT, 1, 4097), (JOB_CREDIT, 1, -1),
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

HASH = bytes(range(32))


def test_transcript_exact_bytes():
    assert auth_transcript(HASH, True) == b"dcn-auth-2" + b"I" + HASH
    assert auth_transcript(HASH, False) == b"dcn-auth-2" + b"R" + HASH


def test_a_job_is_vouched_for_one_worker_and_exactly_its_fields():
    job = JobOpen(1, "m", (USER_MESSAGE,), {}, 30.0, "ann", 8, "", True, SIG)
    base = job_transcript(PEER_A, job)
    assert base == job_transcript(PEER_A, replace(job, signature=b"other"))
    assert job_transcript(PEER_B, job) != base
    for changed in ({"user": "bob"}, {"model": "n"}, {"target": "laptop"}, {"job": 2}, {"timeout": 31.0}, {"stream": False}):
        assert job_transcript(PEER_A, replace(job, **changed)) != base


def test_transcript_differs_by_role_and_by_connection():
    # B cannot reflect A's Auth back at A (roles differ), nor replay it on another connection (hashes differ).
    assert auth_transcript(HASH, True) != auth_transcript(HASH, False)
    assert auth_transcript(HASH, True) != auth_transcript(bytes(32), True)
