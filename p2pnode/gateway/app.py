"""A small ASGI application: exact-path routing, JSON in and out, errors as ``{"error": ...}``.

Routes are registered by the API modules; the app knows nothing of what they serve."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from p2pnode.errors import BackendError, GatewayError
from p2pnode.gateway.guard import Guard
from p2pnode.net._errors import first_leaf, naming_bind_errors

__all__ = ["GatewayApp", "JSONResponse", "Request", "StreamResponse", "serve_gateway"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_JSON_DEPTH = 64


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    path_params: dict[str, str]
    body: bytes
    user: str | None = None  # the authenticated user; None when the gateway runs without API keys

    def json(self) -> Any:
        """The body as JSON, refused (400) unless every string is valid Unicode (no lone surrogates, which no
        encoder downstream accepts), every number finite, and nesting at most MAX_JSON_DEPTH deep."""
        try:
            value = json.loads(self.body or b"null", parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            raise GatewayError(f"request body is not valid JSON: {str(exc)[:200]}", status_hint=400) from None
        _check_json(value)
        return value


@dataclass(frozen=True)
class JSONResponse:
    body: Any
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class StreamResponse:
    """A streamed body. ``open()`` is an async context manager yielding the body's parts; an error it raises
    before the first part still becomes a JSON error with its status. Once streaming, errors must be written
    into the stream by the producer, in its protocol's format. A client that goes away cancels the stream."""

    content_type: str
    open: Callable[[], AbstractAsyncContextManager[AsyncIterator[bytes]]]


Handler = Callable[[Request], Awaitable[JSONResponse | StreamResponse]]


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _check_json(value: Any) -> None:
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise GatewayError(f"request body nests deeper than {MAX_JSON_DEPTH} levels", status_hint=400)
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise GatewayError("request body holds a string that is not valid Unicode", status_hint=400) from None
        elif isinstance(item, float) and not math.isfinite(item):
            raise GatewayError("request body holds a number out of range", status_hint=400)
        elif isinstance(item, dict):
            stack.extend((v, depth + 1) for v in (*item.keys(), *item.values()))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


class GatewayApp:
    def __init__(self, guard: Guard | None = None) -> None:
        self._routes: list[tuple[str, tuple[str, ...], Handler]] = []
        self.guard = guard  # None: no authentication and no limits (tests, fakes)

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Register ``handler`` for ``method path``; a path segment ``{name}`` matches one segment."""
        self._routes.append((method, tuple(path.strip("/").split("/")), handler))

    def _match(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        segments = tuple(path.strip("/").split("/"))
        allowed = False
        for route_method, pattern, handler in self._routes:
            params = _match_segments(pattern, segments)
            if params is None:
                continue
            if route_method == method:
                return handler, params
            allowed = True
        if allowed:
            methods = {m for m, pattern, _ in self._routes if _match_segments(pattern, segments) is not None}
            raise MethodNotAllowed(method, path, sorted(methods))
        raise GatewayError(f"no such endpoint: {path}", status_hint=404)

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        admitted = None
        try:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            if self.guard is not None:
                admitted = self.guard.admit(headers)
            handler, params = self._match(scope["method"], scope["path"])
            body = await _read_body(receive)
            request = Request(
                scope["method"], scope["path"], scope["query_string"].decode("latin-1"), headers, params, body,
                user=admitted.user if admitted else None,
            )
            # A client that goes away cancels its request wherever it is: waiting for candidates, streaming.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
                response = await handler(request)
                if isinstance(response, StreamResponse):
                    await _stream(response, send)
                else:
                    await _send_json(send, response)
                nursery.cancel_scope.cancel()
        except* (GatewayError, BackendError) as group:
            exc = first_leaf(group)
            headers = exc.headers if isinstance(exc, GatewayError) else ()
            await _send_json(send, JSONResponse({"error": str(exc)}, exc.status_hint, headers=headers))
        finally:
            if admitted is not None:
                admitted.release()


class MethodNotAllowed(GatewayError):
    def __init__(self, method: str, path: str, allowed: list[str]) -> None:
        super().__init__(f"method {method} not allowed on {path}", status_hint=405)
        self.headers = (("allow", ", ".join(allowed)),)


async def _stream(response: StreamResponse, send: Callable) -> None:
    started = False
    try:
        # Opening may still fail with a status (unknown model, nothing can serve): that propagates as JSON.
        async with response.open() as parts:
            headers = [(b"content-type", response.content_type.encode()), (b"cache-control", b"no-cache")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            started = True
            async for part in parts:
                await send({"type": "http.response.body", "body": part, "more_body": True})
    except* (GatewayError, BackendError) as group:
        if not started:
            raise first_leaf(group) from None
        # The status is sent: the client sees the body end early (e.g. a deadline hit while closing).
        log.warning("stream ended by an error after its status was sent: %s", first_leaf(group))
    if started:
        await send({"type": "http.response.body", "body": b""})


async def _cancel_on_disconnect(receive: Callable, stream: trio.CancelScope) -> None:
    """The client went away: stop producing (which closes the backend streams behind the answer)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    log.debug("client disconnected: cancelling its stream")
    stream.cancel()


def _match_segments(pattern: tuple[str, ...], segments: tuple[str, ...]) -> dict[str, str] | None:
    if len(pattern) != len(segments):
        return None
    params: dict[str, str] = {}
    for want, got in zip(pattern, segments):
        if want.startswith("{") and want.endswith("}"):
            if not got:
                return None
            params[want[1:-1]] = got
        elif want != got:
            return None
    return params


async def _read_body(receive: Callable) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise GatewayError("client went away", status_hint=499)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise GatewayError(f"request body over {MAX_BODY_BYTES} bytes", status_hint=413)
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _send_json(send: Callable, response: JSONResponse) -> None:
    payload = json.dumps(response.body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.headers]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _lifespan(receive: Callable, send: Callable) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def serve_gateway(
    app: Callable, host: str, port: int, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the ASGI ``app`` with hypercorn's trio worker on ``host:port``; reports the base URL it listens on."""
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("p2pnode.gateway.hypercorn")
    config.include_server_header = False
    config.graceful_timeout = 1.0

    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        await serve(app, config, task_status=task_status, mode="asgi")

    async with trio.open_nursery() as nursery:
        with naming_bind_errors(f"cannot serve the gateway on {host}:{port}", "--http"):
            binds = await nursery.start(run)
        task_status.started(binds[0])
