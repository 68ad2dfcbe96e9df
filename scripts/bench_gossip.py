#!/usr/bin/env python3
"""Benchmark the gossip overlay: a network of real Overlay peers on loopback websockets, spread over processes.

    .venv/bin/python scripts/bench_gossip.py                 # 100 peers, 4 worker processes, 3 rounds, 30 s window
    .venv/bin/python scripts/bench_gossip.py --quick         # 20 peers, 1 round, 5 s window: a smoke run
    .venv/bin/python scripts/bench_gossip.py --set gossip.refresh_interval=30 --set peers.probe_timeout=4

What is measured (every peer is a real :class:`p2pnode.net.overlay.Overlay` listening on 127.0.0.1, port 0, with
the shipped default GossipConfig / PeersConfig / MembershipConfig unless ``--set`` overrides a knob):

1. mesh formation: one seed, the others join with ``seeds=(seed_url,)``, all at once (or spread over
   ``--stagger`` seconds); time from the last one's start until every peer holds all N-1 others ALIVE (reported,
   no target);
2. join: a new peer, in a process of its own, joins through a random existing peer; time from its start until
   every other peer holds it ALIVE (target <= 2 s);
3. failure: that same peer's process is SIGKILLed (no goodbye; the kernel closes its sockets); time until every
   remaining peer holds it OFFLINE (target <= 3 s);
4. gossip traffic: bytes sent per node per second, from ``Overlay.statistics().bytes_sent`` deltas over a window
   of a stable network (target <= 20 KB/s, 1 KB = 1024 bytes; counts overlay messages, Ping/Pong included, not
   websocket framing or handshakes). The default window is two record refresh intervals, since refreshes are
   most of the steady-state traffic.

Layout: the coordinator (this process, trio) starts ``--processes`` worker processes (this script with
``--worker``), each running one trio loop that hosts its share of the peers, plus one short-lived process per
join/failure round. Control is JSON lines over each worker's stdin/stdout. Whether a peer "sees" something is
decided inside the worker that hosts it, with ``overlay.wait_until(...)``, stamped with ``time.monotonic()``
(CLOCK_MONOTONIC is system-wide, so stamps from different processes compare).

All peers share this machine's CPUs, so the report also states how busy the machine was, how much of that was
this benchmark, and how late the workers' event loops ran: timings from a saturated or shared machine say more
about the machine than about the protocol. ``--wait-idle`` waits for other load to go away before starting.

Progress goes to stderr; the result table (Markdown) to stdout. The exit status is non-zero only on errors (a
worker crashing, bad flags), never because a target was missed: benchmarks measure, tests assert.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pnode.config import GossipConfig, OverlayConfig, PeersConfig  # noqa: E402
from p2pnode.core.identity import Identity, short_id  # noqa: E402
from p2pnode.core.membership import MemberState, MembershipConfig  # noqa: E402
from p2pnode.net.overlay import Overlay  # noqa: E402

JOIN_TARGET = 2.0  # seconds
FAILURE_TARGET = 3.0  # seconds
TRAFFIC_TARGET = 20.0  # KB/s sent per node
KB = 1024

_SECTIONS = {"gossip": GossipConfig, "peers": PeersConfig, "membership": MembershipConfig}


def build_sections(overrides: dict[str, str]) -> dict[str, Any]:
    """The config sections with ``section.field=value`` overrides applied (values converted to the field type)."""
    sections = {name: cls() for name, cls in _SECTIONS.items()}
    for key, text in overrides.items():
        section, _, name = key.partition(".")
        if section not in sections or not hasattr(sections[section], name):
            raise ValueError(f"unknown knob {key!r} (use gossip.X, peers.X or membership.X)")
        kind = type(getattr(sections[section], name))
        sections[section] = replace(sections[section], **{name: kind(text)})
    return sections


# =============================================================================================================
# control channel: JSON lines
# =============================================================================================================


class LineChannel:
    """JSON objects, one per line, over a pair of trio byte streams."""

    def __init__(self, receive: trio.abc.ReceiveStream, send: trio.abc.SendStream) -> None:
        self._receive = receive
        self._send = send
        self._buffer = bytearray()
        self._lock = trio.Lock()

    async def get(self) -> dict[str, Any] | None:
        """The next object, or ``None`` at end of stream."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                if line.strip():
                    return json.loads(line)
                continue
            data = await self._receive.receive_some(1 << 16)
            if not data:
                return None
            self._buffer += data

    async def put(self, message: dict[str, Any]) -> None:
        async with self._lock:
            await self._send.send_all(json.dumps(message, separators=(",", ":")).encode() + b"\n")


# =============================================================================================================
# worker: hosts overlays in one trio loop
# =============================================================================================================


