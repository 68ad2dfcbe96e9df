"""Signed records and notices: sealing, opening, and everything open_envelope must refuse (p2pnode.core.records)."""

from __future__ import annotations

import math
from dataclasses import replace

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnode.core import records
from p2pnode.core.identity import Identity
from p2pnode.core.records import (
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    AttachedNode,
    NodeRecord,
    NodeStatus,
    Notice,
    NoticeKind,
    RecordLimits,
    SignedNotice,
    SignedRecord,
    attached_id,
    next_seq,
    open_envelope,
    open_record,
    seal_notice,
    seal_record,
)
from p2pnode.errors import BadSignature, DecodeError, RecordExpired, RemoteProtocolError

NOW = 1_700_000_000.0  # wall-clock "now" of every test
LIFETIME = 120.0
RECORD_TYPE = "/dcn/record/1"
NOTICE_TYPE = "/dcn/notice/1"
FUZZ = settings(max_examples=200, deadline=None)
DELETE = object()  # marks a wire key to leave out


def make_identity(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 32)


ALICE = make_identity(1)
BOB = make_identity(2)


def make_record(identity: Identity = ALICE, seq: int = 1, **fields) -> NodeRecord:
    fields.setdefault("issued_at", NOW)
    fields.setdefault("lifetime", LIFETIME)
    return NodeRecord(peer_id=identity.peer_id, seq=seq, **fields)


def sealed(identity: Identity = ALICE, seq: int = 1, **fields) -> bytes:
    return seal_record(identity, make_record(identity, seq, **fields)).envelope


def make_notice(issuer: Identity = ALICE, target: Identity = BOB, **fields) -> Notice:
    fields.setdefault("kind", NoticeKind.SUSPECT)
    fields.setdefault("seq", 7)
    fields.setdefault("issued_at", NOW)
    return Notice(issuer=issuer.peer_id, target=target.peer_id, **fields)


def record_body(**overrides) -> dict:
    """The wire map of a minimal valid record, with keys overridden (or removed with DELETE)."""
    body = {"q": 1, "t": NOW, "ttl": LIFETIME}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not DELETE}


def notice_body(**overrides) -> dict:
    body = {"k": "suspect", "id": BOB.peer_id, "q": 7, "t": NOW}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not DELETE}


def crafted(body, *, identity: Identity = ALICE, payload_type: str = RECORD_TYPE) -> bytes:
    """A correctly signed envelope around any payload, valid or not."""
    payload = body if isinstance(body, bytes) else msgpack.packb(body, use_bin_type=True)
    return records._seal(identity, payload_type, payload)


def outer(envelope: bytes) -> list:
    return msgpack.unpackb(envelope, raw=False)


def repack(*fields) -> bytes:
    return msgpack.packb(list(fields), use_bin_type=True)


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# ---- round trips ------------------------------------------------------------------------------------------

FULL_RECORD = make_record(
    ALICE,
    seq=1_700_000_000_123_456,
    issued_at=NOW - 1.5,
    lifetime=LIFETIME,
    name="alice's box",
    user_id="alice",
    addrs=("ws://10.0.0.2:11436", "ws://[fe80::1]:11436"),
    protocol=PROTOCOL_VERSION,
    models=("llama3.2:3b", "qwen2.5:7b"),
    gpu_count=2,
    gpu_memory=48_000,
    cpu_cores=16,
    current_load=0.25,
    active_tasks=3,
    response_time=812.5,
    status=NodeStatus.BUSY,
    attached=(
        AttachedNode("laptop", name="bob's laptop", user_id="bob", models=("llama3.2:3b",), gpu_count=1,
                     gpu_memory=8_000, cpu_cores=8, current_load=0.5, active_tasks=1, response_time=90.0),
        AttachedNode("desk", status=NodeStatus.OFFLINE),
    ),
)


def test_full_record_round_trip():
    signed = seal_record(ALICE, FULL_RECORD)
    assert signed.record is FULL_RECORD
    opened = open_envelope(signed.envelope, now=NOW)
    assert opened == SignedRecord(FULL_RECORD, signed.envelope)
    assert type(opened.record.status) is NodeStatus
    assert type(opened.record.addrs) is tuple and type(opened.record.models) is tuple
    assert open_record(signed.envelope, now=NOW) == opened


def test_minimal_record_round_trip_fills_defaults():
    envelope = crafted(record_body())
    assert open_record(envelope, now=NOW).record == NodeRecord(ALICE.peer_id, 1, NOW, LIFETIME)


