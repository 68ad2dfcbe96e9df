"""Peer links: websocket listener and dialer, the encrypted and mutually authenticated handshake, and framed
messages.

The handshake is Noise ``NNpsk0`` (:mod:`p2pnode.core.noise`) keyed by the network key: a node without the key
cannot complete it, and is answered only by the close that refuses it. Every message after it is encrypted with
ChaCha20-Poly1305 under keys fresh to the connection (forward secrecy). Then each side proves it holds the key of
the peer id it claims by signing the Noise handshake hash (see :mod:`p2pnode.core.wire`), which binds the two ids
to this connection: a man in the middle can neither read nor relay. An open network (no key) uses an all-zero
key: links are still encrypted against eavesdroppers, but anyone may join.

Outgoing messages go through a bounded outbox drained by one writer task per link, so a slow peer never blocks
the gossip loop: when its outbox is full, further gossip to it is dropped and counted (gossip tolerates loss;
push-pull repairs it).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio
import trio_websocket
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, WebSocketRequest
from wsproto.utilities import LocalProtocolError as WsprotoError

from p2pnode.core.identity import Identity, short_id, verify_signature
from p2pnode.core.records import PROTOCOL_VERSION, SignedRecord, open_record
from p2pnode.core.noise import PSK_BYTES, CipherState, NoiseHandshake
from p2pnode.core.wire import Auth, Message, Ping, Pong, WireLimits, auth_transcript, decode, encode
from p2pnode.errors import (
    BadSignature,
    DecodeError,
    PeerRejected,
    PeerTimeout,
    PeerUnreachable,
    RemoteProtocolError,
)
from p2pnode.net._errors import first_leaf, map_exceptions, naming_bind_errors as _naming

__all__ = ["CloseCode", "HandshakeConfig", "LinkStatistics", "PeerLink", "dial", "parse_peer_url", "serve_peers"]

log = logging.getLogger(__name__)

PEER_PATH = f"/dcn/{PROTOCOL_VERSION}"
OPEN_NETWORK_KEY = bytes(PSK_BYTES)  # an open network's Noise key: encryption without admission control
_PROLOGUE = b"dcn-peer-link"
_TAG_BYTES = 16  # what encryption adds to a message
SEND_TIMEOUT = 5.0  # seconds one frame may take to go out


class CloseCode:
    """Websocket close codes. Codes in DELIBERATE end a link on purpose and cast no doubt on the peer."""

    NORMAL = 1000  # leaving the network
    PROTOCOL = 1002  # the peer broke the protocol
    POLICY = 1008  # authentication failed
    TOO_BIG = 1009
    DUPLICATE = 4001  # another link to the same peer wins
    FULL = 4002  # at max_peers: here is our state, now dial someone else
    VERSION = 4003  # incompatible protocol version
    SELF = 4004  # we dialled ourselves
    NETWORK = 4005  # the peer belongs to another network
    TIMEOUT = 4008  # the peer stopped answering pings (not deliberate: casts doubt on it)
    DELIBERATE = frozenset({NORMAL, DUPLICATE, FULL, VERSION, SELF, NETWORK})


@dataclass(frozen=True)
class LinkStatistics:
    bytes_sent: int
    bytes_received: int
    messages_sent: int
    messages_received: int
    dropped: int  # messages not sent because the outbox was full


@dataclass(frozen=True)
class HandshakeConfig:
    identity: Identity
    network_key: bytes  # 32 bytes; OPEN_NETWORK_KEY for an open network
    timeout: float
    limits: WireLimits

    @property
    def max_frame_bytes(self) -> int:
        return self.limits.max_message_bytes + _TAG_BYTES


class PeerLink:
    """An authenticated websocket link to one peer, used in both directions."""

    def __init__(
        self,
        ws: WebSocketConnection,
        ciphers: tuple[CipherState, CipherState],
        peer_id: str,
        record: SignedRecord,
        *,
        initiator: bool,
        outbox: int,
    ) -> None:
        self.peer_id = peer_id
        self.record = record  # the peer's record as presented in the handshake
        self.initiator = initiator  # True when we dialled
        self._ws = ws
        self._encrypt, self._decrypt = ciphers
        # Nonces count messages: encrypting and sending must happen in one order, whichever task sends.
        self._send_lock = trio.Lock()
        # Messages handed to the outbox and not yet written (a handed-off one may not show in the channel's
        # buffer): while any are, a direct send_ordered would overtake them.
        self._queued = 0
        self._broken = False  # a send was cut short after encrypting: the link cannot go on
        self.remote_address = _endpoint(ws)
        self._local_close: int | None = None  # the code we closed with, if we closed first
        self.last_received = trio.current_time()  # any message proves the peer alive
        self._send_channel, self._receive_channel = trio.open_memory_channel[bytes](outbox)
        self._bytes_sent = self._bytes_received = self._sent = self._received = self._dropped = 0

    def __repr__(self) -> str:
        return f"PeerLink({short_id(self.peer_id)}, {'out' if self.initiator else 'in'})"

    @property
    def close_code(self) -> int | None:
        """Why the link ended: the code we closed with if we closed first, else the peer's (1006 when the
        connection just died); ``None`` while it is open."""
        if self._local_close is not None:
            return self._local_close
        return self._ws.closed.code if self._ws.closed else None

    def send_nowait(self, message: Message) -> bool:
        """Queue a message for the writer task; ``False`` (and counted) if the outbox is full or closed."""
        try:
            self._send_channel.send_nowait(encode(message))
            self._queued += 1
            return True
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self._dropped += 1
            return False

    async def send_ordered(self, message: Message) -> None:
        """Send a message that must not be dropped (jobs): at once when nothing is waiting before it (one task
        hop less per message), else behind the queued ones, waiting for room in the outbox: back-pressure."""
        data = encode(message)
        if not self._queued and not self._send_lock.locked() and self._local_close is None:
            await self._send_raw(data)
            return
        with map_exceptions({trio.ClosedResourceError: PeerUnreachable, trio.BrokenResourceError: PeerUnreachable}):
            self._queued += 1
            try:
                await self._send_channel.send(data)
            except BaseException:
                self._queued -= 1
                raise

    async def send(self, message: Message) -> None:
        """Send now, bypassing the outbox (handshake, goodbye)."""
        await self._send_raw(encode(message))

    async def _send_raw(self, data: bytes) -> None:
        try:  # uncontended, as nearly always: no scheduling round just for the lock (the send yields anyway)
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._broken:
                raise PeerUnreachable(f"link to {short_id(self.peer_id)} is broken")
            # Encrypting uses up a nonce: the frame must then go out whole, or the peer can decrypt nothing
            # after it. So a cancel (a job's client left) waits for the frame, but not beyond the caller's own
            # deadline or SEND_TIMEOUT: then the link is given up.
            deadline = min(trio.current_time() + SEND_TIMEOUT, trio.current_effective_deadline())
            with trio.CancelScope(shield=True, deadline=deadline) as sending:
                frame = self._encrypt.encrypt(data)
                with map_exceptions({ConnectionClosed: PeerUnreachable, trio.BrokenResourceError: PeerUnreachable}):
                    await self._ws.send_message(frame)
            if sending.cancelled_caught:
                self._broken = True  # a frame may be half out: nothing sent after it could be read
                self._local_close = self._local_close or CloseCode.TIMEOUT
                self._send_channel.close()  # ends the writer, and with it the link
                raise PeerUnreachable(f"{short_id(self.peer_id)} stopped reading: link given up")
        finally:
            self._send_lock.release()
        self._bytes_sent += len(frame)
        self._sent += 1

    async def run_writer(self) -> None:
        """Drain the outbox until the link closes."""
        async with self._receive_channel:
            async for data in self._receive_channel:
                try:
                    await self._send_raw(data)
                finally:
                    self._queued -= 1

    async def receive(self, limits: WireLimits) -> Message:
        """The next message; Ping and Pong are answered and absorbed here. Raises :class:`PeerUnreachable` when
        the link is closed, :class:`DecodeError` on garbage."""
        while True:
            frame = await _receive_frame(self._ws)
            self._bytes_received += len(frame)
            self._received += 1
            message = decode(self._decrypt.decrypt(frame), limits)
            self.last_received = trio.current_time()
            if isinstance(message, Ping):
                self.send_nowait(Pong())
            elif not isinstance(message, Pong):
                return message

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "", *, timeout: float = 1.0) -> None:
        """Close with ``code``, waiting at most ``timeout`` for the peer's close reply."""
        if self._local_close is None and self._ws.closed is None:
            self._local_close = code
        self._send_channel.close()
        with trio.move_on_after(timeout) as scope:
            scope.shield = True
            await self._ws.aclose(code, reason[:120])

    def statistics(self) -> LinkStatistics:
        return LinkStatistics(self._bytes_sent, self._bytes_received, self._sent, self._received, self._dropped)


