"""The policy chain: each policy is one wrapper around a ``Backend``, composed once.

    Metered( Fallback( Resilient( ModalBackend ), LocalBackend ) )      # backend="auto"
    Metered( Resilient( ModalBackend ) )                                 # backend="modal"
    Metered( LocalBackend )                                              # backend="local"

Long audio needs no wrapper: on Modal, ``ModalBackend`` hands it to the app's orchestrator
(one fan-out path, for blocking calls and submits alike), and the local engine decodes a
long file in batched windows itself, so a fallback takes the whole request. Order, inside
out:

* the **deadline** belongs to each attempt and is enforced by the transport, which alone
  knows its phases (the Modal lookup gets ``connect_timeout``, the call ``timeout``);
* **retry** (tenacity, transient errors only) wraps the **circuit breaker**, so every
  attempt is one breaker call and an open breaker (``CircuitOpenError``) is not retried;
* **fallback** catches what is left when Modal is unavailable (retries exhausted, breaker
  open, not deployed, no credentials) and runs the same request on the local engine, when
  the settings allow it;
* **metrics** see each call once, with its retries and whether it fell back.

Job reads (status, result, cancel) are idempotent: they are retried, not counted by the
breaker (a slow job is not a sick backend).
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from whisper_modal import _warnings
from whisper_modal.audio_header import known_seconds
from whisper_modal.backends.base import Backend, JobBackend, JobStatus, Submission
from whisper_modal.config import Settings
from whisper_modal.errors import (
    BackendUnavailable,
    CircuitOpenError,
    WhisperModalError,
)
from whisper_modal.metrics import Metrics, log_event
from whisper_modal.resilience import CircuitBreaker, RetryPolicy
from whisper_modal.results import Transcript
from whisper_modal.wire import Request

if TYPE_CHECKING:  # the engine is imported only when a local backend is made
    from whisper_modal.backends.local import LocalBackend

__all__ = [
    "FallbackBackend",
    "MeteredBackend",
    "MeteredJobs",
    "ResilientBackend",
    "ResilientJobs",
    "compose",
]

T = TypeVar("T")

log = logging.getLogger("whisper_modal.chain")

#: attempts beyond the first made by ``ResilientBackend`` within the current call; set by
#: ``MeteredBackend`` around each call (a task-local box, so concurrent calls never mix)
_RETRIES: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "whisper_modal_retries", default=None
)

# Rough CPU real-time cost (seconds of compute per second of audio, fp32, 8 cores) used only
# for the fallback warning; measured tiny.en ~0.1 here, the rest scaled by parameter count.
_CPU_COST_PER_AUDIO_SECOND = {
    "tiny": 0.1,
    "base": 0.2,
    "small": 0.6,
    "medium": 1.8,
    "large": 3.5,
    "turbo": 1.2,
}


def _cpu_estimate(model: str, audio_seconds: float | None) -> str:
    family = model.split(".")[0].split("-")[0]
    factor = _CPU_COST_PER_AUDIO_SECOND.get(family, 2.0)
    if audio_seconds is None:
        return f"roughly {factor:g}x the audio duration"
    return f"roughly {factor * audio_seconds:.0f} s for {audio_seconds:.0f} s of audio"


def _audio_seconds(request: Request) -> float | None:
    return None if request.audio is None else known_seconds(request.audio)


class ResilientBackend:
    """Retry (transient errors only) around the circuit breaker around ``inner``.

    Args:
        inner: the transport (``ModalBackend``); it enforces each attempt's deadline.
        retry: the retry policy. breaker: the circuit breaker shared by all calls.
    """

    def __init__(self, inner: Backend, retry: RetryPolicy, breaker: CircuitBreaker) -> None:
        self.inner = inner
        self.name = inner.name
        self.retry = retry
        self.breaker = breaker

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        attempts = 0

        async def attempt() -> T:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                _count_retry()
            return await self.breaker.acall(operation)

        return await self.retry.acall(attempt)

    async def atranscribe(self, request: Request, *, timeout: float) -> Transcript:
        """One call: each attempt is one breaker call under the transport's deadline."""
        return await self._call(lambda: self.inner.atranscribe(request, timeout=timeout))

    async def asubmit(self, request: Request) -> Submission:
        """Submit with the same ``client_job_id`` on every attempt (see ``Client.submit``)."""
        return await self._call(lambda: self.inner.asubmit(request))


