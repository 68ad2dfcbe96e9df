"""The network's own HTTP API: ``/api/distributed/stats`` and ``/nodes`` over every node this one knows, and the
seed API that attaches LLM servers running no daemon: ``register``, ``status/{node_id}`` (the heartbeat), and
``DELETE /api/distributed/nodes/{node_id}``."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from p2pnode.backends.attached import AttachedServers, Registration, StatusUpdate
from p2pnode.core.membership import Member, Membership, MemberState, network_stats
from p2pnode.core.records import DEFAULT_LIMITS, AttachedNode, NodeRecord, NodeStatus, attached_id
from p2pnode.errors import GatewayError
from p2pnode.gateway.app import GatewayApp, JSONResponse, Request

__all__ = ["install", "node_view", "nodes_view", "parse_registration", "parse_status", "stats_view"]

NODE_ID = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")
_MAX_COUNT = 1 << 20
_MAX_MEMORY_MB = 1 << 40


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


def attached_view(node: AttachedNode, host: str, status: str, last_seen: float) -> dict[str, Any]:
    """An attached server, listed as a node of its own; ``attached_to`` names the node that serves it."""
    return {
        "node_id": node.node_id,
        "name": node.name,
        "user_id": node.user_id,
        "status": str(node.status) if status == "online" else status,
        "available_models": list(node.models),
        "gpu_count": node.gpu_count,
        "gpu_memory": node.gpu_memory,
        "cpu_cores": node.cpu_cores,
        "current_load": node.current_load,
        "active_tasks": node.active_tasks,
        "response_time": node.response_time,
        "last_seen": round(last_seen, 3),
        "attached_to": host,
        "network_id": attached_id(host, node.node_id),  # unique network-wide; answers' metadata names it so
        "self": False,
    }


def nodes_view(membership: Membership, mono_now: float, wall_now: float) -> list[dict[str, Any]]:
    """Ourselves first, then every member by name, each followed by its attached servers; ``last_seen`` is wall
    time (Unix seconds)."""
    local = membership.local.record
    entries = [(node_view(local, str(local.status), wall_now, is_self=True), local, str(local.status), wall_now)]
    for member in sorted(membership, key=lambda m: (m.signed.record.name, m.peer_id)):
        last_seen = wall_now - (mono_now - member.refreshed_at)
        record, status = member.signed.record, _member_status(member)
        entries.append((node_view(record, status, last_seen, is_self=False), record, status, last_seen))
    nodes = []
    for view, record, status, last_seen in entries:
        nodes.append(view)
        nodes.extend(attached_view(a, record.peer_id, status, last_seen) for a in record.attached)
    return nodes


# ---- the seed API -------------------------------------------------------------------------------------------


def parse_registration(body: Any) -> Registration:
    """A ``register`` body: node_id, ollama_url; optional user_id, name, gpu_count, gpu_memory (MB), cpu_cores,
    available_models. Unknown fields are ignored (clients of the original API send more)."""
    body = _object(body)
    node_id = body.get("node_id")
    if not isinstance(node_id, str) or not NODE_ID.fullmatch(node_id):
        raise GatewayError("node_id must be 1-64 characters of letters, digits and _ . : @ -", status_hint=400)
    url = body.get("ollama_url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 256:
        raise GatewayError("ollama_url must be the http(s) URL of the server's Ollama API", status_hint=400)
    return Registration(
        node_id=node_id,
        url=url,
        name=_text(body, "name"),
        user_id=_text(body, "user_id"),
        models=_models(body) or (),
        gpu_count=_count(body, "gpu_count", _MAX_COUNT),
        gpu_memory=_count(body, "gpu_memory", _MAX_MEMORY_MB),
        cpu_cores=_count(body, "cpu_cores", _MAX_COUNT),
    )


def parse_status(body: Any) -> StatusUpdate:
    """A heartbeat: status (online, busy or offline; default online), available_models, current_load (0..1, or a
    percentage up to 100), response_time (ms)."""
    body = _object(body)
    status = body.get("status", "online")
    if status not in ("online", "busy", "offline"):
        raise GatewayError("status must be online, busy or offline", status_hint=400)
    load = body.get("current_load")
    if load is not None:
        load = _number(load, "current_load", 100.0)
        load = load / 100 if load > 1 else load
    response_time = body.get("response_time")
    return StatusUpdate(
        status=NodeStatus(status),
        models=_models(body),
        current_load=load,
        response_time=None if response_time is None else _number(response_time, "response_time", 1e9),
    )


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise GatewayError("request body must be a JSON object", status_hint=400)
    return body


def _text(body: dict[str, Any], field: str) -> str:
    value = body.get(field, "")
    if not isinstance(value, str) or len(value) > DEFAULT_LIMITS.max_text_chars:
        limit = DEFAULT_LIMITS.max_text_chars
        raise GatewayError(f"{field} must be a string of at most {limit} characters", status_hint=400)
    return value


def _count(body: dict[str, Any], field: str, maximum: int) -> int:
    value = body.get(field, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise GatewayError(f"{field} must be an integer from 0 to {maximum}", status_hint=400)
    return value


def _number(value: Any, field: str, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= maximum:
        raise GatewayError(f"{field} must be a number from 0 to {maximum:g}", status_hint=400)
    return float(value)


def _models(body: dict[str, Any]) -> tuple[str, ...] | None:
    models = body.get("available_models")
    if models is None:
        return None
    limits = DEFAULT_LIMITS
    if (
        not isinstance(models, list)
        or len(models) > limits.max_attached_models
        or not all(isinstance(m, str) and 0 < len(m) <= limits.max_model_chars for m in models)
    ):
        raise GatewayError(
            f"available_models must be a list of at most {limits.max_attached_models} model names", status_hint=400
        )
    return tuple(dict.fromkeys(models))


def install(
    app: GatewayApp,
    membership: Callable[[], Membership],
    attached: AttachedServers,
    clocks: Callable[[], tuple[float, float]],
) -> None:
    """Register the endpoints; ``clocks()`` returns (monotonic now, wall now)."""

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(stats_view(membership()))

    async def nodes(request: Request) -> JSONResponse:
        return JSONResponse({"nodes": nodes_view(membership(), *clocks())})

    async def register(request: Request) -> JSONResponse:
        registration = parse_registration(request.json())
        node = attached.register(registration, user=request.user or registration.user_id)
        host = membership().local.record.peer_id
        return JSONResponse({
            "node_id": node.node_id, "status": "registered", "attached_to": host,
            "heartbeat_timeout": attached.config.heartbeat_timeout,
        }, status=201)

    async def status(request: Request) -> JSONResponse:
        update = parse_status(request.json())
        node_id = request.path_params["node_id"]
        owner = request.user or _owner_of(attached, node_id)
        node = attached.heartbeat(node_id, update, user=owner)
        return JSONResponse({"node_id": node.node_id, "status": str(node.status)})

    async def remove(request: Request) -> JSONResponse:
        node_id = request.path_params["node_id"]
        attached.remove(node_id, user=request.user or _owner_of(attached, node_id))
        return JSONResponse({"node_id": node_id, "status": "removed"})

    app.route("GET", "/api/distributed/stats", stats)
    app.route("GET", "/api/distributed/nodes", nodes)
    app.route("POST", "/api/distributed/register", register)
    app.route("POST", "/api/distributed/status/{node_id}", status)
    app.route("DELETE", "/api/distributed/nodes/{node_id}", remove)


def _owner_of(attached: AttachedServers, node_id: str) -> str:
    """Without authentication (a loopback gateway with no API keys) whoever holds the node id acts as its owner."""
    node = attached.get(node_id)
    return node.user_id if node is not None else ""
