"""Settings: explicit argument > ``WHISPER_MODAL_*`` environment variable > default.

All configuration is resolved by ``Settings.resolve`` in one place, so the rule is the same
for every knob. Every field's environment variable is ``WHISPER_MODAL_`` + its upper-case
name (``cache_dir`` -> ``WHISPER_MODAL_CACHE_DIR``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from whisper_modal.errors import ConfigurationError
from whisper_modal.names import check_names, checked_keywords

__all__ = [
    "ENV_PREFIX",
    "MODAL_GPU_TYPES",
    "Settings",
    "default_cache_dir",
    "default_jobs_db",
    "default_local_workers",
    "gpu_request",
    "split_list",
]

ENV_PREFIX = "WHISPER_MODAL_"

BackendPolicy = Literal["modal", "local", "auto"]


def default_cache_dir() -> Path:
    """openai-whisper's own default (``$XDG_CACHE_HOME/whisper`` or ``~/.cache/whisper``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "whisper"


def default_local_workers() -> int:
    """Twice the cores, at least 4: most of these threads wait for a model turn."""
    return max(4, 2 * (os.cpu_count() or 1))


def default_jobs_db() -> Path:
    """Where a local HTTP server keeps its jobs: ``$XDG_DATA_HOME/whisper-modal/jobs.sqlite3``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(base) / "whisper-modal" / "jobs.sqlite3"


def _positive(_: Any, attribute: Any, value: float | int | None) -> None:
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise ConfigurationError(f"setting {attribute.name} must be positive, got {value!r}")


def _one_of(*choices: str) -> Any:
    def check(_: Any, attribute: Any, value: str) -> None:
        if value not in choices:
            raise ConfigurationError(
                f"setting {attribute.name} must be one of {', '.join(choices)}; got {value!r}"
            )

    return check


def _non_negative(_: Any, attribute: Any, value: int | None) -> None:
    if value is not None and value < 0:
        raise ConfigurationError(f"setting {attribute.name} must be 0 or more, got {value!r}")


#: GPU types Modal accepts in ``gpu=`` (https://modal.com/docs/guide/gpu). The ``modal``
#: client sends the string upper-cased and only the server checks it, so a typo fails at
#: deploy time, or worse, names a GPU you did not mean. The proto's ``GPUType`` enum
#: (T4, L4, A10G, L40S, A100, A100_80GB, H100, H200) is a subset; a contract test keeps
#: it one. "A10" is Modal's current spelling of "A10G"; "!" after H100 forbids upgrades.
MODAL_GPU_TYPES = frozenset(
    {
        "T4", "L4", "A10", "A10G", "L40S", "A100", "A100-40GB", "A100-80GB",
        "RTX-PRO-6000", "H100", "H100!", "H200", "B200", "B200+", "ANY",
    }
)  # fmt: skip


def gpu_request(spec: str) -> str | list[str]:
    """Parse a GPU setting into what ``App.cls(gpu=...)`` takes, checking each name.

    Args:
        spec: one type (``"A10G"``, ``"H100:2"``) or a fallback list in order of preference
            (``"L40S,A10G"``: Modal places the container on the first type available).

    Returns:
        The single spec, or the list of specs for a fallback list.

    Raises:
        ConfigurationError: an unknown GPU name or a bad count (names the accepted ones).
    """
    specs = [part.strip() for part in spec.split(",") if part.strip()]
    if not specs:
        raise ConfigurationError("setting gpu is empty; e.g. WHISPER_MODAL_GPU=A10G")
    for one in specs:
        name, _, count = one.partition(":")
        if name.upper() not in MODAL_GPU_TYPES:
            raise ConfigurationError(
                f"unknown Modal GPU {name!r} in gpu={spec!r}; Modal accepts "
                f"{', '.join(sorted(MODAL_GPU_TYPES))} (optionally NAME:COUNT, "
                "or a fallback list such as L40S,A10G)"
            )
        if count and (not count.isdigit() or int(count) < 1):
            raise ConfigurationError(f"bad GPU count {count!r} in gpu={spec!r}")
    return specs[0] if len(specs) == 1 else specs


def _gpu(_: Any, __: Any, value: str) -> None:
    gpu_request(value)


def _path(value: str | os.PathLike[str]) -> Path:
    return Path(value).expanduser()


@checked_keywords("setting")
@attrs.frozen(kw_only=True)
class Settings:
    """Everything a client needs to know; immutable, built by ``Settings.resolve``."""

    # -- where calls go
    backend: BackendPolicy = attrs.field(
        default="auto", validator=_one_of("modal", "local", "auto")
    )
    app_name: str = "whisper-modal"  # deployed Modal app name
    class_name: str = "Transcriber"  # class inside that app
    packed_class_name: str = "PackedTranscriber"  # the @modal.batched class (packing)
    environment_name: str | None = None  # Modal environment (None: the profile's default)
    # -- model and engine
    model: str = "turbo"  # default Whisper model
    cache_dir: Path = attrs.field(factory=default_cache_dir, converter=_path)
    device: str = attrs.field(default="auto", validator=_one_of("auto", "cuda", "cpu"))
    allow_cpu_fallback: bool = False  # may a failed Modal call run on the local CPU?
    # threads that run blocking local calls (decode audio, then wait for a model turn);
    # more than the cores, so a short call can queue for a turn beside long ones
    local_workers: int = attrs.field(factory=default_local_workers, validator=_positive)
    # -- limits
    max_audio_seconds: float = attrs.field(default=4 * 3600.0, validator=_positive)
    max_audio_bytes: int = attrs.field(default=2 * 1024**3, validator=_positive)
    # -- deadlines (seconds)
    connect_timeout: float = attrs.field(default=15.0, validator=_positive)  # lookup/first byte
    call_timeout: float = attrs.field(default=1800.0, validator=_positive)  # one remote call
    # -- large inputs (Modal uploads call arguments over 2 MiB to its blob store inside the
    #    call, no progress, all again on a retry): above max_upload_bytes, audio is staged
    #    under s3_staging_prefix ("s3://bucket/prefix") and sent as an s3:// input instead,
    #    or refused with a ConfigurationError naming this setting when none is configured
    max_upload_bytes: int = attrs.field(default=256 * 1024**2, validator=_positive)
    s3_staging_prefix: str | None = None
    # -- long-audio fan-out over many containers (Modal backend, needs the [local] decoder)
    fanout_seconds: float = attrs.field(default=900.0, validator=_positive)  # longer: split
    fanout_chunk_seconds: float = attrs.field(default=300.0, validator=_positive)
    # -- retries and breaker
    max_attempts: int = attrs.field(default=4, validator=_positive)
    retry_max_seconds: float = attrs.field(default=60.0, validator=_positive)
    breaker_failure_threshold: int = attrs.field(default=5, validator=_positive)
    breaker_reset_seconds: float = attrs.field(default=30.0, validator=_positive)
    # also open when this fraction of calls failed within the window (both or neither)
    breaker_window_seconds: float | None = None
    breaker_failure_rate: float | None = None
    # -- Modal app deployment knobs (read by whisper_modal.app at deploy time)
    gpu: str = attrs.field(default="A10G", validator=_gpu)  # or a fallback list "L40S,A10G"
    remote_timeout: int = attrs.field(default=3600, validator=_positive)  # container timeout
    max_containers: int = attrs.field(default=10, validator=_positive)
    min_containers: int = attrs.field(default=0, validator=_non_negative)  # always warm (billed)
    buffer_containers: int | None = attrs.field(default=None, validator=_non_negative)
    scaledown_window: int = attrs.field(default=300, validator=_positive)  # idle s before stop
    region: str | None = None  # e.g. "us-east" or "eu"; None: anywhere (cheapest, most GPUs)
    # "keep N warm during these UTC hours": "8-18" with warm_containers=1 (a modal.Cron
    # function raises min_containers at the start and lowers it at the end)
    warm_hours: str | None = None
    warm_containers: int = attrs.field(default=1, validator=_non_negative)
    # the same two for the packed class (transcribe_many(pack=True)), a GPU pool of its own:
    # 0 keeps none of its containers warm, so MIN_CONTAINERS=1 bills one GPU, not two
    packed_min_containers: int = attrs.field(default=0, validator=_non_negative)
    packed_warm_containers: int = attrs.field(default=0, validator=_non_negative)
    # the fan-out orchestrator (app.fanout, CPU): its reservation and jobs per container.
    # Each job holds its encoded file, then ~230 MB of float32 per hour of audio while it
    # splits, then the pieces as FLAC; Modal's default reservation is 0.125 core / 128 MiB
    fanout_cpu: float = attrs.field(default=1.0, validator=_positive)
    fanout_memory_mib: int = attrs.field(default=4096, validator=_positive)
    fanout_max_inputs: int = attrs.field(default=4, validator=_positive)
    volume_name: str = "whisper-modal-weights"
    secret_name: str | None = None  # modal.Secret holding AWS_* and WHISPER_MODAL_WEBHOOK_SECRET
    enable_memory_snapshot: bool = False  # snapshot the container with the model on CPU
    enable_gpu_snapshot: bool = False  # Modal's GPU snapshot (alpha): also the CUDA state
    # -- storage and webhooks
    s3_endpoint_url: str | None = None  # R2 / MinIO / moto
    s3_region: str | None = None
    max_object_bytes: int = attrs.field(default=2 * 1024**3, validator=_positive)
    webhook_secret: str | None = attrs.field(default=None, repr=False)  # never printed
    # hosts, IPs or CIDR networks a webhook may reach although they are loopback, private
    # or link-local (comma-separated); everything else there is refused (SSRF guard)
    webhook_allow_hosts: str | None = None
    # -- HTTP API (whisper_modal.server: ``whisper-modal serve`` and the Modal web function)
    api_keys: str | None = attrs.field(default=None, repr=False)  # comma-separated; never printed
    server_models: str | None = None  # comma-separated models served (default: ``model``)
    max_request_bytes: int = attrs.field(default=100 * 1024**2, validator=_positive)  # HTTP body
    # seconds an HTTP body may go without a byte before it is answered 408 and closed
    body_timeout: float = attrs.field(default=30.0, validator=_positive)
    # seconds a blocking transcription request may run (504, its decode stopped); longer
    # audio belongs in POST /v1/jobs
    request_timeout: float = attrs.field(default=600.0, validator=_positive)
    # blocking transcription requests in flight at once; more get 429 with Retry-After
    max_concurrent_requests: int = attrs.field(default=32, validator=_positive)
    jobs_db: Path = attrs.field(factory=default_jobs_db, converter=_path)  # local server's jobs
    web_min_containers: int = attrs.field(default=0, validator=_non_negative)  # warm web pool
    web_max_inputs: int = attrs.field(default=100, validator=_positive)  # requests per container
    web_proxy_auth: bool = False  # Modal proxy auth (Modal-Key/Modal-Secret headers) in front

    @classmethod
    def resolve(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings: explicit ``overrides`` > ``WHISPER_MODAL_*`` in ``env`` > default.

        Args:
            env: the environment to read (default ``os.environ``).
            **overrides: explicit values; ``None`` means "not given".

        Raises:
            ConfigurationError: an unknown setting or a value of the wrong type.
        """
        env = os.environ if env is None else env
        fields = attrs.fields_dict(cls)
        check_names("setting", overrides, fields)
        values: dict[str, Any] = {}
        for name, field in fields.items():
            if overrides.get(name) is not None:
                values[name] = overrides[name]
                continue
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = _parse(name, raw, field.type)
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigurationError):
                raise
            raise ConfigurationError(f"invalid settings: {exc}") from exc

    @property
    def jobs_dict_name(self) -> str:
        """The app's job book (``modal.Dict``): claims and job records (``job_book``)."""
        return f"{self.app_name}-jobs"

    def replace(self, **changes: Any) -> Settings:
        """Return a validated copy with some settings changed (None: unchanged).

        Raises:
            ConfigurationError: an unknown setting or an invalid value.
        """
        check_names("setting", changes, attrs.fields_dict(Settings))
        return attrs.evolve(self, **{k: v for k, v in changes.items() if v is not None})


def _parse(name: str, raw: str, annotation: Any) -> Any:
    text = str(annotation)
    var = ENV_PREFIX + name.upper()
    try:
        if text.startswith("bool"):
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if text.startswith("int"):
            return int(raw)
        if text.startswith("float"):
            return float(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{var}={raw!r} is not a valid {text.split()[0]}") from exc
    return raw


def split_list(value: str | None) -> tuple[str, ...]:
    """The items of a comma-separated setting (``"a, b,,c"`` -> ``("a", "b", "c")``)."""
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())