class ResilientJobs:
    """Job reads on ``inner`` retried on transient errors (not counted by the breaker)."""

    def __init__(self, inner: JobBackend, retry: RetryPolicy) -> None:
        self.inner = inner
        self.retry = retry

    async def astatus(self, job_id: str) -> JobStatus:
        """The job's status (retried)."""
        return await self.retry.acall(self.inner.astatus, job_id)

    async def aresult(self, job_id: str, *, timeout: float | None) -> Transcript:
        """The job's transcript (retried)."""
        return await self.retry.acall(lambda: self.inner.aresult(job_id, timeout=timeout))

    async def acancel(self, job_id: str) -> None:
        """Cancel the job (retried: cancelling twice is harmless)."""
        await self.retry.acall(self.inner.acancel, job_id)

    async def aprogress(self, job_id: str) -> tuple[int, int] | None:
        """The job's progress, when it has parts."""
        return await self.retry.acall(self.inner.aprogress, job_id)


def _count_retry() -> None:
    box = _RETRIES.get()
    if box is not None:
        box[0] += 1


class FallbackBackend:
    """``primary``, and ``local`` when the primary is unavailable and the settings allow.

    A CPU-only machine falls back only with ``allow_cpu_fallback`` (and a warning with the
    expected time); results say why in ``Transcript.fallback_reason``.
    """

    def __init__(
        self, primary: Backend, local: LocalBackend, settings: Settings, metrics: Metrics
    ) -> None:
        self.primary = primary
        self.local = local
        self.name = primary.name
        self.settings = settings
        self.metrics = metrics

    def _reason(self, request: Request, exc: WhisperModalError) -> str:
        """Why we fall back, or raise when the settings forbid it."""
        reason = f"{type(exc).__name__}: {exc}"
        try:
            device = self.local.device()
        except WhisperModalError as missing:  # no [local] extra installed
            raise BackendUnavailable(f"{reason}; and no local fallback: {missing}") from exc
        if device == "cpu" and not self.settings.allow_cpu_fallback:
            raise BackendUnavailable(
                f"{reason}; local fallback needs a CUDA GPU (or allow_cpu_fallback=True, "
                "WHISPER_MODAL_ALLOW_CPU_FALLBACK=1, the CLI's --allow-cpu-fallback; "
                "backend='local' / --backend local runs here directly)"
            ) from exc
        if device == "cpu":
            seconds = _audio_seconds(request)
            _warnings.warn(
                f"Modal is unavailable ({type(exc).__name__}); transcribing on the local CPU with "
                f"{request.options.model}: expect {_cpu_estimate(request.options.model, seconds)}",
                RuntimeWarning,
            )
        self.metrics.record_fallback(type(exc).__name__)
        log_event(log, "fallback", level=logging.WARNING, reason=type(exc).__name__, device=device)
        return reason

    async def atranscribe(self, request: Request, *, timeout: float) -> Transcript:
        """Run on the primary; on ``BackendUnavailable``/``CircuitOpenError``, locally."""
        try:
            return await self.primary.atranscribe(request, timeout=timeout)
        except (BackendUnavailable, CircuitOpenError) as exc:
            reason = self._reason(request, exc)
        transcript = await self.local.atranscribe(request, timeout=timeout)
        return transcript.with_changes(fallback_reason=reason)

    async def asubmit(self, request: Request) -> Submission:
        """Submit to the primary; on unavailability, queue a local job."""
        try:
            return await self.primary.asubmit(request)
        except (BackendUnavailable, CircuitOpenError) as exc:
            reason = self._reason(request, exc)
        return self.local.start(request, fallback_reason=reason)


