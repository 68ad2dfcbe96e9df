"""A LAN of hosts on one machine: Linux network namespaces joined by a bridge. Needs root and iproute2.

Each host is a namespace with one interface ``eth0`` (a veth whose other end is a port of the lab's bridge) and an
address in 198.18.K.0/24 (the benchmarking range, RFC 2544: never routed). The bridge has no uplink, so nothing
leaves the machine; it carries the lab's address .254 so that the harness itself can reach the hosts' gateways.
Cutting a host's link takes its bridge port down: a partition without stopping anything.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Lab", "LabHost", "lab_unavailable_reason"]


def lab_unavailable_reason() -> str | None:
    """Why a lab cannot be built here, or ``None`` when it can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "building network namespaces needs root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` command is missing (apt-get install iproute2)"
    return None


def _ip(*args: str, netns: str | None = None) -> str:
    command = ["ip", *args] if netns is None else ["ip", "netns", "exec", netns, "ip", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result.stdout


@dataclass
class LabHost:
    index: int
    netns: str
    port_name: str  # our bridge port (root side of the veth)
    address: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host."""
        return ["ip", "netns", "exec", self.netns, *argv]


@dataclass
class Lab:
    hosts_count: int
    # Fresh names and subnet for every lab: the kernel tears down a deleted namespace's links lazily, so a
    # lab built right after another with the same names could find them still there.
    subnet: int = field(default_factory=lambda: 64 + secrets.randbelow(128))  # K in 198.18.K.0/24
    tag: str = field(default_factory=lambda: "d" + secrets.token_hex(3))
    hosts: list[LabHost] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"{self.tag}br"

    @property
    def gateway_address(self) -> str:
        return f"198.18.{self.subnet}.254"

    def __enter__(self) -> Lab:
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()

    def create(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge", "mcast_snooping", "0")
        _ip("addr", "add", f"{self.gateway_address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i in range(self.hosts_count):
            self.add_host()
        self.wait_for_ipv6()

    def add_host(self) -> LabHost:
        i = len(self.hosts)
        host = LabHost(i, f"{self.tag}h{i}", f"{self.tag}v{i}", f"198.18.{self.subnet}.{i + 1}")
        _ip("netns", "add", host.netns)
        self.hosts.append(host)
        _ip("link", "add", host.port_name, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _ip("link", "set", host.port_name, "master", self.bridge, "up")
        _ip("link", "set", "lo", "up", netns=host.netns)
        _ip("addr", "add", f"{host.address}/24", "dev", "eth0", netns=host.netns)
        _ip("link", "set", "eth0", "up", netns=host.netns)
        # No default route in a lab host: multicast needs a route of its own.
        _ip("route", "add", "224.0.0.0/4", "dev", "eth0", netns=host.netns)
        return host

    def wait_for_ipv6(self, timeout: float = 10.0) -> None:
        """Wait until duplicate address detection ends, so nodes start with their final addresses."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any("tentative" in _ip("-6", "addr", "show", "dev", "eth0", netns=h.netns) for h in self.hosts):
                return
            time.sleep(0.1)

    def cut(self, host: LabHost) -> None:
        _ip("link", "set", host.port_name, "down")

    def restore(self, host: LabHost) -> None:
        _ip("link", "set", host.port_name, "up")

    def flap(self, host: LabHost) -> None:
        """Take the host's own interface down and up again (a cable pulled and plugged back)."""
        _ip("link", "set", "eth0", "down", netns=host.netns)
        _ip("link", "set", "eth0", "up", netns=host.netns)
        _ip("route", "replace", "224.0.0.0/4", "dev", "eth0", netns=host.netns)

    def readdress(self, host: LabHost) -> str:
        """Give the host a new IPv4 address (as DHCP might after a reboot); returns it."""
        new = f"198.18.{self.subnet}.{101 + host.index}"
        _ip("addr", "del", f"{host.address}/24", "dev", "eth0", netns=host.netns)
        _ip("addr", "add", f"{new}/24", "dev", "eth0", netns=host.netns)
        _ip("route", "replace", "224.0.0.0/4", "dev", "eth0", netns=host.netns)
        host.address = new
        return new

    def destroy(self) -> None:
        for host in self.hosts:
            subprocess.run(["ip", "link", "del", host.port_name], capture_output=True)
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        self.hosts.clear()


def node_command(host: LabHost, data_dir: Path, *extra: str) -> list[str]:
    """``dcn-node run`` inside ``host``, with no seeds: peers must be found by mDNS."""
    return host.command([
        sys.executable, "-m", "p2pnode", "run", "--data-dir", str(data_dir), "--name", f"host{host.index}",
        "--listen", "0.0.0.0:11436", "--http", "0.0.0.0:11435", "--backend", "none", *extra,
    ])
