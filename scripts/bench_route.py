"""Throughput of `route` mode: N equal backends behind the network vs. N times one backend called directly
(target >= 0.9 x N, N = 1, 2, 4, 8); and throughput through one gateway at 16 concurrent requests vs. the backend
directly (target >= 0.8).

    python scripts/bench_route.py [--nodes 1,2,4,8] [--slots 2] [--service-ms 50] [--duration 8]

Backends are the documented-API fake Ollama (p2pnode/testing/fake_ollama.py) with finite capacity: ``--slots``
generations at once, each holding its slot ``--service-ms`` before it sends its 9-word answer; requests beyond
the slots wait in line. One backend can therefore answer at most slots / service time requests a second, and the
baseline measures what it really answers, called directly at 4 x slots requests in flight.

Layout (nodes as subprocesses): every node is a real ``python -m p2pnode run`` process (--no-mdns, 127.0.0.1
only, its own data dir and its own backend); node 0 is the seed the others join through, and every request goes
to node 0's gateway (Ollama's /api/chat, not streamed, ``"distributed": {"strategy": "route"}``) with
4 x N x slots requests in flight, from N httpx clients of 4 x slots connections each: the baseline's client, N
times. Each fake backend runs in a process of its own (this script with ``--serve-fakes``), the clients in this
one. In-process, eight nodes would share one core and one event loop, which would measure the loop, not the
routing.

Everything still shares this machine's CPUs, so each row also says how many cores the clients, node 0 (the
coordinator), the other nodes and the backends kept busy, what the whole machine did (other work included), and
the CPU time each routed answer cost in each part. Every answer crosses four Python processes here (client,
coordinator, worker, backend): the sum of those costs times the request rate must fit in the machine's cores,
or the ratio at large N measures the machine rather than the routing.

The gateway's per-client limits and the job admission's per-peer rate are lifted through each node's TOML
config, whatever their defaults: this is a capacity benchmark, not a policy one.

The gateway row: N = 1, a backend without a slot limit (answers take ``--hop-service-ms``, 41 ms as in the
ARCHITECTURE targets' reference run), 16 requests in flight through the node's gateway vs. directly.

The table (Markdown) goes to stdout, progress to stderr. Benchmarks measure; the exit status does not judge.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from p2pnode import config as node_config
from p2pnode.gateway.app import serve_gateway
from p2pnode.testing.fake_ollama import FakeModel, FakeOllama, Faults

MODEL = "tiny:1b"
MESSAGES = [{"role": "user", "content": "Say the sentence."}]
ROUTE_TARGET = 0.9
HOP_TARGET = 0.8


# ---- the fake backends' process ------------------------------------------------------------------------------


class _WithStats:
    """A fake backend plus ``GET /bench/stats`` (its generation count), so the client can see the spread."""

    def __init__(self, fake: FakeOllama) -> None:
        self.fake = fake

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/bench/stats":
            fake = self.fake
            body = json.dumps({"generations": fake.generations, "active": fake.active, "queued": fake.queued}).encode()
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.fake(scope, receive, send)


async def serve_fakes(count: int, slots: int | None, service_ms: float) -> None:
    """Serve ``count`` fake backends on 127.0.0.1; print their URLs as one JSON line; run until stdin closes."""
    async with trio.open_nursery() as nursery:
        urls = []
        for _ in range(count):
            fake = FakeOllama(models={MODEL: FakeModel()}, faults=Faults(first_token=service_ms / 1000), slots=slots)
            urls.append(await nursery.start(serve_gateway, _WithStats(fake), "127.0.0.1", 0))
        print(json.dumps(urls), flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        while await stdin.receive_some():  # the parent closes our stdin (or dies): we go too
            pass
        nursery.cancel_scope.cancel()


# ---- processes -------------------------------------------------------------------------------------------------

# A benchmark measures capacity, not policy: the gateway's per-client limits and the per-peer job rate are lifted,
# so that whatever their defaults become, they never decide these figures.
UNLIMITED = {
    "GatewayConfig": ("gateway", {"rate_per_minute": 1e9, "burst": 10**9, "max_concurrent": 10**9}),
    "JobsConfig": ("jobs", {"peer_rate_per_minute": 1e9, "peer_burst": 10**9, "max_remote_jobs": 10**6}),
}


def limits_toml() -> str:
    """The TOML tables that lift the limits this version of dcn has (older versions have none to lift)."""
    tables = []
    for kind, (table, values) in UNLIMITED.items():
        cls = getattr(node_config, kind, None)
        if cls is None or table not in {f.name for f in dataclasses.fields(node_config.NodeConfig)}:
            continue
        known = {f.name for f in dataclasses.fields(cls)}
        lines = [f"{key} = {value!r}" for key, value in values.items() if key in known]
        tables.append(f"[{table}]\n" + "\n".join(lines))
    return "\n\n".join(tables) + "\n"


async def spawn(command: list[str], **kwargs: Any) -> trio.Process:
    """Every child is stopped in a ``finally`` by whoever started it (the fake backends' process also leaves when
    its stdin closes, i.e. when this process dies)."""
    return await trio.lowlevel.open_process(command, **kwargs)


class Child:
    """A subprocess of this benchmark; :meth:`stop` ends it (SIGTERM, then SIGKILL after 5 s)."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process

    async def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            with trio.move_on_after(5):
                await self.process.wait()
            if self.process.poll() is None:
                self.process.kill()
                await self.process.wait()


