"""Who may use the gateway, and how much: API keys, a request rate and a cap on concurrent requests per user.

Keys are required whenever any exist (``dcn-node keys add-user NAME``); a gateway that listens beyond loopback
refuses to start without them (:func:`check_exposure`). Without keys every request comes from one local user,
named ``None``: the node's owner, trusted because only this machine can reach the gateway, and not limited (a
batch script of one's own should not meet a 429). Limits apply per user. ``users.json`` is re-read when it
changes, so a removed user's key stops working within ``reload_interval``.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import Callable
from pathlib import Path

import trio

from p2pnode import users
from p2pnode.config import GatewayConfig
from p2pnode.core.limits import ConcurrencyLimit, KeyedLimiter
from p2pnode.errors import ConfigError, GatewayError

__all__ = ["Guard", "Pass", "check_exposure", "is_loopback"]

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(http_host: str, keys: users.UserKeys) -> None:
    """Refuse a gateway reachable from other machines with nobody to check: anyone there could use every GPU."""
    if not is_loopback(http_host) and not keys:
        raise ConfigError(
            f"the gateway would listen on {http_host}, beyond this machine, with no API keys: create one with "
            "`dcn-node keys add-user NAME` (clients then send `Authorization: Bearer KEY`), or use --http 127.0.0.1:PORT"
        )


class Pass:
    """One admitted request: who sent it. Release it when the request is over (its stream included)."""

    def __init__(self, guard: Guard, user: str | None) -> None:
        self.user = user
        self._guard = guard
        self._released = user is None  # the unauthenticated owner holds no slot

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._guard._streams.release(self.user)


class Guard:
    def __init__(
        self,
        data_dir: Path,
        config: GatewayConfig,
        *,
        require_keys: bool = False,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.config = config
        self.require_keys = require_keys  # listening beyond loopback: never open, even if every key is removed
        self._data_dir = data_dir
        self._clock = clock
        self.keys = users.UserKeys.load(data_dir)
        self._stamp = users.users_stamp(data_dir)
        self._rates = KeyedLimiter(config.rate_per_minute / 60 or None, config.burst, max_keys=config.max_clients)
        self._streams = ConcurrencyLimit(config.max_concurrent or None)

    def admit(self, headers: dict[str, str]) -> Pass:
        """Authenticate and count a request: 401 without a valid key (when keys exist), 429 over a limit."""
        user = self._authenticate(headers)
        if user is None:
            return Pass(self, None)
        wait = self._rates.take(user, self._clock())
        if wait:
            raise RateLimited(f"rate limit of {self.config.rate_per_minute:g} requests per minute reached", wait)
        if not self._streams.try_acquire(user):
            raise RateLimited(f"{self.config.max_concurrent} requests already running for you: wait for one", 1.0)
        return Pass(self, user)

    def _authenticate(self, headers: dict[str, str]) -> str | None:
        if not self.keys:
            if self.require_keys:
                raise GatewayError("this gateway has no API keys left: add one with `dcn-node keys add-user NAME`",
                                   status_hint=401)
            return None
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise GatewayError("this gateway needs an API key: send `Authorization: Bearer KEY`", status_hint=401)
        user = self.keys.authenticate(key.strip())
        if user is None:
            raise GatewayError("unknown or revoked API key", status_hint=401)
        return user

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Pick up added and removed users until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(self.config.reload_interval)
            stamp = users.users_stamp(self._data_dir)  # a stat of one small local file: no worker thread
            if stamp != self._stamp:
                try:
                    self.keys = users.UserKeys.load(self._data_dir)
                except ConfigError as exc:
                    log.warning("kept the previous API keys: %s", exc)
                else:
                    log.info("API keys reloaded: %d user(s)", len(self.keys))
                self._stamp = stamp


class RateLimited(GatewayError):
    """429 with the seconds to wait, for the Retry-After header."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, status_hint=429)
        self.retry_after = max(1, math.ceil(retry_after))
        self.headers = (("retry-after", str(self.retry_after)),)
