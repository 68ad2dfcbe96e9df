"""The peer table state machine (p2pnode.core.membership), driven by hand, and a fake network of 20 tables."""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, replace

import pytest

from p2pnode.core.broadcast import BroadcastQueue
from p2pnode.core import records
from p2pnode.core.identity import Identity, verify_signature
from p2pnode.core.membership import (
    Member,
    MemberState,
    Membership,
    MembershipConfig,
    NetworkStats,
    Outcome,
    network_stats,
)
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
from p2pnode.core.wire import Rumors, SyncReply, SyncRequest, decode, encode
from p2pnode.errors import RecordExpired, StaleRecord

WALL = 1_700_000_000.0  # wall clock inside records
T0 = 100.0  # the table's monotonic "now" at the start of each test
CONFIG = MembershipConfig(stale_after=60.0, suspicion_timeout=2.0, forget_after=600.0, max_members=4096)
ALIVE, SUSPECT, OFFLINE, LEFT = MemberState.ALIVE, MemberState.SUSPECT, MemberState.OFFLINE, MemberState.LEFT


@functools.cache
def ident(n: int) -> Identity:
    return Identity.from_seed(n.to_bytes(32, "big"))


ME, P1, P2, P3 = ident(1), ident(2), ident(3), ident(4)


def make_record(identity: Identity, seq: int = 10, **fields) -> SignedRecord:
    fields.setdefault("issued_at", WALL)
    fields.setdefault("lifetime", 120.0)
    return seal_record(identity, NodeRecord(peer_id=identity.peer_id, seq=seq, **fields))


def make_notice(
    issuer: Identity, target: Identity, seq: int = 10, kind: NoticeKind = NoticeKind.SUSPECT
) -> SignedNotice:
    return seal_notice(issuer, Notice(issuer.peer_id, kind, target.peer_id, seq, WALL))


def make_membership(seq: int = 10, config: MembershipConfig = CONFIG, peers: tuple[Identity, ...] = ()) -> Membership:
    table = Membership(make_record(ME, seq), config)
    for peer in peers:
        table.apply_record(make_record(peer), T0)
    return table


def before(t: float) -> float:
    """The float just below ``t``: the last instant at which a timer of ``t`` has not yet fired."""
    return math.nextafter(t, -math.inf)


def state(table: Membership, identity: Identity) -> MemberState | None:
    member = table.get(identity.peer_id)
    return None if member is None else member.state


# ---- records ----------------------------------------------------------------------------------------------


def test_new_record_makes_an_alive_member_and_reports_the_join():
    table = make_membership()
    signed = make_record(P1, seq=5)
    assert table.apply_record(signed, T0) == Outcome(fresh=True, joined=P1.peer_id, state=ALIVE)
    assert table.get(P1.peer_id) == Member(signed, ALIVE, state_since=T0, refreshed_at=T0)
    assert len(table) == 1
    assert [m.peer_id for m in table] == [P1.peer_id]
    assert [m.peer_id for m in table.alive()] == [P1.peer_id]


def test_newer_seq_replaces_the_record_without_a_state_change():
    table = make_membership(peers=(P1,))
    newer = make_record(P1, seq=11, name="renamed")
    assert table.apply_record(newer, T0 + 5) == Outcome(fresh=True)
    assert table.get(P1.peer_id) == Member(newer, ALIVE, state_since=T0, refreshed_at=T0 + 5)


@pytest.mark.parametrize("seq", [10, 9, 0])
def test_stale_seq_raises_stale_record_and_changes_nothing(seq):
    table = make_membership(peers=(P1,))
    held = table.get(P1.peer_id).signed
    with pytest.raises(StaleRecord):
        table.apply_record(make_record(P1, seq=seq, name="replay"), T0 + 5)
    assert table.get(P1.peer_id) == Member(held, ALIVE, state_since=T0, refreshed_at=T0)


@pytest.mark.parametrize("seq", [9, 10])
def test_own_record_not_newer_than_ours_is_stale(seq):
    table = make_membership(seq=10)
    with pytest.raises(StaleRecord):
        table.apply_record(make_record(ME, seq=seq), T0)
    assert len(table) == 0


