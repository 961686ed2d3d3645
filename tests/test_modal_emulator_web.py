"""The HTTP API through Modal's web path: the deployed app's ``web`` function, in a real
container, reached over HTTP on loopback (``tests/emulator/proxy.py``).

Each request becomes a web input; Modal's container runtime runs our ASGI app on it and
streams the request and the response through ``FunctionCallGetDataIn`` and
``FunctionCallPutDataOut``. The callers are the official ``openai`` SDK and plain HTTP.
The app's secret holds an API key, makes ``tiny.en`` the default model and splits audio
over 30 s into 25 s pieces (the 20 s sample is never split; 55 s is, in 3).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
from modal_proto import api_pb2

from tests import speech
from tests.api_server import multipart
from tests.emulator.deployed import Deployed, deploy, on_loop, wait_for
from tests.emulator.proxy import BODY_CHUNK_BYTES, RESULT_PARAM
from tests.wer import wer

ROOT = Path(__file__).parents[1]
SAMPLE = ROOT / "examples" / "sample.flac"
FLAC = {"filename": "sample.flac", "kind": "audio/flac"}  # the sample's own part headers
KEY = "sk-emulated-web"
#: what the sample says (tests/test_modal_emulator.py checks the same words)
WORDS = "weekly planning meeting"
TERMINATED = api_pb2.GenericResult.GENERIC_STATUS_TERMINATED

pytestmark = [pytest.mark.slow, pytest.mark.emulator]


#: the web deployment's secret (the web container's settings come from it and the image)
SECRET = {
    "WHISPER_MODAL_API_KEYS": KEY,
    "WHISPER_MODAL_MODEL": "tiny.en",
    "WHISPER_MODAL_FANOUT_SECONDS": "30",
    "WHISPER_MODAL_FANOUT_CHUNK_SECONDS": "25",
}


@pytest.fixture(scope="module")
def web() -> Iterator[Deployed]:
    """A deployment of its own, with ``SECRET``."""
    with deploy(secret=SECRET) as d:
        yield d


@pytest.fixture(scope="module")
def web_url(web: Deployed) -> str:
    return url_of(web)


def url_of(deployed: Deployed) -> str:
    """The web function's URL, as a client process reads it from Modal."""
    out = deployed.client(
        """
        import json, modal
        fn = modal.Function.from_name("whisper-modal", "web")
        print(json.dumps({"url": fn.get_web_url()}))
        """
    )
    return str(out["url"])


