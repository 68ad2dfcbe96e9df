"""What the chat endpoints need from the node: the models to list and a way to run a chat. The coordinator
provides it (distributed requests); tests may put a single backend behind it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from p2pnode.backends.base import ChatChunk, ChatRequest, ModelInfo

__all__ = ["ChatService", "Routing"]


@dataclass(frozen=True)
class Routing:
    """How the client asked for its request to be spread over the network (validated by the service)."""

    use_distributed: bool = True
    distributed: dict[str, Any] = field(default_factory=dict)  # the request body's "distributed" object
    header_strategy: str | None = None  # X-DCN-Strategy
    user: str | None = None  # who asks, when the gateway authenticated them; None: this node's owner


class ChatService(Protocol):
    @property
    def models(self) -> list[ModelInfo]: ...

    def holders(self, model: str) -> list[str]: ...

    def open_chat(
        self, request: ChatRequest, routing: Routing | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[ChatChunk]]: ...

    async def complete(self, request: ChatRequest, routing: Routing | None = None) -> tuple[str, ChatChunk]:
        """The whole text, and the last chunk (reason, counters, metadata)."""

