"""One distributed request: plan, fan out, stream or combine, fail over, cancel.

Whichever node receives a prompt coordinates it. :meth:`Coordinator.open_chat` runs the chosen strategy in a task
of its own nursery, which puts chunks on a channel that the gateway reads; leaving the context cancels the task,
and with it every job of the request on every node (local backend streams are closed, remote jobs get a cancel).

- ``route``: the best-ranked node streams the answer. A node that fails before its first token is replaced by the
  next; one that fails mid-stream is replaced too, and the next node is given the conversation plus the partial
  answer as an assistant message to continue.
- ``first``: the best node starts; if it has not produced a token after the recent p95 time-to-first-token, a
  second one starts (hedging); with ``fanout`` k, k start at once. The first to produce a token streams, the
  others are cancelled; failures after that fail over as in ``route``.
- ``best``: every planned node answers in full; the answers are compared (majority vote on extracted final
  answers, else minimum Bayes risk), stopping early once the vote cannot change; the winner is streamed.
- ``judge``: as ``best``, then one more call to the strongest node asks which answer is most consistent
  (both orders for two candidates); ``best``'s choice stands if the judge fails.
- ``fuse``: as ``best``, then the strongest node writes one answer from all of them, streamed as it comes.

Every answer's last chunk carries metadata: the strategy, each candidate (node, model, latency, outcome, score),
and the winner.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from p2pnode.backends.base import ChatChunk, ChatRequest, ModelInfo
from p2pnode.core import combine
from p2pnode.core.identity import short_id
from p2pnode.core.scheduler import NodeView, Scheduler
from p2pnode.errors import BackendError, BackendRejected, GatewayError, PeerError, PeerRejected
from p2pnode.gateway.service import Routing
from p2pnode.net._errors import first_leaf
from p2pnode.net.jobs import BUSY
from p2pnode.workers import Workers

__all__ = ["STRATEGIES", "Coordinator", "CoordinatorConfig", "DistributedOptions"]

log = logging.getLogger(__name__)

STRATEGIES = ("route", "first", "best", "judge", "fuse")


@dataclass(frozen=True)
class CoordinatorConfig:
    default_strategy: str = "best"  # the seed's default: every node that has the model answers, the best wins
    default_timeout: float = 600.0
    keepalive_interval: float = 5.0  # while candidates run, an empty chunk this often keeps the client's connection
    busy_retry_min: float = 0.05  # seconds before asking busy nodes again; doubles each time ...
    busy_retry_max: float = 1.0  # ... up to this
    max_fanout: int = 16


@dataclass(frozen=True)
class DistributedOptions:
    strategy: str
    fanout: int | None = None  # None: every node that serves the model (route and first use their own defaults)
    timeout: float | None = None
    models: tuple[str, ...] = ()  # an ensemble of different models, instead of the request's one
    local_only: bool = False  # use_distributed: false

    @classmethod
    def parse(cls, raw: dict[str, Any], header: str | None, default: str, *, use: bool = True) -> DistributedOptions:
        """From the request's ``distributed`` object and the ``X-DCN-Strategy`` header (the object wins)."""
        strategy = raw.get("strategy") or header or default
        if strategy not in STRATEGIES:
            raise GatewayError(f"distributed.strategy must be one of {', '.join(STRATEGIES)}", status_hint=400)
        fanout = raw.get("fanout")
        if fanout is not None and (isinstance(fanout, bool) or not isinstance(fanout, int) or not 1 <= fanout <= 64):
            raise GatewayError("distributed.fanout must be an integer from 1 to 64", status_hint=400)
        timeout = raw.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600):
            raise GatewayError("distributed.timeout must be a number of seconds in (0, 3600]", status_hint=400)
        models = raw.get("models") or ()
        if not isinstance(models, (list, tuple)) or len(models) > 16 or not all(isinstance(m, str) and m for m in models):
            raise GatewayError("distributed.models must be a list of at most 16 model names", status_hint=400)
        return cls(strategy, fanout, float(timeout) if timeout else None, tuple(models), local_only=not use)


