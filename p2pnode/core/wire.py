"""Peer messages and their msgpack codec, with hard limits on size and shape.

One websocket binary message carries one peer message, encoded as a msgpack array whose first element is the
message type. :func:`decode` accepts any bytes and either returns a message or raises :class:`DecodeError`
(a :class:`RemoteProtocolError`), never anything else: peers are not trusted to send well-formed data.

Handshake (both sides send their Hello at once, then their Auth; see ``p2pnode.net.transport``)::

    A -> B  Hello(version, peer_id_A, nonce_A, network)      B -> A  Hello(version, peer_id_B, nonce_B, network)
    A -> B  Auth(sig_A over transcript, record_A)             B -> A  Auth(sig_B over transcript, record_B)

The transcript binds both hellos (ids and fresh nonces) and the signer's role, so an Auth can be neither
replayed on another connection nor reflected back to its sender.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Union

import msgpack

from p2pnode.core.identity import MAX_PEER_ID_CHARS
from p2pnode.errors import DecodeError, LocalProtocolError

__all__ = [
    "Auth",
    "Hello",
    "Message",
    "Ping",
    "Pong",
    "Rumors",
    "SyncReply",
    "SyncRequest",
    "WireLimits",
    "decode",
    "encode",
    "handshake_transcript",
]

NONCE_BYTES = 32
_TRANSCRIPT_DOMAIN = b"dcn-handshake-1"


class MessageType(enum.IntEnum):
    HELLO = 1
    AUTH = 2
    RUMORS = 3
    SYNC_REQUEST = 4
    SYNC_REPLY = 5
    PING = 6
    PONG = 7


@dataclass(frozen=True)
class WireLimits:
    max_message_bytes: int = 1024 * 1024
    max_items: int = 1024  # statements in one Rumors / SyncReply
    max_item_bytes: int = 16 * 1024
    max_digest: int = 8192  # entries of a SyncRequest digest, and peer ids wanted


DEFAULT_WIRE_LIMITS = WireLimits()


@dataclass(frozen=True)
class Hello:
    version: int
    peer_id: str
    nonce: bytes
    network: str  # fingerprint of the network key, or "open"


@dataclass(frozen=True)
class Auth:
    signature: bytes
    record: bytes  # the sender's signed record envelope


@dataclass(frozen=True)
class Rumors:
    items: tuple[bytes, ...]  # signed envelopes (records and notices)


@dataclass(frozen=True)
class SyncRequest:
    digest: dict[str, int]  # peer id -> seq held


@dataclass(frozen=True)
class SyncReply:
    items: tuple[bytes, ...]  # envelopes the requester lacked
    want: tuple[str, ...]  # peer ids the requester holds newer records of


@dataclass(frozen=True)
class Ping:
    """Are you there? Sent only on a link that has been quiet for a while: any message proves liveness."""


@dataclass(frozen=True)
class Pong:
    """Yes."""


Message = Union[Hello, Auth, Rumors, SyncRequest, SyncReply, Ping, Pong]


def encode(message: Message) -> bytes:
    if isinstance(message, Hello):
        body: list[Any] = [MessageType.HELLO, message.version, message.peer_id, message.nonce, message.network]
    elif isinstance(message, Auth):
        body = [MessageType.AUTH, message.signature, message.record]
    elif isinstance(message, Rumors):
        body = [MessageType.RUMORS, list(message.items)]
    elif isinstance(message, SyncRequest):
        body = [MessageType.SYNC_REQUEST, message.digest]
    elif isinstance(message, SyncReply):
        body = [MessageType.SYNC_REPLY, list(message.items), list(message.want)]
    elif isinstance(message, Ping):
        body = [MessageType.PING]
    elif isinstance(message, Pong):
        body = [MessageType.PONG]
    else:
        raise LocalProtocolError(f"not a peer message: {message!r}")
    return msgpack.packb(body, use_bin_type=True)


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
            max_str_len=limits.max_item_bytes,
            max_bin_len=limits.max_item_bytes,
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


def _decode_hello(fields: list[Any], limits: WireLimits) -> Hello:
    _arity(fields, 4, "Hello")
    version, peer_id, nonce, network = fields
    if isinstance(version, bool) or not isinstance(version, int) or not 0 < version < 1 << 16:
        raise DecodeError("Hello.version must be a small positive integer")
    if not isinstance(peer_id, str) or not 0 < len(peer_id) <= MAX_PEER_ID_CHARS:
        raise DecodeError("Hello.peer_id must be a peer id")
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise DecodeError(f"Hello.nonce must be {NONCE_BYTES} bytes")
    if not isinstance(network, str) or len(network) > 64:
        raise DecodeError("Hello.network must be a short string")
    return Hello(version, peer_id, nonce, network)


def _decode_auth(fields: list[Any], limits: WireLimits) -> Auth:
    _arity(fields, 2, "Auth")
    signature, record = fields
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise DecodeError("Auth.signature must be 64 bytes")
    if not isinstance(record, bytes):
        raise DecodeError("Auth.record must be bytes")
    return Auth(signature, record)


def _items(value: Any, limits: WireLimits, name: str) -> tuple[bytes, ...]:
    if not isinstance(value, list) or len(value) > limits.max_items:
        raise DecodeError(f"{name} must be a list of at most {limits.max_items} items")
    if not all(isinstance(item, bytes) for item in value):
        raise DecodeError(f"{name} items must be bytes")
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


_DECODERS = {
    MessageType.HELLO: _decode_hello,
    MessageType.AUTH: _decode_auth,
    MessageType.RUMORS: _decode_rumors,
    MessageType.SYNC_REQUEST: _decode_sync_request,
    MessageType.SYNC_REPLY: _decode_sync_reply,
    MessageType.PING: _decode_ping,
    MessageType.PONG: _decode_pong,
}


def handshake_transcript(initiator: Hello, responder: Hello, signer_is_initiator: bool) -> bytes:
    """The bytes each side signs in its Auth: both hellos, in a fixed order, plus the signer's role."""
    parts = [_TRANSCRIPT_DOMAIN, b"I" if signer_is_initiator else b"R"]
    for hello in (initiator, responder):
        parts += [hello.version.to_bytes(2, "big"), hello.peer_id.encode(), hello.nonce, hello.network.encode()]
    return b"".join(len(p).to_bytes(2, "big") + p for p in parts)
