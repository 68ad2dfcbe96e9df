"""Real ``dcn-node run`` processes for tests: start, query the gateway, kill."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import trio


class NodeProcess:
    def __init__(self, data_dir: Path, name: str, *extra: str, command: list[str] | None = None,
                 http_url: str | None = None, api_key: str | None = None) -> None:
        self.data_dir = data_dir
        self.name = name
        self.command = command or [
            sys.executable, "-m", "p2pnode", "run", "--data-dir", str(data_dir), "--name", name,
            "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--no-mdns", "--backend", "none", *extra,
        ]
        self._http_url = http_url  # where the harness reaches the gateway, when not where the node says
        self.api_key = api_key
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.process: trio.Process | None = None
        self.log: list[str] = []
        self.info: dict = {}

    @property
    def http_url(self) -> str:
        return self._http_url or self.info["http_url"]

    @property
    def peer_url(self) -> str:
        return self.info["peer_urls"][0]

    @property
    def peer_id(self) -> str:
        return self.info["peer_id"]

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the process and return once its gateway answers (its "ready" log line was written)."""
        self.process = await trio.lowlevel.open_process(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        ready = trio.Event()
        nursery.start_soon(self._drain_log, ready)
        with trio.fail_after(20):
            await ready.wait()
        self.info = json.loads((self.data_dir / "node.json").read_text())

    async def _drain_log(self, ready: trio.Event) -> None:
        """Collect the log while the process lives. This task ends with the test's nursery, and so does the
        process: a test that fails half-way leaves no node behind."""
        buffer = b""
        try:
            async for chunk in self.process.stderr:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    self.log.append(line.decode(errors="replace"))
                    if " ready: " in self.log[-1]:
                        ready.set()
            if not ready.is_set():
                raise AssertionError(f"node {self.name} exited before it was ready:\n" + "\n".join(self.log))
        finally:
            if self.process.poll() is None:
                self.process.kill()

    async def get(self, path: str) -> dict:
        async with httpx.AsyncClient(timeout=5.0, headers=self._headers) as client:
            response = await client.get(self.http_url + path)
            response.raise_for_status()
            return response.json()

    async def statuses(self) -> dict[str, str]:
        nodes = (await self.get("/api/distributed/nodes"))["nodes"]
        return {node["node_id"]: node["status"] for node in nodes}

    def kill(self, signum: int = signal.SIGKILL) -> None:
        self.process.send_signal(signum)

    async def wait_exit(self, timeout: float = 10) -> int:
        with trio.fail_after(timeout):
            return await self.process.wait()


async def eventually(check, timeout: float = 20, interval: float = 0.1) -> None:
    """Poll ``await check()`` until it returns true: the other side is another process, so there is no event
    to wait on. A liveness bound, not a timing assertion."""
    with trio.fail_after(timeout):
        while not await check():
            await trio.sleep(interval)
