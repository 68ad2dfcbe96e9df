"""dcn's OpenAI-compatible adapter and embedded backend against a real llama.cpp server on the tiny model."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio

from p2pnode.backends.base import BackendConfig, ChatRequest
from p2pnode.backends.embedded import EmbeddedBackend
from p2pnode.backends.llama_process import llama_server
from p2pnode.backends.openai import OpenAIBackend
from p2pnode.errors import BackendUnavailable
from p2pnode.testing.tiny_gguf import DEFAULT_ANSWER, answer_pieces, build_tiny_gguf

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def endless(tmp_path_factory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("gguf") / "endless.gguf", endless=True)


def ask(model: str, **options) -> ChatRequest:
    return ChatRequest(model=model, messages=({"role": "user", "content": "Say it."},), options=options)


async def test_models_streaming_whole_answers_and_finish_reasons(tiny):
    async with llama_server(tiny, alias="tiny", parallel=2) as server:
        backend = OpenAIBackend(server.base_url, BackendConfig())
        assert [m.name for m in await backend.list_models()] == ["tiny"]
        assert await backend.health()
        pieces = []
        async with backend.open_chat(ask("tiny")) as chunks:
            async for chunk in chunks:
                pieces.append(chunk)
        assert "".join(c.content for c in pieces) == DEFAULT_ANSWER
        assert pieces[-1].done and pieces[-1].done_reason == "stop" and pieces[-1].completion_tokens
        cut = await backend.chat(ask("tiny", num_predict=3))
        assert cut.content == "".join(answer_pieces(DEFAULT_ANSWER)[:3]) and cut.done_reason == "length"
        async with trio.open_nursery() as nursery:
            results = []

            async def one() -> None:
                results.append((await backend.chat(ask("tiny"))).content)

            for _ in range(4):
                nursery.start_soon(one)
        assert results == [DEFAULT_ANSWER] * 4
        await backend.aclose()


async def test_leaving_a_stream_cancels_the_generation_on_the_server(endless):
    async with llama_server(endless, alias="endless", parallel=1) as server:
        backend = OpenAIBackend(server.base_url, BackendConfig())
        async with backend.open_chat(ask("endless", num_predict=4000)) as chunks:
            seen = 0
            async for chunk in chunks:
                seen += 1
                if seen == 3:
                    break
        # With one slot, the next answer comes only if the endless one was stopped.
        with trio.fail_after(30):
            result = await backend.chat(ask("endless", num_predict=5))
        assert result.done_reason == "length"
        await backend.aclose()


async def test_the_embedded_backend_restarts_its_server_when_it_dies(tiny, nursery):
    backend = EmbeddedBackend(tiny, BackendConfig(), threads=1)
    await nursery.start(backend.run)
    assert (await backend.chat(ask(backend.alias))).content == DEFAULT_ANSWER
    first = backend.process
    first.send_signal(signal.SIGKILL)
    with pytest.raises(BackendUnavailable):
        await first.wait()
        await backend.chat(ask(backend.alias))
    with trio.fail_after(60):
        while backend.process is first or not await backend.health():
            await trio.sleep(0.1)
    assert (await backend.chat(ask(backend.alias))).content == DEFAULT_ANSWER
    await backend.aclose()


async def test_raw_completions_through_v1_completions(tiny):
    from p2pnode.backends.base import GenerateRequest

    async with llama_server(tiny, alias="tiny", parallel=1) as server:
        backend = OpenAIBackend(server.base_url, BackendConfig())
        chunks = []
        async with backend.open_generate(GenerateRequest(model="tiny", prompt="anything", options={"num_predict": 3})) as stream:
            async for chunk in stream:
                chunks.append(chunk)
        assert "".join(c.content for c in chunks) == "".join(answer_pieces(DEFAULT_ANSWER)[:3])
        assert chunks[-1].done and chunks[-1].done_reason == "length"
        await backend.aclose()
