"""Configuration value objects. ``cli.py`` merges defaults < TOML file < ``DCN_*`` environment < flags once into a
frozen :class:`NodeConfig`; each component receives only its own part."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from p2pnode.core.membership import MembershipConfig
from p2pnode.core.records import RecordLimits
from p2pnode.core.wire import WireLimits
from p2pnode.errors import ConfigError

__all__ = [
    "BackendSpec",
    "GossipConfig",
    "NodeConfig",
    "OverlayConfig",
    "PeersConfig",
    "parse_backend",
    "parse_host_port",
]

DEFAULT_LISTEN = "0.0.0.0:11436"
DEFAULT_HTTP = "127.0.0.1:11435"


@dataclass(frozen=True)
class GossipConfig:
    interval: float = 0.2  # seconds between gossip rounds
    fanout: int = 3  # peers each round's rumors go to
    retransmit_mult: int = 4  # each rumor is sent retransmit_mult * ceil(log10(n+1)) times
    sync_interval: float = 10.0  # seconds between push-pull state exchanges with one random peer
    refresh_interval: float = 30.0  # seconds between re-issues of our record when nothing changed (±20%)
    min_refresh_interval: float = 1.0  # at most one re-issue this often when load or models change
    record_lifetime: float = 120.0  # seconds a record stays valid after issue
    max_message_items_bytes: int = 256 * 1024  # payload bytes per gossip or sync message
    # New statements (records, notices) checked per peer: each costs a signature check. The burst lets a
    # joiner take in a large network's state at once; beyond the rate the rest is dropped (push-pull repairs).
    statements_per_s: float = 500.0
    statements_burst: int = 4096
    # Peers one link may introduce (records of ids we do not know): one flooder cannot fill the table.
    new_peers_per_minute: float = 60.0
    new_peers_burst: int = 1024


@dataclass(frozen=True)
class PeersConfig:
    target_peers: int = 8  # links we try to keep (dialling members we learn of)
    max_peers: int = 32  # links we accept; beyond, a joiner gets our state and a "full" close
    handshake_timeout: float = 5.0
    probe_interval: float = 1.0  # seconds between pings on each link
    probe_timeout: float = 2.0  # a link whose ping is not answered within this is dead
    outbox: int = 256  # messages queued per link before gossip to it is dropped
    seed_retry_max: float = 30.0  # cap of the exponential back-off when seeds are unreachable
    heal_interval: float = 5.0  # seconds between attempts to reach an offline member (heals partitions)


@dataclass(frozen=True)
class OverlayConfig:
    listen_host: str = "0.0.0.0"
    listen_port: int = 11436
    advertise: tuple[str, ...] = ()  # ws:// URLs to put in our record; derived from the listener when empty
    seeds: tuple[str, ...] = ()
    network: str = "open"  # fingerprint of the network key (public: mDNS adverts carry it)
    network_key: bytes | None = None  # the 32-byte pre-shared key itself; None: an open network
    gossip: GossipConfig = field(default_factory=GossipConfig)
    peers: PeersConfig = field(default_factory=PeersConfig)
    membership: MembershipConfig = field(default_factory=MembershipConfig)
    records: RecordLimits = field(default_factory=RecordLimits)
    wire: WireLimits = field(default_factory=WireLimits)


@dataclass(frozen=True)
class BackendSpec:
    kind: str  # "ollama", "openai", "gguf"
    target: str  # URL or file path


@dataclass(frozen=True)
class JobsConfig:
    """What this node runs for peers: its owner's jobs always, others' within these bounds."""

    max_remote_jobs: int = 4  # peers' jobs running here at once
    remote_share: float = 1.0  # the share of max_remote_jobs that other users' jobs may take
    peer_rate_per_minute: float = 12_000.0  # jobs one peer may start (concurrency caps do the real limiting)
    peer_burst: int = 400
    owner_peers: tuple[str, ...] = ()  # peer ids of the owner's other nodes: their jobs run as the owner's
    allowed_peers: tuple[str, ...] = ()  # peer ids that may run jobs here; empty: every peer of the network
    allowed_users: tuple[str, ...] = ()  # users whose jobs run here (owner_peers' always); empty: everybody
    window: int = 32  # chunks a worker may send ahead of the client's reading
    default_timeout: float = 600.0


@dataclass(frozen=True)
class GatewayConfig:
    """Limits of the HTTP gateway, per API-key user (the owner's own unauthenticated loopback use is not limited)."""

    rate_per_minute: float = 600.0  # requests; 0: unlimited
    burst: int = 60  # requests at once after a quiet spell
    max_concurrent: int = 64  # requests (streams included) running at once; 0: unlimited
    max_clients: int = 10_000  # users tracked; more new ones at once are refused, not remembered
    reload_interval: float = 2.0  # seconds between checks of users.json


@dataclass(frozen=True)
class AttachedConfig:
    """Servers attached over HTTP (``/api/distributed/register``) and their heartbeats."""

    heartbeat_timeout: float = 60.0  # offline after this long without a heartbeat
    forget_after: float = 600.0  # then out of the record after this long offline
    max_servers: int = RecordLimits.max_attached
    check_interval: float = 1.0
    allowed_users: tuple[str, ...] = ()  # who may attach servers here (their jobs come from the whole network)


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path
    name: str
    user: str
    http_host: str = "127.0.0.1"
    http_port: int = 11435
    mdns: bool = True
    mdns_interfaces: tuple[str, ...] = ()
    backends: tuple[BackendSpec, ...] = ()  # empty: auto-detect; ("none") is represented as no_backend
    no_backend: bool = False
    network_key: Path | None = None
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    attached: AttachedConfig = field(default_factory=AttachedConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port), with a one-line :class:`ConfigError` naming ``what``."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{what} must be HOST:PORT (e.g. 127.0.0.1:11435), got {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if any(c.isspace() for c in host):
        raise ConfigError(f"{what}: invalid host {host!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not all(part.isalnum() or "-" in part for part in host.split(".")):
            raise ConfigError(f"{what}: invalid host {host!r}") from None
    return host, int(port_text)


_BACKEND_KINDS = ("ollama", "openai", "gguf")


def parse_backend(text: str) -> BackendSpec | None:
    """``none``, ``ollama=URL``, ``openai=URL`` or ``gguf=PATH``; ``None`` stands for ``none``."""
    if text == "none":
        return None
    kind, sep, target = text.partition("=")
    if not sep or kind not in _BACKEND_KINDS or not target:
        raise ConfigError(f"backend must be none, ollama=URL, openai=URL or gguf=PATH, got {text!r}")
    if kind in ("ollama", "openai") and not target.startswith(("http://", "https://")):
        raise ConfigError(f"{kind} backend needs an http(s) URL, got {target!r}")
    return BackendSpec(kind, target)
