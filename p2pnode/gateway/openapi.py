"""The gateway's OpenAPI 3.1 description, served at ``GET /openapi.json``: every route the node installs, the
bodies it accepts with the limits its validators enforce (chat_requests, distributed_api, the coordinator's
``distributed`` options), and every status it may answer with. Errors are ``{"error": "..."}``.

Streams follow the pre-3.2 convention: for ``application/x-ndjson`` the schema describes one line, for
``text/event-stream`` one event (``data`` holds JSON, or ``[DONE]`` at the end)."""

from __future__ import annotations

import copy
from typing import Any

from p2pnode import __version__
from p2pnode.core.records import DEFAULT_LIMITS
from p2pnode.gateway.app import GatewayApp, JSONResponse, Request
from p2pnode.gateway.chat_requests import MAX_MESSAGES, MAX_MODEL_CHARS, ROLES
from p2pnode.gateway.distributed_api import NODE_ID

__all__ = ["install", "openapi_schema"]

# Mirrors of limits private to their modules (tests/gateway/test_openapi.py keeps them in step).
STRATEGIES = ("route", "first", "best", "judge", "fuse")  # p2pnode.coordinator.STRATEGIES
MAX_FANOUT, MAX_TIMEOUT, MAX_ENSEMBLE = 64, 3600, 16  # DistributedOptions.parse
MAX_COUNT, MAX_MEMORY_MB = 1 << 20, 1 << 40  # distributed_api._MAX_COUNT, _MAX_MEMORY_MB
OPTION_TYPES = {  # chat_requests._OPTION_TYPES, as JSON types (booleans are refused everywhere)
    "temperature": "number", "top_p": "number", "top_k": "integer", "min_p": "number", "seed": "integer",
    "num_predict": "integer", "num_ctx": "integer", "repeat_penalty": "number", "presence_penalty": "number",
    "frequency_penalty": "number", "repeat_last_n": "integer", "mirostat": "integer", "mirostat_eta": "number",
    "mirostat_tau": "number", "num_keep": "integer",
}

JSON, NDJSON, SSE = "application/json", "application/x-ndjson", "text/event-stream"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None, *, closed: bool = False) -> dict[str, Any]:
    """An object schema; open (unknown fields allowed, as the gateway ignores them) unless ``closed``."""
    schema: dict[str, Any] = {"type": "object", "required": list(required), "properties": {**required, **(optional or {})}}
    if closed:
        schema["additionalProperties"] = False
    return schema


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    return {**schema, "type": [*types, "null"]}


STR, INT, NUM, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
COUNT = {"type": "integer", "minimum": 0}
STRINGS = {"type": "array", "items": STR}
STOP = {"type": ["string", "array"], "items": STR, "description": "a stop sequence, or a list of them"}


