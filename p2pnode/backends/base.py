"""The backend interface every local LLM server adapter implements, and the HTTP plumbing they share.

A backend lists its models, tells whether it is healthy, and runs chats and completions, streaming or not.
Streams are async context managers (``open_chat``): leaving the context closes the HTTP stream, which is how
a generation is cancelled (Ollama and llama.cpp stop generating when their client goes away). Every call has
deadlines: connecting, each next chunk (``read_timeout``), and the whole call (``ChatRequest.timeout``). Failures
are typed (:class:`BackendError` and its subclasses), never a hang and never a raw httpx error.

Requests use Ollama's option names as the common language (``num_predict``, ``temperature``, ``stop``...);
each adapter translates them for its server.
"""

from __future__ import annotations

import abc
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import aclosing, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from p2pnode.errors import (
    BackendError,
    BackendProtocolError,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
)

__all__ = [
    "Backend",
    "BackendConfig",
    "ChatChunk",
    "ChatRequest",
    "ChatResult",
    "GenerateRequest",
    "ModelInfo",
    "translate_http_errors",
]

MAX_LINE_BYTES = 1024 * 1024  # one NDJSON line or SSE event; a server sending more is broken
KEEPALIVE_EXPIRY = 4.0  # seconds an idle pooled connection is kept
MAX_ERROR_BODY = 64 * 1024


@dataclass(frozen=True)
class BackendConfig:
    connect_timeout: float = 5.0
    read_timeout: float = 300.0  # longest wait for the next chunk (a model may load before the first one)
    probe_timeout: float = 3.0  # health checks and model lists
    default_timeout: float = 600.0  # a whole call, when the request sets none
    parallel: int = 1  # requests the server runs at once (its slots); the load figure is active / parallel


@dataclass(frozen=True)
class ModelInfo:
    name: str
    size: int = 0  # bytes on disk, when known
    loaded: bool = False  # in memory now
    vram_mb: int = 0  # GPU memory it occupies now, when the server says
    context_length: int = 0  # tokens, when known


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[Mapping[str, Any], ...]  # {"role": ..., "content": ...}
    options: Mapping[str, Any] = field(default_factory=dict)  # Ollama option names
    timeout: float | None = None  # seconds for the whole call
    keep_alive: str | int | None = None
    # False: the caller wants only the whole answer, so the backend may send it in one piece (one JSON reply
    # instead of a stream of events: cheaper, and servers such as llama.cpp keep the connection open after it)
    stream: bool = True


@dataclass(frozen=True)
class GenerateRequest:
    """A raw completion: continue ``prompt`` (after an optional system prompt)."""

    model: str
    prompt: str
    system: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # Ollama option names
    timeout: float | None = None


@dataclass(frozen=True)
class ChatChunk:
    content: str = ""
    done: bool = False
    done_reason: str | None = None  # "stop" or "length" on the last chunk
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    metadata: Mapping[str, Any] | None = None  # on the last chunk of a distributed answer: who did what


@dataclass(frozen=True)
class ChatResult:
    model: str
    content: str
    done_reason: str
    prompt_tokens: int
    completion_tokens: int
    first_token_ms: float
    total_ms: float


class Backend(abc.ABC):
    """One LLM server. Subclasses implement the server's API; this class holds the shared behaviour."""

    kind: str = ""

    def __init__(self, url: str, config: BackendConfig, *, client: httpx.AsyncClient | None = None) -> None:
        self.url = url.rstrip("/")
        self.config = config
        timeout = httpx.Timeout(connect=config.connect_timeout, read=config.read_timeout, write=30.0, pool=30.0)
        # Idle connections are dropped before servers drop them (llama.cpp after 5 s, httpx's own default), so a
        # request rarely meets a connection the server is closing at that very moment.
        limits = httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY)
        self._client = client or httpx.AsyncClient(base_url=self.url, timeout=timeout, limits=limits)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url})"

    async def aclose(self) -> None:
        await self._client.aclose()

    @abc.abstractmethod
    async def list_models(self) -> list[ModelInfo]:
        """Every model the server can run (loaded or not)."""

    @abc.abstractmethod
    async def health(self) -> bool:
        """Whether the server answers now (never raises)."""

    @abc.abstractmethod
    def open_chat(self, request: ChatRequest) -> Any:
        """``async with backend.open_chat(req) as chunks: async for chunk in chunks: ...``"""

    @abc.abstractmethod
    def open_generate(self, request: GenerateRequest) -> Any:
        """Like :meth:`open_chat`, for a raw completion of a prompt."""

    async def chat(self, request: ChatRequest) -> ChatResult:
        """A whole answer, from the stream."""
        start = time.perf_counter()
        first: float | None = None
        parts: list[str] = []
        last = ChatChunk()
        async with self.open_chat(request) as chunks:
            async for chunk in chunks:
                if chunk.content and first is None:
                    first = time.perf_counter()
                parts.append(chunk.content)
                last = chunk
        end = time.perf_counter()
        return ChatResult(
            model=request.model,
            content="".join(parts),
            done_reason=last.done_reason or "stop",
            prompt_tokens=last.prompt_tokens or 0,
            completion_tokens=last.completion_tokens or 0,
            first_token_ms=((first or end) - start) * 1000,
            total_ms=(end - start) * 1000,
        )

    # ---- plumbing for subclasses ---------------------------------------------------------------------------

    def _deadline(self, request: ChatRequest | GenerateRequest) -> float:
        return trio.current_time() + (request.timeout or self.config.default_timeout)

    async def _get_json(self, path: str) -> Any:
        with translate_http_errors(self), trio.fail_after(self.config.probe_timeout):
            response = await self._client.get(path, timeout=self.config.probe_timeout)
            await _raise_for_status(response, self)
            return _parse_json(response.content, self, path)

    async def _post_json(self, path: str, body: dict[str, Any]) -> Any:
        with translate_http_errors(self), trio.fail_after(self.config.probe_timeout):
            response = await self._client.post(path, json=body, timeout=self.config.probe_timeout)
            await _raise_for_status(response, self)
            return _parse_json(response.content, self, path)

    @asynccontextmanager
    async def _open_lines(self, path: str, body: dict[str, Any], deadline: float) -> AsyncIterator[AsyncIterator[str]]:
        """POST ``body`` and yield the response's lines; the whole exchange ends by ``deadline``."""
        # A whole answer (not streamed) sends nothing until it is done: only the call's deadline bounds it.
        read = self.config.read_timeout if body.get("stream", True) else max(1.0, deadline - trio.current_time())
        with translate_http_errors(self), trio.fail_at(deadline):
            async with _retrying_stream(self._client, path, body, read) as response:
                await _raise_for_status(response, self)
                async with aclosing(_bounded_lines(response, self)) as lines:
                    yield lines


