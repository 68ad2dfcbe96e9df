"""Real mDNS discovery between real hosts: network namespaces on a bridge, one `dcn-node run` each, no seeds.

Needs root and iproute2. Outside CI a machine without them skips these tests, saying why; in CI (CI=true) they
must run, so a missing capability fails instead."""

from __future__ import annotations

import os
import signal

import pytest
import trio

from p2pnode import users
from p2pnode.testing.netns import Lab, lab_unavailable_reason, node_command
from tests.nodes import NodeProcess, eventually

pytestmark = [pytest.mark.slow, pytest.mark.netns]

_REASON = lab_unavailable_reason()
if _REASON and os.environ.get("CI") != "true":
    pytestmark.append(pytest.mark.skip(reason=_REASON))


@pytest.fixture
def lab_factory():
    labs = []

    def make(hosts: int) -> Lab:
        assert _REASON is None, f"CI must run the network-namespace tests: {_REASON}"
        lab = Lab(hosts).__enter__()
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.destroy()


def lab_node(host, data_dir, http_address: str, *extra: str, api_key: str | None = None) -> NodeProcess:
    """A node in ``host`` whose gateway the harness reaches from outside: beyond loopback, so it needs an API
    key (a new user's, unless the node restarts with its data dir and key), and the harness polls it more often
    than the per-user rate limit allows."""
    config = data_dir.parent / "lab.toml"
    config.write_text(POLLING_CONFIG)
    return NodeProcess(data_dir, f"host{host.index}", command=node_command(host, data_dir, "--config", str(config), *extra),
                       http_url=f"http://{http_address}:11435", api_key=api_key or users.add_user(data_dir, "lab"))


POLLING_CONFIG = "[gateway]\nrate_per_minute = 1000000.0\nburst = 100000\n"


async def start_hosts(nursery, lab: Lab, tmp_path, *extra_per_host) -> list[NodeProcess]:
    nodes = []
    for host in lab.hosts:
        extra = extra_per_host[host.index] if extra_per_host else ()
        node = lab_node(host, tmp_path / f"host{host.index}", host.address, *extra)
        await node.start(nursery)
        nodes.append(node)
    return nodes


async def online_everywhere(nodes: list[NodeProcess], count: int) -> bool:
    for node in nodes:
        if (await node.get("/api/distributed/stats"))["online_nodes"] != count:
            return False
    return True


async def stop(nodes: list[NodeProcess]) -> None:
    for node in nodes:
        node.kill(signal.SIGTERM)
    for node in nodes:
        assert await node.wait_exit() == 0


async def test_three_hosts_find_each_other_without_seeds(nursery, tmp_path, lab_factory):
    lab = lab_factory(3)
    nodes = await start_hosts(nursery, lab, tmp_path)
    await eventually(lambda: online_everywhere(nodes, 3), timeout=30)
    # The first host had registered before the others started: they can only have found it by mDNS.
    assert any("mDNS: advertising" in line for line in nodes[0].log), "\n".join(nodes[0].log)
    await stop(nodes)


async def test_a_partitioned_host_goes_offline_and_returns_when_its_link_does(nursery, tmp_path, lab_factory):
    lab = lab_factory(3)
    nodes = await start_hosts(nursery, lab, tmp_path)
    await eventually(lambda: online_everywhere(nodes, 3), timeout=30)
    cut_off, others = nodes[2], nodes[:2]

    async def others_report(status: str) -> bool:
        for node in others:
            if (await node.statuses()).get(cut_off.peer_id) != status:
                return False
        return True

    lab.cut(lab.hosts[2])
    await eventually(lambda: others_report("offline"), timeout=30)
    lab.restore(lab.hosts[2])
    await eventually(lambda: online_everywhere(nodes, 3), timeout=30)
    assert await others_report("online")
    await stop(nodes)


async def test_a_node_with_another_network_key_is_not_joined(nursery, tmp_path, lab_factory):
    lab = lab_factory(3)
    keys = []
    for name, fill in (("ours", 1), ("theirs", 2)):
        path = tmp_path / f"{name}.key"
        path.write_bytes(bytes([fill]) * 32)
        path.chmod(0o600)
        keys.append(str(path))
    extra = [("--network-key", keys[0]), ("--network-key", keys[0]), ("--network-key", keys[1])]
    nodes = await start_hosts(nursery, lab, tmp_path, *extra)
    await eventually(lambda: online_everywhere(nodes[:2], 2), timeout=30)
    # The stranger had the same chance to find us; it must still be alone, and unknown to us.
    stranger = nodes[2]
    with trio.move_on_after(3):
        await eventually(lambda: online_everywhere([stranger], 2), timeout=3)
    assert (await stranger.get("/api/distributed/stats"))["total_nodes"] == 1
    for node in nodes[:2]:
        assert stranger.peer_id not in await node.statuses()
    assert any("another network" in line for line in stranger.log)
    await stop(nodes)


async def test_same_names_an_interface_flap_and_a_new_address_are_all_handled(nursery, tmp_path, lab_factory):
    """Real-world faults: two nodes with one name; an interface going down and up; a node that restarts with
    another address. The network ends up whole each time, without restarting anyone else."""
    lab = lab_factory(3)
    same_name = [("--name", "twin"), ("--name", "twin"), ()]
    nodes = await start_hosts(nursery, lab, tmp_path, *same_name)
    await eventually(lambda: online_everywhere(nodes, 3), timeout=30)

    flapping = lab.hosts[1]
    lab.flap(flapping)  # eth0 down and up inside the host: its IPv6 link-local address is renewed
    await eventually(lambda: online_everywhere(nodes, 3), timeout=30)

    mover = nodes[2]
    mover.kill(signal.SIGKILL)
    await mover.wait_exit()
    new_address = lab.readdress(lab.hosts[2])
    moved = lab_node(lab.hosts[2], mover.data_dir, new_address, api_key=mover.api_key)
    await moved.start(nursery)
    assert moved.peer_id == mover.peer_id
    nodes[2] = moved
    await eventually(lambda: online_everywhere(nodes, 3), timeout=30)
    for node in nodes[:2]:
        peers = (await node.get("/api/distributed/nodes"))["nodes"]
        addresses = next(p["addresses"] for p in peers if p["node_id"] == moved.peer_id)
        assert addresses == [f"ws://{new_address}:11436"]
    await stop(nodes)
