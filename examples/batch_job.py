"""A scripted batch job: transcribe every audio file in a folder, write subtitles next to it.

    python examples/batch_job.py AUDIO_DIR [--format srt] [--concurrency 16] [--backend auto]

The same as ``whisper-modal transcribe AUDIO_DIR -f srt``, written out with the library's
batch helpers (``whisper_modal.batch``) to show the pieces: files already transcribed (an
up-to-date subtitle file exists) are skipped, so the job can be re-run after an
interruption; two inputs with one stem (``a.mp3``, ``a.ogg``) get distinct outputs
(``a.mp3.srt``, ``a.ogg.srt``); per-file failures are reported and do not stop the others;
the exit code is 1 if any file failed. Ends with the client's statistics (calls, retries,
fallbacks, audio hours, estimated GPU cost).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import whisper_modal as wm
from whisper_modal.batch import Planned, arun_batch, expand_inputs, plan_outputs
from whisper_modal.formats import FORMATS


def report(item: Planned, result: wm.Transcript | wm.WhisperModalError) -> None:
    if isinstance(result, wm.WhisperModalError):
        print(f"FAILED {item.source}: {type(result).__name__}: {result}", file=sys.stderr)
    else:
        print(f"ok     {item.source} ({result.duration:.0f} s, {result.backend})", file=sys.stderr)


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
    plan = plan_outputs(expand_inputs([str(args.folder)]), fmt=args.format, output_dir=None)
    done = asyncio.run(
        arun_batch(
            client,
            plan,
            fmt=args.format,
            concurrency=args.concurrency,
            on_result=report,
            language=args.language,
        )
    )
    stats = client.stats()
    print(
        f"{len(done.written)} written, {len(done.skipped)} up to date, {len(done.failed)} failed; "
        f"{stats.retries} retries, {stats.fallbacks} fallbacks, "
        f"{stats.audio_seconds / 3600:.2f} h of audio, ~${stats.estimated_cost_usd:.4f} GPU",
        file=sys.stderr,
    )
    return 1 if done.failed else 0


if __name__ == "__main__":
    sys.exit(main())