@dataclass
class _Attempt:
    node: NodeView
    model: str
    started: float
    outcome: str = "pending"
    latency_ms: float = 0.0
    content: str = ""
    score: float | None = None
    winner: bool = False
    error: Exception | None = None

    def report(self) -> dict[str, Any]:
        return {
            "node": self.node.peer_id, "model": self.model, "latency_ms": round(self.latency_ms, 1),
            "outcome": self.outcome, "score": None if self.score is None else round(self.score, 4),
            "winner": self.winner,
        }


@dataclass
class _Request:
    """The bookkeeping of one distributed request."""

    id: int
    strategy: str
    model: str
    user: str | None  # who asked (None: this node's owner, through an unauthenticated local gateway)
    started_at: float = field(default_factory=time.time)
    attempts: list[_Attempt] = field(default_factory=list)
    plan: list[tuple[str, NodeView]] = field(default_factory=list)
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)  # its user may cancel it

    def metadata(self) -> dict[str, Any]:
        winner = next((a.node.peer_id for a in self.attempts if a.winner), None)
        return {
            "request_id": self.id, "strategy": self.strategy, "candidates": [a.report() for a in self.attempts],
            "winner": winner,
        }

    def client_fault(self) -> BackendRejected | None:
        """When every node refused the request itself (a prompt beyond every context: 400; a model the node
        listed but its server no longer has: 404), pass that on rather than blame the network (503)."""
        errors = [a.error for a in self.attempts if a.outcome == "error"]
        if errors and all(isinstance(e, BackendRejected) and e.status_hint in (400, 404) for e in errors):
            return errors[-1]
        return None

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id, "model": self.model, "strategy": self.strategy, "started_at": round(self.started_at, 3),
            "nodes": sorted({a.node.peer_id for a in self.attempts if a.outcome == "pending"}),
        }


