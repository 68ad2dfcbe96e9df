"""What a node says about itself in its mDNS advertisement (TXT record), and how a browser reads it.

The TXT record carries the peer id, the protocol version, a fingerprint of the network key (or "open") and the
peer port; never the key. A node ignores its own advertisement and those of other networks."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from p2pnode.core.identity import MAX_PEER_ID_CHARS, public_key_from_peer_id
from p2pnode.errors import DecodeError

__all__ = ["SERVICE_TYPE", "Advertisement", "advert_properties", "instance_name", "read_advertisement"]

SERVICE_TYPE = "_dcn._tcp.local."


@dataclass(frozen=True)
class Advertisement:
    peer_id: str
    version: int
    network: str
    port: int
    addresses: tuple[str, ...]

    def urls(self) -> tuple[str, ...]:
        """Dialable peer URLs, IPv4 first (they need no scope), link-local IPv6 last."""
        def rank(address: str) -> tuple[int, str]:
            ip = ipaddress.ip_address(address.split("%")[0])
            return (ip.version == 6) + (ip.version == 6 and ip.is_link_local), address

        return tuple(
            f"ws://[{a}]:{self.port}" if ":" in a else f"ws://{a}:{self.port}" for a in sorted(self.addresses, key=rank)
        )


def instance_name(peer_id: str) -> str:
    """The service instance name: from the peer id, so two nodes named alike (or sharing a host name, as network
    namespaces do) never collide."""
    return f"dcn-{peer_id[-20:]}.{SERVICE_TYPE}"


def advert_properties(peer_id: str, version: int, network: str, port: int, name: str) -> dict[str, str]:
    return {"id": peer_id, "v": str(version), "net": network, "port": str(port), "name": name[:63]}


def read_advertisement(properties: Mapping[str, str | None], addresses: Sequence[str]) -> Advertisement:
    """Validate a browsed TXT record; :class:`DecodeError` names what is wrong."""
    peer_id = properties.get("id") or ""
    if not 0 < len(peer_id) <= MAX_PEER_ID_CHARS:
        raise DecodeError("advertisement without a peer id")
    public_key_from_peer_id(peer_id)  # raises DecodeError for ids that are not Ed25519 peer ids
    try:
        version = int(properties.get("v") or "")
        port = int(properties.get("port") or "")
    except ValueError:
        raise DecodeError("advertisement version or port is not a number") from None
    if not 0 < port < 65536:
        raise DecodeError(f"advertised port {port} out of range")
    network = properties.get("net") or ""
    if not 0 < len(network) <= 64:
        raise DecodeError("advertisement without a network fingerprint")
    valid = []
    for address in addresses[:16]:
        try:
            ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            continue
        valid.append(address)
    if not valid:
        raise DecodeError("advertisement without a usable address")
    return Advertisement(peer_id, version, network, port, tuple(valid))
