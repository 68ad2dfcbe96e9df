from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnode.core.scheduler import NodeView, Scheduler, SchedulerConfig, SchedulerStatistics
from p2pnode.errors import ConfigError

MODEL = "llama3.2:3b"


def view(peer_id: str, **overrides) -> NodeView:
    values = dict(peer_id=peer_id, models=(MODEL,), current_load=0.0, active_tasks=0, response_time=0.0)
    values.update(overrides)
    return NodeView(**values)


def ids(nodes) -> list[str]:
    return [n.peer_id for n in nodes]


# ---- matching and ranking ----------------------------------------------------------------------------------


def test_only_exact_model_tags_match():
    nodes = [
        view("a", models=("llama3.2",)),
        view("b", models=("llama3.2:3b",)),
        view("c", models=("llama3.2:3b-instruct", "LLAMA3.2:3B")),
        view("d", models=("mistral", "llama3.2:3b")),
    ]
    sched = Scheduler()
    assert ids(sched.candidates(nodes, "llama3.2:3b")) == ["b", "d"]
    assert ids(sched.candidates(nodes, "llama3.2")) == ["a"]
    assert sched.candidates(nodes, "llama3") == []


@pytest.mark.parametrize(
    ("better", "worse", "why"),
    [
        (dict(current_load=0.1), dict(current_load=0.9), "lower load"),
        (dict(active_tasks=0), dict(active_tasks=2), "fewer active tasks"),
        (dict(response_time=200.0), dict(response_time=5000.0), "faster"),
        (dict(response_time=200.0), dict(response_time=0.0), "fast beats unknown"),
        (dict(response_time=0.0), dict(response_time=5000.0), "unknown beats slow"),
        (dict(loaded_models=(MODEL,)), dict(), "model loaded"),
        (dict(loaded_models=(MODEL,)), dict(loaded_models=("mistral",)), "another model loaded does not count"),
        (dict(is_local=True), dict(), "local, no network hop"),
        (dict(weight=2.0), dict(weight=1.0), "tie: higher weight"),
        (dict(active_tasks=0), dict(active_tasks=1, is_local=True), "a queued task outweighs the local hop"),
        (
            dict(active_tasks=1, loaded_models=(MODEL,)),
            dict(active_tasks=0, current_load=0.5),
            "loaded with one task beats cold at half load",
        ),
    ],
)
def test_ranking(better, worse, why):
    # "a-worse" wins the peer-id tie-break, so only the named difference can put "b-better" first.
    nodes = [view("a-worse", **worse), view("b-better", **better)]
    for order in (nodes, nodes[::-1]):
        assert ids(Scheduler().candidates(order, MODEL)) == ["b-better", "a-worse"], why


def test_equal_nodes_tie_break_by_weight_then_peer_id():
    nodes = [view("b"), view("c", weight=3.0), view("a")]
    assert ids(Scheduler().candidates(nodes, MODEL)) == ["c", "a", "b"]


def test_score_matches_the_documented_formula():
    cfg = SchedulerConfig(
        active_weight=1.0, load_weight=2.0, response_weight=1.0, response_scale_ms=1000.0,
        loaded_bonus=1.0, local_bonus=0.25,
    )
    sched = Scheduler(cfg)
    node = view("a", active_tasks=2, current_load=0.5, response_time=1000.0, loaded_models=(MODEL,), is_local=True)
    sched.started("a")
    assert sched.score(node, model=MODEL) == pytest.approx(3 * 1.0 + 0.5 * 2.0 + 0.5 - 1.0 - 0.25)
    assert sched.score(node) == pytest.approx(3 * 1.0 + 0.5 * 2.0 + 0.5 - 0.25)  # no model: no loaded bonus
    unknown = view("b", response_time=0.0)
    assert sched.score(unknown) == sched.score(view("c", response_time=1000.0)) == pytest.approx(0.5)


def test_out_of_range_inputs_are_clamped_not_trusted():
    sched = Scheduler()
    assert sched.score(view("a", current_load=7.0)) == sched.score(view("b", current_load=1.0))
    assert sched.score(view("a", current_load=float("nan"))) == sched.score(view("b", current_load=1.0))
    assert sched.score(view("a", response_time=-5.0)) == sched.score(view("b", response_time=0.0))
    assert sched.score(view("a", active_tasks=-3)) == sched.score(view("b"))
    assert ids(sched.candidates([view("a", weight=float("nan")), view("b")], MODEL)) == ["b", "a"]


def test_duplicate_views_of_one_peer_yield_one_candidate():
    nodes = [view("a", active_tasks=3), view("b", active_tasks=1), view("a", active_tasks=0)]
    ranked = Scheduler().candidates(nodes, MODEL)
    assert [(n.peer_id, n.active_tasks) for n in ranked] == [("a", 0), ("b", 1)]


