"""The Ollama adapter against a fake that follows Ollama's documented API, over real loopback HTTP, with faults."""

from __future__ import annotations

import pytest
import trio

from p2pnode.backends.base import BackendConfig, ChatRequest
from p2pnode.backends.ollama import OllamaBackend, context_needed
from p2pnode.errors import BackendProtocolError, BackendRejected, BackendTimeout, BackendUnavailable, BackendError
from p2pnode.gateway.app import serve_gateway
from p2pnode.testing.fake_ollama import FakeModel, FakeOllama

pytestmark = pytest.mark.slow

ANSWER = "The quick brown fox jumps over the lazy dog."


@pytest.fixture
async def ollama(nursery):
    fake = FakeOllama(models={"tiny:1b": FakeModel(answer=ANSWER), "cold:7b": FakeModel(loaded=False)})
    url = await nursery.start(serve_gateway, fake, "127.0.0.1", 0)
    backend = OllamaBackend(url, BackendConfig(read_timeout=2.0, probe_timeout=2.0))
    yield fake, backend
    await backend.aclose()


def ask(model: str = "tiny:1b", **options) -> ChatRequest:
    return ChatRequest(model=model, messages=({"role": "user", "content": "Say the sentence."},), options=options)


async def test_models_come_with_what_is_loaded_and_its_vram(ollama):
    fake, backend = ollama
    models = {m.name: m for m in await backend.list_models()}
    assert set(models) == {"tiny:1b", "cold:7b"}
    assert models["tiny:1b"].loaded and models["tiny:1b"].vram_mb == 1_000_000_000 // 2**20
    assert not models["cold:7b"].loaded and models["cold:7b"].vram_mb == 0
    assert await backend.health() and await backend.version() == "0.12.0"


async def test_a_streamed_chat_arrives_in_order_and_sends_the_context_it_needs(ollama):
    fake, backend = ollama
    chunks = []
    async with backend.open_chat(ask(temperature=0)) as stream:
        async for chunk in stream:
            chunks.append(chunk)
    assert "".join(c.content for c in chunks) == ANSWER
    assert chunks[-1].done and chunks[-1].done_reason == "stop" and chunks[-1].completion_tokens == 9
    path, body = fake.requests[-1]
    assert path == "/api/chat" and body["stream"] is True
    assert body["options"] == {"temperature": 0, "num_ctx": 2048}


async def test_the_whole_answer_and_the_length_limit(ollama):
    fake, backend = ollama
    result = await backend.chat(ask(num_predict=3))
    assert result.content == "The quick brown" and result.done_reason == "length"
    assert result.completion_tokens == 3 and result.prompt_tokens == 12


def test_context_grows_with_the_prompt_and_is_capped_by_the_model():
    short = ({"role": "user", "content": "hi"},)
    long = ({"role": "user", "content": "x" * 30_000},)
    assert context_needed(short, {}, 0) == 2048
    assert context_needed(long, {}, 0) == 16384  # 10k prompt tokens + 1024 for the answer
    assert context_needed(long, {}, 32768) == 16384
    assert context_needed(long, {"num_predict": 100}, 12000) == 12000
    with pytest.raises(BackendRejected, match="does not fit"):
        context_needed(long, {}, 4096)


async def test_unknown_model_is_a_404_rejection(ollama):
    fake, backend = ollama
    with pytest.raises(BackendRejected) as rejected:
        await backend.chat(ask("nope:1b"))
    assert rejected.value.status_hint == 404 and "not found" in str(rejected.value)


async def test_http_500_is_a_typed_error(ollama):
    fake, backend = ollama
    fake.faults.status = 500
    with pytest.raises(BackendError, match="HTTP 500: injected failure"):
        await backend.chat(ask())


async def test_a_connection_dropped_mid_stream_is_unavailable_not_a_hang(ollama):
    fake, backend = ollama
    fake.faults.drop_after = 3
    received = []
    with pytest.raises(BackendUnavailable):
        async with backend.open_chat(ask()) as stream:
            async for chunk in stream:
                received.append(chunk.content)
    assert "".join(received) == "The quick brown"


async def test_a_garbage_line_is_a_protocol_error(ollama):
    fake, backend = ollama
    fake.faults.garbage_after = 2
    with pytest.raises(BackendProtocolError, match="invalid JSON"):
        await backend.chat(ask())


async def test_a_stalled_stream_times_out_at_the_read_deadline(ollama):
    fake, backend = ollama
    fake.faults.stall_after = 1
    with pytest.raises(BackendTimeout):
        await backend.chat(ask())


async def test_the_whole_call_has_a_deadline_even_when_chunks_keep_coming(ollama):
    fake, backend = ollama
    fake.faults.latency = 0.2  # each chunk in time, the whole answer (9 chunks) not
    request = ChatRequest(model="tiny:1b", messages=({"role": "user", "content": "go"},), timeout=0.5)
    with pytest.raises(BackendTimeout, match="deadline"):
        await backend.chat(request)


async def test_leaving_the_stream_cancels_the_generation(ollama):
    fake, backend = ollama
    fake.faults.latency = 0.05
    async with backend.open_chat(ask()) as stream:
        async for chunk in stream:
            break  # the client has seen enough
    with trio.fail_after(5):
        while fake.active:
            await trio.sleep(0.01)
    assert fake.cancelled == 1


async def test_a_server_that_is_not_there_is_unavailable():
    backend = OllamaBackend("http://127.0.0.1:9", BackendConfig(connect_timeout=1.0))
    assert not await backend.health()
    with pytest.raises(BackendUnavailable, match="not answering"):
        await backend.chat(ask())
    await backend.aclose()


async def test_generate_streams_the_response_field(ollama):
    from p2pnode.backends.base import GenerateRequest

    fake, backend = ollama
    chunks = []
    request = GenerateRequest(model="tiny:1b", prompt="Say the sentence.", system="Be brief.", options={"num_predict": 4})
    async with backend.open_generate(request) as stream:
        async for chunk in stream:
            chunks.append(chunk)
    assert "".join(c.content for c in chunks) == "The quick brown fox"
    assert chunks[-1].done_reason == "length"
    path, body = fake.requests[-1]
    assert path == "/api/generate" and body["system"] == "Be brief." and body["options"]["num_ctx"] == 2048
