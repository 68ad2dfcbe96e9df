"""A network of three real nodes in one process, over loopback websockets: a coordinator with no backend, a
worker with a real llama.cpp server (xllamacpp, tiny deterministic model) and a worker with the documented-API
fake Ollama. Clients nobody here wrote (the official `ollama` and `openai` packages) talk to the coordinator."""

from __future__ import annotations

import dataclasses
import json

import httpx
import ollama
import openai
import pytest
import trio

from p2pnode.backends.llama_process import llama_server
from p2pnode.config import BackendSpec, JobsConfig, NodeConfig
from p2pnode.core.identity import Identity
from p2pnode.gateway.app import serve_gateway
from p2pnode.node import Node
from p2pnode.testing.fake_ollama import FakeModel, FakeOllama
from p2pnode.testing.tiny_gguf import DEFAULT_ANSWER, build_tiny_gguf
from tests.net.helpers import overlay_config

pytestmark = pytest.mark.slow

MODEL = "tiny:1b"
QUESTION = [{"role": "user", "content": "Say the sentence."}]


class RunningNode:
    def __init__(self, node: Node, url: str, scope: trio.CancelScope) -> None:
        self.node, self.url, self.scope = node, url, scope

    def kill(self) -> None:
        self.scope.cancel()


async def start_node(nursery, tmp_path, name: str, backends=(), seeds=()) -> RunningNode:
    data_dir = tmp_path / name
    data_dir.mkdir()
    config = NodeConfig(
        data_dir=data_dir, name=name, user="tester", http_host="127.0.0.1", http_port=0, mdns=False,
        backends=tuple(backends), no_backend=not backends, overlay=overlay_config(seeds=tuple(seeds)),
        jobs=JobsConfig(max_remote_jobs=64),  # generous workers: the tests here are about the coordinator
    )
    node = Node(config, Identity.generate())
    scope = trio.CancelScope()

    async def run(task_status=trio.TASK_STATUS_IGNORED):
        with scope:
            await node.run(task_status=task_status)

    addresses = await nursery.start(run)
    return RunningNode(node, addresses.http_url, scope)


@pytest.fixture
async def network(nursery, tmp_path):
    model = build_tiny_gguf(tmp_path / "tiny.gguf")
    async with llama_server(model, alias=MODEL, parallel=2) as llama:
        fake = FakeOllama(models={MODEL: FakeModel(answer=DEFAULT_ANSWER)})
        fake_url = await nursery.start(serve_gateway, fake, "127.0.0.1", 0)
        coordinator = await start_node(nursery, tmp_path, "coordinator")
        seed = coordinator.node.overlay.local_record.record.addrs
        llama_node = await start_node(nursery, tmp_path, "llama", [BackendSpec("openai", llama.base_url)], seed)
        ollama_node = await start_node(nursery, tmp_path, "ollama", [BackendSpec("ollama", fake_url)], seed)
        overlay = coordinator.node.overlay
        with trio.fail_after(20):
            await overlay.wait_until(lambda: len(coordinator.node.coordinator.holders(MODEL)) == 2)
        yield coordinator, llama_node, ollama_node, fake
        for running in (coordinator, llama_node, ollama_node):
            running.kill()


async def chat(url: str, strategy: str | None = None, **body) -> httpx.Response:
    payload = {"model": MODEL, "messages": QUESTION, "stream": False, **body}
    if strategy:
        payload["distributed"] = {"strategy": strategy, **payload.get("distributed", {})}
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await client.post("/api/chat", json=payload)


