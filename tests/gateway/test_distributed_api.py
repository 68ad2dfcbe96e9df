"""The gateway's network endpoints, in-process through httpx's ASGI transport."""

from __future__ import annotations

import httpx
import pytest

from p2pnode.backends.attached import AttachedServers
from p2pnode.backends.base import BackendConfig
from p2pnode.config import AttachedConfig
from p2pnode.core.identity import Identity
from p2pnode.core.membership import Membership
from p2pnode.core.records import (
    NodeRecord,
    NodeStatus,
    Notice,
    NoticeKind,
    seal_notice,
    seal_record,
)
from p2pnode.gateway import distributed_api
from p2pnode.gateway.app import GatewayApp

WALL = 1_800_000_000.0


def record(identity: Identity, seq: int = 1, **fields) -> NodeRecord:
    return NodeRecord(peer_id=identity.peer_id, seq=seq, issued_at=WALL, lifetime=60.0, **fields)


@pytest.fixture
def network():
    """This node plus three members: one online with a GPU, one offline, one that left."""
    me, gpu, gone, left = (Identity.generate() for _ in range(4))
    membership = Membership(seal_record(me, record(me, name="me", user_id="ann", cpu_cores=8)))
    membership.apply_record(seal_record(gpu, record(gpu, name="gpu-box", user_id="bob", gpu_count=2, gpu_memory=48000,
                                                    cpu_cores=16, models=("llama3.2:3b",), active_tasks=3,
                                                    current_load=0.5, response_time=120.0)), now=10.0)
    membership.apply_record(seal_record(gone, record(gone, name="gone", cpu_cores=4, gpu_memory=8000)), now=10.0)
    dead = Notice(me.peer_id, NoticeKind.DEAD, gone.peer_id, 1, WALL)
    membership.apply_notice(seal_notice(me, dead), now=11.0)
    membership.apply_record(seal_record(left, record(left, name="left", status=NodeStatus.LEFT)), now=12.0)
    app = GatewayApp()
    attached = AttachedServers(AttachedConfig(), BackendConfig(), on_change=lambda: None)
    distributed_api.install(app, lambda: membership, attached, lambda: (20.0, WALL + 20.0))
    return app, {"me": me, "gpu": gpu, "gone": gone, "left": left}


async def get(app: GatewayApp, path: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dcn") as client:
        return await client.get(path)


async def test_stats_count_online_nodes_only_except_in_total(network):
    app, _ = network
    response = await get(app, "/api/distributed/stats")
    assert response.status_code == 200
    assert response.json() == {
        "total_nodes": 4,
        "online_nodes": 2,
        "total_gpu_memory": 48000,
        "total_cpu_cores": 24,
        "active_tasks": 3,
        "total_gpus": 2,
        "available_models": ["llama3.2:3b"],
    }


async def test_nodes_lists_every_node_with_the_seed_field_names(network):
    app, ids = network
    nodes = (await get(app, "/api/distributed/nodes")).json()["nodes"]
    assert [n["name"] for n in nodes] == ["me", "gone", "gpu-box", "left"]
    by_name = {n["name"]: n for n in nodes}
    assert by_name["me"]["self"] is True and by_name["me"]["status"] == "online"
    assert by_name["gone"]["status"] == "offline"
    assert by_name["left"]["status"] == "left"
    gpu = by_name["gpu-box"]
    assert gpu["node_id"] == ids["gpu"].peer_id
    assert {k: gpu[k] for k in ("user_id", "status", "available_models", "gpu_count", "gpu_memory", "cpu_cores",
                                "current_load", "active_tasks", "response_time")} == {
        "user_id": "bob", "status": "online", "available_models": ["llama3.2:3b"], "gpu_count": 2,
        "gpu_memory": 48000, "cpu_cores": 16, "current_load": 0.5, "active_tasks": 3, "response_time": 120.0,
    }
    assert gpu["last_seen"] == pytest.approx(WALL + 10.0)  # refreshed at local time 10, now is 20


async def test_unknown_paths_and_methods_get_json_errors(network):
    app, _ = network
    missing = await get(app, "/api/distributed/nope")
    assert missing.status_code == 404 and "no such endpoint" in missing.json()["error"]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dcn") as client:
        wrong = await client.post("/api/distributed/stats", content=b"{}")
    assert wrong.status_code == 405 and wrong.json()["error"]
