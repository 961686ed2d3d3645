"""The client: settings, the backend chain, and the module-level convenience functions.

One call goes: options validated -> audio read into bytes (or an S3 URI passed through) ->
policy (``modal`` | ``local`` | ``auto``) -> for Modal: retry (transient only) around the
circuit breaker around the backend call, each call under an SDK deadline -> in ``auto``,
a fallback to the local engine when Modal is unavailable -> ``Transcript``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import IO, Any, TypedDict, TypeVar, Unpack

import numpy as np

from whisper_modal.backends.base import JobStatus, Request
from whisper_modal.config import BackendPolicy, Settings
from whisper_modal.errors import (
    BackendUnavailable,
    CircuitOpenError,
    ConfigurationError,
    WhisperModalError,
)
from whisper_modal.jobs import Job
from whisper_modal.metrics import Metrics, Stats
from whisper_modal.options import TranscribeOptions
from whisper_modal.resilience import CircuitBreaker, RetryPolicy
from whisper_modal.results import Transcript

__all__ = [
    "AudioLike",
    "CallOptions",
    "Client",
    "asubmit",
    "atranscribe",
    "atranscribe_many",
    "configure",
    "default_client",
    "submit",
    "transcribe",
    "transcribe_many",
]

log = logging.getLogger("whisper_modal.client")

T = TypeVar("T")

#: anything ``transcribe`` accepts: encoded bytes, a path, a binary file object, samples
#: (with ``sample_rate``), an ``s3://`` URI or an ``S3Object``
AudioLike = bytes | bytearray | memoryview | str | os.PathLike[str] | IO[bytes] | np.ndarray | Any

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


class CallOptions(TypedDict, total=False):
    """Keyword arguments of ``transcribe``/``submit`` and their async twins."""

    model: str  # Whisper model (default: settings.model)
    language: str  # ISO code; omitted: detect
    task: str  # "transcribe" or "translate"
    word_timestamps: bool
    initial_prompt: str
    mode: str  # "sequential", "batched" or "auto"
    options: TranscribeOptions  # everything else (beam size, temperatures, thresholds...)
    sample_rate: int  # Hz, for numpy input
    output: str  # s3://bucket/prefix/ for result delivery
    formats: Sequence[str]  # extra formats stored with ``output``
    webhook_url: str  # gets a signed POST when the job ends


class Client:
    """Holds settings, backends, the circuit breaker, the retry policy and metrics.

    Args:
        settings: resolved settings (default: ``Settings.resolve()`` from the environment).
        modal_backend: inject a backend (tests, custom transports); default ``ModalBackend``.
        local_backend: inject the local backend; default ``LocalBackend``.
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
            on_transition=self._on_transition,
        )
        self.retry = retry or RetryPolicy(
            max_attempts=s.max_attempts,
            max_seconds=s.retry_max_seconds,
            on_retry=self._on_retry,
        )
        self._modal = modal_backend
        self._local = local_backend
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing

    def _on_transition(self, frm: Any, to: Any) -> None:
        self.metrics.record_breaker_transition(
            str(getattr(frm, "value", frm)), str(getattr(to, "value", to))
        )

    def _on_retry(self, attempt: int, exc: BaseException, delay: float) -> None:
        self.metrics.record_retry()
        log.info(
            "retrying after transient error",
            extra={
                "event": "retry",
                "attempt": attempt,
                "error": type(exc).__name__,
                "delay": delay,
            },
        )

    def modal_backend(self) -> Any:
        """The Modal backend (created on first use; no network until a call)."""
        with self._lock:
            if self._modal is None:
                from whisper_modal.backends.modal import ModalBackend

                self._modal = ModalBackend(self.settings)
            return self._modal

    def local_backend(self) -> Any:
        """The local backend (created on first use; loads no model until a call)."""
        with self._lock:
            if self._local is None:
                from whisper_modal.backends.local import LocalBackend

                self._local = LocalBackend(self.settings)
            return self._local

    def backend_for_job(self, name: str) -> Any:
        """The backend that owns jobs labelled ``name``."""
        if name == "fanout":
            from whisper_modal.fanout import FanoutJobs

            return FanoutJobs()
        return self.local_backend() if name == "local" else self.modal_backend()

    def stats(self) -> Stats:
        """A typed snapshot of this client's counters, timings and estimated cost."""
        return self.metrics.snapshot()

    # ------------------------------------------------------------------ requests

    def make_options(
        self, options: TranscribeOptions | None = None, **kw: Any
    ) -> TranscribeOptions:
        """Merge explicit keyword options over ``options`` over the settings' model."""
        given = {k: v for k, v in kw.items() if v is not None}
        if options is None:
            given.setdefault("model", self.settings.model)
            try:
                return TranscribeOptions(**given)
            except TypeError as exc:
                raise ConfigurationError(str(exc)) from exc
        return options.replace(**given) if given else options

    def make_request(
        self,
        audio: AudioLike,
        *,
        options: TranscribeOptions,
        sample_rate: int | None = None,
        output: str | None = None,
        webhook_url: str | None = None,
        formats: Sequence[str] = (),
    ) -> Request:
        """Read the input into a ``Request`` (bytes, or an S3 URI passed through as is).

        Raises:
            AudioError: unreadable/empty/too large input. ConfigurationError: bad URI/options.
        """
        from whisper_modal import audio as audio_io

        s3_uri = _s3_uri(audio)
        if output is not None:
            from whisper_modal.storage import parse_s3_prefix

            parse_s3_prefix(output)  # malformed prefixes fail before any upload
        common: dict[str, Any] = {
            "options": options,
            "output": output,
            "webhook_url": webhook_url,
            "formats": tuple(formats),
            "client_job_id": "wm-" + uuid.uuid4().hex,
        }
        if formats:
            from whisper_modal.formats import FORMATS

            unknown = [f for f in formats if f not in FORMATS]
            if unknown:
                raise ConfigurationError(f"unknown format(s) {unknown}; use {', '.join(FORMATS)}")
        if s3_uri is not None:
            return Request(s3_uri=s3_uri, **common)
        if isinstance(audio, np.ndarray):
            if sample_rate is None:
                raise ConfigurationError("pass sample_rate= with a numpy array")
            data = audio_io.encode_flac(audio_io.from_array(audio, sample_rate))
        else:
            data = audio_io.read_audio_bytes(audio, max_bytes=self.settings.max_audio_bytes)
        return Request(audio=data, **common)

    def _policy(self, backend: str | None) -> BackendPolicy:
        policy = backend or self.settings.backend
        if policy not in ("modal", "local", "auto"):
            raise ConfigurationError(f"backend must be 'modal', 'local' or 'auto', not {policy!r}")
        return policy  # type: ignore[return-value]

    # ------------------------------------------------------------------ resilience

    def _call_modal(self, op: Callable[[], T]) -> T:
        # retry (transient only) around the breaker: each attempt is one breaker call, and
        # an open breaker raises CircuitOpenError, which is not retried.
        result: T = self.retry.call(self.breaker.call, op)
        return result

    async def _acall_modal(self, op: Callable[[], Awaitable[T]]) -> T:
        return await self.retry.acall(self.breaker.acall, op)

    def _fallback_backend(self, request: Request, exc: WhisperModalError) -> tuple[Any, str]:
        """The local backend and the fallback reason, or raise when policy forbids it."""
        reason = f"{type(exc).__name__}: {exc}"
        local = self.local_backend()
        try:
            device = local.device()
        except WhisperModalError as missing:  # no [local] extra installed
            raise BackendUnavailable(f"{reason}; and no local fallback: {missing}") from exc
        if device == "cpu" and not self.settings.allow_cpu_fallback:
            raise BackendUnavailable(
                f"{reason}; local fallback needs a CUDA GPU (or allow_cpu_fallback=True / "
                "WHISPER_MODAL_ALLOW_CPU_FALLBACK=1)"
            ) from exc
        if device == "cpu":
            seconds = _audio_seconds(request)
            warnings.warn(
                f"Modal is unavailable ({type(exc).__name__}); transcribing on the local CPU with "
                f"{request.options.model}: expect {_cpu_estimate(request.options.model, seconds)}",
                RuntimeWarning,
                stacklevel=4,
            )
        self.metrics.record_fallback(type(exc).__name__)
        log.warning(
            "falling back to the local engine",
            extra={"event": "fallback", "reason": type(exc).__name__, "device": device},
        )
        return local, reason

    def _finish(
        self,
        data: dict[str, Any],
        *,
        started: float,
        backend: str,
        fallback_reason: str | None,
    ) -> Transcript:
        transcript = Transcript.from_dict(data)
        if fallback_reason is not None:
            transcript = transcript.with_changes(fallback_reason=fallback_reason)
        self.metrics.record_call(
            backend=backend,
            ok=True,
            error=None,
            audio_seconds=transcript.duration,
            wall_seconds=time.monotonic() - started,
            gpu_seconds=transcript.timings.total if backend == "modal" else 0.0,
            gpu=self.settings.gpu if backend == "modal" else None,
            cold_start=transcript.cold_start,
            fallback=fallback_reason is not None,
        )
        return transcript

    def _failed(self, exc: BaseException, *, started: float, backend: str) -> None:
        self.metrics.record_call(
            backend=backend,
            ok=False,
            error=exc,
            audio_seconds=0.0,
            wall_seconds=time.monotonic() - started,
            gpu_seconds=0.0,
            gpu=None,
            cold_start=False,
            fallback=False,
        )

    # ------------------------------------------------------------------ public API

    def prepare(self, audio: AudioLike, **kwargs: Unpack[CallOptions]) -> Request:
        """Validate the options and read the input into a ``Request`` (no backend call).

        Raises:
            ConfigurationError: an unknown keyword or a bad option. AudioError: bad input.
        """
        unknown = sorted(set(kwargs) - set(CallOptions.__annotations__))
        if unknown:
            raise ConfigurationError(f"unknown argument(s): {', '.join(unknown)}")
        opts = self.make_options(
            kwargs.get("options"),
            model=kwargs.get("model"),
            language=kwargs.get("language"),
            task=kwargs.get("task"),
            word_timestamps=kwargs.get("word_timestamps"),
            initial_prompt=kwargs.get("initial_prompt"),
            mode=kwargs.get("mode"),
        )
        return self.make_request(
            audio,
            options=opts,
            sample_rate=kwargs.get("sample_rate"),
            output=kwargs.get("output"),
            webhook_url=kwargs.get("webhook_url"),
            formats=kwargs.get("formats", ()),
        )

    def transcribe(
        self,
        audio: AudioLike,
        *,
        backend: str | None = None,
        timeout: float | None = None,
        **kwargs: Unpack[CallOptions],
    ) -> Transcript:
        """Transcribe one input and wait for the result.

        Args:
            audio: bytes, a path, a binary file, a numpy array (with ``sample_rate``), an
                ``s3://bucket/key`` URI or an ``S3Object``.
            backend: "modal", "local" or "auto" (default from settings).
            timeout: seconds for the remote call (default ``settings.call_timeout``).
            **kwargs: see ``CallOptions``: ``model``, ``language``, ``task``,
                ``word_timestamps``, ``initial_prompt``, ``mode`` or a whole
                ``options=TranscribeOptions(...)``; ``sample_rate`` for arrays; ``output``
                (an ``s3://bucket/prefix/``), ``formats`` and ``webhook_url`` for delivery.

        Returns:
            The transcript; ``backend`` and ``fallback_reason`` say where it ran and why.

        Raises:
            ConfigurationError, AudioError, StorageError: bad input (never retried).
            BackendUnavailable / CircuitOpenError: Modal unavailable and no fallback allowed.
            RemoteExecutionError: the engine failed.
        """
        return self.run(self.prepare(audio, **kwargs), backend=backend, timeout=timeout)

    def run(
        self,
        request: Request,
        *,
        backend: str | None = None,
        timeout: float | None = None,
        split: bool = True,
        pack: bool = False,
    ) -> Transcript:
        """Run a prepared ``Request`` through the policy chain (see ``transcribe``).

        ``split=False`` sends long audio as one call instead of fanning it out;
        ``pack=True`` sends it to the batched class (see ``transcribe_many``).
        """
        policy = self._policy(backend)
        if split and policy != "local":
            from whisper_modal.fanout import plan_fanout

            chunks = plan_fanout(request, self.settings)
            if chunks:
                return self._run_fanout(request, chunks, backend=backend, timeout=timeout)
        limit = timeout or self.settings.call_timeout
        started = time.monotonic()
        name = "local" if policy == "local" else "modal"
        try:
            if policy == "local":
                data = self.local_backend().transcribe(request, timeout=limit)
                return self._finish(data, started=started, backend="local", fallback_reason=None)
            try:
                data = self._call_modal(lambda: self._modal_call(request, limit, pack))
                return self._finish(data, started=started, backend="modal", fallback_reason=None)
            except (BackendUnavailable, CircuitOpenError) as exc:
                if policy != "auto":
                    raise
                local, reason = self._fallback_backend(request, exc)
                name = "local"
                data = local.transcribe(request, timeout=limit)
                return self._finish(data, started=started, backend="local", fallback_reason=reason)
        except BaseException as exc:
            self._failed(exc, started=started, backend=name)
            raise

    def _modal_call(self, request: Request, limit: float, pack: bool) -> dict[str, Any]:
        backend = self.modal_backend()
        if pack:
            result: dict[str, Any] = backend.transcribe(request, timeout=limit, packed=True)
            return result
        plain: dict[str, Any] = backend.transcribe(request, timeout=limit)
        return plain

    def _run_fanout(
        self,
        request: Request,
        chunks: list[Any],
        *,
        backend: str | None,
        timeout: float | None,
        on_done: Callable[[], None] | None = None,
    ) -> Transcript:
        from whisper_modal.batch import run_many
        from whisper_modal.fanout import merge_transcripts

        parts = run_many(
            lambda c: self.run(c.request, backend=backend, timeout=timeout, split=False),
            chunks,
            concurrency=min(len(chunks), self.settings.max_containers),
            desc="chunks",
            on_done=on_done,
        )
        return merge_transcripts(request, chunks, parts)  # type: ignore[arg-type]

    async def atranscribe(
        self,
        audio: AudioLike,
        *,
        backend: str | None = None,
        timeout: float | None = None,
        **kwargs: Unpack[CallOptions],
    ) -> Transcript:
        """Async twin of ``transcribe``: file reads and local inference run on threads."""
        request = await asyncio.to_thread(functools.partial(self.prepare, audio, **kwargs))
        return await self.arun(request, backend=backend, timeout=timeout)

    async def arun(
        self,
        request: Request,
        *,
        backend: str | None = None,
        timeout: float | None = None,
        split: bool = True,
    ) -> Transcript:
        """Async twin of ``run`` (fan-out runs the chunks as concurrent tasks)."""
        policy = self._policy(backend)
        if split and policy != "local":
            from whisper_modal.fanout import plan_fanout

            chunks = await asyncio.to_thread(plan_fanout, request, self.settings)
            if chunks:
                from whisper_modal.batch import arun_many
                from whisper_modal.fanout import merge_transcripts

                parts = await arun_many(
                    lambda c: self.arun(c.request, backend=backend, timeout=timeout, split=False),
                    chunks,
                    concurrency=min(len(chunks), self.settings.max_containers),
                    desc="chunks",
                )
                return merge_transcripts(request, chunks, parts)  # type: ignore[arg-type]
        limit = timeout or self.settings.call_timeout
        started = time.monotonic()
        name = "local" if policy == "local" else "modal"
        try:
            if policy == "local":
                data = await self.local_backend().atranscribe(request, timeout=limit)
                return self._finish(data, started=started, backend="local", fallback_reason=None)
            try:
                data = await self._acall_modal(
                    lambda: self.modal_backend().atranscribe(request, timeout=limit)
                )
                return self._finish(data, started=started, backend="modal", fallback_reason=None)
            except (BackendUnavailable, CircuitOpenError) as exc:
                if policy != "auto":
                    raise
                local, reason = self._fallback_backend(request, exc)
                name = "local"
                data = await local.atranscribe(request, timeout=limit)
                return self._finish(data, started=started, backend="local", fallback_reason=reason)
        except BaseException as exc:
            self._failed(exc, started=started, backend=name)
            raise

    def submit(
        self, audio: AudioLike, *, backend: str | None = None, **kwargs: Unpack[CallOptions]
    ) -> Job:
        """Start a transcription and return a ``Job`` at once (arguments as ``transcribe``).

        Retry rule: a submit that fails with a transient error is retried with the same
        ``client_job_id``. If Modal had in fact accepted the first attempt, the audio runs
        twice, but both runs write the same S3 keys and send webhooks carrying the same
        ``client_job_id``; the returned Job is the attempt that was acknowledged.
        """
        return self.submit_request(self.prepare(audio, **kwargs), backend=backend)

    def submit_request(self, request: Request, *, backend: str | None = None) -> Job:
        """Submit a prepared ``Request`` (see ``submit``).

        Long audio for Modal becomes a fan-out job: its chunks run on many containers and
        ``Job.progress()`` reports chunks done / total.
        """
        policy = self._policy(backend)
        if policy != "local":
            from whisper_modal.fanout import FanoutJobs, plan_fanout

            chunks = plan_fanout(request, self.settings)
            if chunks:
                job_id = FanoutJobs().start(
                    lambda tick: self._run_fanout(
                        request, chunks, backend=backend, timeout=None, on_done=tick
                    ),
                    len(chunks),
                )
                return Job(job_id, client=self, backend="fanout")
        if policy == "local":
            return Job(self.local_backend().submit(request), client=self, backend="local")
        try:
            job_id = self._call_modal(lambda: self.modal_backend().submit(request))
            return Job(job_id, client=self, backend="modal")
        except (BackendUnavailable, CircuitOpenError) as exc:
            if policy != "auto":
                raise
            local, reason = self._fallback_backend(request, exc)
            return Job(local.submit(request), client=self, backend="local", fallback_reason=reason)

    async def asubmit(
        self, audio: AudioLike, *, backend: str | None = None, **kwargs: Unpack[CallOptions]
    ) -> Job:
        """Async twin of ``submit``."""
        request = await asyncio.to_thread(functools.partial(self.prepare, audio, **kwargs))
        policy = self._policy(backend)
        if policy == "local":
            return Job(await self.local_backend().asubmit(request), client=self, backend="local")
        try:
            job_id = await self._acall_modal(lambda: self.modal_backend().asubmit(request))
            return Job(job_id, client=self, backend="modal")
        except (BackendUnavailable, CircuitOpenError) as exc:
            if policy != "auto":
                raise
            local, reason = self._fallback_backend(request, exc)
            return Job(
                await local.asubmit(request), client=self, backend="local", fallback_reason=reason
            )

    def get_job(self, job_id: str) -> Job:
        """A handle for an existing job id (no network call)."""
        return Job(job_id, client=self)

    # ------------------------------------------------------------------ jobs

    def job_status(self, job: Job) -> JobStatus:
        """Status of ``job`` (idempotent read: transient failures are retried)."""
        backend = self.backend_for_job(job.backend)
        status: JobStatus = self.retry.call(backend.status, job.id)
        return status

    def job_result(self, job: Job, *, timeout: float | None) -> Transcript:
        """Wait for ``job``'s transcript."""
        backend = self.backend_for_job(job.backend)
        started = time.monotonic()
        data = self.retry.call(lambda: backend.result(job.id, timeout=timeout))
        data["job_id"] = job.id  # the id the caller holds is the one to report
        return self._finish(
            data, started=started, backend=job.backend, fallback_reason=job.fallback_reason
        )

    async def ajob_result(self, job: Job, *, timeout: float | None) -> Transcript:
        """Async twin of ``job_result``."""
        backend = self.backend_for_job(job.backend)
        started = time.monotonic()
        data = await self.retry.acall(lambda: backend.aresult(job.id, timeout=timeout))
        data["job_id"] = job.id  # the id the caller holds is the one to report
        return self._finish(
            data, started=started, backend=job.backend, fallback_reason=job.fallback_reason
        )

    def job_cancel(self, job: Job) -> None:
        """Cancel ``job``."""
        self.backend_for_job(job.backend).cancel(job.id)

    # ------------------------------------------------------------------ batch

    def transcribe_many(
        self,
        inputs: Iterable[AudioLike],
        *,
        concurrency: int = 8,
        return_exceptions: bool = False,
        progress: bool | None = None,
        pack: bool = False,
        **kwargs: Any,
    ) -> list[Transcript | WhisperModalError]:
        """Transcribe many inputs with at most ``concurrency`` in flight; results in input order.

        ``pack=True`` (Modal) sends short inputs to the ``@modal.batched`` class, which
        decodes up to 16 concurrent inputs in shared forward passes on one container.

        Args:
            inputs: anything ``transcribe`` accepts, one per item.
            concurrency: maximum calls in flight (each is one Modal container input).
            return_exceptions: put each item's error in its slot instead of raising the first.
            progress: show a bar (None: only on a terminal or in a notebook).
            **kwargs: passed to ``transcribe`` for every item.

        Raises:
            WhisperModalError: the first item error, when ``return_exceptions`` is False
                (items not yet started are cancelled).
        """
        from whisper_modal.batch import run_many

        call: Callable[..., Transcript] = self._packed_call if pack else self.transcribe
        return run_many(
            lambda item: call(item, **kwargs),
            list(inputs),
            concurrency=concurrency,
            return_exceptions=return_exceptions,
            progress=progress,
        )

    def _packed_call(
        self,
        audio: AudioLike,
        *,
        backend: str | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Transcript:
        return self.run(
            self.prepare(audio, **kwargs), backend=backend, timeout=timeout, split=False, pack=True
        )

    async def atranscribe_many(
        self,
        inputs: Iterable[AudioLike],
        *,
        concurrency: int = 8,
        return_exceptions: bool = False,
        progress: bool | None = None,
        **kwargs: Any,
    ) -> list[Transcript | WhisperModalError]:
        """Async twin of ``transcribe_many`` (a semaphore bounds the tasks in flight)."""
        from whisper_modal.batch import arun_many

        return await arun_many(
            lambda item: self.atranscribe(item, **kwargs),
            list(inputs),
            concurrency=concurrency,
            return_exceptions=return_exceptions,
            progress=progress,
        )


def _s3_uri(audio: Any) -> str | None:
    if isinstance(audio, str) and audio.startswith("s3://"):
        from whisper_modal.storage import parse_s3_uri

        return parse_s3_uri(audio).uri
    uri = getattr(audio, "uri", None)
    if type(audio).__name__ == "S3Object" and isinstance(uri, str):
        return uri
    return None


def _audio_seconds(request: Request) -> float | None:
    if request.audio is None:
        return None
    try:
        from whisper_modal.audio import probe_duration

        return probe_duration(request.audio)
    except Exception:  # an estimate only; never fail the call for it
        return None


# ---------------------------------------------------------------------- default client

_DEFAULT: Client | None = None
_DEFAULT_LOCK = threading.Lock()


def default_client() -> Client:
    """The process-wide client used by the module-level functions (created lazily)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Client()
        return _DEFAULT


def configure(client: Client | None = None, **overrides: Any) -> Client:
    """Replace the default client: ``client`` itself, or one built from ``overrides``."""
    global _DEFAULT
    client = client or Client(**overrides)
    with _DEFAULT_LOCK:
        _DEFAULT = client
    return client


def transcribe(
    audio: AudioLike,
    *,
    backend: str | None = None,
    timeout: float | None = None,
    **kwargs: Unpack[CallOptions],
) -> Transcript:
    """``default_client().transcribe(...)``; see ``Client.transcribe``."""
    return default_client().transcribe(audio, backend=backend, timeout=timeout, **kwargs)


async def atranscribe(
    audio: AudioLike,
    *,
    backend: str | None = None,
    timeout: float | None = None,
    **kwargs: Unpack[CallOptions],
) -> Transcript:
    """``await default_client().atranscribe(...)``."""
    return await default_client().atranscribe(audio, backend=backend, timeout=timeout, **kwargs)


def submit(audio: AudioLike, *, backend: str | None = None, **kwargs: Unpack[CallOptions]) -> Job:
    """``default_client().submit(...)``; see ``Client.submit``."""
    return default_client().submit(audio, backend=backend, **kwargs)


async def asubmit(
    audio: AudioLike, *, backend: str | None = None, **kwargs: Unpack[CallOptions]
) -> Job:
    """``await default_client().asubmit(...)``."""
    return await default_client().asubmit(audio, backend=backend, **kwargs)


def transcribe_many(
    inputs: Iterable[AudioLike], **kwargs: Any
) -> list[Transcript | WhisperModalError]:
    """``default_client().transcribe_many(inputs, **kwargs)``."""
    return default_client().transcribe_many(inputs, **kwargs)


async def atranscribe_many(
    inputs: Iterable[AudioLike], **kwargs: Any
) -> list[Transcript | WhisperModalError]:
    """``await default_client().atranscribe_many(inputs, **kwargs)``."""
    return await default_client().atranscribe_many(inputs, **kwargs)
