"""Which nodes serve a request: scoring, fan-out width, and when to hedge.

A node's gossiped record says how busy it was when it last spoke, which may be a second or more ago; a burst of
requests planned on that picture alone would all go to the same "least loaded" node. So the scheduler also counts
the requests *it* has sent to each node and not yet seen finish (``in_flight``), and adds them to the node's own
count: the next request in a burst already sees the previous one, and a burst spreads out at once.

Score (lower is better), each weight named in :class:`SchedulerConfig`::

    score = active_weight   * (active_tasks + in_flight)           queued work: the dominant term
          + load_weight     * clamp(current_load, 0, 1)              share of the node's slots in use
          + response_weight * rt / (rt + response_scale_ms)         0..1; unknown (rt == 0) counts as 0.5
          - loaded_bonus    * (model in loaded_models)              no cold load of the weights
          - local_bonus     * is_local                              no network hop

Why these shapes: a request's wait grows with the work queued ahead of it, so tasks count linearly and one task
is the unit the other weights are measured in. ``current_load`` is active work over the node's capacity, so it
tells a node with many parallel slots from one with a single slot at the same task count. Response time is
squashed into 0..1 because it spans milliseconds to minutes across hardware; a slow node also holds its tasks
longer, which the task count already shows, so this term only nudges. A node nobody has measured gets the middle
of the range: neither preferred nor avoided. Loading a model's weights costs seconds, about one queued task; the
local hop saves milliseconds, so it only decides between nodes that are otherwise nearly equal.

Ties go to the higher capacity ``weight``, then the lower ``peer_id``, so a plan never depends on input order.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from p2pnode.errors import ConfigError

__all__ = ["NodeView", "Scheduler", "SchedulerConfig", "SchedulerStatistics"]

_HEDGE_PERCENTILE = 95  # Tail at Scale: hedging after the p95 costs about 5% extra load


@dataclass(frozen=True)
class NodeView:
    """What the scheduler knows of one node that could serve a request."""

    peer_id: str
    models: tuple[str, ...]
    current_load: float  # 0..1 from its record
    active_tasks: int  # from its record
    response_time: float  # ms moving average from its record (0 = unknown)
    loaded_models: tuple[str, ...] = ()  # models known to be in memory (may be empty when unknown)
    is_local: bool = False  # this node itself
    weight: float = 1.0  # capacity weight (e.g. more GPU memory -> higher), for tie-breaks


@dataclass(frozen=True)
class SchedulerConfig:
    """Weights of the score terms (in units of one queued task) and the hedging window."""

    active_weight: float = 1.0  # per task running or queued on the node, ours in flight included
    load_weight: float = 2.0  # a node at full load counts as two more tasks
    response_weight: float = 1.0  # the whole response-time range is worth one task
    response_scale_ms: float = 1000.0  # response time at which that term is half its maximum
    loaded_bonus: float = 1.0  # model already in memory: saves a cold load of about one task
    local_bonus: float = 0.25  # this node itself: saves a network hop, decides only near-ties
    ttft_window: int = 200  # time-to-first-token samples kept (all nodes)
    min_samples: int = 10  # below this the p95 is noise: hedge at default_hedge_ms instead
    default_hedge_ms: float = 2000.0  # cold-start hedge delay: generous, since hedging early doubles load

    def __post_init__(self) -> None:
        weights = ("active_weight", "load_weight", "response_weight", "loaded_bonus", "local_bonus")
        for name in (*weights, "default_hedge_ms"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"scheduler {name} must be a finite number >= 0, got {value!r}")
        if not (math.isfinite(self.response_scale_ms) and self.response_scale_ms > 0):
            raise ConfigError(f"scheduler response_scale_ms must be > 0, got {self.response_scale_ms!r}")
        if self.ttft_window < 1:
            raise ConfigError(f"scheduler ttft_window must be >= 1, got {self.ttft_window!r}")
        if not 1 <= self.min_samples <= self.ttft_window:
            raise ConfigError(f"scheduler min_samples must lie in 1..ttft_window ({self.ttft_window})")


@dataclass(frozen=True)
class SchedulerStatistics:
    in_flight: int  # requests sent and not yet finished, over all nodes
    samples: int  # time-to-first-token samples in the window
    p95: float | None  # ms; None until min_samples samples exist
    finished_ok: int
    finished_failed: int


class Scheduler:
    """Picks nodes for requests. Keeps its own count of requests it has sent to each node and not yet seen
    finish (in_flight), so concurrent requests spread out at once instead of piling onto the node whose gossiped
    load is stale; and a time-to-first-token history for hedging.

    The caller passes only nodes able to take work (alive members whose status is online); the scheduler never
    sends anything itself: it plans, and the caller reports :meth:`started` and :meth:`finished` for each send.
    """

    def __init__(self, config: SchedulerConfig = SchedulerConfig()) -> None:  # frozen: sharing the default is safe
        self.config = config
        self._in_flight: dict[str, int] = {}  # only peers with at least one request out: stays small
        self._ttft: deque[float] = deque(maxlen=config.ttft_window)
        self._ok = 0
        self._failed = 0

    # ---- planning ------------------------------------------------------------------------------------------

    def score(self, node: NodeView, *, model: str | None = None) -> float:
        """Lower is better; the formula and its reasons are in the module docstring. The loaded-model bonus
        applies only when ``model`` is given (the planning methods always give it)."""
        cfg = self.config
        active = max(0, node.active_tasks) + self.in_flight(node.peer_id)
        load = min(1.0, max(0.0, node.current_load)) if math.isfinite(node.current_load) else 1.0
        rt = node.response_time
        response = rt / (rt + cfg.response_scale_ms) if math.isfinite(rt) and rt > 0 else 0.5
        loaded = model is not None and model in node.loaded_models
        return (
            cfg.active_weight * active
            + cfg.load_weight * load
            + cfg.response_weight * response
            - (cfg.loaded_bonus if loaded else 0.0)
            - (cfg.local_bonus if node.is_local else 0.0)
        )

    def candidates(self, nodes: Iterable[NodeView], model: str) -> list[NodeView]:
        """Nodes that list ``model`` exactly ("llama3.2:3b" is not "llama3.2"), best first, one per peer id."""
        best: dict[str, tuple[tuple[float, float, str, str], NodeView]] = {}
        for node in nodes:
            if model not in node.models:
                continue
            key = (*self._rank(node, model), repr(node))  # repr: two views of one peer still sort one way
            held = best.get(node.peer_id)
            if held is None or key < held[0]:
                best[node.peer_id] = (key, node)
        return [node for _, node in sorted(best.values(), key=lambda item: item[0])]

    def plan(self, nodes: Iterable[NodeView], model: str, *, fanout: int | None) -> list[NodeView]:
        """The best ``fanout`` candidates (all of them when ``fanout`` is None or 0); empty when nobody serves
        ``model``. A negative fanout is the caller's mistake and raises ValueError."""
        if fanout is not None and fanout < 0:
            raise ValueError(f"fanout must be >= 0 or None, got {fanout}")
        ranked = self.candidates(nodes, model)
        return ranked[:fanout] if fanout else ranked

    def plan_ensemble(self, nodes: Iterable[NodeView], models: Sequence[str]) -> list[tuple[str, NodeView]]:
        """The best node for each of ``models`` (in their given order; a model listed twice gets two picks),
        on distinct nodes whenever possible; models nobody serves are skipped.

        Distinctness comes first: a model takes its best node among those used least so far in this plan, and
        only then by score. Models with fewer candidates choose first, so that a model only one node serves is
        not left sharing because a more widely served model took that node."""
        pool = list(nodes)
        ranked = {model: self.candidates(pool, model) for model in dict.fromkeys(models)}
        order = sorted(range(len(models)), key=lambda i: (len(ranked[models[i]]), i))
        used: dict[str, int] = {}
        picks: dict[int, NodeView] = {}
        for i in order:
            options = ranked[models[i]]
            if not options:
                continue
            # ``options`` is already best first, so min() keeps the best among the least used.
            choice = min(options, key=lambda node: used.get(node.peer_id, 0))
            used[choice.peer_id] = used.get(choice.peer_id, 0) + 1
            picks[i] = choice
        return [(models[i], picks[i]) for i in sorted(picks)]

    def _rank(self, node: NodeView, model: str) -> tuple[float, float, str]:
        weight = node.weight if math.isfinite(node.weight) else 0.0
        return (self.score(node, model=model), -weight, node.peer_id)

    # ---- bookkeeping ---------------------------------------------------------------------------------------

    def started(self, peer_id: str) -> None:
        """A request was sent to ``peer_id``."""
        self._in_flight[peer_id] = self._in_flight.get(peer_id, 0) + 1

    def finished(self, peer_id: str, *, ttft_ms: float | None, ok: bool) -> None:
        """A request to ``peer_id`` ended (answered, failed or cancelled). ``ttft_ms`` is recorded whenever
        given, even for a request that failed later: its first token still came that fast. Never below zero,
        so a duplicate or unmatched call is harmless."""
        count = self._in_flight.get(peer_id, 0) - 1
        if count > 0:
            self._in_flight[peer_id] = count
        else:
            self._in_flight.pop(peer_id, None)
        if ok:
            self._ok += 1
        else:
            self._failed += 1
        if ttft_ms is not None and math.isfinite(ttft_ms):
            self._ttft.append(max(0.0, ttft_ms))

    def in_flight(self, peer_id: str) -> int:
        return self._in_flight.get(peer_id, 0)

    # ---- hedging -------------------------------------------------------------------------------------------

    def hedge_delay_ms(self) -> float | None:
        """The nearest-rank p95 of the last ``ttft_window`` times to first token (all nodes): the smallest
        sample with at least 95% of the samples at or below it, i.e. ``sorted(s)[ceil(0.95 * n) - 1]``.
        None until ``min_samples`` exist; :meth:`should_hedge` then uses ``config.default_hedge_ms``, and a
        caller setting its own timer should do the same."""
        n = len(self._ttft)
        if n < self.config.min_samples:
            return None
        rank = (_HEDGE_PERCENTILE * n + 99) // 100  # ceil(0.95 * n) in integers: no float rounding at n = 20
        return sorted(self._ttft)[rank - 1]

    def should_hedge(self, waited_ms: float) -> bool:
        """Whether a request without a first token after ``waited_ms`` deserves a second copy elsewhere.
        At or past the delay: a caller that slept exactly the delay should hedge."""
        delay = self.hedge_delay_ms()
        return waited_ms >= (self.config.default_hedge_ms if delay is None else delay)

    def statistics(self) -> SchedulerStatistics:
        return SchedulerStatistics(
            in_flight=sum(self._in_flight.values()),
            samples=len(self._ttft),
            p95=self.hedge_delay_ms(),
            finished_ok=self._ok,
            finished_failed=self._failed,
        )
