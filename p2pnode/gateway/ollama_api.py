"""Ollama's API (docs/api.md), so tools written for Ollama can use the node: /api/chat, /api/tags, /api/ps,
/api/version. Streaming is NDJSON; durations are nanoseconds."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any

from p2pnode import __version__
from p2pnode.backends.base import ChatChunk, ChatRequest
from p2pnode.errors import BackendError
from p2pnode.gateway.app import GatewayApp, JSONResponse, Request, StreamResponse
from p2pnode.gateway.chat_requests import parse_ollama_chat
from p2pnode.gateway.service import ChatService, collect

__all__ = ["install"]

# The Ollama API version we follow; clients check it (e.g. for features), dcn's own is in the header.
OLLAMA_API_VERSION = "0.12.0"


def _now(offset: float = 0.0) -> str:
    now = time.time() + offset
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e9):09d}Z"


def _final(model: str, content: str, last: ChatChunk, start_ns: int) -> dict[str, Any]:
    total = time.monotonic_ns() - start_ns
    return {
        "model": model,
        "created_at": _now(),
        "message": {"role": "assistant", "content": content},
        "done_reason": last.done_reason or "stop",
        "done": True,
        "total_duration": total,
        "load_duration": 0,
        "prompt_eval_count": last.prompt_tokens or 0,
        "prompt_eval_duration": 0,
        "eval_count": last.completion_tokens or 0,
        "eval_duration": total,
    }


def install(app: GatewayApp, service: Callable[[], ChatService]) -> None:
    async def chat(request: Request) -> JSONResponse | StreamResponse:
        parsed = parse_ollama_chat(request.json())
        chat_request = parsed.request
        if not parsed.stream:
            return JSONResponse(await _whole(service(), chat_request))
        return StreamResponse("application/x-ndjson", lambda: _ndjson(service(), chat_request))

    async def tags(request: Request) -> JSONResponse:
        return JSONResponse({"models": [
            {
                "name": m.name, "model": m.name, "modified_at": _now(), "size": m.size, "digest": "",
                "details": {"format": "gguf", "family": "", "parameter_size": "", "quantization_level": ""},
            }
            for m in service().models
        ]})

    async def ps(request: Request) -> JSONResponse:
        return JSONResponse({"models": [
            {"name": m.name, "model": m.name, "size": m.size, "digest": "", "details": {}, "expires_at": _now(300),
             "size_vram": m.vram_mb * 2**20}
            for m in service().models if m.loaded
        ]})

    async def version(request: Request) -> JSONResponse:
        return JSONResponse({"version": OLLAMA_API_VERSION, "dcn_version": __version__})

    app.route("POST", "/api/chat", chat)
    app.route("GET", "/api/tags", tags)
    app.route("GET", "/api/ps", ps)
    app.route("GET", "/api/version", version)


async def _whole(service: ChatService, request: ChatRequest) -> dict[str, Any]:
    start = time.monotonic_ns()
    content, last = await collect(service, request)
    return _final(request.model, content, last, start)


@asynccontextmanager
async def _ndjson(service: ChatService, request: ChatRequest) -> AsyncIterator[AsyncIterator[bytes]]:
    start = time.monotonic_ns()
    async with service.open_chat(request) as chunks:

        async def lines() -> AsyncIterator[bytes]:
            try:
                async for chunk in chunks:
                    if chunk.done:
                        final = _final(request.model, chunk.content, chunk, start)
                        yield json.dumps(final).encode() + b"\n"
                        return
                    line = {
                        "model": request.model,
                        "created_at": _now(),
                        "message": {"role": "assistant", "content": chunk.content},
                        "done": False,
                    }
                    yield json.dumps(line).encode() + b"\n"
            except BackendError as exc:
                yield json.dumps({"error": str(exc)}).encode() + b"\n"  # Ollama's mid-stream error line

        async with aclosing(lines()) as body:
            yield body