class Coordinator:
    def __init__(self, workers: Workers, scheduler: Scheduler, config: CoordinatorConfig) -> None:
        self.workers = workers
        self.scheduler = scheduler
        self.config = config
        self._running: dict[int, _Request] = {}
        self._ids = itertools.count(1)

    @property
    def models(self) -> list[ModelInfo]:
        return self.workers.models

    def holders(self, model: str) -> list[str]:
        return self.workers.holders(model)

    def requests_of(self, user: str | None) -> list[dict[str, Any]]:
        """The requests running for ``user``: nobody sees another user's."""
        return [r.summary() for r in self._running.values() if r.user == user]

    def cancel(self, request_id: int, user: str | None) -> bool:
        """Cancel one of ``user``'s requests (every job of it, on every node); ``False`` if they have no such."""
        request = self._running.get(request_id)
        if request is None or request.user != user:
            return False
        request.cancel_scope.cancel()
        return True

    # ---- running a request ---------------------------------------------------------------------------------

    def open_chat(self, request: ChatRequest, routing: Routing | None = None) -> AbstractAsyncContextManager[AsyncIterator[ChatChunk]]:
        """The gateway's entry point for streamed answers: ``routing`` is how the client asked for the request
        to be distributed."""
        return self._open(*self._prepare(request, routing or Routing()))

    async def complete(self, request: ChatRequest, routing: Routing | None = None) -> tuple[str, ChatChunk]:
        """The whole answer and its last chunk, run in the caller's task: no relay between tasks to pay for."""
        request, options, state = self._prepare(request, routing or Routing())
        sink = _Collector()
        with self._registered(state):
            try:
                await self._run(request, options, state, sink)
            except* (GatewayError, BackendError, PeerError) as group:
                raise first_leaf(group) from None  # one clear error for the gateway, not a group
        return "".join(sink.parts), sink.last

    def _prepare(self, request: ChatRequest, routing: Routing) -> tuple[ChatRequest, DistributedOptions, _Request]:
        options = DistributedOptions.parse(
            routing.distributed, routing.header_strategy, self.config.default_strategy, use=routing.use_distributed
        )
        timeout = options.timeout or request.timeout or self.config.default_timeout
        # Only route may take a whole answer in one piece: the others race on, or time, the first tokens.
        request = replace(request, timeout=timeout, stream=request.stream or options.strategy != "route")
        state = _Request(next(self._ids), options.strategy, request.model, routing.user)
        state.plan = self._plan(request, options)
        return request, options, state

    @contextmanager
    def _registered(self, state: _Request) -> Iterator[None]:
        self._running[state.id] = state
        try:
            yield
        finally:
            del self._running[state.id]

    @asynccontextmanager
    async def _open(
        self, request: ChatRequest, options: DistributedOptions, state: _Request
    ) -> AsyncIterator[AsyncIterator[ChatChunk]]:
        send, receive = trio.open_memory_channel[ChatChunk | BaseException](16)
        with self._registered(state):
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._produce, request, options, state, send)
                    first = await receive.receive()  # errors before any output keep their HTTP status
                    if isinstance(first, BaseException):
                        raise first
                    async with aclosing(_relay(first, receive)) as chunks:
                        yield chunks
                    nursery.cancel_scope.cancel()
            except* (GatewayError, BackendError, PeerError) as group:
                raise first_leaf(group) from None  # one clear error for the gateway, not a group

    def _plan(self, request: ChatRequest, options: DistributedOptions) -> list[tuple[str, NodeView]]:
        nodes = [n for n in self.workers.nodes() if n.is_local or not options.local_only]
        if options.models:
            plan = self.scheduler.plan_ensemble(nodes, options.models)
        else:
            default_fanout = 1 if options.strategy in ("route", "first") else None
            fanout = min(options.fanout or default_fanout or self.config.max_fanout, self.config.max_fanout)
            plan = [(request.model, node) for node in self.scheduler.plan(nodes, request.model, fanout=fanout)]
        if not plan:
            wanted = options.models or (request.model,)
            if any(model in node.models for node in nodes for model in wanted):
                raise GatewayError("no node can serve this request now", status_hint=503)
            names = ", ".join(repr(m) for m in wanted)
            raise GatewayError(f"no node of the network serves {names}", status_hint=404)
        return plan

    async def _produce(self, request: ChatRequest, options: DistributedOptions, state: _Request,
                       send: trio.MemorySendChannel) -> None:
        async with send:
            try:
                await self._run(request, options, state, send)
            except* (GatewayError, BackendError, PeerError) as group:
                await send.send(first_leaf(group))

    async def _run(self, request: ChatRequest, options: DistributedOptions, state: _Request, send: Any) -> None:
        """Run the strategy to its end, its chunks to ``send``; the request's deadline and cancel apply."""
        strategy = {"route": self._route, "first": self._first, "best": self._combine,
                    "judge": self._combine, "fuse": self._combine}[options.strategy]
        with trio.move_on_after(request.timeout) as scope, state.cancel_scope:
            await strategy(request, options, state.plan, state, send)
        if state.cancel_scope.cancelled_caught:
            raise GatewayError("cancelled by its user", status_hint=499)
        if scope.cancelled_caught:
            raise GatewayError(f"no answer within the request's {request.timeout:.0f} s deadline", status_hint=504)

    # ---- streaming strategies ------------------------------------------------------------------------------

    async def _stream_from(self, node: NodeView, model: str, request: ChatRequest, state: _Request,
                           send: trio.MemorySendChannel, produced: list[str], *, on_first: Callable[[], None] | None = None,
                           lost: Callable[[], bool] = lambda: False) -> ChatChunk:
        """Stream one node's answer to the client, appending to ``produced``; returns the final chunk."""
        attempt = _Attempt(node, model, time.perf_counter())
        state.attempts.append(attempt)
        self.scheduler.started(node.peer_id)
        ttft = None
        try:
            if produced:  # continue a partial answer another node began
                request = replace(request, messages=(*request.messages, {"role": "assistant", "content": "".join(produced)}))
            final = None
            async with self.workers.open_on(node, replace(request, model=model), user=state.user) as chunks:
                async for chunk in chunks:  # to the end, past the final chunk: the backend's connection is reused
                    if chunk.content:
                        if ttft is None:
                            ttft = (time.perf_counter() - attempt.started) * 1000
                            if on_first is not None:
                                on_first()
                        produced.append(chunk.content)
                        await send.send(ChatChunk(content=chunk.content))
                    if chunk.done:
                        attempt.outcome, attempt.winner = "ok", True
                        final = chunk
            if final is None:
                raise BackendError(f"{short_id(node.peer_id)} ended without a final chunk")
            return final
        except BaseException as exc:
            attempt.outcome = "cancelled" if isinstance(exc, trio.Cancelled) else "error"
            attempt.error = exc
            if _is_busy(exc):  # asked again later: not a failure, and not a candidate in the answer's metadata
                attempt.outcome = "busy"
                state.attempts.remove(attempt)
            raise
        finally:
            attempt.latency_ms = (time.perf_counter() - attempt.started) * 1000
            if ttft is None and attempt.outcome == "cancelled" and lost():
                # Waited this long without a token when a rival won: a lower bound, but leaving it out would
                # keep the slow cases out of the p95 that decides when to hedge.
                ttft = attempt.latency_ms
            self.scheduler.finished(node.peer_id, ttft_ms=ttft, ok=attempt.outcome in ("ok", "busy"))

    async def _failover(self, request: ChatRequest, plan: list[tuple[str, NodeView]], state: _Request,
                        send: trio.MemorySendChannel, produced: list[str], failed: set[str]) -> None:
        """Serve the request from the best nodes in turn until one finishes, continuing any partial answer.
        When every node that could serve it is busy, wait for one (backing off) until the request's deadline."""
        queue = list(plan)
        busy: set[str] = set()
        pause = self.config.busy_retry_min
        while True:
            if not queue:  # re-plan: load figures moved, and more nodes may serve the model than were planned
                ranked = self.scheduler.candidates(self.workers.nodes(), request.model)
                queue = [(request.model, n) for n in ranked if n.peer_id not in failed | busy]
                if not queue and busy and all(n.peer_id in failed | busy for n in ranked):
                    await trio.sleep(pause)
                    pause = min(pause * 2, self.config.busy_retry_max)
                    busy.clear()
                    continue
                if not queue:
                    raise state.client_fault() or GatewayError(
                        f"every node that serves {request.model!r} failed", status_hint=503
                    )
            model, node = queue.pop(0)
            try:
                final = await self._stream_from(node, model, request, state, send, produced)
            except PeerRejected as exc:  # busy: ask again later; refused: never
                (busy if _is_busy(exc) else failed).add(node.peer_id)
                log.debug("%s refused the job (%s)", short_id(node.peer_id), exc)
                continue
            except (BackendError, PeerError) as exc:
                failed.add(node.peer_id)
                log.info("%s failed %s (%s): failing over", short_id(node.peer_id), "mid-stream" if produced else "before its first token", exc)
                continue
            await send.send(replace(final, content="", metadata=state.metadata()))
            return

    async def _route(self, request, options, plan, state, send) -> None:
        await self._failover(request, plan, state, send, [], set())

    async def _first(self, request, options, plan, state, send) -> None:
        """Race: the first node to produce a token streams and the others are cancelled; with one racer, a
        second joins (hedging) once the first has waited past the recent p95 time to first token."""
        produced: list[str] = []
        failed: set[str] = set()
        won = trio.Event()
        result: dict[str, Any] = {}
        scopes: dict[str, trio.CancelScope] = {}
        racing = {node.peer_id for _, node in plan}
        hedges = [n for n in self.scheduler.candidates(self.workers.nodes(), request.model) if n.peer_id not in racing]

        async def race(model: str, node: NodeView, nursery: trio.Nursery) -> None:
            own: list[str] = []
            gate = _Gate(send)

            def claim() -> None:
                if not won.is_set():
                    won.set()
                    gate.owner = True
                    for peer_id, scope in scopes.items():
                        if peer_id != node.peer_id:
                            scope.cancel()

            with scopes[node.peer_id]:
                try:
                    final = await self._stream_from(node, model, request, state, gate, own, on_first=claim,
                                                    lost=lambda: won.is_set() and not gate.owner)
                    claim()  # an answer without any token wins if nobody spoke first
                    if gate.owner:
                        result["final"] = final
                        produced.extend(own)
                except (BackendError, PeerError) as exc:
                    if not _is_busy(exc):  # a busy racer may still take the request when _failover asks again
                        failed.add(node.peer_id)
                    if gate.owner:  # the winner died mid-stream: the rest continues elsewhere
                        produced.extend(own)
                        nursery.cancel_scope.cancel()

        def start(model: str, node: NodeView, nursery: trio.Nursery) -> None:
            # The scope exists before the task runs: a win in between must still be able to cancel it.
            scopes[node.peer_id] = trio.CancelScope()
            if won.is_set():
                scopes[node.peer_id].cancel()
            nursery.start_soon(race, model, node, nursery)

        async with trio.open_nursery() as nursery:
            for model, node in plan:
                start(model, node, nursery)
            if len(plan) == 1 and hedges:
                # Until enough first tokens were timed, the scheduler's default delay stands in for the p95.
                delay = self.scheduler.hedge_delay_ms() or self.scheduler.config.default_hedge_ms
                with trio.move_on_after(delay / 1000):
                    await won.wait()
                if not won.is_set():
                    log.debug("hedging %s after %.0f ms without a first token", request.model, delay)
                    start(request.model, hedges[0], nursery)
        if "final" in result:
            await send.send(replace(result["final"], content="", metadata=state.metadata()))
            return
        # Nobody finished (all failed, or the winner died mid-stream): continue like route from what was sent.
        await self._failover(request, [], state, send, produced, failed)

    # ---- combining strategies ------------------------------------------------------------------------------

    async def _combine(self, request, options, plan, state, send) -> None:
        candidates = await self._gather(request, plan, state, send)
        selection = combine.select_best(candidates)
        for attempt, score in zip(state.attempts, selection.scores):
            attempt.score = score
        winner = selection.winner
        if options.strategy == "judge" and winner is not None:
            winner = await self._judge(request, candidates, state, winner)
        if options.strategy == "fuse" and any(combine.usable(c) for c in candidates):
            await self._fuse(request, candidates, state, send)
            return
        if winner is None:  # nothing to compare; an empty answer (e.g. num_predict 0) is still an answer
            finished = [i for i, c in enumerate(candidates) if c.outcome in ("ok", "truncated")]
            if not finished:
                raise state.client_fault() or GatewayError("no node produced a usable answer", status_hint=502)
            winner = finished[0]
        state.attempts[winner].winner = True
        chosen = candidates[winner]
        await send.send(ChatChunk(content=chosen.content))
        reason = "length" if chosen.outcome == "truncated" else "stop"
        await send.send(ChatChunk(done=True, done_reason=reason, metadata=state.metadata()))

    async def _gather(self, request, plan, state, send) -> list[combine.Candidate]:
        """Full answers from every planned node, in plan order; stops early when the vote is decided."""
        attempts = [_Attempt(node, model, time.perf_counter()) for model, node in plan]
        state.attempts.extend(attempts)
        done = trio.Event()

        async def answer(attempt: _Attempt) -> None:
            self.scheduler.started(attempt.node.peer_id)
            parts: list[str] = []
            ttft = None
            try:
                opened = self.workers.open_on(attempt.node, replace(request, model=attempt.model), user=state.user)
                async with opened as chunks:
                    async for chunk in chunks:
                        if chunk.content and ttft is None:
                            ttft = (time.perf_counter() - attempt.started) * 1000
                        parts.append(chunk.content)
                        if chunk.done:
                            attempt.outcome = "truncated" if chunk.done_reason == "length" else "ok"
                if attempt.outcome == "pending":
                    attempt.outcome = "error"
            except (BackendError, PeerError) as exc:
                attempt.outcome, attempt.error = "error", exc
                log.info("candidate from %s failed: %s", short_id(attempt.node.peer_id), exc)
            except trio.Cancelled:
                attempt.outcome = "cancelled"
                raise
            finally:
                attempt.content = "".join(parts)
                attempt.latency_ms = (time.perf_counter() - attempt.started) * 1000
                self.scheduler.finished(attempt.node.peer_id, ttft_ms=ttft, ok=attempt.outcome == "ok")
            finished = [a for a in attempts if a.outcome != "pending"]
            pending = len(attempts) - len(finished)
            if not pending or combine.can_stop_early([_candidate(a) for a in finished], pending):
                done.set()

        async with trio.open_nursery() as nursery:
            for attempt in attempts:
                nursery.start_soon(answer, attempt)
            while not done.is_set():
                with trio.move_on_after(self.config.keepalive_interval):
                    await done.wait()
                if not done.is_set():
                    await send.send(ChatChunk(content=""))  # keeps the client's connection while candidates run
            nursery.cancel_scope.cancel()
        for attempt in attempts:
            if attempt.outcome == "pending":
                attempt.outcome = "cancelled"
        return [_candidate(a) for a in attempts]

    def _strongest(self, exclude: set[str], model: str) -> NodeView | None:
        ranked = self.scheduler.candidates(self.workers.nodes(), model)
        return next((n for n in ranked if n.peer_id not in exclude), ranked[0] if ranked else None)

    async def _judge(self, request, candidates, state, fallback: int) -> int:
        usable = [i for i, c in enumerate(candidates) if combine.usable(c)]
        if len(usable) < 2:
            return fallback
        judge = self._strongest({candidates[i].node for i in usable}, request.model)
        if judge is None:
            return fallback
        question = str(request.messages[-1].get("content", ""))
        texts = [combine.strip_thinking(candidates[i].content) for i in usable]
        orders = combine.judge_orders(len(texts))
        choices = []
        for order in orders:
            prompt = combine.judge_prompt(question, [texts[i] for i in order])
            judge_request = replace(request, messages=({"role": "user", "content": prompt},), options={"temperature": 0})
            try:
                async with self.workers.open_on(judge, judge_request, user=state.user) as chunks:
                    verdict = "".join([c.content async for c in chunks])
            except (BackendError, PeerError) as exc:
                log.info("judge %s failed (%s): keeping the consensus choice", short_id(judge.peer_id), exc)
                return fallback
            choices.append(combine.parse_judge_choice(verdict, len(texts)))
        picked = combine.combine_judgements(choices, orders, len(texts))
        state.attempts.append(_Attempt(judge, request.model, 0.0, outcome="judge"))
        return usable[picked] if picked is not None else fallback

    async def _fuse(self, request, candidates, state, send) -> None:
        usable = [c for c in candidates if combine.usable(c)]
        question = str(request.messages[-1].get("content", ""))
        prompt = combine.fuse_prompt(question, [combine.strip_thinking(c.content) for c in usable])
        fused = replace(request, messages=(*request.messages[:-1], {"role": "user", "content": prompt}))
        aggregator = self._strongest(set(), request.model)
        plan = [(request.model, aggregator)] if aggregator else []
        await self._failover(fused, plan, state, send, [], set())


def _is_busy(exc: BaseException) -> bool:
    return isinstance(exc, PeerRejected) and exc.code == BUSY


class _Collector:
    """Where a whole answer's chunks go when nobody streams them."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.last = ChatChunk()

    async def send(self, chunk: ChatChunk) -> None:
        self.parts.append(chunk.content)
        self.last = chunk


class _Gate:
    """Lets only the racer that produced the first token write to the client."""

    def __init__(self, send: trio.MemorySendChannel) -> None:
        self._send = send
        self.owner = False

    async def send(self, chunk: ChatChunk) -> None:
        if self.owner:
            await self._send.send(chunk)


def _candidate(attempt: _Attempt) -> combine.Candidate:
    return combine.Candidate(
        node=attempt.node.peer_id, model=attempt.model, content=attempt.content, outcome=attempt.outcome,
        latency_ms=attempt.latency_ms, weight=attempt.node.weight,
    )


async def _relay(first: ChatChunk, receive: trio.MemoryReceiveChannel) -> AsyncIterator[ChatChunk]:
    yield first
    async for item in receive:
        if isinstance(item, BaseException):
            raise item
        yield item
