"""What a gateway hop costs: one routed request through this node's gateway (local backend) and through a
remote peer's gateway (a remote job over the peer link), against calling the backend directly. Backend: a real
llama.cpp server (xllamacpp) on the tiny deterministic model. Targets: p50 <= 2 ms, p99 <= 5 ms added.
Also times `best` selection for 8 candidates of 2 KB (target <= 10 ms).

    python scripts/bench_gateway.py [--requests 200]

Requests alternate between the three paths, so all see the same machine load. Nodes run in this process."""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from p2pnode.backends.llama_process import llama_server  # noqa: E402
from p2pnode.config import BackendSpec, NodeConfig, OverlayConfig  # noqa: E402
from p2pnode.core import combine  # noqa: E402
from p2pnode.core.identity import Identity  # noqa: E402
from p2pnode.node import Node  # noqa: E402
from p2pnode.testing.tiny_gguf import build_tiny_gguf  # noqa: E402

MODEL = "tiny:1b"
MESSAGES = [{"role": "user", "content": "Say it."}]


async def start_node(nursery: trio.Nursery, folder: Path, name: str, backends=(), seeds=()) -> tuple[Node, str]:
    (folder / name).mkdir()
    config = NodeConfig(
        data_dir=folder / name, name=name, user="bench", http_port=0, mdns=False, backends=tuple(backends),
        no_backend=not backends, overlay=OverlayConfig(listen_host="127.0.0.1", listen_port=0, seeds=tuple(seeds)),
    )
    node = Node(config, Identity.generate())
    addresses = await nursery.start(node.run)
    return node, addresses.http_url


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_best() -> tuple[float, float]:
    rng = random.Random(7)
    words = [f"w{i}" for i in range(500)]
    candidates = [
        combine.Candidate(f"node{i}", "m", " ".join(rng.choice(words) for _ in range(400))[:2048], "ok", 100.0 + i)
        for i in range(8)
    ]
    times = []
    for _ in range(30):
        start = time.perf_counter()
        combine.select_best(candidates)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), max(times)


async def main(requests: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = build_tiny_gguf(folder / "tiny.gguf")
        async with llama_server(model, alias=MODEL, parallel=2, threads=1) as llama, trio.open_nursery() as nursery:
            worker, worker_url = await start_node(nursery, folder, "worker", [BackendSpec("openai", llama.base_url)])
            front, front_url = await start_node(nursery, folder, "front", seeds=worker.overlay.local_record.record.addrs)
            with trio.fail_after(20):
                await front.overlay.wait_until(lambda: bool(front.coordinator.holders(MODEL)))
            paths = {
                "direct": (llama.base_url + "/v1/chat/completions", {"model": MODEL, "messages": MESSAGES}),
                "gateway, local backend": (worker_url + "/api/chat", {
                    "model": MODEL, "messages": MESSAGES, "stream": False, "distributed": {"strategy": "route"}}),
                "gateway, remote peer": (front_url + "/api/chat", {
                    "model": MODEL, "messages": MESSAGES, "stream": False, "distributed": {"strategy": "route"}}),
            }
            times: dict[str, list[float]] = {k: [] for k in paths}
            async with httpx.AsyncClient(timeout=30) as client:
                for i in range(requests + 10):
                    for name, (url, body) in paths.items():
                        # Let the previous request's leftovers (closing streams, load updates) finish untimed.
                        await trio.testing.wait_all_tasks_blocked()
                        start = time.perf_counter()
                        response = await client.post(url, json=body)
                        if response.status_code != 200:
                            raise SystemExit(f"{name}: HTTP {response.status_code}: {response.text}")
                        if i >= 10:  # warm-up excluded
                            times[name].append((time.perf_counter() - start) * 1000)
                    if i % 50 == 0:
                        print(f"{i}/{requests + 10}", file=sys.stderr)
            nursery.cancel_scope.cancel()
    base50, base99 = percentile(times["direct"], 0.5), percentile(times["direct"], 0.99)
    print("| path | p50 | p99 | added p50 | added p99 | target | pass |\n|---|---|---|---|---|---|---|")
    print(f"| backend directly | {base50:.2f} ms | {base99:.2f} ms | | | | |")
    for name in ("gateway, local backend", "gateway, remote peer"):
        p50, p99 = percentile(times[name], 0.5), percentile(times[name], 0.99)
        ok = p50 - base50 <= 2 and p99 - base99 <= 5
        print(f"| {name} | {p50:.2f} ms | {p99:.2f} ms | {p50 - base50:+.2f} ms | {p99 - base99:+.2f} ms | "
              f"<= 2 / 5 ms | {'yes' if ok else 'no'} |")
    median, worst = bench_best()
    print(f"| `best` selection, 8 candidates x 2 KB | {median:.2f} ms | max {worst:.2f} ms | | | <= 10 ms | "
          f"{'yes' if worst <= 10 else 'no'} |")
    print(f"\n{requests} requests per path, alternating, non-streaming; llama.cpp on the tiny model; nodes in-process.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    trio.run(main, parser.parse_args().requests)
