"""The HTTP API's last compatibility details (#24 items 6 and 7), through real clients on
127.0.0.1 against uvicorn: a stalled upload is answered 408 and closed; OpenAI's form
rules (``file`` and ``model`` required), error fields, long file names, short echoes, and
webhooks that name the job by the id ``GET /v1/jobs`` answers to.

Each test here failed before its fix.
"""

from __future__ import annotations

import functools
import json
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import openai
import pytest

import whisper_modal as wm
from tests import speech
from tests.api_server import ApiServer, multipart
from tests.models_cache import tiny_en_cache
from tests.servers import WebhookReceiver
from tests.wer import wer
from whisper_modal.server import create_app

KEY = "sk-compat-0123456789"
SECRET = "whsec-compat"
SENTENCE = speech.SENTENCES[2]  # 12 words, about 4 s
BODY_TIMEOUT = 1.0  # seconds without a byte of the body


@functools.cache
def _clip() -> bytes:
    samples, _ = speech.make_clip([SENTENCE], gap_seconds=0.2)
    return speech.wav_bytes(samples)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> wm.Client:
    return wm.Client(
        backend="local",
        model="tiny.en",
        cache_dir=tiny_en_cache(),
        device="cpu",
        api_keys=KEY,
        webhook_secret=SECRET,
        webhook_allow_hosts="127.0.0.1",
        jobs_db=tmp_path_factory.mktemp("jobs") / "jobs.sqlite3",
        body_timeout=BODY_TIMEOUT,
    )


@pytest.fixture(scope="module")
def server(client: wm.Client) -> Iterator[ApiServer]:
    with ApiServer(create_app(client)) as running:
        yield running


def _head(path: str, content_type: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------- stalled bodies


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v1/audio/transcriptions", "multipart/form-data; boundary=b"),
        ("/v1/jobs", "application/json"),
    ],
)
def test_a_stalled_body_is_answered_408_and_closed(
    server: ApiServer, path: str, content_type: str
) -> None:
    """Headers promising 1000 bytes, then 5: each connection held open forever before."""
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
    try:
        started = time.monotonic()
        for sock in socks:
            sock.settimeout(BODY_TIMEOUT + 10)
            sock.sendall(_head(path, content_type, 1000) + b"--b\r\n")
        answers = [_read_until_closed(sock) for sock in socks]  # EOF: the server closed it
        elapsed = time.monotonic() - started
    finally:
        for sock in socks:
            sock.close()
    assert elapsed < BODY_TIMEOUT + 4, elapsed
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"connection: close" in head.lower()
        error = json.loads(body)["error"]
        assert error["code"] == "body_timeout" and error["type"] == "invalid_request_error"
        assert "WHISPER_MODAL_BODY_TIMEOUT" in error["message"]


def test_a_slow_upload_that_keeps_coming_is_transcribed(server: ApiServer) -> None:
    """Pieces half the timeout apart, for four times the timeout in all: never idle long."""
    body, content_type = multipart({"model": "whisper-1", "response_format": "text"}, _clip())
    pieces = 8
    step = -(-len(body) // pieces)
    with socket.create_connection(("127.0.0.1", server.port), timeout=120) as sock:
        sock.sendall(_head("/v1/audio/transcriptions", content_type, len(body))[:-2]
                     + b"Connection: close\r\n\r\n")  # fmt: skip
        started = time.monotonic()
        for i in range(0, len(body), step):
            time.sleep(BODY_TIMEOUT / 2)
            sock.sendall(body[i : i + step])
        assert time.monotonic() - started >= 4 * BODY_TIMEOUT
        answer = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert wer(SENTENCE, answer.partition(b"\r\n\r\n")[2].decode()) <= 0.25


# ---------------------------------------------------------------------------- OpenAI's form


def _post(server: ApiServer, path: str, body: bytes, content_type: str) -> tuple[int, Any]:
    request = Request(f"{server.url}{path}", data=body, method="POST", headers={
        "Authorization": f"Bearer {KEY}", "Content-Type": content_type})  # fmt: skip
    try:
        with urlopen(request, timeout=120) as response:
            status, payload = response.status, response.read()
    except HTTPError as exc:
        status, payload = exc.code, exc.read()
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload.decode()


def _error(body: Any) -> dict[str, Any]:
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/v1/audio/translations",
                                  "/v1/jobs"])  # fmt: skip
def test_the_audio_must_be_the_file_field(server: ApiServer, path: str) -> None:
    """A file part under another name was taken as the audio (OpenAI requires ``file``)."""
    body, content_type = multipart({"model": "whisper-1"}, _clip(), name="audio")
    status, answer = _post(server, path, body, content_type)
    assert status == 400, answer
    error = _error(answer)
    assert error["param"] == "file" and error["code"] == "missing_required_parameter"
    assert "'audio'" in error["message"]  # says what was sent instead


