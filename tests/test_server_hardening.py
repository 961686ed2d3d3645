"""The HTTP API under an adversary (#24): real clients on 127.0.0.1 against uvicorn.

Each test here failed before its fix: typed 400s for hostile JSON, key owners, a socket
guard against telemetry, a slow webhook receiver, a stalled upload, OpenAI's form rules.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

import openai
import pytest

import whisper_modal as wm
from tests import speech
from tests.api_server import ApiServer, ServeProcess, multipart
from tests.models_cache import tiny_en_cache
from tests.wer import wer
from whisper_modal.server import create_app

KEY = "sk-hardening-0123456789"
OTHER = "sk-hardening-other-key"  # a second bare key: its own owner
ALICE_OLD, ALICE_NEW, BOB = "sk-alice-old-01234", "sk-alice-new-56789", "sk-bob-0123456789"
ROOT = Path(__file__).parents[1]
SENTENCE = speech.SENTENCES[2]  # 12 words, about 4 s


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
        webhook_secret="whsec-hardening",
        webhook_allow_hosts="127.0.0.1",
        api_keys=f"{KEY},{OTHER},alice:{ALICE_OLD},alice:{ALICE_NEW},bob:{BOB}",
        jobs_db=tmp_path_factory.mktemp("jobs") / "jobs.sqlite3",
    )


@pytest.fixture(scope="module")
def server(client: wm.Client) -> Iterator[ApiServer]:
    with ApiServer(create_app(client)) as running:
        yield running


@pytest.fixture
def sdk(server: ApiServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)


def _call(server: ApiServer, method: str, path: str, body: Any = None, key: str | None = KEY,
          raw: bytes | None = None) -> tuple[int, Any]:  # fmt: skip
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = Request(f"{server.url}{path}", data=data, method=method)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urlopen(request, timeout=120) as response:
            status, payload = response.status, response.read()
    except Exception as exc:  # urllib's HTTPError carries the answer
        status, payload = exc.code, exc.read()  # type: ignore[attr-defined]
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload.decode()


def _error(body: Any) -> dict[str, Any]:
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


# ---------------------------------------------------------------------------- 400, not 500


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("language", {"x": 1}),
        ("language", ["en"]),
        ("prompt", 7),
        ("model", {"name": "tiny.en"}),
        ("mode", ["batched"]),
        ("task", {"t": 1}),
        ("webhook_url", {"u": 1}),
        ("temperature", {"t": 0}),
    ],
)
def test_a_json_field_of_the_wrong_type_is_a_400_naming_it(
    server: ApiServer, field: str, value: Any
) -> None:
    status, body = _call(server, "POST", "/v1/jobs", {"s3_uri": "s3://b/k.wav", field: value})
    assert status == 400, body
    error = _error(body)
    assert error["param"] == field and error["code"] == "invalid_value"


@pytest.mark.parametrize("depth", [100_000, 100])
def test_deeply_nested_json_is_a_400(server: ApiServer, depth: int) -> None:
    # 100k levels blew json.loads' recursion limit (a 500); a job needs three at most
    nested = b'{"s3_uri": "s3://b/k.wav", "options": ' + b"[" * depth + b"]" * depth + b"}"
    status, body = _call(server, "POST", "/v1/jobs", raw=nested)
    assert status == 400, body
    assert _error(body)["code"] == "invalid_json"
    deep_language = (
        b'{"s3_uri": "s3://b/k.wav", "language": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"
    )
    status, body = _call(server, "POST", "/v1/jobs", raw=deep_language)
    assert status == 400, body


def test_a_json_job_body_is_small(server: ApiServer) -> None:
    # a JSON job names an S3 key and options: 2 MiB of it is not a job (the form limit is
    # for audio); refused from its Content-Length, before the body
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {2 * 1024 * 1024}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(head)
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"file_too_large"' in answer


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("field", "value"), [("language", "xx"), ("temperature", 2.0), ("prompt", "p" * 5000)]
)
def test_a_bad_option_names_its_field_through_the_openai_sdk(
    sdk: openai.OpenAI, field: str, value: Any
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.audio.transcriptions.create(
            file=("a.wav", b"RIFF"), model="whisper-1", **{field: value}
        )
    body = caught.value.body
    assert isinstance(body, dict) and body["param"] == field and body["code"] == "invalid_value"


# ---------------------------------------------------------------------------- no phoning home

# Installed into the served process as ``sitecustomize``: every connect and name lookup to
# anything but loopback (or a Unix socket) is written to $NET_GUARD_LOG and refused.
_GUARD = """
import os, socket

_log = os.environ["NET_GUARD_LOG"]

def _loopback(host):
    return str(host) in ("localhost", "::1") or str(host).startswith("127.")

def _refuse(what):
    with open(_log, "a") as f:
        f.write(what + "\\n")
    raise OSError("network guard: " + what)

