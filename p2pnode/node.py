"""The composition root: one nursery, one service per ``nursery.start``. Wires things together; no logic."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from typing import Any

import trio

from p2pnode import keystore
from p2pnode.backends.attached import AttachedServers
from p2pnode.backends.base import BackendConfig
from p2pnode.backends.local import ComputeConfig, LocalCompute
from p2pnode.backends.resources import probe_resources
from p2pnode.backends.select import select_backends
from p2pnode.config import NodeConfig
from p2pnode.coordinator import Coordinator, CoordinatorConfig
from p2pnode.core.identity import Identity
from p2pnode.core.records import AttachedNode, seal_record
from p2pnode.core.scheduler import Scheduler
from p2pnode.gateway import distributed_api, ollama_api, openai_api, openapi, requests_api
from p2pnode.gateway.app import GatewayApp, serve_gateway
from p2pnode.gateway.guard import Guard, check_exposure, is_loopback
from p2pnode.net.discovery import Discovery, DiscoveryConfig
from p2pnode.net.jobs import Jobs
from p2pnode.net.overlay import Overlay
from p2pnode.workers import Workers

__all__ = ["Node", "NodeAddresses"]

RECORD_HEADROOM = 512  # bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeAddresses:
    peer_id: str
    peer_port: int
    peer_urls: tuple[str, ...]
    http_url: str


class Node:
    def __init__(self, config: NodeConfig, identity: Identity) -> None:
        self.config = config
        self.identity = identity
        self.compute: LocalCompute | None = None
        self.overlay: Overlay | None = None
        self.attached = AttachedServers(
            config.attached, BackendConfig(), on_change=self._changed, fits=self._record_fits
        )
        self.jobs = Jobs(lambda: self.compute, self.attached, config.jobs, identity=identity)
        self.workers = Workers(lambda: self.overlay, lambda: self.compute, self.attached, self.jobs, user=config.user)
        self.coordinator = Coordinator(self.workers, Scheduler(), CoordinatorConfig())
        self.guard = Guard(config.data_dir, config.gateway, require_keys=not is_loopback(config.http_host))
        check_exposure(config.http_host, self.guard.keys)
        self.gateway = GatewayApp(self.guard)
        distributed_api.install(self.gateway, lambda: self.overlay.membership, self.attached, self._clocks)
        ollama_api.install(self.gateway, lambda: self.coordinator)
        requests_api.install(self.gateway, lambda: self.coordinator)
        openai_api.install(self.gateway, lambda: self.coordinator)
        openapi.install(self.gateway)

    @staticmethod
    def _clocks() -> tuple[float, float]:
        return trio.current_time(), time.time()

    def _describe(self) -> dict[str, Any]:
        return {
            "name": self.config.name, "user_id": self.config.user, **self.compute.describe(),
            "attached": self.attached.nodes(),
        }

    async def run(self, *, task_status: trio.TaskStatus[NodeAddresses] = trio.TASK_STATUS_IGNORED) -> None:
        """Run compute, overlay, gateway (and mDNS) until cancelled; reports where they listen once all are up."""
        cfg = self.config
        backends = await select_backends(cfg.backends, none=cfg.no_backend, config=BackendConfig())
        try:
            async with trio.open_nursery() as nursery:
                for backend in backends:
                    if hasattr(backend, "run"):  # a server we start and supervise ourselves
                        await nursery.start(backend.run)
                self.compute = LocalCompute(backends, probe_resources(), ComputeConfig(), on_change=self._changed)
                await nursery.start(self.compute.run)
                await nursery.start(self.jobs.run)
                await nursery.start(self.attached.run)
                await nursery.start(self.guard.run)
                self.overlay = Overlay(self.identity, cfg.overlay, self._describe, extensions=[self.jobs])
                peer_port = await nursery.start(self.overlay.run)
                http_url = await nursery.start(serve_gateway, self.gateway, cfg.http_host, cfg.http_port)
                if cfg.mdns:
                    discovery = Discovery(
                        DiscoveryConfig(interfaces=cfg.mdns_interfaces),
                        peer_id=self.identity.peer_id,
                        name=cfg.name,
                        network=cfg.overlay.network,
                        port=peer_port,
                        on_found=lambda advert: self.overlay.dial_hint(advert.peer_id, advert.urls()),
                    )
                    # In the background: registering takes ~1.6 s, and the node is usable through seeds before.
                    nursery.start_soon(discovery.run)
                addresses = NodeAddresses(self.identity.peer_id, peer_port, self.overlay.local_record.record.addrs, http_url)
                # A few hundred bytes on local disk: not worth a worker thread.
                keystore.write_runtime(cfg.data_dir, {
                    "pid": os.getpid(),
                    "peer_id": addresses.peer_id,
                    "peer_urls": list(addresses.peer_urls),
                    "http_url": http_url,
                })
                log.info(
                    "node %s (%s) ready: gateway %s, peers %s, %d seed(s), network %s, models: %s",
                    self.identity.peer_id, cfg.name, http_url, ", ".join(addresses.peer_urls),
                    len(cfg.overlay.seeds), cfg.overlay.network,
                    ", ".join(m.name for m in self.compute.models) or "none",
                )
                if cfg.overlay.network_key is None:
                    log.warning(
                        "OPEN NETWORK: anyone who can reach %s may join, read the records and run jobs here; links "
                        "are encrypted but not restricted. Make a private one with `dcn-node keys new-network FILE` "
                        "and run every node with --network-key FILE", ", ".join(addresses.peer_urls),
                    )
                task_status.started(addresses)
        finally:
            with trio.CancelScope(shield=True):
                for backend in backends:
                    await backend.aclose()

    def _record_fits(self, attached: tuple[AttachedNode, ...]) -> bool:
        """Whether our record with these attached servers stays within what peers accept (with room for the
        load figures, which change size as they change)."""
        if self.overlay is None:
            return True
        record = replace(self.overlay.local_record.record, attached=attached)
        limit = self.config.overlay.records.max_envelope_bytes - RECORD_HEADROOM
        return len(seal_record(self.identity, record).envelope) <= limit

    def _changed(self) -> None:
        if self.overlay is not None:
            self.overlay.request_refresh()

    async def leave(self) -> None:
        """Tell peers we are going (they mark us left at once) and forget the runtime file."""
        if self.overlay is not None:
            await self.overlay.leave()
        keystore.remove_runtime(self.config.data_dir)
