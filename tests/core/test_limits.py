"""Token buckets, per-key limiters and stream caps (p2pnode.core.limits), with time advanced by hand."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnode.core.limits import (
    ConcurrencyLimit,
    KeyedLimiter,
    LimiterStatistics,
    TokenBucket,
)

FUZZ = settings(max_examples=150, deadline=None)


def test_a_full_bucket_admits_its_burst_then_says_how_long_to_wait():
    bucket = TokenBucket(rate_per_s=2.0, burst=3)
    assert [bucket.take(10.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(10.0) == pytest.approx(0.5)
    assert bucket.take(10.0) == pytest.approx(0.5), "a refusal consumes nothing"
    assert bucket.take(10.25) == pytest.approx(0.25)
    assert bucket.take(10.5) == 0.0, "retrying after the returned wait is admitted"
    assert bucket.take(10.5) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("idle", "expected_admitted"),
    [(0.0, 0), (0.4, 0), (0.5, 1), (1.0, 2), (1.5, 3), (100.0, 3)],  # refills at 2/s, never past the burst of 3
)
def test_refill_is_rate_times_idle_time_capped_at_burst(idle, expected_admitted):
    bucket = TokenBucket(rate_per_s=2.0, burst=3)
    for _ in range(3):
        bucket.take(0.0)
    admitted = 0
    while bucket.take(idle) == 0.0:
        admitted += 1
    assert admitted == expected_admitted


def test_cost_weighs_a_request_and_a_cost_over_burst_never_passes():
    bucket = TokenBucket(rate_per_s=10.0, burst=100)
    assert bucket.take(0.0, cost=60) == 0.0
    assert bucket.take(0.0, cost=60) == pytest.approx(2.0)
    assert bucket.take(0.0, cost=101) == math.inf
    with pytest.raises(ValueError, match="cost"):
        bucket.take(0.0, cost=-1)


def test_a_clock_stepping_back_refills_nothing():
    bucket = TokenBucket(rate_per_s=1.0, burst=1)
    assert bucket.take(100.0) == 0.0
    assert bucket.take(50.0) == pytest.approx(1.0)
    assert bucket.take(100.5) == pytest.approx(0.5)


@pytest.mark.parametrize("rate", [0, 0.0, None])
def test_rate_zero_or_none_is_unlimited(rate):
    bucket = TokenBucket(rate, burst=0)
    assert all(bucket.take(0.0, cost=1e9) == 0.0 for _ in range(1000))
    limiter = KeyedLimiter(rate, burst=0, max_keys=1)
    assert all(limiter.take(f"peer-{i}", 0.0) == 0.0 for i in range(1000))
    assert len(limiter) == 0, "an unlimited limiter holds no state"


@pytest.mark.parametrize(("rate", "burst", "max_keys"), [(-1, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_nonsense_settings_are_refused(rate, burst, max_keys):
    with pytest.raises(ValueError):
        KeyedLimiter(rate, burst, max_keys)


def test_keys_have_separate_buckets():
    limiter = KeyedLimiter(rate_per_s=1.0, burst=2, max_keys=10)
    assert [limiter.take("ann", 0.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    assert limiter.take("bob", 0.0) == 0.0
    assert limiter.statistics() == LimiterStatistics(keys=2, admitted=3, refused=1, refused_new_keys=0, evicted=0)


def test_at_the_cap_a_new_key_replaces_the_least_recently_used_bucket_once_it_has_refilled():
    limiter = KeyedLimiter(rate_per_s=1.0, burst=2, max_keys=2)
    limiter.take("ann", 0.0)
    limiter.take("bob", 0.5)
    limiter.take("ann", 0.6)  # ann is now the most recently used, bob the least
    # bob spent 1 of 2 tokens at 0.5: full again at 1.5. Until then a third key must wait.
    assert limiter.take("eve", 1.0) == pytest.approx(0.5)
    assert limiter.statistics().refused_new_keys == 1
    assert limiter.take("eve", 1.5) == 0.0
    assert len(limiter) == 2 and limiter.statistics().evicted == 1
    # bob's bucket is gone; ann's (with its debt) is kept.
    assert limiter.take("ann", 1.5) == 0.0
    assert limiter.take("ann", 1.5) == pytest.approx(0.5)


def test_a_flood_of_new_keys_keeps_memory_bounded_and_a_known_key_keeps_its_service():
    limiter = KeyedLimiter(rate_per_s=1.0, burst=5, max_keys=100)
    admitted = ann_refused = 0
    for i in range(100_000):  # 100 s of fresh ids, one per millisecond
        now = i / 1000
        admitted += limiter.take(f"peer-{i}", now) == 0.0
        if i % 1000 == 0:
            ann_refused += limiter.take("ann", now) != 0.0
    assert len(limiter) == 100
    # A slot frees up only once its bucket has refilled (1 s after one take): at most 100 slots x 101 s.
    assert admitted <= 100 * 101
    assert limiter.statistics().refused_new_keys == 100_000 - admitted
    assert ann_refused == 0, "ann spends steadily, so her bucket is never the idle one evicted"


def test_forget_idle_drops_refilled_buckets_only():
    limiter = KeyedLimiter(rate_per_s=1.0, burst=1, max_keys=10)
    limiter.take("old", 0.0)
    limiter.take("new", 5.0)
    assert limiter.forget_idle(5.5) == 1
    assert len(limiter) == 1
    assert limiter.take("new", 5.5) == pytest.approx(0.5), "the busy bucket kept its state"


def test_concurrency_limit_per_key_and_total():
    limit = ConcurrencyLimit(per_key=2, total=3)
    assert [limit.try_acquire("ann") for _ in range(3)] == [True, True, False]
    assert limit.try_acquire("bob") is True
    assert limit.try_acquire("eve") is False, "the total cap is reached"
    limit.release("ann")
    assert limit.try_acquire("eve") is True
    assert limit.active("ann") == 1
    stats = limit.statistics()
    assert (stats.active, stats.keys, stats.refused) == (3, 3, 2)


def test_concurrency_limit_forgets_keys_with_no_streams_and_refuses_extra_releases():
    limit = ConcurrencyLimit(per_key=None)
    for i in range(1000):
        assert limit.try_acquire(f"peer-{i}")
        limit.release(f"peer-{i}")
    assert limit.statistics().keys == 0
    with pytest.raises(ValueError, match="without a matching try_acquire"):
        limit.release("peer-1")


@pytest.mark.parametrize("cap", [0, None])
def test_concurrency_cap_zero_or_none_is_unlimited(cap):
    limit = ConcurrencyLimit(per_key=cap, total=cap)
    assert all(limit.try_acquire("ann") for _ in range(1000))


@FUZZ
@given(
    rate=st.floats(0.01, 1000),
    burst=st.floats(1, 1000),
    steps=st.lists(st.tuples(st.floats(0, 10), st.floats(0, 50)), max_size=200),
)
def test_a_bucket_never_admits_more_than_burst_plus_rate_times_elapsed(rate, burst, steps):
    bucket = TokenBucket(rate, burst)
    now = start = 1000.0
    admitted = 0.0
    for dt, cost in steps:
        now += dt
        wait = bucket.take(now, cost)
        assert wait >= 0.0
        if wait == 0.0:
            admitted += cost
        elif math.isfinite(wait):
            assert bucket.take(now + wait, cost) == 0.0, "the returned wait is enough"
            now += wait
            admitted += cost
        assert admitted <= burst + rate * (now - start) + 1e-6 * (1 + admitted)


@FUZZ
@given(
    max_keys=st.integers(1, 20),
    steps=st.lists(st.tuples(st.integers(0, 50), st.floats(0, 2)), max_size=300),
)
def test_a_keyed_limiter_never_holds_more_than_max_keys(max_keys, steps):
    limiter = KeyedLimiter(rate_per_s=1.0, burst=3, max_keys=max_keys)
    now = 0.0
    for key, dt in steps:
        now += dt
        limiter.take(key, now)
        assert len(limiter) <= max_keys
