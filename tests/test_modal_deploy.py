"""What a real deployment does that sharing the test's process used to hide (issue 10):
the container's own environment, CUDA required, per-item failures in a packed batch,
errors that must cross Modal's serialiser, lazy job lookups, snapshot hooks.

The deployment tests run against the emulator of Modal's API on loopback
(``tests/emulator``): unmodified ``modal`` in this process, real container processes that
see only their image's environment and the app's secret. ``gpu_less`` is a deployment of
its own whose secret leaves the device as the image sets it (CUDA, which this machine
lacks) and names an S3 endpoint nobody listens on.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import modal
import modal.exception as me
import pytest
from modal._serialization import deserialize, serialize

import whisper_modal.errors as errors
from tests.emulator.containers import image_contents
from tests.emulator.deployed import Deployed, deploy, on_loop
from tests.models_cache import tiny_model_cache
from tests.servers import free_port
from whisper_modal.backends.modal import ModalBackend
from whisper_modal.client import Client
from whisper_modal.options import TranscribeOptions
from whisper_modal.results import Transcript
from whisper_modal.wire import Request

ROOT = Path(__file__).parents[1]
SAMPLE = ROOT / "examples" / "sample.flac"


# ------------------------------------------------------------------ errors cross the wire

ERRORS = [
    errors.JobTimeout("not yet", job_id="fc-1"),
    errors.JobCancelled("cancelled", job_id="fc-2"),
    errors.JobNotFound("none", job_id="fc-3"),
    errors.JobExpired("old", job_id="fc-4"),
    errors.AudioError("too long", reason="too_long"),
    errors.BackendUnavailable("not deployed", fix="whisper-modal deploy"),
    errors.RemoteExecutionError("boom", remote_type="RuntimeError"),
    errors.ConfigurationError("bad"),
    errors.StorageNotFound("no key"),
]


def serialised_round_trip(exc: BaseException) -> BaseException:
    """``exc`` as Modal's container serialises it and modal's client reads it back."""
    return deserialize(serialize(exc), None)


@pytest.mark.parametrize("exc", ERRORS, ids=lambda e: type(e).__name__)
def test_every_error_survives_modals_serialiser(exc: errors.WhisperModalError) -> None:
    back = serialised_round_trip(exc)  # JobError subclasses came back as ExecutionError before
    assert type(back) is type(exc)
    assert str(back) == str(exc) and vars(back) == vars(exc)


def transcriber(deployed: Deployed, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The deployed GPU class's tiny.en instance, looked up by unmodified ``modal``."""
    deployed.use(monkeypatch)
    return modal.Cls.from_name("whisper-modal", "Transcriber")(model="tiny.en")


