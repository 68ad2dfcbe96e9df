"""The whole exception tree of dcn.

    P2PNodeError
    ├── ConfigError                 bad flags, environment or TOML; the CLI exits 2
    ├── ProtocolError
    │   ├── LocalProtocolError      we misused the protocol (a bug on our side)
    │   └── RemoteProtocolError     a peer sent something we refuse
    │       ├── DecodeError         not msgpack, wrong shape, over a limit
    │       ├── BadSignature        signature or peer id does not check out
    │       ├── StaleRecord         seq not newer than the one held (replay)
    │       └── RecordExpired       expired, or issued too far in the future
    ├── PeerError                   a peer we talk to failed
    │   ├── PeerUnreachable         could not connect, or the link died
    │   ├── PeerTimeout             no answer before the deadline
    │   └── PeerRejected            the peer refused us (close code and reason)
    ├── BackendError                the local LLM server failed a call (status_hint for the gateway)
    │   ├── BackendUnavailable      not answering (connection refused, died mid-stream)
    │   ├── BackendTimeout          no answer, or no next chunk, before the deadline
    │   ├── BackendRejected         it refused the request (unknown model 404, bad request 400, too long)
    │   └── BackendProtocolError    it answered something malformed (bad JSON line, broken SSE)
    └── GatewayError                an HTTP request we must refuse (status_hint)

Library errors (trio, trio-websocket, msgpack, cryptography) are translated into this tree at the edges,
in ``p2pnode.net`` and ``p2pnode.core.wire``, and chained with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendProtocolError",
    "BackendRejected",
    "BackendTimeout",
    "BackendUnavailable",
    "BadSignature",
    "ConfigError",
    "DecodeError",
    "GatewayError",
    "LocalProtocolError",
    "P2PNodeError",
    "PeerError",
    "PeerRejected",
    "PeerTimeout",
    "PeerUnreachable",
    "ProtocolError",
    "RecordExpired",
    "RemoteProtocolError",
    "StaleRecord",
]


class P2PNodeError(Exception):
    """Base of every error dcn raises on purpose."""


class ConfigError(P2PNodeError):
    """Flags, environment or config file are invalid; the message says which and how to fix it."""


class ProtocolError(P2PNodeError):
    """The peer protocol was violated. ``close_code`` is the websocket close code to answer with."""

    close_code = 1002


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol forbids (a bug in dcn)."""


class RemoteProtocolError(ProtocolError):
    """A peer sent something we refuse."""


class DecodeError(RemoteProtocolError):
    """Bytes that are not a valid message or record: bad msgpack, wrong shape, over a size limit."""


class BadSignature(RemoteProtocolError):
    """A signature does not verify, or a peer id does not match the key that signed."""

    close_code = 1008


class StaleRecord(RemoteProtocolError):
    """A record whose seq is not newer than the one already held: a replay or an old copy."""


class RecordExpired(RemoteProtocolError):
    """A record past its lifetime, or issued further in the future than the allowed clock skew."""


class PeerError(P2PNodeError):
    """A peer failed while we were talking to it."""


class PeerUnreachable(PeerError):
    """We could not connect to the peer, or the connection died."""


class PeerTimeout(PeerError):
    """The peer did not answer before the deadline."""


class PeerRejected(PeerError):
    """The peer closed the connection on purpose; ``code`` and ``reason`` say why."""

    def __init__(self, message: str, *, code: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class BackendError(P2PNodeError):
    """A call to a local LLM server failed; ``status_hint`` is what a gateway would answer."""

    status_hint = 502


class BackendUnavailable(BackendError):
    """The server does not answer: connection refused or reset, or it died mid-stream."""

    status_hint = 503


class BackendTimeout(BackendError):
    """No answer, or no next chunk, before the deadline."""

    status_hint = 504


class BackendRejected(BackendError):
    """The server refused the request: unknown model, bad parameters, prompt longer than the context."""

    def __init__(self, message: str, *, status_hint: int = 400) -> None:
        super().__init__(message)
        self.status_hint = status_hint


class BackendProtocolError(BackendError):
    """The server answered something we cannot read: a malformed JSON line or SSE event."""


class GatewayError(P2PNodeError):
    """An HTTP request the gateway refuses; ``status_hint`` is the HTTP status to answer with, ``headers`` any
    headers that go with it (Retry-After, Allow)."""

    headers: tuple[tuple[str, str], ...] = ()

    def __init__(self, message: str, *, status_hint: int = 400) -> None:
        super().__init__(message)
        self.status_hint = status_hint
