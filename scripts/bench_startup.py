"""Time from `dcn-node run` to a gateway that answers, over several runs (target: under 2 s).

    python scripts/bench_startup.py [--runs 5]

Prints one line per run and a Markdown table row. Each run uses a fresh data dir, so the identity key is
created too (the first-start path)."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def one_run(data_dir: Path) -> float:
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "p2pnode", "run", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0",
         "--http", "127.0.0.1:0", "--no-mdns", "--backend", "none", "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        runtime = data_dir / "node.json"
        while True:
            if process.poll() is not None:
                raise SystemExit(f"node exited with {process.returncode} before it was ready")
            if runtime.exists():
                import json

                url = json.loads(runtime.read_text())["http_url"]
                try:
                    httpx.get(url + "/api/distributed/stats", timeout=1.0).raise_for_status()
                    return time.perf_counter() - start
                except httpx.HTTPError:
                    pass
            time.sleep(0.005)
    finally:
        process.terminate()
        process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    times = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            elapsed = one_run(Path(tmp))
        times.append(elapsed)
        print(f"run {i + 1}: {elapsed * 1000:.0f} ms", file=sys.stderr)
    median, worst = statistics.median(times), max(times)
    print("| what | target | median | max | pass |\n|---|---|---|---|---|")
    print(f"| start to answering gateway | <= 2 s | {median:.2f} s | {worst:.2f} s | {'yes' if worst <= 2 else 'no'} |")


if __name__ == "__main__":
    main()
