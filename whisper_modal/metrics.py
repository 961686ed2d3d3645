"""Per-client metrics, a typed snapshot, the GPU price table and safe structured logging.

Nothing here stores audio, transcript text, URLs or secrets: only counts, seconds, backend
and GPU names and error *class* names. ``log_event`` redacts secret-looking fields and
signed URLs before a record reaches any handler.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import threading
from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from whisper_modal.errors import ConfigurationError

__all__ = [
    "GPU_PRICES_PER_SECOND",
    "PRICES_TAKEN",
    "Metrics",
    "Stats",
    "log_event",
    "log_to_stderr",
    "price_per_second",
    "redact",
    "redact_text",
]

#: When the prices below were read from https://modal.com/pricing (USD per second of one
#: GPU, on-demand). They are *estimates* for the cost column of ``Stats``: Modal's bill is
#: the truth (it also charges CPU and memory). Pass your own table: ``Metrics(prices=...)``.
PRICES_TAKEN = "2026-11"
GPU_PRICES_PER_SECOND: Mapping[str, float] = MappingProxyType(
    {
        "T4": 0.000164,
        "L4": 0.000222,
        "A10G": 0.000306,
        "L40S": 0.000542,
        "A100": 0.000583,  # 40 GB
        "A100-80GB": 0.000694,
        "H100": 0.001097,
        "CPU": 0.0,  # the local backend: no GPU bill
    }
)
_CODE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_ALIASES = {"A100-40GB": "A100", "A10": "A10G"}


def price_per_second(gpu: str | None, prices: Mapping[str, float] = GPU_PRICES_PER_SECOND) -> float:
    """USD per second for a Modal GPU spec, or NaN when the table has no price for it.

    Understands Modal's spellings: case-insensitive names, ``"A100-40GB"``, a count suffix
    (``"A10G:2"`` costs twice ``"A10G"``) and the no-upgrade mark (``"H100!"``).

    Args:
        gpu: the spec given to Modal, or ``None``/``"cpu"`` for no GPU (price 0).
        prices: the price table (names in upper case).

    Returns:
        The price per second, ``0.0`` without a GPU, ``nan`` for an unknown GPU.
    """
    if gpu is None or gpu.strip().upper() in ("", "CPU"):
        return 0.0
    name, _, count = gpu.strip().upper().partition(":")
    name = name.rstrip("!")
    name = name if name in prices else _ALIASES.get(name, name)
    try:
        n = int(count) if count else 1
    except ValueError:
        return math.nan
    return prices[name] * n if name in prices and n >= 1 else math.nan


@attrs.frozen
class Stats:
    """A snapshot of one client's metrics (immutable; ``to_dict`` for JSON)."""

    invocations: int  # finished calls, successful or not
    successes: int
    failures: int
    failures_by_error: Mapping[str, int]  # error class name -> failed calls
    retries: int  # retries (record_retry calls + the ``retries`` given to record_call)
    retried_calls: int  # calls that needed at least one retry
    fallbacks: int  # decisions to fall back to the local engine
    fallback_reasons: Mapping[str, int]  # error class name -> fallbacks
    fallback_calls: int  # calls that finished on the fallback backend
    breaker_transitions: Mapping[str, int]  # "closed->open" -> count
    cold_starts: int
    audio_seconds: float  # audio transcribed
    wall_seconds: float  # caller-observed time, all calls
    gpu_seconds: float  # engine time on a GPU
    unpriced_gpu_seconds: float  # GPU seconds on a GPU missing from the price table
    estimated_cost_usd: float  # gpu_seconds * price per second (an estimate)
    by_backend: Mapping[str, int]  # backend name -> calls

    @property
    def real_time_factor(self) -> float:
        """Audio seconds per wall second over all calls (0 when nothing ran); >1 is faster
        than real time."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-serialisable dict of every field plus ``real_time_factor``."""
        out = {
            f.name: dict(v) if isinstance(v := getattr(self, f.name), Mapping) else v
            for f in attrs.fields(Stats)
        }
        out["real_time_factor"] = self.real_time_factor
        return out


def _seconds(name: str, value: float) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise ConfigurationError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


