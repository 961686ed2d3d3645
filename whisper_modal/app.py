"""The Modal app whisper_modal calls: ``modal deploy -m whisper_modal.app``.

Declarations only, top to bottom: deploy settings -> pinned images -> weights volume and
job book -> app -> GPU classes -> the long-audio orchestrator -> upkeep functions -> smoke
entrypoint -> the HTTP API's web function. Each body is one call into
``whisper_modal.remote`` (the container side) or ``whisper_modal.deployer``. The deployed
classes are looked up by name by ``ModalBackend`` (``modal.Cls.from_name``), so the client
never imports this module at run time. Configuration comes from ``WHISPER_MODAL_*``
variables at deploy time (``WHISPER_MODAL_GPU=L4 modal deploy -m whisper_modal.app``) and
is baked into the images (``remote/deployment.py`` says why).
"""

# No "from __future__ import annotations": modal reads parameter annotations at runtime.

from typing import Any

import modal

from whisper_modal.config import gpu_request
from whisper_modal.remote import context, deployment, health, maintenance, runtime
from whisper_modal.remote.deployment import IMAGE_PACKAGES, WEIGHTS_DIR
from whisper_modal.remote.orchestrator import run_fanout
from whisper_modal.remote.web import web_app

__all__ = [
    "FANOUT_OPTIONS",
    "IMAGE_ENV",
    "WARM_POOLS",
    "WEB_ENV",
    "WEB_IMAGE_PACKAGES",
    "WEB_OPTIONS",
    "PackedTranscriber",
    "Transcriber",
    "app",
    "fanout",
    "prefetch",
    "settings",
    "web",
]

settings = deployment.deploy_settings()

#: the GPU image's environment: the container's whole WHISPER_MODAL_* configuration
IMAGE_ENV = deployment.image_env(settings)

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

#: the job book (claims on client_job_id, job records, fan-out progress): see ``job_book``.
#: Lazy like every ``from_name``: no network until a container first uses it.
jobs_dict = modal.Dict.from_name(settings.jobs_dict_name, create_if_missing=True)

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


@app.cls(**_CLASS_OPTIONS, min_containers=WARM_POOLS["Transcriber"][0] or None)
class Transcriber(runtime.Loaded):
    """One container pool per model: the client instantiates ``Transcriber(model=...)``."""

    model: str = modal.parameter(default="turbo")

    @modal.enter(snap=_SNAPSHOT)
    def load(self) -> None:
        """Load the model once per container (on CPU when a snapshot follows)."""
        runtime.load(self, settings, weights)

    @modal.enter()
    def to_device(self) -> None:
        """After restore: move the model onto the GPU (a no-op without a snapshot)."""
        runtime.to_device(self)

    @modal.method()
    def transcribe(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run one request dict (``Request.to_wire()``) and return ``Transcript.to_dict()``."""
        return runtime.transcribe_one(self, request)

    @modal.method()
    def health(self) -> dict[str, Any]:
        """Named checks (cuda, model_loaded, weights_volume), device, GPU name, versions."""
        return health.health(self)


@app.cls(**_CLASS_OPTIONS, min_containers=WARM_POOLS["PackedTranscriber"][0] or None)
class PackedTranscriber(runtime.Loaded):
    """Many short inputs packed into shared batched forward passes (``transcribe_many(pack=True)``).

    Modal collects single calls into lists (``@modal.batched``); a class with a batched
    method may have no other methods, hence a class of its own.
    """

    model: str = modal.parameter(default="turbo")

    @modal.enter(snap=_SNAPSHOT)
    def load(self) -> None:
        """Load the model once per container (on CPU when a snapshot follows)."""
        runtime.load(self, settings, weights)

    @modal.enter()
    def to_device(self) -> None:
        """After restore: move the model onto the GPU (a no-op without a snapshot)."""
        runtime.to_device(self)

    @modal.batched(max_batch_size=16, wait_ms=250)
    def transcribe_packed(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One result dict per request; a failure is an ``{"error": {...}}`` entry."""
        return runtime.transcribe_packed(self, requests)


context.install(context.Platform(jobs=jobs_dict, gpu_class=Transcriber))

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
    """Orchestrate one submitted long-audio job on CPU (``remote/orchestrator.py``)."""
    return await run_fanout(request, chunk_seconds, settings)


@app.function(image=image, volumes={WEIGHTS_DIR: weights}, secrets=secrets, timeout=3600)
def prefetch(model: str) -> dict[str, Any]:
    """Fill the weights volume with ``model`` (``whisper-modal models prefetch NAME --remote``).

    Runs on CPU (no GPU billed for a download): the checkpoint is downloaded to a temporary
    name, its SHA-256 checked, renamed into place and the volume committed, so the first
    real cold start only reads it. Returns ``{"model", "path", "size_bytes", "sha256"}``.
    """
    return maintenance.prefetch(model, weights)


if settings.warm_hours:  # a baked setting: the same on the deploy side and in containers
    _WARM_START, _WARM_END = deployment.warm_window(settings.warm_hours)

    @app.function(
        image=image, schedule=modal.Cron(f"0 {_WARM_START},{_WARM_END} * * *"), timeout=300
    )
    def warm_pool() -> None:
        """At the window's edges, set ``min_containers`` of the default model's pools."""
        maintenance.set_warm_pools(settings, WARM_POOLS)


@app.local_entrypoint()
def smoke(path: str, model: str = "", language: str = "") -> None:
    """``modal run -m whisper_modal.app --path sample.flac``: one real request, end to end."""
    from whisper_modal.deployer import smoke_test  # runs in `modal run`'s local process

    smoke_test(Transcriber, path, model or settings.model, language or None)


# --------------------------------------------------------------------------- HTTP API
# A CPU web function serving whisper_modal.server (OpenAI-compatible audio endpoints and
# the jobs API) that calls the GPU class above through a Client, on a light image of its
# own. Bearer keys come from WHISPER_MODAL_API_KEYS in the app's secret (``secret_name``);
# ``web_proxy_auth`` puts Modal's proxy auth (Modal-Key / Modal-Secret) in front instead.
# Jobs are stateless here (job id = FunctionCall id), so any container answers any job.

WEB_IMAGE_PACKAGES = deployment.web_image_packages(settings)
WEB_ENV = deployment.web_env(settings)

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
    return web_app()
