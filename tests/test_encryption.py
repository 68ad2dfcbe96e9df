"""What an eavesdropper on a peer link sees: two real nodes whose only link runs through a TCP relay that records
every byte. The prompt and the answer cross that link as a remote job, and neither appears in the bytes."""

from __future__ import annotations

import functools

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
SECRET_PROMPT = "my-bank-password-is-hunter2 tell me a story"
SECRET_ANSWER = "the-treasure-lies-under-the-old-oak"
KEY = bytes(range(32))


async def relay(nursery: trio.Nursery, target_port: int, captured: list[bytes]) -> int:
    """Listen on loopback; pipe each connection to ``target_port``, keeping a copy of every byte both ways."""

    async def pipe(source: trio.SocketStream, sink: trio.SocketStream) -> None:
        try:
            while data := await source.receive_some(65536):
                captured.append(data)
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await sink.aclose()

    async def handle(client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", target_port)
        async with trio.open_nursery() as both:
            both.start_soon(pipe, client, server)
            both.start_soon(pipe, server, client)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


@pytest.mark.parametrize("network_key", [KEY, None], ids=["private-network", "open-network"])
async def test_prompts_and_answers_never_cross_a_peer_link_in_clear(nursery, tmp_path, network_key):
    fake = FakeOllama(models={MODEL: FakeModel(answer=SECRET_ANSWER)})
    fake_url = await nursery.start(serve_gateway, fake, "127.0.0.1", 0)
    captured: list[bytes] = []

    async def start(name: str, **changes) -> tuple[Node, str]:
        (tmp_path / name).mkdir()
        config = NodeConfig(data_dir=tmp_path / name, name=name, user="ann", http_port=0, mdns=False, **changes)
        node = Node(config, Identity.generate())
        return node, (await nursery.start(node.run)).http_url

    worker, _ = await start("worker", backends=(BackendSpec("ollama", fake_url),),
                            overlay=overlay_config(network_key=network_key))
    worker_port = int(worker.overlay.local_record.record.addrs[0].rsplit(":", 1)[1])
    relay_port = await relay(nursery, worker_port, captured)
    coordinator, coordinator_url = await start("coordinator", no_backend=True, overlay=overlay_config(
        network_key=network_key, seeds=(f"ws://127.0.0.1:{relay_port}",),
    ))
    with trio.fail_after(20):
        await coordinator.overlay.wait_until(lambda: bool(coordinator.coordinator.holders(MODEL)))

    async with httpx.AsyncClient(base_url=coordinator_url, timeout=30) as http:
        answer = await http.post("/api/chat", json={
            "model": MODEL, "messages": [{"role": "user", "content": SECRET_PROMPT}], "stream": False,
        })
    assert answer.status_code == 200 and answer.json()["message"]["content"] == SECRET_ANSWER
    assert answer.json()["distributed"]["winner"] == worker.identity.peer_id
    link = coordinator.overlay.link_to(worker.identity.peer_id)
    assert f"port={relay_port}," in link.remote_address  # the link runs through the relay
    assert any(body.get("messages", [{}])[-1].get("content") == SECRET_PROMPT for _, body in fake.requests)

    wire = b"".join(captured)
    assert len(wire) > 1000  # the handshake, records and the job went through the relay ...
    for secret in (SECRET_PROMPT, SECRET_ANSWER, "hunter2", "treasure", MODEL):
        assert secret.encode() not in wire  # ... and none of it in clear
