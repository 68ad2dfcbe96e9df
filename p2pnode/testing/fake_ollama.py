"""A stand-in for Ollama's server, following its documented API (docs/api.md) to the letter, with faults to
inject. Ollama itself cannot run here; everything else in the tests is real.

Each model answers a fixed sentence, one word per chunk. Faults (settable at any time): latency before each
chunk, a delay before the first chunk (fixed, or drawn per generation from a distribution such as a heavy tail),
an HTTP error status, a connection dropped after N chunks, a garbage line after N chunks, a stall. A request with
``"stream": false`` meets the same faults: its generation stalls or drops at the same token, and garbage makes
its one body invalid.

Capacity: with ``slots`` set, at most that many generations run at once and the rest wait in line (as Ollama's
``OLLAMA_NUM_PARALLEL``); with a fixed ``first_token`` delay that gives the server a finite throughput of
``slots / first_token`` answers a second. Set ``slots`` before the server takes requests.

``requests`` records every request body; ``generations`` counts generations accepted (queued ones included);
``active`` counts generations holding a slot, ``queued`` those waiting for one. ``interrupted`` counts
generations cut short by a client that went away (while queued or before the last chunk). ``cancelled`` counts
every disconnect a generation saw, and hypercorn also reports one just after a complete answer, so it may count
generations that finished: assert on ``interrupted`` to know that one was stopped. :meth:`FakeOllama.wait_until`
waits for a condition on these counters without polling.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
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
    # seconds between taking a slot and the first chunk (prompt processing); a callable is drawn once per
    # generation, e.g. ``lambda: 1.0 if rng.random() < 0.02 else 0.02`` for a heavy tail
    first_token: float | Callable[[], float] = 0.0

    def first_token_delay(self) -> float:
        return self.first_token() if callable(self.first_token) else self.first_token


@dataclass
class FakeOllama:
    models: dict[str, FakeModel] = field(default_factory=lambda: {"tiny:1b": FakeModel()})
    faults: Faults = field(default_factory=Faults)
    version: str = "0.12.0"
    slots: int | None = None  # generations run at once; None: no limit
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    generations: int = 0
    active: int = 0
    queued: int = 0
    cancelled: int = 0  # disconnects seen, a finished answer's included (see the module docstring)
    interrupted: int = 0  # generations stopped before their last chunk because their client went away
    _slots: trio.Semaphore | None = field(default=None, init=False, repr=False)
    _changed: trio.Event | None = field(default=None, init=False, repr=False)

    async def wait_until(self, condition: Callable[[FakeOllama], bool]) -> None:
        """Return once ``condition(self)`` holds; it is checked again whenever a generation is accepted, takes a
        slot, ends or sees its client go away."""
        while not condition(self):
            if self._changed is None:
                self._changed = trio.Event()
            await self._changed.wait()

    def _count(self, name: str, delta: int) -> None:
        setattr(self, name, getattr(self, name) + delta)
        if self._changed is not None:
            self._changed.set()
            self._changed = None

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
            return await _json(send, 404, {"error": f'model "{request.get("model")}" not found, try pulling it first'})
        if path == "/api/show":
            return await _json(send, 200, {"model_info": {"llama.context_length": model.context_length}})
        if self.faults.status is not None:
            return await _json(send, self.faults.status, {"error": "injected failure"})
        await self._generate(send, receive, request, model, chat=path == "/api/chat")

    def _tag(self, name: str, model: FakeModel) -> dict[str, Any]:
        return {
            "name": name,
            "model": name,
            "modified_at": "2026-12-01T10:00:00Z",
            "size": model.size,
            "digest": "sha256:" + "0" * 64,
            "details": {"format": "gguf", "family": "llama", "parameter_size": "1B", "quantization_level": "Q4_0"},
        }

    def _ps(self, name: str, model: FakeModel) -> dict[str, Any]:
        return {**self._tag(name, model), "expires_at": "2026-12-01T10:05:00Z", "size_vram": model.size_vram}

    async def _generate(
        self, send: Callable, receive: Callable, request: dict, model: FakeModel, *, chat: bool
    ) -> None:
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
        self._count("generations", 1)
        progress = _Progress()
        async with trio.open_nursery() as nursery:
            # Ollama stops generating (or drops the queued request) when its client goes away: watch for that.
            nursery.start_soon(self._watch_disconnect, receive, nursery.cancel_scope, progress)
            async with self._slot():
                await self._send_answer(send, name, tokens, reason, start, progress, chat=chat, stream=stream)
            nursery.cancel_scope.cancel()

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """Hold one of the server's generation slots (none to wait for when ``slots`` is None)."""
        if self.slots is not None and self._slots is None:
            self._slots = trio.Semaphore(self.slots)
        if self._slots is not None:
            self._count("queued", 1)
            try:
                await self._slots.acquire()
            finally:
                self._count("queued", -1)
        self._count("active", 1)
        try:
            yield
        finally:
            self._count("active", -1)
            if self._slots is not None:
                self._slots.release()

    async def _watch_disconnect(self, receive: Callable, generation: trio.CancelScope, progress: _Progress) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._count("cancelled", 1)
        if not progress.complete:  # the server also reports a disconnect once a whole answer is sent
            self._count("interrupted", 1)
        generation.cancel()

    async def _send_answer(
        self,
        send: Callable,
        name: str,
        tokens: list[str],
        reason: str,
        start: int,
        progress: _Progress,
        *,
        chat: bool,
        stream: bool,
    ) -> None:
        faults = self.faults
        delay = faults.first_token_delay()
        if delay:  # Ollama sends its headers with the first chunk
            await trio.sleep(delay)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/x-ndjson" if stream else b"application/json")],
            }
        )
        if not stream:  # the same generation, token by token, with the same faults; the answer in one piece
            for i in range(len(tokens)):
                if faults.drop_after == i:
                    raise InjectedDrop("connection dropped mid-generation")
                if faults.stall_after == i:
                    await trio.sleep_forever()
                await trio.sleep(faults.latency)
            final = self._final(name, "".join(tokens), reason, start, len(tokens), chat)
            body = json.dumps(final).encode()
            if faults.garbage_after is not None and faults.garbage_after < len(tokens):
                body = b"{this is not json"
            progress.complete = True
            await send({"type": "http.response.body", "body": body})
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
        progress.complete = True
        await send({"type": "http.response.body", "body": json.dumps(final).encode() + b"\n"})

    def _final(self, name: str, content: str, reason: str, start: int, count: int, chat: bool) -> dict[str, Any]:
        total = time.monotonic_ns() - start
        final = {
            "model": name,
            "created_at": _now(),
            "done": True,
            "done_reason": reason,
            "total_duration": total,
            "load_duration": 1000,
            "prompt_eval_count": 12,
            "prompt_eval_duration": 2000,
            "eval_count": count,
            "eval_duration": max(total - 3000, 0),
        }
        final.update({"message": {"role": "assistant", "content": content}} if chat else {"response": content})
        return final


@dataclass
class _Progress:
    complete: bool = False  # the last chunk is being sent: a disconnect from now on interrupts nothing


async def _json(send: Callable, status: int, body: Any) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": payload})


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
