"""The HTTP API under an adversary (#24): real clients on 127.0.0.1 against uvicorn.

Each test here failed before its fix: typed 400s for hostile JSON, key owners, a socket
guard against telemetry, a slow webhook receiver, a stalled upload, OpenAI's form rules.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.request import Request, urlopen

import openai
import pytest

import whisper_modal as wm
from tests.api_server import ApiServer
from tests.models_cache import tiny_en_cache
from whisper_modal.server import create_app

KEY = "sk-hardening-0123456789"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> wm.Client:
    return wm.Client(
        backend="local",
        model="tiny.en",
        cache_dir=tiny_en_cache(),
        device="cpu",
        api_keys=KEY,
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
