"""What a user's terminal shows: warnings at the user's own line, no stray log lines.

Each case runs a script as a user would (a subprocess, Python's default warning and
logging set-up) with Modal unreachable and the CPU fallback allowed, and reads its stderr.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.models_cache import tiny_model_cache

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = str(ROOT / "examples" / "sample.flac")

USER_SCRIPT = """\
import asyncio
from tests.modal_probe import isolate
isolate("closed")  # fake credentials, a port nothing listens on: Modal is unavailable
import whisper_modal as wm

settings = wm.Settings.resolve(
    env={{}}, backend="auto", model="tiny.en", max_attempts=1, allow_cpu_fallback=True,
    cache_dir={cache!r},
)


async def main(client):
    return await client.atranscribe({sample!r}, language="en")  # the async line


with wm.Client(settings) as client:
    print(client.transcribe({sample!r}, language="en").backend)  # the sync line
    print(asyncio.run(main(client)).backend)
"""


def _line_of(script: str, marker: str) -> int:
    return next(n for n, line in enumerate(script.splitlines(), 1) if marker in line)


@pytest.mark.slow
def test_a_fallback_warns_at_the_callers_line_and_logs_nothing_unasked(tmp_path: Path) -> None:
    """Before: ``whisper_modal/backends/chain.py:200: RuntimeWarning`` (the sync API ran on
    the loop thread, whose stack holds no frame of the caller), then bare ``fallback`` and
    ``circuit ...`` lines from logging's last-resort handler (no handler on our loggers)."""
    script = USER_SCRIPT.format(cache=str(tiny_model_cache()), sample=SAMPLE)
    path = tmp_path / "user_script.py"
    path.write_text(script)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(path)], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["local", "local"], done
    warned = re.findall(r"^(.*?):(\d+): RuntimeWarning: Modal is unavailable", done.stderr, re.M)
    assert warned == [
        (str(path), str(_line_of(script, "the sync line"))),
        (str(path), str(_line_of(script, "the async line"))),
    ], done.stderr
    assert "whisper_modal" + os.sep not in done.stderr, done.stderr  # no line of ours
    others = [
        line
        for line in done.stderr.splitlines()
        if line.strip() and "RuntimeWarning" not in line and "the sync line" not in line
        and "the async line" not in line
    ]  # fmt: skip
    assert others == [], done.stderr


def test_the_cli_shows_the_librarys_warnings_as_its_own_lines(tmp_path: Path) -> None:
    """An application (the CLI) opts in: the fallback is one readable line on stderr."""
    script = (
        "import sys\nfrom tests.modal_probe import isolate\nisolate('closed')\n"
        "from whisper_modal.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    path = tmp_path / "cli.py"
    path.write_text(script)
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "WHISPER_MODAL_CACHE_DIR": str(tiny_model_cache()),
        "WHISPER_MODAL_ALLOW_CPU_FALLBACK": "1", "WHISPER_MODAL_MAX_ATTEMPTS": "1",
    }  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(path), "transcribe", SAMPLE, "--backend", "auto",
         "--model", "tiny.en", "--language", "en"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), done  # the transcript
    lines = [line for line in done.stderr.splitlines() if line.startswith("whisper-modal: ")]
    assert any(
        line.startswith("whisper-modal: WARNING fallback ") and "reason=BackendUnavailable" in line
        for line in lines
    ), done.stderr
    assert not re.search(r"^fallback$", done.stderr, re.M), done.stderr
