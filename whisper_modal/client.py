"""The client: a facade over settings, the backend chain and the client's event loop.

One call goes: ``inputs.prepare`` (options validated, audio read to bytes or an S3 key
passed through) -> the backend chain for the policy (``backends.chain``: retry around the
circuit breaker around the transport, fallback to local in ``auto``, metrics; fan-out of
long audio on top) -> ``Transcript``. Every operation is one coroutine; the sync methods
run it on the client's private loop thread (``whisper_modal._loop`` says why).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Unpack

import attrs

from whisper_modal import _warnings
from whisper_modal._loop import LoopThread
from whisper_modal.backends.base import Backend, JobBackend, is_in_process_job
from whisper_modal.backends.chain import MeteredJobs, ResilientJobs, compose
from whisper_modal.backends.registry import in_process_jobs
from whisper_modal.concurrency import arun_many
from whisper_modal.config import BackendPolicy, Settings, split_list
from whisper_modal.errors import ConfigurationError, WhisperModalError
from whisper_modal.inputs import AudioLike, CallOptions, prepare
from whisper_modal.job_book import JobRecord
from whisper_modal.jobs import Job
from whisper_modal.metrics import Metrics, Stats, log_event
from whisper_modal.resilience import CircuitBreaker, RetryPolicy
from whisper_modal.results import Transcript
from whisper_modal.wire import Request

__all__ = ["Client"]

log = logging.getLogger("whisper_modal.client")

_POLICIES = ("modal", "local", "auto")


class Client:
    """Holds settings, backends, the circuit breaker, the retry policy and metrics.

    Use it as a context manager (``with Client() as c:`` or ``async with``), or call
    ``close()``: that stops its loop thread and its local job thread.

    Args:
        settings: resolved settings (default: ``Settings.resolve()`` from the environment).
        modal_backend: inject the Modal transport (tests, custom transports).
        local_backend: inject the local backend.
        retry: retry policy (default from settings).
        breaker: circuit breaker for the Modal backend (default from settings).
        **overrides: settings to override (``backend="local"``, ``model="tiny.en"``...).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        modal_backend: Any | None = None,
        local_backend: Any | None = None,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        **overrides: Any,
    ) -> None:
        self.settings = settings.replace(**overrides) if settings else Settings.resolve(**overrides)
        s = self.settings
        self.metrics = Metrics()
        self.breaker = breaker or CircuitBreaker(
            f"modal:{s.app_name}",
            failure_threshold=s.breaker_failure_threshold,
            reset_timeout=s.breaker_reset_seconds,
            window=s.breaker_window_seconds,
            failure_rate=s.breaker_failure_rate,
            on_transition=self._on_transition,
        )
        self.retry = retry or RetryPolicy(
            max_attempts=s.max_attempts, max_seconds=s.retry_max_seconds, on_retry=_log_retry
        )
        self._modal = modal_backend
        self._local = local_backend
        self._chains: dict[tuple[str, bool], Backend] = {}
        self._lock = threading.Lock()
        self._loop = LoopThread()
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Stop the loop thread (cancelling calls in flight) and the local job thread.

        Idempotent. A closed client raises ``ConfigurationError`` when used.
        """
        self._closed = True
        self._loop.close()
        if self._local is not None and hasattr(self._local, "close"):
            self._local.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.close)

    def stats(self) -> Stats:
        """A typed snapshot of this client's counters, timings and estimated cost."""
        return self.metrics.snapshot()

    # ------------------------------------------------------------------ the chain

    def _on_transition(self, frm: Any, to: Any) -> None:
        self.metrics.record_breaker_transition(
            str(getattr(frm, "value", frm)), str(getattr(to, "value", to))
        )

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigurationError("this client is closed")

    def _modal_backend(self) -> Any:
        with self._lock:
            if self._modal is None:
                from whisper_modal.backends.modal import ModalBackend

                self._modal = ModalBackend(self.settings)
            return self._modal

    def _local_backend(self) -> Any:
        with self._lock:
            if self._local is None:
                from whisper_modal.backends.local import LocalBackend

                self._local = LocalBackend(self.settings)
            return self._local

    def _chain(self, backend: str | None, *, packed: bool = False) -> Backend:
        """The composed backend for a policy; built once per (policy, packed)."""
        policy: BackendPolicy = backend or self.settings.backend  # type: ignore[assignment]
        if policy not in _POLICIES:
            raise ConfigurationError(f"backend must be 'modal', 'local' or 'auto', not {policy!r}")
        key = (policy, packed and policy != "local")
        chain = self._chains.get(key)
        if chain is None:
            chain = compose(
                policy,
                packed=key[1],
                modal=self._modal_backend if policy != "local" else None,
                local=self._local_backend if policy != "modal" else None,
                retry=self.retry,
                breaker=self.breaker,
                metrics=self.metrics,
                settings=self.settings,
            )
            with self._lock:
                chain = self._chains.setdefault(key, chain)
        return chain

    def job(self, job_id: str, fallback_reason: str | None = None) -> Job:
        """A ``Job`` for ``job_id``, talking to the backend that owns such ids.

        No network call happens until ``status()``/``result()`` (``Job.from_id`` with
        ``client=`` is the same).

        Args:
            job_id: a ``Job.id`` (a Modal FunctionCall id, or a local job's id).
            fallback_reason: why the job ran locally, when it did (shown on the ``Job``).
        """
        self._check_open()
        owner: JobBackend
        if is_in_process_job(job_id):
            owner = in_process_jobs()
        else:
            owner = ResilientJobs(self._modal_backend(), self.retry)
        owner = MeteredJobs(owner, self.metrics, self.settings)
        return Job(job_id, owner=owner, runner=self._loop, fallback_reason=fallback_reason)

    def build_request(self, audio: AudioLike, **kwargs: Unpack[CallOptions]) -> Request:
        """Validate the keywords and read ``audio`` into a ``Request``; nothing is sent.

        With ``submit_request`` this is ``submit`` in two steps (as httpx's
        ``build_request()`` + ``send()``): change what you need between them, e.g.
        ``attrs.evolve(request, client_job_id="order-17")``, or keep the request to send
        later. Raises what ``submit`` raises for bad input (``ConfigurationError``,
        ``AudioError``, ``StorageTooLarge``).
        """
        self._check_open()
        return self._prepare(audio, kwargs)

    def _prepare(self, audio: AudioLike, kwargs: CallOptions) -> Request:
        return prepare(
            audio,
            default_model=self.settings.model,
            max_bytes=self.settings.max_audio_bytes,
            webhook_allow=split_list(self.settings.webhook_allow_hosts),
            **kwargs,
        )

    # ------------------------------------------------------------------ async core

    async def atranscribe(
        self,
        audio: AudioLike,
        *,
        backend: str | None = None,
        timeout: float | None = None,
        **kwargs: Unpack[CallOptions],
    ) -> Transcript:
        """Transcribe one input and wait for the result (file reads run on a thread).

        Args:
            audio: bytes, a path, a binary file, a numpy array (with ``sample_rate``), an
                ``s3://bucket/key`` URI or an ``S3Object``.
            backend: "modal", "local" or "auto" (default from settings).
            timeout: seconds for each attempt, remote or the local fallback's (default
                ``settings.call_timeout``).
            **kwargs: see ``CallOptions``: ``model``, ``language``, ``task``,
                ``word_timestamps``, ``initial_prompt``, ``mode``, any other
                ``TranscribeOptions`` field, or a whole ``options=TranscribeOptions(...)``;
                ``sample_rate`` for arrays; ``output`` (an ``s3://bucket/prefix/``),
                ``formats`` and ``webhook_url`` for delivery.

        Returns:
            The transcript; ``backend`` and ``fallback_reason`` say where it ran and why.

        Raises:
            ConfigurationError, AudioError, StorageError: bad input (never retried).
            BackendUnavailable / CircuitOpenError: Modal unavailable and no fallback allowed.
            RemoteExecutionError: the engine failed.
        """
        return await self._atranscribe(audio, backend, timeout, False, kwargs)

    async def _atranscribe(
        self,
        audio: AudioLike,
        backend: str | None,
        timeout: float | None,
        packed: bool,
        kwargs: CallOptions,
    ) -> Transcript:
        self._check_open()
        chain = self._chain(backend, packed=packed)
        request = await asyncio.to_thread(self._prepare, audio, kwargs)
        transcript = await chain.atranscribe(request, timeout=timeout or self.settings.call_timeout)
        _warnings.warn_uncovered(transcript)
        return transcript

    async def asubmit(
        self, audio: AudioLike, *, backend: str | None = None, **kwargs: Unpack[CallOptions]
    ) -> Job:
        """Start a transcription and return a ``Job`` at once (arguments as ``transcribe``).

        Long audio for Modal becomes a fan-out job run by the app's orchestrator: its
        chunks run on many containers, ``Job.progress()`` reports chunks done / total from
        any process, and the job id (the orchestrator's FunctionCall id) re-attaches from
        anywhere.

        Retry rule: a submit that fails with a transient error is retried with the same
        ``client_job_id``, and the app's job book makes it idempotent: when Modal had in
        fact accepted the first attempt, the retry returns that job's id and the audio runs
        once (``job_book``).
        """
        self._check_open()
        request = await asyncio.to_thread(self._prepare, audio, kwargs)
        return await self.asubmit_request(request, backend=backend)

    async def asubmit_request(self, request: Request, *, backend: str | None = None) -> Job:
        """Submit a ``Request`` as built (``build_request``, or one stored earlier).

        ``asubmit`` reads the audio and builds the request; a caller that needs its own
        ``client_job_id`` (the HTTP server names jobs in webhooks and S3 keys by it, and
        resubmits stored requests after a restart) builds the request and sends it here,
        as with httpx's ``build_request()`` + ``send()``. Same retry rule as ``asubmit``.
        """
        self._check_open()
        submission = await self._chain(backend).asubmit(request)
        return self.job(submission.job_id, submission.fallback_reason)

    async def atranscribe_many(
        self,
        inputs: Iterable[AudioLike],
        *,
        concurrency: int = 8,
        return_exceptions: bool = False,
        progress: bool | None = None,
        pack: bool = False,
        backend: str | None = None,
        timeout: float | None = None,
        **kwargs: Unpack[CallOptions],
    ) -> list[Transcript | WhisperModalError]:
        """Transcribe many inputs, at most ``concurrency`` in flight; results in input order.

        ``pack=True`` (Modal) sends inputs to the ``@modal.batched`` class, which decodes
        up to 16 concurrent short inputs in shared forward passes on one container.

        Args:
            inputs: anything ``transcribe`` accepts, one per item.
            concurrency: maximum calls in flight (each is one Modal container input).
            return_exceptions: put each item's error in its slot instead of raising the first.
            progress: show a bar (None: only on a terminal or in a notebook).
            pack: use the packed (``@modal.batched``) class.
            backend, timeout, **kwargs: as ``transcribe``, for every item.

        Raises:
            WhisperModalError: the first item error, when ``return_exceptions`` is False
                (every other item still running or waiting is cancelled).
        """
        self._check_open()
        return await arun_many(
            lambda item: self._atranscribe(item, backend, timeout, pack, kwargs),
            list(inputs),
            concurrency=concurrency,
            return_exceptions=return_exceptions,
            progress=progress,
        )

    async def ahealth(
        self, *, backend: str | None = None, model: str | None = None
    ) -> dict[str, Any]:
        """A health report: the local engine's (``backend="local"``) or a container's.

        Raises:
            BackendUnavailable / TransientError: Modal did not answer.
        """
        self._check_open()
        if (backend or self.settings.backend) == "local":
            engine = self._local_backend().engine
            report: dict[str, Any] = await asyncio.to_thread(engine.health, model)
            return report
        modal = self._modal_backend()
        timeout = self.settings.connect_timeout + 60
        return await self.retry.acall(lambda: modal.ahealth(model=model, timeout=timeout))

    async def arecent_jobs(self, limit: int = 20) -> list[JobRecord]:
        """The deployed app's newest jobs, from its job book (``whisper-modal jobs``).

        Records are written by the submitter (a job appears as "pending" once spawned),
        its container and whoever cancels it; an unfinished one is checked against
        Modal, so a crashed job shows its real status. Entries expire 7 days after
        their last write, with the job's result.

        Raises:
            TransientError, BackendUnavailable: the book could not be read (never an
                empty list that would look like "no jobs").
        """
        self._check_open()
        modal = self._modal_backend()
        records: list[JobRecord] = await modal.arecent(limit)

        async def refreshed(record: JobRecord) -> JobRecord:
            if record.final:
                return record
            try:
                status = await modal.astatus(record.job_id)
            except WhisperModalError:
                return record
            return attrs.evolve(record, status=status.value)

        return list(await asyncio.gather(*(refreshed(r) for r in records)))

    async def ajob_record(self, job_id: str) -> JobRecord | None:
        """The deployed app's job-book record of ``job_id``, or None when the app never
        recorded such a job (an id from another app, or one past its 7 days).

        An in-process (local) job has no record: None. The HTTP API's stateless jobs
        answer 404 for an id without one, so it serves only this app's jobs.

        Raises:
            TransientError, BackendUnavailable: the book could not be read.
        """
        self._check_open()
        if is_in_process_job(job_id):
            return None
        record: JobRecord | None = await self._modal_backend().arecord(job_id)
        return record

    # ------------------------------------------------------------------ sync API

    def recent_jobs(self, limit: int = 20) -> list[JobRecord]:
        """The deployed app's newest jobs; see ``arecent_jobs``."""
        self._check_open()
        return self._loop.run(self.arecent_jobs(limit))

    def transcribe(
        self,
        audio: AudioLike,
        *,
        backend: str | None = None,
        timeout: float | None = None,
        **kwargs: Unpack[CallOptions],
    ) -> Transcript:
        """Transcribe one input and wait for the result; see ``atranscribe``."""
        self._check_open()
        return self._loop.run(self.atranscribe(audio, backend=backend, timeout=timeout, **kwargs))

    def submit(
        self, audio: AudioLike, *, backend: str | None = None, **kwargs: Unpack[CallOptions]
    ) -> Job:
        """Start a transcription and return a ``Job`` at once; see ``asubmit``."""
        self._check_open()
        return self._loop.run(self.asubmit(audio, backend=backend, **kwargs))

    def submit_request(self, request: Request, *, backend: str | None = None) -> Job:
        """Submit a ``Request`` built elsewhere; see ``asubmit_request``."""
        self._check_open()
        return self._loop.run(self.asubmit_request(request, backend=backend))

    def transcribe_many(
        self, inputs: Iterable[AudioLike], **kwargs: Any
    ) -> list[Transcript | WhisperModalError]:
        """Transcribe many inputs; see ``atranscribe_many`` for the arguments."""
        self._check_open()
        return self._loop.run(self.atranscribe_many(inputs, **kwargs))

    def health(self, *, backend: str | None = None, model: str | None = None) -> dict[str, Any]:
        """A health report; see ``ahealth``."""
        self._check_open()
        return self._loop.run(self.ahealth(backend=backend, model=model))


def _log_retry(attempt: int, exc: BaseException, delay: float) -> None:
    log_event(log, "retry", attempt=attempt, error=exc, delay=delay)
