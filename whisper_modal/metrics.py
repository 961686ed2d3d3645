"""Per-client metrics, a typed snapshot, the GPU price table and safe structured logging.

Nothing here stores audio, transcript text, URLs or secrets: only counts, seconds and
error class names.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["GPU_PRICES_PER_SECOND", "PRICES_TAKEN", "Metrics", "Stats", "log_event", "redact"]

#: USD per second of GPU time, from Modal's public pricing page; estimates only, and
#: configurable per client (``Metrics(prices=...)``). Taken on the date below.
PRICES_TAKEN = "2026-11-22"
GPU_PRICES_PER_SECOND: Mapping[str, float] = {
    "T4": 0.000164,
    "L4": 0.000222,
    "A10G": 0.000306,
    "A100": 0.000583,  # 40 GB
    "A100-80GB": 0.000694,
    "H100": 0.001097,
}


@attrs.frozen
class Stats:
    """A snapshot of one client's metrics."""

    invocations: int
    successes: int
    failures: int
    failures_by_error: Mapping[str, int]
    retries: int
    fallbacks: int
    fallback_reasons: Mapping[str, int]
    breaker_transitions: Mapping[str, int]  # "closed->open": n
    cold_starts: int
    audio_seconds: float
    wall_seconds: float
    gpu_seconds: float
    estimated_cost_usd: float
    by_backend: Mapping[str, int]

    @property
    def real_time_factor(self) -> float:
        """Audio seconds transcribed per wall second (0 when nothing ran)."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-friendly)."""
        d = attrs.asdict(self)
        d["real_time_factor"] = self.real_time_factor
        return d


class Metrics:
    """Thread-safe counters for one client."""

    def __init__(self, prices: Mapping[str, float] | None = None) -> None:
        self.prices = dict(GPU_PRICES_PER_SECOND if prices is None else prices)
        self._lock = threading.Lock()
        self._invocations = self._successes = self._failures = 0
        self._retries = self._fallbacks = self._cold = 0
        self._errors: Counter[str] = Counter()
        self._reasons: Counter[str] = Counter()
        self._transitions: Counter[str] = Counter()
        self._backends: Counter[str] = Counter()
        self._audio = self._wall = self._gpu = self._cost = 0.0

    def record_call(
        self,
        *,
        backend: str,
        ok: bool,
        error: BaseException | None,
        audio_seconds: float,
        wall_seconds: float,
        gpu_seconds: float,
        gpu: str | None,
        cold_start: bool,
        fallback: bool = False,
    ) -> None:
        """Record one finished call (success or failure)."""
        with self._lock:
            self._invocations += 1
            self._backends[backend] += 1
            if ok:
                self._successes += 1
            else:
                self._failures += 1
                self._errors[type(error).__name__ if error is not None else "Unknown"] += 1
            self._audio += audio_seconds
            self._wall += wall_seconds
            self._gpu += gpu_seconds
            self._cost += gpu_seconds * self.prices.get(gpu or "", 0.0)
            self._cold += int(cold_start)
            del fallback  # counted once by record_fallback, when the decision is made

    def record_retry(self) -> None:
        """Count one retry."""
        with self._lock:
            self._retries += 1

    def record_fallback(self, reason: str) -> None:
        """Count one fallback to the local engine (``reason``: an error class name)."""
        with self._lock:
            self._fallbacks += 1
            self._reasons[reason] += 1

    def record_breaker_transition(self, frm: str, to: str) -> None:
        """Count a breaker state change."""
        with self._lock:
            self._transitions[f"{frm}->{to}"] += 1

    def snapshot(self) -> Stats:
        """A consistent copy of the counters."""
        with self._lock:
            return Stats(
                invocations=self._invocations,
                successes=self._successes,
                failures=self._failures,
                failures_by_error=dict(self._errors),
                retries=self._retries,
                fallbacks=self._fallbacks,
                fallback_reasons=dict(self._reasons),
                breaker_transitions=dict(self._transitions),
                cold_starts=self._cold,
                audio_seconds=self._audio,
                wall_seconds=self._wall,
                gpu_seconds=self._gpu,
                estimated_cost_usd=self._cost,
                by_backend=dict(self._backends),
            )


_SECRET_KEY = re.compile(
    r"secret|token|password|passwd|signature|credential|authorization|api[_-]?key", re.I
)
_URL_QUERY = re.compile(r"(https?://[^\s?#]+)\?[^\s#]*")
_SIGNED = re.compile(r"X-Amz-(Signature|Credential|Security-Token)=[^&\s]+", re.I)


def redact(key: str, value: Any) -> Any:
    """Hide secret-looking fields and strip query strings (presigned URLs) from strings."""
    if _SECRET_KEY.search(key):
        return "[redacted]"
    if isinstance(value, str):
        value = _SIGNED.sub(r"X-Amz-\1=[redacted]", value)
        return _URL_QUERY.sub(r"\1?[redacted]", value)
    return value


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log a structured record: ``extra={"event": event, **fields}`` with secrets redacted."""
    safe = {k: redact(k, v) for k, v in fields.items()}
    logger.log(level, event, extra={"event": event, **safe})
