"""Choosing backends: named ones, or Ollama when it answers, or none, each with its reason in the log."""

from __future__ import annotations

import logging

import pytest

from p2pnode.backends.base import BackendConfig
from p2pnode.backends.ollama import OllamaBackend
from p2pnode.backends.openai import OpenAIBackend
from p2pnode.backends.select import select_backends
from p2pnode.config import BackendSpec
from p2pnode.errors import ConfigError
from p2pnode.gateway.app import serve_gateway
from p2pnode.testing.fake_ollama import FakeOllama

pytestmark = pytest.mark.slow


async def test_ollama_is_chosen_when_it_answers(nursery, caplog):
    url = await nursery.start(serve_gateway, FakeOllama(), "127.0.0.1", 0)
    caplog.set_level(logging.INFO)
    backends = await select_backends((), none=False, config=BackendConfig(), ollama_url=url)
    assert [type(b) for b in backends] == [OllamaBackend] and backends[0].url == url
    assert "it answers" in caplog.text
    await backends[0].aclose()


async def test_named_backends_are_used_as_given(caplog):
    caplog.set_level(logging.INFO)
    specs = (BackendSpec("ollama", "http://10.0.0.5:11434"), BackendSpec("openai", "http://127.0.0.1:8080"))
    backends = await select_backends(specs, none=False, config=BackendConfig(), ollama_url="http://127.0.0.1:9")
    assert [type(b) for b in backends] == [OllamaBackend, OpenAIBackend]
    assert "asked for" in caplog.text
    for backend in backends:
        await backend.aclose()


async def test_none_means_none_and_cannot_be_mixed():
    assert await select_backends((), none=True, config=BackendConfig()) == []
    with pytest.raises(ConfigError, match="cannot be combined"):
        await select_backends((BackendSpec("ollama", "http://x:1"),), none=True, config=BackendConfig())