_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
        _refuse(f"connect {address!r}")
    return _connect(self, address)

def connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
        _refuse(f"connect_ex {address!r}")
    return _connect_ex(self, address)

def getaddrinfo(host, *args, **kwargs):
    if host is not None and not _loopback(host):
        _refuse(f"getaddrinfo {host!r}")
    return _getaddrinfo(host, *args, **kwargs)

socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
"""


def test_serving_a_transcription_opens_no_outside_socket_and_leaves_no_telemetry(
    tmp_path: Path,
) -> None:
    """onnxruntime (the VAD) ships Microsoft's telemetry on: a device id and an event
    database under ~/.cache/Microsoft, ``$TMPDIR/.ses``, posts to events.data.microsoft.com.
    The served process runs with its own HOME and TMPDIR and a socket guard."""
    guard, home, tmp = tmp_path / "guard", tmp_path / "home", tmp_path / "tmp"
    for folder in (guard, home, tmp):
        folder.mkdir()
    (guard / "sitecustomize.py").write_text(_GUARD)
    log = tmp_path / "net.log"
    env = {
        "PYTHONPATH": f"{guard}{os.pathsep}{ROOT}",
        "NET_GUARD_LOG": str(log),
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "WHISPER_MODAL_MODEL": "tiny.en",
        "WHISPER_MODAL_CACHE_DIR": str(tiny_en_cache()),
        "WHISPER_MODAL_DEVICE": "cpu",
        "WHISPER_MODAL_API_KEYS": KEY,
        "WHISPER_MODAL_JOBS_DB": str(tmp_path / "jobs.sqlite3"),
    }
    env = {k: v for k, v in {**os.environ, **env}.items() if not k.startswith("ORT_")}
    probe = "import socket\ntry: socket.getaddrinfo('example.com', 443)\nexcept OSError: pass"
    subprocess.run([sys.executable, "-c", probe], env=env, timeout=60, check=True)
    assert "example.com" in log.read_text()  # the guard is live in a child process
    log.unlink()
    served = ServeProcess(env).start()
    try:
        sdk = openai.OpenAI(base_url=f"{served.url}/v1", api_key=KEY, max_retries=0, timeout=300)
        text = sdk.audio.transcriptions.create(
            file=("clip.wav", _clip()), model="whisper-1", response_format="text"
        )
    finally:
        served.stop()
    assert wer(SENTENCE, text) <= 0.25, text  # the VAD ran: it is on by default
    assert not log.exists(), log.read_text()
    assert not (home / ".cache" / "Microsoft").exists(), sorted(home.rglob("*"))
    assert not (tmp / ".ses").exists()


# ---------------------------------------------------------------------------- owners


def _submit_form(url: str, key: str, audio: bytes) -> str:
    boundary = "wm-hardening"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + audio
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = Request(f"{url}/v1/jobs", data=body, method="POST", headers={
        "Authorization": f"Bearer {key}",
        "Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
    with urlopen(request, timeout=60) as response:
        assert response.status == 202
        job_id: str = json.loads(response.read())["id"]
    return job_id


def test_a_job_belongs_to_the_owner_of_its_key(server: ApiServer, client: wm.Client) -> None:
    """Bob can neither read nor cancel Alice's job (404, as for no job); Alice's rotated
    key reads it; the job store records a hash of the owner, never a key."""
    job_id = _submit_form(server.url, ALICE_OLD, _clip())
    for method in ("GET", "DELETE"):
        status, body = _call(server, method, f"/v1/jobs/{job_id}", key=BOB)
        assert status == 404, body
        assert _error(body)["code"] == "job_not_found"
        status, body = _call(server, method, f"/v1/jobs/{job_id}", key=KEY)  # a bare key
        assert status == 404, body
    view = _wait(server, job_id, ALICE_NEW)  # the owner's other key: rotation works
    assert view["status"] == "succeeded" and wer(SENTENCE, view["result"]["text"]) <= 0.25
    # the SDK's generic GET with Bob's key raises NotFoundError, not the transcript
    bob = openai.OpenAI(base_url=f"{server.url}/v1", api_key=BOB, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        bob.get(f"/jobs/{job_id}", cast_to=object)
    # nothing in the job store names a key
    folder = Path(client.settings.jobs_db).parent  # the database and its WAL
    raw = b"".join(p.read_bytes() for p in folder.iterdir() if p.is_file())
    for key in (KEY, ALICE_OLD, ALICE_NEW, BOB):
        assert key.encode() not in raw


def test_every_v1_route_and_the_schema_refuse_a_request_without_a_key(
    server: ApiServer,
) -> None:
    """Walk the app's routes (so a route added later is covered too): each one under /v1,
    and the schema, answers 401 to no key and to a wrong key, before reading any body."""
    schema = server.app.openapi()  # every route FastAPI serves, included routers too
    paths: list[tuple[str, str]] = [("GET", "/openapi.json")]
    for path, operations in schema["paths"].items():
        concrete = path.replace("{job_id}", "wm-nope").replace("{model}", "tiny.en")
        paths += [(m.upper(), concrete) for m in sorted(operations) if path.startswith("/v1")]
    assert len(paths) >= 8, paths  # 7 routes under /v1 (two methods on jobs/{id}) + schema
    for method, path in paths:
        for key in (None, "sk-wrong"):
            # a body that would be a 400 if it were read: the 401 comes first
            status, body = _call(
                server, method, path, key=key, raw=b"{" if method == "POST" else None
            )
            assert status == 401, (method, path, key, body)
            assert _error(body)["code"] == "invalid_api_key"
    assert _call(server, "GET", "/health", key=None)[0] == 200  # the one open route


def test_a_bare_key_is_the_owner_of_its_own_jobs(server: ApiServer) -> None:
    job_id = _submit_form(server.url, KEY, b"not audio " * 100)  # fails fast; still KEY's
    assert _call(server, "GET", f"/v1/jobs/{job_id}", key=OTHER)[0] == 404
    assert _call(server, "DELETE", f"/v1/jobs/{job_id}", key=OTHER)[0] == 404
    assert _wait(server, job_id, KEY)["status"] == "failed"  # and it was not cancelled


def _wait(server: ApiServer, job_id: str, key: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, view = _call(server, "GET", f"/v1/jobs/{job_id}", key=key)
        assert status == 200, view
        if view["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return dict(view)
        time.sleep(0.2)


# ---------------------------------------------------------------------------- slow webhooks


class HangingReceiver:
    """Accepts webhook connections on 127.0.0.1 and never answers (holds them open)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/hook"
        self.first = threading.Event()
        self.first_at = 0.0
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            self._held.append(conn)
            if not self.first.is_set():
                self.first_at = time.monotonic()
                self.first.set()

    def close(self) -> None:
        self._sock.close()
        for conn in self._held:
            conn.close()


