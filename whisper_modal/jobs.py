"""Job handles: submit now, collect later, from this process or another one.

A ``Job`` is only an id plus the client that knows which backend owns it: Modal jobs have
the FunctionCall id (``fc-...``) and can be re-attached from any process with Modal
credentials for 7 days; local jobs (``local-...``) live in the submitting process.
``transcribe()`` is literally ``submit().result()`` on the local backend and a direct
``.remote`` call on Modal (same result, one round trip less).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from whisper_modal.backends.base import JobStatus
from whisper_modal.errors import JobTimeout
from whisper_modal.results import Transcript

if TYPE_CHECKING:
    from whisper_modal.client import Client

__all__ = ["Job", "JobStatus"]


class Job:
    """A submitted transcription.

    Attributes:
        id: the job id (Modal FunctionCall id, or ``local-<hex>``).
        backend: "modal" or "local".
        fallback_reason: why the job runs locally although Modal was asked for, if it does.
    """

    def __init__(
        self,
        job_id: str,
        *,
        client: Client,
        backend: str | None = None,
        fallback_reason: str | None = None,
    ) -> None:
        from whisper_modal.backends.local import LOCAL_JOB_PREFIX
        from whisper_modal.fanout import FANOUT_JOB_PREFIX

        self.id = job_id
        if backend is None:
            backend = "modal"
            if job_id.startswith(LOCAL_JOB_PREFIX):
                backend = "local"
            elif job_id.startswith(FANOUT_JOB_PREFIX):
                backend = "fanout"
        self.backend = backend
        self.fallback_reason = fallback_reason
        self._client = client
        self._transcript: Transcript | None = None

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, backend={self.backend!r})"

    @classmethod
    def from_id(cls, job_id: str, *, client: Client | None = None) -> Job:
        """Re-attach to a job by id (e.g. one saved by another process).

        No network call happens until ``status()``/``result()``.
        """
        from whisper_modal.client import default_client

        return cls(job_id, client=client or default_client())

    def _backend(self) -> Any:
        return self._client.backend_for_job(self.backend)

    def status(self) -> JobStatus:
        """Return the job's status (one quick backend call)."""
        if self._transcript is not None:
            return JobStatus.SUCCEEDED
        return self._client.job_status(self)

    def progress(self) -> tuple[int, int] | None:
        """(parts done, parts total) for a fan-out job; None for single-call jobs."""
        backend = self._backend()
        report = getattr(backend, "progress", None)
        return None if report is None else report(self.id)

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
        if self._transcript is None:
            self._transcript = self._client.job_result(self, timeout=timeout)
        return self._transcript

    async def aresult(self, timeout: float | None = None) -> Transcript:
        """Async twin of ``result``; never blocks the event loop."""
        if self._transcript is None:
            self._transcript = await self._client.ajob_result(self, timeout=timeout)
        return self._transcript

    def wait(
        self,
        timeout: float | None = None,
        *,
        poll_interval: float = 1.0,
        progress: bool | None = None,
    ) -> Transcript:
        """Poll until done, showing a spinner-style status line when ``progress``.

        ``progress=None`` shows it only on a terminal or in a notebook.
        """
        from whisper_modal.progress import status_bar

        deadline = None if timeout is None else time.monotonic() + timeout
        with status_bar(f"job {self.id}", enabled=progress) as bar:
            while True:
                status = self.status()
                bar.set_status(status.value)
                if status.done:
                    return self.result(timeout=None)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise JobTimeout(
                        f"job {self.id} not finished after {timeout} s", job_id=self.id
                    )
                try:
                    step = poll_interval if remaining is None else min(poll_interval, remaining)
                    return self.result(timeout=step)
                except JobTimeout:
                    continue

    def cancel(self) -> None:
        """Ask the backend to stop the job (a finished job is left alone)."""
        self._client.job_cancel(self)