@asynccontextmanager
async def _retrying_stream(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], read_timeout: float
) -> AsyncIterator[httpx.Response]:
    """POST and open the response, once more if a pooled connection turned out closed before any reply byte:
    the server never saw that request, so sending it again cannot run it twice."""
    base = client.timeout
    timeout = httpx.Timeout(connect=base.connect, read=read_timeout, write=base.write, pool=base.pool)
    request = client.build_request("POST", path, json=body, timeout=timeout)
    try:
        response = await client.send(request, stream=True)
    except httpx.RemoteProtocolError:
        response = await client.send(request, stream=True)
    try:
        yield response
    finally:
        await response.aclose()


async def _bounded_lines(response: httpx.Response, backend: Backend) -> AsyncIterator[str]:
    # Errors surface where the consumer iterates, outside _open_lines' frame: translate them here too.
    buffer = ""
    with translate_http_errors(backend):
        async for text in response.aiter_text():
            buffer += text
            if len(buffer) > MAX_LINE_BYTES and "\n" not in buffer:
                raise BackendProtocolError(f"{backend.kind} sent a line over {MAX_LINE_BYTES} bytes")
            *lines, buffer = buffer.split("\n")
            for line in lines:
                yield line.rstrip("\r")
    if buffer.strip():
        yield buffer


def _parse_json(data: bytes | str, backend: Backend, where: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise BackendProtocolError(f"{backend.kind} at {backend.url} sent invalid JSON in {where}") from None


async def _raise_for_status(response: httpx.Response, backend: Backend) -> None:
    if response.status_code < 400:
        return
    body = b""
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_ERROR_BODY:
            break
    try:
        message = json.loads(body).get("error", "")
        if isinstance(message, dict):  # OpenAI style: {"error": {"message": ...}}
            message = message.get("message", "")
    except (ValueError, AttributeError):
        message = body[:200].decode(errors="replace")
    text = f"{backend.kind} answered HTTP {response.status_code}: {message or response.reason_phrase}"
    if response.status_code in (400, 404, 413, 422):
        raise BackendRejected(text, status_hint=404 if response.status_code == 404 else 400)
    if response.status_code == 503:
        raise BackendUnavailable(text)
    raise BackendError(text)


@contextmanager
def translate_http_errors(backend: Backend) -> Iterator[None]:
    """httpx and trio errors become :class:`BackendError` subclasses that name the server."""
    where = f"{backend.kind} at {backend.url}"
    try:
        yield
    except trio.TooSlowError:
        raise BackendTimeout(f"{where} did not finish before the deadline") from None
    except httpx.TimeoutException as exc:
        raise BackendTimeout(f"{where} timed out ({type(exc).__name__})") from exc
    except httpx.ConnectError as exc:
        raise BackendUnavailable(f"{where} is not answering: {exc}") from exc
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
        raise BackendUnavailable(f"{where} broke the connection: {exc}") from exc
    except httpx.HTTPError as exc:
        raise BackendError(f"{where} failed: {exc}") from exc


def ensure(condition: bool, backend: Backend, message: str) -> None:
    if not condition:
        raise BackendProtocolError(f"{backend.kind} at {backend.url}: {message}")