@pytest.mark.parametrize("status", list(NodeStatus))
def test_record_round_trip_for_every_status(status):
    assert open_record(sealed(status=status), now=NOW).record.status is status


def test_integer_times_and_load_come_back_as_floats():
    envelope = crafted(record_body(t=int(NOW), ttl=60, l=1, rt=5))
    record = open_record(envelope, now=NOW).record
    assert (record.issued_at, record.lifetime, record.current_load, record.response_time) == (NOW, 60.0, 1.0, 5.0)
    assert all(type(v) is float for v in (record.issued_at, record.lifetime, record.current_load, record.response_time))


@pytest.mark.parametrize("kind", list(NoticeKind))
def test_notice_round_trip(kind):
    notice = make_notice(kind=kind, seq=2**64 - 1)
    signed = seal_notice(ALICE, notice)
    assert open_envelope(signed.envelope, now=NOW) == SignedNotice(notice, signed.envelope)


def test_open_record_refuses_a_notice():
    with pytest.raises(DecodeError, match="expected a node record"):
        open_record(seal_notice(ALICE, make_notice()).envelope, now=NOW)


def test_envelope_layout_names_signer_and_type_and_leaves_peer_id_out_of_the_payload():
    signer, payload_type, payload, signature = outer(seal_record(ALICE, FULL_RECORD).envelope)
    assert (signer, payload_type, len(signature)) == (ALICE.peer_id, RECORD_TYPE, 64)
    body = msgpack.unpackb(payload, raw=False)
    assert set(body) == {"q", "t", "ttl", "n", "u", "a", "v", "m", "gc", "gm", "cc", "l", "at", "rt", "s", "x"}
    assert body["s"] == "busy" and body["a"] == list(FULL_RECORD.addrs)
    assert ALICE.peer_id not in payload.decode("utf-8", "replace")


def test_notice_layout():
    _, payload_type, payload, _ = outer(seal_notice(ALICE, make_notice()).envelope)
    assert payload_type == NOTICE_TYPE
    assert msgpack.unpackb(payload, raw=False) == {"k": "suspect", "id": BOB.peer_id, "q": 7, "t": NOW}


def test_unknown_payload_keys_are_ignored_for_forward_compatibility():
    assert open_record(crafted(record_body(zz=[1, 2], n="x")), now=NOW).record.name == "x"


def test_expires_at():
    assert make_record(issued_at=100.0, lifetime=20.0).expires_at() == 120.0


def test_seal_record_refuses_someone_elses_record():
    with pytest.raises(ValueError):
        seal_record(ALICE, make_record(BOB))


def test_seal_notice_refuses_someone_elses_notice():
    with pytest.raises(ValueError):
        seal_notice(ALICE, make_notice(issuer=BOB, target=ALICE))


# ---- next_seq ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("previous", "now", "expected"),
    [
        (0, 0.0, 1),
        (0, 1.5, 1_500_000),
        (1_500_000, 1.5, 1_500_001),
        (5_000_000, 1.0, 5_000_001),
        (0, NOW, 1_700_000_000_000_000),
    ],
)
def test_next_seq_table(previous, now, expected):
    assert next_seq(previous, now) == expected


def test_next_seq_grows_across_restarts():
    # Many re-issues within one microsecond run ahead of the clock by +1 each ...
    seq = next_seq(0, NOW)
    for _ in range(1000):
        seq = next_seq(seq, NOW)
    assert seq == 1_700_000_000_000_000 + 1000
    # ... a restart forgets the seq but not the clock: 2 ms later the new incarnation still outbids the old.
    assert next_seq(0, NOW + 0.002) > seq


@FUZZ
@given(st.integers(min_value=0, max_value=2**62), st.floats(min_value=0.0, max_value=1e11))
def test_next_seq_always_beats_previous_and_follows_the_clock(previous, now):
    seq = next_seq(previous, now)
    assert seq > previous
    assert seq >= int(now * 1_000_000)


# ---- bad signatures ---------------------------------------------------------------------------------------


