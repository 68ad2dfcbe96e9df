"""The core stays pure: no async framework, no sockets, no clock reads; and every ``__all__`` tells the truth."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import p2pnode.core

CORE_MODULES = sorted(f"p2pnode.core.{m.name}" for m in pkgutil.iter_modules(p2pnode.core.__path__))
MODULES_WITH_ALL = [*CORE_MODULES, "p2pnode.errors"]

# Modules whose presence would mean the core pulls in an event loop, sockets, threads or the I/O shells.
FORBIDDEN_AFTER_IMPORT = [
    "anyio",
    "asyncio",
    "httpcore",
    "httpx",
    "hypercorn",
    "selectors",
    "sniffio",
    "socket",
    "ssl",
    "threading",
    "trio",
    "trio_websocket",
    "wsproto",
    "zeroconf",
    "p2pnode.config",
    "p2pnode.gateway",
    "p2pnode.net",
    "p2pnode.node",
]
# Modules the core source must not import at all: clocks, I/O, concurrency.
FORBIDDEN_IMPORTS = {"asyncio", "datetime", "os", "selectors", "socket", "subprocess", "threading", "time", "trio"}


@pytest.mark.slow
def test_importing_the_core_leaves_async_and_network_libraries_out():
    code = (
        "import importlib, json, sys\n"
        f"for name in {CORE_MODULES!r}: importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in {FORBIDDEN_AFTER_IMPORT!r} if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_source_imports_no_clock_io_or_concurrency(module):
    tree = ast.parse(Path(importlib.import_module(module).__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported & FORBIDDEN_IMPORTS == set()


@pytest.mark.parametrize("module", MODULES_WITH_ALL)
def test_every_name_in_all_exists(module):
    mod = importlib.import_module(module)
    assert isinstance(mod.__all__, list)
    assert len(set(mod.__all__)) == len(mod.__all__), "duplicate names in __all__"
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert missing == []


@pytest.mark.parametrize("module", MODULES_WITH_ALL)
def test_star_import_gives_exactly_all(module):
    namespace: dict = {}
    exec(f"from {module} import *", namespace)
    namespace.pop("__builtins__")
    assert sorted(namespace) == sorted(importlib.import_module(module).__all__)