def _record_success(
    metrics: Metrics, settings: Settings, transcript: Transcript, started: float, retries: int = 0
) -> None:
    remote = transcript.backend == "modal"
    metrics.record_call(
        backend=transcript.backend,
        ok=True,
        audio_seconds=transcript.duration,
        wall_seconds=time.monotonic() - started,
        gpu_seconds=transcript.timings.total if remote else 0.0,
        # a fallback list ("L40S,A10G") is priced as its first, preferred GPU
        gpu=settings.gpu.split(",")[0].strip() if remote else None,
        cold_start=transcript.cold_start,
        retries=retries,
        fallback=transcript.fallback_reason is not None,
    )


class MeteredBackend:
    """Records every call of ``inner`` in ``metrics``, once (with retries and fallback)."""

    def __init__(self, inner: Backend, metrics: Metrics, settings: Settings) -> None:
        self.inner = inner
        self.name = inner.name
        self.metrics = metrics
        self.settings = settings

    async def atranscribe(self, request: Request, *, timeout: float) -> Transcript:
        """Run the call and record it (success or failure)."""
        started = time.monotonic()
        box = [0]
        token = _RETRIES.set(box)
        try:
            transcript = await self.inner.atranscribe(request, timeout=timeout)
        except BaseException as exc:
            self.metrics.record_call(
                backend=self.name,
                ok=False,
                error=exc,
                wall_seconds=time.monotonic() - started,
                retries=box[0],
            )
            raise
        finally:
            _RETRIES.reset(token)
        _record_success(self.metrics, self.settings, transcript, started, box[0])
        return transcript

    async def asubmit(self, request: Request) -> Submission:
        """Submit; its retries are counted now, the job when its result is read."""
        box = [0]
        token = _RETRIES.set(box)
        try:
            return await self.inner.asubmit(request)
        finally:
            _RETRIES.reset(token)
            for _ in range(box[0]):
                self.metrics.record_retry()


class MeteredJobs:
    """Job reads on ``inner``; a result read is recorded as a call in ``metrics``."""

    def __init__(self, inner: JobBackend, metrics: Metrics, settings: Settings) -> None:
        self.inner = inner
        self.metrics = metrics
        self.settings = settings

    async def astatus(self, job_id: str) -> JobStatus:
        """The job's status."""
        return await self.inner.astatus(job_id)

    async def aresult(self, job_id: str, *, timeout: float | None) -> Transcript:
        """The job's transcript (its owner has stamped ``job_id`` on it)."""
        started = time.monotonic()
        transcript = await self.inner.aresult(job_id, timeout=timeout)
        _record_success(self.metrics, self.settings, transcript, started)
        return transcript

    async def acancel(self, job_id: str) -> None:
        """Cancel the job."""
        await self.inner.acancel(job_id)

    async def aprogress(self, job_id: str) -> tuple[int, int] | None:
        """The job's progress, when it has parts."""
        return await self.inner.aprogress(job_id)


def compose(
    policy: str,
    *,
    packed: bool,
    modal: Callable[[], Any] | None,
    local: Callable[[], LocalBackend] | None,
    retry: RetryPolicy,
    breaker: CircuitBreaker,
    metrics: Metrics,
    settings: Settings,
) -> Backend:
    """Build the chain for ``policy`` ("modal", "local" or "auto"); see the module docstring.

    ``modal``/``local`` make the transports (called only when the policy needs them);
    ``packed`` routes Modal calls to the ``@modal.batched`` class.
    """
    if policy == "local":
        assert local is not None
        return MeteredBackend(local(), metrics, settings)
    assert modal is not None
    transport = modal()
    if packed:
        from whisper_modal.backends.modal import PackedModal

        transport = PackedModal(transport)
    chain: Backend = ResilientBackend(transport, retry, breaker)
    if policy == "auto":
        assert local is not None
        chain = FallbackBackend(chain, local(), settings, metrics)
    return MeteredBackend(chain, metrics, settings)
