"""The network's own HTTP API: ``/api/distributed/stats`` and ``/api/distributed/nodes``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from p2pnode.core.membership import Member, MemberState, Membership, network_stats
from p2pnode.core.records import NodeRecord, NodeStatus
from p2pnode.gateway.app import GatewayApp, JSONResponse, Request

__all__ = ["install", "node_view", "nodes_view", "stats_view"]


def stats_view(membership: Membership) -> dict[str, Any]:
    stats = network_stats(membership.local, membership)
    return {
        "total_nodes": stats.total_nodes,
        "online_nodes": stats.online_nodes,
        "total_gpu_memory": stats.total_gpu_memory,
        "total_cpu_cores": stats.total_cpu_cores,
        "active_tasks": stats.active_tasks,
        "total_gpus": stats.total_gpus,
        "available_models": list(stats.models),
    }


def node_view(record: NodeRecord, status: str, last_seen: float, *, is_self: bool) -> dict[str, Any]:
    return {
        "node_id": record.peer_id,
        "name": record.name,
        "user_id": record.user_id,
        "status": status,
        "available_models": list(record.models),
        "gpu_count": record.gpu_count,
        "gpu_memory": record.gpu_memory,
        "cpu_cores": record.cpu_cores,
        "current_load": record.current_load,
        "active_tasks": record.active_tasks,
        "response_time": record.response_time,
        "last_seen": round(last_seen, 3),
        "addresses": list(record.addrs),
        "protocol_version": record.protocol,
        "seq": record.seq,
        "self": is_self,
    }


def _member_status(member: Member) -> str:
    if member.state is MemberState.ALIVE and member.signed.record.status in (NodeStatus.BUSY, NodeStatus.DRAINING):
        return str(member.signed.record.status)
    return str(member.state)


def nodes_view(membership: Membership, mono_now: float, wall_now: float) -> list[dict[str, Any]]:
    """Ourselves first, then every member by name; ``last_seen`` is wall time (Unix seconds)."""
    local = membership.local.record
    nodes = [node_view(local, str(local.status), wall_now, is_self=True)]
    others = sorted(membership, key=lambda m: (m.signed.record.name, m.peer_id))
    for member in others:
        last_seen = wall_now - (mono_now - member.refreshed_at)
        nodes.append(node_view(member.signed.record, _member_status(member), last_seen, is_self=False))
    return nodes


def install(app: GatewayApp, membership: Callable[[], Membership], clocks: Callable[[], tuple[float, float]]) -> None:
    """Register the endpoints; ``clocks()`` returns (monotonic now, wall now)."""

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(stats_view(membership()))

    async def nodes(request: Request) -> JSONResponse:
        return JSONResponse({"nodes": nodes_view(membership(), *clocks())})

    app.route("GET", "/api/distributed/stats", stats)
    app.route("GET", "/api/distributed/nodes", nodes)
