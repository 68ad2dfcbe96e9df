"""This node's compute: its backends, the models they serve, its resources and its load, as record fields.

Models are refreshed every ``refresh_interval``; a backend that stops answering takes its models out of the
record until it answers again. Every job run here goes through :meth:`LocalCompute.open_chat`, which counts it
in ``active_tasks`` and ``current_load`` at once, and feeds the response-time moving average."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from p2pnode.backends.base import Backend, ChatChunk, ChatRequest, ModelInfo
from p2pnode.backends.resources import Resources
from p2pnode.core.load import LoadTracker
from p2pnode.errors import BackendError, BackendRejected

__all__ = ["ComputeConfig", "LocalCompute", "tracked_chat"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ComputeConfig:
    refresh_interval: float = 5.0  # seconds between model-list refreshes


class LocalCompute:
    def __init__(
        self,
        backends: Sequence[Backend],
        resources: Resources,
        config: ComputeConfig,
        *,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.backends = list(backends)
        self.resources = resources
        self.config = config
        self._on_change = on_change
        self._models: dict[str, tuple[Backend, ModelInfo]] = {}
        self._down: set[int] = set()  # indexes of backends that stopped answering
        self.tracker = LoadTracker(capacity=sum(b.config.parallel for b in self.backends) or 1)

    @property
    def models(self) -> list[ModelInfo]:
        return [info for _, info in self._models.values()]

    def serves(self, model: str) -> bool:
        return model in self._models

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Learn the models now, then keep them current until cancelled."""
        await self.refresh()
        task_status.started()
        while True:
            await trio.sleep(self.config.refresh_interval)
            await self.refresh()

    async def refresh(self) -> None:
        models: dict[str, tuple[Backend, ModelInfo]] = {}
        for index, backend in enumerate(self.backends):
            try:
                listed = await backend.list_models()
            except BackendError as exc:
                if index not in self._down:
                    self._down.add(index)
                    log.warning("%r stopped answering (%s): its models are out of our record until it is back", backend, exc)
                continue
            if index in self._down:
                self._down.discard(index)
                log.info("%r answers again", backend)
            for info in listed:
                models.setdefault(info.name, (backend, info))  # the first backend listed wins a shared model
        if {k: v[1] for k, v in models.items()} != {k: v[1] for k, v in self._models.items()}:
            added, removed = models.keys() - self._models.keys(), self._models.keys() - models.keys()
            if added or removed:
                log.info("models now: %s", ", ".join(sorted(models)) or "(none)")
            self._models = models
            self._on_change()

    def open_chat(self, request: ChatRequest) -> AbstractAsyncContextManager[AsyncIterator[ChatChunk]]:
        """Run ``request`` on the backend serving its model, counted in the load figures."""
        entry = self._models.get(request.model)
        if entry is None:
            raise BackendRejected(f"model {request.model!r} is not served by this node", status_hint=404)
        return tracked_chat(entry[0].open_chat(request), self.tracker, self._on_change)

    def describe(self) -> dict[str, Any]:
        """The record fields this node's compute fills."""
        gpu_count, gpu_memory = self.resources.gpu_count, self.resources.gpu_memory_mb
        if self.resources.gpu_source == "none":
            # No NVML: report what the backends say is on a GPU (Ollama's size_vram of loaded models).
            gpu_memory = sum(info.vram_mb for info in self.models)
            gpu_count = 1 if gpu_memory else 0
        return {
            "models": tuple(sorted(self._models)),
            "gpu_count": gpu_count,
            "gpu_memory": gpu_memory,
            "cpu_cores": self.resources.cpu_cores,
            "current_load": self.tracker.load,
            "active_tasks": self.tracker.active,
            "response_time": round(self.tracker.response_ms, 1),
        }


@asynccontextmanager
async def tracked_chat(
    opened: AbstractAsyncContextManager[AsyncIterator[ChatChunk]], tracker: LoadTracker, on_change: Callable[[], None]
) -> AsyncIterator[AsyncIterator[ChatChunk]]:
    """A backend chat counted in ``tracker`` from start to end; ``on_change`` when the count moves."""
    tracker.start()
    on_change()
    start = time.perf_counter()
    finished = False

    async def watched(chunks: AsyncIterator[ChatChunk]) -> AsyncIterator[ChatChunk]:
        nonlocal finished
        async for chunk in chunks:
            finished = finished or chunk.done
            yield chunk

    try:
        async with opened as chunks, aclosing(watched(chunks)) as stream:
            yield stream
    finally:
        # Only complete answers feed the response time: a cancelled one says nothing about speed.
        tracker.finish((time.perf_counter() - start) * 1000, ok=finished)
        on_change()