def test_own_record_with_a_higher_seq_asks_for_a_refutation():
    table = make_membership(seq=10)
    assert table.apply_record(make_record(ME, seq=11), T0) == Outcome(refute=True, outbid=11)
    assert len(table) == 0 and table.local.record.seq == 10


def test_left_record_of_a_new_peer():
    table = make_membership()
    outcome = table.apply_record(make_record(P1, status=NodeStatus.LEFT), T0)
    assert outcome == Outcome(fresh=True, joined=P1.peer_id, state=LEFT)
    assert table.alive() == []


@pytest.mark.parametrize("status", [NodeStatus.BUSY, NodeStatus.DRAINING])
def test_busy_and_draining_members_are_alive(status):
    table = make_membership()
    assert table.apply_record(make_record(P1, status=status), T0).state is ALIVE


def test_left_record_moves_a_member_to_left_and_a_newer_record_brings_it_back():
    table = make_membership(peers=(P1,))
    left = make_record(P1, seq=11, status=NodeStatus.LEFT)
    assert table.apply_record(left, T0 + 1) == Outcome(fresh=True, state=LEFT)
    assert table.apply_record(make_record(P1, seq=12), T0 + 2) == Outcome(fresh=True, state=ALIVE)
    assert table.get(P1.peer_id).state_since == T0 + 2


def test_max_members_bounds_the_table():
    table = make_membership(config=MembershipConfig(max_members=2), peers=(P1, P2))
    with pytest.raises(StaleRecord, match="full"):
        table.apply_record(make_record(P3), T0)
    assert table.apply_record(make_record(P1, seq=11), T0) == Outcome(fresh=True)  # known members still update
    assert len(table) == 2 and table.get(P3.peer_id) is None


def test_a_forgotten_member_frees_its_slot():
    config = MembershipConfig(max_members=1, forget_after=600.0)
    table = make_membership(config=config, peers=(P1,))
    table.apply_record(make_record(P1, seq=11, status=NodeStatus.LEFT), T0)
    assert table.tick(T0 + 600) == [(P1.peer_id, None)]
    assert table.apply_record(make_record(P2), T0 + 600).joined == P2.peer_id


# ---- notices and timers -----------------------------------------------------------------------------------


def test_suspicion_times_out_exactly_at_suspicion_timeout():
    table = make_membership(peers=(P1,))
    t = T0 + 7
    assert table.apply_notice(make_notice(P2, P1), t) == Outcome(fresh=True, state=SUSPECT)
    assert table.get(P1.peer_id).state_since == t
    assert table.tick(before(t + 2.0)) == []
    assert state(table, P1) is SUSPECT
    assert table.tick(t + 2.0) == [(P1.peer_id, OFFLINE)]
    assert table.get(P1.peer_id).state_since == t + 2.0
    assert table.tick(t + 100) == []


def test_repeated_suspicion_is_not_fresh_and_does_not_restart_the_timer():
    table = make_membership(peers=(P1,))
    table.apply_notice(make_notice(P2, P1), T0)
    assert table.apply_notice(make_notice(P3, P1), T0 + 1) == Outcome()
    assert table.tick(T0 + 2.0) == [(P1.peer_id, OFFLINE)]


@pytest.mark.parametrize("down", [SUSPECT, OFFLINE])
def test_newer_record_revives_a_suspect_or_offline_member(down):
    table = make_membership(peers=(P1,))
    table.apply_notice(make_notice(P2, P1), T0)
    if down is OFFLINE:
        table.tick(T0 + 2.0)
    assert state(table, P1) is down
    assert table.apply_record(make_record(P1, seq=11), T0 + 3) == Outcome(fresh=True, state=ALIVE)
    assert table.get(P1.peer_id).state_since == T0 + 3
    assert table.tick(T0 + 62.9) == []


def test_notice_about_an_older_seq_is_ignored():
    table = make_membership(peers=(P1,))
    for kind in NoticeKind:
        assert table.apply_notice(make_notice(P2, P1, seq=9, kind=kind), T0) == Outcome()
    assert state(table, P1) is ALIVE


