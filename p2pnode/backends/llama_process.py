"""A llama.cpp HTTP server (the one inside the PyPI package ``xllamacpp``) in a child process: the engine of
the embedded backend, and the real server the tests run against.

xllamacpp has no command-line entry point: its ``Server`` class loads the model and runs llama.cpp's own HTTP
server on background threads of the process that made it. So the child is this module run as a script
(``python -m p2pnode.backends.llama_process MODEL.gguf``): it builds the ``Server``, prints one JSON line with the
address it listens on, and serves until its standard input closes or it gets SIGTERM/SIGINT. The parent
(:func:`llama_server`) reads that line, waits until ``/health`` answers 200, and on exit closes the child's
stdin, then escalates to SIGTERM and SIGKILL if it lingers. Because stdin is a pipe from the parent, the child
also goes when the parent dies, however it dies. The node (or test) process itself never loads llama.cpp, so
none of llama.cpp's threads (one of which outlives ``Server``) appear in it.

llama.cpp logs to stderr, one line per event (``0.00.011.793 I srv  init: listening on ...``); the child's
stderr goes to a file whose tail comes with any start-up error (:attr:`LlamaServer.log_path`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

__all__ = ["LlamaServer", "LlamaServerError", "llama_server"]


class LlamaServerError(RuntimeError):
    """The llama.cpp server could not be started (the message ends with the tail of its log)."""


@dataclass
class LlamaServer:
    base_url: str  # "http://127.0.0.1:PORT": llama.cpp's routes (/health, /v1/chat/completions, ...) hang here
    model: str  # the model id the server lists in /v1/models and accepts in requests
    process: trio.Process
    log_path: Path
    startup_seconds: float  # from spawning the child to /health answering 200

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def openai_url(self) -> str:
        return self.base_url + "/v1"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@asynccontextmanager
async def llama_server(
    model_path: Path,
    *,
    alias: str | None = None,
    parallel: int = 2,
    ctx_size: int = 2048,
    threads: int = 1,
    host: str = "127.0.0.1",
    port: int = 0,
    warmup: bool = True,
    log_path: Path | None = None,
    startup_timeout: float = 60.0,
    stop_timeout: float = 10.0,
) -> AsyncIterator[LlamaServer]:
    """Run llama.cpp's server on ``model_path`` in a child process while the block runs.

    ``alias`` is the model id it serves (default: the file name without ``.gguf``). ``parallel`` slots share
    ``ctx_size`` tokens of context (each slot gets ``ctx_size // parallel``). ``threads`` is llama.cpp's compute
    threads (the HTTP server adds its own). ``port`` 0 takes a free port, chosen by the server itself (no race).
    ``log_path`` keeps llama.cpp's log there; by default it goes to a temporary file removed afterwards."""
    model_path = Path(model_path)
    alias = alias or model_path.name.removesuffix(".gguf")
    command = [
        sys.executable, "-m", "p2pnode.backends.llama_process", str(model_path),
        "--alias", alias, "--parallel", str(parallel), "--ctx-size", str(ctx_size), "--threads", str(threads),
        "--host", host, "--port", str(port),
    ]
    if not warmup:
        command.append("--no-warmup")
    with tempfile.TemporaryDirectory(prefix="dcn-llama-") as tmp:
        log_path = Path(log_path) if log_path is not None else Path(tmp) / "llama-server.log"
        started = time.monotonic()
        with open(log_path, "ab") as log_file:
            process = await trio.lowlevel.open_process(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file
            )
        try:
            try:
                with trio.fail_after(startup_timeout):
                    base_url = await _read_address(process, log_path)
                    await _wait_healthy(base_url, process, log_path)
            except trio.TooSlowError:
                raise LlamaServerError(
                    f"llama.cpp server not healthy after {startup_timeout} s; log:\n{_log_tail(log_path)}"
                ) from None
            yield LlamaServer(
                base_url=base_url,
                model=alias,
                process=process,
                log_path=log_path,
                startup_seconds=time.monotonic() - started,
            )
        finally:
            with trio.CancelScope(shield=True):
                await _stop(process, stop_timeout)


async def _read_address(process: trio.Process, log_path: Path) -> str:
    """The child's first stdout line: {"url": ...}, written once llama.cpp listens."""
    buffer = b""
    while b"\n" not in buffer:
        chunk = await process.stdout.receive_some(4096)
        if not chunk:
            await process.wait()
            raise LlamaServerError(
                f"llama.cpp server exited with status {process.returncode} before listening; log:\n"
                f"{_log_tail(log_path)}"
            )
        buffer += chunk
    return json.loads(buffer.split(b"\n", 1)[0])["url"]


async def _wait_healthy(base_url: str, process: trio.Process, log_path: Path) -> None:
    """Poll /health until 200 (it answers 503 while the model loads)."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        while True:
            if process.poll() is not None:
                raise LlamaServerError(
                    f"llama.cpp server exited with status {process.returncode}; log:\n{_log_tail(log_path)}"
                )
            try:
                response = await client.get(base_url + "/health")
                if response.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await trio.sleep(0.05)


async def _stop(process: trio.Process, timeout: float) -> None:
    """Close stdin (the child's cue to exit cleanly), then SIGTERM, then SIGKILL."""
    if process.poll() is None:
        try:
            await process.stdin.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        for signum in (None, signal.SIGTERM, signal.SIGKILL):
            if signum is not None and process.poll() is None:
                process.send_signal(signum)
            with trio.move_on_after(timeout):
                await process.wait()
                break
    await process.wait()
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            await stream.aclose()


# -- the child ------------------------------------------------------------------------------------------------


def _serve(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m p2pnode.backends.llama_process",
        description="Serve a GGUF model with llama.cpp's HTTP server (from xllamacpp) until stdin closes.",
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("--alias", default=None, help="model id to serve (default: the file name)")
    parser.add_argument("--parallel", type=int, default=2, help="slots (concurrent requests)")
    parser.add_argument("--ctx-size", type=int, default=2048, help="context tokens, shared by the slots")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp compute threads")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument("--forever", action="store_true", help="ignore stdin; serve until a signal")
    args = parser.parse_args(argv)

    def on_signal(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(args.model)
    params.model_alias = {args.alias or args.model.name.removesuffix(".gguf")}
    params.hostnames = [args.host]
    params.port = args.port
    params.n_parallel = args.parallel
    params.n_ctx = args.ctx_size
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.warmup = not args.no_warmup
    params.ui = False  # the wheel has no web UI assets anyway

    server = None
    try:
        try:
            server = xllamacpp.Server(params)
        except RuntimeError as error:  # "Failed to init server": the reason is in llama.cpp's log above
            print(f"llama_server: {error}", file=sys.stderr, flush=True)
            return 1
        sys.stdout.write(json.dumps({"url": server.listening_address, "pid": os.getpid()}) + "\n")
        sys.stdout.flush()
        if args.forever:
            while True:
                signal.pause()
        else:
            while os.read(0, 65536):  # b"" once the parent closes the pipe (or dies)
                pass
    except SystemExit:
        pass
    finally:
        del server  # ~Server stops the HTTP server and the inference loop
    return 0


if __name__ == "__main__":
    sys.exit(_serve())
