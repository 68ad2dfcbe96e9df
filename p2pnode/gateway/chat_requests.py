"""Validation of chat request bodies for the Ollama and OpenAI endpoints, into one :class:`ChatRequest`.

Everything from outside is checked here, with a message that says which field is wrong; limits are explicit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from p2pnode.backends.base import ChatRequest
from p2pnode.errors import GatewayError
from p2pnode.gateway.app import Request
from p2pnode.gateway.service import Routing

__all__ = ["ParsedChat", "parse_ollama_chat", "parse_ollama_generate", "parse_openai_chat"]

MAX_MESSAGES = 1000
MAX_MODEL_CHARS = 200
ROLES = frozenset({"system", "user", "assistant", "tool"})
# Ollama options we pass on, and the JSON types they may have.
_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "temperature": (int, float), "top_p": (int, float), "top_k": (int,), "min_p": (int, float),
    "seed": (int,), "num_predict": (int,), "num_ctx": (int,), "stop": (list, str), "repeat_penalty": (int, float),
    "presence_penalty": (int, float), "frequency_penalty": (int, float), "repeat_last_n": (int,),
    "mirostat": (int,), "mirostat_eta": (int, float), "mirostat_tau": (int, float), "num_keep": (int,),
}


@dataclass(frozen=True)
class ParsedChat:
    request: ChatRequest
    stream: bool
    distributed: dict[str, Any]  # the "distributed" field, for the coordinator
    use_distributed: bool

    def routing(self, request: Request) -> Routing:
        return Routing(self.use_distributed, self.distributed, request.headers.get("x-dcn-strategy"), request.user)


def _bad(message: str) -> GatewayError:
    return GatewayError(message, status_hint=400)


def _body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object")
    return body


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not 0 < len(model) <= MAX_MODEL_CHARS:
        raise _bad(f"model must be a non-empty string of at most {MAX_MODEL_CHARS} characters")
    return model


def _messages(value: Any) -> tuple[dict[str, str], ...]:
    if not isinstance(value, list) or not 0 < len(value) <= MAX_MESSAGES:
        raise _bad(f"messages must be a list of 1 to {MAX_MESSAGES} messages")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise _bad(f"messages[{i}] must be an object")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise _bad(f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}")
        out.append({"role": role, "content": _content(message.get("content", ""), i)})
    return tuple(out)


def _content(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f"messages[{index}].content: only text parts are supported")
            texts.append(part["text"])
        return "".join(texts)
    if content is None:
        return ""
    raise _bad(f"messages[{index}].content must be a string")


def _options(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad("options must be an object")
    options = {}
    for key, item in value.items():
        types = _OPTION_TYPES.get(key)
        if types is None:
            continue  # options for other runtimes (num_gpu, numa, ...): ignored, as Ollama ignores unknown ones
        if isinstance(item, bool) or not isinstance(item, types):
            raise _bad(f"options.{key} has the wrong type")
        if key == "stop" and isinstance(item, list) and not all(isinstance(s, str) for s in item):
            raise _bad("options.stop must be a string or a list of strings")
        options[key] = item
    return options


def _distributed(body: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    use = body.get("use_distributed", True)
    if not isinstance(use, bool):
        raise _bad("use_distributed must be true or false")
    distributed = body.get("distributed") or {}
    if not isinstance(distributed, dict):
        raise _bad("distributed must be an object")
    return use, distributed


def _flag(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise _bad(f"{key} must be true or false")
    return value


def parse_ollama_chat(raw: Any) -> ParsedChat:
    body = _body(raw)
    use, distributed = _distributed(body)
    keep_alive = body.get("keep_alive")
    if keep_alive is not None and (isinstance(keep_alive, bool) or not isinstance(keep_alive, (str, int))):
        raise _bad("keep_alive must be a duration string or a number of seconds")
    stream = _flag(body, "stream", True)
    request = ChatRequest(
        model=_model(body), messages=_messages(body.get("messages")), options=_options(body.get("options")),
        keep_alive=keep_alive, stream=stream,
    )
    return ParsedChat(request, stream, distributed, use)


def parse_ollama_generate(raw: Any) -> ParsedChat:
    """/api/generate: a prompt (and optional system prompt) instead of messages."""
    body = _body(raw)
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise _bad("prompt must be a string")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        raise _bad("system must be a string")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return parse_ollama_chat({**body, "messages": messages})


def parse_openai_chat(raw: Any) -> ParsedChat:
    body = _body(raw)
    use, distributed = _distributed(body)
    n = body.get("n", 1)
    if n != 1:
        raise _bad("n must be 1: one answer per request (ask the network for several with distributed.strategy)")
    options: dict[str, Any] = {}
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise _bad("max_tokens must be a positive integer")
        options["num_predict"] = limit
    for key in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "stop"):
        if body.get(key) is not None:
            options[key] = body[key]
    stream = _flag(body, "stream", False)
    request = ChatRequest(
        model=_model(body), messages=_messages(body.get("messages")), options=_options(options), stream=stream
    )
    return ParsedChat(request, stream, distributed, use)