def test_notice_about_a_newer_seq_than_ours_applies():
    table = make_membership(peers=(P1,))
    assert table.apply_notice(make_notice(P2, P1, seq=11), T0) == Outcome(fresh=True, state=SUSPECT)


def test_refuted_suspicion_is_ignored_when_gossiped_again():
    table = make_membership(peers=(P1,))
    old_notice = make_notice(P2, P1, seq=10)
    table.apply_notice(old_notice, T0)
    table.apply_record(make_record(P1, seq=11), T0 + 1)
    assert table.apply_notice(old_notice, T0 + 2) == Outcome()
    assert state(table, P1) is ALIVE


@pytest.mark.parametrize("start", [ALIVE, SUSPECT])
def test_dead_notice_makes_alive_and_suspect_members_offline(start):
    table = make_membership(peers=(P1,))
    if start is SUSPECT:
        table.apply_notice(make_notice(P2, P1), T0)
    dead = make_notice(P2, P1, kind=NoticeKind.DEAD)
    assert table.apply_notice(dead, T0 + 1) == Outcome(fresh=True, state=OFFLINE)
    assert table.get(P1.peer_id).state_since == T0 + 1
    assert table.apply_notice(dead, T0 + 2) == Outcome()


@pytest.mark.parametrize("kind", list(NoticeKind))
def test_notices_do_not_change_offline_or_left_members(kind):
    table = make_membership(peers=(P1, P2))
    table.apply_notice(make_notice(P3, P1, kind=NoticeKind.DEAD), T0)
    table.apply_record(make_record(P2, seq=11, status=NodeStatus.LEFT), T0)
    assert table.apply_notice(make_notice(P3, P1, kind=kind), T0 + 1) == Outcome()
    assert table.apply_notice(make_notice(P3, P2, seq=11, kind=kind), T0 + 1) == Outcome()
    assert (state(table, P1), state(table, P2)) == (OFFLINE, LEFT)


def test_notice_about_an_unknown_peer_or_by_the_target_itself_is_ignored():
    table = make_membership(peers=(P1,))
    assert table.apply_notice(make_notice(P1, P2), T0) == Outcome()
    assert table.apply_notice(make_notice(P1, P1, kind=NoticeKind.DEAD), T0) == Outcome()
    assert state(table, P1) is ALIVE and table.get(P2.peer_id) is None


@pytest.mark.parametrize("kind", list(NoticeKind))
@pytest.mark.parametrize(("seq", "refute"), [(9, False), (10, True), (11, True)])
def test_notice_about_us_asks_for_a_refutation_only_when_it_is_about_our_current_seq(kind, seq, refute):
    table = make_membership(seq=10, peers=(P1,))
    assert table.apply_notice(make_notice(P1, ME, seq=seq, kind=kind), T0) == Outcome(refute=refute, outbid=seq if refute else 0)
    assert len(table) == 1 and table.local.record.seq == 10


def test_stale_after_makes_an_alive_member_suspect_then_offline():
    table = make_membership(peers=(P1,))
    assert table.tick(before(T0 + 60.0)) == []
    assert table.tick(T0 + 60.0) == [(P1.peer_id, SUSPECT)]
    assert table.tick(before(T0 + 62.0)) == []
    assert table.tick(T0 + 62.0) == [(P1.peer_id, OFFLINE)]


def test_a_fresh_record_restarts_the_stale_timer():
    table = make_membership(peers=(P1,))
    table.apply_record(make_record(P1, seq=11), T0 + 30)
    assert table.tick(T0 + 89.9) == []
    assert table.tick(T0 + 90.0) == [(P1.peer_id, SUSPECT)]


def test_tick_moves_a_member_one_state_at_a_time():
    table = make_membership(peers=(P1,))
    assert table.tick(T0 + 10_000) == [(P1.peer_id, SUSPECT)]
    assert table.tick(T0 + 10_000) == []
    assert table.tick(T0 + 10_002) == [(P1.peer_id, OFFLINE)]


