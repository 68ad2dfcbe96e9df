from __future__ import annotations

import threading

import pytest


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Every test ends with the threads it started gone (zeroconf's thread included, once mDNS lands)."""
    before = set(threading.enumerate())
    yield
    # trio's worker-thread cache (name "Trio thread N", used e.g. for getaddrinfo and waitpid) parks idle
    # threads for reuse and reaps them itself; they are not owned by the code under test.
    leaked = [
        t for t in threading.enumerate() if t not in before and t.is_alive() and not t.name.startswith("Trio thread")
    ]
    assert not leaked, f"threads left running: {leaked}"
