"""A user's own requests: ``GET /api/distributed/requests`` lists those running, and
``DELETE /api/distributed/requests/{id}`` cancels one (every job of it, on every node). Nobody sees or cancels
another user's: to them it does not exist (404)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from p2pnode.errors import GatewayError
from p2pnode.gateway.app import GatewayApp, JSONResponse, Request

__all__ = ["install"]


class RequestRegistry(Protocol):
    def requests_of(self, user: str | None) -> list[dict[str, Any]]: ...

    def cancel(self, request_id: int, user: str | None) -> bool: ...


def install(app: GatewayApp, registry: Callable[[], RequestRegistry]) -> None:
    async def listing(request: Request) -> JSONResponse:
        return JSONResponse({"requests": registry().requests_of(request.user)})

    async def cancel(request: Request) -> JSONResponse:
        raw = request.path_params["request_id"]
        if not (raw.isascii() and raw.isdigit()) or not registry().cancel(int(raw), request.user):
            raise GatewayError(f"no request {raw} of yours is running", status_hint=404)
        return JSONResponse({"id": int(raw), "status": "cancelled"})

    app.route("GET", "/api/distributed/requests", listing)
    app.route("DELETE", "/api/distributed/requests/{request_id}", cancel)
