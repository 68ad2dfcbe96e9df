"""The overlay: peer links, dialling, failure detection, leaving. Gossip itself lives in :mod:`.gossip`.

Every task runs in the nursery opened by :meth:`Overlay.run`; cancelling it stops everything.

- **Links.** One authenticated link per peer, used both ways (a node behind NAT that dialled out can still be
  reached). We keep ``target_peers`` links, dialling seeds while we know nobody and then members we learned of;
  beyond ``max_peers`` a joiner gets our table and a "full" close, so it can dial others.
- **Failure detection.** Each link is pinged every ``probe_interval``. A link that dies without a goodbye makes
  the peer SUSPECT (a signed notice, spread as a rumor); if its addresses then refuse us, it is DEAD. A suspected
  node refutes by issuing a newer record. Now and then we dial an offline member, which heals partitions.
- **Leaving.** On shutdown we issue a final record with status "left" and hand it to every linked peer.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from p2pnode.config import OverlayConfig
from p2pnode.core.identity import Identity, short_id
from p2pnode.core.membership import MemberState, Membership
from p2pnode.core.records import NodeStatus, Notice, NoticeKind, SignedRecord, seal_notice
from p2pnode.core.wire import Message, Ping, Rumors, SyncReply
from p2pnode.errors import PeerError, PeerRejected, PeerTimeout, RemoteProtocolError
from p2pnode.net._addresses import advertised_urls
from p2pnode.net.gossip import Gossip
from p2pnode.net.transport import OPEN_NETWORK_KEY, CloseCode, HandshakeConfig, PeerLink, dial, serve_peers

__all__ = ["LinkExtension", "Overlay", "OverlayStatistics"]

log = logging.getLogger(__name__)


class LinkExtension(Protocol):
    """Something more spoken on the links (remote jobs): it takes its messages and hears of closed links."""

    def handle(self, link: PeerLink, message: Message) -> bool: ...

    def link_closed(self, link: PeerLink) -> None: ...


@dataclass(frozen=True)
class OverlayStatistics:
    links: int
    members: int
    alive: int
    rumors_queued: int
    bytes_sent: int
    bytes_received: int
    rejected_statements: int


class Overlay:
    """One node's view of and voice in the network. ``describe()`` returns the record fields that change
    (name, models, load, ...); the overlay adds identity, seq, times and addresses, and signs."""

    def __init__(
        self,
        identity: Identity,
        config: OverlayConfig,
        describe: Callable[[], dict[str, Any]],
        *,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        extensions: Sequence[LinkExtension] = (),
    ) -> None:
        self.identity = identity
        self._extensions = tuple(extensions)
        self.config = config
        self._wall = wall_clock
        self._rng = rng or random.Random()
        self._handshake = HandshakeConfig(
            identity, config.network_key or OPEN_NETWORK_KEY, config.peers.handshake_timeout, config.wire
        )
        self._changed = trio.lowlevel.ParkingLot()
        self.gossip = Gossip(
            identity,
            config,
            describe,
            links=lambda: list(self._links.values()),
            on_change=self._changed.unpark_all,
            wall_clock=wall_clock,
            rng=self._rng,
        )
        self._links: dict[str, PeerLink] = {}
        self._dialing: set[str] = set()  # peer ids and seed URLs being dialled
        self._retry_at: dict[str, tuple[float, float]] = {}  # url -> (next attempt, current back-off)
        self._closed_bytes = [0, 0]  # bytes sent/received on links that are gone
        self._nursery: trio.Nursery | None = None
        self._stopping = False
        self.port: int | None = None

    # ---- public --------------------------------------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    @property
    def membership(self) -> Membership:
        return self.gossip.membership

    @property
    def local_record(self) -> SignedRecord:
        return self.membership.local

    @property
    def linked_peers(self) -> list[str]:
        return list(self._links)

    def link_to(self, peer_id: str) -> PeerLink | None:
        return self._links.get(peer_id)

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, join through the seeds, gossip until cancelled. Reports the bound peer port."""
        cfg = self.config
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.port = await nursery.start(
                lambda task_status: serve_peers(
                    self._on_inbound,
                    cfg.listen_host,
                    cfg.listen_port,
                    self._handshake,
                    lambda: self.membership.local,
                    wall_now=self._wall,
                    outbox=cfg.peers.outbox,
                    task_status=task_status,
                )
            )
            self.gossip.addrs = cfg.advertise or advertised_urls(cfg.listen_host, self.port)
            self.gossip.issue()
            log.info("peer %s listening on %s", short_id(self.peer_id), ", ".join(self.gossip.addrs))
            nursery.start_soon(self.gossip.run)
            nursery.start_soon(self._maintain_loop)
            task_status.started(self.port)

    def request_refresh(self) -> None:
        """Re-issue our record soon (within ``min_refresh_interval``): load or models changed."""
        self.gossip.request_refresh()

    async def leave(self, timeout: float = 1.0) -> None:
        """Say goodbye: a final record with status "left", delivered to every linked peer, then close links."""
        self._stopping = True
        self.gossip.leaving = True
        goodbye = Rumors((self.gossip.issue(NodeStatus.LEFT).envelope,))
        with trio.move_on_after(timeout) as scope:
            scope.shield = True
            async with trio.open_nursery() as nursery:
                for link in list(self._links.values()):
                    nursery.start_soon(self._say_goodbye, link, goodbye)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Block until ``predicate()`` holds; re-checked after every change of the peer table or links."""
        while not predicate():
            await self._changed.park()

    def statistics(self) -> OverlayStatistics:
        sent, received = self._closed_bytes
        for link in self._links.values():
            stats = link.statistics()
            sent += stats.bytes_sent
            received += stats.bytes_received
        return OverlayStatistics(
            links=len(self._links),
            members=len(self.membership),
            alive=len(self.membership.alive()),
            rumors_queued=len(self.gossip.queue),
            bytes_sent=sent,
            bytes_received=received,
            rejected_statements=sum(self.gossip.rejected.values()),
        )

    # ---- links ---------------------------------------------------------------------------------------------

    async def _on_inbound(self, link: PeerLink) -> None:
        if len(self._links) >= self.config.peers.max_peers and link.peer_id not in self._links:
            # Full: give the joiner our table so it can dial others, then close.
            table = self.gossip.capped(self.membership.newer_than({}))
            await self._send_quietly(link, SyncReply(tuple(table), ()))
            await link.aclose(CloseCode.FULL, "peer limit reached")
            self.gossip.accept([link.record.envelope], link.peer_id)
            self._account(link)
            return
        await self._run_link(link)

    def _register(self, link: PeerLink) -> bool:
        """Keep one link per peer. Of two links made by simultaneous dials, both ends keep the one dialled by
        the smaller peer id; a new link from the same side replaces the old one (a reconnect)."""
        old = self._links.get(link.peer_id)
        if old is not None:
            def dialler(lk: PeerLink) -> str:
                return self.peer_id if lk.initiator else lk.peer_id

            if dialler(old) != dialler(link) and dialler(old) == min(self.peer_id, link.peer_id):
                return False
            self._nursery.start_soon(old.aclose, CloseCode.DUPLICATE, "replaced by a newer link")
        self._links[link.peer_id] = link
        self._changed.unpark_all()
        return True

    async def _run_link(self, link: PeerLink) -> None:
        if self._stopping:  # a link that comes up while we say goodbye hears the goodbye and nothing else
            await self._say_goodbye(link, Rumors((self.membership.local.envelope,)))
            return
        if not self._register(link):
            await link.aclose(CloseCode.DUPLICATE, "a link to this peer already exists")
            self._account(link)
            return
        log.debug("link up: %r at %s", link, link.remote_address)
        self.gossip.accept([link.record.envelope], link.peer_id)
        member = self.membership.get(link.peer_id)
        if member is not None and member.state in (MemberState.SUSPECT, MemberState.OFFLINE):
            # It answers, yet we hold its current record as down: tell it, so it refutes for everyone.
            notice = Notice(self.peer_id, NoticeKind.SUSPECT, link.peer_id, member.seq, self._wall())
            link.send_nowait(Rumors((seal_notice(self.identity, notice).envelope,)))
        if link.initiator:
            link.send_nowait(self.gossip.sync_request())
        try:
            async with trio.open_nursery() as nursery:
                for task in (link.run_writer, partial(self._probe_link, link), partial(self._read_link, link)):
                    nursery.start_soon(self._guard, link, task, nursery.cancel_scope)
        finally:
            self._unregister(link)

    async def _guard(self, link: PeerLink, task: Callable[[], Awaitable[None]], link_scope: trio.CancelScope) -> None:
        """Run one of a link's three tasks (write, probe, read). When any ends, for whatever reason, the link
        ends: a peer failure or protocol violation is logged and answered with a close code, nothing more."""
        try:
            await task()
        except RemoteProtocolError as exc:
            self.gossip.note_garbage(link.peer_id, exc)
            await link.aclose(exc.close_code, str(exc))
        except PeerError as exc:
            log.debug("%r ended: %s", link, exc)
            # The peer is gone or mute: do not wait long for a close reply that will not come.
            await link.aclose(CloseCode.TIMEOUT, str(exc), timeout=0.1)
        finally:
            # A half-closed websocket can wait forever on a silent peer: end the other tasks ourselves.
            link_scope.cancel()

    async def _read_link(self, link: PeerLink) -> None:
        while True:
            message: Message = await link.receive(self.config.wire)
            if not any(extension.handle(link, message) for extension in self._extensions):
                self.gossip.handle(link, message)

    async def _probe_link(self, link: PeerLink) -> None:
        """A link is alive while messages arrive. A quiet one gets a Ping; one silent for probe_interval +
        probe_timeout is dead. (Application-level pings, not websocket ones: trio-websocket may answer a ping
        frame after our close and crash on it, python-trio/trio-websocket#184.)"""
        peers = self.config.peers
        while True:
            await trio.sleep(peers.probe_interval / 2 * (0.8 + 0.4 * self._rng.random()))
            quiet = trio.current_time() - link.last_received
            if quiet > peers.probe_interval + peers.probe_timeout:
                raise PeerTimeout(f"nothing from {short_id(link.peer_id)} for {quiet:.1f} s")
            if quiet > peers.probe_interval:
                link.send_nowait(Ping())

    def _unregister(self, link: PeerLink) -> None:
        for extension in self._extensions:
            extension.link_closed(link)
        self._account(link)
        if self._links.get(link.peer_id) is not link:
            return  # replaced by a newer link to the same peer
        del self._links[link.peer_id]
        self._changed.unpark_all()
        code = link.close_code
        log.debug("link down: %r (close code %s)", link, code)
        # No doubt is cast when the link was closed on purpose or when we ourselves are shutting down.
        if self._stopping or code in CloseCode.DELIBERATE or trio.current_effective_deadline() == -math.inf:
            return
        self._observe(link.peer_id, NoticeKind.SUSPECT, "lost link to %s without goodbye: suspect")
        if self.membership.get(link.peer_id) is not None:
            self._nursery.start_soon(self._confirm_or_reconnect, link.peer_id)

    def _account(self, link: PeerLink) -> None:
        """Keep the traffic of a link that is gone in the totals."""
        stats = link.statistics()
        self._closed_bytes[0] += stats.bytes_sent
        self._closed_bytes[1] += stats.bytes_received

    def _observe(self, peer_id: str, kind: NoticeKind, message: str) -> None:
        notice = self.membership.observe_failure(
            peer_id, kind, now=trio.current_time(), wall_now=self._wall(), identity=self.identity
        )
        if notice is not None:
            log.info(message, short_id(peer_id))
            self.gossip.spread(notice)

    async def _confirm_or_reconnect(self, peer_id: str) -> None:
        """After a lost link: if the peer's addresses refuse us it is dead; if one answers, the link is back."""
        member = self.membership.get(peer_id)
        if member is None or peer_id in self._dialing:
            return
        self._dialing.add(peer_id)
        if not await self._dial_and_run(peer_id, member.signed.record.addrs, respect_back_off=False):
            self._observe(peer_id, NoticeKind.DEAD, "peer %s does not answer at its addresses: offline")

    async def _say_goodbye(self, link: PeerLink, goodbye: Rumors) -> None:
        await self._send_quietly(link, goodbye)
        await link.aclose(CloseCode.NORMAL, "leaving")

    @staticmethod
    async def _send_quietly(link: PeerLink, message: Message) -> None:
        try:
            await link.send(message)
        except PeerError:
            pass  # the peer is gone already; nothing to tell it

    # ---- dialling ------------------------------------------------------------------------------------------

    def dial_hint(self, peer_id: str, urls: Sequence[str]) -> None:
        """A peer found outside gossip (mDNS): dial it unless a link to it exists or is being made."""
        self._start_dial(peer_id, urls)

    async def _dial_and_run(self, key: str, urls: Sequence[str], *, respect_back_off: bool = True) -> bool:
        """Dial the first of ``urls`` that answers and serve the link until it closes. ``key`` (a peer id or a
        seed URL) marks the attempt in progress. Returns whether the peer was reached: a link to it, or a refusal
        from it (full, duplicate, ...); reaching another peer or ourselves at one of its old addresses is not."""
        peers = self.config.peers
        try:
            for url in urls:
                if respect_back_off and not self._may_dial(url):
                    continue
                reached = False
                try:
                    async with dial(url, self._handshake, self.membership.local, wall_now=self._wall, outbox=peers.outbox) as link:
                        reached = link.peer_id == key  # seeds are keyed by URL; their result is unused
                        self._retry_at.pop(url, None)
                        self._dialing.discard(key)
                        await self._run_link(link)
                    if reached:
                        return True
                except PeerRejected as exc:
                    log.debug("dial %s refused: %s", url, exc)
                    self._back_off(url)
                    if exc.code != CloseCode.SELF:
                        return True  # it answered, and said no (full, duplicate, other network, ...)
                except (PeerError, RemoteProtocolError) as exc:
                    if reached:
                        return True  # the link worked; only closing it failed
                    log.debug("dial %s failed: %s", url, exc)
                    self._back_off(url)
            return False
        finally:
            self._dialing.discard(key)

    def _back_off(self, url: str) -> None:
        _, delay = self._retry_at.get(url, (0.0, 0.5))
        delay = min(delay * 2, self.config.peers.seed_retry_max)
        self._retry_at[url] = (trio.current_time() + delay * (0.5 + self._rng.random()), delay)

    def _may_dial(self, url: str) -> bool:
        return self._retry_at.get(url, (0.0, 0.0))[0] <= trio.current_time()

    async def _maintain_loop(self) -> None:
        """Keep ``target_peers`` links: seeds while we know nobody, then members we learned of; now and then try
        an offline member, which is how a healed partition finds its way back."""
        peers = self.config.peers
        next_heal = 0.0
        while True:
            now = trio.current_time()
            if not self._links:
                for url in self.config.seeds:
                    self._start_dial(url, (url,))
            alive = [m for m in self.membership.alive() if m.peer_id not in self._links]
            missing = peers.target_peers - len(self._links) - len(self._dialing)
            for member in self._rng.sample(alive, min(max(missing, 0), len(alive))):
                self._start_dial(member.peer_id, member.signed.record.addrs)
            if now >= next_heal:
                next_heal = now + peers.heal_interval
                down = [m for m in self.membership if m.state in (MemberState.SUSPECT, MemberState.OFFLINE)]
                if down:
                    member = self._rng.choice(down)
                    self._start_dial(member.peer_id, member.signed.record.addrs)
            await trio.sleep(0.5 + 0.5 * self._rng.random())

    def _start_dial(self, key: str, urls: Sequence[str]) -> None:
        if not urls or key in self._dialing or key in self._links or not any(map(self._may_dial, urls)):
            return
        self._dialing.add(key)
        self._nursery.start_soon(self._dial_and_run, key, tuple(urls))