# ---- in-flight spreading -----------------------------------------------------------------------------------


def test_a_burst_spreads_over_equal_nodes_at_once():
    sched = Scheduler()
    nodes = [view(p) for p in ("d", "b", "a", "c")]
    picks = []
    for _ in range(8):
        (node,) = sched.plan(nodes, MODEL, fanout=1)
        sched.started(node.peer_id)
        picks.append(node.peer_id)
    assert picks == ["a", "b", "c", "d", "a", "b", "c", "d"]
    assert Counter(picks) == {"a": 2, "b": 2, "c": 2, "d": 2}
    assert sched.statistics().in_flight == 8


def test_finishing_frees_the_node_again():
    sched = Scheduler()
    nodes = [view("a"), view("b")]
    sched.started("a")
    assert ids(sched.plan(nodes, MODEL, fanout=1)) == ["b"]
    sched.finished("a", ttft_ms=None, ok=True)
    assert ids(sched.plan(nodes, MODEL, fanout=1)) == ["a"]


def test_finished_never_goes_below_zero():
    sched = Scheduler()
    sched.finished("a", ttft_ms=None, ok=False)
    assert sched.in_flight("a") == 0
    sched.started("a")
    sched.finished("a", ttft_ms=None, ok=True)
    sched.finished("a", ttft_ms=None, ok=True)
    assert sched.in_flight("a") == 0
    sched.started("a")
    assert sched.in_flight("a") == 1
    assert sched.statistics() == SchedulerStatistics(in_flight=1, samples=0, p95=None, finished_ok=2, finished_failed=1)


# ---- plan --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fanout", "expected"),
    [
        (None, ["a", "b", "c"]),
        (0, ["a", "b", "c"]),
        (1, ["a"]),
        (2, ["a", "b"]),
        (3, ["a", "b", "c"]),
        (9, ["a", "b", "c"]),
    ],
)
def test_plan_fanout(fanout, expected):
    nodes = [view("c", active_tasks=2), view("a"), view("b", active_tasks=1), view("x", models=("other",))]
    assert ids(Scheduler().plan(nodes, MODEL, fanout=fanout)) == expected


def test_plan_without_candidates_is_empty():
    sched = Scheduler()
    assert sched.plan([], MODEL, fanout=None) == []
    assert sched.plan([view("a", models=("mistral",))], MODEL, fanout=3) == []


def test_negative_fanout_is_a_caller_error():
    with pytest.raises(ValueError):
        Scheduler().plan([view("a")], MODEL, fanout=-1)


# ---- ensemble ----------------------------------------------------------------------------------------------


def test_ensemble_prefers_distinct_nodes_over_better_scores():
    nodes = [
        view("fast", models=("m1", "m2", "m3")),
        view("slow", models=("m1", "m2"), active_tasks=3),
        view("slower", models=("m3",), active_tasks=5),
    ]
    plan = Scheduler().plan_ensemble(nodes, ["m1", "m2", "m3"])
    assert [(m, n.peer_id) for m, n in plan] == [("m1", "fast"), ("m2", "slow"), ("m3", "slower")]


def test_ensemble_lets_the_most_constrained_model_choose_first():
    # In list order, m1 would take "only" (the best node) and leave m2 nobody but a shared node.
    nodes = [view("only", models=("m1", "m2")), view("other", models=("m1",), active_tasks=1)]
    plan = Scheduler().plan_ensemble(nodes, ["m1", "m2"])
    assert [(m, n.peer_id) for m, n in plan] == [("m1", "other"), ("m2", "only")]


def test_ensemble_falls_back_to_shared_nodes_and_skips_unserved_models():
    nodes = [view("a", models=("m1", "m2", "m3")), view("b", models=("m1", "m2"), active_tasks=1)]
    plan = Scheduler().plan_ensemble(nodes, ["m1", "nobody", "m2", "m3", "m1"])
    assert [(m, n.peer_id) for m, n in plan] == [("m1", "b"), ("m2", "a"), ("m3", "a"), ("m1", "b")]
    assert Scheduler().plan_ensemble(nodes, []) == []
    assert Scheduler().plan_ensemble(nodes, ["nobody"]) == []


def test_ensemble_accepts_a_one_shot_iterator():
    nodes = iter([view("a", models=("m1",)), view("b", models=("m2",))])
    assert [(m, n.peer_id) for m, n in Scheduler().plan_ensemble(nodes, ["m1", "m2"])] == [("m1", "a"), ("m2", "b")]


# ---- hedging -----------------------------------------------------------------------------------------------


def feed(sched: Scheduler, samples) -> None:
    for ms in samples:
        sched.started("a")
        sched.finished("a", ttft_ms=ms, ok=True)


