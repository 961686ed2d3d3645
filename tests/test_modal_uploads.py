"""Large inputs (fault 5 of issue 10): upload deadlines grow with the payload, and audio
over ``max_upload_bytes`` is staged through S3 (real moto over HTTP) or refused."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import whisper_modal.backends.modal as modal_backend
from tests.fakes import fake_backend
from tests.fakes.modal_fake import FakeModal
from tests.servers import S3Server, moto_server
from whisper_modal.backends.modal_transport import (
    MIN_UPLOAD_BYTES_PER_SECOND,
    spawn_deadline,
    upload_seconds,
)
from whisper_modal.config import Settings
from whisper_modal.errors import ConfigurationError
from whisper_modal.options import TranscribeOptions
from whisper_modal.results import Transcript
from whisper_modal.wire import Request

SAMPLE = Path(__file__).parents[1] / "examples" / "sample.flac"


def request(audio: bytes) -> Request:
    return Request(options=TranscribeOptions(model="tiny.en", language="en"), audio=audio)


def test_spawn_deadline_grows_with_the_payload() -> None:
    settings = Settings.resolve(env={})
    small, big = 1000, 512 * 1024**2
    assert spawn_deadline(big, settings) - spawn_deadline(small, settings) == pytest.approx(
        upload_seconds(big - small)
    )
    # 512 MiB at the slowest uplink we plan for: far beyond the old fixed 60 s
    assert spawn_deadline(big, settings) > big / MIN_UPLOAD_BYTES_PER_SECOND > 60


@pytest.fixture
def recorded_deadlines(monkeypatch: pytest.MonkeyPatch) -> list[float | None]:
    """Every deadline the backend puts around a Modal function call, in order (the job
    book's Dict reads and writes, each within ``connect_timeout``, left out)."""
    seen: list[float | None] = []
    real = modal_backend._within

    async def recording(work: Any, seconds: float | None, expired: Any) -> Any:
        if "job book" not in str(expired()):
            seen.append(seconds)
        return await real(work, seconds, expired)

    monkeypatch.setattr(modal_backend, "_within", recording)
    return seen


def echo(wire: dict[str, Any]) -> dict[str, Any]:
    return Transcript(
        text=f"{len(wire['audio'] or b'')} bytes", language="en", duration=1.0,
        model="tiny.en", backend="modal",
    ).to_dict()  # fmt: skip


def test_submit_and_call_deadlines_include_the_upload(
    monkeypatch: pytest.MonkeyPatch, recorded_deadlines: list[float | None]
) -> None:
    fake = FakeModal(handler=echo)
    try:
        # 8 MiB of bytes with no header go to one container (not the orchestrator,
        # which would decode them) while the size could not hold over 10,000 s of audio
        backend = fake_backend(fake, monkeypatch, connect_timeout=5, fanout_seconds=10_000)
        audio = b"x" * (8 * 1024**2)  # 8 MiB: over both of Modal's inline limits
        assert not backend.fans_out(request(audio))
        asyncio.run(backend.asubmit(request(audio)))
        assert recorded_deadlines[-1] == pytest.approx(60 + 5 + 8.0)
        asyncio.run(backend.atranscribe(request(audio), timeout=30))
        # a call is spawn (the upload rides inside it) + get (the call's own 30 s, plus
        # the connect backstop against a hung connection)
        assert recorded_deadlines[-2:] == [pytest.approx(60 + 5 + 8.0), pytest.approx(30 + 5)]
    finally:
        fake.close()


def test_too_large_without_staging_is_refused_before_any_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeModal(handler=echo)
    try:
        backend = fake_backend(fake, monkeypatch, max_upload_bytes=1000)
        with pytest.raises(ConfigurationError, match="WHISPER_MODAL_S3_STAGING_PREFIX"):
            asyncio.run(backend.atranscribe(request(b"x" * 1001), timeout=30))
        with pytest.raises(ConfigurationError, match="1001 bytes of audio is over the 1000 bytes"):
            asyncio.run(backend.asubmit(request(b"x" * 1001)))
        assert fake.calls["remote"] == 0 and fake.calls["spawn"] == 0
        small = asyncio.run(backend.atranscribe(request(b"x" * 1000), timeout=30))
        assert small.text == "1000 bytes"
    finally:
        fake.close()


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    with moto_server() as server:
        server.client().create_bucket(Bucket="stage")
        # the container's setting, as the deploy's secret would carry it
        monkeypatch.setenv("WHISPER_MODAL_S3_ENDPOINT_URL", server.endpoint)
        yield server


@pytest.mark.slow
def test_large_audio_is_staged_through_s3_and_read_by_the_container(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeModal()  # the real container class, reading S3 with its own settings
    try:
        backend = fake_backend(
            fake, monkeypatch, max_upload_bytes=1000, s3_staging_prefix="s3://stage/uploads",
            s3_endpoint_url=s3.endpoint,
        )  # fmt: skip
        result = asyncio.run(backend.atranscribe(request(SAMPLE.read_bytes()), timeout=300))
        assert "weekly planning meeting" in result.text.lower()
        staged = [p for m, p in s3.log if m == "PUT" and p.startswith("/stage/uploads/staging/")]
        assert len(staged) == 1  # uploaded once by the client...
        key = staged[0].split("?", 1)[0].removeprefix("/stage/")
        assert "GET" in s3.requests_for(f"/stage/{key}")  # ...and read by the container
        body = s3.client().get_object(Bucket="stage", Key=key)["Body"].read()
        assert body == SAMPLE.read_bytes()
    finally:
        fake.close()