def sdk(web_url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{web_url}/v1", api_key=key, max_retries=0, timeout=300)


def call(
    url: str, method: str = "GET", *, key: str | None = KEY, body: bytes | None = None,
    content_type: str | None = None, timeout: float = 300, extra: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """One HTTP request, redirects not followed: (status, headers by lower-case name, body)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    headers = dict(extra or {})
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if content_type is not None:
        headers["Content-Type"] = content_type
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, response.read()
    finally:
        conn.close()


def called_from(web: Deployed, web_call: str) -> list[str]:
    """The functions that the web request ``web_call``'s input called (it ran and ended as
    a generator: its response went out through data_out)."""
    servicer = web.emulator.servicer
    (web_input,) = on_loop(web, lambda: servicer.function_calls[web_call].inputs)
    # the container reports the input's end after the response's last message went out,
    # which the HTTP client may have read already
    assert wait_for(lambda: on_loop(web, lambda: web_input.output is not None), 60)

    def read() -> list[str]:
        assert web_input.output is not None
        assert web_input.output.data_format == api_pb2.DATA_FORMAT_GENERATOR_DONE
        return [
            servicer.functions[c.function_id].definition.function_name
            for c in servicer.function_calls.values()
            if c.parent_input_id == web_input.input_id
        ]

    return on_loop(web, read)


def web_calls(web: Deployed) -> list[str]:
    """The function calls the web proxy made (one per HTTP request, result URLs none)."""
    return on_loop(web, lambda: list(web.emulator.web.calls))


def test_the_web_url_is_the_proxys_and_serves_the_app(web: Deployed, web_url: str) -> None:
    servicer = web.emulator.servicer
    app_id = servicer.apps["whisper-modal"]
    function_id = servicer.app_objects[app_id]["web"]
    assert web_url == web.emulator.web.urls[function_id]
    assert servicer.functions[function_id].definition.web_url == web_url
    status, _, body = call(f"{web_url}/health", key=None)
    assert status == 200, body
    health = json.loads(body)
    assert health["status"] == "ok" and health["auth"] is True and health["jobs"] == "direct"
    assert health["backend"] == "modal"
    assert {"FunctionCallGetDataIn", "FunctionCallPutDataOut"} <= set(servicer.calls)
    assert not servicer.unimplemented


def test_the_openai_sdk_transcribes_through_the_web_function(web: Deployed, web_url: str) -> None:
    before = set(web_calls(web))
    with SAMPLE.open("rb") as audio:
        text = sdk(web_url).audio.transcriptions.create(
            file=audio, model="whisper-1", response_format="text"
        )
    assert WORDS in text.lower(), text
    with SAMPLE.open("rb") as audio:
        verbose = sdk(web_url).audio.transcriptions.create(
            file=audio, model="whisper-1", response_format="verbose_json"
        )
    assert WORDS in verbose.text.lower() and verbose.segments, verbose
    servicer = web.emulator.servicer
    made = set(web_calls(web)) - before
    assert len(made) == 2  # one web input per request
    # each ran in a web container, which called the GPU class (a call under its input)
    for fc in made:
        assert called_from(web, fc) == ["Transcriber.*"]
    assert not servicer.unimplemented


def test_no_key_or_a_wrong_key_is_401_with_openais_error(web: Deployed, web_url: str) -> None:
    for key in (None, "sk-wrong"):
        status, headers, body = call(f"{web_url}/v1/models", key=key)
        assert status == 401, body
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert error["code"] == "invalid_api_key"
        assert headers["x-request-id"].startswith("req_")
    with pytest.raises(openai.AuthenticationError) as caught, SAMPLE.open("rb") as audio:
        sdk(web_url, key="sk-wrong").audio.transcriptions.create(file=audio, model="whisper-1")
    assert caught.value.status_code == 401
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "invalid_api_key"
    # the right key
    models = sdk(web_url).models.list()
    assert "whisper-1" in {m.id for m in models.data}


def test_a_request_past_the_cut_gets_a_303_to_its_result_url(web: Deployed, web_url: str) -> None:
    """Modal cuts a web request at 150 s with a 303 to its result URL; here the cut is a
    second and the GPU class takes no input until the 303s were given, so both requests
    run past it. curl-like HTTP stops at the 303; the OpenAI SDK follows it and gets the
    transcript from the same call (the upload is not sent twice)."""
    emulator = web.emulator
    audio = SAMPLE.read_bytes()
    body, content_type = multipart({"model": "whisper-1", "response_format": "json"}, audio, **FLAC)
    outcome: dict[str, Any] = {}

    def through_the_sdk() -> None:
        try:
            outcome["text"] = (
                sdk(web_url)
                .audio.transcriptions.create(
                    file=("sample.flac", audio), model="whisper-1", response_format="text"
                )
                .strip()
            )
        except BaseException as exc:  # reported by the test's thread below
            outcome["error"] = exc

    emulator.run(emulator.servicer.pause("Transcriber.*"))
    try:
        with emulator.web.cut(1.0, result_seconds=240.0):
            before = set(web_calls(web))
            redirects = on_loop(web, lambda: emulator.web.redirects)
            status, headers, _ = call(
                f"{web_url}/v1/audio/transcriptions", "POST", body=body, content_type=content_type
            )
            assert status == 303, headers
            location = headers["location"]
            (fc,) = set(web_calls(web)) - before
            assert location == f"/v1/audio/transcriptions?{RESULT_PARAM}={fc}"
            worker = threading.Thread(target=through_the_sdk, daemon=True)
            worker.start()
            assert wait_for(lambda: emulator.web.redirects >= redirects + 2, 120), outcome
    finally:
        emulator.run(emulator.servicer.resume("Transcriber.*"))
    worker.join(300)
    assert not worker.is_alive() and "error" not in outcome, outcome
    assert WORDS in outcome["text"].lower(), outcome
    assert len(set(web_calls(web)) - before) == 2  # the SDK's POST; its GET was the result URL
    # the first request's result URL, read afterwards: the transcript, once more
    with urllib.request.urlopen(
        urllib.request.Request(f"{web_url}{location}", headers={"Authorization": f"Bearer {KEY}"}),
        timeout=300,
    ) as response:
        assert response.status == 200
        assert WORDS in json.loads(response.read())["text"].lower()
    with pytest.raises(urllib.error.HTTPError) as unknown:
        urllib.request.urlopen(f"{web_url}/v1/models?{RESULT_PARAM}=fc-nope", timeout=60)
    assert unknown.value.code == 404


def test_a_job_submitted_over_http_reads_pending_then_cancelled(
    web: Deployed, web_url: str
) -> None:
    """POST /v1/jobs spawns the job inside the web function's input; no GPU container takes
    it (held back), so it reads pending, and after DELETE cancelled, from other inputs."""
    emulator = web.emulator
    servicer = emulator.servicer
    body, content_type = multipart({"model": "whisper-1"}, SAMPLE.read_bytes(), **FLAC)
    held = ("Transcriber.*", "fanout")
    for name in held:
        emulator.run(servicer.pause(name))
    try:
        status, _, answer = call(f"{web_url}/v1/jobs", "POST", body=body, content_type=content_type)
        assert status == 202, answer
        submitted = json.loads(answer)
        job_id = submitted["id"]
        assert job_id.startswith("fc-") and submitted["status"] == "pending"
        status, _, answer = call(f"{web_url}/v1/jobs/{job_id}")
        assert status == 200, answer
        pending = json.loads(answer)
        assert pending["status"] == "pending"
        # when it was submitted, from the job book (another input answers: it was null)
        assert isinstance(pending["created_at"], int)
        assert abs(pending["created_at"] - time.time()) <= 600  # this machine's clock
        status, _, answer = call(f"{web_url}/v1/jobs/{job_id}", "DELETE")
        assert status == 200, answer
        assert json.loads(answer)["status"] == "cancelled"
    finally:
        for name in held:
            emulator.run(servicer.resume(name))
    status, _, answer = call(f"{web_url}/v1/jobs/{job_id}")
    assert status == 200, answer
    view = json.loads(answer)
    assert view["status"] == "cancelled", view
    assert view["created_at"] == pending["created_at"]
    # the job's call was spawned inside the POST's web input, and never ran
    job = on_loop(web, lambda: servicer.function_calls[job_id])
    parent = on_loop(web, lambda: servicer.inputs[job.parent_input_id])
    assert parent.function_call_id in web_calls(web)
    assert all(i.output is not None and i.output.result.status == TERMINATED for i in job.inputs)
    assert all(not i.tasks for i in job.inputs)
    # an id that is not a job of this app is 404
    status, _, answer = call(f"{web_url}/v1/jobs/fc-unknown")
    assert status == 404, answer


def test_a_long_upload_as_a_job_fans_out_to_its_transcript(web: Deployed, web_url: str) -> None:
    """About 55 s of WAV (more than one data_in message) submitted as a job: the app's
    orchestrator splits it over GPU containers; polled from other web inputs until it
    succeeds, with the job book's progress, and its text read as ``?format=txt``."""
    samples, reference = speech.make_clip(speech.SENTENCES[:12], gap_seconds=0.7)
    audio = speech.wav_bytes(samples)
    assert len(audio) > BODY_CHUNK_BYTES
    body, content_type = multipart(
        {"model": "whisper-1", "language": "en"}, audio, filename="long.wav", kind="audio/wav"
    )
    before = set(web_calls(web))
    status, _, answer = call(f"{web_url}/v1/jobs", "POST", body=body, content_type=content_type)
    assert status == 202, answer
    job_id = json.loads(answer)["id"]
    (post,) = set(web_calls(web)) - before
    servicer = web.emulator.servicer
    assert on_loop(web, lambda: len(servicer.function_calls[post].data_in)) >= 2

    views: list[dict[str, Any]] = []

    def succeeded() -> bool:
        code, _, got = call(f"{web_url}/v1/jobs/{job_id}")
        assert code == 200, got
        views.append(json.loads(got))
        return bool(views[-1]["status"] == "succeeded")

    assert wait_for(succeeded, 300), views[-1]
    assert {v["status"] for v in views} <= {"pending", "running", "succeeded"}, views
    progress = views[-1]["progress"]  # from the job book's record (it was always null)
    assert progress is not None and progress["done"] == progress["total"] >= 3, progress
    assert isinstance(views[-1]["created_at"], int)
    code, headers, text = call(f"{web_url}/v1/jobs/{job_id}?format=txt")
    assert code == 200 and headers["content-type"].startswith("text/plain"), text
    assert wer(reference, text.decode()) <= 0.12, text
    assert called_from(web, post) == ["fanout"]  # the job, spawned by the POST


def test_proxy_auth_turns_callers_without_a_token_away_before_any_container() -> None:
    """``WHISPER_MODAL_WEB_PROXY_AUTH=1``: our app asks no bearer key because Modal's proxy
    asks for a proxy auth token; a request without one (or with a wrong one) is Modal's
    401 and never becomes an input, and one with the token reaches the app."""
    token = {"Modal-Key": "wk-emulated", "Modal-Secret": "ws-emulated"}
    with deploy(
        secret={"WHISPER_MODAL_MODEL": "tiny.en"}, settings={"WHISPER_MODAL_WEB_PROXY_AUTH": "1"}
    ) as guarded:
        guarded.emulator.web.tokens[token["Modal-Key"]] = token["Modal-Secret"]
        url = url_of(guarded)
        refused = [
            {},
            {"Modal-Key": token["Modal-Key"]},
            {"Modal-Key": token["Modal-Key"], "Modal-Secret": "ws-wrong"},
            {"Modal-Key": "wk-unknown", "Modal-Secret": token["Modal-Secret"]},
        ]
        for headers in refused:
            status, _, body = call(f"{url}/v1/models", key=None, extra=headers)
            assert status == 401 and body.startswith(b"modal-http: "), (headers, body)
        status, _, body = call(f"{url}/v1/models", key=None)
        assert body == b"modal-http: missing credentials for proxy authorization"  # Modal's
        assert web_calls(guarded) == []  # nothing reached a container
        client = openai.OpenAI(
            base_url=f"{url}/v1", api_key="unused", default_headers=token, max_retries=0,
            timeout=300,
        )  # fmt: skip
        with SAMPLE.open("rb") as audio:
            text = client.audio.transcriptions.create(
                file=audio, model="whisper-1", response_format="text"
            )
        assert WORDS in text.lower(), text
        assert len(web_calls(guarded)) == 1
