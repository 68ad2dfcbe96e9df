"""The gateway's API keys, limits and user isolation, on a real node (in this process) with a fake Ollama."""

from __future__ import annotations

import json

import httpx
import ollama
import openai
import pytest
import trio

from p2pnode import users
from p2pnode.config import BackendSpec, GatewayConfig, NodeConfig
from p2pnode.core.identity import Identity
from p2pnode.errors import ConfigError
from p2pnode.gateway.app import serve_gateway
from p2pnode.node import Node
from p2pnode.testing.fake_ollama import FakeModel, FakeOllama
from tests.net.helpers import overlay_config

pytestmark = pytest.mark.slow

MODEL = "tiny:1b"
ANSWER = "one two three four five six seven eight"
QUESTION = [{"role": "user", "content": "count"}]


def node_config(tmp_path, fake_url: str, **changes) -> NodeConfig:
    return NodeConfig(
        data_dir=tmp_path, name="guarded", user="owner", http_port=0, mdns=False,
        backends=(BackendSpec("ollama", fake_url),), overlay=overlay_config(), **changes,
    )


@pytest.fixture
async def fake(nursery):
    fake = FakeOllama(models={MODEL: FakeModel(answer=ANSWER)})
    fake.url = await nursery.start(serve_gateway, fake, "127.0.0.1", 0)
    return fake


async def start(nursery, tmp_path, fake, **changes) -> str:
    node = Node(node_config(tmp_path, fake.url, **changes), Identity.generate())
    return (await nursery.start(node.run)).http_url


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_once_keys_exist_every_request_needs_one(nursery, tmp_path, fake):
    key = users.add_user(tmp_path, "ann")
    url = await start(nursery, tmp_path, fake)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for headers in ({}, {"Authorization": "Basic abc"}, bearer("dcn_wrong"), {"Authorization": "Bearer"}):
            refused = await http.get("/api/distributed/stats", headers=headers)
            assert refused.status_code == 401 and "API key" in refused.json()["error"]
        assert (await http.get("/api/distributed/stats", headers=bearer(key))).status_code == 200
    # Clients nobody here wrote send the key their usual way.
    oai = openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    answer = await oai.chat.completions.create(model=MODEL, messages=QUESTION)
    assert answer.choices[0].message.content == ANSWER
    with pytest.raises(openai.AuthenticationError):
        await openai.AsyncOpenAI(base_url=url + "/v1", api_key="dcn_nope", max_retries=0).models.list()
    reply = await ollama.AsyncClient(host=url, headers=bearer(key)).chat(model=MODEL, messages=QUESTION)
    assert reply.message.content == ANSWER


def test_a_gateway_beyond_loopback_without_keys_refuses_to_start(tmp_path):
    with pytest.raises(ConfigError, match="keys add-user"):
        Node(node_config(tmp_path, "http://127.0.0.1:1", http_host="0.0.0.0"), Identity.generate())
    users.add_user(tmp_path, "ann")
    Node(node_config(tmp_path, "http://127.0.0.1:1", http_host="0.0.0.0"), Identity.generate())  # now it may


async def test_a_removed_users_key_stops_working(nursery, tmp_path, fake):
    key = users.add_user(tmp_path, "ann")
    users.add_user(tmp_path, "bob")
    url = await start(nursery, tmp_path, fake, gateway=GatewayConfig(reload_interval=0.05))
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        assert (await http.get("/api/tags", headers=bearer(key))).status_code == 200
        users.remove_user(tmp_path, "ann")
        with trio.fail_after(10):
            while (await http.get("/api/tags", headers=bearer(key))).status_code != 401:
                await trio.sleep(0.05)