@pytest.mark.parametrize(
    ("samples", "p95"),
    [
        ([42.0], 42.0),  # n=1: rank 1
        (range(1, 11), 10.0),  # n=10: ceil(9.5) = 10
        (range(1, 21), 19.0),  # n=20: exactly 19, no float rounding up to 20
        (range(20, 0, -1), 19.0),  # arrival order does not matter
        (range(1, 101), 95.0),
        (range(1, 201), 190.0),
        ([5.0] * 19 + [10_000.0], 5.0),  # one outlier in 20 stays out of the p95
        ([5.0] * 18 + [10_000.0] * 2, 10_000.0),  # two are 10%: they set it
    ],
)
def test_hedge_delay_is_the_nearest_rank_p95(samples, p95):
    sched = Scheduler(SchedulerConfig(min_samples=1))
    feed(sched, samples)
    assert sched.hedge_delay_ms() == p95


def test_hedge_delay_needs_min_samples_and_falls_back_to_the_default():
    sched = Scheduler(SchedulerConfig(min_samples=3, default_hedge_ms=500.0))
    feed(sched, [10.0, 20.0])
    assert sched.hedge_delay_ms() is None
    assert sched.statistics().p95 is None
    assert not sched.should_hedge(499.0)
    assert sched.should_hedge(500.0)
    feed(sched, [30.0])
    assert sched.hedge_delay_ms() == 30.0
    assert (sched.should_hedge(29.9), sched.should_hedge(30.0)) == (False, True)


def test_hedge_window_evicts_the_oldest_samples():
    sched = Scheduler(SchedulerConfig(ttft_window=20, min_samples=5))
    feed(sched, [10_000.0] * 20)
    assert sched.hedge_delay_ms() == 10_000.0
    feed(sched, range(1, 20))  # 19 new samples: one old one is left
    assert sched.hedge_delay_ms() == 19.0  # rank 19 of [1..19, 10000]
    feed(sched, [20.0])
    assert sched.hedge_delay_ms() == 19.0  # rank 19 of [1..20]
    assert sched.statistics().samples == 20


def test_ttft_counts_for_failed_requests_and_bad_values_are_dropped():
    sched = Scheduler(SchedulerConfig(min_samples=1))
    sched.finished("a", ttft_ms=float("nan"), ok=True)
    sched.finished("a", ttft_ms=float("inf"), ok=True)
    sched.finished("a", ttft_ms=None, ok=True)
    assert sched.statistics().samples == 0
    sched.finished("a", ttft_ms=-3.0, ok=False)
    sched.finished("a", ttft_ms=80.0, ok=False)
    assert sched.statistics().samples == 2
    assert sched.hedge_delay_ms() == 80.0


@pytest.mark.parametrize(
    "overrides",
    [
        dict(ttft_window=0),
        dict(min_samples=0),
        dict(ttft_window=5, min_samples=6),
        dict(active_weight=-1.0),
        dict(local_bonus=float("nan")),
        dict(response_scale_ms=0.0),
        dict(default_hedge_ms=float("inf")),
    ],
)
def test_bad_config_is_refused(overrides):
    with pytest.raises(ConfigError):
        SchedulerConfig(**overrides)


# ---- determinism -------------------------------------------------------------------------------------------

_models = st.sampled_from(["m1", "m2", "m3"])
_nodes = st.lists(
    st.builds(
        NodeView,
        peer_id=st.sampled_from("abcdefgh"),
        models=st.lists(_models, max_size=3).map(tuple),
        current_load=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
        active_tasks=st.integers(0, 3),
        response_time=st.sampled_from([0.0, 100.0, 1000.0]),
        loaded_models=st.lists(_models, max_size=2).map(tuple),
        is_local=st.booleans(),
        weight=st.sampled_from([1.0, 2.0]),
    ),
    max_size=8,
    unique_by=lambda n: n.peer_id,
)


@settings(max_examples=50, deadline=None)
@given(nodes=_nodes, in_flight=st.lists(st.sampled_from("abcdefgh"), max_size=6), seed=st.integers(0, 2**32))
def test_plans_do_not_depend_on_input_order(nodes, in_flight, seed):
    sched = Scheduler()
    for peer_id in in_flight:
        sched.started(peer_id)
    shuffled = list(nodes)
    random.Random(seed).shuffle(shuffled)
    for model in ("m1", "m2", "m3"):
        assert sched.candidates(shuffled, model) == sched.candidates(nodes, model)
        assert sched.plan(shuffled, model, fanout=2) == sched.plan(nodes, model, fanout=2)
    ensemble = ["m1", "m2", "m3", "m1"]
    assert sched.plan_ensemble(shuffled, ensemble) == sched.plan_ensemble(nodes, ensemble)
    served = {m for n in nodes for m in n.models}
    assert [m for m, _ in sched.plan_ensemble(nodes, ensemble)] == [m for m in ensemble if m in served]
