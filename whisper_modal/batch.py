"""Many files in, one output file each: what ``whisper-modal transcribe DIR`` runs.

    inputs = expand_inputs(["calls/", "extra/*.mp3", "@list.txt"])
    plan = plan_outputs(inputs, fmt="srt", output_dir=Path("subs"))
    report = await arun_batch(client, plan, fmt="srt", concurrency=8)

* **Inputs**: a directory (its audio files, recursively, sorted), a glob pattern (quoted so
  the shell leaves it to us), ``@file`` (one path per line; ``#`` comments), or a file.
  Duplicates are dropped, order is kept.
* **Unique output names**: ``a.mp3`` -> ``a.srt``; when two inputs would write the same
  file (``jfk.mp3`` and ``jfk.ogg``), both keep their extension (``jfk.mp3.srt``,
  ``jfk.ogg.srt``). A directory's structure is mirrored under ``output_dir``. Decided over
  the whole input list before anything runs, so a re-run writes the same names.
* **Resumable**: an input whose output exists and is newer is skipped; outputs are written
  to a temp file and renamed, so an interrupted run never leaves a half file that would
  count as done.
* **Bounded**: at most ``concurrency`` calls in flight (``arun_many``), one failure never
  stops the others, and each file is written as soon as its transcript arrives.
"""

from __future__ import annotations

import asyncio
import glob
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from whisper_modal.concurrency import arun_many
from whisper_modal.errors import ConfigurationError, WhisperModalError

if TYPE_CHECKING:
    from whisper_modal.client import Client
    from whisper_modal.results import Transcript

__all__ = [
    "AUDIO_SUFFIXES",
    "BatchReport",
    "Planned",
    "arun_batch",
    "expand_inputs",
    "plan_outputs",
]

#: what a directory or glob contributes (other files in a folder are not audio)
AUDIO_SUFFIXES = frozenset(
    {".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".mp4", ".aac", ".webm", ".mka"}
)


@attrs.frozen
class Planned:
    """One input and the file its transcript goes to."""

    source: Path
    output: Path


@attrs.frozen
class BatchReport:
    """What a batch did: outputs written, inputs skipped as done, and failures by input."""

    written: tuple[Path, ...]
    skipped: tuple[Path, ...]
    failed: tuple[tuple[Path, WhisperModalError], ...]


def _is_glob(spec: str) -> bool:
    return any(ch in spec for ch in "*?[")


def expand_inputs(specs: Sequence[str]) -> list[tuple[Path, Path | None]]:
    """Resolve directories, globs, ``@lists`` and files to (file, directory root or None).

    Raises:
        ConfigurationError: a path that does not exist, a pattern or directory with no
            audio, or an unreadable list file.
    """
    found: list[tuple[Path, Path | None]] = []
    for spec in specs:
        if spec.startswith("@"):
            try:
                lines = Path(spec[1:]).read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ConfigurationError(f"cannot read the list {spec[1:]!r}: {exc}") from exc
            listed = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
            found += expand_inputs(listed)
        elif Path(spec).is_dir():
            root = Path(spec)
            files = sorted(p for p in root.rglob("*") if p.is_file() and _audio(p))
            if not files:
                raise ConfigurationError(f"no audio files under {spec!r}")
            found += [(p, root) for p in files]
        elif _is_glob(spec):
            files = sorted(Path(p) for p in glob.glob(spec, recursive=True))
            files = [p for p in files if p.is_file() and _audio(p)]
            if not files:
                raise ConfigurationError(f"no audio files match {spec!r}")
            found += [(p, None) for p in files]
        elif Path(spec).is_file():
            found.append((Path(spec), None))
        else:
            raise ConfigurationError(f"no such file or directory: {spec!r}")
    seen: set[Path] = set()
    unique: list[tuple[Path, Path | None]] = []
    for path, base in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((path, base))
    return unique


def _audio(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_SUFFIXES


def plan_outputs(
    inputs: Sequence[tuple[Path, Path | None]], *, fmt: str, output_dir: Path | None
) -> list[Planned]:
    """One output path per input, unique across the batch (see the module doc)."""

    def folder(path: Path, root: Path | None) -> Path:
        if output_dir is None:
            return path.parent
        return output_dir / path.parent.relative_to(root) if root is not None else output_dir

    short = [folder(p, r) / f"{p.stem}.{fmt}" for p, r in inputs]
    clashes = Counter(short)
    long = [
        folder(p, r) / f"{p.name}.{fmt}" if clashes[s] > 1 else s
        for (p, r), s in zip(inputs, short, strict=True)
    ]
    seen: Counter[Path] = Counter()
    out = []
    for (path, _), name in zip(inputs, long, strict=True):
        seen[name] += 1
        if seen[name] > 1:  # the same file name in two listed folders: number the later
            name = name.with_name(f"{path.stem}-{seen[name]}{path.suffix}.{fmt}")
        out.append(Planned(path, name))
    return out


def _done(item: Planned) -> bool:
    try:
        return item.output.stat().st_mtime >= item.source.stat().st_mtime
    except OSError:
        return False


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def arun_batch(
    client: Client,
    plan: Sequence[Planned],
    *,
    fmt: str,
    concurrency: int,
    overwrite: bool = False,
    progress: bool | None = None,
    on_result: Callable[[Planned, Transcript | WhisperModalError], None] | None = None,
    **call_options: Any,
) -> BatchReport:
    """Transcribe each planned input not yet done and write its output as it arrives.

    Args:
        client: the client whose ``atranscribe`` runs each file.
        plan: from ``plan_outputs``. fmt: the output format (``formats.write``).
        concurrency: most files in flight. overwrite: redo inputs whose output is newer.
        progress: a bar (None: only on a terminal). on_result: called per finished file.
        **call_options: passed to ``atranscribe`` (``options=``, ``backend=``, ...).
    """
    from whisper_modal.formats import write

    todo = [item for item in plan if overwrite or not _done(item)]
    skipped = tuple(item.source for item in plan if item not in todo)

    async def one(item: Planned) -> Transcript:
        try:
            transcript = await client.atranscribe(str(item.source), **call_options)
            await asyncio.to_thread(_write_atomically, item.output, write(transcript, fmt))
        except WhisperModalError as exc:
            if on_result is not None:
                on_result(item, exc)
            raise
        except OSError as exc:  # the output cannot be written: this file fails, not all
            error = ConfigurationError(f"cannot write {item.output}: {exc}")
            if on_result is not None:
                on_result(item, error)
            raise error from exc
        if on_result is not None:
            on_result(item, transcript)
        return transcript

    results = await arun_many(
        one, todo, concurrency=concurrency, return_exceptions=True, progress=progress
    )
    pairs = list(zip(todo, results, strict=True))
    return BatchReport(
        written=tuple(i.output for i, r in pairs if not isinstance(r, WhisperModalError)),
        skipped=skipped,
        failed=tuple((i.source, r) for i, r in pairs if isinstance(r, WhisperModalError)),
    )