async def test_official_clients_get_the_answer_from_the_network(network):
    coordinator, *_ = network
    client = ollama.AsyncClient(host=coordinator.url)
    whole = await client.chat(model=MODEL, messages=QUESTION, stream=False)
    assert whole.message.content == DEFAULT_ANSWER and whole.done
    parts = [p async for p in await client.chat(model=MODEL, messages=QUESTION, stream=True)]
    assert "".join(p.message.content for p in parts) == DEFAULT_ANSWER and parts[-1].done
    tags = (await client.list()).models
    assert [m.model for m in tags] == [MODEL]

    oai = openai.AsyncOpenAI(base_url=coordinator.url + "/v1", api_key="unused", max_retries=0)
    answer = await oai.chat.completions.create(model=MODEL, messages=QUESTION)
    assert answer.choices[0].message.content == DEFAULT_ANSWER
    stream = await oai.chat.completions.create(model=MODEL, messages=QUESTION, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == DEFAULT_ANSWER
    await oai.close()


@pytest.mark.parametrize("strategy", ["route", "first", "best", "judge", "fuse"])
async def test_every_strategy_answers_and_says_who_did(network, strategy):
    coordinator, llama_node, ollama_node, fake = network
    response = await chat(coordinator.url, strategy)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["message"]["content"] == DEFAULT_ANSWER
    meta = body["distributed"]
    assert meta["strategy"] == strategy and meta["winner"]
    workers = {llama_node.node.identity.peer_id, ollama_node.node.identity.peer_id}
    assert {c["node"] for c in meta["candidates"]} <= workers
    if strategy in ("best", "judge", "fuse"):
        assert len([c for c in meta["candidates"] if c["outcome"] == "ok"]) >= 2


async def test_the_strategy_header_and_bad_requests(network):
    coordinator, *_ = network
    async with httpx.AsyncClient(base_url=coordinator.url, timeout=60) as client:
        routed = await client.post("/api/chat", headers={"X-DCN-Strategy": "route"},
                                   json={"model": MODEL, "messages": QUESTION, "stream": False})
        assert routed.json()["distributed"]["strategy"] == "route"
        unknown = await client.post("/api/chat", json={"model": "nope:1b", "messages": QUESTION})
        assert unknown.status_code == 404 and "no node of the network serves" in unknown.json()["error"]
        bad = await client.post("/api/chat", json={"model": MODEL, "messages": QUESTION, "distributed": {"strategy": "magic"}})
        assert bad.status_code == 400 and "strategy" in bad.json()["error"]
        local = await client.post("/api/chat", json={"model": MODEL, "messages": QUESTION, "use_distributed": False})
        assert local.status_code == 404  # the coordinator itself has no backend


async def test_a_failing_node_is_replaced_before_the_client_notices(network):
    coordinator, llama_node, ollama_node, fake = network
    fake.faults.status = 500  # the fake-Ollama worker now fails every generation
    for _ in range(4):
        response = await chat(coordinator.url, "route")
        assert response.status_code == 200 and response.json()["message"]["content"] == DEFAULT_ANSWER
    candidates = [c for c in response.json()["distributed"]["candidates"]]
    assert candidates[-1]["node"] == llama_node.node.identity.peer_id


async def test_a_node_dying_mid_stream_is_continued_elsewhere(network):
    coordinator, llama_node, ollama_node, fake = network
    fake.faults.drop_after = 3  # three words, then its connection drops
    scheduler = coordinator.node.coordinator.scheduler
    llama_id = llama_node.node.identity.peer_id
    for _ in range(5):  # the llama node looks busy, so the fake-Ollama node is planned first
        scheduler.started(llama_id)
    async with httpx.AsyncClient(base_url=coordinator.url, timeout=60) as client:
        body = {"model": MODEL, "messages": QUESTION, "distributed": {"strategy": "route"}}
        async with client.stream("POST", "/api/chat", json=body) as response:
            lines = [json.loads(line) async for line in response.aiter_lines() if line]
    assert response.status_code == 200 and "error" not in lines[-1]
    text = "".join(line["message"]["content"] for line in lines)
    assert text.startswith("The quick brown") and text.endswith("lazy dog.")
    candidates = lines[-1]["distributed"]["candidates"]
    assert [(c["node"], c["outcome"]) for c in candidates] == [
        (ollama_node.node.identity.peer_id, "error"), (llama_id, "ok"),
    ]


@pytest.mark.parametrize(
    "how", [{"distributed": {"strategy": "best"}}, {"stream": False, "distributed": {"strategy": "route"}}],
    ids=["streamed-best-before-any-output", "whole-answer-route"],
)
async def test_a_client_that_hangs_up_stops_every_remote_generation(network, how):
    coordinator, llama_node, ollama_node, fake = network
    fake.faults.latency = 0.1
    coordinator.node.coordinator.scheduler.started(llama_node.node.identity.peer_id)  # route picks the fake
    body = {"model": MODEL, "messages": QUESTION, **how}

    async def ask() -> None:
        async with httpx.AsyncClient(base_url=coordinator.url, timeout=60) as client:
            await client.post("/api/chat", json=body)

    async with trio.open_nursery() as hanging_up:
        hanging_up.start_soon(ask)
        with trio.fail_after(10):
            await fake.wait_until(lambda f: f.active)  # the candidates are generating ...
        hanging_up.cancel_scope.cancel()  # ... when the client leaves
    with trio.fail_after(10):
        await fake.wait_until(lambda f: f.active == 0)
    assert fake.interrupted == 1


async def test_a_node_killed_before_its_first_token_is_replaced(network, nursery):
    coordinator, llama_node, ollama_node, fake = network
    fake.faults.stall_after = 0  # the fake-Ollama node will never produce a token ...
    scheduler = coordinator.node.coordinator.scheduler
    for _ in range(5):
        scheduler.started(llama_node.node.identity.peer_id)  # ... and is planned first

    async def kill_when_it_generates() -> None:
        while not fake.active:
            await trio.sleep(0.01)
        ollama_node.kill()  # its process dies with the job open

    nursery.start_soon(kill_when_it_generates)
    response = await chat(coordinator.url, "route")
    assert response.status_code == 200 and response.json()["message"]["content"] == DEFAULT_ANSWER
    outcomes = [(c["node"], c["outcome"]) for c in response.json()["distributed"]["candidates"]]
    assert outcomes == [(ollama_node.node.identity.peer_id, "error"), (llama_node.node.identity.peer_id, "ok")]


async def test_fifty_concurrent_routed_requests_spread_over_the_nodes(network):
    coordinator, llama_node, ollama_node, fake = network
    fake.faults.latency = 0.01  # answers take a moment, so requests overlap
    winners = []

    async def one(client: httpx.AsyncClient) -> None:
        response = await client.post("/api/chat", json={"model": MODEL, "messages": QUESTION, "stream": False,
                                                        "distributed": {"strategy": "route"}})
        assert response.status_code == 200 and response.json()["message"]["content"] == DEFAULT_ANSWER
        winners.append(response.json()["distributed"]["winner"])

    async with httpx.AsyncClient(base_url=coordinator.url, timeout=120,
                                 limits=httpx.Limits(max_connections=60)) as client:
        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(one, client)
    counts = {peer: winners.count(peer) for peer in set(winners)}
    assert len(winners) == 50
    # Both workers take a real share: in-flight counts move at once, so nobody gets everything.
    assert set(counts) == {llama_node.node.identity.peer_id, ollama_node.node.identity.peer_id}
    assert min(counts.values()) >= 10


async def test_when_every_node_is_busy_a_request_waits_for_one_instead_of_failing(network):
    coordinator, llama_node, ollama_node, fake = network
    for worker in (llama_node, ollama_node):
        worker.node.jobs.config = dataclasses.replace(worker.node.jobs.config, max_remote_jobs=1)
    fake.faults.latency = 0.02
    statuses = []

    async def one(client: httpx.AsyncClient) -> None:
        response = await client.post("/api/chat", json={"model": MODEL, "messages": QUESTION, "stream": False,
                                                        "distributed": {"strategy": "route"}})
        statuses.append(response.status_code)
        # Busy refusals are asked again, not listed as failed candidates.
        assert {c["outcome"] for c in response.json()["distributed"]["candidates"]} == {"ok"}

    async with httpx.AsyncClient(base_url=coordinator.url, timeout=120) as client:
        async with trio.open_nursery() as nursery:
            for _ in range(6):  # three times what the two workers take at once
                nursery.start_soon(one, client)
    assert statuses == [200] * 6