def _payload_offsets(envelope: bytes) -> list[int]:
    _, _, payload, _ = outer(envelope)
    start = envelope.index(payload)
    return [start, start + len(payload) // 2, start + len(payload) - 1]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_flipped_payload_byte_is_a_bad_signature(which):
    envelope = sealed(name="a name long enough to flip bytes in")
    with pytest.raises(BadSignature):
        open_envelope(flip(envelope, _payload_offsets(envelope)[which]), now=NOW)


@pytest.mark.parametrize("index", [0, 1, 31, 32, 63])
def test_flipped_signature_byte_is_a_bad_signature(index):
    signer, payload_type, payload, signature = outer(sealed())
    with pytest.raises(BadSignature):
        open_envelope(repack(signer, payload_type, payload, flip(signature, index)), now=NOW)


@pytest.mark.parametrize("length", [0, 63, 65])
def test_signature_of_the_wrong_length_is_a_bad_signature(length):
    signer, payload_type, payload, signature = outer(sealed())
    with pytest.raises(BadSignature):
        open_envelope(repack(signer, payload_type, payload, (signature * 2)[:length]), now=NOW)


def test_payload_rewrapped_under_another_signer_is_a_bad_signature():
    _, payload_type, payload, signature = outer(sealed(ALICE))
    with pytest.raises(BadSignature):
        open_envelope(repack(BOB.peer_id, payload_type, payload, signature), now=NOW)


def test_record_resigned_by_another_key_under_the_original_signer_id_is_a_bad_signature():
    # Bob signs Alice's payload and claims to be Alice: the id in the envelope is the key that must verify.
    _, payload_type, payload, _ = outer(sealed(ALICE))
    bob_signature = outer(crafted(payload, identity=BOB))[3]
    with pytest.raises(BadSignature):
        open_envelope(repack(ALICE.peer_id, payload_type, payload, bob_signature), now=NOW)


def test_signature_does_not_carry_over_to_another_payload_type():
    # Domain separation: the same payload and signature relabelled as a notice must not verify.
    signer, _, payload, signature = outer(seal_notice(ALICE, make_notice()).envelope)
    with pytest.raises(BadSignature):
        open_envelope(repack(signer, RECORD_TYPE, payload, signature), now=NOW)


def test_signature_over_the_bare_payload_is_refused():
    payload = msgpack.packb(record_body(), use_bin_type=True)
    with pytest.raises(BadSignature):
        open_envelope(repack(ALICE.peer_id, RECORD_TYPE, payload, ALICE.sign(payload)), now=NOW)


@pytest.mark.parametrize("signer", ["", "nope", "z" * 65, "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"])
def test_unusable_signer_id_is_a_bad_signature(signer):
    _, payload_type, payload, signature = outer(sealed())
    with pytest.raises(BadSignature):
        open_envelope(repack(signer, payload_type, payload, signature), now=NOW)


# ---- payload type, time ------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload_type", ["", "/dcn/record/2", "/dcn/notice/0", "/libp2p/routing-state-record"])
def test_unknown_payload_type_is_refused(payload_type):
    envelope = crafted(record_body(), payload_type=payload_type)
    with pytest.raises(DecodeError, match="unknown payload type"):
        open_envelope(envelope, now=NOW)
    with pytest.raises(DecodeError):
        open_record(envelope, now=NOW)


def test_record_valid_until_exactly_its_expiry():
    envelope = sealed(issued_at=NOW - LIFETIME, lifetime=LIFETIME)
    assert open_record(envelope, now=NOW).record.expires_at() == NOW
    with pytest.raises(RecordExpired):
        open_record(envelope, now=NOW + 0.5)


@pytest.mark.parametrize(("issued_at", "lifetime"), [(NOW - 200.0, LIFETIME), (NOW - 1.0, 0.0), (1.0, 3600.0)])
def test_expired_record_is_refused(issued_at, lifetime):
    with pytest.raises(RecordExpired, match="expired"):
        open_record(sealed(issued_at=issued_at, lifetime=lifetime), now=NOW)


def test_record_issued_up_to_max_clock_skew_in_the_future_is_accepted():
    skew = DEFAULT_LIMITS.max_clock_skew
    assert skew == 30.0
    assert open_record(sealed(issued_at=NOW + skew), now=NOW).record.issued_at == NOW + skew


@pytest.mark.parametrize("ahead", [30.5, 31.0, 3600.0])
def test_far_future_record_is_refused(ahead):
    with pytest.raises(RecordExpired, match="future"):
        open_record(sealed(issued_at=NOW + ahead), now=NOW)


def test_max_clock_skew_is_a_limit():
    envelope = sealed(issued_at=NOW + 0.5)
    with pytest.raises(RecordExpired):
        open_record(envelope, now=NOW, limits=RecordLimits(max_clock_skew=0.0))


def test_notice_lives_max_lifetime():
    max_lifetime = DEFAULT_LIMITS.max_lifetime
    assert open_envelope(seal_notice(ALICE, make_notice(issued_at=NOW - max_lifetime)).envelope, now=NOW)
    with pytest.raises(RecordExpired, match="expired"):
        open_envelope(seal_notice(ALICE, make_notice(issued_at=NOW - max_lifetime - 1)).envelope, now=NOW)
    with pytest.raises(RecordExpired, match="future"):
        open_envelope(seal_notice(ALICE, make_notice(issued_at=NOW + 31)).envelope, now=NOW)


# ---- size and framing ---------------------------------------------------------------------------------------


def test_oversized_envelope_is_refused():
    envelope = sealed(models=tuple(f"{i:03d}" + "m" * 196 for i in range(100)))
    assert len(envelope) > DEFAULT_LIMITS.max_envelope_bytes
    with pytest.raises(DecodeError, match="over 16384 bytes"):
        open_envelope(envelope, now=NOW)


def test_envelope_size_limit_is_inclusive():
    envelope = sealed(name="x" * 100)
    assert open_envelope(envelope, now=NOW, limits=RecordLimits(max_envelope_bytes=len(envelope)))
    with pytest.raises(DecodeError):
        open_envelope(envelope, now=NOW, limits=RecordLimits(max_envelope_bytes=len(envelope) - 1))


@pytest.mark.parametrize("envelope", [None, "text", bytearray(b"\x94"), memoryview(b"\x94"), 42])
def test_envelope_that_is_not_bytes_is_refused(envelope):
    with pytest.raises(DecodeError):
        open_envelope(envelope, now=NOW)


@pytest.mark.parametrize(
    "envelope",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1", id="reserved-byte"),
        pytest.param(b"\x94\xa1", id="truncated"),
        pytest.param(b"\xdd\xff\xff\xff\xff", id="array32-header-only"),
        pytest.param(b"\x91" * 5000 + b"\x00", id="deeply-nested"),
        pytest.param(b"\xd4\xff\x00", id="bad-timestamp-ext"),
    ],
)
def test_envelope_that_is_not_msgpack_is_refused(envelope):
    with pytest.raises(DecodeError):
        open_envelope(envelope, now=NOW)