async def _receive_frame(ws: WebSocketConnection) -> bytes:
    with map_exceptions({ConnectionClosed: PeerUnreachable}):
        data = await ws.get_message()
    if not isinstance(data, bytes):
        raise DecodeError("peer messages are binary")
    return data


async def _send_frame(ws: WebSocketConnection, data: bytes) -> None:
    with map_exceptions({ConnectionClosed: PeerUnreachable}):
        await ws.send_message(data)


async def handshake(
    ws: WebSocketConnection,
    config: HandshakeConfig,
    local_record: SignedRecord,
    *,
    initiator: bool,
    wall_now: Callable[[], float],
    outbox: int,
) -> PeerLink:
    """Agree on keys, prove our identity, check theirs, and swap records. Closes ``ws`` with a reason code on
    failure."""
    noise = NoiseHandshake(
        initiator=initiator, psk=config.network_key, ephemeral=X25519PrivateKey.generate(), prologue=_PROLOGUE
    )
    try:
        with map_exceptions({trio.TooSlowError: PeerTimeout}), trio.fail_after(config.timeout):
            if initiator:
                await _send_frame(ws, noise.write_message())
                noise.read_message(await _receive_frame(ws))
            else:
                try:
                    noise.read_message(await _receive_frame(ws))
                except RemoteProtocolError:
                    raise _Refuse(CloseCode.NETWORK, "not a member of this network (network key differs)") from None
                await _send_frame(ws, noise.write_message())
            encrypt, decrypt = noise.split()
            signature = config.identity.sign(auth_transcript(noise.handshake_hash, initiator))
            await _send_frame(ws, encrypt.encrypt(encode(
                Auth(PROTOCOL_VERSION, config.identity.peer_id, signature, local_record.envelope)
            )))
            theirs = decode(decrypt.decrypt(await _receive_frame(ws)), config.limits)
            if not isinstance(theirs, Auth):
                raise DecodeError(f"expected Auth during the handshake, got {type(theirs).__name__}")
            if theirs.version != PROTOCOL_VERSION:
                raise _Refuse(CloseCode.VERSION, f"protocol version {theirs.version}, we speak {PROTOCOL_VERSION}")
            if theirs.peer_id == config.identity.peer_id:
                raise _Refuse(CloseCode.SELF, "connected to ourselves")
            verify_signature(theirs.peer_id, theirs.signature, auth_transcript(noise.handshake_hash, not initiator))
            record = open_record(theirs.record, now=wall_now())
            if record.record.peer_id != theirs.peer_id:
                raise BadSignature("handshake record belongs to another peer")
    except _Refuse as refuse:
        await _close(ws, refuse.code, refuse.reason)
        raise PeerRejected(refuse.reason, code=refuse.code, reason=refuse.reason) from None
    except RemoteProtocolError as exc:
        await _close(ws, exc.close_code, str(exc))
        raise
    except PeerUnreachable as exc:
        closed = ws.closed
        if closed is not None and closed.code in CloseCode.DELIBERATE:
            raise PeerRejected(f"peer closed: {closed.reason}", code=closed.code, reason=closed.reason) from exc
        raise
    return PeerLink(ws, (encrypt, decrypt), theirs.peer_id, record, initiator=initiator, outbox=outbox)


