"""Gossip: our own record, the rumor queue, push-pull sync and membership timers.

The trio shell around :mod:`p2pnode.core.membership` and :mod:`p2pnode.core.broadcast`; links are provided by
:class:`p2pnode.net.overlay.Overlay`. How information moves:

- **Rumors.** New statements (a newer record, a suspicion) go into the broadcast queue and are piggybacked on
  the next gossip rounds to ``fanout`` random linked peers; each node forwards only what changed its own view,
  which is what makes an epidemic end.
- **Push-pull.** Every ``sync_interval``, and right after we dial a peer, we send our digest (peer id -> seq);
  the peer answers with what we lack and asks for what it lacks. This repairs lost rumors and lets a joiner
  learn the whole table in one round trip.
- **Our record** is re-issued every ``refresh_interval``, when load or models change (at most once per
  ``min_refresh_interval``), and at once to refute a suspicion about us.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import trio

from p2pnode.config import OverlayConfig
from p2pnode.core.broadcast import BroadcastQueue
from p2pnode.core.identity import Identity, short_id
from p2pnode.core.limits import KeyedLimiter
from p2pnode.core.membership import Membership
from p2pnode.core.records import (
    NodeRecord,
    NodeStatus,
    SignedNotice,
    SignedRecord,
    next_seq,
    open_envelope,
    seal_record,
)
from p2pnode.core.wire import Message, Rumors, SyncReply, SyncRequest
from p2pnode.errors import DecodeError, RemoteProtocolError, StaleRecord
from p2pnode.net.transport import PeerLink

__all__ = ["Gossip"]

log = logging.getLogger(__name__)

SEEN_LIMIT = 16384  # envelope digests remembered (16 bytes each)


class Overrun(Exception):
    """A peer sent more new statements than we check per second: refused and counted like garbage."""


class Gossip:
    def __init__(
        self,
        identity: Identity,
        config: OverlayConfig,
        describe: Callable[[], dict[str, Any]],
        *,
        links: Callable[[], list[PeerLink]],
        on_change: Callable[[], None],
        wall_clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.identity = identity
        self.config = config
        self.addrs: tuple[str, ...] = ()  # set by the overlay once it listens
        self._describe = describe
        self._links = links
        self._on_change = on_change
        self._wall = wall_clock
        self._rng = rng
        self.membership = Membership(seal_record(identity, self._make_record(next_seq(0, wall_clock()))), config.membership)
        self.queue = BroadcastQueue(multiplier=config.gossip.retransmit_mult)
        self.rejected: dict[str, int] = {}  # peer id -> statements refused from it
        gossip = config.gossip
        self._intake = KeyedLimiter(gossip.statements_per_s, gossip.statements_burst, max_keys=4096)
        self._introductions = KeyedLimiter(gossip.new_peers_per_minute / 60, gossip.new_peers_burst, max_keys=4096)
        # Digests of envelopes already handled: gossip delivers each several times, byte for byte, and a
        # signature check costs far more than a hash. Bounded; the oldest are forgotten first.
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._refresh_now = trio.Event()
        self._last_issue = -math.inf
        self.leaving = False  # once our "left" record is out, nothing may outbid it

    # ---- our record ----------------------------------------------------------------------------------------

    def _make_record(self, seq: int, status: NodeStatus | None = None) -> NodeRecord:
        fields = self._describe()
        if status is not None:
            fields["status"] = status
        return NodeRecord(
            peer_id=self.identity.peer_id,
            seq=seq,
            issued_at=self._wall(),
            lifetime=self.config.gossip.record_lifetime,
            addrs=self.addrs,
            **fields,
        )

    def issue(self, status: NodeStatus | None = None, *, beat: int = 0) -> SignedRecord:
        """Sign and spread a new record of ours (``status`` overrides what ``describe()`` says) whose seq is
        above our last one and above ``beat``."""
        seq = next_seq(max(self.membership.local.record.seq, beat), self._wall())
        record = self._make_record(seq, status)
        signed = seal_record(self.identity, record)
        self.membership.set_local(signed)
        self.queue.push(("record", self.identity.peer_id), signed.envelope)
        self._last_issue = trio.current_time()
        return signed

    def request_refresh(self) -> None:
        self._refresh_now.set()

    # ---- incoming ------------------------------------------------------------------------------------------

    def accept(self, envelopes: Iterable[bytes], source: str) -> None:
        """Verify and apply statements; queue what changed our view; refute doubts about us."""
        mono, wall = trio.current_time(), self._wall()
        for envelope in envelopes:
            digest = hashlib.blake2b(envelope, digest_size=16).digest()
            if digest in self._seen:
                continue
            if self._intake.take(source, mono):
                self.note_garbage(source, Overrun("over the rate of new statements we check: the rest is dropped"))
                return
            try:
                statement = open_envelope(envelope, now=wall, limits=self.config.records)
                if isinstance(statement, SignedRecord):
                    newcomer = statement.record.peer_id
                    if self.membership.get(newcomer) is None and newcomer != self.identity.peer_id:
                        if self._introductions.take(source, mono):
                            rate = self.config.gossip.new_peers_per_minute
                            raise Overrun(f"introduces new peers faster than {rate:g}/min")
                    # Records only: a notice may arrive before its target's record, and must count then.
                    self._remember(digest)
                    outcome = self.membership.apply_record(statement, mono)
                    subject = ("record", statement.record.peer_id)
                    supersedes: tuple[tuple[str, str], ...] = (("notice", statement.record.peer_id),)
                else:
                    outcome = self.membership.apply_notice(statement, mono)
                    subject, supersedes = ("notice", statement.notice.target), ()
            except StaleRecord:
                continue  # duplicates are the normal cost of gossip
            except (RemoteProtocolError, Overrun) as exc:
                self.note_garbage(source, exc)
                continue
            if outcome.refute and not self.leaving:
                log.info("refuting a suspicion about us with a newer record")
                self.issue(beat=outcome.outbid)
            if outcome.fresh:
                self.queue.push(subject, envelope, supersedes=supersedes)
                self._on_change()
                if outcome.joined:
                    log.info("new peer %s (%s)", short_id(outcome.joined), statement.record.name or "unnamed")
                elif outcome.state is not None:
                    log.info("peer %s is %s", short_id(subject[1]), outcome.state)

    def _remember(self, digest: bytes) -> None:
        self._seen[digest] = None
        if len(self._seen) > SEEN_LIMIT:
            self._seen.popitem(last=False)

    def spread(self, notice: SignedNotice) -> None:
        """Queue a notice we made ourselves (it is already applied to our table)."""
        self.queue.push(("notice", notice.notice.target), notice.envelope)
        self._on_change()

    def note_garbage(self, source: str, exc: Exception) -> None:
        """Count refused input; warn once per peer, then only at debug level."""
        count = self.rejected.get(source, 0) + 1
        self.rejected[source] = count
        level = logging.WARNING if count == 1 else logging.DEBUG
        log.log(level, "refused input from %s: %s (%s)", short_id(source), exc, type(exc).__name__)

    def handle(self, link: PeerLink, message: Message) -> None:
        """One message received on an established link."""
        limits = self.config.wire
        if isinstance(message, Rumors):
            self.accept(message.items, link.peer_id)
        elif isinstance(message, SyncRequest):
            items = self.capped(self.membership.newer_than(message.digest))
            want = self.membership.wanted_from(message.digest, limits.max_digest)
            link.send_nowait(SyncReply(tuple(items), tuple(want)))
        elif isinstance(message, SyncReply):
            self.accept(message.items, link.peer_id)
            wanted = [self._envelope_of(peer_id) for peer_id in message.want]
            items = self.capped([env for env in wanted if env is not None])
            if items:
                link.send_nowait(Rumors(tuple(items)))
        else:
            raise DecodeError(f"{type(message).__name__} is not expected on an established link")

    def _envelope_of(self, peer_id: str) -> bytes | None:
        if peer_id == self.identity.peer_id:
            return self.membership.local.envelope
        member = self.membership.get(peer_id)
        return member.signed.envelope if member else None

    def capped(self, envelopes: list[bytes]) -> list[bytes]:
        """As many envelopes as fit in one message."""
        budget = self.config.gossip.max_message_items_bytes
        out: list[bytes] = []
        for envelope in envelopes:
            if len(out) >= self.config.wire.max_items or budget < len(envelope):
                break
            out.append(envelope)
            budget -= len(envelope)
        return out

    def sync_request(self) -> SyncRequest:
        return SyncRequest(self.membership.digest())

    # ---- periodic work -------------------------------------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for loop in (self._gossip_loop, self._sync_loop, self._refresh_loop, self._tick_loop):
                nursery.start_soon(loop)

    async def _gossip_loop(self) -> None:
        gossip = self.config.gossip
        while True:
            await trio.sleep(gossip.interval)
            links = self._links()
            members = len(self.membership) + 1
            for link in self._rng.sample(links, min(gossip.fanout, len(links))):
                items = self.queue.take(members=members, max_bytes=gossip.max_message_items_bytes)
                if not items:
                    break
                link.send_nowait(Rumors(tuple(items)))

    async def _sync_loop(self) -> None:
        interval = self.config.gossip.sync_interval
        while True:
            await trio.sleep(interval * (0.5 + self._rng.random()))
            links = self._links()
            if links:
                self._rng.choice(links).send_nowait(self.sync_request())

    async def _refresh_loop(self) -> None:
        gossip = self.config.gossip
        while True:
            # Jittered, so nodes started together do not all re-issue (and verify each other) in one instant.
            with trio.move_on_after(gossip.refresh_interval * (0.8 + 0.4 * self._rng.random())):
                await self._refresh_now.wait()
            # Load changes are coalesced into one record per min_refresh_interval.
            await trio.sleep_until(self._last_issue + gossip.min_refresh_interval)
            self._refresh_now = trio.Event()
            if not self.leaving:
                self.issue()

    async def _tick_loop(self) -> None:
        while True:
            await trio.sleep(0.25)
            for peer_id, state in self.membership.tick(trio.current_time()):
                log.info("peer %s is %s", short_id(peer_id), state or "forgotten")
                self._on_change()