def test_envelope_with_trailing_bytes_is_refused():
    with pytest.raises(DecodeError):
        open_envelope(sealed() + b"\x00", now=NOW)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param([], id="empty-list"),
        pytest.param(["a", "b", b"c"], id="three-fields"),
        pytest.param(["a", "b", b"c", b"d", b"e"], id="five-fields"),
        pytest.param({"signer": "a"}, id="map"),
        pytest.param(7, id="int"),
        pytest.param("abcd", id="str"),
        pytest.param(b"abcd", id="bin"),
    ],
)
def test_envelope_of_the_wrong_shape_is_refused(value):
    with pytest.raises(DecodeError, match="envelope must be"):
        open_envelope(msgpack.packb(value, use_bin_type=True), now=NOW)


@pytest.mark.parametrize("position", [0, 1, 2, 3])
@pytest.mark.parametrize("wrong", [None, 1, 1.5, True, [], {}], ids=repr)
def test_envelope_fields_of_the_wrong_type_are_refused(position, wrong):
    fields = outer(sealed())
    fields[position] = wrong
    with pytest.raises(DecodeError):
        open_envelope(repack(*fields), now=NOW)


@pytest.mark.parametrize("position", [0, 1, 2, 3])
def test_envelope_with_str_and_bin_swapped_is_refused(position):
    fields = outer(sealed())
    value = fields[position]
    fields[position] = value.encode() if isinstance(value, str) else value.decode("latin-1")
    with pytest.raises(DecodeError):
        open_envelope(repack(*fields), now=NOW)