def _submit_json_form(url: str, fields: dict[str, str]) -> str:
    boundary = "wm-hook"
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    )
    body += (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        ).encode()
        + _clip()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = Request(f"{url}/v1/jobs", data=body, method="POST", headers={
        "Authorization": f"Bearer {KEY}",
        "Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
    with urlopen(request, timeout=60) as response:
        job_id: str = json.loads(response.read())["id"]
    return job_id


def test_a_hanging_webhook_receiver_delays_no_other_job(server: ApiServer) -> None:
    """Job A's receiver accepts and never answers (5 attempts x 10 s + backoff, about a
    minute of retries). Job B, submitted behind A, must not wait for them, and A must read
    final while its webhook is still being tried."""
    receiver = HangingReceiver()
    try:
        a = _submit_json_form(server.url, {"model": "whisper-1", "webhook_url": receiver.url})
        b = _submit_json_form(server.url, {"model": "whisper-1"})
        assert receiver.first.wait(120), "job A's webhook never came"
        view_a = _wait(server, a, KEY)
        view_b = _wait(server, b, KEY)
        b_done = time.monotonic()
    finally:
        receiver.close()
    assert view_a["status"] == "succeeded"  # final before (and while) its webhook is tried
    assert view_b["status"] == "succeeded"
    delay = b_done - receiver.first_at
    print(f"\njob B finished {delay:.1f} s after job A's webhook began hanging")
    assert delay < 30.0  # about 57 s when the webhook ran on the job thread


def test_a_full_jobs_queue_answers_429_with_retry_after(client: wm.Client) -> None:
    with ApiServer(create_app(client, max_queued_jobs=1)) as small:
        answers = []
        for _ in range(3):  # back to back: the first is still queued or running
            body, ctype = multipart({"model": "whisper-1"}, _clip(), kind=None)
            request = Request(f"{small.url}/v1/jobs", data=body, method="POST", headers={
                "Authorization": f"Bearer {KEY}", "Content-Type": ctype})  # fmt: skip
            try:
                with urlopen(request, timeout=60) as response:
                    answers.append((response.status, dict(response.headers), response.read()))
            except Exception as exc:  # urllib's HTTPError carries the answer
                answers.append((exc.code, dict(exc.headers), exc.read()))  # type: ignore[attr-defined]
        first = json.loads(answers[0][2])["id"]
        assert answers[0][0] == 202
        refused = [a for a in answers[1:] if a[0] == 429]
        assert refused, [a[0] for a in answers]
        assert {k.lower(): v for k, v in refused[0][1].items()}["retry-after"] == "10"
        assert _error(json.loads(refused[0][2]))["code"] == "queue_full"
        assert _wait(small, first, KEY)["status"] == "succeeded"