class _Refuse(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


async def _close(ws: WebSocketConnection, code: int, reason: str) -> None:
    with trio.move_on_after(1) as scope:
        scope.shield = True
        await ws.aclose(code, reason[:120])


def _endpoint(ws: WebSocketConnection) -> str:
    """The remote address, read while the socket is open (reading it after a close raises)."""
    try:
        return str(ws.remote)
    except OSError:
        return "(closed)"


def parse_peer_url(url: str) -> tuple[str, int]:
    """``ws://HOST:PORT`` (path optional) -> (host, port); :class:`ValueError` with a readable reason otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname or parts.port is None:
        raise ValueError(f"peer address must look like ws://HOST:PORT, got {url!r}")
    return parts.hostname, parts.port


@asynccontextmanager
async def dial(
    url: str,
    config: HandshakeConfig,
    local_record: SignedRecord,
    *,
    wall_now: Callable[[], float],
    outbox: int,
) -> AsyncIterator[PeerLink]:
    """Connect to a peer and authenticate; the link lives as long as the context."""
    host, port = parse_peer_url(url)
    try:
        async with trio_websocket.open_websocket(
            host,
            port,
            PEER_PATH,
            use_ssl=False,
            max_message_size=config.max_frame_bytes,
            connect_timeout=config.timeout,
            disconnect_timeout=1,
        ) as ws:
            link = await handshake(ws, config, local_record, initiator=True, wall_now=wall_now, outbox=outbox)
            yield link
    except trio_websocket.ConnectionRejected as exc:
        raise PeerRejected(f"{url} refused the websocket upgrade (HTTP {exc.status_code})") from exc
    except (HandshakeError, OSError) as exc:
        raise PeerUnreachable(f"cannot connect to {url}: {exc.__cause__ or exc}") from exc
    except WsprotoError as exc:  # trio-websocket's own protocol slip (see serve_peers): the link is just gone
        raise PeerUnreachable(f"link to {url} broke: {exc}") from exc


async def serve_peers(
    handler: Callable[[PeerLink], Awaitable[None]],
    host: str,
    port: int,
    config: HandshakeConfig,
    local_record: Callable[[], SignedRecord],
    *,
    wall_now: Callable[[], float],
    outbox: int,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept peer links on ``host:port`` and run ``handler(link)`` for each; reports the bound port."""

    async def on_request(request: WebSocketRequest) -> None:
        if request.path != PEER_PATH:
            await request.reject(404, body=b"not a dcn peer endpoint\n")
            return
        ws = await request.accept()
        remote = _endpoint(ws)
        try:
            link = await handshake(ws, config, local_record(), initiator=False, wall_now=wall_now, outbox=outbox)
        except (RemoteProtocolError, PeerRejected, PeerUnreachable, PeerTimeout) as exc:
            log.info("inbound handshake from %s failed: %s", remote, exc)
            return
        await handler(link)

    async def on_connection(stream: trio.SocketStream) -> None:
        # One connection's failure, whatever trio-websocket raises for it (e.g. answering a ping after our close,
        # python-trio/trio-websocket#184, which a stranger can provoke), must never end the listener.
        try:
            async with trio.open_nursery() as connection:
                with trio.fail_after(config.timeout):
                    request = await trio_websocket.wrap_server_stream(
                        connection, stream, max_message_size=config.max_frame_bytes
                    )
                await on_request(request)
                connection.cancel_scope.cancel()
        except* (trio.TooSlowError, trio.BrokenResourceError, ConnectionClosed, WsprotoError, OSError) as group:
            log.debug("inbound connection ended: %r", first_leaf(group))
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    with _naming(f"cannot listen for peers on {host}:{port}", "--listen"):
        listeners = await trio.open_tcp_listeners(port, host=host)
    async with trio.open_nursery() as nursery:
        bound = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, on_connection, listeners)
        task_status.started(bound)
