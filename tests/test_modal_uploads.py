"""Large inputs (fault 5 of issue 10): upload deadlines grow with the payload, and audio
over ``max_upload_bytes`` is staged through S3 (real moto over HTTP) or refused.

The Modal side is the emulator of Modal's API on loopback (``tests/emulator``): unmodified
``modal`` in this process, real container processes. Payload plumbing goes to the echo
app (``tests/echo_app.py``, any bytes answered at once); staging goes to the real app,
deployed with the object store in its secret, whose container decodes what it read."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import whisper_modal.backends.modal as modal_backend
from tests.emulator.deployed import deploy, requests_of
from tests.servers import S3Server, moto_server
from whisper_modal.backends.modal import ModalBackend
from whisper_modal.backends.modal_transport import (
    MIN_UPLOAD_BYTES_PER_SECOND,
    spawn_deadline,
    upload_seconds,
)
from whisper_modal.config import Settings
from whisper_modal.errors import ConfigurationError
from whisper_modal.options import TranscribeOptions
from whisper_modal.wire import Request

SAMPLE = Path(__file__).parents[1] / "examples" / "sample.flac"


def request(audio: bytes, client_job_id: str | None = None) -> Request:
    options = TranscribeOptions(model="tiny.en", language="en")
    return Request(options=options, audio=audio, client_job_id=client_job_id)


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


def echo_backend(deployed: Any, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> ModalBackend:
    """A ``ModalBackend`` on unmodified ``modal`` to the emulator's echo app, whose
    "engine" answers ``ok <client_job_id>`` for any bytes (``tests/echo_app.py``)."""
    settings = deployed.settings(monkeypatch, app_name="whisper-modal-echo", **overrides)
    return ModalBackend(settings)


def arrived(deployed: Any, client_job_id: str) -> list[tuple[Any, dict[str, Any]]]:
    """The echo app's inputs that carried the request ``client_job_id``."""
    return [
        (state, wire)
        for state, wire in requests_of(deployed, app="whisper-modal-echo")
        if wire.get("client_job_id") == client_job_id
    ]


@pytest.mark.slow
@pytest.mark.emulator
def test_submit_and_call_deadlines_include_the_upload(
    echo_wire: Any, monkeypatch: pytest.MonkeyPatch, recorded_deadlines: list[float | None]
) -> None:
    # 8 MiB of bytes with no header go to one container (not the orchestrator,
    # which would decode them) while the size could not hold over 10,000 s of audio
    backend = echo_backend(echo_wire, monkeypatch, connect_timeout=5, fanout_seconds=10_000)
    audio = b"x" * (8 * 1024**2)  # 8 MiB: over both of Modal's inline limits
    assert not backend.fans_out(request(audio))
    asyncio.run(backend.asubmit(request(audio, "upload-submit")))
    assert recorded_deadlines[-1] == pytest.approx(60 + 5 + 8.0)
    t = asyncio.run(backend.atranscribe(request(audio, "upload-call"), timeout=60))
    # a call is spawn (the upload rides inside it) + get (the call's own 60 s, plus
    # the connect backstop against a hung connection)
    assert recorded_deadlines[-2:] == [pytest.approx(60 + 5 + 8.0), pytest.approx(60 + 5)]
    assert t.text == "ok upload-call"  # a container answered that very request
    for client_job_id in ("upload-submit", "upload-call"):
        ((state, wire),) = arrived(echo_wire, client_job_id)
        # too big to travel inline: Modal's client put the arguments in blob storage
        assert state.item.WhichOneof("args_oneof") == "args_blob_id"
        assert wire["audio"] == audio


@pytest.mark.slow
@pytest.mark.emulator
def test_too_large_without_staging_is_refused_before_any_call(
    echo_wire: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = echo_backend(echo_wire, monkeypatch, max_upload_bytes=1000)
    calls = echo_wire.emulator.servicer.calls
    maps = calls.count("FunctionMap")
    with pytest.raises(ConfigurationError, match="WHISPER_MODAL_S3_STAGING_PREFIX"):
        asyncio.run(backend.atranscribe(request(b"x" * 1001, "too-big-call"), timeout=30))
    with pytest.raises(ConfigurationError, match="1001 bytes of audio is over the 1000 bytes"):
        asyncio.run(backend.asubmit(request(b"x" * 1001, "too-big-submit")))
    assert calls.count("FunctionMap") == maps  # nothing was sent to Modal
    assert not arrived(echo_wire, "too-big-call") and not arrived(echo_wire, "too-big-submit")
    small = asyncio.run(backend.atranscribe(request(b"x" * 1000, "just-fits"), timeout=60))
    assert small.text == "ok just-fits"
    ((_, wire),) = arrived(echo_wire, "just-fits")
    assert wire["audio"] == b"x" * 1000  # the limit itself goes as it is


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with moto_server() as server:  # fake AWS credentials in this process's environment
        server.client().create_bucket(Bucket="stage")
        yield server


@pytest.fixture(scope="module")
def s3_deployed(s3: S3Server) -> Iterator[Any]:
    """The app deployed with the object store in its secret, as an account's would carry
    it: the container reads S3 with its own settings and credentials, not the test's."""
    with deploy(secret=s3.sdk_environment()) as d:
        yield d


@pytest.mark.slow
@pytest.mark.emulator
def test_large_audio_is_staged_through_s3_and_read_by_the_container(
    s3: S3Server, s3_deployed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = s3_deployed.settings(
        monkeypatch, max_upload_bytes=1000, s3_staging_prefix="s3://stage/uploads",
        s3_endpoint_url=s3.endpoint,
    )  # fmt: skip
    backend = ModalBackend(settings)
    sample = SAMPLE.read_bytes()
    result = asyncio.run(backend.atranscribe(request(sample, "staged"), timeout=300))
    assert "weekly planning meeting" in result.text.lower()
    staged = [p for m, p in s3.log if m == "PUT" and p.startswith("/stage/uploads/staging/")]
    assert len(staged) == 1  # uploaded once by the client...
    key = staged[0].split("?", 1)[0].removeprefix("/stage/")
    assert "GET" in s3.requests_for(f"/stage/{key}")  # ...and read by the container
    body = s3.client().get_object(Bucket="stage", Key=key)["Body"].read()
    assert body == sample
    ((_, wire),) = [
        (state, w) for state, w in requests_of(s3_deployed) if w.get("client_job_id") == "staged"
    ]
    assert not wire.get("audio") and key in json.dumps(wire, default=str)  # no bytes inline
