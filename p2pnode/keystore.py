"""The node's secret files: the identity key in its data dir (created on first start, mode 0600), the runtime
file that tells local tools where a running node listens, and the pre-shared network key (``--network-key``)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from p2pnode.core.identity import Identity
from p2pnode.errors import ConfigError

__all__ = [
    "NETWORK_KEY_BYTES",
    "ensure_data_dir",
    "load_network_key",
    "load_or_create_identity",
    "network_fingerprint",
    "read_runtime",
    "remove_runtime",
    "write_network_key",
    "write_private",
    "write_runtime",
]

log = logging.getLogger(__name__)

KEY_FILE = "node.key"
RUNTIME_FILE = "node.json"
NETWORK_KEY_BYTES = 32


def ensure_data_dir(data_dir: Path) -> None:
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create data dir {data_dir}: {exc.strerror}; choose another with --data-dir"
        ) from None


def load_or_create_identity(data_dir: Path) -> Identity:
    """The Ed25519 identity stored in ``data_dir``, created (0600) when absent. The same dir gives the same peer id."""
    ensure_data_dir(data_dir)
    path = data_dir / KEY_FILE
    try:
        seed = path.read_bytes()
    except FileNotFoundError:
        identity = Identity.generate()
        write_private(path, identity.seed())
        log.info("created a new identity %s in %s", identity.peer_id, path)
        return identity
    except OSError as exc:
        raise ConfigError(f"cannot read identity key {path}: {exc.strerror}") from None
    if len(seed) != 32:
        raise ConfigError(
            f"identity key {path} is corrupt ({len(seed)} bytes, expected 32); move it away to create a new identity"
        )
    _warn_if_shared(path, "identity key")
    return Identity.from_seed(seed)


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, readable by this user only (0600): a temp file, then os.replace."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mkstemp makes it 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _warn_if_shared(path: Path, what: str) -> None:
    if path.stat().st_mode & 0o077:
        log.warning("%s %s is readable by other users; run: chmod 600 %s", what, path, path)


def load_network_key(path: Path | str) -> bytes:
    """The 32 bytes of a network key file; ConfigError (one line saying what to do) when it cannot serve as one."""
    path = Path(path).expanduser()
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read network key {path}: {exc.strerror}") from None
    if len(key) != NETWORK_KEY_BYTES:
        raise ConfigError(
            f"network key {path} must hold exactly {NETWORK_KEY_BYTES} bytes, it holds {len(key)}; "
            "create one with `dcn-node keys new-network FILE`"
        )
    _warn_if_shared(path, "network key")
    return key


def write_network_key(path: Path | str) -> bytes:
    """Write 32 fresh random bytes to a new file ``path`` (0600) and return them; never overwrites a file."""
    path = Path(path).expanduser()
    key = secrets.token_bytes(NETWORK_KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; choose another file name (a key is never overwritten)") from None
    except OSError as exc:
        raise ConfigError(f"cannot write network key {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise ConfigError(f"cannot write network key {path}: {exc.strerror}") from None
    return key


def network_fingerprint(key: bytes | None) -> str:
    """``open`` without a key, else a short public fingerprint of it (mDNS adverts carry this, never the key)."""
    if key is None:
        return "open"
    return hashlib.sha256(b"dcn-network-fingerprint" + key).hexdigest()[:16]


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
