"""The rumor queue: statements waiting to be piggybacked on gossip messages (memberlist's TransmitLimitedQueue).

Each rumor is sent at most ``multiplier * ceil(log10(n + 1))`` times by this node; rumors sent fewest times go
first; a newer rumor about the same subject replaces an older one still waiting, so a node that re-issued its
record twice spreads only the latest.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

__all__ = ["BroadcastQueue", "retransmit_limit"]


def retransmit_limit(multiplier: int, members: int) -> int:
    """How many times each node sends one rumor: ``multiplier * ceil(log10(n + 1))``, as memberlist does."""
    return multiplier * max(1, math.ceil(math.log10(members + 1)))


@dataclass
class _Rumor:
    payload: bytes
    transmits: int
    order: int  # insertion order, newest first among equals


@dataclass
class BroadcastQueue:
    multiplier: int = 3
    max_rumors: int = 4096  # oldest, most-sent rumors are dropped beyond this
    _rumors: dict[tuple[str, str], _Rumor] = field(default_factory=dict)
    _counter: itertools.count = field(default_factory=itertools.count)

    def push(self, subject: tuple[str, str], payload: bytes, *, supersedes: tuple[tuple[str, str], ...] = ()) -> None:
        """Queue ``payload`` about ``subject`` (e.g. ``("record", peer_id)``), dropping any waiting rumor about
        ``subject`` or about the ``supersedes`` subjects."""
        for old in (subject, *supersedes):
            self._rumors.pop(old, None)
        self._rumors[subject] = _Rumor(payload, 0, next(self._counter))
        if len(self._rumors) > self.max_rumors:
            worst = max(self._rumors, key=lambda k: (self._rumors[k].transmits, -self._rumors[k].order))
            del self._rumors[worst]

    def take(self, *, members: int, max_bytes: int) -> list[bytes]:
        """Rumors for one gossip message, at most ``max_bytes`` in all; each counts as sent once."""
        limit = retransmit_limit(self.multiplier, members)
        picked: list[bytes] = []
        size = 0
        for subject, rumor in sorted(self._rumors.items(), key=lambda kv: (kv[1].transmits, -kv[1].order)):
            if size + len(rumor.payload) > max_bytes:
                continue
            picked.append(rumor.payload)
            size += len(rumor.payload)
            rumor.transmits += 1
            if rumor.transmits >= limit:
                del self._rumors[subject]
        return picked

    def __len__(self) -> int:
        return len(self._rumors)
