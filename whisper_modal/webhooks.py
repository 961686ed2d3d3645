"""Signed webhooks: the sender the container uses, and ``verify()`` for receivers.

Scheme (like Stripe's): every POST carries

    X-Whisper-Modal-Timestamp: <unix seconds>
    X-Whisper-Modal-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>

Receivers call ``verify(headers, body, secret)``: it recomputes the HMAC, compares in
constant time, and rejects timestamps outside ``tolerance`` seconds (replays). Several
``v1=`` values separated by commas are accepted, so a secret can be rotated.
The sender retries 5xx answers, timeouts and connection errors with exponential backoff
and a fresh signature per attempt; a 4xx answer is final (the receiver said no).
Standard library only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from whisper_modal.errors import ConfigurationError, WhisperModalError

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "DeliveryResult",
    "WebhookSender",
    "WebhookVerificationError",
    "build_payload",
    "sign",
    "verify",
]

TIMESTAMP_HEADER = "X-Whisper-Modal-Timestamp"
SIGNATURE_HEADER = "X-Whisper-Modal-Signature"
log = logging.getLogger("whisper_modal.webhooks")


class WebhookVerificationError(WhisperModalError):
    """A webhook's signature or timestamp did not verify."""


def _digest(secret: str, timestamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str, timestamp: int | None = None) -> dict[str, str]:
    """Return the two headers that sign ``body``."""
    if not secret:
        raise ConfigurationError("a webhook secret is required to sign")
    ts = str(int(time.time()) if timestamp is None else int(timestamp))
    return {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: f"v1={_digest(secret, ts, body)}"}


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secret: str,
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> None:
    """Check a webhook's signature and freshness.

    Args:
        headers: the request headers (any case).
        body: the raw request body, exactly as received.
        secret: the shared secret.
        tolerance: maximum age (and clock skew) in seconds.
        now: the current unix time (tests).

    Raises:
        WebhookVerificationError: missing/malformed headers, stale timestamp, bad signature.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    ts = lower.get(TIMESTAMP_HEADER.lower())
    sig = lower.get(SIGNATURE_HEADER.lower())
    if not ts or not sig:
        raise WebhookVerificationError("missing webhook signature headers")
    try:
        sent = int(ts)
    except ValueError as exc:
        raise WebhookVerificationError("malformed webhook timestamp") from exc
    current = time.time() if now is None else now
    if abs(current - sent) > tolerance:
        raise WebhookVerificationError(f"webhook timestamp outside the {tolerance:g} s window")
    expected = _digest(secret, ts, body)
    candidates = [p.strip()[3:] for p in sig.split(",") if p.strip().startswith("v1=")]
    # compare against every candidate (no early exit) in constant time
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(candidate.encode(), expected.encode())
    if not matched:
        raise WebhookVerificationError("webhook signature does not match")


def build_payload(
    job_id: str,
    status: str,
    *,
    duration_seconds: float,
    result_location: str | None = None,
    error: str | None = None,
    transcript: dict[str, Any] | None = None,
    client_job_id: str | None = None,
) -> dict[str, Any]:
    """The JSON document POSTed when a job ends."""
    return {
        "schema_version": 1,
        "event": "transcription.completed" if status == "succeeded" else "transcription.failed",
        "job_id": job_id,
        "client_job_id": client_job_id,
        "status": status,
        "duration_seconds": round(duration_seconds, 3),
        "result_location": result_location,
        "error": error,
        "transcript": transcript,
    }


@attrs.frozen
class DeliveryResult:
    """What happened to one webhook."""

    ok: bool
    attempts: int
    status: int | None  # last HTTP status, None when no answer
    delays: tuple[float, ...]  # seconds waited before each retry
    error: str | None = None


def _safe_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or ''}{parts.path}"


class WebhookSender:
    """POST signed JSON with retries on 5xx/connection errors (not on 4xx)."""

    def __init__(
        self,
        secret: str,
        *,
        max_attempts: int = 5,
        initial_backoff: float = 0.5,
        max_backoff: float = 8.0,
        timeout: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not secret:
            raise ConfigurationError("a webhook secret is required")
        self._secret = secret
        self.max_attempts = max_attempts
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.sleep = sleep
        self.rng = rng or random.Random()

    def send(self, url: str, payload: Mapping[str, Any]) -> DeliveryResult:
        """Deliver ``payload``; never raises for delivery failures (see ``DeliveryResult``).

        Raises:
            ConfigurationError: not an http(s) URL.
        """
        if urlsplit(url).scheme not in ("http", "https"):
            raise ConfigurationError("webhook URLs must be http:// or https://")
        body = json.dumps(payload, separators=(",", ":"), default=str).encode()
        delays: list[float] = []
        status: int | None = None
        error: str | None = None
        for attempt in range(1, self.max_attempts + 1):
            headers = {"Content-Type": "application/json", **sign(body, self._secret)}
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    status = int(response.status)
                return DeliveryResult(True, attempt, status, tuple(delays))
            except urllib.error.HTTPError as exc:
                status, error = exc.code, f"HTTP {exc.code}"
                if exc.code < 500:  # the receiver refused: retrying will not change its mind
                    break
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                status, error = None, type(getattr(exc, "reason", exc)).__name__
            if attempt < self.max_attempts:
                delay = self.rng.uniform(0.5, 1.0) * min(
                    self.max_backoff, self.initial_backoff * 2 ** (attempt - 1)
                )
                delays.append(delay)
                self.sleep(delay)
        log.warning(
            "webhook delivery failed",
            extra={
                "event": "webhook_failed",
                "url": _safe_url(url),
                "status": status,
                "error": error,
            },
        )
        return DeliveryResult(False, len(delays) + 1, status, tuple(delays), error)
