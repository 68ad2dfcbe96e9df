from __future__ import annotations

import pytest

from p2pnode.core.load import LoadTracker


def test_load_is_the_share_of_capacity_in_use_capped_at_one():
    tracker = LoadTracker(capacity=4)
    assert tracker.load == 0.0
    for expected in (0.25, 0.5, 0.75, 1.0, 1.0):
        tracker.start()
        assert tracker.load == expected
    assert tracker.active == 5


def test_response_time_is_a_moving_average_of_successes_only():
    tracker = LoadTracker(capacity=1, alpha=0.5)
    tracker.start()
    tracker.finish(100.0, ok=True)
    assert tracker.response_ms == 100.0
    tracker.start()
    tracker.finish(200.0, ok=True)
    assert tracker.response_ms == pytest.approx(150.0)
    tracker.start()
    tracker.finish(10_000.0, ok=False)
    assert tracker.response_ms == pytest.approx(150.0)
    assert (tracker.completed, tracker.failed, tracker.active) == (2, 1, 0)


def test_finishing_more_than_started_never_goes_negative():
    tracker = LoadTracker()
    tracker.finish(5.0, ok=False)
    assert tracker.active == 0 and tracker.load == 0.0
