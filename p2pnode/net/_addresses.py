from __future__ import annotations

import ipaddress

import psutil
import socket


def advertised_urls(host: str, port: int) -> tuple[str, ...]:
    """The ws:// URLs peers can dial us at. A wildcard listener is expanded to every non-loopback interface
    address: a loopback address in a record would lead every other host back to itself. Loopback is used only
    when the machine has nothing else."""
    if host not in ("0.0.0.0", "::", ""):
        return (_url(host, port),)
    lan: list[str] = []
    loopback: list[str] = []
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family != socket.AF_INET and not (host == "::" and address.family == socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(address.address.split("%")[0])
            if ip.is_link_local:
                continue
            (loopback if ip.is_loopback else lan).append(_url(str(ip), port))
    return tuple(dict.fromkeys(lan or loopback)) or (_url("127.0.0.1", port),)


def _url(host: str, port: int) -> str:
    return f"ws://[{host}]:{port}" if ":" in host else f"ws://{host}:{port}"
