"""A scripted batch job: transcribe every audio file in a folder, write subtitles next to it.

    python examples/batch_job.py AUDIO_DIR [--format srt] [--concurrency 16] [--backend auto]

Files already transcribed (an up-to-date subtitle file exists) are skipped, so the job can
be re-run after an interruption. Per-file failures are reported and do not stop the others;
the exit code is 1 if any file failed. Ends with the client's statistics (calls, retries,
fallbacks, audio hours, estimated GPU cost).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import whisper_modal as wm
from whisper_modal.formats import FORMATS, write

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".mp4", ".webm"}


def pending(folder: Path, fmt: str) -> list[Path]:
    """Audio files whose subtitle file is missing or older than the audio."""
    todo = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in AUDIO_SUFFIXES:
            continue
        out = path.with_suffix(f".{fmt}")
        if not out.exists() or out.stat().st_mtime < path.stat().st_mtime:
            todo.append(path)
    return todo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--format", default="srt", choices=FORMATS)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--backend", default=None, choices=("auto", "modal", "local"))
    parser.add_argument("--model", default=None)
    parser.add_argument("--language", default=None)
    args = parser.parse_args(argv)

    client = wm.Client(backend=args.backend, model=args.model)
    files = pending(args.folder, args.format)
    print(f"{len(files)} file(s) to transcribe", file=sys.stderr)
    results = client.transcribe_many(
        files, concurrency=args.concurrency, return_exceptions=True, language=args.language
    )
    failed = 0
    for path, result in zip(files, results, strict=True):
        if isinstance(result, wm.WhisperModalError):
            failed += 1
            print(f"FAILED {path}: {type(result).__name__}: {result}", file=sys.stderr)
            continue
        path.with_suffix(f".{args.format}").write_text(write(result, args.format), encoding="utf-8")
        print(f"ok     {path} ({result.duration:.0f} s, {result.backend})", file=sys.stderr)
    stats = client.stats()
    print(
        f"{stats.successes} ok, {failed} failed, {stats.retries} retries, "
        f"{stats.fallbacks} fallbacks, {stats.audio_seconds / 3600:.2f} h of audio, "
        f"~${stats.estimated_cost_usd:.4f} GPU",
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
