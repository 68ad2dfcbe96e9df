"""API keys per user: ``users.json`` in the node's data dir holds each user's name and the SHA-256 of their key.

The key itself is printed once by ``dcn-node keys add-user NAME`` and never stored. Keys are 256 bits from
:mod:`secrets`, so nobody can find one from its hash: a slow password hash (scrypt, argon2) protects guessable
passwords and here would only add its cost to every request. The file is written atomically and kept 0600.

    {"version": 1, "users": {"ann": {"sha256": "<64 hex>", "created": 1733350000}}}

Sync and file-based, like :mod:`p2pnode.keystore`: the CLI calls it; the node loads :class:`UserKeys` at start
and again when ``users.json`` changes (a small local file: read in the event loop, no worker thread); the
gateway then only calls ``authenticate``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pnode import keystore
from p2pnode.errors import ConfigError

__all__ = [
    "KEY_PREFIX",
    "USERS_FILE",
    "User",
    "UserKeys",
    "add_user",
    "hash_key",
    "list_users",
    "remove_user",
    "users_stamp",
]

log = logging.getLogger(__name__)

USERS_FILE = "users.json"
KEY_PREFIX = "dcn_"
_VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_MAX_KEY_CHARS = 256  # ours are 47; anything longer is not worth hashing


@dataclass(frozen=True)
class User:
    name: str
    created: float | None  # Unix time the key was issued; None when unknown


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def hash_key(key: str) -> str:
    """The hex SHA-256 stored for ``key``."""
    return _digest(key).hex()


def _corrupt(path: Path, reason: str) -> ConfigError:
    return ConfigError(
        f"{path} is corrupt ({reason}); restore it from a backup, or move it away and add the users again "
        "with `dcn-node keys add-user NAME`"
    )


def _read(data_dir: Path) -> dict[str, dict[str, Any]]:
    """name -> entry, validated; empty when there is no users file yet."""
    path = data_dir / USERS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}; check its owner and permissions") from None
    except UnicodeDecodeError:
        raise _corrupt(path, "not UTF-8 text") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise _corrupt(path, f"not JSON: {exc}") from None
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict):
        raise _corrupt(path, 'no "users" object')
    for name, entry in users.items():
        if not _NAME.fullmatch(name):
            raise _corrupt(path, f"invalid user name {name!r}")
        if not isinstance(entry, dict) or not _SHA256_HEX.fullmatch(str(entry.get("sha256"))):
            raise _corrupt(path, f"user {name!r} has no valid sha256")
    if path.stat().st_mode & 0o077:
        log.warning("%s is readable by other users; run: chmod 600 %s", path, path)
    return users


def _write(data_dir: Path, users: dict[str, dict[str, Any]]) -> None:
    keystore.ensure_data_dir(data_dir)
    path = data_dir / USERS_FILE
    text = json.dumps({"version": _VERSION, "users": dict(sorted(users.items()))}, indent=2) + "\n"
    try:
        keystore.write_private(path, text.encode())
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}; choose another data dir with --data-dir") from None


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"invalid user name {name!r}: use 1 to 64 letters, digits, '_', '.' or '-'")


def add_user(data_dir: Path, name: str) -> str:
    """Create user ``name`` and return their new API key (the only time it exists outside the client)."""
    _check_name(name)
    users = _read(data_dir)
    if name in users:
        raise ConfigError(f"user {name!r} already exists; for a new key run `dcn-node keys remove-user {name}` first")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    users[name] = {"sha256": hash_key(key), "created": int(time.time())}
    _write(data_dir, users)
    return key


def remove_user(data_dir: Path, name: str) -> None:
    """Delete user ``name``: their key stops working for every node that loads this data dir afterwards."""
    users = _read(data_dir)
    if name not in users:
        raise ConfigError(f"no user named {name!r} in {data_dir / USERS_FILE}; see `dcn-node keys list-users`")
    del users[name]
    _write(data_dir, users)


def list_users(data_dir: Path) -> list[User]:
    """Every user, sorted by name."""
    users = _read(data_dir)
    return [
        User(name, entry["created"] if isinstance(entry.get("created"), (int, float)) else None)
        for name, entry in sorted(users.items())
    ]


def users_stamp(data_dir: Path) -> tuple[int, int] | None:
    """(mtime_ns, size) of the users file, None without one: a node polls this and reloads UserKeys on a change."""
    try:
        st = (data_dir / USERS_FILE).stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class UserKeys:
    """The users' key hashes, loaded once; ``authenticate`` maps a presented key to its user's name.

    Falsy when there are no users (then the gateway needs no key, unless it listens beyond loopback).
    """

    __slots__ = ("_digests",)

    def __init__(self, hashes: Mapping[str, str]) -> None:
        """``hashes``: user name -> hex SHA-256 of their key (see :func:`hash_key`)."""
        self._digests = tuple((name, bytes.fromhex(digest)) for name, digest in sorted(hashes.items()))

    @classmethod
    def load(cls, data_dir: Path) -> UserKeys:
        """The users in ``data_dir``'s users file; none if it does not exist. ConfigError if it is unreadable."""
        return cls({name: entry["sha256"] for name, entry in _read(data_dir).items()})

    def authenticate(self, key: str) -> str | None:
        """The name of the user whose key this is, or None. Constant time in the key: every hash is compared."""
        if not isinstance(key, str) or len(key) > _MAX_KEY_CHARS:
            return None
        digest = _digest(key)
        found = None
        for name, stored in self._digests:
            if hmac.compare_digest(digest, stored) and found is None:
                found = name
        return found

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __repr__(self) -> str:
        return f"UserKeys(names={self.names!r})"
