"""The ``dcn-node`` command. The only place that reads the environment, merges configuration
(defaults < TOML file < ``DCN_*`` environment < flags, once, into a frozen :class:`NodeConfig`) and sets up logging."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import platformdirs

from p2pnode import keystore
from p2pnode.config import (
    AttachedConfig,
    GatewayConfig,
    JobsConfig,
    DEFAULT_HTTP,
    DEFAULT_LISTEN,
    GossipConfig,
    NodeConfig,
    OverlayConfig,
    PeersConfig,
    parse_backend,
    parse_host_port,
)
from p2pnode.core.membership import MembershipConfig
from p2pnode.errors import ConfigError
from p2pnode.logs import setup_logging

__all__ = ["build_config", "main"]

log = logging.getLogger(__name__)

# setting -> (flag, environment variable, kind). TOML uses the setting's name as key.
_SETTINGS: dict[str, tuple[str, str, type]] = {
    "data_dir": ("--data-dir", "DCN_DATA_DIR", str),
    "name": ("--name", "DCN_NAME", str),
    "user": ("--user", "DCN_USER", str),
    "listen": ("--listen", "DCN_LISTEN", str),
    "http": ("--http", "DCN_HTTP", str),
    "seeds": ("--seed", "DCN_SEEDS", list),
    "mdns": ("--no-mdns", "DCN_MDNS", bool),
    "mdns_interfaces": ("--mdns-interface", "DCN_MDNS_INTERFACES", list),
    "backends": ("--backend", "DCN_BACKENDS", list),
    "network_key": ("--network-key", "DCN_NETWORK_KEY", str),
    "advertise": ("--advertise", "DCN_ADVERTISE", list),
    "log_level": ("--log-level", "DCN_LOG_LEVEL", str),
    "log_format": ("--log-format", "DCN_LOG_FORMAT", str),
}
# Tunables only the TOML file sets, one table each.
_SECTIONS: dict[str, type] = {"gossip": GossipConfig, "peers": PeersConfig, "membership": MembershipConfig}
_ZERO_OK = frozenset({"rate_per_minute", "max_concurrent", "remote_share", "max_remote_jobs"})  # 0: none/unlimited
_NODE_SECTIONS: dict[str, type] = {"gateway": GatewayConfig, "jobs": JobsConfig, "attached": AttachedConfig}


def _defaults() -> dict[str, Any]:
    return {
        "data_dir": platformdirs.user_data_dir("dcn"),
        "name": socket.gethostname(),
        "user": os.environ.get("USER") or "local",
        "listen": DEFAULT_LISTEN,
        "http": DEFAULT_HTTP,
        "seeds": [],
        "mdns": True,
        "mdns_interfaces": [],
        "backends": [],
        "network_key": None,
        "advertise": [],
        "log_level": "info",
        "log_format": "text",
    }


def _from_toml(path: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    settings: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        if key in _SECTIONS or key in _NODE_SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: [{key}] must be a table")
            sections[key] = value
        elif key in _SETTINGS:
            kind = _SETTINGS[key][2]
            if kind is list and isinstance(value, str):
                value = [value]
            if not isinstance(value, kind):
                raise ConfigError(f"{path}: {key} must be a {kind.__name__}, got {type(value).__name__}")
            settings[key] = value
        else:
            known = ", ".join(sorted([*_SETTINGS, *_SECTIONS, *_NODE_SECTIONS]))
            raise ConfigError(f"{path}: unknown key {key!r} (known: {known})")
    return settings, sections


def _from_env(environ: dict[str, str]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for key, (_, var, kind) in _SETTINGS.items():
        raw = environ.get(var)
        if raw is None:
            continue
        if kind is list:
            settings[key] = [item for item in raw.replace(",", " ").split() if item]
        elif kind is bool:
            if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ConfigError(f"{var} must be true or false, got {raw!r}")
            settings[key] = raw.lower() in ("1", "true", "yes", "on")
        else:
            settings[key] = raw
    return settings


def _from_flags(args: argparse.Namespace) -> dict[str, Any]:
    settings = {key: getattr(args, key) for key in _SETTINGS if getattr(args, key, None) not in (None, [])}
    if args.no_mdns:
        settings["mdns"] = False
    return settings


def _section(kind: type, values: dict[str, Any], name: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(kind)}
    default = kind()
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"[{name}] has no setting {key!r} (known: {', '.join(fields)})")
        expected = type(getattr(default, key))
        if expected is tuple and isinstance(value, list) and all(isinstance(v, str) for v in value):
            values[key] = value = tuple(value)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            values[key] = value = float(value)
        if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
            raise ConfigError(f"[{name}] {key} must be a {expected.__name__}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if key in _ZERO_OK and value < 0:
                raise ConfigError(f"[{name}] {key} must be 0 or more")
            if key not in _ZERO_OK and value <= 0:
                raise ConfigError(f"[{name}] {key} must be positive")
    return kind(**values)


def build_config(args: argparse.Namespace, environ: dict[str, str]) -> tuple[NodeConfig, dict[str, Any]]:
    """Merge defaults < TOML < env < flags into a frozen NodeConfig (plus the logging settings)."""
    settings = _defaults()
    sections: dict[str, dict[str, Any]] = {}
    config_path = getattr(args, "config", None) or environ.get("DCN_CONFIG")
    if config_path:
        file_settings, sections = _from_toml(config_path)
        settings.update(file_settings)
    settings.update(_from_env(environ))
    settings.update(_from_flags(args))

    listen_host, listen_port = parse_host_port(settings["listen"], "--listen")
    http_host, http_port = parse_host_port(settings["http"], "--http")
    from p2pnode.net.transport import parse_peer_url

    for url in [*settings["seeds"], *settings["advertise"]]:
        try:
            parse_peer_url(url)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    backends = [parse_backend(text) for text in settings["backends"]]
    if settings["log_level"].lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log level must be debug, info, warning or error, got {settings['log_level']!r}")
    if settings["log_format"] not in ("text", "json"):
        raise ConfigError(f"log format must be text or json, got {settings['log_format']!r}")
    for key in ("name", "user"):
        if not 0 < len(settings[key]) <= 64:
            raise ConfigError(f"{key} must be 1 to 64 characters")

    network_key = Path(settings["network_key"]).expanduser() if settings["network_key"] else None
    key = keystore.load_network_key(network_key) if network_key else None
    overlay = OverlayConfig(
        listen_host=listen_host,
        listen_port=listen_port,
        advertise=tuple(settings["advertise"]),
        seeds=tuple(settings["seeds"]),
        network=keystore.network_fingerprint(key),
        network_key=key,
        **{name: _section(kind, dict(sections.get(name, {})), name) for name, kind in _SECTIONS.items()},
    )
    config = NodeConfig(
        data_dir=Path(settings["data_dir"]).expanduser(),
        name=settings["name"],
        user=settings["user"],
        http_host=http_host,
        http_port=http_port,
        mdns=settings["mdns"],
        mdns_interfaces=tuple(settings["mdns_interfaces"]),
        backends=tuple(b for b in backends if b is not None),
        no_backend=None in backends,
        network_key=network_key,
        overlay=overlay,
        **{name: _section(kind, dict(sections.get(name, {})), name) for name, kind in _NODE_SECTIONS.items()},
    )
    return config, {"level": settings["log_level"], "format": settings["log_format"]}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcn-node", description="A node of dcn, the peer-to-peer LLM network.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the node daemon")
    run.add_argument("--config", metavar="FILE", help="TOML config file (also DCN_CONFIG)")
    run.add_argument("--data-dir", metavar="DIR", help="identity key and runtime files")
    run.add_argument("--name", help="human-readable node name (default: host name)")
    run.add_argument("--user", help="user id this node serves first")
    run.add_argument("--listen", metavar="HOST:PORT", help=f"peer websocket listener (default {DEFAULT_LISTEN})")
    run.add_argument("--http", metavar="HOST:PORT", help=f"local HTTP gateway (default {DEFAULT_HTTP})")
    run.add_argument(
        "--seed", dest="seeds", action="append", metavar="ws://HOST:PORT", help="peer to join through (repeatable)"
    )
    run.add_argument("--no-mdns", action="store_true", help="do not discover peers on the LAN")
    run.add_argument(
        "--mdns-interface",
        dest="mdns_interfaces",
        action="append",
        metavar="IFACE",
        help="limit mDNS to IFACE (repeatable)",
    )
    run.add_argument(
        "--backend",
        dest="backends",
        action="append",
        metavar="SPEC",
        help="none, ollama=URL, openai=URL or gguf=PATH (repeatable)",
    )
    run.add_argument("--network-key", metavar="FILE", help="pre-shared network key: only nodes holding it may join")
    run.add_argument(
        "--advertise", action="append", metavar="ws://HOST:PORT", help="address peers should dial (repeatable)"
    )
    run.add_argument("--log-level", help="debug, info, warning or error")
    run.add_argument("--log-format", help="text or json")

    for name, what in (("status", "network totals"), ("peers", "every known node")):
        cmd = sub.add_parser(name, help=f"print {what} from a running node's gateway")
        cmd.add_argument("--http", dest="http_url", metavar="URL", help="gateway URL (default: the local node's)")
        cmd.add_argument("--data-dir", metavar="DIR", help="data dir of the local node, to find its gateway")
        cmd.add_argument("--json", action="store_true", help="print the raw JSON")
        cmd.add_argument("--api-key", metavar="KEY", help="API key, when the gateway needs one (or DCN_API_KEY)")

    chat = sub.add_parser("chat", help="ask the network through a node's gateway; the answer streams to stdout")
    chat.add_argument("prompt", metavar="PROMPT")
    chat.add_argument("--http", dest="http_url", metavar="URL", help="gateway URL (default: the local node's)")
    chat.add_argument("--data-dir", metavar="DIR", help="data dir of the local node, to find its gateway")
    chat.add_argument("--model", help="model name (default: the first the network has)")
    chat.add_argument("--strategy", choices=("route", "first", "best", "judge", "fuse"), help="how to use the network")
    chat.add_argument("--fanout", type=int, help="how many nodes to ask")
    chat.add_argument("--api-key", metavar="KEY", help="API key, when the gateway needs one (or DCN_API_KEY)")

    ident = sub.add_parser("id", help="print this node's peer id (creating the identity if needed)")
    ident.add_argument("--data-dir", metavar="DIR")

    keys = sub.add_parser("keys", help="create the network key and the users' API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="KEYS_COMMAND")
    new_network = keys_sub.add_parser("new-network", help="write a new 32-byte network key to FILE (0600)")
    new_network.add_argument("file", metavar="FILE")
    for name, what in (("add-user", "add a user and print their API key once"), ("remove-user", "revoke a user's key")):
        cmd = keys_sub.add_parser(name, help=what)
        cmd.add_argument("user_name", metavar="NAME")
        cmd.add_argument("--data-dir", metavar="DIR", help="the node's data dir (as for `dcn-node run`)")
    listing = keys_sub.add_parser("list-users", help="print the users who hold an API key")
    listing.add_argument("--data-dir", metavar="DIR", help="the node's data dir (as for `dcn-node run`)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    environ = dict(os.environ)
    try:
        if args.command == "run":
            config, logging_settings = build_config(args, environ)
            setup_logging(logging_settings["level"], logging_settings["format"])
            code = _run(config)
        elif args.command == "id":
            setup_logging("warning", "text")
            print(keystore.load_or_create_identity(_data_dir(args, environ)).peer_id)
            code = 0
        elif args.command == "keys":
            setup_logging("warning", "text")
            code = _keys(args, environ)
        elif args.command == "chat":
            from p2pnode import cli_views

            url = args.http_url or _local_gateway(_data_dir(args, environ))
            code = cli_views.chat(url, args.prompt, model=args.model, strategy=args.strategy, fanout=args.fanout,
                                  api_key=args.api_key or environ.get("DCN_API_KEY"))
        else:
            from p2pnode import cli_views

            url = args.http_url or _local_gateway(_data_dir(args, environ))
            api_key = args.api_key or environ.get("DCN_API_KEY")
            code = cli_views.show(args.command, url, as_json=args.json, api_key=api_key)
    except ConfigError as exc:
        print(f"dcn-node: error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)


def _data_dir(args: argparse.Namespace, environ: dict[str, str]) -> Path:
    """The data dir `dcn-node run` would use: --data-dir, DCN_DATA_DIR, data_dir in DCN_CONFIG's file, default."""
    chosen = args.data_dir or environ.get("DCN_DATA_DIR")
    if not chosen and environ.get("DCN_CONFIG"):
        chosen = _from_toml(environ["DCN_CONFIG"])[0].get("data_dir")
    return Path(chosen or platformdirs.user_data_dir("dcn")).expanduser()


