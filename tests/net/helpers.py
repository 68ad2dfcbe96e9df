"""In-process networks of real overlays over loopback websockets."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import trio

from p2pnode.config import GossipConfig, OverlayConfig, PeersConfig
from p2pnode.core.identity import Identity
from p2pnode.core.membership import MemberState
from p2pnode.net.overlay import Overlay

# Fast timers: the tests wait on conditions, never on time, but quick rounds keep them short.
FAST_GOSSIP = GossipConfig(interval=0.05, sync_interval=1.0, min_refresh_interval=0.1)
FAST_PEERS = PeersConfig(probe_interval=0.5, probe_timeout=1.0, heal_interval=0.5)


def overlay_config(**changes) -> OverlayConfig:
    base = OverlayConfig(listen_host="127.0.0.1", listen_port=0, gossip=FAST_GOSSIP, peers=FAST_PEERS)
    return dataclasses.replace(base, **changes)


@dataclasses.dataclass
class RunningOverlay:
    overlay: Overlay
    scope: trio.CancelScope
    url: str

    @property
    def peer_id(self) -> str:
        return self.overlay.peer_id

    def kill(self) -> None:
        """Stop abruptly: sockets close without a goodbye, as when a process is killed."""
        self.scope.cancel()


class Network:
    """Start overlays in the test's nursery; each can be killed on its own."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.nodes: list[RunningOverlay] = []

    async def start(
        self, name: str, *, seeds: tuple[str, ...] = (), identity: Identity | None = None, extensions=(),
        **config_changes,
    ) -> RunningOverlay:
        config = overlay_config(seeds=seeds, **config_changes)
        overlay = Overlay(
            identity or Identity.generate(), config, lambda: {"name": name, "cpu_cores": 2}, extensions=extensions
        )
        scope = trio.CancelScope()

        async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await overlay.run(task_status=task_status)

        port = await self._nursery.start(run)
        node = RunningOverlay(overlay, scope, f"ws://127.0.0.1:{port}")
        self.nodes.append(node)
        return node

    async def start_mesh(self, count: int) -> list[RunningOverlay]:
        seed = await self.start("seed")
        for i in range(1, count):
            await self.start(f"node{i}", seeds=(seed.url,))
        return self.nodes[-count:]


def state_of(observer: RunningOverlay, peer_id: str) -> MemberState | None:
    member = observer.overlay.membership.get(peer_id)
    return member.state if member else None


async def wait_all(nodes: list[RunningOverlay], predicate: Callable[[RunningOverlay], bool], timeout: float = 20) -> None:
    """Wait until ``predicate(node)`` holds on every node (a liveness bound, not a timing assertion)."""
    with trio.fail_after(timeout):
        for node in nodes:
            await node.overlay.wait_until(lambda node=node: predicate(node))
