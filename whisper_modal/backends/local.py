"""The local backend: the same Engine and Service as the container, in this process.

Jobs run on one worker thread (the engine serialises inference per model anyway), get ids
``local-<hex>`` and live in a process-wide registry, so ``Job.from_id`` works anywhere in
the submitting process. They cannot be re-attached from another process: a local job is
gone when its process exits, and ``JobNotFound`` says so.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
import uuid
from typing import Any

from whisper_modal.backends.base import JobStatus, Request, future_result, future_status
from whisper_modal.config import Settings
from whisper_modal.engine.transcriber import Engine
from whisper_modal.errors import JobCancelled, JobNotFound, JobTimeout
from whisper_modal.service import Service

__all__ = ["LOCAL_JOB_PREFIX", "LocalBackend"]

LOCAL_JOB_PREFIX = "local-"

# Process-wide: every LocalBackend shares the worker and the job registry, so a Job
# re-attached by id from another Client in this process still finds its future.
_EXECUTOR: cf.ThreadPoolExecutor | None = None
_JOBS: dict[str, cf.Future[dict[str, Any]]] = {}
_LOCK = threading.Lock()
_MAX_FINISHED_JOBS = 10_000  # keep memory bounded in long-lived services


def _executor() -> cf.ThreadPoolExecutor:
    global _EXECUTOR
    with _LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = cf.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="whisper-modal-local"
            )
        return _EXECUTOR


class LocalBackend:
    """Runs requests on this machine (CUDA when present, else CPU)."""

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

    def device(self) -> str:
        """The device this backend would run on ("cuda" or "cpu")."""
        from whisper_modal.engine.models import resolve_device

        return resolve_device(self.engine.device)

    def transcribe(self, request: Request, *, timeout: float) -> dict[str, Any]:
        """Run in the calling thread; ``timeout`` is not enforced (torch cannot be interrupted)."""
        return self.service.handle(request, job_id=request.client_job_id)

    async def atranscribe(self, request: Request, *, timeout: float) -> dict[str, Any]:
        """Run on a worker thread so the event loop stays free."""
        return await asyncio.to_thread(self.transcribe, request, timeout=timeout)

    def submit(self, request: Request) -> str:
        """Queue the request on the local worker; returns ``local-<hex>``."""
        job_id = LOCAL_JOB_PREFIX + uuid.uuid4().hex
        future = _executor().submit(self.service.handle, request, job_id=job_id)
        with _LOCK:
            _JOBS[job_id] = future
            _trim_registry()
        return job_id

    async def asubmit(self, request: Request) -> str:
        """Queue the request (queueing never blocks)."""
        return self.submit(request)

    def _future(self, job_id: str) -> cf.Future[dict[str, Any]]:
        with _LOCK:
            future = _JOBS.get(job_id)
        if future is None:
            raise JobNotFound(
                f"no local job {job_id} in this process (local jobs live only in the process "
                "that submitted them)",
                job_id=job_id,
            )
        return future

    def status(self, job_id: str) -> JobStatus:
        """Pending, running, succeeded, failed or cancelled."""
        return future_status(self._future(job_id))

    def result(self, job_id: str, *, timeout: float | None) -> dict[str, Any]:
        """Wait for the job; ``timeout=0`` polls."""
        return future_result(self._future(job_id), job_id, timeout)

    async def aresult(self, job_id: str, *, timeout: float | None) -> dict[str, Any]:
        """Await the job without blocking the loop."""
        future = self._future(job_id)
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout)
        except TimeoutError as exc:
            raise JobTimeout(f"job {job_id} not finished after {timeout} s", job_id=job_id) from exc
        except asyncio.CancelledError as exc:
            if future.cancelled():
                raise JobCancelled(f"job {job_id} was cancelled", job_id=job_id) from exc
            raise

    def cancel(self, job_id: str) -> None:
        """Cancel a queued job; a running one finishes (torch cannot be interrupted)."""
        self._future(job_id).cancel()


def _trim_registry() -> None:
    # Called with _LOCK held: forget the oldest finished jobs beyond the cap.
    if len(_JOBS) <= _MAX_FINISHED_JOBS:
        return
    for job_id in [j for j, f in _JOBS.items() if f.done()][: len(_JOBS) - _MAX_FINISHED_JOBS]:
        del _JOBS[job_id]