def _schemas() -> dict[str, Any]:
    model = {"type": "string", "minLength": 1, "maxLength": MAX_MODEL_CHARS}
    models = {
        "type": ["array", "null"], "maxItems": DEFAULT_LIMITS.max_attached_models,
        "items": {"type": "string", "minLength": 1, "maxLength": DEFAULT_LIMITS.max_model_chars},
        "description": "model names this server serves (duplicates are dropped)",
    }
    text = {"type": "string", "maxLength": DEFAULT_LIMITS.max_text_chars}
    chat_common = {  # optional fields /api/chat, /api/generate and /v1/chat/completions share
        "use_distributed": {**BOOL, "default": True, "description": "false: answer on this node only"},
        "distributed": _ref("DistributedOptions"),
    }
    ollama_common = {
        **chat_common,
        "stream": {**BOOL, "default": True, "description": "true: NDJSON lines; false: one JSON object"},
        "options": _ref("Options"),
        "keep_alive": {"type": ["string", "integer", "null"], "description": "a duration (\"5m\") or seconds"},
    }
    chunk_common = {"model": STR, "created_at": STR}
    counters = {k: COUNT for k in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
                                   "eval_count", "eval_duration")}
    assistant = _obj({"role": {"const": "assistant"}, "content": STR})

    def ollama_final(field: dict[str, Any]) -> dict[str, Any]:
        return _obj({**chunk_common, **field, "done": {"const": True}, "done_reason": STR, **counters},
                    {"distributed": _ref("DistributedMetadata")})

    return {
        "Error": _obj({"error": STR}, closed=True),
        "DistributedOptions": {
            **_obj({}, {
                "strategy": {"enum": [*STRATEGIES, None], "description": "default: X-DCN-Strategy, else the node's"},
                "fanout": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_FANOUT},
                "timeout": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT,
                            "description": "seconds for the whole request"},
                "models": {"type": ["array", "null"], "maxItems": MAX_ENSEMBLE, "items": {"type": "string", "minLength": 1},
                           "description": "an ensemble of different models instead of the request's one"},
            }),
            "type": ["object", "null"],
        },
        "DistributedMetadata": _obj({
            "strategy": STR,
            "candidates": {"type": "array", "items": _obj({
                "node": STR, "model": STR, "latency_ms": NUM, "outcome": STR, "score": _nullable(NUM), "winner": BOOL})},
            "winner": _nullable(STR),
        }, {"request_id": {**INT, "description": "for DELETE /api/distributed/requests/{request_id}"}}),
        "Options": {
            **_obj({}, {name: {"type": kind} for name, kind in OPTION_TYPES.items()} | {"stop": STOP}),
            "type": ["object", "null"],
            "description": "Ollama's model options; others (num_gpu, numa, ...) are ignored",
        },
        "Message": _obj({"role": {"enum": sorted(ROLES)}}, {"content": {
            "description": "text, or OpenAI content parts of type text",
            "anyOf": [{"type": ["string", "null"]}, {"type": "array", "items": _obj({"type": {"const": "text"}, "text": STR})}],
        }}),
        "OllamaChatRequest": _obj({"model": model, "messages": _ref("Messages")}, ollama_common),
        "OllamaGenerateRequest": _obj({"model": model, "prompt": STR}, {**ollama_common, "system": _nullable(STR)}),
        "OllamaChatResponse": ollama_final({"message": assistant}),
        "OllamaGenerateResponse": ollama_final({"response": STR}),
        "OllamaChatLine": {"oneOf": [
            _obj({**chunk_common, "message": assistant, "done": {"const": False}}), _ref("OllamaChatResponse"),
            _ref("Error")]},
        "OllamaGenerateLine": {"oneOf": [
            _obj({**chunk_common, "response": STR, "done": {"const": False}}), _ref("OllamaGenerateResponse"),
            _ref("Error")]},
        "Messages": {"type": "array", "minItems": 1, "maxItems": MAX_MESSAGES, "items": _ref("Message")},
        "OpenAIChatRequest": _obj({"model": model, "messages": _ref("Messages")}, {
            **chat_common,
            "stream": {**BOOL, "default": False, "description": "true: server-sent events ending with [DONE]"},
            "n": {"const": 1, "description": "one answer per request"},
            "max_tokens": {"type": ["integer", "null"], "minimum": 1},
            "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1},
            "temperature": _nullable(NUM), "top_p": _nullable(NUM), "presence_penalty": _nullable(NUM),
            "frequency_penalty": _nullable(NUM), "seed": _nullable(INT), "stop": _nullable(STOP),
        }),
        "OpenAIChatResponse": _obj({
            "id": STR, "object": {"const": "chat.completion"}, "created": INT, "model": STR,
            "choices": {"type": "array", "items": _obj({"index": INT, "message": assistant, "finish_reason": STR})},
            "usage": _ref("Usage"),
        }, {"distributed": _ref("DistributedMetadata")}),
        "OpenAIChatChunk": _obj({
            "id": STR, "object": {"const": "chat.completion.chunk"}, "created": INT, "model": STR,
            "choices": {"type": "array", "items": _obj({
                "index": INT, "delta": _obj({}, {"role": {"const": "assistant"}, "content": STR}),
                "finish_reason": _nullable(STR)})},
        }, {"usage": _ref("Usage"), "distributed": _ref("DistributedMetadata")}),
        "OpenAIStreamError": _obj({"error": _obj({"message": STR, "type": STR})}),
        "OpenAIChatEvent": _obj({"data": {"anyOf": [
            {"const": "[DONE]"},
            {"type": "string", "contentMediaType": JSON,
             "contentSchema": {"oneOf": [_ref("OpenAIChatChunk"), _ref("OpenAIStreamError")]}},
        ]}}, {"event": STR, "id": STR}),
        "Usage": _obj({"prompt_tokens": COUNT, "completion_tokens": COUNT, "total_tokens": COUNT}),
        "Registration": _obj({
            "node_id": {"type": "string", "pattern": f"^{NODE_ID.pattern}$"},
            "ollama_url": {"type": "string", "pattern": "^https?://", "maxLength": 256,
                           "description": "the server's Ollama API"},
        }, {
            "user_id": text, "name": text, "available_models": models,
            "gpu_count": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_COUNT},
            "gpu_memory": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_MEMORY_MB, "description": "MB"},
            "cpu_cores": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_COUNT},
        }),
        "StatusUpdate": _obj({}, {
            "status": {"enum": ["online", "busy", "offline"], "default": "online"},
            "available_models": models,
            "current_load": {"type": ["number", "null"], "minimum": 0, "maximum": 100,
                             "description": "0..1, or a percentage above 1"},
            "response_time": {"type": ["number", "null"], "minimum": 0, "maximum": 1e9, "description": "ms"},
        }),
        "Stats": _obj({
            "total_nodes": COUNT, "online_nodes": COUNT, "total_gpu_memory": {**COUNT, "description": "MB"},
            "total_cpu_cores": COUNT, "active_tasks": COUNT, "total_gpus": COUNT, "available_models": STRINGS,
        }),
        "Node": _obj({
            "node_id": STR, "name": STR, "user_id": STR,
            "status": {"enum": ["online", "busy", "draining", "suspect", "offline", "left"]},
            "available_models": STRINGS, "gpu_count": COUNT, "gpu_memory": {**COUNT, "description": "MB"},
            "cpu_cores": COUNT, "current_load": NUM, "active_tasks": COUNT, "response_time": {**NUM, "description": "ms"},
            "last_seen": {**NUM, "description": "Unix seconds"}, "self": BOOL,
        }, {
            "addresses": STRINGS, "protocol_version": INT, "seq": INT,
            "attached_to": {**STR, "description": "the node serving this attached server"},
        }),
        "ModelTag": _obj({
            "name": STR, "model": STR, "modified_at": STR, "size": COUNT, "digest": STR,
            "details": _obj({"format": STR, "family": STR, "parameter_size": STR, "quantization_level": STR}),
            "nodes": {**STRINGS, "description": "ids of the nodes that serve it"},
        }),
        "RunningModel": _obj({"name": STR, "model": STR, "size": COUNT, "digest": STR, "details": {"type": "object"},
                              "expires_at": STR, "size_vram": COUNT}),
    }


