"""What the chat endpoints need from the node: models to list and a way to run a chat. Today the node's local
compute provides it; the coordinator (distributed requests) will provide the same interface."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from p2pnode.backends.base import ChatChunk, ChatRequest, ModelInfo

__all__ = ["ChatService", "collect"]


class ChatService(Protocol):
    @property
    def models(self) -> list[ModelInfo]: ...

    def open_chat(self, request: ChatRequest) -> AbstractAsyncContextManager[AsyncIterator[ChatChunk]]: ...


async def collect(service: ChatService, request: ChatRequest) -> tuple[str, ChatChunk]:
    """Run a chat to its end: the whole text, and the last chunk (reason and counters)."""
    parts: list[str] = []
    last = ChatChunk()
    async with service.open_chat(request) as chunks:
        async for chunk in chunks:
            parts.append(chunk.content)
            last = chunk
    return "".join(parts), last
