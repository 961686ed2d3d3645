"""The backend seam: one request type and the protocol every backend implements.

A ``Request`` is what crosses to a backend; ``Request.to_wire()`` is the plain dict the
Modal container receives (bytes, str, numbers, lists, dicts only) and
``Request.from_wire`` validates it again on the other side.
"""

from __future__ import annotations

import concurrent.futures as cf
import enum
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import attrs

from whisper_modal.errors import ConfigurationError
from whisper_modal.options import TranscribeOptions

__all__ = ["WIRE_VERSION", "Backend", "JobStatus", "Request", "future_result", "future_status"]

T = TypeVar("T")

#: version of the request dict; the container refuses newer major versions
WIRE_VERSION = 1


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


def _formats(value: Sequence[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class Request:
    """One transcription request: audio (bytes or an S3 URI), options, delivery.

    Exactly one of ``audio`` and ``s3_uri`` is set. ``output`` is an ``s3://`` prefix for
    result delivery; ``webhook_url`` gets a signed POST when the job ends; ``formats`` are
    extra writers (besides JSON) stored next to the result.
    """

    options: TranscribeOptions
    audio: bytes | None = attrs.field(
        default=None, repr=lambda b: f"<{len(b)} bytes>" if b else "None"
    )
    s3_uri: str | None = None
    output: str | None = None
    webhook_url: str | None = attrs.field(default=None, repr=False)  # may hold tokens
    formats: tuple[str, ...] = attrs.field(default=(), converter=_formats)
    client_job_id: str | None = None  # id the client chose (local jobs, idempotent delivery)

    def __attrs_post_init__(self) -> None:
        if (self.audio is None) == (self.s3_uri is None):
            raise ConfigurationError("a request needs exactly one of audio bytes or an s3:// URI")
        if self.webhook_url is not None and not self.webhook_url.startswith(
            ("http://", "https://")
        ):
            raise ConfigurationError("webhook_url must be an http:// or https:// URL")

    @property
    def size_bytes(self) -> int:
        """Bytes of audio carried inline (0 for S3 inputs)."""
        return len(self.audio) if self.audio is not None else 0

    def to_wire(self) -> dict[str, Any]:
        """Return the plain dict sent to the container."""
        return {
            "wire_version": WIRE_VERSION,
            "options": self.options.to_dict(),
            "audio": self.audio,
            "s3_uri": self.s3_uri,
            "output": self.output,
            "webhook_url": self.webhook_url,
            "formats": list(self.formats),
            "client_job_id": self.client_job_id,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Request:
        """Validate and rebuild a request from ``to_wire`` output.

        Raises:
            ConfigurationError: newer wire version, missing or invalid fields.
        """
        if not isinstance(data, Mapping):
            raise ConfigurationError("a request must be a dict")
        version = int(data.get("wire_version", WIRE_VERSION))
        if version > WIRE_VERSION:
            raise ConfigurationError(
                f"request wire version {version} is newer than this app ({WIRE_VERSION}); "
                "redeploy: whisper-modal deploy"
            )
        audio = data.get("audio")
        if audio is not None and not isinstance(audio, bytes | bytearray | memoryview):
            raise ConfigurationError("request audio must be bytes")
        return cls(
            options=TranscribeOptions.from_dict(data.get("options") or {}),
            audio=bytes(audio) if audio is not None else None,
            s3_uri=data.get("s3_uri"),
            output=data.get("output"),
            webhook_url=data.get("webhook_url"),
            formats=tuple(data.get("formats") or ()),
            client_job_id=data.get("client_job_id"),
        )


@runtime_checkable
class Backend(Protocol):
    """What the client needs from a backend. Results are ``Transcript.to_dict()`` dicts."""

    name: str

    def transcribe(self, request: Request, *, timeout: float) -> dict[str, Any]:
        """Run one request to completion within ``timeout`` seconds."""
        ...

    async def atranscribe(self, request: Request, *, timeout: float) -> dict[str, Any]:
        """Async twin of ``transcribe``; never blocks the event loop."""
        ...

    def submit(self, request: Request) -> str:
        """Start a request and return its job id at once."""
        ...

    async def asubmit(self, request: Request) -> str:
        """Async twin of ``submit``."""
        ...

    def status(self, job_id: str) -> JobStatus:
        """Return the job's current status."""
        ...

    def result(self, job_id: str, *, timeout: float | None) -> dict[str, Any]:
        """Wait up to ``timeout`` s (None: forever, 0: poll) for the job's result dict.

        Raises:
            JobTimeout: not ready in time. JobNotFound / JobExpired / JobCancelled.
        """
        ...

    async def aresult(self, job_id: str, *, timeout: float | None) -> dict[str, Any]:
        """Async twin of ``result``."""
        ...

    def cancel(self, job_id: str) -> None:
        """Ask the job to stop; a finished job is left alone."""
        ...


def future_status(future: cf.Future[Any]) -> JobStatus:
    """The status of a job run in this process on a ``concurrent.futures`` executor."""
    if future.cancelled():
        return JobStatus.CANCELLED
    if not future.done():
        return JobStatus.RUNNING if future.running() else JobStatus.PENDING
    return JobStatus.FAILED if future.exception() is not None else JobStatus.SUCCEEDED


def future_result(future: cf.Future[T], job_id: str, timeout: float | None) -> T:
    """Wait for an in-process job's future, translating its timeout and cancellation.

    Raises:
        JobTimeout: not done within ``timeout`` (0 polls). JobCancelled: cancelled.
    """
    from whisper_modal.errors import JobCancelled, JobTimeout

    try:
        return future.result(timeout=timeout)
    except cf.TimeoutError as exc:
        raise JobTimeout(f"job {job_id} not finished after {timeout} s", job_id=job_id) from exc
    except cf.CancelledError as exc:
        raise JobCancelled(f"job {job_id} was cancelled", job_id=job_id) from exc