_HELLO = [{"role": "user", "content": "Why is the sky blue?"}]
EXAMPLES = {  # one request body per operation, as documentation (and a case schemathesis always sends)
    "OllamaChatRequest": {"model": "llama3.2:3b", "messages": _HELLO, "distributed": {"strategy": "best"}},
    "OllamaGenerateRequest": {"model": "llama3.2:3b", "prompt": "Why is the sky blue?", "stream": False},
    "OpenAIChatRequest": {"model": "llama3.2:3b", "messages": _HELLO, "stream": True,
                          "distributed": {"strategy": "first", "fanout": 2}},
    "Registration": {"node_id": "laptop-1", "ollama_url": "http://127.0.0.1:11434", "name": "laptop",
                     "gpu_count": 1, "gpu_memory": 8192, "cpu_cores": 8, "available_models": ["llama3.2:3b"]},
    "StatusUpdate": {"status": "online", "available_models": ["llama3.2:3b"], "current_load": 0.25,
                     "response_time": 850.0},
}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": _ref(name), "example": EXAMPLES[name]}}}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


_REFUSALS = {  # status -> when; every operation may answer 401, 403, 413 and 429
    "400": "the body is not valid JSON, or a field is wrong (the message names it)",
    "401": "missing or unknown API key (the node requires one beyond loopback or once keys exist)",
    "403": "the key's user may not do this (e.g. touch another user's attached server)",
    "404": "no such thing: an unknown model, an attached server this node does not serve, a request not yours",
    "409": "this node already serves as many attached servers as it may",
    "413": "request body over 8 MiB",
    "429": "rate limited: retry after Retry-After seconds",
    "502": "every candidate failed to produce a usable answer",
    "503": "no node can serve this request now",
    "504": "no answer within the request's deadline",
}


