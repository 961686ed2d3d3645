"""Signed webhooks: signing, verification, and delivery to a real receiver on loopback."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest

import whisper_modal as wm
from tests.models_cache import tiny_en_cache
from tests.servers import WebhookReceiver, free_port
from whisper_modal.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookSender,
    WebhookVerificationError,
    build_payload,
    sign,
    verify,
)

SECRET = "whsec_test_0123456789"
SAMPLE = Path(__file__).parents[1] / "examples" / "sample.flac"


def test_sign_verify_round_trip() -> None:
    body = b'{"job_id":"fc-1"}'
    headers = sign(body, SECRET, timestamp=1_700_000_000)
    verify(headers, body, SECRET, now=1_700_000_100)
    lower = {k.lower(): v for k, v in headers.items()}
    verify(lower, body, SECRET, now=1_700_000_000)  # header names are case-insensitive


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda h, b: (h, b + b" "), "does not match"),
        (lambda h, b: ({**h, TIMESTAMP_HEADER: "1700000001"}, b), "does not match"),
        (lambda h, b: ({k: v for k, v in h.items() if k != SIGNATURE_HEADER}, b), "missing"),
        (lambda h, b: ({**h, TIMESTAMP_HEADER: "soon"}, b), "malformed"),
        (lambda h, b: ({**h, SIGNATURE_HEADER: "v0=abc"}, b), "does not match"),
    ],
)
def test_tampering_is_rejected(change: object, match: str) -> None:
    body = b'{"status":"succeeded"}'
    headers, body2 = change(sign(body, SECRET, timestamp=1_700_000_000), body)  # type: ignore[operator]
    with pytest.raises(WebhookVerificationError, match=match):
        verify(headers, body2, SECRET, now=1_700_000_000)


def test_wrong_secret_and_replay_window() -> None:
    body = b"{}"
    headers = sign(body, SECRET, timestamp=1_700_000_000)
    with pytest.raises(WebhookVerificationError):
        verify(headers, body, "another-secret", now=1_700_000_000)
    with pytest.raises(WebhookVerificationError, match="window"):
        verify(headers, body, SECRET, now=1_700_000_000 + 301)
    with pytest.raises(WebhookVerificationError, match="window"):
        verify(headers, body, SECRET, now=1_700_000_000 - 301)
    verify(headers, body, SECRET, tolerance=600, now=1_700_000_000 + 500)


def test_rotation_accepts_any_listed_signature() -> None:
    body = b"{}"
    old = sign(body, "old-secret", timestamp=1_700_000_000)[SIGNATURE_HEADER]
    new = sign(body, SECRET, timestamp=1_700_000_000)[SIGNATURE_HEADER]
    headers = {TIMESTAMP_HEADER: "1700000000", SIGNATURE_HEADER: f"{old}, {new}"}
    verify(headers, body, SECRET, now=1_700_000_000)
    verify(headers, body, "old-secret", now=1_700_000_000)


def test_retries_5xx_then_succeeds() -> None:
    sleeps: list[float] = []
    with WebhookReceiver(SECRET, fail_first=2) as receiver:
        result = WebhookSender(SECRET, sleep=sleeps.append).send(receiver.url, build_payload(
            "fc-1", "succeeded", duration_seconds=1.25, result_location="s3://b/p/fc-1/"))  # fmt: skip
    assert result.ok and result.attempts == 3 and result.status == 200
    assert [r["status"] for r in receiver.requests] == [500, 500, 200]
    assert all(r["verified"] for r in receiver.requests)
    stamps = [r["headers"][SIGNATURE_HEADER] for r in receiver.requests]
    assert len(stamps) == 3  # each attempt carries its own fresh signature
    assert len(sleeps) == 2 and 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0
    payload = receiver.requests[-1]["json"]
    assert (
        payload["event"] == "transcription.completed"
        and payload["result_location"] == "s3://b/p/fc-1/"
    )


def test_4xx_is_not_retried() -> None:
    sleeps: list[float] = []
    with WebhookReceiver(SECRET, always=400) as receiver:
        result = WebhookSender(SECRET, sleep=sleeps.append).send(receiver.url, {"x": 1})
    assert not result.ok and result.attempts == 1 and result.status == 400 and sleeps == []


def test_bad_signature_gets_401_and_is_not_retried() -> None:
    with WebhookReceiver(SECRET) as receiver:
        result = WebhookSender("wrong", sleep=lambda s: None).send(receiver.url, {"x": 1})
    assert not result.ok and result.status == 401 and len(receiver.requests) == 1


def test_connection_refused_is_retried_then_reported() -> None:
    sleeps: list[float] = []
    url = f"http://127.0.0.1:{free_port()}/hook"
    result = WebhookSender(SECRET, max_attempts=4, sleep=sleeps.append).send(url, {"x": 1})
    assert not result.ok and result.attempts == 4 and result.status is None and len(sleeps) == 3
    with pytest.raises(wm.ConfigurationError):
        WebhookSender(SECRET).send("file:///etc/passwd", {})


def test_real_retry_timings() -> None:
    """Delivery with real sleeps: 500, 500, 200 with a 0.05 s initial backoff."""
    with WebhookReceiver(SECRET, fail_first=2) as receiver:
        result = WebhookSender(SECRET, initial_backoff=0.05).send(receiver.url, {"x": 1})
    times = [r["at"] for r in receiver.requests]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert result.ok and len(gaps) == 2
    assert 0.02 <= gaps[0] <= 0.5 and 0.04 <= gaps[1] <= 0.8


@pytest.mark.slow
def test_job_end_posts_a_signed_webhook(monkeypatch: pytest.MonkeyPatch) -> None:
    client = wm.Client(backend="local", model="tiny.en", cache_dir=tiny_en_cache(), device="cpu",
                       webhook_secret=SECRET)  # fmt: skip
    with WebhookReceiver(SECRET, fail_first=1) as receiver:
        job = client.submit(SAMPLE, language="en", webhook_url=receiver.url)
        job.result(timeout=120)
        with pytest.raises(wm.AudioError):
            client.submit(b"junk" * 100, webhook_url=receiver.url).result(timeout=60)
        deadline = time.monotonic() + 10
        while len(receiver.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    ok = [r for r in receiver.requests if r["status"] == 200]
    assert len(ok) == 2 and all(r["verified"] for r in receiver.requests)
    done, failed = ok[0]["json"], ok[1]["json"]
    assert done["status"] == "succeeded" and done["job_id"] == job.id
    assert "weekly planning" in done["transcript"]["text"].lower()
    assert failed["status"] == "failed" and failed["error"].startswith("AudioError")
    assert SECRET not in json.dumps(receiver.requests, default=str)
