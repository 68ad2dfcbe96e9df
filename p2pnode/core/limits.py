"""Rate and concurrency limits: token buckets, one per key (a user id, a peer id), and counts of active streams.

Pure: the caller passes ``now`` (``trio.current_time()`` in the shells) and nothing here reads a clock. A rate of
0 or ``None`` means unlimited. Memory stays bounded under a flood of new keys: :class:`KeyedLimiter` holds at most
``max_keys`` buckets and :class:`ConcurrencyLimit` forgets a key as soon as its last stream ends.

``take`` returns 0.0 when a request is admitted, else the seconds until it would be admitted (without consuming
anything), which is what an HTTP 429 puts in ``Retry-After`` (rounded up to whole seconds).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

__all__ = ["ConcurrencyLimit", "ConcurrencyStatistics", "KeyedLimiter", "LimiterStatistics", "TokenBucket"]

# Slack for float rounding: a request retried exactly after the returned wait is admitted.
_EPSILON = 1e-9


class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate_per_s``; a request costs ``cost`` tokens. Starts full.

    Over any window from the first call to ``now`` it admits at most ``burst + rate_per_s * elapsed`` in cost.
    """

    __slots__ = ("burst", "rate_per_s", "tokens", "updated")

    def __init__(self, rate_per_s: float | None, burst: float) -> None:
        if rate_per_s is not None and rate_per_s < 0:
            raise ValueError(f"rate_per_s must be >= 0 or None, got {rate_per_s}")
        if rate_per_s and not burst > 0:
            raise ValueError(f"burst must be > 0 when a rate is set, got {burst}")
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.tokens = float(burst)
        self.updated: float | None = None  # time of the last refill; None until the first call

    def _refill(self, now: float, rate: float) -> None:
        if self.updated is None:
            self.updated = now
        elif now > self.updated:  # a clock that stands still or steps back refills nothing
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * rate)
            self.updated = now

    def take(self, now: float, cost: float = 1.0) -> float:
        """0.0 and ``cost`` tokens spent if there are enough; else the wait in seconds (``inf`` if ``cost > burst``)."""
        if cost < 0:
            raise ValueError(f"cost must be >= 0, got {cost}")
        rate = self.rate_per_s
        if not rate:
            return 0.0
        self._refill(now, rate)
        if self.tokens + _EPSILON >= cost:
            self.tokens = max(0.0, self.tokens - cost)
            return 0.0
        if cost > self.burst:
            return math.inf
        return (cost - self.tokens) / rate

    def is_full(self, now: float) -> bool:
        """True when the bucket holds ``burst`` tokens again: forgetting it now changes nothing."""
        return self.seconds_until_full(now) == 0.0

    def seconds_until_full(self, now: float) -> float:
        rate = self.rate_per_s
        if not rate or self.updated is None:
            return 0.0
        missing = self.burst - self.tokens - max(0.0, now - self.updated) * rate
        return missing / rate if missing > _EPSILON else 0.0


@dataclass(frozen=True)
class LimiterStatistics:
    keys: int  # buckets held now
    admitted: int
    refused: int  # over the key's rate
    refused_new_keys: int  # new keys turned away at the cap: the least recently used bucket had not refilled
    evicted: int  # full buckets forgotten to make room


class KeyedLimiter:
    """One :class:`TokenBucket` per key, at most ``max_keys`` of them.

    A new key at the cap takes the place of the least recently used bucket if that one has refilled (it is idle:
    forgetting it loses nothing). Otherwise the new key is refused with the wait until that bucket is full, so a
    flood of fresh keys (new peer ids are cheap) can neither grow memory nor reset anybody's bucket: together the
    new keys get roughly ``max_keys * burst`` per ``burst / rate`` seconds. Only that one bucket is checked (O(1)).
    """

    def __init__(self, rate_per_s: float | None, burst: float, max_keys: int = 10_000) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        TokenBucket(rate_per_s, burst)  # validates the pair
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()  # least recently used first
        self._admitted = self._refused = self._refused_new = self._evicted = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable, now: float, cost: float = 1.0) -> float:
        """Like :meth:`TokenBucket.take` on ``key``'s bucket: 0.0 when admitted, else the seconds to wait."""
        if not self.rate_per_s:
            self._admitted += 1
            return 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                oldest_key, oldest = next(iter(self._buckets.items()))
                wait = oldest.seconds_until_full(now)
                if wait > 0.0:
                    self._refused_new += 1
                    return wait
                del self._buckets[oldest_key]
                self._evicted += 1
            bucket = self._buckets[key] = TokenBucket(self.rate_per_s, self.burst)
        else:
            self._buckets.move_to_end(key)
        wait = bucket.take(now, cost)
        if wait:
            self._refused += 1
        else:
            self._admitted += 1
        return wait

    def forget_idle(self, now: float) -> int:
        """Drop every bucket that has refilled (a periodic sweep keeps memory at the active keys); returns how many."""
        idle = [key for key, bucket in self._buckets.items() if bucket.is_full(now)]
        for key in idle:
            del self._buckets[key]
        self._evicted += len(idle)
        return len(idle)

    def statistics(self) -> LimiterStatistics:
        return LimiterStatistics(len(self._buckets), self._admitted, self._refused, self._refused_new, self._evicted)


@dataclass(frozen=True)
class ConcurrencyStatistics:
    active: int  # streams held now, all keys together
    keys: int  # keys with at least one stream
    refused: int


class ConcurrencyLimit:
    """Active streams per key, at most ``per_key`` each and ``total`` together (0 or ``None``: no cap).

    Use as ``if not limit.try_acquire(key): refuse`` then ``try: ... finally: limit.release(key)``. A key is
    forgotten when its count drops to zero, so memory follows the streams actually open.
    """

    def __init__(self, per_key: int | None, total: int | None = None) -> None:
        for name, value in (("per_key", per_key), ("total", total)):
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 or None, got {value}")
        self.per_key = per_key
        self.total = total
        self._active: dict[Hashable, int] = {}
        self._sum = 0
        self._refused = 0

    def active(self, key: Hashable) -> int:
        return self._active.get(key, 0)

    def try_acquire(self, key: Hashable) -> bool:
        """Count one more stream for ``key`` and return True, or return False (nothing counted) at a cap."""
        held = self._active.get(key, 0)
        if (self.per_key and held >= self.per_key) or (self.total and self._sum >= self.total):
            self._refused += 1
            return False
        self._active[key] = held + 1
        self._sum += 1
        return True

    def release(self, key: Hashable) -> None:
        """End one stream of ``key``; releasing more than was acquired is a bug and raises ``ValueError``."""
        held = self._active.get(key, 0)
        if held <= 0:
            raise ValueError(f"release of {key!r} without a matching try_acquire")
        if held == 1:
            del self._active[key]
        else:
            self._active[key] = held - 1
        self._sum -= 1

    def statistics(self) -> ConcurrencyStatistics:
        return ConcurrencyStatistics(self._sum, len(self._active), self._refused)
