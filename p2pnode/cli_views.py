"""``dcn-node status`` and ``dcn-node peers``: ask a node's gateway and print readable tables (or raw JSON)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import httpx

from p2pnode.core.identity import short_id

__all__ = ["chat", "format_peers", "format_status", "show"]

_ENDPOINTS = {"status": "/api/distributed/stats", "peers": "/api/distributed/nodes"}


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _refused(response: httpx.Response) -> int:
    try:
        reason = response.json().get("error", response.text)
    except ValueError:
        reason = response.text
    hint = " (pass --api-key KEY or set DCN_API_KEY)" if response.status_code == 401 else ""
    print(f"dcn-node: {reason}{hint}", file=sys.stderr)
    return 1


def show(command: str, base_url: str, *, as_json: bool, api_key: str | None = None) -> int:
    url = base_url.rstrip("/") + _ENDPOINTS[command]
    try:
        response = httpx.get(url, timeout=5.0, headers=_headers(api_key))
        if response.status_code != 200:
            return _refused(response)
        data = response.json()
    except httpx.HTTPError as exc:
        return _unreachable(url, exc)
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        print(format_status(data) if command == "status" else format_peers(data["nodes"], now=time.time()))
    return 0


def _unreachable(url: str, exc: Exception) -> int:
    print(f"dcn-node: cannot reach {url}: {exc}. Is `dcn-node run` running? Pass its gateway with --http URL.",
          file=sys.stderr)
    return 1


def chat(
    base_url: str, prompt: str, *, model: str | None, strategy: str | None, fanout: int | None,
    api_key: str | None = None,
) -> int:
    """Stream an answer to stdout; who answered (the distributed metadata) goes to stderr."""
    base = base_url.rstrip("/")
    try:
        with httpx.Client(base_url=base, timeout=httpx.Timeout(10.0, read=600.0), headers=_headers(api_key)) as client:
            if model is None:
                tags = client.get("/api/tags")
                if tags.status_code != 200:
                    return _refused(tags)
                models = tags.json().get("models", [])
                if not models:
                    print("dcn-node: no node of the network serves a model yet", file=sys.stderr)
                    return 1
                model = models[0]["name"]
            distributed = {k: v for k, v in (("strategy", strategy), ("fanout", fanout)) if v is not None}
            body = {"model": model, "messages": [{"role": "user", "content": prompt}], "distributed": distributed}
            with client.stream("POST", "/api/chat", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    return _refused(response)
                for line in response.iter_lines():
                    if not line:
                        continue
                    event = json.loads(line)
                    if "error" in event:
                        print(f"\ndcn-node: {event['error']}", file=sys.stderr)
                        return 1
                    print(event["message"]["content"], end="", flush=True)
                    if event.get("done"):
                        print()
                        meta = event.get("distributed") or {}
                        if meta:
                            print(f"[{meta.get('strategy')}: {len(meta.get('candidates', []))} candidate(s), "
                                  f"winner {short_id(meta.get('winner') or '') or 'none'}]", file=sys.stderr)
    except httpx.HTTPError as exc:
        return _unreachable(base, exc)
    return 0


def format_status(stats: dict[str, Any]) -> str:
    models = stats.get("available_models") or []
    rows = [
        ("nodes online", f"{stats['online_nodes']} of {stats['total_nodes']}"),
        ("GPUs", f"{stats.get('total_gpus', 0)} ({stats['total_gpu_memory']} MB)"),
        ("CPU cores", str(stats["total_cpu_cores"])),
        ("active tasks", str(stats["active_tasks"])),
        ("models", ", ".join(models) if models else "(none)"),
    ]
    return "\n".join(f"{label:<14}{value}" for label, value in rows)


def _ago(seconds: float) -> str:
    if seconds < 1:
        return "now"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    return f"{seconds / 60:.0f}m ago"


def format_peers(nodes: list[dict[str, Any]], *, now: float) -> str:
    header = ("NAME", "NODE", "STATUS", "USER", "MODELS", "GPUS", "GPU MB", "CPUS", "LOAD", "TASKS", "RT MS", "SEEN")
    rows = [header]
    for node in nodes:
        models = node["available_models"]
        rows.append((
            node["name"] + (" *" if node.get("self") else ""),
            short_id(node["node_id"]),
            node["status"],
            node["user_id"],
            ",".join(models) if len(models) <= 2 else f"{models[0]} +{len(models) - 1}",
            str(node["gpu_count"]),
            str(node["gpu_memory"]),
            str(node["cpu_cores"]),
            f"{node['current_load']:.2f}",
            str(node["active_tasks"]),
            f"{node['response_time']:.0f}",
            _ago(max(0.0, now - node["last_seen"])),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines) + "\n(* this node)"