@pytest.mark.parametrize("gone", [OFFLINE, LEFT])
def test_offline_and_left_members_are_forgotten_after_forget_after(gone):
    table = make_membership(peers=(P1,))
    if gone is OFFLINE:
        table.apply_notice(make_notice(P2, P1, kind=NoticeKind.DEAD), T0 + 5)
    else:
        table.apply_record(make_record(P1, seq=11, status=NodeStatus.LEFT), T0 + 5)
    assert table.tick(before(T0 + 605)) == []
    assert table.tick(T0 + 605) == [(P1.peer_id, None)]
    assert table.get(P1.peer_id) is None and len(table) == 0
    assert table.digest() == {ME.peer_id: 10}


def test_several_members_change_in_one_tick():
    table = make_membership(peers=(P1, P2, P3))
    table.apply_notice(make_notice(ME, P2), T0 + 58)
    table.apply_record(make_record(P3, seq=11), T0 + 1)
    assert table.tick(T0 + 60) == [(P1.peer_id, SUSPECT), (P2.peer_id, OFFLINE)]


@pytest.mark.parametrize("gone", [OFFLINE, LEFT])
def test_a_forgotten_member_is_not_brought_back_by_its_old_record(gone):
    # The record outlives forget_after (lifetimes up to an hour are valid), so copies of it still circulate.
    table = make_membership()
    last = make_record(P1, lifetime=3600.0)
    table.apply_record(last, T0)
    if gone is OFFLINE:
        table.apply_notice(make_notice(P2, P1, kind=NoticeKind.DEAD), T0)
    else:
        last = make_record(P1, seq=11, lifetime=3600.0, status=NodeStatus.LEFT)
        table.apply_record(last, T0)
    assert table.tick(T0 + 600) == [(P1.peer_id, None)]
    with pytest.raises(StaleRecord):
        table.apply_record(last, T0 + 601)
    # A newer record (the node came back) is welcome, and the seq is remembered only until the old one expired.
    assert table.apply_record(make_record(P1, seq=12), T0 + 602).joined == P1.peer_id
    table2 = make_membership()
    table2.apply_record(make_record(P1, lifetime=3600.0), T0)
    table2.apply_notice(make_notice(P2, P1, kind=NoticeKind.DEAD), T0)
    table2.tick(T0 + 600)
    table2.tick(T0 + 3600 + CONFIG.record_grace)
    assert table2.apply_record(last, T0 + 3600 + CONFIG.record_grace).joined == P1.peer_id


# ---- own failure observations -----------------------------------------------------------------------------


def test_observe_failure_signs_and_applies_a_notice_once():
    table = make_membership(peers=(P1,))
    notice = table.observe_failure(P1.peer_id, NoticeKind.SUSPECT, now=T0 + 1, wall_now=WALL + 1, identity=ME)
    assert notice.notice == Notice(ME.peer_id, NoticeKind.SUSPECT, P1.peer_id, 10, WALL + 1)
    assert open_envelope(notice.envelope, now=WALL + 1) == notice
    assert table.get(P1.peer_id).state is SUSPECT
    assert table.observe_failure(P1.peer_id, NoticeKind.SUSPECT, now=T0 + 1, wall_now=WALL, identity=ME) is None
    dead = table.observe_failure(P1.peer_id, NoticeKind.DEAD, now=T0 + 2, wall_now=WALL, identity=ME)
    assert dead.notice.kind is NoticeKind.DEAD and state(table, P1) is OFFLINE


def test_observe_failure_of_an_unknown_peer_is_none():
    assert make_membership().observe_failure(P1.peer_id, NoticeKind.DEAD, now=T0, wall_now=WALL, identity=ME) is None


# ---- our own record ---------------------------------------------------------------------------------------


def test_set_local_takes_only_a_newer_record_of_ours():
    table = make_membership(seq=10)
    newer = make_record(ME, seq=11)
    table.set_local(newer)
    assert table.local is newer and table.digest() == {ME.peer_id: 11}
    for bad in (make_record(ME, seq=11), make_record(ME, seq=5), make_record(P1, seq=12)):
        with pytest.raises(ValueError):
            table.set_local(bad)


