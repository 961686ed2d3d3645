"""The HTTP API's parts without a model: error mapping, keys, SSRF guard, options, store.

Plus the Modal web function as the real ``modal`` package registers it (offline), and the
``serve`` command's refusal to bind a public interface without keys.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import whisper_modal as wm
from whisper_modal import errors as e
from whisper_modal.cli import main as cli_main
from whisper_modal.config import Settings, split_list
from whisper_modal.http_api.auth import ApiKeys
from whisper_modal.http_api.errors import ApiError, http_error
from whisper_modal.http_api.jobs import PersistentJobs
from whisper_modal.http_api.openai_api import build_options, json_fields
from whisper_modal.options import DEFAULT_TEMPERATURES
from whisper_modal.webhooks import check_destination

ROOT = Path(__file__).parents[1]

# ---------------------------------------------------------------------------- errors

EXPECTED_STATUS: dict[type[Exception], int] = {
    e.ConfigurationError: 400,
    e.StorageNotFound: 404,
    e.StorageAccessDenied: 403,
    e.StorageTooLarge: 413,
    e.StorageTransient: 503,
    e.StorageError: 502,
    e.TransientError: 503,
    e.BackendUnavailable: 503,
    e.CircuitOpenError: 503,
    e.RemoteExecutionError: 500,
}


@pytest.mark.parametrize(("cls", "status"), EXPECTED_STATUS.items())
def test_error_tree_maps_to_http_status(cls: type[Exception], status: int) -> None:
    code, body, headers = http_error(cls("what went wrong"), "req_1")
    assert code == status
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "what went wrong" in body["error"]["message"]
    assert body["error"]["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    assert ("Retry-After" in headers) == (status == 503)
    if status >= 500:
        assert "req_1" in body["error"]["message"]


def test_job_errors_and_audio_errors() -> None:
    for exc, status in [
        (e.JobNotFound("x", job_id="j"), 404),
        (e.JobExpired("x", job_id="j"), 410),
        (e.JobCancelled("x", job_id="j"), 409),
        (e.JobTimeout("x", job_id="j"), 504),
        (e.AudioError("bad", reason="not_audio"), 400),
        (e.AudioError("big", reason="too_large"), 413),
    ]:
        assert http_error(exc, "r")[0] == status, exc
    _, body, _ = http_error(e.AudioError("bad", reason="empty"), "r")
    assert body["error"]["param"] == "file" and body["error"]["code"] == "empty"


def test_every_error_class_gets_a_deliberate_status() -> None:
    # a new class in errors.py must land in the table (not fall to the generic 500)
    for name in e.__all__:
        cls = getattr(e, name)
        if not (isinstance(cls, type) and issubclass(cls, e.WhisperModalError)):
            continue
        if issubclass(cls, e.JobError):
            exc = cls("m", job_id="j")
        elif cls is e.ChunkFailed:
            exc = cls("m", chunk=1, start=25.0, end=50.0, remote_type="AudioError")
        else:
            exc = cls("m")
        body = http_error(exc, "r")[1]
        assert body["error"]["code"] != "internal_error" and "m" in body["error"]["message"], name


def test_foreign_errors_hide_their_text() -> None:
    status, body, _ = http_error(KeyError("/srv/secret/path"), "req_abc")
    assert status == 500 and "secret" not in json.dumps(body)
    assert "req_abc" in body["error"]["message"]


# ---------------------------------------------------------------------------- keys


def test_api_keys() -> None:
    keys = ApiKeys(["k1", "k2"])
    keys.check("Bearer k1")
    keys.check("bearer k2")
    for bad in (None, "", "Bearer", "Bearer k3", "Basic k1", "Bearer k1x", "k1"):
        with pytest.raises(ApiError) as caught:
            keys.check(bad)
        assert caught.value.status == 401 and caught.value.code == "invalid_api_key"
        assert "k1" not in str(caught.value) and "k2" not in str(caught.value)
    assert "k1" not in repr(keys)
    assert keys.check("Bearer k1") != keys.check("Bearer k2")  # bare keys: one owner each
    owned = ApiKeys(["alice:a-old", "alice:a-new", "bob:b1", "k:with:colons"])
    assert owned.check("Bearer a-old") == owned.check("Bearer a-new") != owned.check("Bearer b1")
    assert owned.check("Bearer with:colons")  # owner "k"; the key is after the first colon
    for owner in (owned.check("Bearer a-old"), owned.check("Bearer b1")):
        assert owner is not None and len(owner) == 32 and "a-old" not in owner
    assert ApiKeys([]).check(None) is None  # no keys configured: open (a loopback dev server)
    with pytest.raises(ApiError, match="no API keys configured"):
        ApiKeys([], required=True).check("Bearer anything")


def test_settings_for_the_server() -> None:
    s = Settings.resolve(
        env={
            "WHISPER_MODAL_API_KEYS": "sk-a, sk-b",
            "WHISPER_MODAL_MAX_REQUEST_BYTES": "1234",
            "WHISPER_MODAL_WEBHOOK_ALLOW_HOSTS": "10.0.0.0/8,hooks.internal",
            "WHISPER_MODAL_JOBS_DB": "~/jobs.db",
            "WHISPER_MODAL_WEB_PROXY_AUTH": "true",
            "WHISPER_MODAL_BODY_TIMEOUT": "2.5",
        }
    )
    assert s.body_timeout == 2.5 and Settings.resolve(env={}).body_timeout == 30.0
    assert split_list(s.api_keys) == ("sk-a", "sk-b") and "sk-a" not in repr(s)
    assert s.max_request_bytes == 1234 and s.web_proxy_auth is True
    assert s.jobs_db == Path("~/jobs.db").expanduser()
    assert Settings.resolve(env={}, web_min_containers=0).web_min_containers == 0
    with pytest.raises(e.ConfigurationError):
        Settings.resolve(env={"WHISPER_MODAL_WEB_MIN_CONTAINERS": "-1"})
    with pytest.raises(e.ConfigurationError):
        Settings.resolve(env={"WHISPER_MODAL_MAX_REQUEST_BYTES": "0"})
    with pytest.raises(e.ConfigurationError):
        Settings.resolve(env={"WHISPER_MODAL_BODY_TIMEOUT": "0"})


# ---------------------------------------------------------------------------- SSRF


def resolver(table: dict[str, list[str]]) -> Any:
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("no such host")
        return table[host]

    return resolve


@pytest.mark.parametrize(
    "addresses",
    [
        ["169.254.169.254"],  # cloud metadata
        ["127.0.0.1"],
        ["10.1.2.3"],
        ["192.168.0.10"],
        ["172.16.5.5"],
        ["100.64.0.1"],  # carrier-grade NAT (not global)
        ["169.254.10.10"],  # link-local
        ["::1"],
        ["fe80::1%eth0"],
        ["fd00:ec2::254"],  # AWS's IPv6 metadata address
        ["::ffff:10.0.0.1"],  # IPv4-mapped private
        ["0.0.0.0"],
        ["224.0.0.1"],  # multicast
        ["93.184.216.34", "10.0.0.1"],  # one inner address among public ones: rebinding
    ],
)
def test_inner_destinations_are_refused(addresses: list[str]) -> None:
    with pytest.raises(e.ConfigurationError, match="WEBHOOK_ALLOW_HOSTS"):
        check_destination("https://hooks.example/x", resolve=resolver({"hooks.example": addresses}))


def test_public_and_allowed_destinations_pass() -> None:
    table = {"hooks.example": ["93.184.216.34", "2606:2800:220:1::"], "ci.internal": ["10.2.3.4"]}
    check_destination("https://hooks.example/x", resolve=resolver(table))
    check_destination("http://ci.internal:8080/x", allow=["10.0.0.0/8"], resolve=resolver(table))
    check_destination("http://CI.internal/x", allow=["ci.internal"], resolve=resolver(table))
    with pytest.raises(e.ConfigurationError, match="does not resolve"):
        check_destination("https://nowhere.example/x", resolve=resolver(table))
    for bad in ("ftp://hooks.example/x", "https:///x", "http://hooks.example:99999/"):
        with pytest.raises(e.ConfigurationError):
            check_destination(bad, resolve=resolver(table))


def test_delivery_refuses_inner_destinations_unless_allowed() -> None:
    import time

    from tests.servers import WebhookReceiver
    from whisper_modal.delivery import notify
    from whisper_modal.options import TranscribeOptions
    from whisper_modal.results import Transcript
    from whisper_modal.wire import Request

    result = Transcript(text="hi", language="en", duration=1.0)
    with WebhookReceiver("s3cret") as receiver:
        request = Request(options=TranscribeOptions(), audio=b"x", webhook_url=receiver.url)
        refused = Settings.resolve(env={}, webhook_secret="s3cret")
        notify(refused, request, "job_1", time.perf_counter(), result=result)
        assert receiver.requests == []  # 127.0.0.1 is not allowed: nothing was sent
        allowed = refused.replace(webhook_allow_hosts="127.0.0.0/8")
        notify(allowed, request, "job_1", time.perf_counter(), result=result)
        (hook,) = receiver.wait_for(1)
    assert hook["verified"] and hook["json"]["transcript"]["text"] == "hi"


# ---------------------------------------------------------------------------- options


def test_openai_fields_become_options() -> None:
    s = Settings.resolve(env={}, model="tiny.en", server_models="tiny.en,base")
    opts = build_options(json_fields({"model": "whisper-1"}), s)
    assert opts.model == "tiny.en" and opts.word_timestamps is False
    assert opts.temperature == DEFAULT_TEMPERATURES  # OpenAI's default 0 = fallback schedule
    opts = build_options(
        json_fields({"model": "base", "temperature": "0.4", "language": "de", "prompt": "Hallo",
                     "timestamp_granularities": ["word"], "mode": "sequential"}),
        s,
    )  # fmt: skip
    assert (opts.model, opts.temperature, opts.language, opts.initial_prompt) == (
        "base", (0.4,), "de", "Hallo",
    )  # fmt: skip
    assert opts.word_timestamps is True and opts.mode == "sequential"
    assert build_options(json_fields({"model": "base"}), s, task="translate").task == "translate"
    nested = build_options(json_fields({"options": {"model": "base", "language": "fr"}}), s)
    assert (nested.model, nested.language) == ("base", "fr")
    en = build_options(json_fields({}), s, task="translate")
    assert (en.task, en.language) == ("transcribe", "en")  # English-only model
    with pytest.raises(ApiError) as caught:
        build_options(json_fields({"model": "large-v3"}), s)
    assert caught.value.status == 404 and caught.value.code == "model_not_found"
    for bad in ({"temperature": "hot"}, {"language": "xx"}, {"word_timestamps": "maybe"},
                {"timestamp_granularities": ["char"]}):  # fmt: skip
        with pytest.raises(ApiError) as caught:
            build_options(json_fields(bad), s)
        assert caught.value.status == 400


# ---------------------------------------------------------------------------- job store


def test_unrecoverable_jobs_are_reported_failed_after_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    client = wm.Client(backend="local", model="tiny.en", jobs_db=db)
    asyncio.run(PersistentJobs(client, db).start())  # creates the table
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO jobs (id, status, created, updated, wire, audio, backend_id) "
            "VALUES ('job_broken', 'running', 0, 0, '{not json', NULL, 'local-gone')"
        )

    async def restart() -> Any:
        store = PersistentJobs(client, db)
        await store.start()
        try:
            return await store.get("job_broken")
        finally:
            await store.stop()

    view = asyncio.run(restart())
    assert view.status is wm.JobStatus.FAILED and "restart" in (view.error or "")
    with pytest.raises(e.JobNotFound):
        asyncio.run(PersistentJobs(client, db).get("job_other"))


# ---------------------------------------------------------------------------- CLI, Modal


def test_serve_refuses_a_public_interface_without_keys(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WHISPER_MODAL_API_KEYS", raising=False)
    assert cli_main(["serve", "--host", "0.0.0.0", "--port", "1", "--backend", "local"]) == 2
    assert "WHISPER_MODAL_API_KEYS" in capsys.readouterr().err


INSPECT_WEB = """
import json, warnings
warnings.simplefilter("ignore")
from whisper_modal.app import app, web, WEB_ENV, WEB_OPTIONS
from whisper_modal.deployer import deploy_command
info = web.info()
cmd, env = deploy_command()
print(json.dumps({
    "web_endpoint": info.web_info is not None,
    "gpus": info.gpus,
    "unauthenticated": info.web_info.unauthenticated,
    "max_inputs": info.concurrency_info.max_inputs,
    "min_containers": WEB_OPTIONS["min_containers"],
    "secrets": [repr(s) for s in WEB_OPTIONS["secrets"]],
    "deploy_env": {k: v for k, v in env.items() if k.startswith("WHISPER_MODAL_WEB")},
    "body_timeout": WEB_ENV.get("WHISPER_MODAL_BODY_TIMEOUT"),
}))
"""


def _inspect_web(**env: str) -> dict[str, Any]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WHISPER_MODAL_")}
    done = subprocess.run(
        [sys.executable, "-c", INSPECT_WEB], cwd=ROOT, env={**clean, **env},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_modal_web_function_is_registered_as_a_cpu_asgi_app() -> None:
    info = _inspect_web()
    assert info["web_endpoint"] is True and info["gpus"] == []  # CPU only
    assert info["unauthenticated"] is True and info["max_inputs"] == 100
    assert info["min_containers"] == 0
    info = _inspect_web(
        WHISPER_MODAL_WEB_PROXY_AUTH="1",
        WHISPER_MODAL_WEB_MIN_CONTAINERS="2",
        WHISPER_MODAL_WEB_MAX_INPUTS="16",
        WHISPER_MODAL_SECRET_NAME="wm-keys",
        WHISPER_MODAL_BODY_TIMEOUT="12",
    )
    assert info["body_timeout"] == "12.0"  # the web image carries the deploy's timeout
    assert info["unauthenticated"] is False and info["max_inputs"] == 16
    assert info["min_containers"] == 2 and len(info["secrets"]) == 1
    assert info["deploy_env"]["WHISPER_MODAL_WEB_MIN_CONTAINERS"] == "2"


def test_speaker_fields_become_diarize_options() -> None:
    s = Settings.resolve(env={}, model="tiny.en")
    opts = build_options(
        json_fields({"diarize": "true", "min_speakers": "2", "max_speakers": "4"}), s
    )
    assert (opts.diarize, opts.min_speakers, opts.max_speakers) == (True, 2, 4)
    for bad, param in (({"diarize": "true", "num_speakers": "two"}, "num_speakers"),
                       ({"num_speakers": "2"}, None)):  # fmt: skip
        with pytest.raises(ApiError) as caught:  # a count without diarize is refused too
            build_options(json_fields(bad), s)
        assert caught.value.status == 400 and caught.value.param == param