async def start_fakes(count: int, slots: int | None, service_ms: float) -> tuple[Child, list[str]]:
    command = [
        sys.executable,
        __file__,
        "--serve-fakes",
        str(count),
        "--service-ms",
        str(service_ms),
        "--slots",
        str(slots or 0),
    ]
    child = Child(await spawn(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
    line = b""
    try:
        with trio.fail_after(20):
            while not line.endswith(b"\n"):
                chunk = await child.process.stdout.receive_some()
                if not chunk:
                    raise RuntimeError("the fake backends' process exited before it was ready")
                line += chunk
    except BaseException:
        with trio.CancelScope(shield=True):
            await child.stop()
        raise
    return child, json.loads(line)


async def start_backends(count: int, slots: int | None, service_ms: float) -> tuple[list[Child], list[str]]:
    """``count`` fake backends, each in a process of its own: one process serving all of them would share one
    event loop, and its lag would stretch every backend's service time under load (the baseline runs one)."""
    children: list[Child] = []
    urls: list[str] = []
    try:
        for _ in range(count):
            child, (url,) = await start_fakes(1, slots, service_ms)
            children.append(child)
            urls.append(url)
    except BaseException:
        await stop_all(children)
        raise
    return children, urls


async def stop_all(children: list[Child]) -> None:
    with trio.CancelScope(shield=True):
        for child in children:
            await child.stop()


async def start_node(
    nursery: trio.Nursery, children: list[Child], folder: Path, name: str, backend: str, seeds: list[str]
) -> dict[str, Any]:
    """A ``python -m p2pnode run`` subprocess, added to ``children`` at once (so the caller stops it whatever
    happens); returns its node.json once its "ready" line is logged."""
    data_dir = folder / name
    data_dir.mkdir()
    config_file = folder / f"{name}.toml"
    config_file.write_text(limits_toml())
    command = [
        sys.executable,
        "-m",
        "p2pnode",
        "run",
        "--config",
        str(config_file),
        "--data-dir",
        str(data_dir),
        "--name",
        name,
        "--user",
        "bench",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--no-mdns",
        "--backend",
        f"ollama={backend}",
    ]
    for seed in seeds:
        command += ["--seed", seed]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DCN_")}
    process = await spawn(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=environ,
        cwd=Path(__file__).resolve().parent.parent,
    )
    children.append(Child(process))
    ready = trio.Event()
    log: list[str] = []

    async def drain() -> None:  # read the log for as long as the process lives, so it never blocks on stderr
        buffer = b""
        async for chunk in process.stderr:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in map(bytes.decode, lines):
                log.append(line)
                if " ready: " in line:
                    ready.set()
                elif ready.is_set() and (" ERROR " in line or " WARNING " in line) and "OPEN NETWORK" not in line:
                    print(f"  [{name}] {line}", file=sys.stderr)
        ready.set()  # exited

    nursery.start_soon(drain)
    with trio.fail_after(30):
        await ready.wait()
    if process.poll() is not None:
        raise RuntimeError(f"node {name} exited before it was ready:\n" + "\n".join(log[-30:]))
    return json.loads((data_dir / "node.json").read_text())


# ---- load ----------------------------------------------------------------------------------------------------


async def offered_load(
    url: str, body: dict[str, Any], in_flight: int, duration: float, warmup: float, *, per_client: int
) -> tuple[float, int]:
    """Keep ``in_flight`` requests going for ``warmup + duration`` seconds, from clients of ``per_client``
    connections each; returns (answers per second in the measured window, requests that failed).

    Several small clients rather than one big one: httpx's connection pool does work per request that grows with
    its connections, and at 64 connections one client spent ~6 ms of CPU per request, more than the node it
    measured. ``per_client`` is the baseline's in-flight count, so the routed load is N copies of the direct one."""
    done = 0
    failed = 0
    start = trio.current_time()
    window = (start + warmup, start + warmup + duration)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done, failed
        while trio.current_time() < window[1]:
            try:
                response = await client.post(url, json=body)
                ok = response.status_code == 200 and "error" not in response.json()
            except httpx.HTTPError as exc:
                print(f"  request failed: {exc!r}", file=sys.stderr)
                ok = False
            now = trio.current_time()
            if not ok:
                failed += 1
            elif window[0] <= now <= window[1]:
                done += 1

    async def one_client(count: int) -> None:
        limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client, trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(worker, client)

    async with trio.open_nursery() as nursery:
        for first in range(0, in_flight, per_client):
            nursery.start_soon(one_client, min(per_client, in_flight - first))
    return done / duration, failed


class CpuMeter:
    """Cores kept busy between :meth:`start` and :meth:`stop`, per group of processes and for the whole machine
    (whose excess over the groups is other work sharing this machine)."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = {name: [psutil.Process(pid) for pid in pids] for name, pids in groups.items()}

    def _sample(self) -> tuple[float, dict[str, float], float]:
        used = {name: sum(sum(p.cpu_times()[:2]) for p in procs) for name, procs in self.groups.items()}
        machine = psutil.cpu_times()
        return time.monotonic(), used, machine.user + machine.system + machine.nice + machine.irq + machine.softirq

    def start(self) -> None:
        self._begin = self._sample()

    def stop(self) -> dict[str, float]:
        (t0, used0, machine0), (t1, used1, machine1) = self._begin, self._sample()
        busy = {name: (used1[name] - used0[name]) / (t1 - t0) for name in used0}
        busy["machine"] = (machine1 - machine0) / (t1 - t0)
        return busy


async def stats(urls: list[str]) -> list[int]:
    async with httpx.AsyncClient(timeout=10) as client:
        return [(await client.get(url + "/bench/stats")).json()["generations"] for url in urls]


async def wait_for_network(gateway: str, holders: int) -> None:
    """Until node 0's /api/tags lists the model on ``holders`` nodes."""
    async with httpx.AsyncClient(timeout=5) as client:
        with trio.fail_after(60):
            while True:
                models = (await client.get(gateway + "/api/tags")).json()["models"]
                if any(m["name"] == MODEL and len(m.get("nodes", ())) >= holders for m in models):
                    return
                await trio.sleep(0.1)  # another process: nothing to wait on but its answers


def direct_body() -> dict[str, Any]:
    return {"model": MODEL, "messages": MESSAGES, "stream": False}


def routed_body() -> dict[str, Any]:
    return {**direct_body(), "distributed": {"strategy": "route"}}


# ---- main ----------------------------------------------------------------------------------------------------


async def bench_route(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    slots = args.slots
    for n in args.nodes:
        print(f"N = {n}: starting {n} backend(s) and node(s)", file=sys.stderr)
        fakes, urls = await start_backends(n, slots, args.service_ms)
        try:
            per_backend = 4 * slots
            direct, direct_failed = await offered_load(
                urls[0] + "/api/chat", direct_body(), per_backend, args.duration, args.warmup, per_client=per_backend
            )
            before = await stats(urls)
            with tempfile.TemporaryDirectory() as tmp:
                async with trio.open_nursery() as nursery:  # the nodes' log readers end with their processes
                    children: list[Child] = []
                    try:
                        info = await start_node(nursery, children, Path(tmp), "n0", urls[0], [])
                        for i in range(1, n):
                            await start_node(nursery, children, Path(tmp), f"n{i}", urls[i], [info["peer_urls"][0]])
                        await wait_for_network(info["http_url"], n)
                        print(f"N = {n}: {n * per_backend} requests in flight for {args.duration} s", file=sys.stderr)
                        meter = CpuMeter({
                            "client": [os.getpid()],
                            "node 0": [children[0].process.pid],
                            "other nodes": [c.process.pid for c in children[1:]],
                            "backends": [c.process.pid for c in fakes],
                        })  # fmt: skip
                        meter.start()
                        routed, routed_failed = await offered_load(
                            info["http_url"] + "/api/chat",
                            routed_body(),
                            n * per_backend,
                            args.duration,
                            args.warmup,
                            per_client=per_backend,
                        )
                        cpu = meter.stop()
                    finally:
                        await stop_all(children)
            after = await stats(urls)
        finally:
            await stop_all(fakes)
        spread = [a - b for a, b in zip(after, before)]
        rows.append(
            {
                "n": n,
                "direct": direct,
                "routed": routed,
                "failed": direct_failed + routed_failed,
                "spread": spread,
                "cpu": cpu,
            }
        )
    return rows


async def bench_hop(args: argparse.Namespace) -> dict[str, Any]:
    print("gateway row: 1 node, backend without slot limit, 16 in flight", file=sys.stderr)
    fakes, urls = await start_backends(1, None, args.hop_service_ms)
    try:
        direct, direct_failed = await offered_load(
            urls[0] + "/api/chat", direct_body(), 16, args.duration, args.warmup, per_client=16
        )
        with tempfile.TemporaryDirectory() as tmp:
            async with trio.open_nursery() as nursery:
                children: list[Child] = []
                try:
                    info = await start_node(nursery, children, Path(tmp), "n0", urls[0], [])
                    await wait_for_network(info["http_url"], 1)
                    meter = CpuMeter({
                        "client": [os.getpid()], "node 0": [children[0].process.pid], "other nodes": [],
                        "backends": [fakes[0].process.pid],
                    })  # fmt: skip
                    meter.start()
                    routed, routed_failed = await offered_load(
                        info["http_url"] + "/api/chat", routed_body(), 16, args.duration, args.warmup, per_client=16
                    )
                    cpu = meter.stop()
                finally:
                    await stop_all(children)
    finally:
        await stop_all(fakes)
    return {"direct": direct, "routed": routed, "failed": direct_failed + routed_failed, "cpu": cpu}


async def main(args: argparse.Namespace) -> None:
    load_before = os.getloadavg()
    started = time.monotonic()
    rows = await bench_route(args)
    hop = None if args.no_hop else await bench_hop(args)
    capacity = args.slots / (args.service_ms / 1000)
    print(
        f"\nBackends: fake Ollama, {args.slots} slot(s) x {args.service_ms:g} ms a reply (at most {capacity:.0f} "
        f"req/s each); {4 * args.slots} requests in flight per backend; {args.duration:g} s measured after "
        f"{args.warmup:g} s warm-up; nodes are `python -m p2pnode run` subprocesses.\n"
    )
    print(
        "| N | direct req/s x N | routed req/s | ratio | target | pass | answers per backend | failed | "
        "CPU cores busy while routed: client / node 0 / other nodes / backends / whole machine | "
        "CPU ms per routed answer: client / node 0 / other nodes / backends |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        want = row["direct"] * row["n"]
        ratio = row["routed"] / want if want else 0.0
        print(
            f"| {row['n']} | {want:.1f} | {row['routed']:.1f} | {ratio:.2f} | >= {ROUTE_TARGET} | "
            f"{'yes' if ratio >= ROUTE_TARGET else 'no'} | {'/'.join(map(str, row['spread']))} | {row['failed']} | "
            f"{cpu_text(row['cpu'])} | {per_answer(row['cpu'], row['routed'])} |"
        )
    if hop is not None:
        ratio = hop["routed"] / hop["direct"] if hop["direct"] else 0.0
        print(
            f"\n| 16 in flight, 1 node, backend {args.hop_service_ms:g} ms a reply, no slot limit | direct req/s | "
            "through the gateway | ratio | target | pass | failed | CPU cores busy (as above) | CPU ms per answer |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        print(
            f"| gateway vs. backend | {hop['direct']:.1f} | {hop['routed']:.1f} | {ratio:.2f} | >= {HOP_TARGET} | "
            f"{'yes' if ratio >= HOP_TARGET else 'no'} | {hop['failed']} | {cpu_text(hop['cpu'])} | "
            f"{per_answer(hop['cpu'], hop['routed'])} |"
        )
    load_after = os.getloadavg()
    print(
        f"\nMachine: {os.cpu_count()} CPUs; load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/"
        f"{load_before[2]:.2f}, after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}; "
        f"wall time {time.monotonic() - started:.0f} s."
    )


def cpu_text(cpu: dict[str, float]) -> str:
    return " / ".join(f"{cpu[name]:.2f}" for name in ("client", "node 0", "other nodes", "backends", "machine"))


def per_answer(cpu: dict[str, float], rate: float) -> str:
    names = ("client", "node 0", "other nodes", "backends")
    return " / ".join(f"{cpu[name] * 1000 / rate:.1f}" if rate else "-" for name in names)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8])
    parser.add_argument("--slots", type=int, default=2, help="generations each backend runs at once (>= 1)")
    parser.add_argument("--service-ms", type=float, default=50.0, help="time each generation holds its slot")
    parser.add_argument("--hop-service-ms", type=float, default=41.0, help="reply time in the gateway row")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per row")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    parser.add_argument("--no-hop", action="store_true", help="skip the 16-in-flight gateway row")
    parser.add_argument("--serve-fakes", type=int, metavar="COUNT", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve_fakes:
        trio.run(serve_fakes, arguments.serve_fakes, arguments.slots or None, arguments.service_ms)
    else:
        trio.run(main, arguments)
