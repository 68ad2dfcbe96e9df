"""The node's files in its data dir: the identity key (created on first start, mode 0600) and the runtime file
that tells local tools where a running node listens."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from p2pnode.core.identity import Identity
from p2pnode.errors import ConfigError

__all__ = ["load_or_create_identity", "read_runtime", "remove_runtime", "write_runtime"]

log = logging.getLogger(__name__)

KEY_FILE = "node.key"
RUNTIME_FILE = "node.json"


def _ensure_dir(data_dir: Path) -> None:
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create data dir {data_dir}: {exc.strerror}; choose another with --data-dir") from None


def load_or_create_identity(data_dir: Path) -> Identity:
    """The Ed25519 identity stored in ``data_dir``, created (0600) when absent. The same dir gives the same peer id."""
    _ensure_dir(data_dir)
    path = data_dir / KEY_FILE
    try:
        seed = path.read_bytes()
    except FileNotFoundError:
        identity = Identity.generate()
        _write_private(path, identity.seed())
        log.info("created a new identity %s in %s", identity.peer_id, path)
        return identity
    except OSError as exc:
        raise ConfigError(f"cannot read identity key {path}: {exc.strerror}") from None
    if len(seed) != 32:
        raise ConfigError(
            f"identity key {path} is corrupt ({len(seed)} bytes, expected 32); move it away to create a new identity"
        )
    if path.stat().st_mode & 0o077:
        log.warning("identity key %s is readable by other users; run: chmod 600 %s", path, path)
    return Identity.from_seed(seed)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_runtime(data_dir: Path, info: dict[str, Any]) -> None:
    path = data_dir / RUNTIME_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, path)


def read_runtime(data_dir: Path) -> dict[str, Any] | None:
    """What a running node wrote about itself, or ``None`` when no node runs (or the file is unreadable)."""
    try:
        info = json.loads((data_dir / RUNTIME_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def remove_runtime(data_dir: Path) -> None:
    try:
        (data_dir / RUNTIME_FILE).unlink()
    except FileNotFoundError:
        pass