# ---- digests ----------------------------------------------------------------------------------------------


def test_digest_lists_every_record_held_in_any_state_and_ours():
    table = make_membership(seq=10, peers=(P1, P2, P3))
    table.apply_record(make_record(P2, seq=20), T0)
    table.apply_notice(make_notice(ME, P3, kind=NoticeKind.DEAD), T0)
    assert table.digest() == {P1.peer_id: 10, P2.peer_id: 20, P3.peer_id: 10, ME.peer_id: 10}


def test_newer_than():
    table = make_membership(seq=10, peers=(P1, P2))
    local, p1, p2 = table.local.envelope, table.get(P1.peer_id).signed.envelope, table.get(P2.peer_id).signed.envelope
    assert table.newer_than({}) == [p1, p2, local]
    assert table.newer_than(table.digest()) == []
    assert table.newer_than({P1.peer_id: 9, P2.peer_id: 10, ME.peer_id: 10, P3.peer_id: 99}) == [p1]
    assert table.newer_than({P1.peer_id: 11, P2.peer_id: 10, ME.peer_id: 9}) == [local]


def test_wanted_from():
    table = make_membership(seq=10, peers=(P1, P2))
    digest = {P1.peer_id: 11, P2.peer_id: 10, P3.peer_id: 1, ME.peer_id: 99}
    assert table.wanted_from(digest, limit=10) == [P1.peer_id, P3.peer_id]
    assert table.wanted_from(digest, limit=1) == [P1.peer_id]
    assert table.wanted_from({P2.peer_id: 9}, limit=10) == []


def test_wanted_from_with_a_zero_limit_wants_nothing():
    table = make_membership(peers=(P1,))
    assert table.wanted_from({P2.peer_id: 1, P3.peer_id: 1}, limit=0) == []


# ---- network stats ----------------------------------------------------------------------------------------


def test_network_stats_count_offline_members_in_the_total_only():
    local = make_record(ME, models=("llama3",), gpu_count=1, gpu_memory=8_000, cpu_cores=8, active_tasks=1)
    table = Membership(local, CONFIG)
    specs = {
        P1: dict(models=("qwen", "llama3"), gpu_count=2, gpu_memory=24_000, cpu_cores=16, active_tasks=2),
        P2: dict(models=("phi",), gpu_count=4, gpu_memory=80_000, cpu_cores=64, active_tasks=5),  # suspect
        P3: dict(models=("mistral",), gpu_count=8, gpu_memory=640_000, cpu_cores=128, active_tasks=9),  # offline
        ident(5): dict(models=("gemma",), cpu_cores=4, status=NodeStatus.LEFT),  # left
        ident(6): dict(models=("zephyr",), cpu_cores=2, status=NodeStatus.BUSY, active_tasks=7),  # busy: alive
    }
    for identity, fields in specs.items():
        table.apply_record(make_record(identity, **fields), T0)
    table.apply_notice(make_notice(ME, P2), T0)
    table.apply_notice(make_notice(ME, P3, kind=NoticeKind.DEAD), T0)
    assert network_stats(table.local, table) == NetworkStats(
        total_nodes=6,
        online_nodes=3,
        total_gpu_memory=8_000 + 24_000,
        total_cpu_cores=8 + 16 + 2,
        active_tasks=1 + 2 + 7,
        total_gpus=1 + 2,
        models=("llama3", "qwen", "zephyr"),
    )


def test_network_stats_of_a_lone_node():
    local = make_record(ME, cpu_cores=4)
    assert network_stats(local, []) == NetworkStats(1, 1, 0, 4, 0, 0, ())


# ---- a fake network of tables -----------------------------------------------------------------------------
# N tables exchange real envelopes through the real codec over a dict "network" driven round by round, in the
# spirit of h11's ConnectionPair and memberlist's MockNetwork. Gossip mirrors p2pnode.net.gossip: each round
# every node sends its queued rumors to FANOUT random members it holds alive or suspect, re-issues its record
# every REFRESH seconds, pulls-and-pushes state with one random member every SYNC_ROUNDS rounds, and ticks.

