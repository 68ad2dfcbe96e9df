"""Signed statements gossiped between nodes: node records and liveness notices.

Both travel in the same envelope, modelled on libp2p's signed envelopes (RFC 0002): the signature covers a
domain-separation string, a payload type and the payload, each length-prefixed, so a signature made for one
purpose can never be replayed as another. The envelope names its signer by peer id, and the peer id *is* the
public key, so an envelope can be checked before its payload is even decoded.

    envelope = msgpack [signer_peer_id, payload_type, payload, signature]

A :class:`NodeRecord` is what a node says about itself; a newer record (higher ``seq``) always replaces an
older one. A :class:`Notice` is what a node says about another: "I suspect it" or "I confirmed it dead", tied
to the record seq it is about, so that the accused node refutes it simply by issuing a newer record.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

import msgpack

from p2pnode.core.identity import MAX_PEER_ID_CHARS, Identity, verify_signature
from p2pnode.errors import DecodeError, RecordExpired

__all__ = [
    "DEFAULT_LIMITS",
    "AttachedNode",
    "PROTOCOL_VERSION",
    "NodeRecord",
    "NodeStatus",
    "Notice",
    "NoticeKind",
    "RecordLimits",
    "SignedNotice",
    "SignedRecord",
    "attached_id",
    "next_seq",
    "open_envelope",
    "open_record",
    "seal_notice",
    "seal_record",
]

PROTOCOL_VERSION = 2  # 2: Noise-encrypted links keyed by the network key
_DOMAIN = b"dcn-signed-envelope"
_RECORD_TYPE = "/dcn/record/1"
_NOTICE_TYPE = "/dcn/notice/1"


class NodeStatus(enum.StrEnum):
    ONLINE = "online"  # serving and accepting work
    BUSY = "busy"  # alive, but turning new work away
    DRAINING = "draining"  # finishing its jobs before it stops
    LEFT = "left"  # shut down on purpose: its last word
    OFFLINE = "offline"  # (attached servers only) their heartbeats stopped


class NoticeKind(enum.StrEnum):
    SUSPECT = "suspect"  # the notifier lost contact; the target may refute with a newer record
    DEAD = "dead"  # the notifier confirmed the target is gone (its address refuses connections)


@dataclass(frozen=True)
class RecordLimits:
    """Bounds every received record and notice must respect; anything beyond is refused, not truncated."""

    max_envelope_bytes: int = 16 * 1024
    max_text_chars: int = 128  # name, user_id, status
    max_addrs: int = 16
    max_addr_chars: int = 256
    max_models: int = 256
    max_model_chars: int = 200
    max_attached: int = 8  # servers one node serves for others (POST /api/distributed/register)
    max_attached_models: int = 64
    max_lifetime: float = 3600.0  # seconds
    max_clock_skew: float = 30.0  # how far in the future an issue time may lie


DEFAULT_LIMITS = RecordLimits()


@dataclass(frozen=True)
class AttachedNode:
    """An LLM server that runs no daemon, registered on a node that serves and gossips it as a node of its own.
    Jobs for it go through that node (its host), so it lives in the host's record and dies with the host."""

    node_id: str  # as registered: unique on its host; network-wide it is ``attached_id(host, node_id)``
    name: str = ""
    user_id: str = ""  # who registered it: only they may update or remove it
    models: tuple[str, ...] = ()
    gpu_count: int = 0
    gpu_memory: int = 0  # MB
    cpu_cores: int = 0
    current_load: float = 0.0
    active_tasks: int = 0
    response_time: float = 0.0  # ms
    status: NodeStatus = NodeStatus.ONLINE


def attached_id(host: str, node_id: str) -> str:
    """The network-wide id of a server attached to ``host``: peer ids never contain a slash, so it splits back."""
    return f"{host}/{node_id}"


