"""LLM servers that run no daemon, attached to a node over the seed API (``/api/distributed/register``): two real
nodes in one process over loopback websockets, and a documented-API fake Ollama as the attached server."""

from __future__ import annotations

import httpx
import pytest
import trio

from p2pnode.config import AttachedConfig, NodeConfig
from p2pnode.core.identity import Identity
from p2pnode.gateway.app import serve_gateway
from p2pnode.node import Node
from p2pnode.testing.fake_ollama import FakeModel, FakeOllama
from tests.net.helpers import overlay_config

pytestmark = pytest.mark.slow

MODEL = "laptop-model:1b"
ANSWER = "served by the laptop"


async def start_node(nursery, tmp_path, name: str, seeds=(), attached=AttachedConfig()) -> tuple[Node, str]:
    (tmp_path / name).mkdir()
    config = NodeConfig(
        data_dir=tmp_path / name, name=name, user=f"{name}-owner", http_port=0, mdns=False, no_backend=True,
        overlay=overlay_config(seeds=tuple(seeds)), attached=attached,
    )
    node = Node(config, Identity.generate())
    addresses = await nursery.start(node.run)
    return node, addresses.http_url


@pytest.fixture
async def pair(nursery, tmp_path):
    """A host node (short heartbeat timeout) and a peer; the fake laptop Ollama is not attached yet."""
    fake = FakeOllama(models={MODEL: FakeModel(answer=ANSWER)})
    laptop_url = await nursery.start(serve_gateway, fake, "127.0.0.1", 0)
    host, host_url = await start_node(nursery, tmp_path, "host", attached=AttachedConfig(heartbeat_timeout=1.0,
                                                                                        check_interval=0.1))
    peer, peer_url = await start_node(nursery, tmp_path, "peer", seeds=host.overlay.local_record.record.addrs)
    with trio.fail_after(20):
        await peer.overlay.wait_until(lambda: host.identity.peer_id in peer.overlay.linked_peers)
    async with httpx.AsyncClient(base_url=host_url, timeout=30) as host_http, \
            httpx.AsyncClient(base_url=peer_url, timeout=30) as peer_http:
        yield host, host_http, peer, peer_http, laptop_url, fake


def registration(laptop_url: str, **overrides) -> dict:
    return {"node_id": "laptop-1", "user_id": "dana", "name": "Dana's laptop", "ollama_url": laptop_url,
            "gpu_count": 1, "gpu_memory": 8192, "cpu_cores": 8, "available_models": [MODEL], **overrides}


async def eventually(predicate, what: str) -> None:
    with trio.move_on_after(20):
        while not await predicate():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"not within 20 s: {what}")


async def listed(http: httpx.AsyncClient, node_id: str) -> dict | None:
    nodes = (await http.get("/api/distributed/nodes")).json()["nodes"]
    return next((n for n in nodes if n["node_id"] == node_id), None)


