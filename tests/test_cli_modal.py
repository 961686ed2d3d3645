"""The CLI's Modal commands (submit, result, health) through the in-process fake."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pysrt
import pytest

import whisper_modal as wm
from tests.fakes import fake_client
from tests.fakes.modal_fake import FakeModal
from whisper_modal.cli import main

SAMPLE = Path(__file__).parents[1] / "examples" / "sample.flac"
pytestmark = pytest.mark.slow


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeModal]:
    modal_fake = FakeModal()
    wm.configure(fake_client(modal_fake, monkeypatch))  # conftest restores the default client
    yield modal_fake
    modal_fake.close()


def test_submit_then_result(fake: FakeModal, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", str(SAMPLE), "--backend", "modal", "--language", "en"]) == 0
    job_id = capsys.readouterr().out.strip()
    assert job_id.startswith("fc-")
    assert main(["result", job_id, "--format", "srt", "--timeout", "120"]) == 0
    subs = pysrt.from_string(capsys.readouterr().out)
    assert len(subs) >= 3 and "planning meeting" in subs[0].text.lower()


def test_result_not_ready_exits_3(fake: FakeModal, capsys: pytest.CaptureFixture[str]) -> None:
    busy = [wm.default_client().submit(SAMPLE, language="en") for _ in range(4)]  # all workers
    main(["submit", str(SAMPLE), "--backend", "modal", "--language", "en"])
    queued = capsys.readouterr().out.strip()
    assert main(["result", queued, "--timeout", "0"]) == 3
    assert "not finished" in capsys.readouterr().err
    assert main(["result", queued, "--timeout", "120"]) == 0
    assert all(job.result(timeout=120).text for job in busy)


def test_health_and_unknown_job(fake: FakeModal, capsys: pytest.CaptureFixture[str]) -> None:
    # the fake container runs on CPU because its secret says so: no failing check
    assert main(["health"]) == 0
    out = capsys.readouterr().out
    assert '"model_loaded": true' in out and '"model": "tiny.en"' in out
    assert '"not required: WHISPER_MODAL_DEVICE=cpu"' in out
    assert main(["result", "fc-nope", "--timeout", "1"]) == 1
    assert "JobNotFound" in capsys.readouterr().err