ROUND = 0.2  # seconds per gossip round
FANOUT = 3
REFRESH = 4.0
SYNC_ROUNDS = 25
SPREAD_ROUNDS = 10  # 2 s: a rumor reaches all 20 nodes within this (ARCHITECTURE.md targets 2 s for 100)
NET_CONFIG = MembershipConfig(stale_after=10.0, suspicion_timeout=3.0, forget_after=10.0)
# A record expires before anyone can forget it: forgetting needs at least stale_after + suspicion_timeout +
# forget_after = 23 s after the record was issued.
NET_LIFETIME = 20.0


@dataclass
class FakeNode:
    identity: Identity
    membership: Membership
    queue: BroadcastQueue
    next_refresh: float
    sync_phase: int
    up: bool = True

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id


class FakeNetwork:
    def __init__(self, seed: int, config: MembershipConfig = NET_CONFIG, lifetime: float = NET_LIFETIME) -> None:
        self.rng = random.Random(seed)
        self.config = config
        self.lifetime = lifetime
        self.rounds = 0
        self.nodes: dict[str, FakeNode] = {}
        self.expired = 0  # expired statements refused, as Gossip.accept counts them

    @property
    def now(self) -> float:
        return self.rounds * ROUND

    def wall(self) -> float:
        return WALL + self.now

    def add(self, n: int) -> FakeNode:
        identity = ident(100 + n)
        record = make_record(identity, seq=next_seq(0, self.wall()), issued_at=self.wall(), lifetime=self.lifetime)
        node = FakeNode(
            identity,
            Membership(record, self.config),
            BroadcastQueue(multiplier=3),
            next_refresh=self.now + self.rng.uniform(0, REFRESH),
            sync_phase=n % SYNC_ROUNDS,
        )
        self.nodes[node.peer_id] = node
        return node

    def issue(self, node: FakeNode) -> None:
        seq = next_seq(node.membership.local.record.seq, self.wall())
        signed = make_record(node.identity, seq=seq, issued_at=self.wall(), lifetime=self.lifetime)
        node.membership.set_local(signed)
        node.queue.push(("record", node.peer_id), signed.envelope)

    def accept(self, node: FakeNode, envelopes) -> None:
        """What Gossip.accept does; any error other than a duplicate or an expired record fails the test."""
        for envelope in envelopes:
            try:
                statement = open_envelope(envelope, now=self.wall())
            except RecordExpired:
                self.expired += 1
                continue
            try:
                if isinstance(statement, SignedRecord):
                    outcome = node.membership.apply_record(statement, self.now)
                    subject, supersedes = ("record", statement.record.peer_id), (("notice", statement.record.peer_id),)
                else:
                    outcome = node.membership.apply_notice(statement, self.now)
                    subject, supersedes = ("notice", statement.notice.target), ()
            except StaleRecord:
                continue
            if outcome.refute:
                self.issue(node)
            if outcome.fresh:
                node.queue.push(subject, envelope, supersedes=supersedes)

    def send(self, target: FakeNode, message):
        """Through the codec; a node that is down receives nothing."""
        return decode(encode(message)) if target.up else None

    def push_pull(self, a: FakeNode, b: FakeNode) -> None:
        request = self.send(b, SyncRequest(a.membership.digest()))
        if request is None:
            return
        mb = b.membership
        items, want = mb.newer_than(request.digest), mb.wanted_from(request.digest, 8192)
        reply = self.send(a, SyncReply(tuple(items), tuple(want)))
        self.accept(a, reply.items)
        envelopes = {a.peer_id: a.membership.local.envelope} | {m.peer_id: m.signed.envelope for m in a.membership}
        pushed = self.send(b, Rumors(tuple(envelopes[p] for p in reply.want if p in envelopes)))
        self.accept(b, pushed.items)

    def join(self, node: FakeNode, seed: FakeNode) -> None:
        """A link is up: both sides take the other's record from the handshake, then the joiner syncs."""
        self.accept(seed, [node.membership.local.envelope])
        self.accept(node, [seed.membership.local.envelope])
        self.push_pull(node, seed)

    def step(self) -> None:
        self.rounds += 1
        up = [n for n in self.nodes.values() if n.up]
        for node in up:
            if self.now >= node.next_refresh:
                node.next_refresh += REFRESH
                self.issue(node)
            # like memberlist (and like links in the overlay), suspects still get gossip: it is how they refute
            alive = [self.nodes[m.peer_id] for m in node.membership if m.state in (ALIVE, SUSPECT)]
            for target in self.rng.sample(alive, min(FANOUT, len(alive))):
                items = node.queue.take(members=len(node.membership) + 1, max_bytes=256 * 1024)
                if not items:
                    break
                message = self.send(target, Rumors(tuple(items)))
                if message is not None:
                    self.accept(target, message.items)
            if alive and self.rounds % SYNC_ROUNDS == node.sync_phase:
                self.push_pull(node, self.rng.choice(alive))
        for node in up:
            node.membership.tick(self.now)

    def views(self, subject: FakeNode) -> list[MemberState | None]:
        """How every other node that is up sees ``subject``."""
        return [state(n.membership, subject.identity) for n in self.nodes.values() if n.up and n is not subject]

    def run_until(self, condition, max_rounds: int) -> int:
        start = self.rounds
        while not condition():
            assert self.rounds - start < max_rounds, f"not reached within {max_rounds} rounds"
            self.step()
        return self.rounds - start

    def everyone_alive(self) -> bool:
        return all(view is ALIVE for node in self.nodes.values() if node.up for view in self.views(node))


