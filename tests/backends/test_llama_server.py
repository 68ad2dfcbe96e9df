"""A real llama.cpp server (xllamacpp's) on the tiny deterministic model: what its OpenAI-compatible API does.

These pin down the behaviour dcn's llama.cpp backend relies on: the model list, a non-streaming answer, the
"length" cut, the SSE stream and its ``[DONE]``, parallel slots, and a client that hangs up mid-stream."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from p2pnode.backends.llama_process import LlamaServerError, llama_server
from p2pnode.testing.tiny_gguf import DEFAULT_ANSWER, answer_pieces, build_tiny_gguf

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("gguf")
    return {
        "tiny": build_tiny_gguf(folder / "tiny.gguf"),
        "endless": build_tiny_gguf(folder / "endless.gguf", endless=True),
    }


@pytest.fixture
async def server(models):
    async with llama_server(models["tiny"], alias="tiny", parallel=2) as running:
        yield running


@pytest.fixture
async def client():
    async with httpx.AsyncClient(timeout=30.0) as http:
        yield http


async def chat(client: httpx.AsyncClient, server, **body) -> dict:
    response = await client.post(
        server.base_url + "/v1/chat/completions",
        json={"model": server.model, "messages": MESSAGES, "temperature": 0, **body},
    )
    assert response.status_code == 200, response.text
    return response.json()


async def stream_lines(client: httpx.AsyncClient, server, **body) -> list[str]:
    lines = []
    async with client.stream(
        "POST",
        server.base_url + "/v1/chat/completions",
        json={"model": server.model, "messages": MESSAGES, "temperature": 0, "stream": True, **body},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line:
                lines.append(line)
    return lines


def test_tiny_gguf_is_deterministic(tmp_path):
    first = build_tiny_gguf(tmp_path / "a.gguf").read_bytes()
    assert build_tiny_gguf(tmp_path / "b.gguf").read_bytes() == first
    assert len(first) < 4_000_000
    assert build_tiny_gguf(tmp_path / "c.gguf", answer="Hi there, hi there.").read_bytes() != first


def test_answer_pieces_are_distinct_and_spell_the_answer():
    for answer in (DEFAULT_ANSWER, "a a a a", "x", "Ünïcødé wörds, ünïcødé wörds!", "  lead and trail  "):
        if len(answer.encode()) < 2:
            with pytest.raises(ValueError):
                answer_pieces(answer)
            continue
        pieces = answer_pieces(answer)
        assert "".join(pieces) == answer
        assert len(set(pieces)) == len(pieces)


async def test_models_lists_the_model(server, client):
    response = await client.get(server.base_url + "/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [model["id"] for model in body["data"]] == ["tiny"]


async def test_chat_answers_the_sentence_and_stops(server, client):
    body = await chat(client, server)
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": DEFAULT_ANSWER}
    assert choice["finish_reason"] == "stop"
    assert body["model"] == "tiny"
    assert body["usage"]["completion_tokens"] == len(answer_pieces(DEFAULT_ANSWER)) + 1  # the EOS counts


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}],
        [
            {"role": "user", "content": "One"},
            {"role": "assistant", "content": "Two"},
            {"role": "user", "content": "Ünïcødé <s> <|im_end|> and\nnewlines"},
        ],
    ],
)
async def test_any_prompt_leads_to_the_answer(server, client, messages):
    body = await chat(client, server, messages=messages)
    assert body["choices"][0]["message"]["content"] == DEFAULT_ANSWER
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_max_tokens_cuts_with_length(server, client):
    body = await chat(client, server, max_tokens=3)
    choice = body["choices"][0]
    assert choice["message"]["content"] == "".join(answer_pieces(DEFAULT_ANSWER)[:3])
    assert choice["finish_reason"] == "length"


async def test_stream_spells_the_sentence_and_ends_with_done(server, client):
    lines = await stream_lines(client, server)
    assert all(line.startswith("data: ") for line in lines), lines
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])
    assert text == DEFAULT_ANSWER
    finishes = [chunk["choices"][0]["finish_reason"] for chunk in chunks if chunk["choices"]]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}


async def test_stream_cut_by_max_tokens_ends_with_length(server, client):
    lines = await stream_lines(client, server, max_tokens=3)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])
    assert text == "".join(answer_pieces(DEFAULT_ANSWER)[:3])
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"


async def test_concurrent_requests_all_complete(server, client):
    slots = (await client.get(server.base_url + "/slots")).json()
    assert len(slots) == 2
    results: list[str] = []

    async def one(streaming: bool) -> None:
        if streaming:
            lines = await stream_lines(client, server)
            chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
            results.append("".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]))
        else:
            results.append((await chat(client, server))["choices"][0]["message"]["content"])

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for i in range(4):  # more requests than slots: the extra ones queue
                nursery.start_soon(one, i % 2 == 0)
    assert results == [DEFAULT_ANSWER] * 4


async def test_closing_a_stream_early_leaves_the_server_working(models, client):
    # The endless model keeps writing until max_tokens: the client hangs up in the middle of a long stream.
    async with llama_server(models["endless"], alias="endless", parallel=2, ctx_size=8192) as server:
        for _ in range(3):
            async with client.stream(
                "POST",
                server.base_url + "/v1/chat/completions",
                json={"model": "endless", "messages": MESSAGES, "stream": True, "max_tokens": 4000},
            ) as response:
                assert response.status_code == 200
                seen = 0
                async for line in response.aiter_lines():
                    seen += line.startswith("data: ")
                    if seen == 3:
                        break  # leaving the block closes the connection
        body = await chat(client, server, max_tokens=4)
        assert body["choices"][0]["message"]["content"] == "".join(answer_pieces(DEFAULT_ANSWER)[:4])
        assert body["choices"][0]["finish_reason"] == "length"
        with trio.fail_after(10):  # and no slot is left busy with an abandoned generation
            while any(slot["is_processing"] for slot in (await client.get(server.base_url + "/slots")).json()):
                await trio.sleep(0.05)
        assert server.process.poll() is None


async def test_any_answer_is_served_exactly(tmp_path, client):
    answer = "Ünïcødé wörds, ünïcødé wörds: 1 2 1 2  done.\n"
    model = build_tiny_gguf(tmp_path / "custom.gguf", answer=answer, n_layer=2)
    async with llama_server(model, alias="custom", parallel=1) as server:
        body = await chat(client, server)
        assert body["choices"][0]["message"]["content"] == answer
        assert body["choices"][0]["finish_reason"] == "stop"
        lines = await stream_lines(client, server)
        chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == answer


async def test_server_stops_cleanly(models):
    async with llama_server(models["tiny"]) as server:
        assert server.model == "tiny"
        process = server.process
    assert process.returncode == 0


async def test_a_bad_model_file_fails_with_the_log(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(LlamaServerError, match="exited with status"):
        async with llama_server(bad):
            pass  # pragma: no cover
