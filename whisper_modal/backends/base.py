"""The backend seam: the protocols every backend implements, and a job's states.

What crosses to a backend is a ``whisper_modal.wire.Request``.
"""

from __future__ import annotations

import enum
from typing import Protocol, runtime_checkable

import attrs

from whisper_modal.results import Transcript
from whisper_modal.wire import Request

__all__ = [
    "LOCAL_JOB_PREFIX",
    "Backend",
    "JobBackend",
    "JobStatus",
    "Submission",
    "is_in_process_job",
]


class JobStatus(str, enum.Enum):
    """Where a job is in its life."""

    PENDING = "pending"  # accepted, not started (or state unknown but unfinished)
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # finished more than the retention period ago

    @property
    def done(self) -> bool:
        """True for the final states."""
        return self not in (JobStatus.PENDING, JobStatus.RUNNING)


@attrs.frozen
class Submission:
    """What a backend returns for an accepted job: its id, and why it runs where it does."""

    job_id: str
    fallback_reason: str | None = None  # set when the job fell back to the local engine


@runtime_checkable
class Backend(Protocol):
    """What the client needs to run requests. Every method is a coroutine.

    The client drives one async implementation for both its sync and async API (see
    ``whisper_modal._loop``), so backends are written once, async.
    """

    name: str

    async def atranscribe(self, request: Request, *, timeout: float) -> Transcript:
        """Run one request to completion; remote calls end within ``timeout`` seconds."""
        ...

    async def asubmit(self, request: Request) -> Submission:
        """Start a request and return its job id at once."""
        ...


@runtime_checkable
class JobBackend(Protocol):
    """What a ``Job`` needs from the backend that owns its id. Every method is a coroutine."""

    async def astatus(self, job_id: str) -> JobStatus:
        """Return the job's current status."""
        ...

    async def aresult(self, job_id: str, *, timeout: float | None) -> Transcript:
        """Wait up to ``timeout`` s (None: forever, 0: poll) for the job's transcript.

        The transcript's ``job_id`` is ``job_id``, the id the caller holds.

        Raises:
            JobTimeout: not ready in time. JobNotFound / JobExpired / JobCancelled.
        """
        ...

    async def acancel(self, job_id: str) -> None:
        """Ask the job to stop; a finished job is left alone."""
        ...

    async def aprogress(self, job_id: str) -> tuple[int, int] | None:
        """(parts done, parts total) for a job made of parts; None otherwise."""
        ...


#: id prefix of jobs that live in the submitting process (see ``backends.registry``)
LOCAL_JOB_PREFIX = "local-"


def is_in_process_job(job_id: str) -> bool:
    """True for ids of jobs run by this process (local jobs), False for Modal ids."""
    return job_id.startswith(LOCAL_JOB_PREFIX)