@dataclass(frozen=True)
class NodeRecord:
    """What a node says about itself. Times are wall-clock seconds (Unix time) of the issuer."""

    peer_id: str
    seq: int  # only grows: a higher seq replaces a lower one
    issued_at: float
    lifetime: float  # seconds after issued_at during which the record is valid
    name: str = ""
    user_id: str = ""
    addrs: tuple[str, ...] = ()  # websocket URLs peers can dial, best first
    protocol: int = PROTOCOL_VERSION
    models: tuple[str, ...] = ()
    gpu_count: int = 0
    gpu_memory: int = 0  # MB, summed over GPUs
    cpu_cores: int = 0
    current_load: float = 0.0  # 0..1
    active_tasks: int = 0
    response_time: float = 0.0  # ms, moving average of real requests
    status: NodeStatus = NodeStatus.ONLINE
    attached: tuple[AttachedNode, ...] = ()

    def expires_at(self) -> float:
        return self.issued_at + self.lifetime


@dataclass(frozen=True)
class Notice:
    """What ``issuer`` says about ``target``'s record number ``seq``."""

    issuer: str
    kind: NoticeKind
    target: str
    seq: int
    issued_at: float


@dataclass(frozen=True)
class SignedRecord:
    record: NodeRecord
    envelope: bytes  # exactly the bytes that were signed and gossiped; forwarded untouched


@dataclass(frozen=True)
class SignedNotice:
    notice: Notice
    envelope: bytes


# Compact wire keys keep gossip small (a record is sent many times per second network-wide).
# The peer id is absent: it is the envelope's signer.
_RECORD_KEYS: dict[str, str] = {
    "seq": "q",
    "issued_at": "t",
    "lifetime": "ttl",
    "name": "n",
    "user_id": "u",
    "addrs": "a",
    "protocol": "v",
    "models": "m",
    "gpu_count": "gc",
    "gpu_memory": "gm",
    "cpu_cores": "cc",
    "current_load": "l",
    "active_tasks": "at",
    "response_time": "rt",
    "status": "s",
    "attached": "x",
}
# An attached server's fields are a node's capabilities, under the same keys, plus its own id.
_ATTACHED_KEYS: dict[str, str] = {
    "node_id": "id",
    **{field: _RECORD_KEYS[field] for field in (
        "name", "user_id", "models", "gpu_count", "gpu_memory", "cpu_cores", "current_load", "active_tasks",
        "response_time", "status",
    )},
}
_MAX_U64 = 2**64 - 1
_MAX_COUNT = 1 << 20  # gpu_count, cpu_cores, active_tasks: generous, but bounded
_MAX_MEMORY_MB = 1 << 40


def next_seq(previous: int, now: float) -> int:
    """A seq that beats ``previous`` and survives restarts: microseconds of wall time, or previous + 1."""
    return max(previous + 1, int(now * 1_000_000))


def _signed_bytes(payload_type: str, payload: bytes) -> bytes:
    parts = (_DOMAIN, payload_type.encode(), payload)
    return b"".join(_uvarint(len(p)) + p for p in parts)


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _seal(identity: Identity, payload_type: str, payload: bytes) -> bytes:
    signature = identity.sign(_signed_bytes(payload_type, payload))
    return msgpack.packb([identity.peer_id, payload_type, payload, signature], use_bin_type=True)


def seal_record(identity: Identity, record: NodeRecord) -> SignedRecord:
    if record.peer_id != identity.peer_id:
        raise ValueError("a node signs only its own record")
    body = {key: _to_wire(getattr(record, field)) for field, key in _RECORD_KEYS.items()}
    payload = msgpack.packb(body, use_bin_type=True)
    return SignedRecord(record, _seal(identity, _RECORD_TYPE, payload))


def seal_notice(identity: Identity, notice: Notice) -> SignedNotice:
    if notice.issuer != identity.peer_id:
        raise ValueError("a notice is signed by its issuer")
    payload = msgpack.packb(
        {"k": str(notice.kind), "id": notice.target, "q": notice.seq, "t": notice.issued_at}, use_bin_type=True
    )
    return SignedNotice(notice, _seal(identity, _NOTICE_TYPE, payload))