def make_network(
    size: int, seed: int, config: MembershipConfig = NET_CONFIG, lifetime: float = NET_LIFETIME
) -> FakeNetwork:
    """``size`` nodes that all joined through node 0 and converged to a full, all-alive view."""
    net = FakeNetwork(seed, config, lifetime)
    nodes = [net.add(n) for n in range(size)]
    for node in nodes[1:]:
        net.join(node, nodes[0])
    net.run_until(net.everyone_alive, max_rounds=25)
    return net


@pytest.fixture
def memo_signatures(monkeypatch):
    """Each envelope reaches every node about 6 times; verifying its signature once is enough. The check is a
    pure function, so memoizing it changes no outcome (failures are not cached and are checked every time)."""
    monkeypatch.setattr(records, "verify_signature", functools.lru_cache(maxsize=None)(verify_signature))


@pytest.mark.slow
@pytest.mark.usefixtures("memo_signatures")
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fake_network_spreads_a_new_node_to_everyone(seed):
    net = make_network(19, seed)
    newcomer = net.add(19)
    net.join(newcomer, net.rng.choice(list(net.nodes.values())[:-1]))
    net.run_until(lambda: all(view is ALIVE for view in net.views(newcomer)), max_rounds=SPREAD_ROUNDS)
    assert len(newcomer.membership.alive()) == 19  # and it learned the whole table through its seed
    assert net.everyone_alive()


@pytest.mark.slow
@pytest.mark.usefixtures("memo_signatures")
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fake_network_marks_a_node_that_stops_refreshing_offline_everywhere(seed):
    net = make_network(20, seed)
    victim = list(net.nodes.values())[7]
    victim.up = False
    stopped = net.now
    first_offline = []

    def all_offline() -> bool:
        views = net.views(victim)
        if OFFLINE in views and not first_offline:
            first_offline.append(net.now)
        assert views.count(OFFLINE) + views.count(SUSPECT) + views.count(ALIVE) == 19
        assert all(view is ALIVE for node in net.nodes.values() if node.up for view in net.views(node))
        return all(view is OFFLINE for view in views)

    bound = NET_CONFIG.stale_after + NET_CONFIG.suspicion_timeout
    # its last record may still be spreading when it stops: each node times out from when the record reached it
    net.run_until(all_offline, max_rounds=math.ceil(bound / ROUND) + SPREAD_ROUNDS)
    # its last record was issued at most REFRESH before it stopped, so no one gave up on it earlier than this
    assert first_offline[0] >= stopped + bound - REFRESH
    # then it is forgotten everywhere, and stays forgotten: its last record expired before anyone forgot it
    forgotten = lambda: all(view is None for view in net.views(victim))  # noqa: E731
    net.run_until(forgotten, max_rounds=math.ceil(NET_CONFIG.forget_after / ROUND) + 1)
    for _ in range(2 * SYNC_ROUNDS):  # every node pulls-and-pushes twice more
        net.step()
        assert forgotten()
    assert net.everyone_alive()


