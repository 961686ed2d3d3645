"""Modal at the wire (issue 20): unmodified ``modal`` against an emulator of Modal's API.

``modal deploy -m whisper_modal.app`` and ``modal secret create`` run as CLI processes,
the SDK runs in a client process of its own, and every input runs in a real
``python -m modal._container_entrypoint`` process with its image's packages and
environment only (``tests/emulator``). Nothing in our package is patched or swapped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from modal_proto import api_pb2

from tests import speech
from tests.emulator import Emulator
from tests.emulator.servicer import InputState
from tests.fakes import tiny_model_cache
from tests.wer import wer

ROOT = Path(__file__).parents[1]
SAMPLE = ROOT / "examples" / "sample.flac"
SECRET = "whisper-modal-emulated"
SUCCESS = api_pb2.GenericResult.GENERIC_STATUS_SUCCESS
#: a client's fan-out thresholds made small: ~55 s of speech becomes 3 pieces of <= 25 s
FANOUT_ENV = {"WHISPER_MODAL_FANOUT_SECONDS": "30", "WHISPER_MODAL_FANOUT_CHUNK_SECONDS": "25"}

pytestmark = [pytest.mark.slow, pytest.mark.emulator]


class Deployed:
    """The emulator with our app deployed through Modal's CLI."""

    def __init__(self, emulator: Emulator, env: dict[str, str]) -> None:
        self.emulator = emulator
        self.env = env

    def client(
        self, code: str, *, timeout: float = 240, env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Run ``code`` in a fresh client process; it prints one JSON line as its last."""
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            env={**self.env, **(env or {})},
            cwd=self.emulator.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, (
            f"client failed:\n{done.stdout}\n{done.stderr}\n{self.emulator.container_logs()}"
        )
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result


def _modal_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "modal", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"modal {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def deployed() -> Iterator[Deployed]:
    with Emulator() as emulator:
        env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("MODAL_", "WHISPER_MODAL_"))
            },
            **emulator.env(),
            "WHISPER_MODAL_SECRET_NAME": SECRET,
        }
        # the weights the container loads, and the CPU: what a real account's secret and
        # GPU would give it (IMAGE_ENV says cuda; a secret's variables override the image's)
        _modal_cli(
            env,
            "secret",
            "create",
            SECRET,
            f"WHISPER_MODAL_CACHE_DIR={tiny_model_cache()}",
            "WHISPER_MODAL_DEVICE=cpu",
        )
        _modal_cli(env, "deploy", "-m", "whisper_modal.app")
        yield Deployed(emulator, env)


def test_modal_deploy_publishes_the_app(deployed: Deployed) -> None:
    servicer = deployed.emulator.servicer
    app_id = servicer.apps["whisper-modal"]
    tags = set(servicer.app_objects[app_id])
    assert {"Transcriber", "Transcriber.*", "PackedTranscriber", "PackedTranscriber.*"} <= tags
    assert {"fanout", "prefetch", "web"} <= tags
    assert not servicer.unimplemented


def test_a_short_transcription_runs_in_a_real_container(deployed: Deployed) -> None:
    before = set(deployed.emulator.pool.exited) | set(deployed.emulator.pool.containers)
    out = deployed.client(
        f"""
        import json, whisper_modal as wm
        t = wm.transcribe({str(SAMPLE)!r}, backend="modal", model="tiny.en")
        print(json.dumps({{"text": t.text, "backend": t.backend, "device": t.device}}))
        """
    )
    assert "weekly planning meeting" in str(out["text"]).lower()
    assert out["backend"] == "modal" and out["device"] == "cpu"
    servicer = deployed.emulator.servicer
    assert {"FunctionBindParams", "FunctionMap", "FunctionGetInputs", "FunctionPutOutputs"} <= set(
        servicer.calls
    )
    started = (set(deployed.emulator.pool.exited) | set(deployed.emulator.pool.containers)) - before
    assert started, "no container ran the input"
    assert not servicer.unimplemented


@pytest.fixture(scope="module")
def long_wav(deployed: Deployed) -> tuple[Path, str, float]:
    """About 55 s of speech as a WAV file the client processes can read."""
    samples, reference = speech.make_clip(speech.SENTENCES[:12], gap_seconds=0.7)
    path = deployed.emulator.root / "long.wav"
    path.write_bytes(speech.wav_bytes(samples))
    return path, reference, len(samples) / speech.SAMPLE_RATE


def inputs_of(deployed: Deployed, function_name: str) -> list[InputState]:
    """Every input the emulator queued for ``function_name`` (bound variants included)."""
    servicer = deployed.emulator.servicer
    return [
        i
        for i in servicer.inputs.values()
        if servicer.functions[
            servicer.function_calls[i.function_call_id].function_id
        ].definition.function_name
        == function_name
    ]


def pieces_of(deployed: Deployed, job_id: str) -> list[InputState]:
    """The GPU inputs the orchestrator spawned for job ``job_id`` (its FunctionCall)."""
    servicer = deployed.emulator.servicer
    parents = {i.input_id for i in servicer.function_calls[job_id].inputs}
    return [
        i
        for i in servicer.inputs.values()
        if servicer.function_calls[i.function_call_id].parent_input_id in parents
    ]


def test_a_long_submit_fans_out_over_containers_and_reattaches_from_another_process(
    deployed: Deployed, long_wav: tuple[Path, str, float]
) -> None:
    path, reference, seconds = long_wav
    submitted = deployed.client(
        f"""
        import json, whisper_modal as wm
        job = wm.submit({str(path)!r}, backend="modal", model="tiny.en", language="en")
        print(json.dumps({{"id": job.id, "status": job.status().value}}))
        """,
        env=FANOUT_ENV,
    )
    job_id = submitted["id"]
    assert job_id.startswith("fc-") and submitted["status"] in {"pending", "running"}
    # a second process that knows only the id (and no fan-out settings)
    seen = deployed.client(
        f"""
        import json, whisper_modal as wm
        job = wm.Job.from_id({job_id!r})
        t = job.result(timeout=300)
        print(json.dumps({{"text": t.text, "duration": t.duration,
                           "status": job.status().value, "progress": job.progress()}}))
        """,
        timeout=360,
    )
    assert seen["status"] == "succeeded"
    assert wer(reference, seen["text"]) <= 0.12, seen["text"]
    assert seen["duration"] == pytest.approx(seconds, abs=0.1)
    done, total = seen["progress"]
    assert done == total >= 3
    pieces = pieces_of(deployed, job_id)
    assert len(pieces) == total  # each piece once: no retry, no duplicate
    assert all(p.output is not None and p.output.result.status == SUCCESS for p in pieces)
    # the pieces ran side by side: one GPU container each (the class takes one input at once)
    assert len({p.tasks[0] for p in pieces}) == min(total, deployed.emulator.pool.max_per_function)
    assert not deployed.emulator.servicer.unimplemented