def _errors(*codes: str) -> dict[str, Any]:
    out = {}
    for code in ("401", "403", "413", "429", *codes):
        out[code] = {"description": _REFUSALS[code], "content": {JSON: {"schema": _ref("Error")}}}
    out["429"]["headers"] = {"Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 0},
                                             "description": "seconds to wait"}}
    return dict(sorted(out.items()))


def _get(operation_id: str, summary: str, schema: dict[str, Any], tag: str) -> dict[str, Any]:
    return {"get": {"operationId": operation_id, "summary": summary, "tags": [tag],
                    "responses": {"200": _ok(schema), **_errors()}}}


def _chat(operation_id: str, summary: str, request: str, response: str, stream: tuple[str, str], tag: str) -> dict[str, Any]:
    media, line = stream
    return {"post": {
        "operationId": operation_id, "summary": summary, "tags": [tag],
        "parameters": [{"name": "X-DCN-Strategy", "in": "header", "required": False, "schema": {"enum": list(STRATEGIES)},
                        "description": "the strategy when the body's distributed.strategy is not set"}],
        "requestBody": _body(request),
        "responses": {
            "200": {"description": "the answer: one JSON object, or a stream (per line / per event schema)",
                    "content": {JSON: {"schema": _ref(response)}, media: {"schema": _ref(line)}}},
            **_errors("400", "404", "502", "503", "504"),
        },
    }}


