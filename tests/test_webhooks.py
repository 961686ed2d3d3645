"""Signed webhooks: signing, verification, and delivery to a real receiver on loopback."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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
T0 = 1_700_000_000

Headers = dict[str, str]


# --------------------------------------------------------------------------- sign / verify


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"job_id":"fc-1"}'
    headers = sign(body, SECRET, timestamp=T0)
    expected = hmac.new(SECRET.encode(), f"{T0}.".encode() + body, hashlib.sha256).hexdigest()
    assert headers == {TIMESTAMP_HEADER: str(T0), SIGNATURE_HEADER: f"v1={expected}"}


def test_sign_verify_round_trip_and_header_case() -> None:
    body = b'{"job_id":"fc-1"}'
    headers = sign(body, SECRET, timestamp=T0)
    verify(headers, body, SECRET, now=T0 + 100)
    verify({k.lower(): v for k, v in headers.items()}, body, SECRET, now=T0)
    verify({k.upper(): v for k, v in headers.items()}, body, SECRET, now=T0)
    assert abs(int(sign(body, SECRET)[TIMESTAMP_HEADER]) - time.time()) < 5
    verify(sign(body, SECRET), body, SECRET)  # the real clock on both sides


def _drop(name: str) -> Callable[[Headers, bytes], tuple[Headers, bytes]]:
    return lambda h, b: ({k: v for k, v in h.items() if k != name}, b)


def _set(name: str, value: str) -> Callable[[Headers, bytes], tuple[Headers, bytes]]:
    return lambda h, b: ({**h, name: value}, b)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda h, b: (h, b + b" "), "does not match"),
        (lambda h, b: (h, b.replace(b"succeeded", b"failed")), "does not match"),
        (_set(TIMESTAMP_HEADER, str(T0 + 1)), "does not match"),
        (_drop(SIGNATURE_HEADER), "missing"),
        (_drop(TIMESTAMP_HEADER), "missing"),
        (_set(TIMESTAMP_HEADER, "soon"), "malformed"),
        (_set(TIMESTAMP_HEADER, f"+{T0}"), "malformed"),
        (_set(TIMESTAMP_HEADER, f"{T0}.0"), "malformed"),
        (_set(SIGNATURE_HEADER, "v0=abc"), "does not match"),
        (_set(SIGNATURE_HEADER, "v1="), "does not match"),
        (_set(SIGNATURE_HEADER, ""), "missing"),
    ],
)
def test_tampering_is_rejected(
    change: Callable[[Headers, bytes], tuple[Headers, bytes]], match: str
) -> None:
    body = b'{"status":"succeeded"}'
    headers, body2 = change(sign(body, SECRET, timestamp=T0), body)
    with pytest.raises(WebhookVerificationError, match=match):
        verify(headers, body2, SECRET, now=T0)


def test_wrong_secret_and_replay_window() -> None:
    body = b"{}"
    headers = sign(body, SECRET, timestamp=T0)
    with pytest.raises(WebhookVerificationError, match="does not match"):
        verify(headers, body, "another-secret", now=T0)
    with pytest.raises(WebhookVerificationError, match="window"):
        verify(headers, body, SECRET, now=T0 + 301)  # an old delivery replayed
    with pytest.raises(WebhookVerificationError, match="window"):
        verify(headers, body, SECRET, now=T0 - 301)  # from the future: a skewed clock
    verify(headers, body, SECRET, now=T0 + 300)  # the edge is inside
    verify(headers, body, SECRET, tolerance=600, now=T0 + 500)
    assert issubclass(WebhookVerificationError, wm.WhisperModalError)
    with pytest.raises(wm.ConfigurationError):
        verify(headers, body, "", now=T0)
    with pytest.raises(wm.ConfigurationError):
        sign(body, "")


def test_rotation_accepts_any_listed_signature() -> None:
    body = b"{}"
    old = sign(body, "old-secret", timestamp=T0)[SIGNATURE_HEADER]
    new = sign(body, SECRET, timestamp=T0)[SIGNATURE_HEADER]
    headers = {TIMESTAMP_HEADER: str(T0), SIGNATURE_HEADER: f"{old}, {new}"}
    verify(headers, body, SECRET, now=T0)
    verify(headers, body, "old-secret", now=T0)
    with pytest.raises(WebhookVerificationError):
        verify(headers, body, "third-secret", now=T0)


def test_build_payload() -> None:
    done = build_payload("fc-1", "succeeded", duration_seconds=1.23456, result_location="s3://b/p/")
    assert done["event"] == "transcription.completed" and done["schema_version"] == 1
    assert done["duration_seconds"] == 1.235 and done["result_location"] == "s3://b/p/"
    failed = build_payload("fc-2", "failed", duration_seconds=0.5, error="AudioError: empty")
    assert failed["event"] == "transcription.failed" and failed["error"] == "AudioError: empty"
    assert json.loads(json.dumps(failed)) == failed
    with pytest.raises(wm.ConfigurationError):
        build_payload("fc-3", "done", duration_seconds=0)


# --------------------------------------------------------------------------- delivery


def test_retries_5xx_then_succeeds() -> None:
    sleeps: list[float] = []
    payload = build_payload("fc-1", "succeeded", duration_seconds=1.25,
                            result_location="s3://b/p/fc-1/")  # fmt: skip
    with WebhookReceiver(SECRET, fail_first=2) as receiver:
        result = WebhookSender(SECRET, sleep=sleeps.append).send(receiver.url, payload)
    assert result.ok and result.attempts == 3 and result.status == 200
    assert [r["status"] for r in receiver.requests] == [500, 500, 200]
    assert all(r["verified"] for r in receiver.requests)  # every attempt is signed
    assert result.delays == tuple(sleeps)
    # exponential backoff with jitter in [0.5, 1]: 0.5 s then 1 s before jitter
    assert len(sleeps) == 2 and 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0
    assert all(r["json"] == payload for r in receiver.requests)


def test_each_attempt_is_signed_afresh() -> None:
    # A clock that moves 100 s per attempt: each attempt must carry its own timestamp.
    with WebhookReceiver(SECRET, fail_first=2, tolerance=1e9) as receiver:
        fake_now = itertools.count(T0, 100)
        sender = WebhookSender(SECRET, sleep=lambda s: None, clock=lambda: float(next(fake_now)))
        assert sender.send(receiver.url, {"x": 1}).ok
    stamps = [r["headers"][TIMESTAMP_HEADER] for r in receiver.requests]
    assert stamps == [str(T0), str(T0 + 100), str(T0 + 200)]
    assert len({r["headers"][SIGNATURE_HEADER] for r in receiver.requests}) == 3


def test_backoff_grows_and_is_capped() -> None:
    sleeps: list[float] = []
    sender = WebhookSender(SECRET, max_attempts=7, initial_backoff=1.0, max_backoff=4.0,
                           sleep=sleeps.append, rng=random.Random(7))  # fmt: skip
    with WebhookReceiver(SECRET, always=503) as receiver:
        result = sender.send(receiver.url, {"x": 1})
    assert not result.ok and result.attempts == 7 and result.status == 503
    assert result.error == "HTTP 503" and len(receiver.requests) == 7
    bases = [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert all(b / 2 <= s <= b for s, b in zip(sleeps, bases, strict=True))


@pytest.mark.parametrize("status", [400, 404, 410, 422])
def test_4xx_is_not_retried(status: int) -> None:
    sleeps: list[float] = []
    with WebhookReceiver(SECRET, always=status) as receiver:
        result = WebhookSender(SECRET, sleep=sleeps.append).send(receiver.url, {"x": 1})
    assert not result.ok and result.attempts == 1 and result.status == status
    assert sleeps == [] and len(receiver.requests) == 1


def test_bad_signature_gets_401_and_is_not_retried() -> None:
    with WebhookReceiver(SECRET) as receiver:
        result = WebhookSender("wrong", sleep=lambda s: None).send(receiver.url, {"x": 1})
    assert not result.ok and result.status == 401 and len(receiver.requests) == 1
    assert receiver.requests[0]["verified"] is False


def test_connection_refused_is_retried_then_reported(caplog: pytest.LogCaptureFixture) -> None:
    sleeps: list[float] = []
    url = f"http://127.0.0.1:{free_port()}/hook?token=hunter2"
    with caplog.at_level(logging.WARNING, logger="whisper_modal.webhooks"):
        result = WebhookSender(SECRET, max_attempts=4, sleep=sleeps.append).send(url, {"x": 1})
    assert not result.ok and result.attempts == 4 and result.status is None and len(sleeps) == 3
    assert result.error == "ConnectionRefusedError"
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "webhook delivery failed" in logged and "/hook" in logged
    assert "hunter2" not in logged and SECRET not in logged


@pytest.fixture
def hanging_server() -> Iterator[str]:
    """Accepts connections and never answers (a receiver stuck on a slow database)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    stop.set()
    thread.join()
    for s in accepted:
        s.close()
    listener.close()


