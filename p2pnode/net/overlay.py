"""The overlay: peer links, gossip rounds, push-pull sync, our own record, and failure detection.

This is the trio shell around :mod:`p2pnode.core.membership` and :mod:`p2pnode.core.broadcast`. Every task runs
in the nursery opened by :meth:`Overlay.run`; cancelling it stops everything. How information moves:

- **Rumors.** New statements (a newer record, a suspicion) go into the broadcast queue and are piggybacked on
  the next gossip rounds to ``fanout`` random linked peers; each node forwards only what changed its own view.
- **Push-pull.** Every ``sync_interval``, and right after we dial a peer, we send our digest (peer id -> seq);
  the peer answers with what we lack and asks for what it lacks. This repairs lost rumors and lets a joiner
  learn the whole table in one round trip.
- **Failure detection.** Each link is pinged every ``probe_interval``. A link that dies without a goodbye makes
  the peer SUSPECT (a signed notice, spread as a rumor); if its address then refuses us, it is DEAD. A suspected
  node refutes by issuing a newer record. Members nobody hears from go stale (see ``MembershipConfig``).
- **Leaving.** On shutdown we issue a final record with status "left" and hand it to every linked peer.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import trio

from p2pnode.config import OverlayConfig
from p2pnode.core.broadcast import BroadcastQueue
from p2pnode.core.identity import Identity, short_id
from p2pnode.core.membership import MemberState, Membership
from p2pnode.core.records import (
    NodeRecord,
    NodeStatus,
    Notice,
    NoticeKind,
    SignedNotice,
    SignedRecord,
    next_seq,
    open_envelope,
    seal_notice,
    seal_record,
)
from p2pnode.core.wire import Rumors, SyncReply, SyncRequest
from p2pnode.errors import DecodeError, PeerError, PeerRejected, RemoteProtocolError, StaleRecord
from p2pnode.net._addresses import advertised_urls
from p2pnode.net.transport import CloseCode, HandshakeConfig, PeerLink, dial, serve_peers

__all__ = ["Overlay", "OverlayStatistics"]

log = logging.getLogger(__name__)


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
    (models, load, ...); the overlay adds identity, seq, times and addresses, and signs."""

    def __init__(
        self,
        identity: Identity,
        config: OverlayConfig,
        describe: Callable[[], dict[str, Any]],
        *,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.identity = identity
        self.config = config
        self._describe = describe
        self._wall = wall_clock
        self._rng = rng or random.Random()
        self._handshake = HandshakeConfig(identity, config.network, config.peers.handshake_timeout, config.wire)
        self._addrs: tuple[str, ...] = ()
        first = self._make_record(seq=next_seq(0, wall_clock()), status=NodeStatus.ONLINE)
        self.membership = Membership(seal_record(identity, first), config.membership)
        self._queue = BroadcastQueue(multiplier=config.gossip.retransmit_mult)
        self._links: dict[str, PeerLink] = {}
        self._dialing: set[str] = set()  # peer ids and seed URLs being dialled
        self._retry_at: dict[str, tuple[float, float]] = {}  # url -> (next attempt, current back-off)
        self._refresh_now = trio.Event()
        self._last_issue = -math.inf
        self._changed = trio.lowlevel.ParkingLot()
        self._rejected: dict[str, int] = {}  # peer id -> statements refused from it
        self._closed_bytes = [0, 0]  # bytes sent/received on links that are gone
        self._nursery: trio.Nursery | None = None
        self._stopping = False
        self.port: int | None = None

    # ---- public --------------------------------------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    @property
    def local_record(self) -> SignedRecord:
        return self.membership.local

    @property
    def linked_peers(self) -> list[str]:
        return list(self._links)

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
            self._addrs = cfg.advertise or advertised_urls(cfg.listen_host, self.port)
            self._issue(NodeStatus.ONLINE)
            log.info("peer %s listening on %s", short_id(self.peer_id), ", ".join(self._addrs))
            for loop in (self._gossip_loop, self._sync_loop, self._refresh_loop, self._tick_loop, self._maintain_loop):
                nursery.start_soon(loop)
            task_status.started(self.port)

    def request_refresh(self) -> None:
        """Re-issue our record soon (within ``min_refresh_interval``): load or models changed."""
        self._refresh_now.set()

    async def leave(self, timeout: float = 1.0) -> None:
        """Say goodbye: a final record with status "left", delivered to every linked peer, then close links."""
        self._stopping = True
        goodbye = Rumors((self._issue(NodeStatus.LEFT).envelope,))
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
            rumors_queued=len(self._queue),
            bytes_sent=sent,
            bytes_received=received,
            rejected_statements=sum(self._rejected.values()),
        )

    # ---- our record ----------------------------------------------------------------------------------------

    def _make_record(self, *, seq: int, status: NodeStatus) -> NodeRecord:
        fields = self._describe()
        now = self._wall()
        return NodeRecord(
            peer_id=self.peer_id,
            seq=seq,
            issued_at=now,
            lifetime=self.config.gossip.record_lifetime,
            addrs=self._addrs,
            **{**fields, "status": NodeStatus.LEFT if status is NodeStatus.LEFT else fields.get("status", status)},
        )

    def _issue(self, status: NodeStatus) -> SignedRecord:
        record = self._make_record(seq=next_seq(self.membership.local.record.seq, self._wall()), status=status)
        signed = seal_record(self.identity, record)
        self.membership.set_local(signed)
        self._queue.push(("record", self.peer_id), signed.envelope)
        self._last_issue = trio.current_time()
        return signed

    async def _refresh_loop(self) -> None:
        gossip = self.config.gossip
        while True:
            with trio.move_on_after(gossip.refresh_interval):
                await self._refresh_now.wait()
            # Load changes are coalesced to one record per min_refresh_interval.
            await trio.sleep_until(self._last_issue + gossip.min_refresh_interval)
            self._refresh_now = trio.Event()
            self._issue(NodeStatus.ONLINE)

    def _refute(self) -> None:
        log.info("refuting a suspicion about us with a newer record")
        self._issue(NodeStatus.ONLINE)

    # ---- links ---------------------------------------------------------------------------------------------

    async def _on_inbound(self, link: PeerLink) -> None:
        if len(self._links) >= self.config.peers.max_peers and link.peer_id not in self._links:
            # Full: give the joiner our table so it can dial others, then close.
            await self._send_quietly(link, SyncReply(tuple(self._capped(self.membership.newer_than({}))), ()))
            await link.aclose(CloseCode.FULL, "peer limit reached")
            self._accept_statements([link.record.envelope], link.peer_id)
            return
        await self._run_link(link)

    async def _dial_and_run(self, key: str, url: str) -> None:
        """Dial ``url`` and serve the link until it closes; ``key`` marks the attempt in progress."""
        try:
            async with dial(url, self._handshake, self.membership.local, wall_now=self._wall, outbox=self.config.peers.outbox) as link:
                self._retry_at.pop(url, None)
                self._dialing.discard(key)
                await self._run_link(link)
        except PeerRejected as exc:
            log.debug("dial %s refused: %s", url, exc)
            self._back_off(url)
        except (PeerError, RemoteProtocolError) as exc:
            log.debug("dial %s failed: %s", url, exc)
            self._back_off(url)
            raise
        finally:
            self._dialing.discard(key)

    def _back_off(self, url: str) -> None:
        _, delay = self._retry_at.get(url, (0.0, 0.5))
        delay = min(delay * 2, self.config.peers.seed_retry_max)
        self._retry_at[url] = (trio.current_time() + delay * (0.5 + self._rng.random()), delay)

    def _may_dial(self, url: str) -> bool:
        return self._retry_at.get(url, (0.0, 0.0))[0] <= trio.current_time()

    def _register(self, link: PeerLink) -> bool:
        """Keep one link per peer. Of two links made by simultaneous dials, both ends keep the one dialled by
        the smaller peer id; a new link from the same side replaces the old one (a reconnect)."""
        old = self._links.get(link.peer_id)
        if old is not None:
            dialler = lambda lk: self.peer_id if lk.initiator else lk.peer_id  # noqa: E731
            if dialler(old) != dialler(link) and dialler(old) == min(self.peer_id, link.peer_id):
                return False
            self._nursery.start_soon(old.aclose, CloseCode.DUPLICATE, "replaced by a newer link")
        self._links[link.peer_id] = link
        self._changed.unpark_all()
        return True

    async def _run_link(self, link: PeerLink) -> None:
        if not self._register(link):
            await link.aclose(CloseCode.DUPLICATE, "a link to this peer already exists")
            return
        log.debug("link up: %r at %s", link, link.remote_address)
        self._accept_statements([link.record.envelope], link.peer_id)
        member = self.membership.get(link.peer_id)
        if member is not None and member.state is not MemberState.ALIVE:
            # It answers, yet we hold its current record as down: tell it, so it refutes for everyone.
            notice = Notice(self.peer_id, NoticeKind.SUSPECT, link.peer_id, member.seq, self._wall())
            link.send_nowait(Rumors((seal_notice(self.identity, notice).envelope,)))
        if link.initiator:
            link.send_nowait(SyncRequest(self.membership.digest()))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._guard, link, link.run_writer)
                nursery.start_soon(self._guard, link, self._probe_link, link)
                await self._guard(link, self._read_link, link)
                nursery.cancel_scope.cancel()
        finally:
            self._unregister(link)

    async def _guard(self, link: PeerLink, fn: Callable[..., Any], *args: Any) -> None:
        """Run one of a link's tasks; a peer failure or protocol violation ends the link, nothing more."""
        try:
            await fn(*args)
        except RemoteProtocolError as exc:
            self._note_garbage(link.peer_id, exc)
            await link.aclose(exc.close_code, str(exc))
        except PeerError as exc:
            log.debug("%r ended: %s", link, exc)
            await link.aclose(CloseCode.TIMEOUT, str(exc))

    def _unregister(self, link: PeerLink) -> None:
        stats = link.statistics()
        self._closed_bytes[0] += stats.bytes_sent
        self._closed_bytes[1] += stats.bytes_received
        if self._links.get(link.peer_id) is not link:
            return  # replaced by a newer link to the same peer
        del self._links[link.peer_id]
        self._changed.unpark_all()
        code = link.close_code
        log.debug("link down: %r (close code %s)", link, code)
        # No doubt is cast when the link was closed on purpose or when we ourselves are shutting down.
        if self._stopping or code in CloseCode.DELIBERATE or trio.current_effective_deadline() == -math.inf:
            return
        notice = self.membership.observe_failure(
            link.peer_id, NoticeKind.SUSPECT, now=trio.current_time(), wall_now=self._wall(), identity=self.identity
        )
        if notice is not None:
            log.info("lost link to %s without goodbye: suspect", short_id(link.peer_id))
            self._spread_notice(notice)
            self._nursery.start_soon(self._confirm_or_reconnect, link.peer_id)

    async def _confirm_or_reconnect(self, peer_id: str) -> None:
        """After a lost link: if the peer's addresses refuse us it is dead; if one answers, the link is back."""
        member = self.membership.get(peer_id)
        if member is None or peer_id in self._dialing:
            return
        self._dialing.add(peer_id)
        for url in member.signed.record.addrs:
            try:
                await self._dial_and_run(peer_id, url)
                return
            except (PeerError, RemoteProtocolError):
                continue
        notice = self.membership.observe_failure(
            peer_id, NoticeKind.DEAD, now=trio.current_time(), wall_now=self._wall(), identity=self.identity
        )
        if notice is not None:
            log.info("peer %s does not answer at its addresses: offline", short_id(peer_id))
            self._spread_notice(notice)

    def _spread_notice(self, notice: SignedNotice) -> None:
        self._queue.push(("notice", notice.notice.target), notice.envelope)
        self._changed.unpark_all()

    async def _probe_link(self, link: PeerLink) -> None:
        peers = self.config.peers
        while True:
            await trio.sleep(peers.probe_interval * (0.8 + 0.4 * self._rng.random()))
            await link.ping(peers.probe_timeout)

    async def _read_link(self, link: PeerLink) -> None:
        limits = self.config.wire
        while True:
            message = await link.receive(limits)
            if isinstance(message, Rumors):
                self._accept_statements(message.items, link.peer_id)
            elif isinstance(message, SyncRequest):
                items = self._capped(self.membership.newer_than(message.digest))
                want = self.membership.wanted_from(message.digest, limits.max_digest)
                link.send_nowait(SyncReply(tuple(items), tuple(want)))
            elif isinstance(message, SyncReply):
                self._accept_statements(message.items, link.peer_id)
                wanted = [self._envelope_of(peer_id) for peer_id in message.want]
                items = self._capped([env for env in wanted if env is not None])
                if items:
                    link.send_nowait(Rumors(tuple(items)))
            else:
                raise DecodeError(f"{type(message).__name__} is only valid during the handshake")

    def _envelope_of(self, peer_id: str) -> bytes | None:
        if peer_id == self.peer_id:
            return self.membership.local.envelope
        member = self.membership.get(peer_id)
        return member.signed.envelope if member else None

    def _capped(self, envelopes: list[bytes]) -> list[bytes]:
        """As many envelopes as fit in one message."""
        budget = self.config.gossip.max_message_items_bytes
        limit = self.config.wire.max_items
        out: list[bytes] = []
        for envelope in envelopes:
            if len(out) >= limit or budget < len(envelope):
                break
            out.append(envelope)
            budget -= len(envelope)
        return out

    async def _say_goodbye(self, link: PeerLink, goodbye: Rumors) -> None:
        await self._send_quietly(link, goodbye)
        await link.aclose(CloseCode.NORMAL, "leaving")

    @staticmethod
    async def _send_quietly(link: PeerLink, message: Any) -> None:
        try:
            await link.send(message)
        except PeerError:
            pass  # the peer is gone already; nothing to tell it

    # ---- statements ----------------------------------------------------------------------------------------

    def _accept_statements(self, envelopes: Any, source: str) -> None:
        """Verify and apply gossiped statements; queue what changed our view; refute doubts about us."""
        mono, wall = trio.current_time(), self._wall()
        for envelope in envelopes:
            try:
                statement = open_envelope(envelope, now=wall, limits=self.config.records)
                if isinstance(statement, SignedRecord):
                    outcome = self.membership.apply_record(statement, mono)
                    subject = ("record", statement.record.peer_id)
                    supersedes: tuple[tuple[str, str], ...] = (("notice", statement.record.peer_id),)
                else:
                    outcome = self.membership.apply_notice(statement, mono)
                    subject, supersedes = ("notice", statement.notice.target), ()
            except StaleRecord:
                continue  # duplicates are the normal cost of gossip
            except RemoteProtocolError as exc:
                self._note_garbage(source, exc)
                continue
            if outcome.refute:
                self._refute()
            if outcome.fresh:
                self._queue.push(subject, envelope, supersedes=supersedes)
                self._changed.unpark_all()
                if outcome.joined:
                    log.info("new peer %s (%s)", short_id(outcome.joined), statement.record.name or "unnamed")
                elif outcome.state is not None:
                    log.info("peer %s is %s", short_id(subject[1]), outcome.state)

    def _note_garbage(self, source: str, exc: Exception) -> None:
        count = self._rejected.get(source, 0) + 1
        self._rejected[source] = count
        level = logging.WARNING if count == 1 else logging.DEBUG
        log.log(level, "refused input from %s: %s (%s)", short_id(source), exc, type(exc).__name__)

    # ---- periodic work -------------------------------------------------------------------------------------

    async def _gossip_loop(self) -> None:
        gossip = self.config.gossip
        while True:
            await trio.sleep(gossip.interval)
            links = list(self._links.values())
            members = len(self.membership) + 1
            for link in self._rng.sample(links, min(gossip.fanout, len(links))):
                items = self._queue.take(members=members, max_bytes=gossip.max_message_items_bytes)
                if not items:
                    break
                link.send_nowait(Rumors(tuple(items)))

    async def _sync_loop(self) -> None:
        interval = self.config.gossip.sync_interval
        while True:
            await trio.sleep(interval * (0.5 + self._rng.random()))
            if self._links:
                link = self._rng.choice(list(self._links.values()))
                link.send_nowait(SyncRequest(self.membership.digest()))

    async def _tick_loop(self) -> None:
        while True:
            await trio.sleep(0.25)
            for peer_id, state in self.membership.tick(trio.current_time()):
                log.info("peer %s is %s", short_id(peer_id), state or "forgotten")
                self._changed.unpark_all()

    async def _maintain_loop(self) -> None:
        """Keep ``target_peers`` links: seeds while we know nobody, then members we learned of; now and then try
        an offline member, which is how a healed partition finds its way back."""
        peers = self.config.peers
        next_heal = 0.0
        while True:
            now = trio.current_time()
            if not self._links:
                for url in self.config.seeds:
                    self._start_dial(url, url)
            alive = [m for m in self.membership.alive() if m.peer_id not in self._links]
            missing = peers.target_peers - len(self._links) - len(self._dialing)
            for member in self._rng.sample(alive, min(max(missing, 0), len(alive))):
                self._start_dial(member.peer_id, *member.signed.record.addrs[:1])
            if now >= next_heal:
                next_heal = now + peers.heal_interval
                down = [m for m in self.membership if m.state in (MemberState.SUSPECT, MemberState.OFFLINE)]
                if down:
                    member = self._rng.choice(down)
                    self._start_dial(member.peer_id, *member.signed.record.addrs[:1])
            await trio.sleep(0.5 + 0.5 * self._rng.random())

    def _start_dial(self, key: str, url: str | None = None) -> None:
        if url is None or key in self._dialing or key in self._links or not self._may_dial(url):
            return
        self._dialing.add(key)
        self._nursery.start_soon(self._dial_quietly, key, url)

    async def _dial_quietly(self, key: str, url: str) -> None:
        try:
            await self._dial_and_run(key, url)
        except (PeerError, RemoteProtocolError):
            pass  # logged by _dial_and_run; the maintain loop tries again after the back-off