@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/v1/audio/translations"])
def test_openais_endpoints_need_a_model(server: ApiServer, path: str) -> None:
    body, content_type = multipart({"response_format": "text"}, _clip())
    status, answer = _post(server, path, body, content_type)
    assert status == 400, answer
    error = _error(answer)
    assert error["param"] == "model" and error["code"] == "missing_required_parameter"


def test_a_job_needs_no_model(server: ApiServer) -> None:
    """The jobs API is ours: its model defaults to the deployment's."""
    body, content_type = multipart({}, _clip())
    status, answer = _post(server, "/v1/jobs", body, content_type)
    assert status == 202, answer


def test_an_empty_file_is_code_empty_through_the_openai_sdk(server: ApiServer) -> None:
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.audio.transcriptions.create(file=("a.wav", b""), model="whisper-1")
    body = caught.value.body
    assert isinstance(body, dict) and body["param"] == "file" and body["code"] == "empty"


# ---------------------------------------------------------------------------- long names


def test_a_long_file_name_is_accepted_through_the_openai_sdk(server: ApiServer) -> None:
    """A 5 KB file name was a 'malformed multipart' 400 (python-multipart's 4 KiB header
    line)."""
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)
    text = sdk.audio.transcriptions.create(
        file=("a" * 5000 + ".wav", _clip()), model="whisper-1", response_format="text"
    )
    assert wer(SENTENCE, text) <= 0.25, text


def test_a_part_header_past_the_limit_is_a_clear_400(server: ApiServer) -> None:
    body, content_type = multipart({"model": "whisper-1"}, _clip(), filename="a" * 70_000)
    status, answer = _post(server, "/v1/audio/transcriptions", body, content_type)
    assert status == 400, answer
    error = _error(answer)
    assert error["code"] == "invalid_form" and "header" in error["message"], error
    assert "malformed" not in error["message"]


def _json(server: ApiServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = Request(f"{server.url}{path}", data=data, method=method,
                      headers={"Authorization": f"Bearer {KEY}",
                               "Content-Type": "application/json"})  # fmt: skip
    try:
        with urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_errors_echo_a_short_piece_of_a_long_name(server: ApiServer) -> None:
    """A 404 for a 100 KB model name repeated all 100 KB."""
    long = "m" * 100_000
    answers = {
        "json model": _json(server, "POST", "/v1/jobs", {"s3_uri": "s3://b/k.wav", "model": long}),
        "json language": _json(
            server, "POST", "/v1/jobs", {"s3_uri": "s3://b/k.wav", "language": long}
        ),
        "retrieve model": _json(server, "GET", "/v1/models/" + long[:8000]),
        "get job": _json(server, "GET", "/v1/jobs/job_" + long[:8000]),
        "cancel job": _json(server, "DELETE", "/v1/jobs/job_" + long[:8000]),
    }
    for fields in ({"model": long[:60_000]}, {"model": "whisper-1",
                                               "response_format": long[:60_000]}):  # fmt: skip
        body, content_type = multipart(fields, _clip())
        answers[f"form {sorted(fields)}"] = _post(
            server, "/v1/audio/transcriptions", body, content_type
        )
    for what, (status, answer) in answers.items():
        assert status in (400, 404), (what, status)
        message = _error(answer)["message"]
        assert len(message) < 400, (what, len(message), message[:200])
        assert "m" * 65 not in message and "m…" in message, (what, message)


# ---------------------------------------------------------------------------- webhooks


def test_the_webhook_names_the_job_by_its_http_id(server: ApiServer) -> None:
    """The payload's ``job_id`` was the backend's ``local-...`` id, which GET /v1/jobs
    answers 404 for; now it is the id the 202 gave, and so is the transcript's."""
    with WebhookReceiver(SECRET) as receiver:
        body, content_type = multipart({"webhook_url": receiver.url}, _clip())
        status, job = _post(server, "/v1/jobs", body, content_type)
        assert status == 202, job
        (hook,) = receiver.wait_for(1, timeout=300)
    payload = hook["json"]
    assert hook["verified"] and payload["status"] == "succeeded"
    assert payload["job_id"] == job["id"], payload["job_id"]
    assert payload["transcript"]["job_id"] == job["id"]
    status, view = _json(server, "GET", f"/v1/jobs/{payload['job_id']}")
    assert status == 200 and view["status"] == "succeeded", view
    assert view["result"]["job_id"] == job["id"]
