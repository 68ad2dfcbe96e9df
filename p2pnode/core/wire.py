"""Peer messages and their msgpack codec, with hard limits on size and shape.

One websocket binary message carries one peer message, encoded as a msgpack array whose first element is the
message type. :func:`decode` accepts any bytes and either returns a message or raises :class:`DecodeError`
(a :class:`RemoteProtocolError`), never anything else: peers are not trusted to send well-formed data.

Handshake (see ``p2pnode.net.transport``): a Noise ``NNpsk0`` handshake keyed by the network key, then every
message is encrypted. The first encrypted message each side sends is its Auth::

    A -> B  Noise(psk, e)                         B -> A  Noise(e, ee)
    A -> B  Auth(version, id_A, sig_A, record_A)  B -> A  Auth(version, id_B, sig_B, record_B)

Each signature covers the Noise handshake hash, which both ephemeral keys and the network key went into, and
the signer's role: an Auth is valid on this one connection only, in this one direction.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Union

import msgpack

from p2pnode.core.identity import MAX_PEER_ID_CHARS
from p2pnode.errors import DecodeError, LocalProtocolError

__all__ = [
    "Auth",
    "JobCancel",
    "JobChunk",
    "JobCredit",
    "JobEnd",
    "JobMessage",
    "JobOpen",
    "Message",
    "Ping",
    "Pong",
    "Rumors",
    "SyncReply",
    "SyncRequest",
    "WireLimits",
    "decode",
    "encode",
    "auth_transcript",
    "job_transcript",
]

_TRANSCRIPT_DOMAIN = b"dcn-auth-2"
_JOB_DOMAIN = b"dcn-job-1"


class MessageType(enum.IntEnum):
    # 1 was version 1's Hello
    AUTH = 2
    RUMORS = 3
    SYNC_REQUEST = 4
    SYNC_REPLY = 5
    PING = 6
    PONG = 7
    JOB_OPEN = 10
    JOB_CHUNK = 11
    JOB_END = 12
    JOB_CANCEL = 13
    JOB_CREDIT = 14


@dataclass(frozen=True)
class WireLimits:
    max_message_bytes: int = 1024 * 1024
    max_items: int = 1024  # statements in one Rumors / SyncReply
    max_item_bytes: int = 16 * 1024
    max_digest: int = 8192  # entries of a SyncRequest digest, and peer ids wanted
    max_job_messages: int = 1000  # chat messages in one job
    max_job_options: int = 64
    max_job_timeout: float = 3600.0
    max_window: int = 4096  # chunks a job may have in flight


DEFAULT_WIRE_LIMITS = WireLimits()


class _Message:
    """Every message is ``[TYPE, *its fields in declaration order]`` on the wire (tuples as arrays)."""

    TYPE: ClassVar[MessageType]

    def wire_fields(self) -> list[Any]:
        return [list(v) if isinstance(v, tuple) else v for v in (getattr(self, f.name) for f in fields(self))]


@dataclass(frozen=True)
class Auth(_Message):
    TYPE = MessageType.AUTH
    version: int  # PROTOCOL_VERSION of the sender
    peer_id: str
    signature: bytes  # over auth_transcript(handshake hash, the sender's role)
    record: bytes  # the sender's signed record envelope


@dataclass(frozen=True)
class Rumors(_Message):
    TYPE = MessageType.RUMORS
    items: tuple[bytes, ...]  # signed envelopes (records and notices)


@dataclass(frozen=True)
class SyncRequest(_Message):
    TYPE = MessageType.SYNC_REQUEST
    digest: dict[str, int]  # peer id -> seq held


@dataclass(frozen=True)
class SyncReply(_Message):
    TYPE = MessageType.SYNC_REPLY
    items: tuple[bytes, ...]  # envelopes the requester lacked
    want: tuple[str, ...]  # peer ids the requester holds newer records of


@dataclass(frozen=True)
class Ping(_Message):
    """Are you there? Sent only on a link that has been quiet for a while: any message proves liveness."""

    TYPE = MessageType.PING


@dataclass(frozen=True)
class Pong(_Message):
    """Yes."""

    TYPE = MessageType.PONG


@dataclass(frozen=True)
class JobOpen(_Message):
    """Coordinator -> worker: run this chat and stream it back. ``job`` is the coordinator's number for it on
    this link; the worker may send ``window`` chunks before it waits for credit."""

    TYPE = MessageType.JOB_OPEN
    job: int
    model: str
    messages: tuple[dict[str, str], ...]  # {"role": ..., "content": ...}
    options: dict[str, Any]  # Ollama option names
    timeout: float  # seconds the worker may spend
    user: str  # who asked (the coordinator vouches for it)
    window: int
    target: str = ""  # an attached server of the worker's (its node_id), or "" for the worker's own compute
    stream: bool = True  # False: the coordinator wants the whole answer, which may come as one chunk
    signature: bytes = b""  # the coordinator's, over job_transcript(worker id, this job with an empty signature)


@dataclass(frozen=True)
class JobChunk(_Message):
    TYPE = MessageType.JOB_CHUNK
    job: int
    content: str


@dataclass(frozen=True)
class JobEnd(_Message):
    """Worker -> coordinator: the last word on a job. ``status`` 0 is success; otherwise an HTTP-like status
    (404 unknown model, 429 busy, 503 backend down, 504 deadline) and ``error`` says what happened."""

    TYPE = MessageType.JOB_END
    job: int
    done_reason: str
    prompt_tokens: int
    completion_tokens: int
    status: int
    error: str
    content: str = ""  # the answer's last piece: a whole answer takes one message instead of two


@dataclass(frozen=True)
class JobCancel(_Message):
    TYPE = MessageType.JOB_CANCEL
    job: int


@dataclass(frozen=True)
class JobCredit(_Message):
    """Coordinator -> worker: I consumed ``chunks`` more; you may send that many more."""

    TYPE = MessageType.JOB_CREDIT
    job: int
    chunks: int


JobMessage = Union[JobOpen, JobChunk, JobEnd, JobCancel, JobCredit]
Message = Union[Auth, Rumors, SyncRequest, SyncReply, Ping, Pong, JobOpen, JobChunk, JobEnd, JobCancel, JobCredit]


def encode(message: Message) -> bytes:
    if not isinstance(message, _Message):
        raise LocalProtocolError(f"not a peer message: {message!r}")
    return msgpack.packb([message.TYPE, *message.wire_fields()], use_bin_type=True)


def decode(data: bytes, limits: WireLimits = DEFAULT_WIRE_LIMITS) -> Message:
    if not isinstance(data, (bytes, bytearray)):
        raise DecodeError("peer messages are binary")
    if len(data) > limits.max_message_bytes:
        raise DecodeError(f"message of {len(data)} bytes is over the {limits.max_message_bytes}-byte limit")
    try:
        body = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_array_len=max(limits.max_items, limits.max_digest) + 8,
            max_map_len=limits.max_digest,
            max_str_len=limits.max_message_bytes,  # per-field limits are checked by each decoder
            max_bin_len=limits.max_message_bytes,
        )
    except Exception as exc:  # msgpack raises ValueError, ExtraData, StackError, ... for garbage
        raise DecodeError(f"not a msgpack message: {type(exc).__name__}") from None
    if not isinstance(body, list) or not body or isinstance(body[0], bool) or not isinstance(body[0], int):
        raise DecodeError("a message is an array starting with its type")
    try:
        kind = MessageType(body[0])
    except ValueError:
        raise DecodeError(f"unknown message type {body[0]}") from None
    return _DECODERS[kind](body[1:], limits)


def _arity(fields: list[Any], n: int, name: str) -> None:
    if len(fields) != n:
        raise DecodeError(f"{name} has {len(fields)} fields, expected {n}")


def _decode_auth(fields: list[Any], limits: WireLimits) -> Auth:
    _arity(fields, 4, "Auth")
    version, peer_id, signature, record = fields
    if isinstance(version, bool) or not isinstance(version, int) or not 0 < version < 1 << 16:
        raise DecodeError("Auth.version must be a small positive integer")
    if not isinstance(peer_id, str) or not 0 < len(peer_id) <= MAX_PEER_ID_CHARS:
        raise DecodeError("Auth.peer_id must be a peer id")
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise DecodeError("Auth.signature must be 64 bytes")
    if not isinstance(record, bytes) or len(record) > limits.max_item_bytes:
        raise DecodeError(f"Auth.record must be bytes, at most {limits.max_item_bytes}")
    return Auth(version, peer_id, signature, record)


def _items(value: Any, limits: WireLimits, name: str) -> tuple[bytes, ...]:
    if not isinstance(value, list) or len(value) > limits.max_items:
        raise DecodeError(f"{name} must be a list of at most {limits.max_items} items")
    if not all(isinstance(item, bytes) and len(item) <= limits.max_item_bytes for item in value):
        raise DecodeError(f"{name} items must be bytes, at most {limits.max_item_bytes} each")
    return tuple(value)


def _decode_rumors(fields: list[Any], limits: WireLimits) -> Rumors:
    _arity(fields, 1, "Rumors")
    return Rumors(_items(fields[0], limits, "Rumors.items"))


def _decode_sync_request(fields: list[Any], limits: WireLimits) -> SyncRequest:
    _arity(fields, 1, "SyncRequest")
    digest = fields[0]
    if not isinstance(digest, dict):
        raise DecodeError("SyncRequest.digest must be a map")
    for peer_id, seq in digest.items():
        if not isinstance(peer_id, str) or len(peer_id) > MAX_PEER_ID_CHARS:
            raise DecodeError("SyncRequest.digest keys must be peer ids")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise DecodeError("SyncRequest.digest values must be seqs")
    return SyncRequest(digest)


def _decode_sync_reply(fields: list[Any], limits: WireLimits) -> SyncReply:
    _arity(fields, 2, "SyncReply")
    items = _items(fields[0], limits, "SyncReply.items")
    want = fields[1]
    if not isinstance(want, list) or len(want) > limits.max_digest:
        raise DecodeError("SyncReply.want must be a list of peer ids")
    if not all(isinstance(p, str) and len(p) <= MAX_PEER_ID_CHARS for p in want):
        raise DecodeError("SyncReply.want must be a list of peer ids")
    return SyncReply(items, tuple(want))


def _decode_ping(fields: list[Any], limits: WireLimits) -> Ping:
    _arity(fields, 0, "Ping")
    return Ping()


def _decode_pong(fields: list[Any], limits: WireLimits) -> Pong:
    _arity(fields, 0, "Pong")
    return Pong()


def _uint(value: Any, name: str, maximum: int = 2**32 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise DecodeError(f"{name} must be an integer in 0..{maximum}")
    return value


def _str(value: Any, name: str, maximum: int) -> str:
    if not isinstance(value, str) or len(value) > maximum:
        raise DecodeError(f"{name} must be a string of at most {maximum} characters")
    return value


_OPTION_VALUE = (int, float, str, bool)


def _decode_job_open(fields: list[Any], limits: WireLimits) -> JobOpen:
    _arity(fields, 10, "JobOpen")
    job, model, messages, options, timeout, user, window, target, stream, signature = fields
    if not isinstance(stream, bool):
        raise DecodeError("JobOpen.stream must be true or false")
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise DecodeError("JobOpen.signature must be 64 bytes")
    if not isinstance(messages, list) or not 0 < len(messages) <= limits.max_job_messages:
        raise DecodeError(f"JobOpen.messages must hold 1 to {limits.max_job_messages} messages")
    for message in messages:
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise DecodeError("JobOpen.messages items must be {role, content}")
        _str(message["role"], "role", 16)
        _str(message["content"], "content", limits.max_message_bytes)
    if not isinstance(options, dict) or len(options) > limits.max_job_options:
        raise DecodeError(f"JobOpen.options must be a map of at most {limits.max_job_options} entries")
    for key, value in options.items():
        _str(key, "option name", 64)
        items = value if isinstance(value, list) else [value]
        if len(items) > 64 or not all(isinstance(v, _OPTION_VALUE) for v in items):
            raise DecodeError(f"JobOpen.options.{key} has an unsupported value")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= limits.max_job_timeout:
        raise DecodeError(f"JobOpen.timeout must be in (0, {limits.max_job_timeout}] seconds")
    return JobOpen(
        _uint(job, "JobOpen.job"), _str(model, "JobOpen.model", 200), tuple(messages), options, float(timeout),
        _str(user, "JobOpen.user", 128), _uint(window, "JobOpen.window", limits.max_window) or 1,
        _str(target, "JobOpen.target", 128), stream, signature,
    )


def _decode_job_chunk(fields: list[Any], limits: WireLimits) -> JobChunk:
    _arity(fields, 2, "JobChunk")
    return JobChunk(_uint(fields[0], "JobChunk.job"), _str(fields[1], "JobChunk.content", limits.max_item_bytes))


def _decode_job_end(fields: list[Any], limits: WireLimits) -> JobEnd:
    _arity(fields, 7, "JobEnd")
    job, reason, prompt, completion, status, error, content = fields
    return JobEnd(
        _uint(job, "JobEnd.job"), _str(reason, "JobEnd.done_reason", 32), _uint(prompt, "JobEnd.prompt_tokens"),
        _uint(completion, "JobEnd.completion_tokens"), _uint(status, "JobEnd.status", 999),
        _str(error, "JobEnd.error", 1024), _str(content, "JobEnd.content", limits.max_message_bytes),
    )


def _decode_job_cancel(fields: list[Any], limits: WireLimits) -> JobCancel:
    _arity(fields, 1, "JobCancel")
    return JobCancel(_uint(fields[0], "JobCancel.job"))


def _decode_job_credit(fields: list[Any], limits: WireLimits) -> JobCredit:
    _arity(fields, 2, "JobCredit")
    return JobCredit(_uint(fields[0], "JobCredit.job"), _uint(fields[1], "JobCredit.chunks", limits.max_window))


_DECODERS = {
    MessageType.AUTH: _decode_auth,
    MessageType.RUMORS: _decode_rumors,
    MessageType.SYNC_REQUEST: _decode_sync_request,
    MessageType.SYNC_REPLY: _decode_sync_reply,
    MessageType.PING: _decode_ping,
    MessageType.PONG: _decode_pong,
    MessageType.JOB_OPEN: _decode_job_open,
    MessageType.JOB_CHUNK: _decode_job_chunk,
    MessageType.JOB_END: _decode_job_end,
    MessageType.JOB_CANCEL: _decode_job_cancel,
    MessageType.JOB_CREDIT: _decode_job_credit,
}


def job_transcript(worker: str, job: JobOpen) -> bytes:
    """What a coordinator signs to vouch for a job, above all for the user it names: the job as encoded with an
    empty signature, and the worker it is for (so it cannot be replayed to another)."""
    return _JOB_DOMAIN + worker.encode() + b"\x00" + encode(replace(job, signature=b""))


def auth_transcript(handshake_hash: bytes, signer_is_initiator: bool) -> bytes:
    """The bytes each side signs in its Auth: the Noise handshake hash (unique to this connection) and the
    signer's role, so an Auth can be neither replayed on another connection nor reflected back to its sender."""
    return _TRANSCRIPT_DOMAIN + (b"I" if signer_is_initiator else b"R") + handshake_hash
