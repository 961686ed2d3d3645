"""The HTTP API as a gateway to Modal: the same app over the strict Modal fake.

The fake runs the real container class (and the real tiny.en engine) behind the real
``ModalBackend``, so this is the path the Modal web function takes: OpenAI SDK ->
server -> Client -> ModalBackend -> "container". Jobs are stateless here (the job id is
the FunctionCall id), as on the web function.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Iterator
from typing import Any

import modal.exception as me
import openai
import pysrt
import pytest

from tests import speech
from tests.api_server import ApiServer
from tests.fakes import fake_client
from tests.fakes.modal_fake import FakeFunctionCall, FakeModal
from tests.wer import wer
from whisper_modal.server import create_app

pytestmark = pytest.mark.slow

KEY = "sk-modal-gateway"
OTHER = "sk-modal-other-owner"
SENTENCE = speech.SENTENCES[3]
MAX_WER = 0.25


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeModal]:
    modal_fake = FakeModal()
    yield modal_fake
    modal_fake.close()


@pytest.fixture(scope="module")
def server(fake: FakeModal) -> Iterator[ApiServer]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        client = fake_client(fake, monkeypatch, api_keys=f"{KEY},other:{OTHER}", backend="modal")
        with ApiServer(create_app(client, jobs="direct")) as running:
            yield running


@pytest.fixture(scope="module")
def clip() -> bytes:
    return speech.wav_bytes(speech.synthesize(SENTENCE))


@pytest.fixture
def sdk(server: ApiServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=300)


def test_transcription_through_the_modal_backend(
    sdk: openai.OpenAI, fake: FakeModal, clip: bytes
) -> None:
    before = fake.calls["run"]
    text = sdk.audio.transcriptions.create(
        file=("clip.wav", clip), model="whisper-1", response_format="text"
    )
    assert wer(SENTENCE, text) <= MAX_WER, text
    assert fake.calls["run"] == before + 1  # one container call, no local fallback


def test_engine_failure_is_a_500_with_a_request_id(sdk: openai.OpenAI, fake: FakeModal,
                                                  clip: bytes) -> None:  # fmt: skip
    fake.faults.fail_next("run", me.RemoteError("CUDA error: an illegal memory access"))
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.audio.transcriptions.create(file=("clip.wav", clip), model="whisper-1")
    error = caught.value
    assert error.status_code == 500
    request_id = error.response.headers["x-request-id"]
    body: Any = error.body
    assert request_id in body["message"] and body["code"] == "engine_failed"
    assert "Traceback" not in error.response.text


def test_jobs_are_modal_function_calls(server: ApiServer, sdk: openai.OpenAI,
                                       clip: bytes) -> None:  # fmt: skip
    job: Any = sdk.post(
        "/jobs",
        cast_to=object,
        options={"headers": {"Content-Type": "multipart/form-data"}},
        files={"file": ("clip.wav", clip)},
        body={"model": "whisper-1"},
    )
    assert job["id"].startswith("fc-")  # stateless: any web container can answer for it
    # another owner's key: the job book's record names the submitter's owner, not theirs
    other = openai.OpenAI(base_url=f"{sdk.base_url}", api_key=OTHER, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.get(f"/jobs/{job['id']}", cast_to=object)
    with pytest.raises(openai.NotFoundError):
        other.delete(f"/jobs/{job['id']}", cast_to=object)
    deadline = time.monotonic() + 300
    while True:
        view: Any = sdk.get(f"/jobs/{job['id']}", cast_to=object)
        if view["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert view["status"] == "succeeded", view
    srt = sdk.get(
        f"/jobs/{job['id']}", cast_to=str, options={"params": {"format": "srt"}}
    )  # the SDK's generic GET, text answer
    assert wer(SENTENCE, " ".join(s.text for s in pysrt.from_string(srt))) <= MAX_WER
    with pytest.raises(openai.NotFoundError):
        sdk.get("/jobs/fc-doesnotexist", cast_to=object)


def test_jobs_of_other_apps_are_not_found_and_not_cancelled(
    sdk: openai.OpenAI, fake: FakeModal
) -> None:
    """Any FunctionCall id of the workspace would do otherwise: the job book has no record
    of one this app never ran, so the stateless jobs API answers 404 and touches nothing."""
    foreign = FakeFunctionCall(fake, "fc-another-apps-call", cf.Future())  # still queued
    fake.register(foreign)
    cancels = fake.calls["cancel"]
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.get(f"/jobs/{foreign.object_id}", cast_to=object)
    body: Any = caught.value.body
    assert body["code"] == "job_not_found" and foreign.object_id in body["message"]
    with pytest.raises(openai.NotFoundError):
        sdk.delete(f"/jobs/{foreign.object_id}", cast_to=object)
    assert not foreign.cancelled and fake.calls["cancel"] == cancels
