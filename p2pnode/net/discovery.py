"""LAN discovery with mDNS: advertise ``_dcn._tcp.local.`` and dial what we find. The only zeroconf importer.

python-zeroconf runs its own thread (trio has no asyncio loop for it). Everything that blocks on it
(registration takes ~1.6 s, resolving up to ``resolve_timeout``, closing) runs in a worker thread via
``trio.to_thread``; the browser's handler only forwards ``(change, name)`` into trio. A vanished advertisement is
only a hint: membership decides whether a node is gone.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import trio
from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

from p2pnode.core.advert import SERVICE_TYPE, Advertisement, advert_properties, instance_name, read_advertisement
from p2pnode.core.identity import short_id
from p2pnode.core.records import PROTOCOL_VERSION
from p2pnode.errors import ConfigError, DecodeError

__all__ = ["Discovery", "DiscoveryConfig", "interface_addresses"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiscoveryConfig:
    interfaces: tuple[str, ...] = ()  # interface names; empty: all
    resolve_timeout: float = 3.0
    address_check_interval: float = 5.0  # how often we look for interfaces whose addresses changed
    max_pending: int = 256  # browser events waiting to be resolved; beyond, they are dropped


def interface_addresses(interfaces: tuple[str, ...]) -> list[str]:
    """Non-loopback IPv4 and IPv6 addresses of the chosen interfaces (all when none are named)."""
    found = psutil.net_if_addrs()
    unknown = [name for name in interfaces if name not in found]
    if unknown:
        raise ConfigError(f"--mdns-interface: no interface named {', '.join(unknown)} (have: {', '.join(found)})")
    addresses = []
    for name, entries in found.items():
        if interfaces and name not in interfaces:
            continue
        for entry in entries:
            if entry.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            address = entry.address.split("%")[0]
            if not ipaddress.ip_address(address).is_loopback:
                addresses.append(address)
    return addresses


class Discovery:
    """Advertise this node and report peers found on the LAN to ``on_found``."""

    def __init__(
        self,
        config: DiscoveryConfig,
        *,
        peer_id: str,
        name: str,
        network: str,
        port: int,
        on_found: Callable[[Advertisement], None],
    ) -> None:
        self.config = config
        self._peer_id = peer_id
        self._name = name
        self._network = network
        self._port = port
        self._on_found = on_found
        self._ignored: set[str] = set()  # peers of other networks, reported once

    def _service_info(self, addresses: list[str]) -> ServiceInfo:
        server = instance_name(self._peer_id).split(".")[0] + ".local."
        return ServiceInfo(
            SERVICE_TYPE,
            instance_name(self._peer_id),
            port=self._port,
            properties=advert_properties(self._peer_id, PROTOCOL_VERSION, self._network, self._port, self._name),
            server=server,
            parsed_addresses=addresses,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Advertise and browse until cancelled. Without multicast, say so once and return (seeds still work)."""
        while True:
            addresses = interface_addresses(self.config.interfaces)
            if not addresses:
                log.warning("mDNS: no usable network interface; LAN discovery is off (seeds still work)")
                task_status.started()
                return
            changed = await self._serve(addresses, task_status)
            task_status = trio.TASK_STATUS_IGNORED
            if not changed:
                return
            log.info("mDNS: interface addresses changed; advertising again")

    async def _serve(self, addresses: list[str], task_status: trio.TaskStatus[None]) -> bool:
        """One zeroconf instance over ``addresses``; returns True when the addresses changed (start again)."""
        try:
            zc = await trio.to_thread.run_sync(
                functools.partial(Zeroconf, interfaces=addresses, ip_version=IPVersion.All, use_asyncio=False)
            )
        except (OSError, RuntimeError) as exc:
            log.warning("mDNS unavailable (%s): LAN discovery is off, seeds still work", exc)
            task_status.started()
            return False
        browser = None
        try:
            info = self._service_info(addresses)
            await trio.to_thread.run_sync(
                functools.partial(zc.register_service, info, allow_name_change=True), abandon_on_cancel=True
            )
            log.info("mDNS: advertising %s on %s", SERVICE_TYPE, ", ".join(addresses))
            send, receive = trio.open_memory_channel[tuple[ServiceStateChange, str]](self.config.max_pending)
            token = trio.lowlevel.current_trio_token()

            def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
                # Runs on zeroconf's browser thread: forward only, never block on trio.
                try:
                    trio.from_thread.run_sync(send.send_nowait, (state_change, name), trio_token=token)
                except (trio.RunFinishedError, trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
            task_status.started()
            async with trio.open_nursery() as nursery:
                changed = trio.Event()
                nursery.start_soon(self._watch_addresses, addresses, changed)
                nursery.start_soon(self._handle_events, zc, receive)
                await changed.wait()
                nursery.cancel_scope.cancel()
            return True
        finally:
            with trio.CancelScope(shield=True):
                if browser is not None:
                    await trio.to_thread.run_sync(browser.cancel)
                await trio.to_thread.run_sync(zc.close)  # also withdraws our advertisement

    async def _watch_addresses(self, addresses: list[str], changed: trio.Event) -> None:
        while True:
            await trio.sleep(self.config.address_check_interval)
            if sorted(interface_addresses(self.config.interfaces)) != sorted(addresses):
                changed.set()
                return

    async def _handle_events(self, zc: Zeroconf, receive: trio.MemoryReceiveChannel) -> None:
        async with trio.open_nursery() as nursery:
            async for state_change, name in receive:
                if state_change is ServiceStateChange.Removed:
                    log.debug("mDNS: %s withdrew its advertisement (a hint, not a death)", name)
                else:
                    nursery.start_soon(self._resolve, zc, name)

    async def _resolve(self, zc: Zeroconf, name: str) -> None:
        timeout_ms = int(self.config.resolve_timeout * 1000)
        info = await trio.to_thread.run_sync(
            zc.get_service_info, SERVICE_TYPE, name, timeout_ms, abandon_on_cancel=True
        )
        if info is None:
            log.debug("mDNS: %s did not resolve", name)
            return
        try:
            advert = read_advertisement(info.decoded_properties, info.parsed_addresses())
        except DecodeError as exc:
            log.debug("mDNS: ignoring %s: %s", name, exc)
            return
        if advert.peer_id == self._peer_id:
            return
        if advert.network != self._network:
            if advert.peer_id not in self._ignored:
                self._ignored.add(advert.peer_id)
                log.info("mDNS: ignoring %s: it belongs to another network", short_id(advert.peer_id))
            return
        if advert.version != PROTOCOL_VERSION:
            log.info("mDNS: ignoring %s: protocol %d, we speak %d", short_id(advert.peer_id), advert.version, PROTOCOL_VERSION)
            return
        log.debug("mDNS: found %s at %s", short_id(advert.peer_id), ", ".join(advert.urls()))
        self._on_found(advert)
