"""OpenAI-compatible servers (llama.cpp's server, vLLM, LM Studio, LocalAI): /v1/models, /v1/chat/completions.

Streaming is Server-Sent Events: ``data: {"choices": [{"delta": {"content": ...}, "finish_reason": null}]}``
events, the last with a ``finish_reason``, usage in a final event when ``stream_options.include_usage`` is
honoured, then ``data: [DONE]``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from p2pnode.backends.base import Backend, ChatChunk, ChatRequest, GenerateRequest, ModelInfo, _parse_json, ensure
from p2pnode.errors import BackendError, BackendUnavailable

__all__ = ["OpenAIBackend", "openai_parameters"]

# Ollama option name -> OpenAI request field
_OPTION_NAMES = {
    "num_predict": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}


def openai_parameters(options: dict[str, Any]) -> dict[str, Any]:
    """Translate the options OpenAI servers understand; the rest (num_ctx, mirostat, ...) has no equivalent."""
    params = {_OPTION_NAMES[k]: v for k, v in options.items() if k in _OPTION_NAMES}
    if isinstance(params.get("max_tokens"), int) and params["max_tokens"] < 0:
        del params["max_tokens"]  # Ollama's -1 means "no limit"
    return params


class OpenAIBackend(Backend):
    kind = "openai"

    async def health(self) -> bool:
        try:
            await self._get_json("/v1/models")
        except BackendError:
            return False
        return True

    async def list_models(self) -> list[ModelInfo]:
        data = await self._get_json("/v1/models")
        ensure(isinstance(data, dict) and isinstance(data.get("data"), list), self, "/v1/models without data")
        models = []
        for entry in data["data"]:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
                context = meta.get("n_ctx_train") or entry.get("max_model_len") or 0
                models.append(ModelInfo(name=entry["id"], loaded=True, context_length=int(context or 0)))
        return models

    @asynccontextmanager
    async def open_chat(self, request: ChatRequest) -> AsyncIterator[AsyncIterator[ChatChunk]]:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [dict(m) for m in request.messages],
            "stream": request.stream,
            **({"stream_options": {"include_usage": True}} if request.stream else {}),
            **openai_parameters(dict(request.options)),
        }
        async with self._open_lines("/v1/chat/completions", body, self._deadline(request)) as lines:
            yield self._chunks(lines) if request.stream else self._whole(lines)

    @asynccontextmanager
    async def open_generate(self, request: GenerateRequest) -> AsyncIterator[AsyncIterator[ChatChunk]]:
        prompt = f"{request.system}\n\n{request.prompt}" if request.system else request.prompt
        body: dict[str, Any] = {
            "model": request.model, "prompt": prompt, "stream": True, "stream_options": {"include_usage": True},
            **openai_parameters(dict(request.options)),
        }
        async with self._open_lines("/v1/completions", body, self._deadline(request)) as lines:
            yield self._chunks(lines)

    async def _whole(self, lines: AsyncIterator[str]) -> AsyncIterator[ChatChunk]:
        """A non-streamed chat completion: one final chunk with the whole content."""
        reply = _parse_json("\n".join([line async for line in lines]), self, "/v1/chat/completions")
        ensure(isinstance(reply, dict) and isinstance(reply.get("choices"), list) and reply["choices"], self,
               "/v1/chat/completions reply without choices")
        choice = reply["choices"][0]
        message = choice.get("message") if isinstance(choice, dict) else None
        ensure(isinstance(message, dict) and isinstance(message.get("content") or "", str), self,
               "/v1/chat/completions reply without a message")
        usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
        yield ChatChunk(
            content=message.get("content") or "",
            done=True,
            done_reason="length" if choice.get("finish_reason") == "length" else "stop",
            prompt_tokens=_int(usage.get("prompt_tokens")),
            completion_tokens=_int(usage.get("completion_tokens")),
        )

    async def _chunks(self, lines: AsyncIterator[str]) -> AsyncIterator[ChatChunk]:
        """Chat deltas (``delta.content``) and completion pieces (``text``) alike."""
        finish: str | None = None
        usage: dict[str, Any] = {}
        async for line in lines:
            if not line.startswith("data:"):
                continue  # comments (":"), event names, blank separators
            payload = line[5:].strip()
            if payload == "[DONE]":
                yield ChatChunk(
                    done=True,
                    done_reason=finish or "stop",
                    prompt_tokens=_int(usage.get("prompt_tokens")),
                    completion_tokens=_int(usage.get("completion_tokens")),
                )
                async for _ in lines:  # read to the end, so the connection goes back to the pool
                    pass
                return
            event = _parse_json(payload, self, "/v1/chat/completions stream")
            ensure(isinstance(event, dict), self, "stream event is not an object")
            if "error" in event:
                raise BackendError(f"openai-compatible server failed mid-stream: {event['error']}")
            if isinstance(event.get("usage"), dict):
                usage = event["usage"]
            for choice in event.get("choices") or []:
                ensure(isinstance(choice, dict), self, "choice is not an object")
                delta = choice.get("delta") or {}
                content = delta.get("content") if isinstance(delta, dict) else None
                if "text" in choice:  # /v1/completions
                    content = choice["text"]
                if choice.get("finish_reason"):
                    finish = "length" if choice["finish_reason"] == "length" else "stop"
                if content:
                    ensure(isinstance(content, str), self, "delta.content is not a string")
                    yield ChatChunk(content=content)
        raise BackendUnavailable("openai-compatible server ended the stream without [DONE] (did it crash?)")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