class Metrics:
    """Thread-safe counters for one client; ``snapshot()`` gives a consistent ``Stats``.

    Args:
        prices: USD per GPU-second by GPU name (default ``GPU_PRICES_PER_SECOND``).
    """

    def __init__(self, prices: Mapping[str, float] | None = None) -> None:
        table = GPU_PRICES_PER_SECOND if prices is None else prices
        self.prices: Mapping[str, float] = MappingProxyType(
            {k.upper(): v for k, v in table.items()}
        )
        self._lock = threading.Lock()
        self._invocations = self._successes = self._failures = 0
        self._retries = self._retried_calls = self._fallbacks = self._fallback_calls = 0
        self._cold = 0
        self._errors: Counter[str] = Counter()
        self._reasons: Counter[str] = Counter()
        self._transitions: Counter[str] = Counter()
        self._backends: Counter[str] = Counter()
        self._audio = self._wall = self._gpu = self._unpriced = self._cost = 0.0

    def record_call(
        self,
        *,
        backend: str,
        ok: bool,
        error: BaseException | None = None,
        audio_seconds: float = 0.0,
        wall_seconds: float = 0.0,
        gpu_seconds: float = 0.0,
        gpu: str | None = None,
        cold_start: bool = False,
        retries: int = 0,
        fallback: bool = False,
    ) -> None:
        """Record one finished call.

        Args:
            backend: ``"modal"``, ``"local"``, ...
            ok: the call produced a result.
            error: the exception of a failed call; only its class name is kept.
            audio_seconds: audio transcribed. wall_seconds: time the caller waited.
            gpu_seconds: engine time on ``gpu`` (priced); gpu: the Modal GPU spec.
            cold_start: the call started a container.
            retries: retries this call needed. Report each retry once: here, or as it
                happens with ``record_retry`` (e.g. from ``RetryPolicy.on_retry``), not both.
            fallback: the call finished on the fallback backend (the decision itself is
                counted by ``record_fallback``).

        Raises:
            ConfigurationError: negative or non-finite seconds, negative retries.
        """
        audio = _seconds("audio_seconds", audio_seconds)
        wall = _seconds("wall_seconds", wall_seconds)
        gpu_s = _seconds("gpu_seconds", gpu_seconds)
        if retries < 0:
            raise ConfigurationError(f"retries must be >= 0, got {retries}")
        price = price_per_second(gpu, self.prices)
        with self._lock:
            self._invocations += 1
            self._backends[backend] += 1
            if ok:
                self._successes += 1
            else:
                self._failures += 1
                self._errors[type(error).__name__ if error is not None else "Unknown"] += 1
            self._audio += audio
            self._wall += wall
            self._gpu += gpu_s
            if math.isnan(price):
                self._unpriced += gpu_s
            else:
                self._cost += gpu_s * price
            self._cold += int(cold_start)
            self._retries += retries
            self._retried_calls += int(retries > 0)
            self._fallback_calls += int(fallback)

    def record_retry(self) -> None:
        """Count one retry as it happens."""
        with self._lock:
            self._retries += 1

    def record_fallback(self, reason: str | BaseException) -> None:
        """Count one decision to fall back to the local engine.

        Args:
            reason: the error that caused it (only its class name is kept) or a short code
                such as an error class name; free text is reduced to its first word, and
                to ``"Other"`` unless that word looks like a code.
        """
        if isinstance(reason, BaseException):
            key = type(reason).__name__
        else:  # keep a code ("TransientError: ..." -> "TransientError"), never free text
            words = str(reason).split(maxsplit=1)
            key = words[0].rstrip(":") if words else ""
            key = key if _CODE.fullmatch(key) else "Other"
        with self._lock:
            self._fallbacks += 1
            self._reasons[key] += 1

    def record_breaker_transition(self, frm: str, to: str) -> None:
        """Count a breaker state change (``BreakerState`` values are strings too)."""
        with self._lock:
            self._transitions[f"{frm}->{to}"] += 1

    def snapshot(self) -> Stats:
        """A consistent, immutable copy of the counters."""
        with self._lock:
            return Stats(
                invocations=self._invocations,
                successes=self._successes,
                failures=self._failures,
                failures_by_error=MappingProxyType(dict(self._errors)),
                retries=self._retries,
                retried_calls=self._retried_calls,
                fallbacks=self._fallbacks,
                fallback_reasons=MappingProxyType(dict(self._reasons)),
                fallback_calls=self._fallback_calls,
                breaker_transitions=MappingProxyType(dict(self._transitions)),
                cold_starts=self._cold,
                audio_seconds=self._audio,
                wall_seconds=self._wall,
                gpu_seconds=self._gpu,
                unpriced_gpu_seconds=self._unpriced,
                estimated_cost_usd=self._cost,
                by_backend=MappingProxyType(dict(self._backends)),
            )


