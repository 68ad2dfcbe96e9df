"""OpenAI's chat API, so OpenAI clients can use the node: /v1/chat/completions (SSE when streaming, ending
with ``data: [DONE]``) and /v1/models."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any

from p2pnode.backends.base import ChatChunk, ChatRequest
from p2pnode.errors import BackendError, GatewayError, PeerError
from p2pnode.gateway.app import GatewayApp, JSONResponse, Request, StreamResponse
from p2pnode.gateway.chat_requests import parse_openai_chat
from p2pnode.gateway.service import ChatService, Routing

__all__ = ["install"]


def _usage(last: ChatChunk) -> dict[str, int]:
    prompt, completion = last.prompt_tokens or 0, last.completion_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def install(app: GatewayApp, service: Callable[[], ChatService]) -> None:
    async def completions(request: Request) -> JSONResponse | StreamResponse:
        parsed = parse_openai_chat(request.json())
        routing = parsed.routing(request)
        if not parsed.stream:
            return JSONResponse(await _whole(service(), parsed.request, routing))
        return StreamResponse("text/event-stream", lambda: _sse(service(), parsed.request, routing))

    async def models(request: Request) -> JSONResponse:
        created = int(time.time())
        return JSONResponse({
            "object": "list",
            "data": [{"id": m.name, "object": "model", "created": created, "owned_by": "dcn"} for m in service().models],
        })

    app.route("POST", "/v1/chat/completions", completions)
    app.route("GET", "/v1/models", models)


async def _whole(service: ChatService, request: ChatRequest, routing: Routing) -> dict[str, Any]:
    content, last = await service.complete(request, routing)
    answer = {
        "id": "chatcmpl-" + secrets.token_hex(12),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": last.done_reason or "stop",
        }],
        "usage": _usage(last),
    }
    if last.metadata is not None:
        answer["distributed"] = dict(last.metadata)
    return answer


def _event(data: Any) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


@asynccontextmanager
async def _sse(service: ChatService, request: ChatRequest, routing: Routing) -> AsyncIterator[AsyncIterator[bytes]]:
    ident, created = "chatcmpl-" + secrets.token_hex(12), int(time.time())

    def chunk_event(delta: dict[str, Any], finish: str | None, last: ChatChunk | None = None) -> bytes:
        event: dict[str, Any] = {
            "id": ident, "object": "chat.completion.chunk", "created": created, "model": request.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if last is not None:
            event["usage"] = _usage(last)
            if last.metadata is not None:
                event["distributed"] = dict(last.metadata)
        return _event(event)

    async with service.open_chat(request, routing) as chunks:

        async def events() -> AsyncIterator[bytes]:
            yield chunk_event({"role": "assistant", "content": ""}, None)
            try:
                async for chunk in chunks:
                    if chunk.content:
                        yield chunk_event({"content": chunk.content}, None)
                    elif not chunk.done:
                        yield b": keep-alive\n\n"  # candidates are still running
                    if chunk.done:
                        yield chunk_event({}, chunk.done_reason or "stop", chunk)
                        break
            except (BackendError, GatewayError, PeerError) as exc:
                yield _event({"error": {"message": str(exc), "type": "server_error"}})
            yield b"data: [DONE]\n\n"

        async with aclosing(events()) as body:
            yield body