@pytest.mark.slow
@pytest.mark.emulator
def test_every_error_raised_in_a_container_arrives_whole(
    wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container's exception is a FAILURE result with the pickled exception, which
    modal's client raises again (``_process_result``): every one of ours, attributes too."""
    remote = transcriber(wire, monkeypatch)
    faults = wire.emulator.servicer.faults
    before = faults.injected.count(("Transcriber", "fail"))  # the session's earlier tests'
    for exc in ERRORS:
        faults.fail_inputs("Transcriber", exc)
        with pytest.raises(errors.WhisperModalError) as caught:
            remote.health.remote()
        assert type(caught.value) is type(exc)
        assert str(caught.value) == str(exc) and vars(caught.value) == vars(exc)
    assert faults.injected.count(("Transcriber", "fail")) - before == len(ERRORS)
    # ... and the SDK raises it as it came, the reason included
    faults.fail_inputs("Transcriber", errors.AudioError("too long", reason="too_long"))
    client = wire.sdk(monkeypatch)
    with pytest.raises(errors.AudioError) as info:
        client.transcribe(SAMPLE, language="en")
    assert info.value.reason == "too_long" and str(info.value) == "too long"
    client.close()


def test_an_unpicklable_error_fails_modals_deserialiser() -> None:
    class Local(Exception):  # defined in a function: cloudpickle sends it by value...
        def __init__(self, a: str, *, b: str) -> None:
            super().__init__(a)

    with pytest.raises(me.DeserializationError) as caught:  # ...but unpickling calls
        serialised_round_trip(Local("x", b="y"))  # Local("x") -> fails
    assert isinstance(caught.value.__cause__, TypeError)


@pytest.mark.slow
@pytest.mark.emulator
def test_an_unpicklable_error_from_a_container_is_modals_execution_error(
    wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Local(Exception):
        def __init__(self, a: str, *, b: str) -> None:
            super().__init__(a)

    wire.emulator.servicer.faults.fail_inputs("Transcriber", Local("x", b="y"))
    with pytest.raises(me.ExecutionError) as caught:
        transcriber(wire, monkeypatch).health.remote()
    assert "deserialize" in str(caught.value) and "Local" in str(caught.value)


# ------------------------------------------------------------------ the container's env


@pytest.fixture(scope="module")
def sample_wire() -> dict[str, object]:
    """One short spoken sentence (~3 s: the container tests here are about plumbing)."""
    from tests import speech

    samples, _ = speech.make_clip(speech.SENTENCES[:1])
    options = TranscribeOptions(model="tiny.en", language="en")
    return Request(options=options, audio=speech.wav_bytes(samples)).to_wire()


CLOSED_PORT = free_port()


@pytest.fixture(scope="module")
def gpu_less() -> Iterator[Deployed]:
    """A deployment whose containers run exactly as the image configures the device
    (``cuda``: ``deploy()``'s secret says cpu, this one puts the image's value back) on
    this GPU-less machine, with S3 configured at an endpoint nobody listens on."""
    secret = {
        "WHISPER_MODAL_DEVICE": "cuda",
        "WHISPER_MODAL_S3_ENDPOINT_URL": f"http://127.0.0.1:{CLOSED_PORT}",
    }
    with deploy(secret=secret) as deployed:
        yield deployed


def transcriber_image_env(deployed: Deployed) -> dict[str, str]:
    """The ``ENV`` of the GPU class's image as ``modal deploy`` built it."""
    servicer = deployed.emulator.servicer
    app_id = servicer.apps["whisper-modal"]

    def read() -> dict[str, str]:
        function = servicer.functions[servicer.app_objects[app_id]["Transcriber.*"]]
        return image_contents(servicer, function.definition.image_id)[0]

    return on_loop(deployed, read)


@pytest.mark.slow
@pytest.mark.emulator
def test_container_without_cuda_fails_loudly(
    gpu_less: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault 3: the image used to say device=auto, so a broken GPU meant silent CPU."""
    assert transcriber_image_env(gpu_less)["WHISPER_MODAL_DEVICE"] == "cuda"
    client = gpu_less.sdk(monkeypatch)
    with pytest.raises(errors.ConfigurationError, match="no CUDA device"):
        client.transcribe(SAMPLE, language="en")
    report = client.health(backend="modal")
    assert report["failing"] == ["cuda", "model_loaded", "s3"]
    assert "no CUDA device" in report["checks"]["model_loaded"]["detail"]
    assert report["checks"]["weights_volume"]["ok"] is True
    assert report["model_loaded"] is False and report["torch"]
    client.close()


def container_environ(deployed: Deployed, task_id: str) -> dict[str, str]:
    """The environment a running container process has (``/proc/PID/environ``)."""
    container = deployed.emulator.pool.containers[task_id]
    raw = Path(f"/proc/{container.process.pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


@pytest.mark.slow
@pytest.mark.emulator
def test_container_does_not_see_the_tests_environment(
    wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WHISPER_MODAL_MAX_AUDIO_SECONDS", "1")  # the client's shell only
    settings = wire.settings(monkeypatch, max_audio_seconds=3600)
    # an option variant of the class (its own timeout) is a pool of its own: its container
    # starts now, after the variable was set, so it would have inherited it
    backend = ModalBackend(settings, remote_timeout=1799)
    client = Client(settings, modal_backend=backend)
    before = set(wire.emulator.pool.containers) | set(wire.emulator.pool.exited)
    t = client.transcribe(SAMPLE, language="en")
    assert t.backend == "modal" and t.duration > 1 and t.device == "cpu"
    job = t.job_id
    servicer = wire.emulator.servicer
    tasks = on_loop(wire, lambda: [i.tasks for i in servicer.function_calls[job].inputs])
    (task,) = tasks[0]
    assert task not in before  # a container started for this test
    env = container_environ(wire, task)
    assert "WHISPER_MODAL_MAX_AUDIO_SECONDS" not in env
    assert env["WHISPER_MODAL_DEVICE"] == "cpu"  # ... while the secret's variables reach it
    assert env["WHISPER_MODAL_CACHE_DIR"] == str(tiny_model_cache())
    client.close()


@pytest.mark.slow
@pytest.mark.emulator
def test_a_secrets_variables_reach_the_container(
    gpu_less: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The device and the S3 endpoint above came from the deployment's secret alone."""
    client = gpu_less.sdk(monkeypatch)
    report = client.health(backend="modal")
    assert report["checks"]["cuda"]["ok"] is False  # the secret's cuda, not deploy()'s cpu
    assert f"127.0.0.1:{CLOSED_PORT}" in report["checks"]["s3"]["detail"]
    client.close()


@pytest.mark.slow
@pytest.mark.emulator
def test_unknown_job_ids_fail_at_get_not_at_lookup(
    wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire.use(monkeypatch)
    servicer = wire.emulator.servicer

    def asked() -> int:
        return sum(
            servicer.calls.count(rpc) for rpc in ("FunctionCallFromId", "FunctionGetOutputs")
        )

    before = asked()
    call = modal.FunctionCall.from_id("fc-doesnotexist")  # lazy: no RPC yet
    assert asked() == before
    with pytest.raises(modal.exception.NotFoundError):
        call.get(timeout=0)
    assert asked() > before  # the get asked the server, which knows no such call
    client = wire.sdk(monkeypatch)
    with pytest.raises(errors.JobNotFound) as info:
        asyncio.run(client._modal_backend().aresult("fc-doesnotexist", timeout=0))
    assert info.value.job_id == "fc-doesnotexist"
    client.close()


# ------------------------------------------------------------------ packed batch


@pytest.mark.slow
def test_one_bad_request_does_not_fail_a_packed_batch(
    monkeypatch: pytest.MonkeyPatch, sample_wire: dict[str, object]
) -> None:
    """Fault 7: ``_check_model`` ran outside the per-item handling, failing all 3."""
    monkeypatch.setenv("WHISPER_MODAL_CACHE_DIR", str(tiny_model_cache()))
    monkeypatch.setenv("WHISPER_MODAL_DEVICE", "cpu")
    from whisper_modal.app import PackedTranscriber

    options = sample_wire["options"]
    assert isinstance(options, dict)
    bad = dict(sample_wire, options={**options, "model": "/etc/passwd"})
    results = PackedTranscriber(model="tiny.en").transcribe_packed.local(
        [sample_wire, bad, sample_wire]
    )
    assert [("error" in r) for r in results] == [False, True, False]
    assert results[1]["error"]["type"] == "ConfigurationError"
    assert "planning meeting" in Transcript.from_dict(results[2]).text.lower()


# ------------------------------------------------------------------ snapshots

SNAPSHOT_PROBE = """
import json
from whisper_modal.app import Transcriber
from whisper_modal.engine import models
report = Transcriber(model="tiny.en").health.local()
print(json.dumps({
    "failing": report["failing"],
    "detail": report["checks"]["model_loaded"]["detail"],
    "on_cpu": sorted(device for (_, device) in models._CACHE),
}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("snapshot", [False, True])
def test_snapshot_loads_on_cpu_then_moves(snapshot: bool) -> None:
    """Fault 4: with snapshots the first (snap=True) hook loads the model on CPU, the
    second moves it to CUDA. Here there is no GPU, so the move is what fails, after a
    CPU load; without snapshots nothing is loaded on CPU at all."""
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "HOME": str(ROOT),
        "WHISPER_MODAL_ENABLE_MEMORY_SNAPSHOT": str(snapshot).lower(),
    }
    deploy = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", "import whisper_modal.app as m, json; "
         "print(json.dumps(m.IMAGE_ENV))"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert deploy.returncode == 0, deploy.stderr[-2000:]
    image_env = json.loads(deploy.stdout.strip().splitlines()[-1])
    container = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "HOME": str(ROOT),
        **image_env,
        "WHISPER_MODAL_CACHE_DIR": str(tiny_model_cache()),
    }
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", SNAPSHOT_PROBE],
        cwd=ROOT, env=container, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["failing"] == ["cuda", "model_loaded"] and "no CUDA device" in out["detail"]
    assert out["on_cpu"] == (["cpu"] if snapshot else [])


# ------------------------------------------------------------------ operations


@pytest.mark.slow
@pytest.mark.emulator
def test_cli_health_names_the_failing_checks(
    gpu_less: Deployed, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import whisper_modal as wm
    from whisper_modal.cli import main

    wm.configure(gpu_less.sdk(monkeypatch))  # conftest restores the default client
    assert main(["health"]) == 1
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["failing"] == ["cuda", "model_loaded", "s3"]
    assert report["whisper_modal"] == wm.__version__ and report["modal"] == modal.__version__
    last = err.strip().splitlines()[-1]
    assert last.startswith("whisper-modal: failing checks: cuda: torch sees no CUDA")
    assert f"s3: 127.0.0.1:{CLOSED_PORT}" in last and "refused" in last
    assert "Traceback" not in err


def test_cli_prefetch_local_and_remote_without_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from whisper_modal.cli import main

    monkeypatch.setenv("WHISPER_MODAL_CACHE_DIR", str(tiny_model_cache()))
    assert main(["models", "prefetch", "tiny.en"]) == 0  # already in the cache: verified
    assert "tiny.en ->" in capsys.readouterr().out
    assert main(["models", "prefetch", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("WHISPER_MODAL_", "MODAL_"))}
    env = {**clean, "HOME": str(tmp_path), "MODAL_CONFIG_PATH": str(tmp_path / ".modal.toml")}
    done = subprocess.run(
        [sys.executable, "-m", "whisper_modal", "models", "prefetch", "turbo", "--remote"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("whisper-modal: failed: BackendUnavailable") and "modal token" in last


@pytest.mark.slow
def test_one_json_log_line_per_request_without_content(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    sample_wire: dict[str, object],
) -> None:  # fmt: skip
    monkeypatch.setenv("WHISPER_MODAL_CACHE_DIR", str(tiny_model_cache()))
    monkeypatch.setenv("WHISPER_MODAL_DEVICE", "cpu")
    from whisper_modal.app import Transcriber

    obj = Transcriber(model="tiny.en")
    wire = dict(sample_wire, client_job_id="job-42")
    caplog.set_level("INFO", logger="whisper_modal.requests")
    result = obj.transcribe.local(wire)
    options = wire["options"]
    assert isinstance(options, dict)
    with pytest.raises(errors.ConfigurationError):
        obj.transcribe.local(dict(wire, options={**options, "model": "../evil"}))
    lines = [
        json.loads(r.getMessage()) for r in caplog.records if r.name == "whisper_modal.requests"
    ]
    assert [line["outcome"] for line in lines] == ["ok", "ConfigurationError"]
    ok = lines[0]
    assert ok["job_id"] == "job-42" and ok["model"] == "tiny.en"
    assert ok["audio_seconds"] == pytest.approx(result["duration"]) and ok["seconds"] > 0
    assert {"load", "decode", "inference", "total"} <= set(ok["timings"])
    assert ok["timings"]["inference"] > 0
    text = json.dumps(lines)
    assert result["text"][:20] not in text and "audio" not in {k for line in lines for k in line}


def test_warm_hours_window() -> None:
    from whisper_modal.remote.deployment import warm_containers_at, warm_window

    assert warm_window("8-18") == (8, 18)
    assert [warm_containers_at(h, "8-18", 2, 0) for h in (7, 8, 17, 18)] == [0, 2, 2, 0]
    assert [warm_containers_at(h, "22-6", 1, 0) for h in (21, 22, 3, 6)] == [0, 1, 1, 0]
    for bad in ("8", "8-8", "25-3", "a-b"):
        with pytest.raises(errors.ConfigurationError, match="warm_hours"):
            warm_window(bad)
