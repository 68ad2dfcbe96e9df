"""A stand-in for Ollama's server, following its documented API (docs/api.md) to the letter, with faults to
inject. Ollama itself cannot run here; everything else in the tests is real.

Each model answers a fixed sentence, one word per chunk. Faults (settable at any time): latency before each
chunk, an HTTP error status, a connection dropped after N chunks, a garbage line after N chunks, a stall.
``requests`` records every request body; ``cancelled`` counts generations stopped by a client that went away.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

__all__ = ["FakeModel", "FakeOllama", "Faults", "InjectedDrop"]


class InjectedDrop(Exception):
    """Raised inside the app to make the server cut the connection mid-stream."""


@dataclass
class FakeModel:
    answer: str = "The quick brown fox jumps over the lazy dog."
    size: int = 1_300_000_000
    context_length: int = 8192
    loaded: bool = True
    size_vram: int = 1_000_000_000


@dataclass
class Faults:
    latency: float = 0.0  # seconds before each chunk
    status: int | None = None  # answer every generation with this HTTP status
    drop_after: int | None = None  # kill the connection after this many chunks
    garbage_after: int | None = None  # send a line that is not JSON after this many chunks
    stall_after: int | None = None  # stop sending (but keep the connection) after this many chunks


@dataclass
class FakeOllama:
    models: dict[str, FakeModel] = field(default_factory=lambda: {"tiny:1b": FakeModel()})
    faults: Faults = field(default_factory=Faults)
    version: str = "0.12.0"
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    active: int = 0
    cancelled: int = 0

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        if method == "GET" and path == "/api/version":
            return await _json(send, 200, {"version": self.version})
        if method == "GET" and path == "/api/tags":
            return await _json(send, 200, {"models": [self._tag(n, m) for n, m in self.models.items()]})
        if method == "GET" and path == "/api/ps":
            loaded = [self._ps(n, m) for n, m in self.models.items() if m.loaded]
            return await _json(send, 200, {"models": loaded})
        if method != "POST" or path not in ("/api/show", "/api/chat", "/api/generate"):
            return await _json(send, 404, {"error": f"{method} {path} not found"})
        try:
            request = json.loads(body)
        except ValueError:
            return await _json(send, 400, {"error": "invalid JSON body"})
        self.requests.append((path, request))
        model = self.models.get(request.get("model", ""))
        if model is None:
            return await _json(send, 404, {"error": f"model \"{request.get('model')}\" not found, try pulling it first"})
        if path == "/api/show":
            return await _json(send, 200, {"model_info": {"llama.context_length": model.context_length}})
        if self.faults.status is not None:
            return await _json(send, self.faults.status, {"error": "injected failure"})
        await self._generate(send, receive, request, model, chat=path == "/api/chat")

    def _tag(self, name: str, model: FakeModel) -> dict[str, Any]:
        return {
            "name": name, "model": name, "modified_at": "2026-12-01T10:00:00Z", "size": model.size,
            "digest": "sha256:" + "0" * 64,
            "details": {"format": "gguf", "family": "llama", "parameter_size": "1B", "quantization_level": "Q4_0"},
        }

    def _ps(self, name: str, model: FakeModel) -> dict[str, Any]:
        return {**self._tag(name, model), "expires_at": "2026-12-01T10:05:00Z", "size_vram": model.size_vram}

    async def _generate(self, send: Callable, receive: Callable, request: dict, model: FakeModel, *, chat: bool) -> None:
        words = model.answer.split(" ")
        tokens = [w if i == 0 else " " + w for i, w in enumerate(words)]
        limit = (request.get("options") or {}).get("num_predict")
        if isinstance(limit, int) and 0 <= limit < len(tokens):
            tokens, reason = tokens[:limit], "length"
        else:
            reason = "stop"
        start = time.monotonic_ns()
        name = request["model"]
        stream = request.get("stream", True)
        self.active += 1
        try:
            async with trio.open_nursery() as nursery:
                # Ollama stops generating when its client goes away: watch for the disconnect.
                nursery.start_soon(self._watch_disconnect, receive, nursery.cancel_scope)
                await self._send_answer(send, name, tokens, reason, start, chat=chat, stream=stream)
                nursery.cancel_scope.cancel()
        finally:
            self.active -= 1

    async def _watch_disconnect(self, receive: Callable, generation: trio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.cancelled += 1
        generation.cancel()

    async def _send_answer(
        self, send: Callable, name: str, tokens: list[str], reason: str, start: int, *, chat: bool, stream: bool
    ) -> None:
        faults = self.faults
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/x-ndjson" if stream else b"application/json")]})
        if not stream:
            await trio.sleep(faults.latency * len(tokens))
            final = self._final(name, "".join(tokens), reason, start, len(tokens), chat)
            await send({"type": "http.response.body", "body": json.dumps(final).encode()})
            return
        for i, token in enumerate(tokens):
            if faults.drop_after == i:
                raise InjectedDrop("connection dropped mid-stream")
            if faults.garbage_after == i:
                await send({"type": "http.response.body", "body": b"{this is not json\n", "more_body": True})
            if faults.stall_after == i:
                await trio.sleep_forever()
            await trio.sleep(faults.latency)
            line = {"model": name, "created_at": _now(), "done": False}
            line.update({"message": {"role": "assistant", "content": token}} if chat else {"response": token})
            await send({"type": "http.response.body", "body": json.dumps(line).encode() + b"\n", "more_body": True})
        final = self._final(name, "", reason, start, len(tokens), chat)
        await send({"type": "http.response.body", "body": json.dumps(final).encode() + b"\n"})

    def _final(self, name: str, content: str, reason: str, start: int, count: int, chat: bool) -> dict[str, Any]:
        total = time.monotonic_ns() - start
        final = {
            "model": name, "created_at": _now(), "done": True, "done_reason": reason,
            "total_duration": total, "load_duration": 1000, "prompt_eval_count": 12,
            "prompt_eval_duration": 2000, "eval_count": count, "eval_duration": max(total - 3000, 0),
        }
        final.update({"message": {"role": "assistant", "content": content}} if chat else {"response": content})
        return final


async def _json(send: Callable, status: int, body: Any) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": payload})


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