# ---- malformed payloads (correctly signed) ----------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1", id="not-msgpack"),
        pytest.param(b"\x83\xa1q", id="truncated-map"),
        pytest.param(msgpack.packb(record_body()) + b"\x00", id="trailing-bytes"),
        pytest.param(msgpack.packb([1, NOW, LIFETIME]), id="list"),
        pytest.param(msgpack.packb("q"), id="str"),
        pytest.param(msgpack.packb(None), id="nil"),
        pytest.param(msgpack.packb({1: 1, "q": 1}), id="int-keys"),
        pytest.param(b"\x81" * 3000 + b"\xa1q\x00", id="deeply-nested-maps"),
    ],
)
@pytest.mark.parametrize("payload_type", [RECORD_TYPE, NOTICE_TYPE])
def test_payload_that_is_not_a_msgpack_map_is_refused(payload, payload_type):
    with pytest.raises(DecodeError):
        open_envelope(crafted(payload, payload_type=payload_type), now=NOW)


@pytest.mark.parametrize("key", ["q", "t", "ttl"])
def test_record_missing_a_required_field_is_refused(key):
    with pytest.raises(DecodeError, match="lacks"):
        open_record(crafted(record_body(**{key: DELETE})), now=NOW)


NAN, INF = math.nan, math.inf
TOO_LONG_TEXT = "x" * 129

BAD_RECORD_FIELDS = [
    # seq
    ("q", -1), ("q", 1.0), ("q", "1"), ("q", True), ("q", None), ("q", [1]),
    # issued_at
    ("t", -1.0), ("t", 1e11 + 1), ("t", NAN), ("t", INF), ("t", -INF), ("t", True), ("t", "x"), ("t", None),
    # lifetime
    ("ttl", -0.5), ("ttl", 3600.5), ("ttl", NAN), ("ttl", INF), ("ttl", True), ("ttl", "60"),
    # name, user_id
    ("n", TOO_LONG_TEXT), ("n", 5), ("n", None), ("n", b"bytes"), ("n", ["a"]),
    ("u", TOO_LONG_TEXT), ("u", 5), ("u", False),
    # addrs
    ("a", "ws://x:1"), ("a", ["ws://x:1"] * 17), ("a", ["w" * 257]), ("a", [""]), ("a", [5]),
    ("a", [["ws://x:1"]]), ("a", {"ws://x:1": 1}), ("a", None),
    # protocol
    ("v", -1), ("v", 65537), ("v", 1.0), ("v", True), ("v", "1"),
    # models
    ("m", ["m"] * 257), ("m", ["m" * 201]), ("m", [""]), ("m", 7), ("m", "llama3"), ("m", [None]),
    # counts
    ("gc", -1), ("gc", 2**20 + 1), ("gc", True), ("gc", 1.5),
    ("cc", -1), ("cc", 2**20 + 1), ("cc", False), ("cc", "8"),
    ("at", -1), ("at", 2**20 + 1), ("at", True), ("at", NAN),
    ("gm", -1), ("gm", 2**40 + 1), ("gm", True), ("gm", 1024.0),
    # load, response time
    ("l", 1.5), ("l", -0.1), ("l", NAN), ("l", INF), ("l", True), ("l", "0.5"),
    ("rt", 1e9 + 1), ("rt", -1.0), ("rt", NAN), ("rt", INF), ("rt", False),
    # status
    ("s", "gone"), ("s", "ONLINE"), ("s", ""), ("s", 1), ("s", TOO_LONG_TEXT), ("s", None), ("s", True),
]


@pytest.mark.parametrize(("key", "value"), BAD_RECORD_FIELDS, ids=[f"{k}={v!r:.20}" for k, v in BAD_RECORD_FIELDS])
def test_record_with_a_malformed_field_is_refused(key, value):
    with pytest.raises(DecodeError):
        open_record(crafted(record_body(**{key: value})), now=NOW)


BIG = RecordLimits(max_envelope_bytes=1 << 20)  # for limits that need more than 16 KiB to reach

