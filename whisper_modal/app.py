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

__all__ = ["IMAGE_PACKAGES", "WEIGHTS_DIR", "Transcriber", "app", "deploy", "settings"]

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


@app.cls(
    image=image,
    gpu=settings.gpu,
    timeout=settings.remote_timeout,
    max_containers=settings.max_containers,
    scaledown_window=settings.scaledown_window,
    volumes={WEIGHTS_DIR: weights},
    secrets=secrets,
)
class Transcriber:
    """One container pool per model: the client instantiates ``Transcriber(model=...)``."""

    model: str = modal.parameter(default="turbo")

    @modal.enter()
    def load(self) -> None:
        """Load the model once per container (downloading into the volume on first use)."""
        from whisper_modal.engine.transcriber import Engine
        from whisper_modal.errors import ConfigurationError
        from whisper_modal.options import is_known_model
        from whisper_modal.service import Service

        if not is_known_model(self.model):
            raise ConfigurationError(
                f"this app serves only known Whisper models, not {self.model!r}"
            )
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
        if not had_weights and not modal.is_local():
            weights.commit()  # later cold starts read the checkpoint from the volume

    @modal.method()
    def transcribe(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run one request dict (``Request.to_wire()``) and return ``Transcript.to_dict()``."""
        from whisper_modal.options import is_known_model

        options = request.get("options") or {}
        requested = options.get("model", self.model)
        if not is_known_model(str(requested)):
            from whisper_modal.errors import ConfigurationError

            raise ConfigurationError(
                f"this app serves only known Whisper models, not {requested!r}"
            )
        job_id = modal.current_function_call_id() or request.get("client_job_id")
        result = self.service.handle(request, job_id=job_id)
        # The first input of a container paid for the model load: report it as a cold start.
        if self.cold_starts_served == 0:
            self.cold_starts_served = 1
            result["cold_start"] = True
            result["timings"]["load"] = self.load_seconds
        return result

    @modal.method()
    def health(self) -> dict[str, Any]:
        """Model loaded, device, GPU name and versions."""
        report = self.engine.health()
        report.update(model=self.model, model_loaded=True, load_seconds=self.load_seconds)
        return report


def deploy(config: Settings | None = None) -> None:
    """Deploy this app with the ``modal`` CLI (``whisper-modal deploy``).

    Settings reach the deploy as ``WHISPER_MODAL_*`` environment variables.
    """
    config = config or Settings.resolve()
    env = dict(os.environ)
    for name in (
        "app_name",
        "gpu",
        "remote_timeout",
        "max_containers",
        "scaledown_window",
        "volume_name",
    ):
        env[f"WHISPER_MODAL_{name.upper()}"] = str(getattr(config, name))
    if config.secret_name:
        env["WHISPER_MODAL_SECRET_NAME"] = config.secret_name
    cmd = [sys.executable, "-m", "modal", "deploy", "-m", "whisper_modal.app"]
    if config.environment_name:
        cmd += ["--env", config.environment_name]
    subprocess.run(cmd, env=env, check=True)
