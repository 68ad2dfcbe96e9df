"""The node's Ollama and OpenAI endpoints, driven by the official `ollama` and `openai` clients over real HTTP,
in front of the node's local compute (backed here by the documented-API fake Ollama)."""

from __future__ import annotations

import httpx
import ollama
import openai
import pytest
import trio

from p2pnode.backends.base import BackendConfig
from p2pnode.backends.local import ComputeConfig, LocalCompute
from p2pnode.backends.ollama import OllamaBackend
from p2pnode.backends.resources import Resources
from p2pnode.gateway import ollama_api, openai_api
from p2pnode.gateway.app import GatewayApp, serve_gateway
from p2pnode.testing.fake_ollama import FakeModel, FakeOllama

pytestmark = pytest.mark.slow

ANSWER = "The quick brown fox jumps over the lazy dog."


class LocalService:
    """The chat service of a node with no peers: its own backends answer."""

    def __init__(self, compute: LocalCompute) -> None:
        self._compute = compute

    @property
    def models(self):
        return self._compute.models

    def holders(self, model: str) -> list[str]:
        return ["self"] if self._compute.serves(model) else []

    def open_chat(self, request, routing=None):
        return self._compute.open_chat(request)

    async def complete(self, request, routing=None):
        async with self.open_chat(request) as chunks:
            parts = [chunk async for chunk in chunks]
        return "".join(c.content for c in parts), parts[-1]


@pytest.fixture
async def gateway(nursery):
    fake = FakeOllama(models={"tiny:1b": FakeModel(answer=ANSWER)})
    backend_url = await nursery.start(serve_gateway, fake, "127.0.0.1", 0)
    backend = OllamaBackend(backend_url, BackendConfig())
    compute = LocalCompute([backend], Resources(2, 1000, 0, 0, "none"), ComputeConfig())
    await compute.refresh()
    app = GatewayApp()
    service = LocalService(compute)
    ollama_api.install(app, lambda: service)
    openai_api.install(app, lambda: service)
    url = await nursery.start(serve_gateway, app, "127.0.0.1", 0)
    yield fake, url
    await backend.aclose()


async def test_the_ollama_client_chats_streaming_and_not(gateway):
    fake, url = gateway
    client = ollama.AsyncClient(host=url)
    messages = [{"role": "user", "content": "Say it."}]
    whole = await client.chat(model="tiny:1b", messages=messages, stream=False)
    assert whole.message.content == ANSWER and whole.done and whole.done_reason == "stop"
    assert whole.eval_count == 9 and whole.total_duration > 0
    parts = [part async for part in await client.chat(model="tiny:1b", messages=messages, stream=True)]
    assert "".join(p.message.content for p in parts) == ANSWER
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    listed = await client.list()
    assert [m.model for m in listed.models] == ["tiny:1b"]
    assert (await client.ps()).models[0].model == "tiny:1b"


async def test_the_ollama_client_gets_a_404_for_an_unknown_model(gateway):
    fake, url = gateway
    client = ollama.AsyncClient(host=url)
    with pytest.raises(ollama.ResponseError) as error:
        await client.chat(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert error.value.status_code == 404 and "not served" in error.value.error


async def test_the_openai_client_chats_streaming_and_not(gateway):
    fake, url = gateway
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "Say it."}]
    whole = await client.chat.completions.create(model="tiny:1b", messages=messages, max_tokens=3)
    assert whole.choices[0].message.content == "The quick brown"
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 3
    stream = await client.chat.completions.create(model="tiny:1b", messages=messages, stream=True)
    deltas = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in deltas if c.choices) == ANSWER
    assert deltas[-1].choices[0].finish_reason == "stop"
    assert [m.id async for m in client.models.list()] == ["tiny:1b"]
    await client.close()


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/api/chat", b"{not json", "not valid JSON"),
        ("/api/chat", b"[1, 2]", "must be a JSON object"),
        ("/api/chat", b'{"model": "tiny:1b"}', "messages must be a list"),
        ("/api/chat", b'{"model": "tiny:1b", "messages": [{"role": "wizard", "content": "x"}]}', "role must be"),
        ("/api/chat", b'{"model": "", "messages": [{"role": "user", "content": "x"}]}', "model must be"),
        ("/api/chat", b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "options": {"seed": "1"}}',
         "options.seed"),
        ("/api/chat", b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
         "stream must be"),
        ("/v1/chat/completions", b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}',
         "n must be 1"),
        ("/v1/chat/completions", b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
         "only text parts"),
    ],
)
async def test_malformed_bodies_get_400_with_the_reason(gateway, path, body, message):
    fake, url = gateway
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post(path, content=body)
    assert response.status_code == 400 and message in response.json()["error"]


async def test_a_client_that_disconnects_stops_the_backend_generation(gateway):
    fake, url = gateway
    fake.faults.latency = 0.05
    async with httpx.AsyncClient(base_url=url) as client:
        body = {"model": "tiny:1b", "messages": [{"role": "user", "content": "x"}]}
        async with client.stream("POST", "/api/chat", json=body) as response:
            async for line in response.aiter_lines():
                break  # one line is enough: hang up
    with trio.fail_after(5):
        while fake.active:
            await trio.sleep(0.01)
    assert fake.cancelled == 1


async def test_a_backend_failing_mid_stream_ends_with_an_error_line(gateway):
    fake, url = gateway
    fake.faults.drop_after = 2
    async with httpx.AsyncClient(base_url=url) as client:
        body = {"model": "tiny:1b", "messages": [{"role": "user", "content": "x"}]}
        async with client.stream("POST", "/api/chat", json=body) as response:
            lines = [line async for line in response.aiter_lines() if line]
    assert response.status_code == 200
    assert '"error"' in lines[-1] and "broke the connection" in lines[-1]


async def test_a_streamed_request_for_an_unknown_model_still_gets_a_404(gateway):
    fake, url = gateway
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/api/chat", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 404 and "not served" in response.json()["error"]
