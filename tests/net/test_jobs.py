"""Remote jobs between real overlays over loopback websockets; the workers' backends are fake Ollama servers."""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio

from p2pnode.backends.attached import AttachedServers
from p2pnode.backends.base import BackendConfig, ChatRequest
from p2pnode.backends.local import ComputeConfig, LocalCompute
from p2pnode.backends.ollama import OllamaBackend
from p2pnode.backends.resources import Resources
from p2pnode.config import AttachedConfig, JobsConfig
from p2pnode.core.identity import Identity
from p2pnode.core.wire import JobOpen, job_transcript
from p2pnode.errors import BackendRejected, PeerRejected, PeerUnreachable
from p2pnode.gateway.app import serve_gateway
from p2pnode.net.jobs import Jobs
from p2pnode.testing.fake_ollama import FakeModel, FakeOllama
from tests.net.helpers import Network, wait_all

pytestmark = pytest.mark.slow

ANSWER = "one two three four five six seven eight nine ten eleven twelve"


async def start_pair(nursery, *, worker_jobs: JobsConfig = JobsConfig(), parallel: int = 4):
    """A coordinator (no backend) and a worker whose backend is a fake Ollama; linked, each knowing the other."""
    fake = FakeOllama(models={"tiny:1b": FakeModel(answer=ANSWER)})
    url = await nursery.start(serve_gateway, fake, "127.0.0.1", 0)
    compute = LocalCompute([OllamaBackend(url, BackendConfig(parallel=parallel))], Resources(2, 1, 0, 0, "none"), ComputeConfig())
    await compute.refresh()
    worker_id, coordinator_id = Identity.generate(), Identity.generate()
    worker_jobs_service = Jobs(lambda: compute, no_attached(), worker_jobs, identity=worker_id)
    coordinator_jobs = Jobs(lambda: None, no_attached(), JobsConfig(window=4), identity=coordinator_id)
    await nursery.start(worker_jobs_service.run)
    await nursery.start(coordinator_jobs.run)
    net = Network(nursery)
    worker = await net.start("worker", identity=worker_id, extensions=[worker_jobs_service])
    coordinator = await net.start(
        "coordinator", identity=coordinator_id, seeds=(worker.url,), extensions=[coordinator_jobs]
    )
    await wait_all([worker, coordinator], lambda n: len(n.overlay.linked_peers) == 1)
    link = coordinator.overlay.link_to(worker.peer_id)
    return fake, worker_jobs_service, coordinator_jobs, link, worker


def no_attached() -> AttachedServers:
    return AttachedServers(AttachedConfig(), BackendConfig(), on_change=lambda: None)


def ask(model: str = "tiny:1b") -> ChatRequest:
    return ChatRequest(model=model, messages=({"role": "user", "content": "count"},))


async def test_a_remote_job_streams_the_workers_answer(nursery):
    fake, served, jobs, link, _ = await start_pair(nursery)
    chunks = []
    async with jobs.open_remote_chat(link, ask(), user="alice") as stream:
        async for chunk in stream:
            chunks.append(chunk)
    assert "".join(c.content for c in chunks) == ANSWER
    assert chunks[-1].done and chunks[-1].done_reason == "stop" and chunks[-1].completion_tokens == 12
    assert served.remote_jobs == 0


async def test_an_unknown_model_is_refused_with_404(nursery):
    fake, served, jobs, link, _ = await start_pair(nursery)
    with pytest.raises(BackendRejected) as refused:
        async with jobs.open_remote_chat(link, ask("nope"), user="alice") as stream:
            async for _ in stream:
                pass
    assert refused.value.status_hint == 404


async def test_a_full_worker_says_busy_instead_of_queueing(nursery):
    fake, served, jobs, link, _ = await start_pair(nursery, worker_jobs=JobsConfig(max_remote_jobs=1))
    fake.faults.latency = 0.05
    async with jobs.open_remote_chat(link, ask(), user="alice") as first:
        await first.__anext__()  # the first job runs
        with pytest.raises(PeerRejected) as busy:
            async with jobs.open_remote_chat(link, ask(), user="bob") as second:
                async for _ in second:
                    pass
        assert busy.value.code == 429
        async for _ in first:
            pass


async def test_leaving_early_stops_the_generation_on_the_worker(nursery):
    fake, served, jobs, link, _ = await start_pair(nursery)
    fake.faults.latency = 0.05
    async with jobs.open_remote_chat(link, ask(), user="alice") as stream:
        await stream.__anext__()
    with trio.fail_after(10):
        while fake.active or served.remote_jobs:
            await trio.sleep(0.01)
    assert fake.cancelled == 1


async def test_a_stalled_consumer_does_not_hold_back_another_job(nursery):
    fake, served, jobs, link, _ = await start_pair(nursery)
    async with jobs.open_remote_chat(link, ask(), user="alice") as stalled:
        await stalled.__anext__()  # then read no more: its worker stops at the window (4 chunks)
        with trio.fail_after(10):
            async with jobs.open_remote_chat(link, ask(), user="alice") as flowing:
                text = "".join([c.content async for c in flowing])
        assert text == ANSWER
        rest = "".join([c.content async for c in stalled])
    assert "one" + rest == ANSWER


