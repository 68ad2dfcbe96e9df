"""Ollama's API (docs/api.md), so tools written for Ollama can use the whole network: /api/chat, /api/generate,
/api/tags (every model of the network, with the nodes that hold it), /api/ps, /api/version.

Streaming is NDJSON: ``done: false`` lines, then one ``done: true`` line with done_reason and counters (durations
in nanoseconds) and, for distributed answers, ``distributed``: the strategy, each candidate and the winner. An
error after the first line is reported as a final ``{"error": ...}`` line, as Ollama does."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any

from p2pnode import __version__
from p2pnode.backends.base import ChatChunk, ChatRequest
from p2pnode.errors import BackendError, GatewayError, PeerError
from p2pnode.gateway.app import GatewayApp, JSONResponse, Request, StreamResponse
from p2pnode.gateway.chat_requests import ParsedChat, parse_ollama_chat, parse_ollama_generate
from p2pnode.gateway.service import ChatService, Routing

__all__ = ["install"]

# The Ollama API version we follow (clients check it for features); dcn's own version is "dcn_version".
OLLAMA_API_VERSION = "0.12.0"


def _now(offset: float = 0.0) -> str:
    now = time.time() + offset
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e9):09d}Z"


def _line(model: str, content: str, *, chat: bool, done: bool) -> dict[str, Any]:
    line: dict[str, Any] = {"model": model, "created_at": _now()}
    line.update({"message": {"role": "assistant", "content": content}} if chat else {"response": content})
    line["done"] = done
    return line


def _final(model: str, content: str, last: ChatChunk, start_ns: int, *, chat: bool) -> dict[str, Any]:
    total = time.monotonic_ns() - start_ns
    final = _line(model, content, chat=chat, done=True)
    final.update({
        "done_reason": last.done_reason or "stop",
        "total_duration": total,
        "load_duration": 0,
        "prompt_eval_count": last.prompt_tokens or 0,
        "prompt_eval_duration": 0,
        "eval_count": last.completion_tokens or 0,
        "eval_duration": total,
    })
    if last.metadata is not None:
        final["distributed"] = dict(last.metadata)
    return final


def install(app: GatewayApp, service: Callable[[], ChatService]) -> None:
    def answer(parsed: ParsedChat, request: Request, *, chat: bool) -> Any:
        routing = parsed.routing(request)
        if not parsed.stream:
            return _whole(service(), parsed.request, routing, chat=chat)
        return StreamResponse("application/x-ndjson", lambda: _ndjson(service(), parsed.request, routing, chat=chat))

    async def chat(request: Request) -> JSONResponse | StreamResponse:
        result = answer(parse_ollama_chat(request.json()), request, chat=True)
        return result if isinstance(result, StreamResponse) else JSONResponse(await result)

    async def generate(request: Request) -> JSONResponse | StreamResponse:
        result = answer(parse_ollama_generate(request.json()), request, chat=False)
        return result if isinstance(result, StreamResponse) else JSONResponse(await result)

    async def tags(request: Request) -> JSONResponse:
        chat_service = service()
        return JSONResponse({"models": [
            {
                "name": m.name, "model": m.name, "modified_at": _now(), "size": m.size, "digest": "",
                "details": {"format": "gguf", "family": "", "parameter_size": "", "quantization_level": ""},
                "nodes": chat_service.holders(m.name),
            }
            for m in chat_service.models
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
    app.route("POST", "/api/generate", generate)
    app.route("GET", "/api/tags", tags)
    app.route("GET", "/api/ps", ps)
    app.route("GET", "/api/version", version)


async def _whole(service: ChatService, request: ChatRequest, routing: Routing, *, chat: bool) -> dict[str, Any]:
    start = time.monotonic_ns()
    content, last = await service.complete(request, routing)
    return _final(request.model, content, last, start, chat=chat)


@asynccontextmanager
async def _ndjson(service: ChatService, request: ChatRequest, routing: Routing, *, chat: bool) -> AsyncIterator[AsyncIterator[bytes]]:
    start = time.monotonic_ns()
    async with service.open_chat(request, routing) as chunks:

        async def lines() -> AsyncIterator[bytes]:
            try:
                async for chunk in chunks:
                    if chunk.done:
                        yield json.dumps(_final(request.model, chunk.content, chunk, start, chat=chat)).encode() + b"\n"
                        return
                    yield json.dumps(_line(request.model, chunk.content, chat=chat, done=False)).encode() + b"\n"
            except (BackendError, GatewayError, PeerError) as exc:
                yield json.dumps({"error": str(exc)}).encode() + b"\n"  # Ollama's mid-stream error line

        async with aclosing(lines()) as body:
            yield body