async def test_a_registered_server_is_gossiped_as_a_node_and_serves_the_network(pair):
    host, host_http, peer, peer_http, laptop_url, fake = pair
    registered = await host_http.post("/api/distributed/register", json=registration(laptop_url))
    assert registered.status_code == 201, registered.text
    assert registered.json()["attached_to"] == host.identity.peer_id

    async def peer_sees_it() -> bool:
        return await listed(peer_http, "laptop-1") is not None

    await eventually(peer_sees_it, "the peer lists the attached server")
    seen = await listed(peer_http, "laptop-1")
    assert {k: seen[k] for k in ("name", "user_id", "status", "available_models", "gpu_memory", "attached_to")} == {
        "name": "Dana's laptop", "user_id": "dana", "status": "online", "available_models": [MODEL],
        "gpu_memory": 8192, "attached_to": host.identity.peer_id,
    }
    stats = (await peer_http.get("/api/distributed/stats")).json()
    assert stats["total_nodes"] == 3 and stats["online_nodes"] == 3 and MODEL in stats["available_models"]

    # The peer runs a chat for the laptop's model: a job to the host, which runs it on the attached server.
    for http in (peer_http, host_http):
        answer = await http.post("/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                                    "stream": False, "distributed": {"strategy": "route"}})
        assert answer.status_code == 200, answer.text
        assert answer.json()["message"]["content"] == ANSWER
        assert answer.json()["distributed"]["winner"] == f"{host.identity.peer_id}/laptop-1"
    assert [path for path, _ in fake.requests].count("/api/chat") == 2


async def test_heartbeats_keep_it_online_and_silence_takes_it_offline(pair):
    host, host_http, peer, peer_http, laptop_url, fake = pair
    await host_http.post("/api/distributed/register", json=registration(laptop_url))
    beat = await host_http.post("/api/distributed/status/laptop-1",
                                json={"status": "online", "current_load": 40, "response_time": 250.0,
                                      "available_models": [MODEL, "other:7b"]})
    assert beat.status_code == 200 and beat.json()["status"] == "online"

    async def peer_has_the_update() -> bool:
        seen = await listed(peer_http, "laptop-1")
        return seen is not None and seen["available_models"] == [MODEL, "other:7b"]

    await eventually(peer_has_the_update, "the heartbeat's models reach the peer")
    seen = await listed(peer_http, "laptop-1")
    assert seen["current_load"] == 0.4 and seen["response_time"] == 250.0  # a percentage is read as a share

    async def offline_everywhere() -> bool:
        views = [await listed(http, "laptop-1") for http in (host_http, peer_http)]
        return all(v is not None and v["status"] == "offline" for v in views)

    await eventually(offline_everywhere, "no heartbeats: offline on both nodes")
    refused = await peer_http.post("/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                                      "stream": False})
    assert refused.status_code == 404 and MODEL in refused.json()["error"]
    assert (await peer_http.get("/api/distributed/stats")).json()["online_nodes"] == 2

    # A heartbeat brings it back.
    assert (await host_http.post("/api/distributed/status/laptop-1", json={"status": "online"})).status_code == 200

    async def online_at_the_peer() -> bool:
        return ((await listed(peer_http, "laptop-1")) or {}).get("status") == "online"

    await eventually(online_at_the_peer, "a heartbeat brings it back")


async def test_only_the_registering_user_may_update_or_remove_it(pair):
    host, host_http, peer, peer_http, laptop_url, fake = pair
    await host_http.post("/api/distributed/register", json=registration(laptop_url))
    stolen = await host_http.post("/api/distributed/register", json=registration(laptop_url, user_id="mallory"))
    assert stolen.status_code == 403 and "another user" in stolen.json()["error"]
    unknown = await host_http.post("/api/distributed/status/nobody", json={"status": "online"})
    assert unknown.status_code == 404 and "register it first" in unknown.json()["error"]
    removed = await host_http.delete("/api/distributed/nodes/laptop-1")
    assert removed.status_code == 200

    async def gone_from_the_peer() -> bool:
        return await listed(peer_http, "laptop-1") is None

    await eventually(gone_from_the_peer, "a removed server leaves the host's record")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([], "JSON object"),
        ({"ollama_url": "http://x"}, "node_id"),
        ({"node_id": "a/b", "ollama_url": "http://x"}, "node_id"),
        ({"node_id": "a", "ollama_url": "file:///etc/passwd"}, "ollama_url"),
        ({"node_id": "a", "ollama_url": "http://x", "gpu_count": -1}, "gpu_count"),
        ({"node_id": "a", "ollama_url": "http://x", "gpu_memory": "lots"}, "gpu_memory"),
        ({"node_id": "a", "ollama_url": "http://x", "available_models": "m"}, "available_models"),
        ({"node_id": "a", "ollama_url": "http://x", "available_models": ["m"] * 65}, "available_models"),
        ({"node_id": "a", "ollama_url": "http://x", "name": "n" * 200}, "name"),
    ],
)
async def test_bad_registrations_get_400_and_the_node_keeps_serving(pair, body, reason):
    host, host_http, *_ = pair
    response = await host_http.post("/api/distributed/register", json=body)
    assert response.status_code == 400 and reason in response.json()["error"]
    assert (await host_http.get("/api/distributed/stats")).status_code == 200


async def test_bad_heartbeats_get_400(pair):
    host, host_http, peer, peer_http, laptop_url, fake = pair
    await host_http.post("/api/distributed/register", json=registration(laptop_url))
    for body, reason in (({"status": "asleep"}, "status"), ({"current_load": 101}, "current_load"),
                         ({"response_time": -1}, "response_time"), ("x", "JSON object")):
        response = await host_http.post("/api/distributed/status/laptop-1", json=body)
        assert response.status_code == 400 and reason in response.json()["error"]


async def test_a_host_serves_a_bounded_number_of_servers(pair):
    host, host_http, peer, peer_http, laptop_url, fake = pair
    limit = host.config.attached.max_servers
    for n in range(limit):
        assert (await host_http.post("/api/distributed/register",
                                     json=registration(laptop_url, node_id=f"n{n}"))).status_code == 201
    full = await host_http.post("/api/distributed/register", json=registration(laptop_url, node_id="one-more"))
    assert full.status_code == 409 and "another node" in full.json()["error"]


async def test_registrations_that_would_overgrow_the_hosts_record_are_refused(pair):
    host, host_http, peer, peer_http, laptop_url, fake = pair
    heavy = ["\U0001f680" * 50 + f"-{i}" for i in range(64)]  # 200+ bytes each: the record's size is in bytes
    statuses = []
    for n in range(host.config.attached.max_servers):
        response = await host_http.post("/api/distributed/register",
                                        json=registration(laptop_url, node_id=f"big{n}", available_models=heavy))
        statuses.append(response.status_code)
    assert 201 in statuses and statuses[-1] == 409
    accepted = statuses.count(201)

    async def peer_holds_the_host_record() -> bool:
        nodes = (await peer_http.get("/api/distributed/nodes")).json()["nodes"]
        return len([n for n in nodes if n.get("attached_to") == host.identity.peer_id]) == accepted

    await eventually(peer_holds_the_host_record, "the peer still accepts the host's record, attached servers and all")
