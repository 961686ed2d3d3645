"""The one registry of jobs that run in this process (local jobs and local fallbacks).

Process-wide, so a ``Job`` re-attached by id from another ``Client`` in the same process
still finds its future; bounded, so a long-lived service does not grow without limit
(the oldest *finished* jobs are forgotten first). These jobs cannot be re-attached from
another process: ``JobNotFound`` says so. Reading a job never imports the engine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
from collections.abc import Callable

import attrs

from whisper_modal.backends.base import JobStatus
from whisper_modal.errors import JobCancelled, JobNotFound, JobTimeout
from whisper_modal.results import Transcript

__all__ = ["MAX_FINISHED_JOBS", "InProcessJobs", "in_process_jobs"]

MAX_FINISHED_JOBS = 10_000  # finished jobs kept for ``result()`` before the oldest go


@attrs.define
class _Entry:
    future: cf.Future[Transcript]
    fallback_reason: str | None = None
    stop: Callable[[], None] | None = None  # stops a running job at its next window
    cancelled: bool = False  # cancel() was called: the job reads cancelled from then on


class InProcessJobs:
    """Futures of in-process jobs by id, with progress counters; implements ``JobBackend``."""

    name = "in-process"

    def __init__(self, max_finished: int = MAX_FINISHED_JOBS) -> None:
        self._jobs: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._max_finished = max_finished

    def add(
        self,
        job_id: str,
        future: cf.Future[Transcript],
        *,
        fallback_reason: str | None = None,
        stop: Callable[[], None] | None = None,
    ) -> None:
        """Register a job's future (``stop``: asks the running job to stop)."""
        with self._lock:
            self._jobs[job_id] = _Entry(future, fallback_reason=fallback_reason, stop=stop)
            self._trim()

    def _entry(self, job_id: str) -> _Entry:
        with self._lock:
            entry = self._jobs.get(job_id)
        if entry is None:
            raise JobNotFound(
                f"no job {job_id} in this process (local jobs, and jobs that fell back to "
                "the local engine, live only in the process that submitted them)",
                job_id=job_id,
            )
        return entry

    def _trim(self) -> None:
        # Called with the lock held: forget the oldest finished jobs beyond the cap.
        excess = len(self._jobs) - self._max_finished
        if excess <= 0:
            return
        for job_id in [j for j, e in self._jobs.items() if e.future.done()][:excess]:
            del self._jobs[job_id]

    async def astatus(self, job_id: str) -> JobStatus:
        """Pending, running, succeeded, failed or cancelled."""
        entry = self._entry(job_id)
        future = entry.future
        if future.cancelled() or entry.cancelled:
            return JobStatus.CANCELLED
        if not future.done():
            return JobStatus.RUNNING if future.running() else JobStatus.PENDING
        return JobStatus.FAILED if future.exception() is not None else JobStatus.SUCCEEDED

    async def aresult(self, job_id: str, *, timeout: float | None) -> Transcript:
        """Await the job without blocking the loop; ``timeout=0`` polls.

        Raises:
            JobTimeout: not done in time. JobCancelled: cancelled. JobNotFound: unknown id.
        """
        entry = self._entry(job_id)
        future = entry.future
        if entry.cancelled:  # stopping, or stopped, at its next window
            raise JobCancelled(f"job {job_id} was cancelled", job_id=job_id)
        try:
            transcript = await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(future)), timeout
            )
        except TimeoutError as exc:
            if not future.done():
                raise JobTimeout(
                    f"job {job_id} not finished after {timeout} s", job_id=job_id
                ) from exc
            # Done after all: the job raised a TimeoutError of its own, or it finished just
            # as the wait gave up (a poll racing the end). Its own outcome is the answer.
            if future.cancelled():
                raise JobCancelled(f"job {job_id} was cancelled", job_id=job_id) from exc
            transcript = future.result()  # re-raises the job's own error, if it failed
        except asyncio.CancelledError as exc:
            if future.cancelled():
                raise JobCancelled(f"job {job_id} was cancelled", job_id=job_id) from exc
            raise
        if entry.fallback_reason is not None:
            transcript = transcript.with_changes(fallback_reason=entry.fallback_reason)
        return transcript.with_changes(job_id=job_id)

    async def acancel(self, job_id: str) -> None:
        """Cancel a job: one not started never starts, a running one stops at its next
        window (``JobCancelled``)."""
        entry = self._entry(job_id)
        if entry.future.done() and not entry.future.cancelled():
            return  # finished: its outcome stands
        entry.cancelled = True
        if not entry.future.cancel() and entry.stop is not None:
            entry.stop()

    async def aprogress(self, job_id: str) -> tuple[int, int] | None:
        """None: a local job is one run (the engine splits long audio itself)."""
        self._entry(job_id)  # an unknown id is JobNotFound
        return None


_REGISTRY = InProcessJobs()


def in_process_jobs() -> InProcessJobs:
    """The process-wide registry."""
    return _REGISTRY
