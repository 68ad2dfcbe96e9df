"""LAN discovery and partition healing between real hosts (network namespaces on a bridge; needs root).

    sudo python scripts/bench_netns.py [--hosts 3 8] [--rounds 3]

For each host count: start one `dcn-node run --backend none` per host, with no seeds, all at once, and time until
every gateway reports `online_nodes == N` (discovery). Then cut one host's link and time until every other host
reports it offline (detection), restore the link and time until all report N online again (heal).
Prints a Markdown table; figures are medians and maxima over the rounds. Polls every 50 ms."""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from p2pnode import users  # noqa: E402
from p2pnode.testing.netns import Lab, lab_unavailable_reason, node_command  # noqa: E402


def _wait(check, timeout: float = 60.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if check():
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"condition not met within {timeout:.0f} s")


def _get(client: httpx.Client, host, path: str) -> dict:
    # Each gateway listens beyond loopback, so it needs the API key made for it at start.
    headers = {"Authorization": f"Bearer {API_KEYS[host.index]}"}
    return client.get(f"http://{host.address}:11435{path}", timeout=2.0, headers=headers).json()


API_KEYS: dict[int, str] = {}


def one_round(count: int) -> tuple[float, float, float]:
    with Lab(count) as lab, tempfile.TemporaryDirectory() as tmp, httpx.Client() as client:
        processes = []
        try:
            start = time.monotonic()
            for host in lab.hosts:
                data_dir = Path(tmp) / f"h{host.index}"
                API_KEYS[host.index] = users.add_user(data_dir, "bench")
                config = Path(tmp) / "bench.toml"  # the bench polls each node faster than the per-user limit
                config.write_text("[gateway]\nrate_per_minute = 1000000.0\nburst = 100000\n")
                command = node_command(host, data_dir, "--config", str(config), "--log-level", "warning")
                processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

            def all_online() -> bool:
                return all(_get(client, h, "/api/distributed/stats")["online_nodes"] == count for h in lab.hosts)

            _wait(all_online)
            discovery = time.monotonic() - start
            victim = lab.hosts[-1]
            victim_id = _get(client, victim, "/api/distributed/nodes")["nodes"][0]["node_id"]

            def others_see_offline() -> bool:
                return all(
                    {n["node_id"]: n["status"] for n in _get(client, h, "/api/distributed/nodes")["nodes"]}.get(victim_id)
                    == "offline"
                    for h in lab.hosts[:-1]
                )

            lab.cut(victim)
            detection = _wait(others_see_offline)
            lab.restore(victim)
            heal = _wait(all_online)
            return discovery, detection, heal
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(timeout=15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[3, 8])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    reason = lab_unavailable_reason()
    if reason:
        raise SystemExit(f"cannot build the lab: {reason}")
    rows = []
    for count in args.hosts:
        results = []
        for r in range(args.rounds):
            results.append(one_round(count))
            d, x, h = results[-1]
            print(f"{count} hosts, round {r + 1}: discovery {d:.2f} s, detection {x:.2f} s, heal {h:.2f} s", file=sys.stderr)
        for i, what in enumerate(("discovery (all see all)", "partition detected by all", "heal after the link returns")):
            values = [res[i] for res in results]
            rows.append(f"| {count} | {what} | {statistics.median(values):.2f} s | {max(values):.2f} s |")
    print("| hosts | what | median | max |\n|---|---|---|---|")
    print("\n".join(rows))
    print(f"\n{args.rounds} rounds each; namespaces on one bridge, real mDNS, `dcn-node run --backend none`, no seeds.")


if __name__ == "__main__":
    main()