def test_timeouts_are_retried(hanging_server: str) -> None:
    started = time.monotonic()
    result = WebhookSender(SECRET, max_attempts=2, timeout=0.3, sleep=lambda s: None).send(
        hanging_server, {"x": 1}
    )
    elapsed = time.monotonic() - started
    assert not result.ok and result.attempts == 2 and result.status is None
    assert result.error is not None and "Timeout" in result.error
    assert 0.5 <= elapsed < 2.0  # two attempts of 0.3 s each, no more


def test_redirects_are_not_followed() -> None:
    hits: list[str] = []

    class Redirect(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            hits.append(f"{self.command} {self.path}")
            self.send_response(302 if self.path == "/hook" else 200)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        result = WebhookSender(SECRET, sleep=lambda s: None).send(url, {"x": 1})
    finally:
        server.shutdown()
        server.server_close()
    assert not result.ok and result.status == 302 and result.attempts == 1
    assert hits == ["POST /hook"]  # the POST was not turned into a GET elsewhere


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://host/x", "http:///nohost", "http://h:99999/", "hook"]
)
def test_only_http_urls(url: str) -> None:
    with pytest.raises(wm.ConfigurationError):
        WebhookSender(SECRET).send(url, {})


def test_sender_rejects_bad_settings() -> None:
    for kwargs in ({"max_attempts": 0}, {"initial_backoff": -1}, {"timeout": 0}):
        with pytest.raises(wm.ConfigurationError):
            WebhookSender(SECRET, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(wm.ConfigurationError):
        WebhookSender("")


def test_real_retry_timings() -> None:
    """Delivery with real sleeps: 500, 500, 200 with a 0.05 s initial backoff."""
    with WebhookReceiver(SECRET, fail_first=2) as receiver:
        result = WebhookSender(SECRET, initial_backoff=0.05).send(receiver.url, {"x": 1})
    times = [r["at"] for r in receiver.requests]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert result.ok and len(gaps) == 2
    # each gap is the recorded wait plus one round trip on loopback
    for gap, delay in zip(gaps, result.delays, strict=True):
        assert delay <= gap <= delay + 0.5
    assert 0.025 <= result.delays[0] <= 0.05 and 0.05 <= result.delays[1] <= 0.1


def test_example_receiver_verifies_and_prints() -> None:
    """examples/webhook_receiver.py as a real process: signed events in, printed lines out."""
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    port = free_port()
    script = Path(__file__).parents[1] / "examples" / "webhook_receiver.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", str(port), "--secret", SECRET],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(f"listening on http://127.0.0.1:{port}/")
        url = f"http://127.0.0.1:{port}/hook"
        payload = build_payload("fc-9", "failed", duration_seconds=2.0,
                                error="AudioError: empty", client_job_id="wm-1")  # fmt: skip
        sender = WebhookSender(SECRET, sleep=lambda s: None)
        assert sender.send(url, payload).ok
        assert sender.send(url, payload).ok  # a duplicate: acknowledged, printed once
        assert WebhookSender("wrong", sleep=lambda s: None).send(url, payload).status == 401
        unsigned = urllib.request.Request(url, data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(unsigned, timeout=5)
        assert info.value.code == 401
        info.value.close()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert out.splitlines() == [
        "transcription.failed: job fc-9 -> failed (2.0 s)",
        "  error: AudioError: empty",
    ]


@pytest.mark.slow
def test_job_end_posts_a_signed_webhook() -> None:
    client = wm.Client(backend="local", model="tiny.en", cache_dir=tiny_en_cache(), device="cpu",
                       webhook_secret=SECRET, webhook_allow_hosts="127.0.0.1")  # fmt: skip
    with WebhookReceiver(SECRET, fail_first=1) as receiver:
        job = client.submit(SAMPLE, language="en", webhook_url=receiver.url)
        job.result(timeout=120)
        with pytest.raises(wm.AudioError):
            client.submit(b"junk" * 100, webhook_url=receiver.url).result(timeout=60)
        receiver.wait_for(3)
    ok = [r for r in receiver.requests if r["status"] == 200]
    assert len(ok) == 2 and all(r["verified"] for r in receiver.requests)
    # deliveries run on several workers: the failed job's may overtake the retried one
    by_status = {r["json"]["status"]: r["json"] for r in ok}
    done, failed = by_status["succeeded"], by_status["failed"]
    assert done["status"] == "succeeded" and done["job_id"] == job.id
    assert "weekly planning" in done["transcript"]["text"].lower()
    assert failed["status"] == "failed" and failed["error"].startswith("AudioError")
    assert SECRET not in json.dumps(receiver.requests, default=str)
