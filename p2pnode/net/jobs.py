"""Remote jobs over peer links, both ways: run peers' chats on this node's compute (worker), and send this node's
chats to peers (client).

Jobs are multiplexed on the one link per peer. Flow control is per job, by credit: a worker sends at most
``window`` chunks ahead of what the client has consumed, and the client grants more as it reads. So a slow
consumer holds back only its own job; the link's reader never blocks, and other jobs keep flowing.

A worker admits jobs by its own policy (:class:`JobsConfig`): its owner's (those from ``owner_peers``, the
owner's other machines: a user name alone proves nothing) always; others' only from the allowed peers and users,
at most ``peer_rate_per_minute`` per peer, ``remote_share`` of ``max_remote_jobs`` at once, and none while the
owner's own jobs fill the backends (beyond that, the backend queues them). A refused job ends at once with a
status (403 not allowed, 429 busy or rate limited) instead of queueing. Every job is signed by its coordinator,
who vouches for the user it names; an unsigned or mis-signed job is refused (403). A client that leaves a job
early sends a cancel, and the worker closes the backend stream; a link that dies ends every job on it, on both
sides.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, replace

import trio

from p2pnode.backends.attached import AttachedServers
from p2pnode.backends.base import ChatChunk, ChatRequest
from p2pnode.backends.local import LocalCompute
from p2pnode.config import JobsConfig
from p2pnode.core.identity import Identity, short_id, verify_signature
from p2pnode.core.limits import KeyedLimiter
from p2pnode.core.records import NodeStatus
from p2pnode.core.wire import (
    DEFAULT_WIRE_LIMITS,
    JobCancel,
    JobChunk,
    JobCredit,
    JobEnd,
    JobOpen,
    Message,
    job_transcript,
)
from p2pnode.errors import (
    BackendError,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    BadSignature,
    DecodeError,
    PeerError,
    PeerRejected,
    PeerUnreachable,
)
from p2pnode.net.transport import PeerLink

__all__ = ["Jobs"]

log = logging.getLogger(__name__)

BUSY = 429


@dataclass
class _Served:
    scope: trio.CancelScope
    credit: trio.Semaphore
    others: bool  # another user's job on this node's own compute: counts against remote_share


class Jobs:
    def __init__(
        self,
        compute: Callable[[], LocalCompute | None],
        attached: AttachedServers,
        config: JobsConfig,
        *,
        identity: Identity,
    ) -> None:
        self._compute = compute
        self._identity = identity
        self._rates = KeyedLimiter(config.peer_rate_per_minute / 60, config.peer_burst, max_keys=4096)
        self._attached = attached
        self.config = config
        self._warned: set[str] = set()  # peers whose unsigned jobs were logged (once each)
        self._served: dict[tuple[int, int], _Served] = {}  # (id(link), job) -> running here for a peer
        self._opened: dict[tuple[int, int], trio.MemorySendChannel] = {}  # (id(link), job) -> ours, there: its inbox
        self._numbers = itertools.count(1)
        self._nursery: trio.Nursery | None = None

    @property
    def remote_jobs(self) -> int:
        return len(self._served)

    def _others_running(self) -> int:
        return sum(served.others for served in self._served.values())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the nursery that peers' jobs run in, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # ---- messages from links -------------------------------------------------------------------------------

    def handle(self, link: PeerLink, message: Message) -> bool:
        """Take a job message received on ``link``; ``False`` when it is not one."""
        key = (id(link), getattr(message, "job", -1))
        if isinstance(message, JobOpen):
            self._admit(link, message)
        elif isinstance(message, JobCancel):
            if (served := self._served.get(key)) is not None:
                served.scope.cancel()
        elif isinstance(message, JobCredit):
            if (served := self._served.get(key)) is not None:
                for _ in range(min(message.chunks, self.config.window)):
                    try:
                        served.credit.release()
                    except ValueError:
                        raise DecodeError("JobCredit beyond the window") from None
        elif isinstance(message, (JobChunk, JobEnd)):
            if (opened := self._opened.get(key)) is not None:
                try:
                    opened.send_nowait(message)
                except trio.WouldBlock:
                    raise DecodeError(f"job {message.job}: the worker ignored flow control") from None
        else:
            return False
        return True

    def link_closed(self, link: PeerLink) -> None:
        for (link_id, _), served in list(self._served.items()):
            if link_id == id(link):
                served.scope.cancel()
        for (link_id, _), opened in list(self._opened.items()):
            if link_id == id(link):
                opened.close()

    # ---- worker side ---------------------------------------------------------------------------------------

    def _admit(self, link: PeerLink, job: JobOpen) -> None:
        key = (id(link), job.job)
        if key in self._served:
            raise DecodeError(f"job {job.job} is already running on this link")
        compute = self._compute()
        cfg = self.config
        others = link.peer_id not in cfg.owner_peers
        share = math.ceil(cfg.remote_share * cfg.max_remote_jobs)  # others' jobs at once
        refusal = None
        if wait := self._rates.take(link.peer_id, trio.current_time()):
            refusal = (BUSY, f"rate limited: too many jobs from your node, retry in {wait:.1f} s")
        elif not _vouched(link.peer_id, self._identity.peer_id, job):
            if link.peer_id not in self._warned:
                self._warned.add(link.peer_id)
                log.warning("job from %s carries no valid signature: refused", short_id(link.peer_id))
            refusal = (403, "the job is not signed by the node that sent it")
        elif cfg.allowed_peers and link.peer_id not in cfg.allowed_peers and others:
            refusal = (403, "this node runs jobs only for the peers its owner chose")
        elif others and cfg.allowed_users and job.user not in cfg.allowed_users:
            refusal = (403, f"this node does not run jobs for user {job.user!r}")
        elif others and share == 0:  # a refusal that will not pass: 403, so nobody waits for it (429 is "later")
            refusal = (403, "this node runs no jobs for other users")
        elif job.target:
            attached = self._attached.get(job.target)
            if attached is None or job.model not in attached.models or attached.status is not NodeStatus.ONLINE:
                refusal = (404, f"attached server {job.target!r} does not serve {job.model!r} now")
            elif others and attached.active_tasks >= share:
                refusal = (BUSY, f"busy: attached server {job.target!r} runs {attached.active_tasks} jobs")
        elif compute is None or not compute.serves(job.model):
            refusal = (404, f"model {job.model!r} is not served by this node")
        elif others and (
            self._others_running() >= share or compute.tracker.active - self._others_running() >= compute.tracker.capacity
        ):
            refusal = (BUSY, "busy: this node's capacity is taken")
        if refusal is not None or self._nursery is None:
            status, reason = refusal or (BackendUnavailable.status_hint, "not accepting jobs")
            link.send_nowait(JobEnd(job.job, "", 0, 0, status, reason))
            return
        served = _Served(
            trio.CancelScope(deadline=trio.current_time() + job.timeout),
            trio.Semaphore(job.window, max_value=job.window),
            others=others and not job.target,
        )
        self._served[key] = served
        self._nursery.start_soon(self._serve, link, job, served)

    async def _serve(self, link: PeerLink, job: JobOpen, served: _Served) -> None:
        request = ChatRequest(
            model=job.model, messages=job.messages, options=job.options, timeout=job.timeout, stream=job.stream
        )
        end = JobEnd(job.job, "", 0, 0, 499, "cancelled")
        try:
            with served.scope:
                try:
                    if job.target:
                        opened = self._attached.open_chat(job.target, request)
                    else:
                        opened = self._compute().open_chat(request)
                    async with opened as chunks:
                        async for chunk in chunks:
                            pieces = _pieces(chunk.content) if chunk.content else []
                            last = pieces.pop() if chunk.done and pieces else ""
                            for piece in pieces:
                                await served.credit.acquire()
                                await link.send_ordered(JobChunk(job.job, piece))
                            if chunk.done:  # its last piece rides in the JobEnd: a whole answer is one message
                                end = JobEnd(job.job, chunk.done_reason or "stop", chunk.prompt_tokens or 0,
                                             chunk.completion_tokens or 0, 0, "", last)
                except BackendError as exc:
                    end = JobEnd(job.job, "", 0, 0, getattr(exc, "status_hint", 502), str(exc)[:1000])
            if served.scope.cancelled_caught and end.status == 499 and trio.current_time() >= served.scope.deadline:
                end = JobEnd(job.job, "", 0, 0, BackendTimeout.status_hint, "deadline passed on the worker")
            with trio.move_on_after(1):
                await link.send_ordered(end)
        except PeerError:
            pass  # the coordinator is gone: nobody to tell
        finally:
            del self._served[(id(link), job.job)]  # ours: a second JobOpen with this number was refused
            log.debug("job %d for %s ended: status %d", job.job, short_id(link.peer_id), end.status)

    # ---- client side ---------------------------------------------------------------------------------------

    @asynccontextmanager
    async def open_remote_chat(
        self, link: PeerLink, request: ChatRequest, *, user: str, target: str = ""
    ) -> AsyncIterator[AsyncIterator[ChatChunk]]:
        """Run ``request`` on ``link``'s peer (or on its attached server ``target``); yields its chunks. Leaving
        early cancels it there."""
        number = next(self._numbers)
        key = (id(link), number)
        window = self.config.window
        send, receive = trio.open_memory_channel[Message](window + 1)
        self._opened[key] = send
        finished = False
        try:
            timeout = request.timeout or self.config.default_timeout
            job = JobOpen(
                number, request.model, tuple(dict(m) for m in request.messages), dict(request.options), timeout,
                user, window, target, request.stream,
            )
            signature = self._identity.sign(job_transcript(link.peer_id, job))
            await link.send_ordered(replace(job, signature=signature))

            async def chunks() -> AsyncIterator[ChatChunk]:
                nonlocal finished
                consumed = 0
                async for message in receive:
                    if isinstance(message, JobChunk):
                        yield ChatChunk(content=message.content)
                        consumed += 1
                        if consumed >= math.ceil(window / 2):
                            await link.send_ordered(JobCredit(number, consumed))
                            consumed = 0
                    else:
                        finished = True
                        if message.status:
                            raise _remote_error(link, message)
                        yield ChatChunk(content=message.content, done=True, done_reason=message.done_reason or "stop",
                                        prompt_tokens=message.prompt_tokens, completion_tokens=message.completion_tokens)
                        return
                raise PeerUnreachable(f"link to {short_id(link.peer_id)} closed during job {number}")

            async with aclosing(chunks()) as stream:
                yield stream
        finally:
            del self._opened[key]
            if not finished:
                with trio.move_on_after(1) as scope:
                    scope.shield = True
                    try:
                        await link.send_ordered(JobCancel(number))
                    except PeerError:
                        pass


def _pieces(text: str, size: int = DEFAULT_WIRE_LIMITS.max_item_bytes // 4) -> list[str]:
    """A chunk cut to fit JobChunk's limit (in characters; 4 bytes each at worst)."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def _vouched(coordinator: str, worker: str, job: JobOpen) -> bool:
    """The link is authenticated; the signature makes the coordinator answer for the user it names."""
    try:
        verify_signature(coordinator, job.signature, job_transcript(worker, job))
    except BadSignature:
        return False
    return True


def _remote_error(link: PeerLink, end: JobEnd) -> Exception:
    where = f"peer {short_id(link.peer_id)}"
    if end.status in (BUSY, 403):
        return PeerRejected(f"{where} refused the job: {end.error}", code=end.status, reason=end.error)
    if end.status in (400, 404):
        return BackendRejected(f"{where}: {end.error}", status_hint=end.status)
    if end.status == BackendTimeout.status_hint:
        return BackendTimeout(f"{where}: {end.error}")
    if end.status == BackendUnavailable.status_hint:
        return BackendUnavailable(f"{where}: {end.error}")
    return BackendError(f"{where}: {end.error} (status {end.status})")