def _keys(args: argparse.Namespace, environ: dict[str, str]) -> int:
    from p2pnode import users

    if args.keys_command == "new-network":
        path = Path(args.file).expanduser().absolute()
        fingerprint = keystore.network_fingerprint(keystore.write_network_key(path))
        print(f"wrote a new network key to {path} (fingerprint {fingerprint})")
        print("copy it securely (scp, never chat or e-mail) to every node of this network, and run each with:")
        print(f"  dcn-node run --network-key {path}")
        return 0
    data_dir = _data_dir(args, environ)
    where = data_dir / users.USERS_FILE
    if args.keys_command == "add-user":
        key = users.add_user(data_dir, args.user_name)
        print(f"added user {args.user_name} to {where}")
        print("their API key is shown only this once (only its hash is stored); clients send it as this HTTP header:")
        print(f"Authorization: Bearer {key}")
    elif args.keys_command == "remove-user":
        users.remove_user(data_dir, args.user_name)
        print(f"removed user {args.user_name} from {where}")
    else:
        listed = users.list_users(data_dir)
        if not listed:
            print(f"no users in {where}; add one with: dcn-node keys add-user NAME", file=sys.stderr)
            return 0
        width = max(4, *(len(user.name) for user in listed))
        print(f"{'NAME':<{width}}  CREATED")
        for user in listed:
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(user.created)) if user.created else "-"
            print(f"{user.name:<{width}}  {created}")
    return 0


def _local_gateway(data_dir: Path) -> str:
    info = keystore.read_runtime(data_dir)
    if info and isinstance(info.get("http_url"), str):
        return info["http_url"]
    host, port = parse_host_port(DEFAULT_HTTP, "default gateway")
    return f"http://{host}:{port}"


def _run(config: NodeConfig) -> int:
    import trio

    from p2pnode.net._errors import first_leaf
    from p2pnode.node import Node

    identity = keystore.load_or_create_identity(config.data_dir)
    node = Node(config, identity)

    async def serve() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                async for signum in signals:
                    log.info("received %s: leaving the network", signal.Signals(signum).name)
                    break
                await node.leave()
                nursery.cancel_scope.cancel()

    try:
        trio.run(serve)
    except* ConfigError as group:
        raise first_leaf(group) from None
    log.info("stopped")
    return 0
