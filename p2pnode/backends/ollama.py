"""Ollama (https://github.com/ollama/ollama/blob/main/docs/api.md): /api/tags, /api/ps, /api/show, /api/chat.

Streaming is NDJSON: ``{"message": {"role": "assistant", "content": ...}, "done": false}`` lines, then one line
with ``"done": true``, ``done_reason`` and the counters (durations in nanoseconds). An error during the stream
comes as a line ``{"error": "..."}``. Ollama silently truncates prompts longer than its context (2048 tokens by
default), so every request carries the ``num_ctx`` it needs, capped by what the model supports."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from p2pnode.backends.base import Backend, ChatChunk, ChatRequest, GenerateRequest, ModelInfo, _parse_json, ensure
from p2pnode.errors import BackendError, BackendRejected, BackendUnavailable

__all__ = ["OllamaBackend", "context_needed"]

MIN_CONTEXT = 2048
DEFAULT_PREDICT = 1024  # tokens we reserve for the answer when the request sets no num_predict
CHARS_PER_TOKEN = 3  # conservative: real tokenizers average 3.5-4.5 characters per token of English


def context_needed(messages: tuple[Any, ...], options: dict[str, Any], model_context: int) -> int:
    """The ``num_ctx`` a request needs: its prompt (estimated from characters) plus room for the answer, rounded
    up to a power of two, at least 2048. :class:`BackendRejected` when even the model's full context is too small."""
    prompt_chars = sum(len(str(m.get("content", ""))) + 16 for m in messages)
    predict = options.get("num_predict")
    answer = predict if isinstance(predict, int) and predict > 0 else DEFAULT_PREDICT
    needed = prompt_chars // CHARS_PER_TOKEN + answer
    size = max(MIN_CONTEXT, 1 << math.ceil(math.log2(max(needed, 1))))
    if model_context:
        if prompt_chars // CHARS_PER_TOKEN > model_context:
            raise BackendRejected(
                f"prompt of ~{prompt_chars // CHARS_PER_TOKEN} tokens does not fit the model's {model_context}-token context",
                status_hint=400,
            )
        size = min(size, model_context)
    return size


class OllamaBackend(Backend):
    kind = "ollama"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._context: dict[str, int] = {}  # model -> context length, from /api/show

    async def health(self) -> bool:
        try:
            await self._get_json("/api/version")
        except BackendError:
            return False
        return True

    async def version(self) -> str:
        data = await self._get_json("/api/version")
        return str(data.get("version", "")) if isinstance(data, dict) else ""

    async def list_models(self) -> list[ModelInfo]:
        tags = await self._get_json("/api/tags")
        loaded = {m.name: m for m in await self.running_models()}
        ensure(isinstance(tags, dict) and isinstance(tags.get("models"), list), self, "/api/tags without models")
        models = []
        for entry in tags["models"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                continue
            name = entry["name"]
            running = loaded.get(name)
            models.append(ModelInfo(
                name=name,
                size=_int(entry.get("size")),
                loaded=running is not None,
                vram_mb=running.vram_mb if running else 0,
                context_length=self._context.get(name, 0),
            ))
        return models

    async def running_models(self) -> list[ModelInfo]:
        """Models in memory now (/api/ps), with the GPU memory each occupies."""
        ps = await self._get_json("/api/ps")
        ensure(isinstance(ps, dict) and isinstance(ps.get("models", []), list), self, "/api/ps without models")
        return [
            ModelInfo(name=m["name"], size=_int(m.get("size")), loaded=True, vram_mb=_int(m.get("size_vram")) // 2**20)
            for m in ps.get("models") or []
            if isinstance(m, dict) and isinstance(m.get("name"), str)
        ]

    async def model_context(self, model: str) -> int:
        """The model's trained context length from /api/show (cached; 0 when Ollama does not say)."""
        if model not in self._context:
            with_body = await self._post_json("/api/show", {"model": model})
            info = with_body.get("model_info", {}) if isinstance(with_body, dict) else {}
            lengths = [v for k, v in info.items() if k.endswith(".context_length") and isinstance(v, int)]
            self._context[model] = max(lengths, default=0)
        return self._context[model]

    @asynccontextmanager
    async def open_chat(self, request: ChatRequest) -> AsyncIterator[AsyncIterator[ChatChunk]]:
        deadline = self._deadline(request)
        options = dict(request.options)
        if "num_ctx" not in options:
            options["num_ctx"] = context_needed(request.messages, options, await self.model_context(request.model))
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [dict(m) for m in request.messages],
            "stream": request.stream,  # not streamed: one object, which _chunks reads as the final line
            "options": options,
        }
        if request.keep_alive is not None:
            body["keep_alive"] = request.keep_alive
        async with self._open_lines("/api/chat", body, deadline) as lines:
            yield self._chunks(lines, chat=True)

    @asynccontextmanager
    async def open_generate(self, request: GenerateRequest) -> AsyncIterator[AsyncIterator[ChatChunk]]:
        options = dict(request.options)
        if "num_ctx" not in options:
            text = ({"content": request.system or ""}, {"content": request.prompt})
            options["num_ctx"] = context_needed(text, options, await self.model_context(request.model))
        body: dict[str, Any] = {"model": request.model, "prompt": request.prompt, "stream": True, "options": options}
        if request.system is not None:
            body["system"] = request.system
        async with self._open_lines("/api/generate", body, self._deadline(request)) as lines:
            yield self._chunks(lines, chat=False)

    async def _chunks(self, lines: AsyncIterator[str], *, chat: bool) -> AsyncIterator[ChatChunk]:
        where = "/api/chat" if chat else "/api/generate"
        async for line in lines:
            if not line.strip():
                continue
            data = _parse_json(line, self, f"{where} stream")
            ensure(isinstance(data, dict), self, "stream line is not an object")
            if "error" in data:
                raise BackendError(f"ollama failed mid-stream: {data['error']}")
            if chat:
                message = data.get("message") or {}
                ensure(isinstance(message, dict), self, "message is not an object")
                content = message.get("content", "")
            else:
                content = data.get("response", "")
            ensure(isinstance(content, str), self, "the streamed text is not a string")
            if data.get("done") is True:
                yield ChatChunk(
                    content=content,
                    done=True,
                    done_reason=str(data.get("done_reason") or "stop"),
                    prompt_tokens=_int(data.get("prompt_eval_count")),
                    completion_tokens=_int(data.get("eval_count")),
                )
                async for _ in lines:  # read to the end, so the connection goes back to the pool
                    pass
                return
            yield ChatChunk(content=content)
        raise BackendUnavailable("ollama ended the stream without its final done line (did it crash?)")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