def _to_wire(value: Any) -> Any:
    if isinstance(value, AttachedNode):
        return {key: _to_wire(getattr(value, field)) for field, key in _ATTACHED_KEYS.items()}
    if isinstance(value, tuple):
        return [_to_wire(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


def open_envelope(
    envelope: bytes, *, now: float, limits: RecordLimits = DEFAULT_LIMITS
) -> SignedRecord | SignedNotice:
    """Verify and decode any signed statement. Raises :class:`DecodeError`, :class:`BadSignature` or
    :class:`RecordExpired`; never anything else for any input bytes."""
    if not isinstance(envelope, bytes) or len(envelope) > limits.max_envelope_bytes:
        raise DecodeError(f"envelope missing or over {limits.max_envelope_bytes} bytes")
    try:
        outer = msgpack.unpackb(envelope, raw=False, use_list=True)
    except Exception as exc:  # msgpack raises many unrelated types for garbage
        raise DecodeError(f"envelope is not msgpack: {exc}") from None
    if not (isinstance(outer, list) and len(outer) == 4):
        raise DecodeError("envelope must be [signer, payload_type, payload, signature]")
    signer, payload_type, payload, signature = outer
    if not isinstance(signer, str) or not isinstance(payload_type, str) or not isinstance(payload, bytes):
        raise DecodeError("envelope fields have the wrong types")
    if not isinstance(signature, bytes):
        raise DecodeError("signature must be bytes")
    verify_signature(signer, signature, _signed_bytes(payload_type, payload))
    body = _unpack_map(payload)
    if payload_type == _RECORD_TYPE:
        record = _record_from_wire(signer, body, limits)
        _check_time(record.issued_at, record.lifetime, now, limits)
        return SignedRecord(record, envelope)
    if payload_type == _NOTICE_TYPE:
        notice = _notice_from_wire(signer, body)
        _check_time(notice.issued_at, limits.max_lifetime, now, limits)
        return SignedNotice(notice, envelope)
    raise DecodeError(f"unknown payload type {payload_type[:40]!r}")


def open_record(envelope: bytes, *, now: float, limits: RecordLimits = DEFAULT_LIMITS) -> SignedRecord:
    """Like :func:`open_envelope`, but only a node record is acceptable."""
    opened = open_envelope(envelope, now=now, limits=limits)
    if not isinstance(opened, SignedRecord):
        raise DecodeError("expected a node record, got a notice")
    return opened


def _unpack_map(payload: bytes) -> dict[str, Any]:
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:
        raise DecodeError(f"payload is not msgpack: {exc}") from None
    if not isinstance(body, dict):
        raise DecodeError("payload must be a map")
    return body


def _check_time(issued_at: float, lifetime: float, now: float, limits: RecordLimits) -> None:
    if issued_at > now + limits.max_clock_skew:
        raise RecordExpired(f"issued {issued_at - now:.0f}s in the future (max skew {limits.max_clock_skew:.0f}s)")
    if issued_at + lifetime < now:
        raise RecordExpired(f"expired {now - issued_at - lifetime:.0f}s ago")


def _record_from_wire(signer: str, body: dict[str, Any], limits: RecordLimits) -> NodeRecord:
    # The peer id is not repeated in the payload: the signer of the envelope is the record's peer.
    values: dict[str, Any] = {"peer_id": signer}
    for field, key in _RECORD_KEYS.items():
        if key in body:
            values[field] = body[key]
    for required in ("seq", "issued_at", "lifetime"):
        if required not in values:
            raise DecodeError(f"record lacks {required}")
    values["seq"] = _integer(values["seq"], "seq", _MAX_U64)
    values["issued_at"] = _number(values["issued_at"], "issued_at", 0.0, 1e11)
    values["lifetime"] = _number(values["lifetime"], "lifetime", 0.0, limits.max_lifetime)
    if "addrs" in values:
        values["addrs"] = _texts(values["addrs"], "addrs", limits.max_addrs, limits.max_addr_chars)
    if "protocol" in values:
        values["protocol"] = _integer(values["protocol"], "protocol", 1 << 16)
    if "attached" in values:
        attached = values["attached"]
        if not isinstance(attached, list) or len(attached) > limits.max_attached:
            raise DecodeError(f"attached must be a list of at most {limits.max_attached} servers")
        values["attached"] = tuple(_attached_from_wire(item, limits) for item in attached)
        if len({a.node_id for a in values["attached"]}) != len(attached):
            raise DecodeError("attached servers must have distinct node ids")
    _check_capabilities(values, limits, max_models=limits.max_models)
    return NodeRecord(**values)


def _attached_from_wire(item: Any, limits: RecordLimits) -> AttachedNode:
    if not isinstance(item, dict):
        raise DecodeError("an attached server must be a map")
    values = {field: item[key] for field, key in _ATTACHED_KEYS.items() if key in item}
    values["node_id"] = _text(values.get("node_id"), "attached node_id", limits.max_text_chars, allow_empty=False)
    if "/" in values["node_id"]:
        raise DecodeError("attached node_id must not contain '/'")
    _check_capabilities(values, limits, max_models=limits.max_attached_models)
    return AttachedNode(**values)


def _check_capabilities(values: dict[str, Any], limits: RecordLimits, *, max_models: int) -> None:
    """Validate, in place, the fields nodes and attached servers share."""
    for field in ("name", "user_id"):
        if field in values:
            values[field] = _text(values[field], field, limits.max_text_chars)
    if "models" in values:
        values["models"] = _texts(values["models"], "models", max_models, limits.max_model_chars)
    for field in ("gpu_count", "cpu_cores", "active_tasks"):
        if field in values:
            values[field] = _integer(values[field], field, _MAX_COUNT)
    if "gpu_memory" in values:
        values["gpu_memory"] = _integer(values["gpu_memory"], "gpu_memory", _MAX_MEMORY_MB)
    if "current_load" in values:
        values["current_load"] = _number(values["current_load"], "current_load", 0.0, 1.0)
    if "response_time" in values:
        values["response_time"] = _number(values["response_time"], "response_time", 0.0, 1e9)
    if "status" in values:
        try:
            values["status"] = NodeStatus(_text(values["status"], "status", limits.max_text_chars))
        except ValueError:
            raise DecodeError(f"unknown status {values['status']!r}") from None


def _notice_from_wire(issuer: str, body: dict[str, Any]) -> Notice:
    try:
        kind = NoticeKind(body.get("k"))
    except ValueError:
        raise DecodeError("unknown notice kind") from None
    return Notice(
        issuer=issuer,
        kind=kind,
        target=_text(body.get("id"), "target", MAX_PEER_ID_CHARS, allow_empty=False),
        seq=_integer(body.get("q"), "seq", _MAX_U64),
        issued_at=_number(body.get("t"), "issued_at", 0.0, 1e11),
    )


def _text(value: Any, field: str, max_chars: int, *, allow_empty: bool = True) -> str:
    if not isinstance(value, str) or len(value) > max_chars or (not value and not allow_empty):
        raise DecodeError(f"{field} must be a string of at most {max_chars} characters")
    return value


def _texts(value: Any, field: str, max_items: int, max_chars: int) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > max_items:
        raise DecodeError(f"{field} must be a list of at most {max_items} strings")
    return tuple(_text(v, field, max_chars, allow_empty=False) for v in value)


def _integer(value: Any, field: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise DecodeError(f"{field} must be an integer in 0..{maximum}")
    return value


def _number(value: Any, field: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DecodeError(f"{field} must be a finite number")
    if not low <= value <= high:
        raise DecodeError(f"{field} must lie in {low:g}..{high:g}")
    return float(value)

