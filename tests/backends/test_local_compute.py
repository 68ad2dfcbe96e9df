"""A node's compute over real HTTP to fake Ollama servers: models, a backend that dies, load and response time."""

from __future__ import annotations

import pytest
import trio

from p2pnode.backends.base import BackendConfig, ChatRequest
from p2pnode.backends.local import ComputeConfig, LocalCompute
from p2pnode.backends.ollama import OllamaBackend
from p2pnode.backends.resources import Resources
from p2pnode.errors import BackendRejected
from p2pnode.gateway.app import serve_gateway
from p2pnode.testing.fake_ollama import FakeModel, FakeOllama

pytestmark = pytest.mark.slow

NO_GPU = Resources(cpu_cores=8, ram_mb=16000, gpu_count=0, gpu_memory_mb=0, gpu_source="none")


async def start_fake(nursery, models: dict[str, FakeModel]):
    fake = FakeOllama(models=models)
    scope = trio.CancelScope()

    async def serve(task_status=trio.TASK_STATUS_IGNORED):
        with scope:
            await serve_gateway(fake, "127.0.0.1", 0, task_status=task_status)

    url = await nursery.start(serve)
    return fake, url, scope


async def test_models_are_the_union_and_a_silent_backend_takes_its_models_away(nursery):
    fake_a, url_a, _ = await start_fake(nursery, {"llama3.2:3b": FakeModel(size_vram=2 * 2**30)})
    fake_b, url_b, stop_b = await start_fake(nursery, {"qwen2.5:7b": FakeModel(loaded=False)})
    config = BackendConfig(probe_timeout=1.0, connect_timeout=1.0, parallel=2)
    backends = [OllamaBackend(url_a, config), OllamaBackend(url_b, config)]
    changes = []
    compute = LocalCompute(backends, NO_GPU, ComputeConfig(), on_change=lambda: changes.append(1))
    await compute.refresh()
    described = compute.describe()
    assert described["models"] == ("llama3.2:3b", "qwen2.5:7b")
    assert (described["gpu_count"], described["gpu_memory"]) == (1, 2048)  # from Ollama's size_vram, no NVML
    assert described["cpu_cores"] == 8 and changes

    stop_b.cancel()  # the second server goes away
    await compute.refresh()
    assert compute.describe()["models"] == ("llama3.2:3b",)
    assert not compute.serves("qwen2.5:7b")
    for backend in backends:
        await backend.aclose()


async def test_a_running_job_counts_at_once_and_feeds_the_response_time(nursery):
    fake, url, _ = await start_fake(nursery, {"tiny:1b": FakeModel()})
    fake.faults.latency = 0.01
    backend = OllamaBackend(url, BackendConfig(parallel=2))
    compute = LocalCompute([backend], NO_GPU, ComputeConfig())
    await compute.refresh()
    request = ChatRequest(model="tiny:1b", messages=({"role": "user", "content": "hi"},))
    async with compute.open_chat(request) as chunks:
        described = compute.describe()
        assert described["active_tasks"] == 1 and described["current_load"] == 0.5
        text = "".join([c.content async for c in chunks])
    assert text == FakeModel().answer
    described = compute.describe()
    assert described["active_tasks"] == 0 and described["current_load"] == 0.0
    assert described["response_time"] > 0

    # A job cancelled by its client does not count as a response time sample.
    before = compute.tracker.response_ms
    async with compute.open_chat(request) as chunks:
        async for _ in chunks:
            break
    assert compute.tracker.response_ms == before and compute.tracker.failed == 1

    with pytest.raises(BackendRejected) as rejected:
        async with compute.open_chat(ChatRequest(model="other", messages=())):
            pass
    assert rejected.value.status_hint == 404
    await backend.aclose()