class _TransitionCounter(logging.Handler):
    """Counts the overlay's "peer X is <state>", "lost link" and "does not answer" log lines, by short peer id: how
    often live peers were wrongly suspected is the overlay's false-positive rate under load."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.states: Counter[tuple[str, str]] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if not isinstance(record.msg, str) or not isinstance(record.args, tuple):
            return
        if record.msg == "peer %s is %s" and len(record.args) == 2:
            self.states[(str(record.args[0]), str(record.args[1]))] += 1
        elif record.msg.startswith("lost link to %s"):
            self.states[(str(record.args[0]), "lost link")] += 1
        elif record.msg.startswith("peer %s does not answer"):
            self.states[(str(record.args[0]), "dial refused")] += 1


class Worker:
    def __init__(self, channel: LineChannel, name: str) -> None:
        self.channel = channel
        self.name = name
        self.identities: list[Identity] = []
        self.overlays: list[Overlay] = []
        self.lags: list[tuple[float, float]] = []  # (when, how late) of each wake-up of the lag monitor
        self.lag_reset = 0.0
        self.counter = _TransitionCounter()
        self.nursery: trio.Nursery | None = None
        self.profiler: Any = None
        self.mesh_scopes: list[trio.CancelScope] = []

    async def main(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self._lag_monitor)
            nursery.start_soon(self._orphan_watch)
            while True:
                command = await self.channel.get()
                if command is None or command["op"] == "quit":
                    break
                nursery.start_soon(self._handle, command)
            if command is not None:
                await self.channel.put({"id": command["id"], "ok": True})
            nursery.cancel_scope.cancel()  # no leave(): the coordinator is done with us

    async def _handle(self, command: dict[str, Any]) -> None:
        op = command["op"]
        try:
            result = await getattr(self, f"op_{op}")(command)
        except Exception as exc:  # reported to the coordinator, which fails the run
            logging.getLogger("bench").exception("%s: %s failed", self.name, op)
            await self.channel.put({"id": command["id"], "ok": False, "error": f"{type(exc).__name__}: {exc}"})
            return
        await self.channel.put({"id": command["id"], "ok": True, **result})

    async def _orphan_watch(self) -> None:
        """End if the coordinator is gone (it normally closes our stdin first; this covers a SIGKILLed one).
        PR_SET_PDEATHSIG would not do: trio spawns processes from a worker thread, whose exit would kill us."""
        parent = os.getppid()
        while os.getppid() == parent:
            await trio.sleep(1.0)
        self.nursery.cancel_scope.cancel()

    async def _lag_monitor(self) -> None:
        """How late the event loop wakes a 50 ms sleeper: a direct measure of CPU saturation in this process."""
        while True:
            before = time.monotonic()
            await trio.sleep(0.05)
            now = time.monotonic()
            self.lags.append((now, now - before - 0.05))
            if len(self.lags) > 20000:  # about 15 minutes
                del self.lags[:10000]

    # ---- operations -----------------------------------------------------------------------------------------

    async def op_prepare(self, command: dict[str, Any]) -> dict[str, Any]:
        fresh = [Identity.generate() for _ in range(command["count"])]
        self.identities.extend(fresh)
        return {"peers": [identity.peer_id for identity in fresh], "pid": os.getpid()}

    async def op_start(self, command: dict[str, Any]) -> dict[str, Any]:
        """Start the next ``count`` prepared identities as overlays joining through ``seeds``; with ``mesh_n``,
        report (event "mesh") when each holds ``mesh_n - 1`` others ALIVE."""
        sections = build_sections(command.get("overrides", {}))
        config = OverlayConfig(listen_host="127.0.0.1", listen_port=0, seeds=tuple(command["seeds"]), **sections)
        fresh = []
        for i in range(command["count"]):
            identity = self.identities[len(self.overlays)]
            index = command["index"] + i
            overlay = Overlay(identity, config, lambda index=index: {"name": f"bench-{index}", "cpu_cores": 1})
            self.overlays.append(overlay)
            fresh.append(overlay)
        started: list[dict[str, Any]] = [{} for _ in fresh]

        delays = command.get("delays") or [0.0] * len(fresh)

        async def start(i: int, overlay: Overlay) -> None:
            await trio.sleep(delays[i])
            t_start = time.monotonic()
            await self.nursery.start(overlay.run)
            started[i] = {"peer": overlay.peer_id, "url": overlay.local_record.record.addrs[0], "t_start": t_start}
            if command.get("mesh_n"):
                self.nursery.start_soon(self._watch_mesh, overlay, command["mesh_n"] - 1)

        async with trio.open_nursery() as nursery:  # all at once: a sequential start is slowed by the earlier ones
            for i, overlay in enumerate(fresh):
                nursery.start_soon(start, i, overlay)
        return {"started": started}

    async def _watch_mesh(self, overlay: Overlay, others: int) -> None:
        def complete() -> bool:  # len() first: cheap, and false until every peer is known
            members = overlay.membership
            return len(members) >= others and sum(m.state is MemberState.ALIVE for m in members) >= others

        with trio.CancelScope() as scope:
            self.mesh_scopes.append(scope)
            await overlay.wait_until(complete)
            await self.channel.put({"event": "mesh", "peer": overlay.peer_id, "t": time.monotonic()})

    async def op_stop_mesh(self, command: dict[str, Any]) -> dict[str, Any]:
        """Give up on mesh formation: the watchers would otherwise re-count the table on every change."""
        for scope in self.mesh_scopes:
            scope.cancel()
        return {}

    async def op_watch(self, command: dict[str, Any]) -> dict[str, Any]:
        """Arm watchers: on every local overlay but ``peer`` itself, wait until ``peer`` is in ``state``; one
        event "watched" with the time each overlay saw it, after all did or ``timeout`` passed."""
        peer, state, timeout = command["peer"], MemberState(command["state"]), command["timeout"]
        watchers = [overlay for overlay in self.overlays if overlay.peer_id != peer]
        times: dict[str, float] = {}

        async def watch_one(overlay: Overlay) -> None:
            def holds() -> bool:
                member = overlay.membership.get(peer)
                return member is not None and member.state is state

            await overlay.wait_until(holds)
            times[overlay.peer_id] = time.monotonic()

        async def watch_all() -> None:
            with trio.move_on_after(timeout):
                async with trio.open_nursery() as nursery:
                    for overlay in watchers:
                        nursery.start_soon(watch_one, overlay)
            late = [overlay.peer_id for overlay in watchers if overlay.peer_id not in times]
            # Who saw it last, or not at all, and why that might be: how many links it had, what it holds.
            detail = []
            for overlay in watchers:
                member = overlay.membership.get(peer)
                detail.append({"t": times.get(overlay.peer_id), "links": len(overlay.linked_peers),
                               "linked": peer in overlay.linked_peers,
                               "state": str(member.state) if member is not None else "unknown"})
            await self.channel.put({"event": "watched", "wid": command["wid"], "times": list(times.values()),
                                    "late": late, "detail": detail})

        self.nursery.start_soon(watch_all)
        return {"armed": len(watchers)}

    async def op_profile(self, command: dict[str, Any]) -> dict[str, Any]:
        """Start (``path`` absent) or stop and save (to ``path``) a CPU-time profile of this process."""
        import cProfile

        if command.get("path") is None:
            self.profiler = cProfile.Profile(time.process_time)
            self.profiler.enable()
        else:
            self.profiler.disable()
            self.profiler.dump_stats(command["path"])
        return {}

    async def op_stats(self, command: dict[str, Any]) -> dict[str, Any]:
        nodes = []
        for overlay in self.overlays:
            s = overlay.statistics()
            nodes.append({"peer": overlay.peer_id, "sent": s.bytes_sent, "received": s.bytes_received,
                          "links": s.links, "members": s.members, "alive": s.alive})
        since = command.get("since") or self.lag_reset
        lags = sorted(lag for t, lag in self.lags if t >= since)
        if command.get("reset"):
            self.lag_reset = time.monotonic()
        exclude = set(command.get("exclude", ()))
        transitions: Counter[str] = Counter()
        for (who, state), count in self.counter.states.items():
            if who not in exclude:
                transitions[state] += count
        return {
            "t": time.monotonic(),
            "cpu": time.process_time(),
            "nodes": nodes,
            "lag_p50": lags[len(lags) // 2] if lags else 0.0,
            "lag_p99": lags[int(len(lags) * 0.99)] if lags else 0.0,
            "lag_max": lags[-1] if lags else 0.0,
            "transitions": dict(transitions),
            "counts": dict(COUNTS),
        }


COUNTS: Counter[str] = Counter()


def _install_counters() -> None:
    """Count, without changing behaviour, two per-message costs of the peers: signature checks of received
    statements (those that got past gossip's duplicate filter) and Ping messages sent on quiet links. Each is
    skipped quietly if p2pnode's layout changed."""
    import p2pnode.net.gossip as gossip_module
    from p2pnode.net.transport import PeerLink

    if hasattr(gossip_module, "open_envelope"):
        original_open = gossip_module.open_envelope

        def counting_open(*a, **kw):  # noqa: ANN002, ANN003, ANN202
            COUNTS["verify"] += 1
            return original_open(*a, **kw)

        gossip_module.open_envelope = counting_open
    if hasattr(PeerLink, "send_nowait"):
        original_send = PeerLink.send_nowait

        def counting_send(self, message, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
            if type(message).__name__ == "Ping":
                COUNTS["ping"] += 1
            return original_send(self, message, *a, **kw)

        PeerLink.send_nowait = counting_send


def worker_entry(args: argparse.Namespace) -> None:
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format=f"%(asctime)s {args.worker_name} %(levelname)s %(name)s: %(message)s")
    _install_counters()
    # Control replies use the original stdout; anything else printed to stdout lands on stderr instead.
    control_fd = os.dup(1)
    os.dup2(2, 1)
    worker = Worker(LineChannel(trio.lowlevel.FdStream(os.dup(0)), trio.lowlevel.FdStream(control_fd)),
                    args.worker_name)
    overlay_log = logging.getLogger("p2pnode.net")  # overlay and gossip log their state changes below it
    overlay_log.setLevel(min(logging.INFO, logging.getLevelName(args.log_level)))
    overlay_log.addHandler(worker.counter)
    for handler in logging.getLogger().handlers:
        handler.setLevel(args.log_level)
    try:
        trio.run(worker.main)
    except BaseException as exc:  # noqa: BLE001 - Ctrl-C, or the coordinator vanished: end quietly
        leaves = list(_leaves(exc))
        if any(isinstance(e, KeyboardInterrupt) for e in leaves):
            sys.exit(130)
        if leaves and all(isinstance(e, (trio.BrokenResourceError, trio.ClosedResourceError, BrokenPipeError))
                          for e in leaves):
            sys.exit(1)
        raise


# =============================================================================================================
# coordinator
# =============================================================================================================


class WorkerError(RuntimeError):
    pass


class WorkerProcess:
    """One worker process as seen from the coordinator: request/reply by id, plus a shared board of events."""

    def __init__(self, name: str, process: trio.Process, board: Board) -> None:
        self.name = name
        self.process = process
        self.board = board
        self.channel = LineChannel(process.stdout, process.stdin)
        self._next_id = 0
        self._pending: dict[int, tuple[trio.Event, list[dict[str, Any]]]] = {}
        self.expect_exit = False
        self.closed = False  # the control channel reached its end
        self.peers: list[str] = []
        self.urls: list[str] = []

    @classmethod
    async def spawn(
        cls, name: str, board: Board, nursery: trio.Nursery, log_level: str
    ) -> WorkerProcess:
        args = [sys.executable, str(Path(__file__).resolve()), "--worker", "--worker-name", name,
                "--log-level", log_level]
        process = await trio.lowlevel.open_process(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        worker = cls(name, process, board)
        nursery.start_soon(worker._read)
        return worker

    async def _read(self) -> None:
        while True:
            message = await self.channel.get()
            if message is None:
                break
            if "id" in message:
                event, box = self._pending.pop(message["id"])
                box.append(message)
                event.set()
            else:
                self.board.post(self.name, message)
        self.closed = True
        for event, box in self._pending.values():  # no reply will come now
            box.append({"ok": False, "error": "the worker exited"})
            event.set()
        if not self.expect_exit:
            with trio.move_on_after(2):
                await self.process.wait()
            raise WorkerError(f"worker {self.name} (pid {self.process.pid}) closed its control channel "
                              f"unexpectedly (exit status {self.process.returncode})")

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        if self.closed:
            raise WorkerError(f"worker {self.name}: {op}: the worker exited")
        self._next_id += 1
        event, box = trio.Event(), []
        self._pending[self._next_id] = (event, box)
        await self.channel.put({"id": self._next_id, "op": op, **fields})
        await event.wait()
        reply = box[0]
        if not reply["ok"]:
            raise WorkerError(f"worker {self.name}: {op} failed: {reply.get('error')}")
        return reply

    async def quit(self, grace: float = 5.0) -> None:
        self.expect_exit = True
        if self.process.returncode is None:
            with trio.move_on_after(grace):
                try:
                    await self.call("quit")
                except (trio.BrokenResourceError, trio.ClosedResourceError, WorkerError):
                    pass  # already gone
                await self.process.wait()
        await self.reap()

    def sigkill(self) -> None:
        self.expect_exit = True
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)

    async def reap(self) -> None:
        self.expect_exit = True
        if self.process.returncode is None:
            self.process.kill()
        with trio.CancelScope(shield=True):
            await self.process.wait()


class Board:
    """Unsolicited events from all workers."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._changed = trio.Event()

    def post(self, source: str, event: dict[str, Any]) -> None:
        self.events.append((source, event))
        self._changed.set()
        self._changed = trio.Event()

    def matching(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e["event"] == kind and all(e.get(k) == v for k, v in fields.items())]

    async def changed(self) -> None:
        await self._changed.wait()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.overrides = dict(args.set)
        self.board = Board()
        self.workers: list[WorkerProcess] = []
        self.extra: list[WorkerProcess] = []  # joiner/victim processes
        self.t_origin = time.monotonic()
        self.rng = random.Random(args.seed)
        self.results: dict[str, Any] = {"join": [], "failure": [], "join_p50": [], "failure_p50": []}
        self.victims: list[str] = []
        self.notes: list[str] = []
        self._wid = 0
        self.last_stragglers: list[dict[str, Any]] = []
        self.monitor_scope = trio.CancelScope()
        self.cpu = CpuMeter(self)
        self.cpu_phases: dict[str, tuple[float, float, float]] = {}

    def progress(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t_origin:7.1f}s] {text}", file=sys.stderr, flush=True)

    # ---- helpers --------------------------------------------------------------------------------------------

    async def all_call(self, workers: list[WorkerProcess], op: str, **fields: Any) -> list[dict[str, Any]]:
        replies: list[dict[str, Any] | None] = [None] * len(workers)

        async def one(i: int, worker: WorkerProcess) -> None:
            replies[i] = await worker.call(op, **fields)

        async with trio.open_nursery() as nursery:
            for i, worker in enumerate(workers):
                nursery.start_soon(one, i, worker)
        return replies  # type: ignore[return-value]

    async def snapshot(self, reset: bool = False, since: float | None = None) -> list[dict[str, Any]]:
        """Statistics of every base peer; loop lags since the last reset, or since ``since`` (monotonic)."""
        exclude = [short_id(v) for v in self.victims]
        snaps = await self.all_call(self.workers, "stats", reset=reset, exclude=exclude, since=since)
        return snaps

    @staticmethod
    def nodes(snapshots: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [node for snap in snapshots for node in snap["nodes"]]

    async def watch(self, peer: str, state: MemberState, timeout: float) -> int:
        """Arm watchers on every base worker; returns the watch id."""
        self._wid += 1
        await self.all_call(self.workers, "watch", wid=self._wid, peer=peer, state=str(state), timeout=timeout)
        return self._wid

    async def collect(self, wid: int, what: str, since: float) -> tuple[list[float], int]:
        """Wait for every base worker's "watched" event; returns (seen times, number of peers that never saw it)."""
        last_print = time.monotonic()
        while len(self.board.matching("watched", wid=wid)) < len(self.workers):
            with trio.move_on_after(1.0):
                await self.board.changed()
            if time.monotonic() - last_print >= 2.0:
                last_print = time.monotonic()
                done = len(self.board.matching("watched", wid=wid))
                self.progress(f"  {what}: waiting, {done}/{len(self.workers)} workers done, "
                              f"{time.monotonic() - since:.1f} s elapsed")
        events = self.board.matching("watched", wid=wid)
        times = [t for e in events for t in e["times"]]
        late = sum(len(e["late"]) for e in events)
        detail = [d for e in events for d in e["detail"]]
        stragglers = [d for d in detail if d["t"] is None]
        if not stragglers and detail:
            stragglers = [max(detail, key=lambda d: d["t"])]
        self.last_stragglers = stragglers
        return times, late

    # ---- phases ---------------------------------------------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            try:
                await self._run(nursery)
            finally:
                self.monitor_scope.cancel()  # before its snapshots can meet workers that are quitting
                with trio.CancelScope(shield=True):
                    await self.shutdown()
                nursery.cancel_scope.cancel()

    async def _run(self, nursery: trio.Nursery) -> None:
        args = self.args
        n, k = args.peers, min(args.processes, args.peers)
        give_up = time.monotonic() + args.wait_idle
        while True:
            before = self.cpu.sample()
            await trio.sleep(2.0)
            self.cpu_phases["before start (idle)"] = usage = self.cpu.between(before, self.cpu.sample())
            if usage[2] <= 0.15:
                break
            if time.monotonic() >= give_up:
                self.progress(f"WARNING: other processes already keep {usage[2]:.2f} of {os.cpu_count()} cores busy")
                break
            self.progress(f"waiting for the machine to go idle: other processes use {usage[2]:.2f} cores "
                          f"(--wait-idle, {give_up - time.monotonic():.0f} s left)")
        self.progress(f"spawning {k} worker processes for {n} peers "
                      f"({', '.join(f'{a}={b}' for a, b in self.overrides.items()) or 'default configs'})")
        for i in range(k):
            self.workers.append(
                await WorkerProcess.spawn(f"w{i}", self.board, nursery, args.log_level)
            )
        shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
        replies = await self.all_call_each(lambda i, w: w.call("prepare", count=shares[i]))
        for worker, reply in zip(self.workers, replies):
            worker.peers = reply["peers"]
        self.progress(f"workers ready (pids {', '.join(str(r['pid']) for r in replies)}), peers per worker {shares}")

        await self.phase_mesh(shares)
        nursery.start_soon(self.monitor)
        await self.phase_traffic()
        cpu_before = self.cpu.sample()
        for round_no in range(1, args.rounds + 1):
            await self.phase_join_and_fail(nursery, round_no)
        if args.rounds:
            self.cpu_phases["join/failure rounds"] = self.cpu.between(cpu_before, self.cpu.sample())

    async def monitor(self, every: float = 5.0) -> None:
        """From mesh formation on, say so whenever live peers change state (suspicions, lost links) or the event
        loops run late: such episodes explain outliers in the measurements."""
        with self.monitor_scope:
            await self._monitor(every)

    async def _monitor(self, every: float) -> None:
        last, last_cpu = await self.snapshot(since=time.monotonic()), self.cpu.sample()
        while True:
            await trio.sleep(every)
            since = time.monotonic() - every
            now, now_cpu = await self.snapshot(since=since), self.cpu.sample()
            changes = _sum_transitions(last, now)
            lag = max(x["lag_max"] for x in now)
            if changes or lag > 0.5:
                _, ours, others = self.cpu.between(last_cpu, now_cpu)
                self.progress(f"  (last {every:.0f} s: live peers changed state: {_fmt_transitions(changes)}; "
                              f"loop lag up to {1000 * lag:.0f} ms; CPU {ours:.2f} cores ours, {others:.2f} others)")
            last, last_cpu = now, now_cpu

    async def all_call_each(self, fn) -> list[dict[str, Any]]:  # noqa: ANN001
        replies: list[dict[str, Any] | None] = [None] * len(self.workers)

        async def one(i: int, worker: WorkerProcess) -> None:
            replies[i] = await fn(i, worker)

        async with trio.open_nursery() as nursery:
            for i, worker in enumerate(self.workers):
                nursery.start_soon(one, i, worker)
        return replies  # type: ignore[return-value]

    async def phase_mesh(self, shares: list[int]) -> None:
        args, n = self.args, self.args.peers
        cpu_before = self.cpu.sample()
        seed_reply = await self.workers[0].call("start", count=1, index=0, seeds=[], mesh_n=n,
                                                overrides=self.overrides)
        seed = seed_reply["started"][0]
        self.workers[0].urls.append(seed["url"])
        self.progress(f"seed {short_id(seed['peer'])} listening at {seed['url']}; starting {n - 1} joiners"
                      + (f", spread evenly over {args.stagger:.0f} s" if args.stagger else " at once"))
        indexes = [sum(shares[:i]) for i in range(len(shares))]
        # Joiner number j (1..n-1) starts j/(n-1) of the way into the stagger; a worker hosts joiners k, k+K, ...
        # so that every worker starts its peers all through the stagger.
        delays: list[list[float]] = [[] for _ in self.workers]
        for j in range(1, n):
            delays[j % len(self.workers)].append(args.stagger * j / (n - 1))
        counts = [len(d) for d in delays]
        replies = await self.all_call_each(
            lambda i, w: w.call("start", count=counts[i], index=indexes[i] + (i == 0), seeds=[seed["url"]],
                                mesh_n=n, overrides=self.overrides, delays=delays[i])
        )
        t0 = max(s["t_start"] for r in replies for s in r["started"])
        for worker, reply in zip(self.workers, replies):
            worker.urls.extend(s["url"] for s in reply["started"])
        self.progress(f"all {n} peers listening {t0 - seed['t_start']:.2f} s after the seed; waiting for the full mesh")

        deadline = time.monotonic() + args.mesh_timeout
        while len(self.board.matching("mesh")) < n and time.monotonic() < deadline:
            with trio.move_on_after(min(2.0, max(0.0, deadline - time.monotonic()))):
                while len(self.board.matching("mesh")) < n:
                    await self.board.changed()
            nodes = self.nodes(await self.snapshot())
            self.progress(f"  mesh: {len(self.board.matching('mesh'))}/{n} peers see all others ALIVE; "
                          f"alive min {min(x['alive'] for x in nodes)}/{n - 1}, "
                          f"links mean {statistics.mean(x['links'] for x in nodes):.1f}, "
                          f"{time.monotonic() - t0:.1f} s")
        self.cpu_phases["mesh formation"] = self.cpu.between(cpu_before, self.cpu.sample())
        times = sorted(e["t"] - t0 for e in self.board.matching("mesh"))
        if len(times) < n:
            await self.all_call(self.workers, "stop_mesh")
            self.notes.append(f"mesh did not form within {args.mesh_timeout:g} s: {len(times)}/{n} peers complete")
            self.results["mesh"] = None
        else:
            self.results["mesh"] = (statistics.median(times), times[-1])
        if len(times) == n:
            self.progress(f"mesh formed: all peers complete at {times[-1]:.2f} s "
                          f"(half at {statistics.median(times):.2f} s)")
        else:
            self.progress(f"mesh NOT formed after {args.mesh_timeout:g} s ({len(times)}/{n} peers complete); "
                          f"measuring anyway")

    async def phase_traffic(self) -> None:
        args = self.args
        self.progress(f"settling {args.settle:.0f} s before the traffic window")
        await trio.sleep(args.settle)
        if args.profile:
            await self.all_call(self.workers, "profile")
        cpu_before = self.cpu.sample()
        before = await self.snapshot(reset=True)
        self.progress(f"measuring gossip traffic for {args.window:.0f} s")
        step = max(1.0, args.window / 4)
        end = time.monotonic() + args.window
        last, last_cpu = before, cpu_before
        while time.monotonic() < end - 0.5:
            await trio.sleep(min(step, end - time.monotonic()))
            now, now_cpu = await self.snapshot(since=last_cpu[0]), self.cpu.sample()
            machine, ours, others = self.cpu.between(last_cpu, now_cpu)
            self.progress(f"  traffic window: {args.window - (end - time.monotonic()):.0f}/{args.window:.0f} s; "
                          f"loop lag up to {1000 * max(x['lag_max'] for x in now):.0f} ms; state changes "
                          f"{_fmt_transitions(_sum_transitions(last, now))}; CPU {ours:.2f} cores ours, "
                          f"{others:.2f} others")
            last, last_cpu = now, now_cpu
        after = await self.snapshot(reset=True)
        cpu_after = self.cpu.sample()
        self.cpu_phases["traffic window"] = self.cpu.between(cpu_before, cpu_after)
        if args.profile:
            Path(args.profile).mkdir(parents=True, exist_ok=True)
            await self.all_call_each(
                lambda i, w: w.call("profile", path=str(Path(args.profile).resolve() / f"{w.name}.prof")))
            self.notes.append(f"CPU profiles of the workers during the traffic window (cProfile adds overhead) "
                              f"in {args.profile}/")
        sent, received = [], []
        for b, a in zip(before, after):
            dt = a["t"] - b["t"]
            for nb, na in zip(b["nodes"], a["nodes"]):
                sent.append((na["sent"] - nb["sent"]) / dt / KB)
                received.append((na["received"] - nb["received"]) / dt / KB)
        self.results["traffic"] = (statistics.median(sent), max(sent), statistics.mean(sent), statistics.mean(received))
        cpu = [(a["cpu"] - b["cpu"]) / (a["t"] - b["t"]) * 100 for b, a in zip(before, after)]
        self.results["traffic_cpu"] = (cpu, [a["lag_p50"] for a in after], [a["lag_max"] for a in after])
        nodes = self.nodes(after)
        self.results["traffic_state"] = (
            min(x["alive"] for x in nodes), statistics.mean(x["links"] for x in nodes),
            min(x["links"] for x in nodes), max(x["links"] for x in nodes),
        )
        self.results["traffic_transitions"] = _sum_transitions(before, after)
        per_node: dict[str, float] = {}
        for key in ("verify", "ping"):
            total = sum(a["counts"].get(key, 0) - b["counts"].get(key, 0) for b, a in zip(before, after))
            per_node[key] = total / len(sent) / args.window
        self.results["traffic_counts"] = per_node
        self.progress(f"traffic: median {statistics.median(sent):.1f} KB/s, max {max(sent):.1f} KB/s sent per node; "
                      f"worker CPU {', '.join(f'{c:.0f}%' for c in cpu)}")

    async def phase_join_and_fail(self, nursery: trio.Nursery, round_no: int) -> None:
        args = self.args
        tag = f"round {round_no}/{args.rounds}"
        victim = await WorkerProcess.spawn(f"j{round_no}", self.board, nursery, args.log_level)
        self.extra.append(victim)
        peer = (await victim.call("prepare", count=1))["peers"][0]
        self.victims.append(peer)
        await trio.sleep(1.0)  # let the new interpreter's start-up CPU burst pass
        before = await self.snapshot(reset=True)

        # -- join: through a random existing peer --
        entry_worker = self.rng.choice(self.workers)
        entry = self.rng.choice(entry_worker.urls)
        wid = await self.watch(peer, MemberState.ALIVE, args.timeout)
        self.progress(f"{tag}: peer {short_id(peer)} (pid {victim.process.pid}) joins through {entry}")
        reply = await victim.call("start", count=1, index=args.peers + round_no - 1, seeds=[entry],
                                  overrides=self.overrides)
        t_start = reply["started"][0]["t_start"]
        times, late = await self.collect(wid, "join", t_start)
        self._record("join", tag, [t - t_start for t in times], late, JOIN_TARGET)

        await trio.sleep(args.round_settle)

        # -- failure: SIGKILL the peer's process --
        vstats = await victim.call("stats")
        links = vstats["nodes"][0]["links"]
        wid = await self.watch(peer, MemberState.OFFLINE, args.timeout)
        t_kill = time.monotonic()
        victim.sigkill()
        self.progress(f"{tag}: SIGKILLed peer {short_id(peer)} (it had {links} links)")
        times, late = await self.collect(wid, "failure", t_kill)
        await victim.reap()
        self._record("failure", tag, [t - t_kill for t in times], late, FAILURE_TARGET)
        after = await self.snapshot(reset=True)
        self.results.setdefault("round_lag_max", []).append(max(a["lag_max"] for a in after))
        self.results.setdefault("round_transitions", []).append(_sum_transitions(before, after))
        self.results.setdefault("victim_links", []).append(links)
        await trio.sleep(args.round_settle)

    def _record(self, kind: str, tag: str, delays: list[float], late: int, target: float) -> None:
        delays.sort()
        about = "; ".join(f"{d['links']} links{', linked to it' if d['linked'] else ''}, holds it {d['state']}"
                          for d in self.last_stragglers[:5])
        if late:
            worst = math.inf
            self.notes.append(f"{tag} {kind}: {late} peers did not see it within {self.args.timeout:.0f} s "
                              f"({about})")
        else:
            worst = delays[-1]
            if worst > target:
                self.notes.append(f"{tag} {kind}: the last peer saw it after {worst:.2f} s, half of them after "
                                  f"{delays[len(delays) // 2]:.2f} s (the last one: {about})")
        self.results[kind].append(worst)
        self.results[f"{kind}_p50"].append(delays[len(delays) // 2] if delays else math.inf)
        verdict = "ok" if worst <= target else "MISSED"
        self.progress(f"  {kind}: all {len(delays)} peers after {worst:.3f} s (half after "
                      f"{self.results[f'{kind}_p50'][-1]:.3f} s; target {target:.0f} s: {verdict})")

    async def shutdown(self) -> None:
        everyone = self.workers + self.extra
        if not everyone:
            return
        self.progress(f"shutting down {len(everyone)} processes")
        async with trio.open_nursery() as nursery:
            for worker in everyone:
                nursery.start_soon(worker.quit)

    # ---- report ---------------------------------------------------------------------------------------------

    def report(self, wall: float) -> str:
        args, r = self.args, self.results
        refresh = build_sections(self.overrides)["gossip"].refresh_interval
        rows = []
        start = f"peers started over {args.stagger:.0f} s" if args.stagger else "peers started at once"
        label = (f"mesh formation: every peer sees all {args.peers - 1} others ALIVE, from the last start "
                 f"({start}; median = half the peers done)")
        if r.get("mesh"):
            rows.append((label, "report", _s(r["mesh"][0]), _s(r["mesh"][1]), "-"))
        else:
            rows.append((label, "report", "timeout", "timeout", "-"))
        for kind, label, target in (("join", "join: new peer ALIVE at all others", JOIN_TARGET),
                                    ("failure", "failure: SIGKILLed peer OFFLINE at all others", FAILURE_TARGET)):
            values = r[kind]
            if values:
                rows.append((f"{label} ({len(values)} rounds)", f"<= {target:.0f} s", _s(statistics.median(values)),
                             _s(max(values)), _yes(max(values) <= target)))
        if "traffic" in r:
            median, worst, mean, received = r["traffic"]
            rows.append((f"gossip traffic sent per node, {args.window:.0f} s window (median/max over nodes)",
                         f"<= {TRAFFIC_TARGET:.0f} KB/s", f"{median:.1f} KB/s", f"{worst:.1f} KB/s",
                         _yes(worst <= TRAFFIC_TARGET)))
        lines = ["| what | target | median | max | pass |", "|---|---|---|---|---|"]
        lines += [f"| {' | '.join(row)} |" for row in rows]
        lines.append("")
        lines.append(f"Transport: real loopback websockets (trio-websocket on 127.0.0.1, port 0), {args.peers} peers "
                     f"in {len(self.workers)} worker processes + 1 process per join/failure round, "
                     f"{os.cpu_count()} cores. pass = max within target.")
        config = ", ".join(f"{a}={b}" for a, b in self.overrides.items()) or "shipped defaults"
        lines.append(f"Config: {config}. Wall time {wall:.0f} s.")
        if "traffic" in r:
            lines.append(f"Traffic: mean {r['traffic'][2]:.1f} KB/s sent, {r['traffic'][3]:.1f} KB/s received per node "
                         f"(1 KB = 1024 B; overlay messages incl. Ping/Pong, without websocket framing and "
                         f"handshakes).")
            cpu, lag50, lagmax = r["traffic_cpu"]
            alive_min, links_mean, links_min, links_max = r["traffic_state"]
            lines.append(f"During the traffic window: worker CPU {' / '.join(f'{c:.0f}%' for c in cpu)} "
                         f"(sum {sum(cpu):.0f}% of {100 * (os.cpu_count() or 1)}%); "
                         f"event-loop lag p50 {1000 * max(lag50):.0f} ms, max {1000 * max(lagmax):.0f} ms; "
                         f"links per node {links_min}-{links_max} (mean {links_mean:.1f}); "
                         f"fewest ALIVE seen by a node {alive_min}/{args.peers - 1}; "
                         f"state changes of live peers: {_fmt_transitions(r['traffic_transitions'])}; "
                         f"per node per second: {r['traffic_counts']['verify']:.0f} signature checks of received "
                         f"statements past the duplicate filter (a refresh-only network issues "
                         f"{(args.peers - 1) / refresh:.1f} new ones), {r['traffic_counts']['ping']:.1f} pings sent.")
        if r["join"]:
            lines.append(f"Per round (max over peers / half the peers): join "
                         f"{', '.join(f'{a:.2f}/{b:.2f} s' for a, b in zip(r['join'], r['join_p50']))}; "
                         f"failure {', '.join(f'{a:.2f}/{b:.2f} s' for a, b in zip(r['failure'], r['failure_p50']))}; "
                         f"victim links {r.get('victim_links')}; worst loop lag per round "
                         f"{', '.join(f'{1000 * x:.0f} ms' for x in r.get('round_lag_max', []))}; "
                         f"state changes of live peers: "
                         f"{'; '.join(_fmt_transitions(t) for t in r.get('round_transitions', []))}.")
        if "traffic" in r and args.window < refresh:
            lines.append(f"Note: the traffic window ({args.window:.0f} s) is shorter than gossip.refresh_interval "
                         f"({refresh:.0f} s), and record refreshes are most of the steady-state traffic: this "
                         f"figure undercounts; use --window {2 * refresh:.0f} or more.")
        if self.cpu_phases:
            lines.append(f"CPU, cores busy on average (of {os.cpu_count()}): " + "; ".join(
                f"{phase}: machine {m:.2f} = this benchmark {o:.2f} + other processes {x:.2f}"
                for phase, (m, o, x) in self.cpu_phases.items()) + ".")
            foreign = max(x for _, _, x in self.cpu_phases.values())
            if foreign > 0.15:
                lines.append(f"WARNING: other processes kept up to {foreign:.2f} cores busy during this run; "
                             f"the peers had that much less CPU, and the timings suffer from it.")
        lines += [f"Note: {note}" for note in self.notes]
        return "\n".join(lines)


def _sum_transitions(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for b, a in zip(before, after):
        for state, count in a["transitions"].items():
            total[state] += count - b["transitions"].get(state, 0)
    return {k: v for k, v in total.items() if v}


def _fmt_transitions(t: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(t.items())) or "none"


class CpuMeter:
    """Machine-wide busy CPU versus the CPU of this benchmark's own processes, so that load from anything else on
    the machine (which skews every timing here) is visible in the report."""

    def __init__(self, bench: Bench) -> None:
        import psutil

        self._psutil = psutil
        self._bench = bench
        self._last: dict[int, float] = {}  # pid -> CPU seconds last seen (kept after the process is gone)

    def sample(self) -> tuple[float, float, float]:
        """(monotonic time, busy CPU seconds of the machine, CPU seconds of our processes)."""
        times = self._psutil.cpu_times()
        busy = sum(getattr(times, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))
        own = time.process_time()
        for worker in self._bench.workers + self._bench.extra:
            pid = worker.process.pid
            if worker.process.returncode is None:
                try:
                    cpu = self._psutil.Process(pid).cpu_times()
                    self._last[pid] = cpu.user + cpu.system
                except self._psutil.Error:
                    pass
        return time.monotonic(), busy, own + sum(self._last.values())

    @staticmethod
    def between(a: tuple[float, float, float], b: tuple[float, float, float]) -> tuple[float, float, float]:
        """(machine, ours, others) in cores busy on average between two samples."""
        dt = b[0] - a[0]
        machine, ours = (b[1] - a[1]) / dt, (b[2] - a[2]) / dt
        return machine, ours, max(0.0, machine - ours)


def _s(value: float) -> str:
    return "timeout" if math.isinf(value) else f"{value:.2f} s"


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _leaves(exc: BaseException):  # noqa: ANN202
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=None, help="peers in the network (default 100; --quick: 20)")
    parser.add_argument("--processes", type=int, default=4, help="worker processes hosting the peers (default 4)")
    parser.add_argument("--rounds", type=int, default=None, help="join/failure rounds (default 3; --quick: 1)")
    parser.add_argument("--window", type=float, default=None,
                        help="traffic window, seconds (default: two gossip.refresh_interval, 30 s; --quick: 5)")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds to wait after the mesh formed before measuring traffic (default 5; --quick: 2)")
    parser.add_argument("--round-settle", type=float, default=3.0,
                        help="seconds between a join and the kill, and after a kill (default 3)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="give up on one join or failure measurement after this many seconds (default 30)")
    parser.add_argument("--mesh-timeout", type=float, default=180.0,
                        help="give up on mesh formation after this many seconds (default 180)")
    parser.add_argument("--stagger", type=float, default=0.0,
                        help="start the joiners spread evenly over this many seconds instead of all at once "
                             "(default 0); mesh formation is timed from the last one's start")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                        help="before starting, wait up to this long for other processes to leave the CPUs idle "
                             "(default 0: just warn)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 peers, 1 round, 5 s window")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KNOB=VALUE",
                        help="override a config knob, e.g. gossip.fanout=4, peers.probe_interval=0.5, "
                             "membership.suspicion_timeout=1 (repeatable)")
    parser.add_argument("--seed", type=int, default=None, help="seed for the choice of entry peers")
    parser.add_argument("--log-level", default="WARNING", help="log level of the peers (stderr; default WARNING)")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="profile the workers' CPU during the traffic window into DIR/<worker>.prof (cProfile; "
                             "slows the peers down)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-name", default="w", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return args
    pairs = []
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set wants SECTION.KNOB=VALUE, got {item!r}")
        pairs.append((key.strip(), value.strip()))
    try:
        refresh = build_sections(dict(pairs))["gossip"].refresh_interval
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    args.set = pairs
    quick = args.quick
    args.peers = args.peers if args.peers is not None else (20 if quick else 100)
    args.rounds = args.rounds if args.rounds is not None else (1 if quick else 3)
    args.window = args.window if args.window is not None else (5.0 if quick else 2 * refresh)
    args.settle = args.settle if args.settle is not None else (2.0 if quick else 5.0)
    args.log_level = args.log_level.upper()
    if args.peers < 2 or args.processes < 1 or args.rounds < 0 or args.window <= 0 or args.stagger < 0:
        parser.error("need --peers >= 2, --processes >= 1, --rounds >= 0, --window > 0, --stagger >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_entry(args)
        return 0
    bench = Bench(args)
    started = time.monotonic()
    try:
        trio.run(bench.run)
    except BaseException as exc:  # noqa: BLE001 - sorted below; anything unexpected is re-raised
        leaves = list(_leaves(exc))
        if any(isinstance(e, KeyboardInterrupt) for e in leaves):
            print("interrupted", file=sys.stderr)
            return 130
        if leaves and all(isinstance(e, WorkerError) for e in leaves):
            for e in leaves:
                print(f"error: {e}", file=sys.stderr)
            return 1
        raise
    wall = time.monotonic() - started
    print(bench.report(wall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