@pytest.mark.slow
@pytest.mark.usefixtures("memo_signatures")
def test_fake_network_keeps_a_dead_node_forgotten_while_its_record_is_still_valid():
    # Records outlive forget_after here (RecordLimits allows lifetimes up to 3600 s, forget_after is 600 s by
    # default): nodes forget the dead node at slightly different times, and one that still holds its record
    # hands it back in a push-pull to one that forgot it, which takes it as a new ALIVE member and spreads it.
    config = replace(NET_CONFIG, forget_after=30.0)
    net = make_network(20, seed=2, config=config, lifetime=120.0)
    victim = list(net.nodes.values())[7]
    victim.up = False
    net.run_until(lambda: all(view is OFFLINE for view in net.views(victim)), max_rounds=80)
    forgotten = lambda: all(view is None for view in net.views(victim))  # noqa: E731
    net.run_until(forgotten, max_rounds=math.ceil(config.forget_after / ROUND) + 1)
    for _ in range(2 * SYNC_ROUNDS):
        net.step()
        assert forgotten()


@pytest.mark.slow
@pytest.mark.usefixtures("memo_signatures")
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fake_network_refutes_a_suspicion_about_a_live_node_everywhere(seed):
    net = make_network(20, seed)
    accuser, target = list(net.nodes.values())[3], list(net.nodes.values())[11]
    target.next_refresh = math.inf  # no periodic re-issue: only a refutation can outbid the notice
    current = target.membership.local.record.seq
    net.run_until(lambda: all(n.membership.digest()[target.peer_id] == current for n in net.nodes.values()), 10)
    notice = accuser.membership.observe_failure(
        target.peer_id, NoticeKind.SUSPECT, now=net.now, wall_now=net.wall(), identity=accuser.identity
    )
    accuser.queue.push(("notice", target.peer_id), notice.envelope)
    suspected_by: set[str] = set()

    def refuted() -> bool:
        views = net.views(target)
        assert OFFLINE not in views
        suspected_by.update(n.peer_id for n in net.nodes.values() if state(n.membership, target.identity) is SUSPECT)
        seqs = [n.membership.get(target.peer_id).seq for n in net.nodes.values() if n is not target]
        return all(view is ALIVE for view in views) and min(seqs) > notice.notice.seq

    # before anyone's suspicion can time out
    net.run_until(refuted, max_rounds=math.ceil(NET_CONFIG.suspicion_timeout / ROUND))
    assert accuser.peer_id in suspected_by and len(suspected_by) > 1  # the doubt did spread before the refutation
    # the refutation ends the epidemic: the old notice changes nothing anywhere any more
    for node in net.nodes.values():
        if node is not target:
            assert node.membership.apply_notice(notice, net.now) == Outcome()


def test_push_pull_hands_on_the_notice_behind_a_member_held_down():
    table = make_membership(peers=(P1,))
    dead = make_notice(P2, P1, kind=NoticeKind.DEAD)
    table.apply_notice(dead, T0)
    # A peer that holds P1's record (seq 10) as alive missed the notice: it gets the notice, not the record.
    assert table.newer_than({P1.peer_id: 10, ME.peer_id: 10}) == [dead.envelope]
    # A joiner that does not know P1 gets nothing about it: neither the offline record nor the notice.
    assert table.newer_than({ME.peer_id: 10}) == []
    # Once refuted by a newer record, the notice is history.
    table.apply_record(make_record(P1, seq=11), T0 + 1)
    assert table.newer_than({P1.peer_id: 11, ME.peer_id: 10}) == []
