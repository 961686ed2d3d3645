"""The HTTP API as a gateway to Modal: the same app over the emulator of Modal's API.

The server's ``Client`` runs on unmodified ``modal`` pointed at the emulator on loopback
(``tests/emulator``): the deployed app's container class (and the real tiny.en engine, on
CPU) runs each input in a real container process, so this is the path the Modal web
function takes: OpenAI SDK -> server -> Client -> ModalBackend -> gRPC -> container.
Jobs are stateless here (the job id is the FunctionCall id), as on the web function.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import modal
import openai
import pysrt
import pytest

from tests import speech
from tests.api_server import ApiServer
from tests.emulator.deployed import executions, on_loop, outcomes
from tests.wer import wer
from whisper_modal.options import TranscribeOptions
from whisper_modal.server import create_app
from whisper_modal.wire import Request

pytestmark = [pytest.mark.slow, pytest.mark.emulator]

KEY = "sk-modal-gateway"
OTHER = "sk-modal-other-owner"
SENTENCE = speech.SENTENCES[3]
MAX_WER = 0.25


@pytest.fixture(scope="module")
def server(deployed: Any) -> Iterator[ApiServer]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        client = deployed.sdk(monkeypatch, api_keys=f"{KEY},other:{OTHER}")
        with ApiServer(create_app(client, jobs="direct")) as running:
            yield running
        client.close()


@pytest.fixture(scope="module")
def clip() -> bytes:
    return speech.wav_bytes(speech.synthesize(SENTENCE))


@pytest.fixture
def sdk(server: ApiServer, wire: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=300)


def test_transcription_through_the_modal_backend(
    sdk: openai.OpenAI, wire: Any, clip: bytes
) -> None:
    before, packed_before = executions(wire), executions(wire, "PackedTranscriber")
    text = sdk.audio.transcriptions.create(
        file=("clip.wav", clip), model="whisper-1", response_format="text"
    )
    assert wer(SENTENCE, text) <= MAX_WER, text
    ran = executions(wire) - before
    assert sorted(ran.values()) == [1]  # one container run of one request, no retry
    (client_job_id,) = ran
    assert outcomes(wire)[client_job_id] == {"completed": 1}
    assert executions(wire, "PackedTranscriber") == packed_before  # not the batched class


def test_engine_failure_is_a_500_with_a_request_id(sdk: openai.OpenAI, wire: Any,
                                                  clip: bytes) -> None:  # fmt: skip
    # the container's exception, serialised by Modal's container code, read by modal's client
    wire.emulator.servicer.faults.fail_inputs(
        "Transcriber", RuntimeError("CUDA error: an illegal memory access")
    )
    before = executions(wire)
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.audio.transcriptions.create(file=("clip.wav", clip), model="whisper-1")
    error = caught.value
    assert error.status_code == 500
    request_id = error.response.headers["x-request-id"]
    body: Any = error.body
    assert request_id in body["message"] and body["code"] == "engine_failed"
    assert "Traceback" not in error.response.text  # the remote traceback stays in the logs
    assert "RuntimeError: CUDA error" in body["message"]  # the container's own exception
    assert ("Transcriber", "fail") in wire.emulator.servicer.faults.injected
    ran = executions(wire) - before
    assert sorted(ran.values()) == [1]  # the failure was the answer: not run again
    assert outcomes(wire)[next(iter(ran))] == {"failed": 1}


def test_jobs_are_modal_function_calls(server: ApiServer, sdk: openai.OpenAI, wire: Any,
                                       clip: bytes) -> None:  # fmt: skip
    job: Any = sdk.post(
        "/jobs",
        cast_to=object,
        options={"headers": {"Content-Type": "multipart/form-data"}},
        files={"file": ("clip.wav", clip)},
        body={"model": "whisper-1"},
    )
    assert job["id"].startswith("fc-")  # stateless: any web container can answer for it
    assert job["id"] in wire.emulator.servicer.function_calls  # Modal's own call id
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
    assert not wire.emulator.servicer.function_calls[job["id"]].cancelled  # not by OTHER
    srt = sdk.get(
        f"/jobs/{job['id']}", cast_to=str, options={"params": {"format": "srt"}}
    )  # the SDK's generic GET, text answer
    assert wer(SENTENCE, " ".join(s.text for s in pysrt.from_string(srt))) <= MAX_WER
    with pytest.raises(openai.NotFoundError):
        sdk.get("/jobs/fc-doesnotexist", cast_to=object)


def test_jobs_of_other_apps_are_not_found_and_not_cancelled(
    sdk: openai.OpenAI, echo_wire: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any FunctionCall id of the workspace would do otherwise: the job book has no record
    of one this app never ran, so the stateless jobs API answers 404 and touches nothing."""
    servicer = echo_wire.emulator.servicer
    servicer.faults.hold_inputs("Transcriber", 300)  # still queued while the API is asked
    echo_wire.use(monkeypatch)
    echo = modal.Cls.from_name("whisper-modal-echo", "Transcriber")(model="tiny.en")
    request = Request(options=TranscribeOptions(model="tiny.en"), audio=b"echo",
                      client_job_id="another-apps-job")  # fmt: skip
    foreign = echo.transcribe.spawn(request.to_wire())
    call_id = str(foreign.object_id)
    assert call_id.startswith("fc-") and ("Transcriber", "hold") in servicer.faults.injected
    cancels = servicer.calls.count("FunctionCallCancel")
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.get(f"/jobs/{call_id}", cast_to=object)
    body: Any = caught.value.body
    assert body["code"] == "job_not_found" and call_id in body["message"]
    with pytest.raises(openai.NotFoundError):
        sdk.delete(f"/jobs/{call_id}", cast_to=object)
    call = servicer.function_calls[call_id]
    assert on_loop(echo_wire, lambda: [i.status for i in call.inputs]) == ["pending"]
    assert not call.cancelled and servicer.calls.count("FunctionCallCancel") == cancels
    servicer.faults.release()  # the other app's job goes on, untouched
    assert foreign.get(timeout=120)["text"] == "ok another-apps-job"
