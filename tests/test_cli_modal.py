"""The CLI's Modal commands (submit, result, health) against the emulator of Modal's API.

The CLI runs in this process on unmodified ``modal`` pointed at the emulator on loopback
(``tests/emulator``), where the deployed app's inputs run in real container processes
(tiny.en on CPU, as the deployment's secret says).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pysrt
import pytest

import whisper_modal as wm
from tests.emulator.deployed import executions, on_loop
from whisper_modal.cli import main

SAMPLE = Path(__file__).parents[1] / "examples" / "sample.flac"
pytestmark = [pytest.mark.slow, pytest.mark.emulator]


@pytest.fixture
def cli(wire: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The CLI's default client: an SDK client to the emulated deployment."""
    wm.configure(wire.sdk(monkeypatch))  # conftest restores the default client
    return wire


def test_submit_then_result(cli: Any, capsys: pytest.CaptureFixture[str]) -> None:
    before = executions(cli)
    assert main(["submit", str(SAMPLE), "--backend", "modal", "--language", "en"]) == 0
    job_id = capsys.readouterr().out.strip()
    assert job_id.startswith("fc-") and job_id in cli.emulator.servicer.function_calls
    assert main(["result", job_id, "--format", "srt", "--timeout", "120"]) == 0
    subs = pysrt.from_string(capsys.readouterr().out)
    assert len(subs) >= 3 and "planning meeting" in subs[0].text.lower()
    ran = executions(cli) - before
    assert sorted(ran.values()) == [1]  # one container run of the one submitted request


def test_result_not_ready_exits_3(cli: Any, capsys: pytest.CaptureFixture[str]) -> None:
    faults = cli.emulator.servicer.faults
    faults.hold_inputs("Transcriber", 300)  # no container may take it: a busy pool
    assert main(["submit", str(SAMPLE), "--backend", "modal", "--language", "en"]) == 0
    queued = capsys.readouterr().out.strip()
    assert ("Transcriber", "hold") in faults.injected
    assert main(["result", queued, "--timeout", "0"]) == 3
    assert "not finished" in capsys.readouterr().err
    assert main(["result", queued, "--timeout", "1"]) == 3  # a wait that runs out, too
    capsys.readouterr()
    call = cli.emulator.servicer.function_calls[queued]
    assert on_loop(cli, lambda: [i.status for i in call.inputs]) == ["pending"]  # never started
    faults.release()  # the pool frees up
    assert main(["result", queued, "--timeout", "120"]) == 0
    assert "planning meeting" in capsys.readouterr().out.lower()
    assert call.inputs[0].output is not None and call.inputs[0].tasks  # a container ran it


def test_health_and_unknown_job(cli: Any, capsys: pytest.CaptureFixture[str]) -> None:
    # the container runs on CPU because the deployment's secret says so: no failing check
    assert main(["health"]) == 0
    out = capsys.readouterr().out
    assert '"model_loaded": true' in out and '"model": "tiny.en"' in out
    assert '"not required: WHISPER_MODAL_DEVICE=cpu"' in out
    assert '"failing": []' in out
    assert main(["result", "fc-nope", "--timeout", "1"]) == 1
    assert "JobNotFound" in capsys.readouterr().err
