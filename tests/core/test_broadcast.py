"""The rumor queue (p2pnode.core.broadcast), after memberlist's TransmitLimitedQueue."""

from __future__ import annotations

import pytest

from p2pnode.core.broadcast import BroadcastQueue, retransmit_limit

UNLIMITED = 1 << 30


def make_queue(*subjects: str, multiplier: int = 100, max_rumors: int = 4096) -> BroadcastQueue:
    """A queue holding one rumor per subject, pushed in order; the payload is the subject's name."""
    queue = BroadcastQueue(multiplier=multiplier, max_rumors=max_rumors)
    for name in subjects:
        queue.push(("record", name), name.encode())
    return queue


def take_all(queue: BroadcastQueue, members: int = 1) -> list[bytes]:
    return queue.take(members=members, max_bytes=UNLIMITED)


# ---- retransmit limit -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("multiplier", "members", "expected"),
    [
        (3, 0, 3),  # memberlist gives 0 here; dcn keeps at least one round so a lone node still sends
        (3, 1, 3),
        (3, 8, 3),
        (3, 9, 3),  # log10(10) = 1
        (3, 10, 6),
        (3, 99, 6),  # log10(100) = 2
        (3, 100, 9),
        (3, 999, 9),  # log10(1000) = 3 exactly
        (3, 1000, 12),
        (4, 1, 4),
        (4, 20, 8),
        (1, 999_999, 6),
        (1, 1_000_000, 7),
        (0, 100, 0),
    ],
)
def test_retransmit_limit_table(multiplier, members, expected):
    assert retransmit_limit(multiplier, members) == expected


# ---- ordering ---------------------------------------------------------------------------------------------


def test_newest_first_among_equally_sent_rumors():
    queue = make_queue("a", "b", "c")
    assert take_all(queue) == [b"c", b"b", b"a"]


def test_fewest_transmits_first():
    queue = make_queue("a", "b")
    take_all(queue)  # a and b sent once
    queue.push(("record", "c"), b"c")
    assert take_all(queue) == [b"c", b"b", b"a"]
    queue.push(("record", "d"), b"d")
    queue.push(("record", "e"), b"e")
    assert take_all(queue) == [b"e", b"d", b"c", b"b", b"a"]


def test_take_on_an_empty_queue():
    assert take_all(BroadcastQueue()) == []


# ---- retransmit limit in use ------------------------------------------------------------------------------


def test_rumor_is_dropped_after_its_limit():
    queue = make_queue("a", multiplier=2)
    assert [take_all(queue, members=1) for _ in range(3)] == [[b"a"], [b"a"], []]
    assert len(queue) == 0


@pytest.mark.parametrize(("members", "sends"), [(0, 3), (9, 3), (10, 6), (100, 9)])
def test_rumor_is_sent_exactly_retransmit_limit_times(members, sends):
    queue = make_queue("a", multiplier=3)
    sent = 0
    while take_all(queue, members=members):
        sent += 1
    assert sent == sends == retransmit_limit(3, members)


def test_limit_follows_the_member_count_at_each_take():
    queue = make_queue("a", multiplier=3)
    assert take_all(queue, members=1) == [b"a"]
    assert take_all(queue, members=1) == [b"a"]
    # the network grew: the limit is now 6, so the rumor keeps going
    assert [take_all(queue, members=10) for _ in range(5)] == [[b"a"]] * 4 + [[]]


def test_pushing_again_restarts_the_count():
    queue = make_queue("a", multiplier=1)  # limit 1 with one member
    take_all(queue)
    assert len(queue) == 0
    queue.push(("record", "a"), b"a2")
    assert take_all(queue) == [b"a2"]


# ---- supersedes -------------------------------------------------------------------------------------------


def test_newer_rumor_about_the_same_subject_replaces_the_waiting_one():
    queue = BroadcastQueue()
    queue.push(("record", "x"), b"x-seq1")
    queue.push(("record", "x"), b"x-seq2")
    assert len(queue) == 1
    assert take_all(queue) == [b"x-seq2"]


def test_supersedes_drops_the_named_subjects():
    queue = BroadcastQueue()
    queue.push(("notice", "x"), b"suspect-x")
    queue.push(("record", "y"), b"record-y")
    queue.push(("record", "x"), b"record-x", supersedes=(("notice", "x"), ("notice", "absent")))
    assert len(queue) == 2
    assert take_all(queue) == [b"record-x", b"record-y"]


def test_same_peer_different_kinds_are_different_subjects():
    queue = BroadcastQueue()
    queue.push(("record", "x"), b"record-x")
    queue.push(("notice", "x"), b"notice-x")
    assert take_all(queue) == [b"notice-x", b"record-x"]


# ---- budget -----------------------------------------------------------------------------------------------


def test_max_bytes_budget_skips_what_does_not_fit_and_keeps_it():
    queue = BroadcastQueue(multiplier=100)
    queue.push(("record", "a"), b"A" * 5)
    queue.push(("record", "b"), b"B" * 3)
    queue.push(("record", "c"), b"C" * 4)
    # newest first: c (4) fits, b (3) fits (7), a (5) would make 12 > 8: skipped, not counted
    assert queue.take(members=1, max_bytes=8) == [b"C" * 4, b"B" * 3]
    # a is now the least sent: a (5), then c (4) would make 9 > 8 and is skipped, then b (3) makes 8
    assert queue.take(members=1, max_bytes=8) == [b"A" * 5, b"B" * 3]
    assert len(queue) == 3


def test_budget_is_inclusive():
    queue = make_queue("aaaa", "bbbb")
    assert queue.take(members=1, max_bytes=8) == [b"bbbb", b"aaaa"]


def test_zero_budget_sends_nothing_and_counts_nothing():
    queue = make_queue("a", multiplier=1)
    assert queue.take(members=1, max_bytes=0) == []
    assert len(queue) == 1
    assert take_all(queue) == [b"a"]


def test_rumor_larger_than_the_budget_waits():
    queue = BroadcastQueue(multiplier=1)
    queue.push(("record", "big"), b"x" * 100)
    assert queue.take(members=1, max_bytes=99) == []
    assert len(queue) == 1


# ---- max_rumors -------------------------------------------------------------------------------------------


def test_max_rumors_drops_the_oldest_among_equally_sent():
    queue = make_queue("a", "b", "c", "d", max_rumors=3)
    assert len(queue) == 3
    assert take_all(queue) == [b"d", b"c", b"b"]


def test_max_rumors_drops_the_most_sent_before_the_oldest():
    queue = make_queue("a", "b", max_rumors=3)
    assert queue.take(members=1, max_bytes=1) == [b"b"]  # only b sent: b has 1 transmit, a has 0
    queue.push(("record", "c"), b"c")
    queue.push(("record", "d"), b"d")  # 4 > 3: b, the most sent, goes, though a is older
    assert len(queue) == 3
    assert take_all(queue) == [b"d", b"c", b"a"]


def test_max_rumors_never_drops_the_rumor_just_pushed():
    queue = make_queue("a", "b", max_rumors=2)
    take_all(queue)
    take_all(queue)
    queue.push(("record", "c"), b"c")
    assert take_all(queue) == [b"c", b"b"]


def test_queue_stays_bounded():
    queue = make_queue(*(f"p{i}" for i in range(1000)), max_rumors=10)
    assert len(queue) == 10
    assert take_all(queue) == [f"p{i}".encode() for i in range(999, 989, -1)]
