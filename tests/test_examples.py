"""The runnable examples run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pysrt
import pytest

from tests.models_cache import tiny_en_cache

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.slow


def test_batch_job_transcribes_a_folder_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(ROOT / "examples" / "sample.flac", tmp_path / "a.flac")
    (tmp_path / "broken.mp3").write_bytes(b"not audio" * 100)
    env = {
        "WHISPER_MODAL_CACHE_DIR": str(tiny_en_cache()),
        "WHISPER_MODAL_DEVICE": "cpu",
        "PATH": "/usr/bin:/bin",
    }
    args = [
        sys.executable,
        "examples/batch_job.py",
        str(tmp_path),
        "--backend",
        "local",
        "--model",
        "tiny.en",
        "--language",
        "en",
    ]
    first = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 1, first.stderr  # the broken file fails, the other succeeds
    assert "FAILED" in first.stderr and "AudioError" in first.stderr
    subs = pysrt.open(str(tmp_path / "a.srt"))
    assert len(subs) >= 3
    (tmp_path / "broken.mp3").unlink()
    second = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and "0 written, 1 up to date, 0 failed" in second.stderr
