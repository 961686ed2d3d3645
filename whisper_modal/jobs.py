"""Job handles: submit now, collect later, from this process or another one.

A ``Job`` is an id plus the backend that owns it (and the client's loop, for the sync
methods); it talks to that backend itself. Modal jobs have the FunctionCall id
(``fc-...``), a long-audio job the id of the app's orchestrator call, and either can be
re-attached from any process with Modal credentials for 7 days; local jobs
(``local-...``) live in the submitting process.
Creating a ``Job`` makes no network call and imports no engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from whisper_modal import _warnings
from whisper_modal.backends.base import LOCAL_JOB_PREFIX, JobBackend, JobStatus
from whisper_modal.errors import ConfigurationError, JobCancelled, JobTimeout, WhisperModalError
from whisper_modal.results import Transcript

if TYPE_CHECKING:
    from whisper_modal.progress import Bar

__all__ = ["Job", "JobStatus"]

T = TypeVar("T")


class _Runner(Protocol):
    def run(self, coro: Coroutine[Any, Any, T]) -> T: ...


class _JobSource(Protocol):
    """What ``Job.from_id`` needs of a client."""

    def job(self, job_id: str, fallback_reason: str | None = None) -> Job: ...


_default_source: Callable[[], _JobSource] | None = None


def _set_default_source(factory: Callable[[], _JobSource]) -> None:
    """Name the default client for ``Job.from_id`` (``whisper_modal._api`` does, at import)."""
    global _default_source
    _default_source = factory


def _kind(job_id: str) -> str:
    if job_id.startswith(LOCAL_JOB_PREFIX):
        return "local"
    return "modal"


class Job:
    """A submitted transcription.

    Attributes:
        id: the job id (a Modal FunctionCall id, or ``local-<hex>``).
        backend: "modal" or "local" (where the job runs).
        fallback_reason: why the job runs locally although Modal was asked for, if it does.
    """

    def __init__(
        self,
        job_id: str,
        *,
        owner: JobBackend,
        runner: _Runner,
        fallback_reason: str | None = None,
    ) -> None:
        self.id = job_id
        self.backend = _kind(job_id)
        self.fallback_reason = fallback_reason
        self._owner = owner  # the backend object that answers for the job
        self._runner = runner
        self._transcript: Transcript | None = None

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, backend={self.backend!r})"

    def _repr_html_(self) -> str:
        """A notebook's view: id, where it runs, its status now and, for fan-out, progress.

        One status call (and one progress call for a fan-out job) when the cell is shown;
        a backend that cannot answer shows why instead of raising.
        """
        from whisper_modal.formats import job_html

        try:
            status, parts = self.status(), self.progress()
        except WhisperModalError as exc:
            return job_html(self, None, None, f"{type(exc).__name__}: {exc}")
        return job_html(self, status, parts, None)

    @classmethod
    def from_id(cls, job_id: str, *, client: _JobSource | None = None) -> Job:
        """Re-attach to a job by id (e.g. one saved by another process).

        No network call happens until ``status()``/``result()``.

        Args:
            job_id: the id from ``Job.id``.
            client: the client whose backends own the job (default: the process-wide one).

        Raises:
            ConfigurationError: an empty id, or no client to attach with.
        """
        if not isinstance(job_id, str) or not job_id:
            raise ConfigurationError("a job id is a non-empty string")
        if client is None:
            if _default_source is None:  # pragma: no cover - whisper_modal/__init__ sets it
                raise ConfigurationError("pass client=: no default client is configured")
            client = _default_source()
        return client.job(job_id)

    # -- async core: each operation once; the sync methods run these on the client's loop

    async def astatus(self) -> JobStatus:
        """Return the job's status (one quick backend call)."""
        if self._transcript is not None:
            return JobStatus.SUCCEEDED
        return await self._owner.astatus(self.id)

    async def aprogress(self) -> tuple[int, int] | None:
        """(parts done, parts total) for a fan-out job; None for single-call jobs."""
        return await self._owner.aprogress(self.id)

    async def aresult(self, timeout: float | None = None) -> Transcript:
        """Async twin of ``result``; never blocks the event loop."""
        if self._transcript is None:
            transcript = await self._owner.aresult(self.id, timeout=timeout)
            if self.fallback_reason is not None and transcript.fallback_reason is None:
                transcript = transcript.with_changes(fallback_reason=self.fallback_reason)
            _warnings.warn_uncovered(transcript)
            self._transcript = transcript
        return self._transcript

    async def acancel(self) -> None:
        """Async twin of ``cancel``."""
        await self._owner.acancel(self.id)

    # -- sync API

    def status(self) -> JobStatus:
        """Return the job's status (one quick backend call)."""
        return self._runner.run(self.astatus())

    def progress(self) -> tuple[int, int] | None:
        """(parts done, parts total) for a fan-out job; None for single-call jobs."""
        return self._runner.run(self.aprogress())

    @property
    def done(self) -> bool:
        """True once the job is in a final state."""
        return self.status().done

    def result(self, timeout: float | None = None) -> Transcript:
        """Wait for and return the transcript.

        Args:
            timeout: seconds to wait; None waits as long as it takes; 0 polls.

        Raises:
            JobTimeout: not finished in time (the job keeps running; call again).
            JobCancelled / JobNotFound / JobExpired: see their docs.
            RemoteExecutionError / AudioError / ...: the job failed.
        """
        return self._runner.run(self.aresult(timeout))

    def cancel(self) -> None:
        """Ask the backend to stop the job (a finished job is left alone)."""
        self._runner.run(self.acancel())

    def wait(
        self,
        timeout: float | None = None,
        *,
        poll_interval: float = 1.0,
        progress: bool | None = None,
    ) -> Transcript:
        """Poll until done, showing a spinner-style status line when ``progress``.

        ``progress=None`` shows it only on a terminal or in a notebook.

        Raises:
            JobTimeout: not finished within ``timeout`` seconds.
        """
        from whisper_modal.progress import status_bar

        deadline = None if timeout is None else time.monotonic() + timeout
        with status_bar(f"job {self.id}", enabled=progress) as bar:
            while True:
                status = self.status()
                parts = self.progress() if bar.enabled and not status.done else None
                bar.set_status(status.value + (f" {parts[0]}/{parts[1]} pieces" if parts else ""))
                if status.done:
                    return self._finish(bar, timeout=None)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise JobTimeout(
                        f"job {self.id} not finished after {timeout} s", job_id=self.id
                    )
                try:
                    step = poll_interval if remaining is None else min(poll_interval, remaining)
                    return self._finish(bar, timeout=step)
                except JobTimeout:
                    continue

    def _finish(self, bar: Bar, *, timeout: float | None) -> Transcript:
        """The result, with the wait line's last state drawn (succeeded, or the failure)."""
        try:
            transcript = self.result(timeout=timeout)
        except JobTimeout:
            raise
        except WhisperModalError as exc:
            final = JobStatus.CANCELLED if isinstance(exc, JobCancelled) else JobStatus.FAILED
            bar.set_status(f"{final.value}: {type(exc).__name__}")
            raise
        bar.set_status(JobStatus.SUCCEEDED.value)
        return transcript
