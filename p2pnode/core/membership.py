"""The peer table: which nodes exist, what they said last, and whether they are alive.

A pure state machine in the spirit of SWIM/memberlist. Inputs are verified statements (records and notices, see
:mod:`p2pnode.core.records`), local observations (a link died, an address refused us) and the passing of time;
outputs are :class:`Outcome` values telling the shell what changed and what to spread. ``now`` is the caller's
monotonic clock; nothing here reads a clock.

States of a member::

    ALIVE ──(notice "suspect", lost link, record stale)──> SUSPECT ──(suspicion timeout)──> OFFLINE
      ^                                                       │                                 │
      └────────────────── newer record (refutation) ─────────┴─────────────────────────────────┘
    any ──(record with status "left")──> LEFT       OFFLINE/LEFT ──(forget_after)──> forgotten

Only what changes our view is forwarded, which is what makes epidemics end: a record is fresh when it is newer
than the one held, a notice when it moved the member to a worse state.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from p2pnode.core.identity import Identity
from p2pnode.core.records import (
    AttachedNode,
    NodeRecord,
    NodeStatus,
    Notice,
    NoticeKind,
    SignedNotice,
    SignedRecord,
    seal_notice,
)
from p2pnode.errors import StaleRecord

__all__ = [
    "Member",
    "MemberState",
    "Membership",
    "MembershipConfig",
    "NetworkStats",
    "Outcome",
    "network_stats",
]


class MemberState(enum.StrEnum):
    ALIVE = "online"  # recently heard from, or refuted every suspicion
    SUSPECT = "suspect"  # someone lost contact; it has suspicion_timeout to refute
    OFFLINE = "offline"  # suspicion confirmed, or declared dead by a node that saw its address refuse
    LEFT = "left"  # said goodbye


@dataclass(frozen=True)
class MembershipConfig:
    stale_after: float = 90.0  # seconds without a newer record before an ALIVE member becomes SUSPECT
    suspicion_timeout: float = 2.0  # seconds a SUSPECT member has to refute before it is OFFLINE
    forget_after: float = 600.0  # seconds an OFFLINE or LEFT member stays listed
    record_grace: float = 30.0  # a forgotten member's seq is kept until its record expired + this (clock skew)
    max_members: int = 4096  # bound on the table; records of new peers beyond it are refused


@dataclass
class Member:
    signed: SignedRecord
    state: MemberState
    state_since: float  # local time of the last state change
    refreshed_at: float  # local time the current record arrived
    notice: SignedNotice | None = None  # why it is SUSPECT or OFFLINE, handed on in push-pull

    @property
    def peer_id(self) -> str:
        return self.signed.record.peer_id

    @property
    def seq(self) -> int:
        return self.signed.record.seq


@dataclass(frozen=True)
class Outcome:
    """What applying one input did."""

    fresh: bool = False  # our view changed: forward the statement to others
    refute: bool = False  # someone doubts us or holds a newer record of ours: issue a new record now
    outbid: int = 0  # when refuting, the seq our new record must beat
    joined: str | None = None  # peer id seen for the first time
    state: MemberState | None = None  # the member's new state, when it changed


@dataclass(frozen=True)
class NetworkStats:
    total_nodes: int
    online_nodes: int
    total_gpu_memory: int
    total_cpu_cores: int
    active_tasks: int
    total_gpus: int
    models: tuple[str, ...]


@dataclass
class Membership:
    """The table of members as this node sees it, itself included."""

    local: SignedRecord
    config: MembershipConfig = field(default_factory=MembershipConfig)
    _members: dict[str, Member] = field(default_factory=dict)
    # Forgotten members: peer id -> (last seq, local time until which copies of that record may still circulate).
    # Without them, a peer that has not forgotten yet would hand the old record back as a "new" member.
    _tombstones: dict[str, tuple[int, float]] = field(default_factory=dict)

    @property
    def self_id(self) -> str:
        return self.local.record.peer_id

    # ---- reading -------------------------------------------------------------------------------------------

    def get(self, peer_id: str) -> Member | None:
        return self._members.get(peer_id)

    def __iter__(self) -> Iterator[Member]:
        return iter(list(self._members.values()))

    def __len__(self) -> int:
        return len(self._members)

    def alive(self) -> list[Member]:
        return [m for m in self._members.values() if m.state is MemberState.ALIVE]

    def digest(self) -> dict[str, int]:
        """peer id -> seq of every record held, ours included: what a push-pull exchange compares."""
        digest = {peer_id: m.seq for peer_id, m in self._members.items()}
        digest[self.self_id] = self.local.record.seq
        return digest

    def newer_than(self, digest: Mapping[str, int]) -> list[bytes]:
        """Envelopes the owner of ``digest`` lacks: records it has not or only older, and the notices that made
        members it holds with our seq SUSPECT or OFFLINE (a peer that missed a notice's rumor learns it here).
        Records of OFFLINE members are not handed out: a record carries no liveness, a joiner would take them
        as alive."""
        out = []
        for pid, m in self._members.items():
            held = digest.get(pid, -1)
            if held < m.seq and m.state is not MemberState.OFFLINE:
                out.append(m.signed.envelope)
            elif held == m.seq and m.notice is not None and m.state in (MemberState.SUSPECT, MemberState.OFFLINE):
                out.append(m.notice.envelope)
        if digest.get(self.self_id, -1) < self.local.record.seq:
            out.append(self.local.envelope)
        return out

    def wanted_from(self, digest: Mapping[str, int], limit: int) -> list[str]:
        """Peer ids whose record in ``digest`` is newer than ours (or unknown to us), at most ``limit``."""
        wanted: list[str] = []
        for peer_id, seq in digest.items():
            if len(wanted) >= limit:
                break
            if peer_id == self.self_id:
                continue
            held = self._members.get(peer_id)
            if held is None or held.seq < seq:
                wanted.append(peer_id)
        return wanted

    # ---- inputs --------------------------------------------------------------------------------------------

    def set_local(self, signed: SignedRecord) -> None:
        if signed.record.peer_id != self.self_id or signed.record.seq <= self.local.record.seq:
            raise ValueError("our own record must keep our peer id and a growing seq")
        self.local = signed

    def apply_record(self, signed: SignedRecord, now: float) -> Outcome:
        """Take a verified record. Raises :class:`StaleRecord` when its seq is not newer than the one held."""
        record = signed.record
        if record.peer_id == self.self_id:
            if record.seq > self.local.record.seq:
                # An older incarnation of us (before a restart, or a clock step back) is still gossiped: outbid it.
                return Outcome(refute=True, outbid=record.seq)
            raise StaleRecord("our own record")
        member = self._members.get(record.peer_id)
        state = MemberState.LEFT if record.status is NodeStatus.LEFT else MemberState.ALIVE
        if member is None:
            tombstone = self._tombstones.get(record.peer_id)
            if tombstone is not None and record.seq <= tombstone[0]:
                raise StaleRecord(f"seq {record.seq} of a forgotten member is not newer than {tombstone[0]}")
            if len(self._members) >= self.config.max_members:
                raise StaleRecord(f"peer table full ({self.config.max_members} members)")
            self._tombstones.pop(record.peer_id, None)
            self._members[record.peer_id] = Member(signed, state, now, now)
            return Outcome(fresh=True, joined=record.peer_id, state=state)
        if record.seq <= member.seq:
            raise StaleRecord(f"seq {record.seq} is not newer than {member.seq}")
        member.signed = signed
        member.refreshed_at = now
        member.notice = None  # a newer record answers any doubt
        return Outcome(fresh=True, state=self._move(member, state, now))

    def apply_notice(self, signed: SignedNotice, now: float) -> Outcome:
        notice = signed.notice
        if notice.target == self.self_id:
            if notice.seq >= self.local.record.seq:
                return Outcome(refute=True, outbid=notice.seq)
            return Outcome()  # about a record we already replaced
        member = self._members.get(notice.target)
        if member is None or notice.issuer == notice.target or notice.seq < member.seq:
            return Outcome()  # unknown target, or already refuted by a newer record
        if notice.kind is NoticeKind.SUSPECT and member.state is MemberState.ALIVE:
            member.notice = signed
            return Outcome(fresh=True, state=self._move(member, MemberState.SUSPECT, now))
        if notice.kind is NoticeKind.DEAD and member.state in (MemberState.ALIVE, MemberState.SUSPECT):
            member.notice = signed
            return Outcome(fresh=True, state=self._move(member, MemberState.OFFLINE, now))
        return Outcome()

    def observe_failure(
        self, peer_id: str, kind: NoticeKind, *, now: float, wall_now: float, identity: Identity
    ) -> SignedNotice | None:
        """We saw ``peer_id`` fail ourselves (lost link: SUSPECT; address refuses: DEAD).

        Returns the signed notice to spread, or ``None`` when it changes nothing we know."""
        member = self._members.get(peer_id)
        if member is None:
            return None
        notice = seal_notice(identity, Notice(self.self_id, kind, peer_id, member.seq, wall_now))
        return notice if self.apply_notice(notice, now).fresh else None

    def tick(self, now: float) -> list[tuple[str, MemberState | None]]:
        """Advance timers. Returns (peer id, new state) for each change; ``None`` means forgotten."""
        changes: list[tuple[str, MemberState | None]] = []
        cfg = self.config
        for member in list(self._members.values()):
            if member.state is MemberState.ALIVE and now - member.refreshed_at >= cfg.stale_after:
                changes.append((member.peer_id, self._move(member, MemberState.SUSPECT, now)))
            elif member.state is MemberState.SUSPECT and now - member.state_since >= cfg.suspicion_timeout:
                changes.append((member.peer_id, self._move(member, MemberState.OFFLINE, now)))
            elif member.state in (MemberState.OFFLINE, MemberState.LEFT) and now - member.state_since >= cfg.forget_after:
                del self._members[member.peer_id]
                until = member.refreshed_at + member.signed.record.lifetime + cfg.record_grace
                if until > now and len(self._tombstones) < cfg.max_members:
                    self._tombstones[member.peer_id] = (member.seq, until)
                changes.append((member.peer_id, None))
        for peer_id, (_, until) in list(self._tombstones.items()):
            if until <= now:
                del self._tombstones[peer_id]
        return changes

    @staticmethod
    def _move(member: Member, state: MemberState, now: float) -> MemberState | None:
        if member.state is state:
            return None
        member.state = state
        member.state_since = now
        return state


def network_stats(local: SignedRecord, members: Iterable[Member]) -> NetworkStats:
    """Totals over every node we know, ourselves and attached servers included; offline nodes count in
    total_nodes only. An attached server is online when its host is and its heartbeats are current."""
    online: list[NodeRecord | AttachedNode] = []
    total = 0
    for record, alive in [(local.record, True), *((m.signed.record, m.state is MemberState.ALIVE) for m in members)]:
        total += 1 + len(record.attached)
        if alive:
            online.append(record)
            online.extend(a for a in record.attached if a.status is not NodeStatus.OFFLINE)
    return NetworkStats(
        total_nodes=total,
        online_nodes=len(online),
        total_gpu_memory=sum(r.gpu_memory for r in online),
        total_cpu_cores=sum(r.cpu_cores for r in online),
        active_tasks=sum(r.active_tasks for r in online),
        total_gpus=sum(r.gpu_count for r in online),
        models=tuple(sorted({model for r in online for model in r.models})),
    )