async def test_over_the_rate_a_user_gets_429_with_retry_after_and_others_do_not(nursery, tmp_path, fake):
    ann, bob = users.add_user(tmp_path, "ann"), users.add_user(tmp_path, "bob")
    url = await start(nursery, tmp_path, fake, gateway=GatewayConfig(rate_per_minute=1, burst=3))
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        statuses = [(await http.get("/api/tags", headers=bearer(ann))).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        limited = await http.get("/api/tags", headers=bearer(ann))
        assert limited.status_code == 429 and "rate limit" in limited.json()["error"]
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert (await http.get("/api/tags", headers=bearer(bob))).status_code == 200


async def test_a_user_runs_at_most_max_concurrent_requests(nursery, tmp_path, fake):
    ann = users.add_user(tmp_path, "ann")
    url = await start(nursery, tmp_path, fake, gateway=GatewayConfig(max_concurrent=1))
    fake.faults.latency = 0.05
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=bearer(ann)) as http:
        body = {"model": MODEL, "messages": QUESTION, "distributed": {"strategy": "route"}}  # streams word by word
        async with http.stream("POST", "/api/chat", json=body) as streaming:
            lines = streaming.aiter_lines()
            await lines.__anext__()
            second = await http.get("/api/tags")
            assert second.status_code == 429 and "already running" in second.json()["error"]
            async for _ in lines:
                pass
        assert (await http.get("/api/tags")).status_code == 200  # the slot came back with the stream's end


async def test_users_see_and_cancel_only_their_own_requests(nursery, tmp_path, fake):
    ann, bob = users.add_user(tmp_path, "ann"), users.add_user(tmp_path, "bob")
    url = await start(nursery, tmp_path, fake)
    fake.faults.latency = 0.05
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        body = {"model": MODEL, "messages": QUESTION, "distributed": {"strategy": "route"}}
        async with http.stream("POST", "/api/chat", json=body, headers=bearer(ann)) as streaming:
            lines = streaming.aiter_lines()
            await lines.__anext__()
            mine = (await http.get("/api/distributed/requests", headers=bearer(ann))).json()["requests"]
            assert [(r["model"], r["strategy"]) for r in mine] == [(MODEL, "route")]
            assert (await http.get("/api/distributed/requests", headers=bearer(bob))).json() == {"requests": []}
            request_id = mine[0]["id"]
            stolen = await http.delete(f"/api/distributed/requests/{request_id}", headers=bearer(bob))
            assert stolen.status_code == 404
            cancelled = await http.delete(f"/api/distributed/requests/{request_id}", headers=bearer(ann))
            assert cancelled.status_code == 200
            rest = [json.loads(line) async for line in lines if line]
        assert rest and rest[-1] == {"error": "cancelled by its user"}
    with trio.fail_after(10):
        while fake.active:
            await trio.sleep(0.02)
    assert fake.cancelled == 1


async def test_attached_servers_belong_to_the_user_who_registered_them(nursery, tmp_path, fake):
    ann, bob = users.add_user(tmp_path, "ann"), users.add_user(tmp_path, "bob")
    url = await start(nursery, tmp_path, fake)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        body = {"node_id": "laptop", "user_id": "mallory", "ollama_url": fake.url, "available_models": [MODEL]}
        assert (await http.post("/api/distributed/register", json=body, headers=bearer(ann))).status_code == 201
        for method, path, payload in (
            ("POST", "/api/distributed/register", body),
            ("POST", "/api/distributed/status/laptop", {"status": "offline"}),
            ("DELETE", "/api/distributed/nodes/laptop", None),
        ):
            taken = await http.request(method, path, json=payload, headers=bearer(bob))
            assert taken.status_code == 403, (method, path)
        assert (await http.post("/api/distributed/status/laptop", json={}, headers=bearer(ann))).status_code == 200
        assert (await http.delete("/api/distributed/nodes/laptop", headers=bearer(ann))).status_code == 200


async def test_prompts_and_answers_are_never_logged_even_at_debug_level(nursery, tmp_path, fake, caplog):
    caplog.set_level("DEBUG")
    url = await start(nursery, tmp_path, fake)
    secret = "my-diary-entry-for-today"
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for strategy in ("route", "best"):
            answer = await http.post("/api/chat", json={
                "model": MODEL, "messages": [{"role": "user", "content": secret}], "stream": False,
                "distributed": {"strategy": strategy},
            })
            assert answer.status_code == 200
    assert caplog.records  # the node did log (requests, jobs) ...
    assert secret not in caplog.text and ANSWER not in caplog.text  # ... but not what was said