def _paths() -> dict[str, Any]:
    node_id = {"name": "node_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
    node_answer = _obj({"node_id": STR, "status": STR})
    net, ollama, openai = "network", "ollama", "openai"
    return {
        "/api/distributed/stats": _get("stats", "Totals over every node this node knows", _ref("Stats"), net),
        "/api/distributed/nodes": _get("nodes", "Every node this node knows, itself first, attached servers after "
                                       "their host", _obj({"nodes": {"type": "array", "items": _ref("Node")}}), net),
        "/api/distributed/register": {"post": {
            "operationId": "register", "summary": "Attach an LLM server that runs no daemon to this node",
            "tags": [net], "requestBody": _body("Registration"),
            "responses": {
                "201": {
                    **_ok(_obj({"node_id": STR, "status": {"const": "registered"}, "attached_to": STR,
                                "heartbeat_timeout": {**NUM, "description": "seconds"}}), "attached"),
                    "links": {op: {"operationId": op, "parameters": {"node_id": "$response.body#/node_id"}}
                              for op in ("heartbeat", "detach")},
                },
                **_errors("400", "403", "409"),
            },
        }},
        "/api/distributed/status/{node_id}": {"post": {
            "operationId": "heartbeat", "summary": "An attached server's heartbeat", "tags": [net],
            "parameters": [node_id], "requestBody": _body("StatusUpdate"),
            "responses": {"200": _ok(node_answer), **_errors("400", "404")},
        }},
        "/api/distributed/nodes/{node_id}": {"delete": {
            "operationId": "detach", "summary": "Remove an attached server", "tags": [net], "parameters": [node_id],
            "responses": {"200": _ok(node_answer), **_errors("404")},
        }},
        "/api/distributed/requests": _get("requests", "The caller's own requests running now", _obj({
            "requests": {"type": "array", "items": _obj({
                "id": INT, "model": STR, "strategy": STR, "started_at": {**NUM, "description": "Unix seconds"},
                "nodes": {**STRINGS, "description": "nodes still working on it"}})},
        }), net),
        "/api/distributed/requests/{request_id}": {"delete": {
            "operationId": "cancel", "summary": "Cancel one of the caller's requests, on every node", "tags": [net],
            "parameters": [{"name": "request_id", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": "^[0-9]+$"}}],
            "responses": {"200": _ok(_obj({"id": INT, "status": {"const": "cancelled"}})),
                          **_errors("404")},
        }},
        "/api/chat": _chat("ollama_chat", "Ollama chat, answered by the network", "OllamaChatRequest",
                           "OllamaChatResponse", (NDJSON, "OllamaChatLine"), ollama),
        "/api/generate": _chat("ollama_generate", "Ollama completion of a prompt", "OllamaGenerateRequest",
                               "OllamaGenerateResponse", (NDJSON, "OllamaGenerateLine"), ollama),
        "/api/tags": _get("ollama_tags", "Every model of the network, with the nodes that serve it",
                          _obj({"models": {"type": "array", "items": _ref("ModelTag")}}), ollama),
        "/api/ps": _get("ollama_ps", "Models loaded on this node's servers",
                        _obj({"models": {"type": "array", "items": _ref("RunningModel")}}), ollama),
        "/api/version": _get("ollama_version", "The Ollama API version followed, and dcn's",
                             _obj({"version": STR, "dcn_version": STR}), ollama),
        "/v1/chat/completions": _chat("openai_chat", "OpenAI chat completion, answered by the network",
                                      "OpenAIChatRequest", "OpenAIChatResponse", (SSE, "OpenAIChatEvent"), openai),
        "/v1/models": _get("openai_models", "Every model of the network", _obj({
            "object": {"const": "list"},
            "data": {"type": "array", "items": _obj({"id": STR, "object": {"const": "model"}, "created": INT,
                                                      "owned_by": STR})},
        }), openai),
        "/openapi.json": _get("openapi", "This description", {"type": "object"}, "meta"),
    }


def openapi_schema() -> dict[str, Any]:
    """The whole description, as a new dict that shares nothing (tools such as schemathesis edit it in place)."""
    return copy.deepcopy({
        "openapi": "3.1.0",
        "info": {
            "title": "dcn node gateway",
            "version": __version__,
            "description": "The HTTP gateway every dcn node serves: the network's own API, and Ollama- and "
            "OpenAI-compatible chat answered by the whole network. Errors are JSON {\"error\": \"...\"}.",
        },
        "servers": [{"url": "/", "description": "this node's gateway (dcn-node run --http HOST:PORT)"}],
        "security": [{}, {"bearerAuth": []}],
        "tags": [{"name": "network"}, {"name": "ollama"}, {"name": "openai"}, {"name": "meta"}],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer", "bearerFormat": "API key",
                "description": "Authorization: Bearer <API key> (dcn-node keys add-user NAME prints one). Required "
                "when the gateway listens beyond loopback or any API key exists; otherwise optional.",
            }},
        },
    })


def install(app: GatewayApp) -> None:
    """Register ``GET /openapi.json``."""
    schema = openapi_schema()

    async def describe(request: Request) -> JSONResponse:
        return JSONResponse(schema)

    app.route("GET", "/openapi.json", describe)
