"""The local backend: the same Engine and Service as the container, in this process.

Calls run on a worker thread (torch releases the GIL; the engine serialises inference per
model anyway), so the event loop that drives the client stays free. Submitted jobs queue
on this backend's single job thread and get ids ``local-<hex>`` in the process-wide
registry (``backends.registry``), so ``Job.from_id`` works anywhere in the submitting
process. They cannot be re-attached from another process: a local job is gone when its
process exits, and ``JobNotFound`` says so.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
import uuid
from collections.abc import Callable

from whisper_modal.backends.base import LOCAL_JOB_PREFIX, Submission
from whisper_modal.backends.registry import in_process_jobs
from whisper_modal.config import Settings
from whisper_modal.delivery import WebhookQueue
from whisper_modal.engine.transcriber import Engine
from whisper_modal.results import Transcript
from whisper_modal.service import Service
from whisper_modal.wire import Request

__all__ = ["LocalBackend"]


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
        self._executor: cf.ThreadPoolExecutor | None = None
        self._webhooks: WebhookQueue | None = None
        self._lock = threading.Lock()

    def device(self) -> str:
        """The device this backend would run on ("cuda" or "cpu").

        Raises:
            ConfigurationError: the ``[local]`` extra (torch, whisper) is not installed.
        """
        from whisper_modal.engine.models import resolve_device

        return resolve_device(self.engine.device)

    def _jobs_executor(self) -> cf.ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = cf.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="whisper-modal-local"
                )
            return self._executor

    async def atranscribe(self, request: Request, *, timeout: float) -> Transcript:
        """Run on a worker thread; ``timeout`` is not enforced (torch cannot be interrupted)."""
        return await asyncio.to_thread(self.service.handle, request, job_id=request.client_job_id)

    async def asubmit(self, request: Request) -> Submission:
        """Queue the request on the job thread; returns ``local-<hex>``."""
        return self.start(request)

    def start(self, request: Request, *, fallback_reason: str | None = None) -> Submission:
        """Queue ``request`` as a local job (``fallback_reason``: why it runs here).

        Its webhook is not sent on the job thread: it is queued for the webhook workers
        once the job's outcome is set (a receiver that hangs delays no other job, and reads
        the job final when its webhook arrives).
        """
        job_id = LOCAL_JOB_PREFIX + uuid.uuid4().hex
        deliveries: list[Callable[[], None]] = []
        future = self._jobs_executor().submit(
            self.service.handle, request, job_id=job_id, defer_notify=deliveries.append
        )
        if request.webhook_url is not None:
            webhooks = self._webhook_queue()

            def send_when_final(_: cf.Future[Transcript]) -> None:
                for deliver in deliveries:
                    webhooks.put(deliver)

            future.add_done_callback(send_when_final)
        in_process_jobs().add(job_id, future, fallback_reason=fallback_reason)
        return Submission(job_id, fallback_reason)

    def _webhook_queue(self) -> WebhookQueue:
        with self._lock:
            if self._webhooks is None:
                self._webhooks = WebhookQueue()
            return self._webhooks

    def close(self) -> None:
        """Stop the job thread; queued jobs are cancelled, a running one finishes."""
        with self._lock:
            executor, self._executor = self._executor, None
            webhooks, self._webhooks = self._webhooks, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        if webhooks is not None:
            webhooks.close()
