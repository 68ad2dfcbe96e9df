"""Hedged `first` on a network of real nodes in one process (real gateways, real peer links over loopback
websockets), each worker with its own fake Ollama served over real HTTP. The assertions are about behaviour, never
about time: who answered, what the client got, which generations were cancelled where."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from p2pnode.config import BackendSpec, NodeConfig
from p2pnode.core.identity import Identity
from p2pnode.gateway.app import serve_gateway
from p2pnode.node import Node
from p2pnode.testing.fake_ollama import FakeModel, FakeOllama
from tests.net.helpers import overlay_config

pytestmark = pytest.mark.slow

MODEL = "tiny:1b"
QUESTION = [{"role": "user", "content": "Say the sentence."}]
ANSWERS = ("Alpha says the quick brown fox.", "Bravo says the lazy dog sleeps.")  # tells the workers apart
WARM_UP = 12  # requests: past the scheduler's min_samples, so it hedges after the measured p95


class Worker:
    def __init__(self, node: Node, fake: FakeOllama, answer: str) -> None:
        self.node, self.fake, self.answer = node, fake, answer

    @property
    def peer_id(self) -> str:
        return self.node.identity.peer_id


async def start_node(nursery, tmp_path, name: str, backends=(), seeds=()) -> tuple[Node, str]:
    (tmp_path / name).mkdir()
    config = NodeConfig(
        data_dir=tmp_path / name, name=name, user="tester", http_host="127.0.0.1", http_port=0, mdns=False,
        backends=tuple(backends), no_backend=not backends, overlay=overlay_config(seeds=tuple(seeds)),
    )  # fmt: skip
    node = Node(config, Identity.generate())
    addresses = await nursery.start(node.run)
    return node, addresses.http_url


@pytest.fixture
async def network(nursery, tmp_path):
    """A coordinator without a backend, and two workers whose fakes answer different sentences."""
    coordinator, url = await start_node(nursery, tmp_path, "coordinator")
    seed = coordinator.overlay.local_record.record.addrs
    workers = []
    for i, answer in enumerate(ANSWERS):
        fake = FakeOllama(models={MODEL: FakeModel(answer=answer)})
        fake_url = await nursery.start(serve_gateway, fake, "127.0.0.1", 0)
        node, _ = await start_node(nursery, tmp_path, f"worker{i}", [BackendSpec("ollama", fake_url)], seed)
        workers.append(Worker(node, fake, answer))
    with trio.fail_after(20):
        await coordinator.overlay.wait_until(lambda: len(coordinator.coordinator.holders(MODEL)) == 2)
    yield coordinator, url, workers


async def ask(client: httpx.AsyncClient, strategy: str, **distributed) -> list[dict]:
    """One streamed /api/chat request; its NDJSON lines."""
    body = {"model": MODEL, "messages": QUESTION, "distributed": {"strategy": strategy, **distributed}}
    async with client.stream("POST", "/api/chat", json=body) as response:
        assert response.status_code == 200
        return [json.loads(line) async for line in response.aiter_lines() if line]


def text(lines: list[dict]) -> str:
    return "".join(line["message"]["content"] for line in lines if "message" in line)


async def test_a_stalled_first_choice_is_hedged_and_its_generation_cancelled(network):
    coordinator, url, workers = network
    scheduler = coordinator.coordinator.scheduler
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for _ in range(WARM_UP):  # healthy answers: the scheduler learns the times to first token
            assert text(await ask(client, "route")) in ANSWERS
        assert scheduler.hedge_delay_ms() is not None  # hedging now follows the measured p95, not the default

        stalling, other = workers
        for _ in range(5):  # `other` looks busy, so the scheduler ranks `stalling` first ...
            scheduler.started(other.peer_id)
        assert scheduler.candidates(coordinator.coordinator.workers.nodes(), MODEL)[0].peer_id == stalling.peer_id
        stalling.fake.faults.first_token = 3600.0  # ... whose generation stalls before its first token (a tail draw)
        lines = await ask(client, "first")

    # The client got the whole answer, from the other node only, with no error line.
    assert text(lines) == other.answer
    assert lines[-1]["done"] is True and "error" not in lines[-1]
    meta = lines[-1]["distributed"]
    assert meta["strategy"] == "first" and meta["winner"] == other.peer_id
    # The stalled node was the first choice; the hedge joined later and won.
    assert [(c["node"], c["outcome"]) for c in meta["candidates"]] == [
        (stalling.peer_id, "cancelled"),
        (other.peer_id, "ok"),
    ]
    # The stalled generation was stopped on its backend: the fake saw its client go away before the answer. The
    # winner's ran to its end, and nothing else was cut short.
    with trio.fail_after(10):
        await stalling.fake.wait_until(lambda fake: fake.interrupted == 1 and fake.active == 0)
        await other.fake.wait_until(lambda fake: fake.active == 0)
    assert other.fake.interrupted == 0


async def test_a_race_of_healthy_nodes_streams_one_whole_answer_and_cancels_the_other(network):
    _, url, workers = network
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for _ in range(3):
            lines = await ask(client, "first", fanout=2)
            # Both nodes raced; the client got exactly one answer, whole: no words of the other mixed in, none twice.
            winner = next(w for w in workers if w.answer == text(lines))
            meta = lines[-1]["distributed"]
            assert meta["strategy"] == "first" and meta["winner"] == winner.peer_id
            outcomes = {c["node"]: c["outcome"] for c in meta["candidates"]}
            assert outcomes == {w.peer_id: "ok" if w is winner else "cancelled" for w in workers}
            assert [line["done"] for line in lines].count(True) == 1 and "error" not in lines[-1]
    # No generation is left running anywhere once the answers are in.
    with trio.fail_after(10):
        for worker in workers:
            await worker.fake.wait_until(lambda fake: fake.active == 0 and fake.queued == 0)
