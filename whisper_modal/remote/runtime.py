"""The GPU classes' container side: enter hooks, one request, a packed batch, the request log.

The model loads once per container in ``@modal.enter`` hooks, from a ``modal.Volume`` that
caches checkpoints across cold starts. With ``enable_memory_snapshot`` the first hook
(``snap=True``, ``load``) imports torch and whisper and loads the model on CPU before Modal
takes the snapshot; the second (``to_device``) moves it to the GPU after restore, which is
the split Modal documents. The container requires CUDA: without it transcribe and health
fail with a named error.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from typing import Any

import modal

from whisper_modal.config import Settings
from whisper_modal.job_book import JobBook, run_once
from whisper_modal.metrics import log_to_stderr
from whisper_modal.options import require_known_model
from whisper_modal.remote import context

__all__ = [
    "Loaded",
    "cold_starts",
    "load",
    "request_log",
    "runtime_settings",
    "to_device",
    "transcribe_one",
    "transcribe_packed",
]

#: the per-request JSON lines. In a container they go to stdout, bare (one JSON object per
#: line, for Modal's log search and log drains); elsewhere (tests, ``.local()``) they go
#: wherever the process's logging sends them, so they never mix into a CLI's output.
request_log = logging.getLogger("whisper_modal.requests")

#: ``@modal.enter`` runs in this process: 1 per real container (``.local()`` makes one per instance)
_cold_starts = 0


def cold_starts() -> int:
    """How many times a model was loaded in this process."""
    return _cold_starts


class Loaded:
    """What the enter hooks leave on an instance: engine, service and cold-start data.

    Annotations only (no values), so Modal does not take them for class parameters.
    """

    model: str
    engine: Any
    service: Any
    runtime: Settings
    deployed: Settings
    load_seconds: float
    load_error: Exception | None
    cold_starts_served: int


def _log_to_stdout() -> None:
    if modal.is_local() or request_log.handlers:
        return
    log_to_stderr()  # the package's warnings (Modal keeps a container's stderr in its logs)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    request_log.addHandler(handler)
    request_log.setLevel(logging.INFO)
    request_log.propagate = False


def runtime_settings() -> Settings:
    """The settings a container runs with: its environment and its secrets."""
    return Settings.resolve(env=context.environ)


def _check_request_model(request: dict[str, Any]) -> None:
    requested = (request.get("options") or {}).get("model")
    if requested is not None:
        require_known_model(requested)


def load(self: Loaded, deployed: Settings, weights: Any) -> None:
    """First enter hook: build the engine and load the weights (on CPU before a snapshot).

    A missing GPU or an unusable checkpoint is kept in ``load_error`` rather than raised:
    an exception here kills the container and Modal starts another, which fails the same
    way, each billed, while the caller sees only a restart loop. Kept, it is the answer of
    every call and a named failing check in ``health``. An unknown model still raises: no
    container should start for it.
    """
    from whisper_modal.engine.transcriber import Engine
    from whisper_modal.errors import WhisperModalError
    from whisper_modal.service import Service

    require_known_model(self.model)
    _log_to_stdout()
    runtime = runtime_settings()  # inside the container: its env and secrets
    self.runtime, self.deployed = runtime, deployed
    # Before a CPU-memory snapshot there is no GPU: load on CPU, move in to_device.
    on_cpu_first = deployed.enable_memory_snapshot and not deployed.enable_gpu_snapshot
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


def to_device(self: Loaded) -> None:
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


def _mark_cold(self: Loaded, result: dict[str, Any]) -> dict[str, Any]:
    # The first input of a container paid for the model load: report it as a cold start.
    if self.cold_starts_served == 0 and "error" not in result:
        self.cold_starts_served = 1
        result["cold_start"] = True
        result["timings"]["load"] = self.load_seconds
    return result


def _log_request(
    self: Loaded, job_id: str | None, started: float, result: dict[str, Any] | None,
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


def job_book() -> JobBook:
    """The app's job book (claims and records) over the platform's Dict."""
    return JobBook(context.platform.job_store())


def transcribe_one(self: Loaded, request: dict[str, Any]) -> dict[str, Any]:
    """``Transcriber.transcribe``: one wire request, at most once per ``client_job_id``."""
    platform = context.platform
    return run_once(
        job_book(),
        platform.call_id(),
        request,
        lambda job_id: _transcribe_as(self, request, job_id),
    )


def _transcribe_as(self: Loaded, request: dict[str, Any], job_id: str | None) -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any] | None = None
    try:
        if self.load_error is not None:
            raise self.load_error
        _check_request_model(request)
        result = _mark_cold(self, self.service.handle(request, job_id=job_id).to_dict())
        return result
    except Exception as exc:
        _log_request(self, job_id, started, None, type(exc).__name__)
        raise
    finally:
        if result is not None:
            _log_request(self, job_id, started, result, "ok")


def transcribe_packed(self: Loaded, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``PackedTranscriber.transcribe_packed``: one result dict per request.

    A bad request (unknown model, unreadable wire dict) fails only its own entry, as an
    ``{"error": {...}}`` dict: Modal hands every caller in the batch the exception of a
    batched method that raises, so nothing may escape for one input.
    """
    from whisper_modal.errors import WhisperModalError, error_to_dict, outcome_of

    started = time.perf_counter()
    if self.load_error is not None:
        return [{"error": error_to_dict(self.load_error)} for _ in requests]
    results: list[dict[str, Any]] = [{} for _ in requests]
    accepted: list[int] = []
    for i, request in enumerate(requests):
        checked = outcome_of(functools.partial(_check_request_model, request))
        if isinstance(checked, WhisperModalError):
            results[i] = {"error": error_to_dict(checked)}
        else:
            accepted.append(i)
    handled = self.service.handle_packed([requests[i] for i in accepted])
    for i, outcome in zip(accepted, handled, strict=True):
        results[i] = (
            {"error": error_to_dict(outcome)}
            if isinstance(outcome, WhisperModalError)
            else _mark_cold(self, outcome.to_dict())
        )
    for request, result in zip(requests, results, strict=True):
        failed = result.get("error")
        outcome = "ok" if failed is None else str(failed.get("type"))
        _log_request(
            self, request.get("client_job_id"), started, None if failed else result, outcome
        )
    return results