EDGE_RECORD_FIELDS = [
    ("q", 0, DEFAULT_LIMITS, "seq", 0),
    ("q", 2**64 - 1, DEFAULT_LIMITS, "seq", 2**64 - 1),
    ("ttl", 0.0, DEFAULT_LIMITS, "lifetime", 0.0),
    ("ttl", 3600.0, DEFAULT_LIMITS, "lifetime", 3600.0),
    ("n", "x" * 128, DEFAULT_LIMITS, "name", "x" * 128),
    ("n", "é" * 128, DEFAULT_LIMITS, "name", "é" * 128),
    ("u", "", DEFAULT_LIMITS, "user_id", ""),
    ("a", [], DEFAULT_LIMITS, "addrs", ()),
    ("a", ["w" * 256] * 16, DEFAULT_LIMITS, "addrs", ("w" * 256,) * 16),
    ("v", 0, DEFAULT_LIMITS, "protocol", 0),
    ("v", 65536, DEFAULT_LIMITS, "protocol", 65536),
    ("m", ["m"] * 256, DEFAULT_LIMITS, "models", ("m",) * 256),
    ("m", ["m" * 200] * 256, BIG, "models", ("m" * 200,) * 256),
    ("gc", 2**20, DEFAULT_LIMITS, "gpu_count", 2**20),
    ("gm", 2**40, DEFAULT_LIMITS, "gpu_memory", 2**40),
    ("l", 0.0, DEFAULT_LIMITS, "current_load", 0.0),
    ("l", 1.0, DEFAULT_LIMITS, "current_load", 1.0),
    ("rt", 1e9, DEFAULT_LIMITS, "response_time", 1e9),
    ("s", "draining", DEFAULT_LIMITS, "status", NodeStatus.DRAINING),
]


@pytest.mark.parametrize(
    ("key", "value", "limits", "field", "expected"),
    EDGE_RECORD_FIELDS,
    ids=[f"{e[0]}={e[1]!r:.16}" for e in EDGE_RECORD_FIELDS],
)
def test_record_fields_at_their_limits_are_accepted(key, value, limits, field, expected):
    record = open_record(crafted(record_body(**{key: value})), now=NOW, limits=limits).record
    assert getattr(record, field) == expected


def test_issued_at_of_zero_is_accepted_while_alive():
    assert open_record(crafted(record_body(t=0, ttl=3600.0)), now=10.0).record.issued_at == 0.0


@pytest.mark.parametrize(
    ("limits", "body"),
    [
        (RecordLimits(max_models=2), record_body(m=["a", "b", "c"])),
        (RecordLimits(max_model_chars=3), record_body(m=["abcd"])),
        (RecordLimits(max_addrs=1), record_body(a=["ws://a:1", "ws://b:1"])),
        (RecordLimits(max_addr_chars=8), record_body(a=["ws://abc:1"])),
        (RecordLimits(max_text_chars=4), record_body(n="abcde")),
        (RecordLimits(max_text_chars=4), record_body(s="online")),
        (RecordLimits(max_lifetime=60.0), record_body(ttl=61.0)),
    ],
)
def test_custom_limits_are_enforced(limits, body):
    open_record(crafted(body), now=NOW)  # fine under the defaults
    with pytest.raises(DecodeError):
        open_record(crafted(body), now=NOW, limits=limits)


BAD_NOTICE_FIELDS = [
    ("k", "alive"), ("k", "SUSPECT"), ("k", DELETE), ("k", 1), ("k", None), ("k", b"suspect"), ("k", ["suspect"]),
    ("k", {"suspect": 1}),
    ("id", DELETE), ("id", ""), ("id", "x" * 65), ("id", 5), ("id", b"id"), ("id", None),
    ("q", DELETE), ("q", -1), ("q", True), ("q", 1.0), ("q", "7"),
    ("t", DELETE), ("t", NAN), ("t", INF), ("t", True), ("t", -1.0), ("t", 1e11 + 1), ("t", "now"),
]


@pytest.mark.parametrize(("key", "value"), BAD_NOTICE_FIELDS, ids=[f"{k}={v!r:.20}" for k, v in BAD_NOTICE_FIELDS])
def test_notice_with_a_malformed_field_is_refused(key, value):
    with pytest.raises(DecodeError):
        open_envelope(crafted(notice_body(**{key: value}), payload_type=NOTICE_TYPE), now=NOW)


def test_record_body_under_the_notice_type_is_refused_and_vice_versa():
    with pytest.raises(DecodeError):
        open_envelope(crafted(record_body(), payload_type=NOTICE_TYPE), now=NOW)
    with pytest.raises(DecodeError):
        open_envelope(crafted(notice_body(), payload_type=RECORD_TYPE), now=NOW)


# ---- fuzzing: open_envelope raises only RemoteProtocolError subclasses ------------------------------------

ALLOWED = (DecodeError, BadSignature, RecordExpired)

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=12,
)
record_keys = st.sampled_from(["q", "t", "ttl", "n", "u", "a", "v", "m", "gc", "gm", "cc", "l", "at", "rt", "s"])
notice_keys = st.sampled_from(["k", "id", "q", "t"])


