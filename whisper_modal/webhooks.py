"""Signed webhooks: the sender the container uses, and ``verify()`` for receivers.

Scheme (like Stripe's): every POST carries

    X-Whisper-Modal-Timestamp: <unix seconds>
    X-Whisper-Modal-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>

Receivers call ``verify(headers, body, secret)``: it recomputes the HMAC, compares in
constant time, and rejects timestamps outside ``tolerance`` seconds (replays). Several
``v1=`` values separated by commas are accepted, so a secret can be rotated.
The sender retries 5xx answers, timeouts and connection errors with exponential backoff
(jittered, capped) and a fresh timestamp and signature per attempt; a 4xx answer is final
(the receiver said no), and so is a 3xx: redirects are not followed, because urllib would
re-send a POST as a bodiless GET, possibly to another host. Delivery failures are returned
as a ``DeliveryResult`` (``ok=False``), never raised: a job's result must not be lost
because its receiver is down. The secret and the URL's query string are never logged.
Standard library only.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import random
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from whisper_modal.errors import ConfigurationError, WebhookVerificationError

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "DeliveryResult",
    "WebhookSender",
    "WebhookVerificationError",
    "build_payload",
    "check_destination",
    "sign",
    "verify",
]

TIMESTAMP_HEADER = "X-Whisper-Modal-Timestamp"
SIGNATURE_HEADER = "X-Whisper-Modal-Signature"
log = logging.getLogger("whisper_modal.webhooks")


def _digest(secret: str, timestamp: str, body: bytes) -> str:
    # sign the exact bytes "<timestamp>." + body: the timestamp is covered, so it cannot
    # be moved forward to replay an old body
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str, timestamp: int | None = None) -> dict[str, str]:
    """Return the two headers that sign ``body``.

    Args:
        body: the exact bytes that will be sent.
        secret: the shared secret.
        timestamp: unix seconds; None uses the current time.

    Returns:
        ``{TIMESTAMP_HEADER: "<seconds>", SIGNATURE_HEADER: "v1=<hex>"}``.

    Raises:
        ConfigurationError: the secret is empty.
    """
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
    if not secret:
        raise ConfigurationError("a webhook secret is required to verify")
    lower = {k.lower(): v for k, v in headers.items()}
    ts = lower.get(TIMESTAMP_HEADER.lower())
    sig = lower.get(SIGNATURE_HEADER.lower())
    if not ts or not sig:
        raise WebhookVerificationError("missing webhook signature headers")
    if not (ts.isascii() and ts.isdigit()) or len(ts) > 12:
        raise WebhookVerificationError("malformed webhook timestamp")
    sent = int(ts)
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
    """Build the JSON document POSTed when a job ends.

    Args:
        job_id: the job's id.
        status: ``"succeeded"`` or ``"failed"``.
        duration_seconds: wall time from submit to the end of the job.
        result_location: where the results were written (``s3://.../job_id/``), if any.
        error: ``"<ErrorType>: message"`` when the job failed.
        transcript: the transcript dict, when it is small enough to inline.
        client_job_id: the id the client chose (stable across a retried submit).

    Returns:
        A dict with ``schema_version`` 1 and ``event`` ``"transcription.completed"`` or
        ``"transcription.failed"``.

    Raises:
        ConfigurationError: an unknown status.
    """
    if status not in ("succeeded", "failed"):
        raise ConfigurationError(f"webhook status must be 'succeeded' or 'failed', not {status!r}")
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


Resolver = Callable[[str, int], Iterable[str]]

#: cloud metadata services that are not covered by "not a global address" everywhere
_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def check_destination(url: str, *, allow: Iterable[str] = (), resolve: Resolver = _resolve) -> None:
    """Refuse a webhook URL that points into the server's own network (SSRF guard).

    A caller of a shared service must not make it POST to loopback, private, link-local,
    shared-address, multicast or reserved addresses, or to a cloud metadata service
    (``169.254.169.254``): the host is resolved and *every* address it resolves to must be
    public, so a name that also resolves to an inner address is refused. ``allow`` names
    the exceptions: exact host names, IP addresses or CIDR networks (``"10.1.0.0/16"``).
    Call it when a job is accepted and again just before delivery: DNS can change between
    the two (rebinding).

    Args:
        url: the webhook URL.
        allow: host names, addresses or networks that may be reached anyway.
        resolve: ``(host, port) -> addresses`` (tests inject one; default ``getaddrinfo``).

    Raises:
        ConfigurationError: not an http(s) URL with a host, the host does not resolve, or
            it resolves to a refused address; the message says which and how to allow it.
    """
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ConfigurationError("webhook_url has a malformed port") from exc
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigurationError("webhook_url must be an http:// or https:// URL with a host")
    names, networks = set(), []
    for item in allow:
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            names.add(item.strip().lower().rstrip("."))
    if host.rstrip(".") in names:
        return
    try:
        addresses = set(resolve(host, port))
    except (OSError, UnicodeError) as exc:
        raise ConfigurationError(f"webhook_url host {host!r} does not resolve") from exc
    if not addresses:
        raise ConfigurationError(f"webhook_url host {host!r} does not resolve")
    for text in sorted(addresses):
        address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
        mapped = getattr(address, "ipv4_mapped", None)
        address = mapped or address  # ::ffff:127.0.0.1 is 127.0.0.1
        if any(address in network for network in networks):
            continue
        if address in _METADATA or not address.is_global or address.is_multicast:
            raise ConfigurationError(
                f"webhook_url host {host!r} resolves to {address}, a loopback, private, "
                "link-local or metadata address; webhooks may go only to public addresses "
                "(allow it with WHISPER_MODAL_WEBHOOK_ALLOW_HOSTS)"
            )


@attrs.frozen
class DeliveryResult:
    """What happened to one webhook delivery."""

    ok: bool  # a 2xx answer arrived
    attempts: int  # requests made, 1..max_attempts
    status: int | None  # last HTTP status, None when no answer (refused, timed out)
    delays: tuple[float, ...]  # seconds waited before each retry
    error: str | None = None  # last failure: "HTTP 503", "ConnectionRefusedError", ...


def _safe_url(url: str) -> str:
    """The URL without credentials, query or fragment (they may carry tokens)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects, so a 3xx surfaces as an HTTPError (a final answer)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebhookSender:
    """POST signed JSON with retries on 5xx/connection errors/timeouts (not on 3xx/4xx).

    The wait before retry ``n`` (1-based) is ``initial_backoff * 2**(n-1)``, capped at
    ``max_backoff``, times a random factor in [0.5, 1] so many senders do not retry in step.
    With the defaults (5 attempts, 0.5 s) the waits are 0.5, 1, 2 and 4 s before jitter:
    at most 7.5 s in total, about 5.6 s on average, plus the attempts themselves.

    Args:
        secret: the shared secret (never logged).
        max_attempts: attempts in total, >= 1.
        initial_backoff: seconds before the first retry (before jitter).
        max_backoff: cap on one wait, in seconds.
        timeout: seconds for one attempt's connect and read.
        sleep: how to wait (tests inject one that records).
        clock: unix time for the signature's timestamp (tests inject one).
        rng: the jitter source (tests may seed one).

    Raises:
        ConfigurationError: empty secret or out-of-range numbers.
    """

    def __init__(
        self,
        secret: str,
        *,
        max_attempts: int = 5,
        initial_backoff: float = 0.5,
        max_backoff: float = 8.0,
        timeout: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if not secret:
            raise ConfigurationError("a webhook secret is required")
        if max_attempts < 1 or initial_backoff < 0 or max_backoff < 0 or timeout <= 0:
            raise ConfigurationError(
                "webhook sender: max_attempts >= 1, backoffs >= 0 and timeout > 0 are required"
            )
        self._secret = secret
        self.max_attempts = max_attempts
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.sleep = sleep
        self.clock = clock
        self.rng = rng or random.Random()
        self._opener = urllib.request.build_opener(_NoRedirect)

    def send(self, url: str, payload: Mapping[str, Any]) -> DeliveryResult:
        """Deliver ``payload``; delivery failures are reported, not raised.

        Args:
            url: an ``http://`` or ``https://`` URL.
            payload: a JSON-serialisable mapping (see ``build_payload``).

        Returns:
            A ``DeliveryResult``: ``ok``, attempts made, last status, waits, last error.

        Raises:
            ConfigurationError: not an http(s) URL with a host.
        """
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 - raises ValueError for a malformed port
        except ValueError as exc:
            raise ConfigurationError("the webhook URL has an invalid port") from exc
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError("webhook URLs must be http:// or https:// with a host")
        body = json.dumps(payload, separators=(",", ":"), default=str).encode()
        delays: list[float] = []
        status: int | None = None
        error: str | None = None
        for attempt in range(1, self.max_attempts + 1):
            headers = {
                "Content-Type": "application/json",
                **sign(body, self._secret, int(self.clock())),
            }
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    status = int(response.status)
                return DeliveryResult(True, attempt, status, tuple(delays))
            except urllib.error.HTTPError as exc:
                status, error = exc.code, f"HTTP {exc.code}"
                exc.close()
                if exc.code < 500:  # the receiver refused: retrying will not change its mind
                    break
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                # refused, reset, timed out, or not HTTP at all: the next attempt may work
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