# --------------------------------------------------------------------------- logging

REDACTED = "[redacted]"
_SECRET_KEY = re.compile(
    r"secret|token|passw|signature|credential|authorization|api[_-]?key|private[_-]?key"
    r"|session[_-]?key|cookie",
    re.IGNORECASE,
)
_SIGNED_PARAM = re.compile(
    r"(X-Amz-(?:Signature|Credential|Security-Token)|Signature|AWSAccessKeyId|sig|token)"
    r"=[^&\s\"']+",
    re.IGNORECASE,
)
_URL_QUERY = re.compile(r"\b([a-z][a-z0-9+.-]*://[^\s?#\"']+)\?[^\s#\"']*", re.IGNORECASE)
_URL_USERINFO = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^\s/@\"']+@", re.IGNORECASE)
_BEARER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
# Attributes of every LogRecord: an ``extra`` key with one of these names makes
# ``logging`` raise KeyError, so such fields are renamed with a trailing underscore.
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def redact_text(text: str) -> str:
    """Remove credentials from free text: URL query strings (presigned URLs), user:password
    in URLs, signature/credential parameters and bearer tokens."""
    text = _SIGNED_PARAM.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    text = _URL_QUERY.sub(rf"\1?{REDACTED}", text)
    text = _URL_USERINFO.sub(rf"\1{REDACTED}@", text)
    return _BEARER.sub(rf"\1 {REDACTED}", text)


def redact(key: str, value: Any) -> Any:
    """A log-safe version of one field.

    Args:
        key: the field name; secret-looking names (secret, token, password, signature,
            credential, api_key, ...) have their whole value replaced.
        value: the value; strings lose query strings and credentials, bytes (audio) become
            their length, mappings and sequences are redacted recursively, other objects
            become redacted text.

    Returns:
        A JSON-friendly value safe to log.
    """
    if _SECRET_KEY.search(key):
        return REDACTED
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"[{len(value)} bytes]"  # never log audio
    if isinstance(value, Mapping):
        return {str(k): redact(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(key, v) for v in value]
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    return redact_text(str(value))


def log_event(
    logger: logging.Logger, event: str, /, *, level: int = logging.INFO, **fields: Any
) -> None:
    """Log a structured record: message ``event``, ``extra={"event": event, **fields}``.

    Every field passes through ``redact``; a field named like a LogRecord attribute
    (``name``, ``msg``, ``args``, ...) is renamed with a trailing ``_`` instead of making
    ``logging`` raise.

    Args:
        logger: where to log. event: a short snake_case event name ("retry", "fallback").
        level: the logging level. **fields: JSON-friendly values.
    """
    if not logger.isEnabledFor(level):
        return
    safe = {(f"{k}_" if k in _RESERVED else k): redact(k, v) for k, v in fields.items()}
    logger.log(level, event, extra={**safe, "event": event})


class _EventFormatter(logging.Formatter):
    """``whisper-modal: WARNING fallback reason=BackendUnavailable device=cpu``."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(
            f"{k}={v}" for k, v in record.__dict__.items() if k not in _RESERVED and k != "event"
        )
        line = f"whisper-modal: {record.levelname} {record.getMessage()}"
        line = f"{line} {fields}" if fields else line
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def log_to_stderr(level: int = logging.WARNING) -> None:
    """Show this package's log records at ``level`` and above on stderr (idempotent).

    For applications only: the CLI, ``whisper-modal serve`` and the Modal container call
    it. As a library the package logs to a ``NullHandler`` and prints nothing unless the
    application configures ``logging`` (the convention of the standard library's logging
    HOWTO, "Configuring Logging for a Library").
    """
    logger = logging.getLogger("whisper_modal")
    if any(isinstance(h.formatter, _EventFormatter) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_EventFormatter())
    handler.setLevel(level)
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