def check_open(envelope: bytes):
    try:
        return open_envelope(envelope, now=NOW)
    except RemoteProtocolError as exc:
        assert isinstance(exc, ALLOWED), repr(exc)
        return None


@FUZZ
@given(st.binary(max_size=400))
def test_open_envelope_on_arbitrary_bytes_raises_only_protocol_errors(data):
    assert check_open(data) is None


@pytest.mark.slow
@FUZZ
@given(st.lists(msgpack_values, min_size=3, max_size=5))
def test_open_envelope_on_arbitrary_msgpack_arrays_raises_only_protocol_errors(fields):
    assert check_open(msgpack.packb(fields, use_bin_type=True)) is None


@pytest.mark.slow
@FUZZ
@given(
    st.dictionaries(record_keys, msgpack_values, max_size=15),
    st.fixed_dictionaries({"q": st.integers(0, 10), "t": st.just(NOW), "ttl": st.just(LIFETIME)}),
    st.booleans(),
)
def test_open_envelope_on_signed_arbitrary_record_bodies_raises_only_protocol_errors(fields, base, keep_base):
    body = {**base, **fields} if keep_base else fields
    opened = check_open(crafted(body))
    assert opened is None or opened.record.peer_id == ALICE.peer_id


@pytest.mark.slow
@FUZZ
@given(st.dictionaries(notice_keys, msgpack_values, max_size=4), st.sampled_from([NOTICE_TYPE, RECORD_TYPE]))
def test_open_envelope_on_signed_arbitrary_notice_bodies_raises_only_protocol_errors(body, payload_type):
    check_open(crafted(body, payload_type=payload_type))


@pytest.mark.slow
@FUZZ
@given(st.binary(max_size=200), st.text(max_size=20))
def test_open_envelope_on_signed_arbitrary_payload_bytes_raises_only_protocol_errors(payload, payload_type):
    assert check_open(crafted(payload, payload_type=payload_type)) is None or payload_type in (RECORD_TYPE, NOTICE_TYPE)


VALID_ENVELOPES = [
    seal_record(ALICE, FULL_RECORD).envelope,
    sealed(BOB),
    seal_notice(ALICE, make_notice()).envelope,
]


@st.composite
def mutated_envelopes(draw):
    index = draw(st.sampled_from(range(len(VALID_ENVELOPES))))
    data = bytearray(VALID_ENVELOPES[index])
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        position = draw(st.integers(min_value=0, max_value=len(data) - 1))
        action = draw(st.sampled_from(["replace", "xor", "delete", "insert", "truncate"]))
        if action == "replace":
            data[position] = draw(st.integers(0, 255))
        elif action == "xor":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "delete":
            del data[position]
        elif action == "insert":
            data.insert(position, draw(st.integers(0, 255)))
        else:
            del data[position:]
        if not data:
            break
    return index, bytes(data)


@pytest.mark.slow
@FUZZ
@given(mutated_envelopes())
def test_open_envelope_on_mutated_envelopes_raises_only_protocol_errors(case):
    index, data = case
    opened = check_open(data)
    if opened is not None:  # only a mutation that changes nothing signed can still open
        original = open_envelope(VALID_ENVELOPES[index], now=NOW)
        assert replace(opened, envelope=b"") == replace(original, envelope=b"")


# ---- attached servers --------------------------------------------------------------------------------------


def test_attached_ids_split_back_into_host_and_node():
    assert attached_id(ALICE.peer_id, "laptop").split("/", 1) == [ALICE.peer_id, "laptop"]


@pytest.mark.parametrize(
    ("attached", "reason"),
    [
        ("laptop", "list"),
        ([{"id": f"n{i}"} for i in range(DEFAULT_LIMITS.max_attached + 1)], "at most"),
        ([{"id": "a"}, {"id": "a"}], "distinct"),
        ([{"id": "a/b"}], "'/'"),
        ([{"id": ""}], "node_id"),
        ([{"n": "no id"}], "node_id"),
        (["not a map"], "map"),
        ([{"id": "a", "m": [f"m{i}" for i in range(DEFAULT_LIMITS.max_attached_models + 1)]}], "models"),
        ([{"id": "a", "l": 2.0}], "current_load"),
        ([{"id": "a", "s": "sleeping"}], "status"),
    ],
)
def test_malformed_attached_servers_are_refused(attached, reason):
    with pytest.raises(DecodeError, match=reason):
        open_record(crafted(record_body(x=attached)), now=NOW)
