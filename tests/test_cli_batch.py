"""The CLI as a new user meets it: batches of files, typos, help, and one-line errors.

Batches run the real tiny.en engine on espeak-ng speech (``--backend local``); the error
cases run the CLI in a subprocess with Modal unreachable, as a user's shell would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import speech
from tests.models_cache import tiny_en_cache
from tests.wer import wer
from whisper_modal.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = {
    "jfk": "We choose to go to the moon in this decade.",
    "call": "Please send the report before the meeting on Friday.",
    "memo": "The garden needs water every morning in the summer.",
}


def _speech(name: str, fmt: str) -> bytes:
    samples, _ = speech.make_clip([SENTENCES[name]])
    return speech.wav_bytes(samples) if fmt == "wav" else speech.to_format(samples, fmt)


@pytest.fixture
def local_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHISPER_MODAL_CACHE_DIR", str(tiny_en_cache()))
    monkeypatch.setenv("WHISPER_MODAL_DEVICE", "cpu")


@pytest.mark.slow
def test_a_batch_writes_unique_names_skips_what_is_done_and_fails_per_file(
    tmp_path: Path, local_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: ``whisper-modal transcribe DIR`` said "not a regular file"; and the batch
    example wrote ``jfk.srt`` for both ``jfk.wav`` and ``jfk.flac``, one over the other."""
    calls = tmp_path / "calls"
    (calls / "2026").mkdir(parents=True)
    (calls / "jfk.wav").write_bytes(_speech("jfk", "wav"))
    (calls / "jfk.flac").write_bytes(_speech("memo", "flac"))  # same stem, other words
    (calls / "2026" / "call.wav").write_bytes(_speech("call", "wav"))
    (calls / "notes.txt").write_text("not audio: a directory skips it")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF" + bytes(60))
    listed = tmp_path / "more.txt"
    listed.write_text(f"# one path per line\n{broken}\n")
    out = tmp_path / "subs"
    argv = ["transcribe", str(calls), f"@{listed}", "--output-dir", str(out), "-f", "srt",
            "--backend", "local", "--model", "tiny.en", "--language", "en"]  # fmt: skip

    assert cli_main(argv) == 1  # one file failed; the others were written
    err = capsys.readouterr().err
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == {"jfk.wav.srt", "jfk.flac.srt", "2026/call.srt"}, (written, err)
    for name, said in (("jfk.wav.srt", "jfk"), ("jfk.flac.srt", "memo"), ("2026/call.srt", "call")):
        text = " ".join(
            line for line in (out / name).read_text().splitlines()
            if line and not line[0].isdigit()
        )  # fmt: skip
        # each output holds its own input's words (closest to its sentence, not another's)
        scores = {key: wer(sentence, text) for key, sentence in SENTENCES.items()}
        assert min(scores, key=scores.__getitem__) == said and scores[said] <= 0.6, (name, text)
    assert f"FAILED {broken}: AudioError: " in err and "3 written, 0 skipped" in err, err

    # a re-run is resumable: what is up to date is skipped, nothing is rewritten
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.srt")}
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert "0 written, 3 skipped (up to date), 1 failed" in err, err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.srt")} == before
    # a newer input is redone; no temp file is ever left behind
    time.sleep(0.01)
    os.utime(calls / "2026" / "call.wav")
    assert cli_main([*argv[:1], str(calls), *argv[3:]]) == 0
    assert "1 written, 2 skipped" in capsys.readouterr().err
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]


def test_batch_inputs_that_match_nothing_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    for spec in (str(tmp_path / "empty"), str(tmp_path / "*.mp3"), f"@{tmp_path / 'none.txt'}"):
        assert cli_main(["transcribe", spec, "--output-dir", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("whisper-modal: error: ") and err.count("\n") == 1, err


def test_a_misspelt_flag_names_the_command_and_what_was_meant(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main(["transcribe", "a.wav", "--langauge", "en"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: whisper-modal transcribe" in err  # the command's usage, not the top one
    assert "--langauge (did you mean --language?)" in err, err


def test_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "whisper-modal transcribe DIR" in out, out


def test_submit_to_the_local_backend_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """Before: it printed a ``local-...`` id that ``result`` could never find."""
    assert cli_main(["submit", str(ROOT / "examples" / "sample.flac"), "--backend", "local"]) == 2
    assert "lives only in this process" in capsys.readouterr().err


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    script = (
        "import sys\nfrom tests.modal_probe import isolate\nisolate('closed')\n"
        "from whisper_modal.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "WHISPER_MODAL_MAX_ATTEMPTS": "1",
               "WHISPER_MODAL_CACHE_DIR": str(tiny_en_cache()), **env}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-c", script, *args], cwd=ROOT, env=environ, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_an_unavailable_modal_is_one_line_naming_the_cli_flags() -> None:
    """Before: "failed: BackendUnavailable: BackendUnavailable: ..." and a hint that named
    only the Python keyword; the CLI had no flag for the CPU fallback."""
    sample = str(ROOT / "examples" / "sample.flac")
    done = _cli("transcribe", sample, "--model", "tiny.en", "--backend", "auto")
    assert done.returncode == 1, done
    assert done.stderr.count("BackendUnavailable") == 1, done.stderr
    assert "--allow-cpu-fallback" in done.stderr and "--backend local" in done.stderr
    done = _cli("transcribe", sample, "--model", "tiny.en", "--backend", "auto",
                "--language", "en", "--allow-cpu-fallback")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert wer((ROOT / "examples" / "sample.txt").read_text(), done.stdout) <= 0.1, done.stdout


@pytest.mark.slow
def test_a_submit_that_falls_back_prints_its_result_not_a_dead_id() -> None:
    sample = str(ROOT / "examples" / "sample.flac")
    done = _cli("submit", sample, "--model", "tiny.en", "--backend", "auto", "--language", "en",
                "--allow-cpu-fallback")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not done.stdout.startswith("local-") and "the job ran here instead" in done.stderr
    assert wer((ROOT / "examples" / "sample.txt").read_text(), done.stdout) <= 0.1, done.stdout
