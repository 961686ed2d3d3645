"""The local backend: the same Engine and Service as the container, in this process.

Blocking calls run on this backend's call pool (``settings.local_workers`` threads:
torch releases the GIL), so the event loop that drives the client stays free; submitted
jobs run on its job pool (two threads) and get ids ``local-<hex>`` in the process-wide
registry (``backends.registry``), so ``Job.from_id`` works anywhere in the submitting
process. They cannot be re-attached from another process: a local job is gone when its
process exits, and ``JobNotFound`` says so.

Every call and job runs as a ``Work`` (``engine.turns``): the model is shared in turns
between windows, so a short request overtakes a long one; a call's ``timeout``, a
cancelled awaiting task and ``Job.cancel()`` stop the decode at its next window. Short
calls that arrive while another runs share one batched pass (``backends.packing``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
import uuid
from collections.abc import Callable

from whisper_modal.backends.base import LOCAL_JOB_PREFIX, Submission
from whisper_modal.backends.packing import Packer
from whisper_modal.backends.registry import in_process_jobs
from whisper_modal.config import Settings
from whisper_modal.delivery import WebhookQueue
from whisper_modal.engine.memory import RELEASE_AFTER_SECONDS, release_memory
from whisper_modal.engine.transcriber import Engine
from whisper_modal.engine.turns import Work, running
from whisper_modal.results import Transcript
from whisper_modal.service import Service
from whisper_modal.wire import Request

__all__ = ["JOB_WORKERS", "LocalBackend"]

#: local jobs decoding at once (a short job can overtake a long one on the model)
JOB_WORKERS = 2


class LocalBackend:
    """Runs requests on this machine (CUDA when present, else CPU).

    Args:
        settings: cache directory, device, limits, S3 and webhook credentials.
        device: override ``settings.device`` ("auto", "cuda" or "cpu").
    """

    name = "local"

    def __init__(self, settings: Settings, *, device: str | None = None) -> None:
        self.settings = settings
        self.engine = Engine(
            cache_dir=settings.cache_dir,
            device=device or settings.device,
            allow_paths=True,
            max_audio_seconds=settings.max_audio_seconds,
            backend="local",
        )
        self.service = Service(self.engine, settings)
        self._pools: dict[str, cf.ThreadPoolExecutor] = {}  # "calls", "jobs"
        self._webhooks: WebhookQueue | None = None
        self._lock = threading.Lock()
        self._in_flight = 0  # blocking calls running alone now
        self._packer = Packer(self.service, lambda run: self._pool("calls").submit(run))

    def device(self) -> str:
        """The device this backend would run on ("cuda" or "cpu").

        Raises:
            ConfigurationError: the ``[local]`` extra (torch, whisper) is not installed.
        """
        from whisper_modal.engine.models import resolve_device

        return resolve_device(self.engine.device)

    def _pool(self, kind: str) -> cf.ThreadPoolExecutor:
        """The "calls" pool (``settings.local_workers``) or the "jobs" pool, made on first use."""
        with self._lock:
            pool = self._pools.get(kind)
            if pool is None:
                size = self.settings.local_workers if kind == "calls" else JOB_WORKERS
                pool = cf.ThreadPoolExecutor(size, thread_name_prefix=f"whisper-modal-{kind}")
                self._pools[kind] = pool
            return pool

    def _run(
        self,
        request: Request,
        work: Work,
        job_id: str | None,
        defer_notify: Callable[[Callable[[], None]], None] | None = None,
    ) -> Transcript:
        try:
            with running(work):
                return self.service.handle(request, job_id=job_id, defer_notify=defer_notify)
        finally:
            if work.seconds >= RELEASE_AFTER_SECONDS:
                release_memory()

    async def atranscribe(self, request: Request, *, timeout: float) -> Transcript:
        """Run on the call pool.

        Past ``timeout`` seconds the decode stops at its next window with ``JobTimeout``;
        cancelling the awaiting task stops it there too (the model goes to the next
        request, not to work nobody waits for).
        """
        if self._in_flight and Packer.packable(request):  # company: share a batched pass
            return await self._packer.atranscribe(request, timeout=timeout)
        work = Work.within(timeout, job_id=request.client_job_id)
        self._in_flight += 1
        try:
            future = self._pool("calls").submit(self._run, request, work, request.client_job_id)
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            work.cancel()
            raise
        finally:
            self._in_flight -= 1

    async def asubmit(self, request: Request) -> Submission:
        """Queue the request on the job pool; returns ``local-<hex>``."""
        return self.start(request)

    def start(self, request: Request, *, fallback_reason: str | None = None) -> Submission:
        """Queue ``request`` as a local job (``fallback_reason``: why it runs here).

        Its webhook is not sent on the job thread: it is queued for the webhook workers
        once the job's outcome is set (a receiver that hangs delays no other job, and reads
        the job final when its webhook arrives).
        """
        job_id = LOCAL_JOB_PREFIX + uuid.uuid4().hex
        deliveries: list[Callable[[], None]] = []
        work = Work(job_id=job_id)
        future = self._pool("jobs").submit(self._run, request, work, job_id, deliveries.append)
        if request.webhook_url is not None:
            webhooks = self._webhook_queue()

            def send_when_final(_: cf.Future[Transcript]) -> None:
                for deliver in deliveries:
                    webhooks.put(deliver)

            future.add_done_callback(send_when_final)
        in_process_jobs().add(job_id, future, fallback_reason=fallback_reason, stop=work.cancel)
        return Submission(job_id, fallback_reason)

    def _webhook_queue(self) -> WebhookQueue:
        with self._lock:
            if self._webhooks is None:
                self._webhooks = WebhookQueue()
            return self._webhooks

    def close(self) -> None:
        """Stop the pools; queued work is cancelled, running work finishes."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
            webhooks, self._webhooks = self._webhooks, None
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)
        if webhooks is not None:
            webhooks.close()
