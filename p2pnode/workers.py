"""Where a request's jobs can run: this node's compute, the servers attached to it, alive peers we hold a link
to, and the servers attached to those peers (reached through their host). The coordinator plans over the
:class:`NodeView` list this builds and opens each job with :meth:`Workers.open_on`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from p2pnode.backends.attached import AttachedServers
from p2pnode.backends.base import ChatChunk, ChatRequest, ModelInfo
from p2pnode.backends.local import LocalCompute
from p2pnode.core.identity import short_id
from p2pnode.core.records import AttachedNode, NodeStatus, attached_id
from p2pnode.core.scheduler import NodeView
from p2pnode.errors import PeerUnreachable
from p2pnode.net.jobs import Jobs
from p2pnode.net.overlay import Overlay

__all__ = ["Workers"]


class Workers:
    def __init__(
        self,
        overlay: Callable[[], Overlay],
        compute: Callable[[], LocalCompute | None],
        attached: AttachedServers,
        jobs: Jobs,
        *,
        user: str,
    ) -> None:
        self._overlay = overlay
        self._compute = compute
        self._attached = attached
        self._jobs = jobs
        self.owner = user  # this node's owner: the user of requests its gateway did not authenticate

    def nodes(self) -> list[NodeView]:
        """Every node that can take work now."""
        overlay = self._overlay()
        me = overlay.local_record.record.peer_id
        views = []
        if (compute := self._compute()) is not None:
            views.append(NodeView(
                peer_id=me, models=tuple(m.name for m in compute.models), current_load=compute.tracker.load,
                active_tasks=compute.tracker.active, response_time=compute.tracker.response_ms,
                loaded_models=tuple(m.name for m in compute.models if m.loaded), is_local=True,
            ))
        views.extend(_attached_view(me, node) for node in self._attached.nodes() if _serving(node))
        for member in overlay.membership.alive():
            record = member.signed.record
            if overlay.link_to(record.peer_id) is None:
                continue
            if record.models:
                views.append(NodeView(
                    peer_id=record.peer_id, models=record.models, current_load=record.current_load,
                    active_tasks=record.active_tasks, response_time=record.response_time,
                ))
            views.extend(_attached_view(record.peer_id, node) for node in record.attached if _serving(node))
        return views

    @property
    def models(self) -> list[ModelInfo]:
        """Every model some reachable node serves (the gateway's /api/tags and /v1/models)."""
        names = sorted({m for node in self.nodes() for m in node.models})
        compute = self._compute()
        local = {m.name: m for m in (compute.models if compute else [])}
        return [local.get(name, ModelInfo(name=name)) for name in names]

    def holders(self, model: str) -> list[str]:
        return [node.peer_id for node in self.nodes() if model in node.models]

    def open_on(
        self, node: NodeView, request: ChatRequest, *, user: str | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[ChatChunk]]:
        """Run ``request`` for ``user`` (None: this node's owner) on ``node``, wherever it is.
        :class:`PeerUnreachable` when a planned peer lost its link."""
        host, _, attached = node.peer_id.partition("/")
        if node.is_local:
            return self._compute().open_chat(request)
        if host == self._overlay().local_record.record.peer_id:
            return self._attached.open_chat(attached, request)
        link = self._overlay().link_to(host)
        if link is None:
            raise PeerUnreachable(f"no link to {short_id(host)} any more")
        return self._jobs.open_remote_chat(link, request, user=user or self.owner, target=attached)


def _serving(node: AttachedNode) -> bool:
    return node.status is NodeStatus.ONLINE and bool(node.models)


def _attached_view(host: str, node: AttachedNode) -> NodeView:
    return NodeView(
        peer_id=attached_id(host, node.node_id), models=node.models, current_load=node.current_load,
        active_tasks=node.active_tasks, response_time=node.response_time,
    )
