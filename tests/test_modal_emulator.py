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

import pytest

from tests.emulator import Emulator
from tests.fakes import tiny_model_cache

ROOT = Path(__file__).parents[1]
SAMPLE = ROOT / "examples" / "sample.flac"
SECRET = "whisper-modal-emulated"

pytestmark = [pytest.mark.slow, pytest.mark.emulator]


class Deployed:
    """The emulator with our app deployed through Modal's CLI."""

    def __init__(self, emulator: Emulator, env: dict[str, str]) -> None:
        self.emulator = emulator
        self.env = env

    def client(self, code: str, *, timeout: float = 240) -> dict[str, object]:
        """Run ``code`` in a fresh client process; it prints one JSON line as its last."""
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            env=self.env,
            cwd=self.emulator.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, (
            f"client failed:\n{done.stdout}\n{done.stderr}\n{self.emulator.container_logs()}"
        )
        result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
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
