"""LLM servers that run no daemon, attached to this node over HTTP (``POST /api/distributed/register``).

This node serves them and gossips them, inside its own record, as nodes of their own: a peer that picks one sends
the job here and this node runs it on the server's Ollama API. Each registration belongs to the user who made it;
only that user may update (``POST /api/distributed/status/{node_id}``, the heartbeat) or remove it. A server whose
heartbeats stop is shown offline and takes no work; after ``forget_after`` it leaves the record.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import trio

from p2pnode.backends.base import BackendConfig, ChatChunk, ChatRequest
from p2pnode.backends.local import tracked_chat
from p2pnode.backends.ollama import OllamaBackend
from p2pnode.config import AttachedConfig
from p2pnode.core.load import LoadTracker
from p2pnode.core.records import AttachedNode, NodeStatus
from p2pnode.errors import BackendRejected, GatewayError

__all__ = ["AttachedServers", "Registration", "StatusUpdate"]

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Registration:
    """A validated ``register`` body (validation is the gateway's)."""

    node_id: str
    url: str  # the server's Ollama API
    name: str = ""
    user_id: str = ""
    models: tuple[str, ...] = ()
    gpu_count: int = 0
    gpu_memory: int = 0
    cpu_cores: int = 0


@dataclass(frozen=True)
class StatusUpdate:
    """A validated heartbeat; ``None`` leaves a field as it was."""

    status: NodeStatus = NodeStatus.ONLINE
    models: tuple[str, ...] | None = None
    current_load: float | None = None
    response_time: float | None = None


@dataclass
class _Server:
    node: AttachedNode
    backend: OllamaBackend
    tracker: LoadTracker
    heard_at: float  # trio time of the registration or last heartbeat


class AttachedServers:
    def __init__(
        self,
        config: AttachedConfig,
        backend_config: BackendConfig,
        *,
        on_change: Callable[[], None],
        fits: Callable[[tuple[AttachedNode, ...]], bool] = lambda attached: True,
    ) -> None:
        self.config = config
        self._backend_config = backend_config
        self._on_change = on_change
        self._fits = fits  # whether our record, with these attached servers in it, is one peers accept
        self._servers: dict[str, _Server] = {}
        self._retired: list[_Server] = []  # removed; their HTTP clients close once their last job ends

    def __len__(self) -> int:
        return len(self._servers)

    def get(self, node_id: str) -> AttachedNode | None:
        server = self._servers.get(node_id)
        return _view(server) if server else None

    def nodes(self) -> tuple[AttachedNode, ...]:
        """As gossiped in our record, with our own count of the jobs we run on each."""
        return tuple(_view(s) for s in sorted(self._servers.values(), key=lambda s: s.node.node_id))

    def register(self, registration: Registration, *, user: str) -> AttachedNode:
        """Attach (or re-attach) a server for ``user``; another user's node id is refused with 403."""
        if self.config.allowed_users and user not in self.config.allowed_users:
            raise GatewayError("this node's owner does not let you attach servers to it", status_hint=403)
        existing = self._servers.get(registration.node_id)
        if existing is not None:
            self._check_owner(existing, user)
        elif len(self._servers) >= self.config.max_servers:
            raise GatewayError(
                f"this node already serves {self.config.max_servers} attached servers; register with another node",
                status_hint=409,
            )
        node = AttachedNode(
            node_id=registration.node_id, name=registration.name or registration.node_id, user_id=user,
            models=registration.models, gpu_count=registration.gpu_count, gpu_memory=registration.gpu_memory,
            cpu_cores=registration.cpu_cores,
        )
        self._check_room(node)
        if existing is not None and existing.backend.url == registration.url.rstrip("/"):
            existing.node, existing.heard_at = node, trio.current_time()
        else:
            if existing is not None:
                self._discard(registration.node_id)
            self._servers[node.node_id] = _Server(
                node, OllamaBackend(registration.url, self._backend_config), LoadTracker(capacity=1),
                trio.current_time(),
            )
        log.info("attached server %s (%s) at %s for user %s: %s", node.node_id, node.name,
                 _without_credentials(registration.url), user, ", ".join(node.models) or "no models")
        self._on_change()
        return node

    def heartbeat(self, node_id: str, update: StatusUpdate, *, user: str) -> AttachedNode:
        server = self._owned(node_id, user)
        node = server.node
        if update.models is not None:
            node = replace(node, models=update.models)
            self._check_room(node)
        if update.current_load is not None:
            node = replace(node, current_load=update.current_load)
        if update.response_time is not None:
            node = replace(node, response_time=update.response_time)
        server.node, server.heard_at = replace(node, status=update.status), trio.current_time()
        self._on_change()
        return server.node

    def remove(self, node_id: str, *, user: str) -> None:
        self._owned(node_id, user)
        self._discard(node_id)
        log.info("attached server %s removed by user %s", node_id, user)
        self._on_change()

    def _check_room(self, node: AttachedNode) -> None:
        """Attached servers travel in this node's record, which peers refuse above a size: check it would fit."""
        attached = tuple(sorted({**{n.node_id: n for n in self.nodes()}, node.node_id: node}.values(),
                                key=lambda n: n.node_id))
        if not self._fits(attached):
            raise GatewayError(
                "this node's record would grow beyond what peers accept: list fewer models, use shorter names, "
                "or register with another node", status_hint=409,
            )

    def _owned(self, node_id: str, user: str) -> _Server:
        server = self._servers.get(node_id)
        if server is None:
            raise GatewayError(f"no attached server {node_id!r} on this node: register it first", status_hint=404)
        self._check_owner(server, user)
        return server

    @staticmethod
    def _check_owner(server: _Server, user: str) -> None:
        if server.node.user_id != user:
            raise GatewayError(f"attached server {server.node.node_id!r} belongs to another user", status_hint=403)

    def _discard(self, node_id: str) -> None:
        # Its HTTP client is closed by run(), outside this synchronous call, once no job uses it any more.
        self._retired.append(self._servers.pop(node_id))

    # ---- time ----------------------------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Silent servers go offline, and long-silent ones are forgotten."""
        changed = False
        for node_id, server in list(self._servers.items()):
            silent = now - server.heard_at
            if silent > self.config.heartbeat_timeout + self.config.forget_after:
                log.info("attached server %s forgotten after %.0f s without a heartbeat", node_id, silent)
                self._discard(node_id)
                changed = True
            elif silent > self.config.heartbeat_timeout and server.node.status is not NodeStatus.OFFLINE:
                log.info("attached server %s offline: no heartbeat for %.0f s", node_id, silent)
                server.node = replace(server.node, status=NodeStatus.OFFLINE)
                changed = True
        if changed:
            self._on_change()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                await trio.sleep(self.config.check_interval)
                self.expire(trio.current_time())
                for server in [s for s in self._retired if not s.tracker.active]:
                    self._retired.remove(server)
                    await server.backend.aclose()
        finally:
            with trio.CancelScope(shield=True):
                for server in [*self._retired, *self._servers.values()]:
                    await server.backend.aclose()

    # ---- jobs ----------------------------------------------------------------------------------------------

    def open_chat(self, node_id: str, request: ChatRequest) -> AbstractAsyncContextManager[AsyncIterator[ChatChunk]]:
        """Run ``request`` on an attached server, counted in its load figures."""
        server = self._servers.get(node_id)
        if server is None or server.node.status is not NodeStatus.ONLINE or request.model not in server.node.models:
            raise BackendRejected(f"attached server {node_id!r} cannot serve {request.model!r} now", status_hint=404)
        return tracked_chat(server.backend.open_chat(request), server.tracker, lambda: None)



def _view(server: _Server) -> AttachedNode:
    return replace(server.node, active_tasks=server.tracker.active,
                   current_load=max(server.node.current_load, server.tracker.load))


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