async def test_a_worker_that_dies_mid_job_fails_the_stream(nursery):
    fake, served, jobs, link, worker = await start_pair(nursery)
    fake.faults.latency = 0.05
    with pytest.raises(PeerUnreachable):
        async with jobs.open_remote_chat(link, ask(), user="alice") as stream:
            await stream.__anext__()
            worker.kill()
            async for _ in stream:
                pass


async def refused(jobs, link, user: str = "alice") -> PeerRejected:
    with pytest.raises(PeerRejected) as caught:
        async with jobs.open_remote_chat(link, ask(), user=user) as stream:
            async for _ in stream:
                pass
    return caught.value


async def test_a_worker_runs_jobs_only_for_the_peers_and_users_its_owner_allows(nursery):
    fake, served, jobs, link, _ = await start_pair(nursery, worker_jobs=JobsConfig(allowed_peers=("12D3KooWother",)))
    assert (await refused(jobs, link)).code == 403
    fake, served, jobs, link, _ = await start_pair(nursery, worker_jobs=JobsConfig(allowed_users=("bob",)))
    assert (await refused(jobs, link, user="alice")).code == 403
    async with jobs.open_remote_chat(link, ask(), user="bob") as stream:
        assert "".join([c.content async for c in stream]) == ANSWER
    # Naming the owner proves nothing; one of the owner's own nodes (by peer id) runs anything.
    assert (await refused(jobs, link, user="worker-owner")).code == 403
    served.config = replace(served.config, owner_peers=(jobs._identity.peer_id,))
    async with jobs.open_remote_chat(link, ask(), user="alice") as stream:
        assert "".join([c.content async for c in stream]) == ANSWER


async def test_a_peer_over_its_job_rate_is_told_to_slow_down(nursery):
    fake, served, jobs, link, _ = await start_pair(nursery, worker_jobs=JobsConfig(peer_rate_per_minute=0.001, peer_burst=2))
    for _ in range(2):
        async with jobs.open_remote_chat(link, ask(), user="alice") as stream:
            assert "".join([c.content async for c in stream]) == ANSWER
    rejection = await refused(jobs, link)
    assert rejection.code == 429 and "rate limited" in str(rejection)


async def test_others_get_only_the_share_of_slots_the_owner_grants(nursery):
    # 4 remote jobs at most, half for others: the third concurrent job of another user is refused, the owner's is not.
    fake, served, jobs, link, _ = await start_pair(nursery, worker_jobs=JobsConfig(remote_share=0.5), parallel=4)
    fake.faults.latency = 0.05
    async with jobs.open_remote_chat(link, ask(), user="alice") as one, \
            jobs.open_remote_chat(link, ask(), user="alice") as two:
        await one.__anext__()
        await two.__anext__()
        assert (await refused(jobs, link)).code == 429
        served.config = replace(served.config, owner_peers=(jobs._identity.peer_id,))  # now it is the owner's node
        async with jobs.open_remote_chat(link, ask(), user="alice") as owners:
            assert "".join([c.content async for c in owners]) == ANSWER


async def test_a_job_its_coordinator_did_not_sign_is_refused(nursery):
    fake, served, jobs, link, worker = await start_pair(nursery)
    jobs._identity = Identity.generate()  # signs with a key that is not the link's peer
    rejection = await refused(jobs, link)
    assert rejection.code == 403 and "not signed" in str(rejection)
    assert not [path for path, _ in fake.requests if path == "/api/chat"]


async def test_a_job_number_used_twice_on_one_link_ends_that_link_and_the_worker_keeps_serving(nursery, caplog):
    fake, served, jobs, link, worker = await start_pair(nursery)
    fake.faults.latency = 0.05
    with pytest.raises(PeerUnreachable):
        async with jobs.open_remote_chat(link, ask(), user="alice") as stream:
            await stream.__anext__()
            number = max(n for _, n in served._served)
            again = JobOpen(number, "tiny:1b", ({"role": "user", "content": "count"},), {}, 30.0, "alice", 8, "", True)
            await link.send_ordered(replace(again, signature=jobs._identity.sign(job_transcript(worker.peer_id, again))))
            async for _ in stream:
                pass
    assert "already running on this link" in caplog.text
    with trio.fail_after(10):
        while served.remote_jobs or not worker.overlay.linked_peers:  # the job ended; the peers link again
            await trio.sleep(0.01)


@pytest.mark.parametrize("policy", [JobsConfig(remote_share=0.0), JobsConfig(max_remote_jobs=0)], ids=["share-0", "max-0"])
async def test_a_worker_that_takes_no_jobs_from_others_says_so_for_good(nursery, policy):
    fake, served, jobs, link, _ = await start_pair(nursery, worker_jobs=policy)
    rejection = await refused(jobs, link)
    assert rejection.code == 403 and "no jobs for other users" in str(rejection)  # 403: nobody waits for it
