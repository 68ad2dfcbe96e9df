"""Whole ``dcn-node run`` processes talking over loopback: the daemon as users run it."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.nodes import NodeProcess, eventually

pytestmark = pytest.mark.slow


async def start_mesh(nursery, tmp_path, count: int) -> list[NodeProcess]:
    seed = NodeProcess(tmp_path / "seed", "seed")
    await seed.start(nursery)
    nodes = [seed]
    for i in range(1, count):
        node = NodeProcess(tmp_path / f"node{i}", f"node{i}", "--seed", seed.peer_url)
        await node.start(nursery)
        nodes.append(node)

    async def everyone_sees_everyone() -> bool:
        for node in nodes:
            if (await node.get("/api/distributed/stats"))["online_nodes"] != count:
                return False
        return True

    await eventually(everyone_sees_everyone)
    return nodes


async def all_report(observers: list[NodeProcess], peer_id: str, status: str) -> bool:
    for observer in observers:
        if (await observer.statuses()).get(peer_id) != status:
            return False
    return True


async def test_sigkilled_node_goes_offline_and_returns_with_its_identity(nursery, tmp_path):
    nodes = await start_mesh(nursery, tmp_path, 5)
    victim, survivors = nodes[3], [n for i, n in enumerate(nodes) if i != 3]
    stats = await survivors[0].get("/api/distributed/stats")
    assert stats["total_nodes"] == 5 and stats["total_cpu_cores"] > 0

    victim.kill(signal.SIGKILL)
    await victim.wait_exit()

    await eventually(lambda: all_report(survivors, victim.peer_id, "offline"))
    assert (await survivors[1].get("/api/distributed/stats"))["online_nodes"] == 4

    reborn = NodeProcess(victim.data_dir, "node3", "--seed", nodes[0].peer_url)
    await reborn.start(nursery)
    assert reborn.peer_id == victim.peer_id

    await eventually(lambda: all_report(survivors, victim.peer_id, "online"))
    for node in [*survivors, reborn]:
        node.kill(signal.SIGTERM)
    for node in [*survivors, reborn]:
        assert await node.wait_exit() == 0


async def test_sigterm_announces_departure_and_exits_cleanly(nursery, tmp_path):
    nodes = await start_mesh(nursery, tmp_path, 3)
    leaver = nodes[2]
    leaver.kill(signal.SIGTERM)
    assert await leaver.wait_exit() == 0
    assert not (leaver.data_dir / "node.json").exists()
    assert any("leaving the network" in line for line in leaver.log)

    await eventually(lambda: all_report(nodes[:2], leaver.peer_id, "left"))
    for node in nodes[:2]:
        node.kill(signal.SIGINT)
        assert await node.wait_exit() == 0


def test_id_is_stable_and_the_key_is_private(tmp_path):
    run = lambda: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "p2pnode", "id", "--data-dir", str(tmp_path)], capture_output=True, text=True, check=True
    )
    first, second = run().stdout.strip(), run().stdout.strip()
    assert first == second and first.startswith("12D3KooW")
    assert (tmp_path / "node.key").stat().st_mode & 0o777 == 0o600
