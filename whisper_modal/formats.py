r"""Writers: SRT, WebVTT, TXT, TSV, JSON and Markdown, as pure functions plus a registry.

Subtitle rules that real parsers (pysrt, webvtt-py, ffmpeg) rely on:

* a blank line ends a cue, so blank lines inside text are dropped; every Unicode line
  break (``\r``, ``\x85``, ``\u2028``...) becomes ``\n`` first, because some parsers
  split on them and would otherwise see a blank line where the writer saw none;
* ``-->`` inside text would read as a timing line, so it becomes ``→`` (U+2192): it keeps
  the meaning for a reader, and contains no ``-`` or ``>`` that could form a new arrow;
* WebVTT text is HTML-like: ``&``, ``<`` and ``>`` are escaped (SRT keeps text as is,
  since players treat ``<b>`` there as markup by convention and ``&`` is not special);
* the hours field grows past 99 (``100:00:00,000``) instead of wrapping;
* times are rounded to whole milliseconds once, as integers, so ``,1000`` cannot occur,
  and ``end >= start`` is enforced after rounding.

Segments whose text is empty are skipped in the subtitle and TSV formats.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from whisper_modal.errors import ConfigurationError

if TYPE_CHECKING:  # results.py imports this module for its to_* methods
    from whisper_modal.results import Segment, Transcript

__all__ = [
    "FORMATS",
    "WRITERS",
    "format_from_path",
    "to_json",
    "to_markdown",
    "to_srt",
    "to_tsv",
    "to_txt",
    "to_vtt",
    "write",
]

# C0/C1 control characters that splitlines() leaves inside a line (tab is handled apart)
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f]")

#: every format's file suffix (``.markdown`` is accepted as ``md``)
_SUFFIXES = {
    ".srt": "srt",
    ".vtt": "vtt",
    ".txt": "txt",
    ".tsv": "tsv",
    ".json": "json",
    ".md": "md",
    ".markdown": "md",
}


def _ms(seconds: float) -> int:
    """Seconds to whole milliseconds (never negative)."""
    if not math.isfinite(seconds):
        # round() would raise a bare ValueError/OverflowError deep inside a writer
        raise ConfigurationError(f"cannot write a time of {seconds!r} seconds")
    return max(0, round(seconds * 1000))


def _clock(ms: int, sep: str) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{millis:03d}"


def _cue_text(text: str) -> str:
    # splitlines() knows every Unicode line break; whitespace-only lines count as blank.
    # Control characters go: ffmpeg reads cue text as a C string and drops the cues
    # after a NUL, and no subtitle format gives them a meaning.
    lines = (_CONTROL.sub("", line.replace("\t", " ")).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line).replace("-->", "→")


def _cues(t: Transcript) -> list[tuple[int, int, str]]:
    """(start ms, end ms, text) of every segment that has text, end >= start."""
    cues: list[tuple[int, int, str]] = []
    for seg in t.segments:
        text = _cue_text(seg.text)
        if not text:
            continue
        start = _ms(seg.start)
        cues.append((start, max(start, _ms(seg.end)), text))
    return cues


def to_srt(t: Transcript) -> str:
    """Render SubRip subtitles: numbered cues with ``HH:MM:SS,mmm --> HH:MM:SS,mmm`` times.

    Args:
        t: the transcript; each segment with text becomes one cue, numbered from 1.

    Returns:
        The SRT document (an empty string when no segment has text).

    Raises:
        ConfigurationError: a segment time is not a finite number.
    """
    blocks = [
        f"{i}\n{_clock(start, ',')} --> {_clock(end, ',')}\n{text}\n"
        for i, (start, end, text) in enumerate(_cues(t), start=1)
    ]
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    # "&" first, or the "&" of "&lt;" would be escaped again
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(t: Transcript) -> str:
    """Render WebVTT subtitles: ``WEBVTT`` header, ``HH:MM:SS.mmm`` times, escaped text.

    Args:
        t: the transcript; each segment with text becomes one cue.

    Returns:
        The WebVTT document (``"WEBVTT\\n"`` when no segment has text).

    Raises:
        ConfigurationError: a segment time is not a finite number.
    """
    blocks = ["WEBVTT\n"]
    blocks += [
        f"{_clock(start, '.')} --> {_clock(end, '.')}\n{_vtt_escape(text)}\n"
        for start, end, text in _cues(t)
    ]
    return "\n".join(blocks)


def to_txt(t: Transcript) -> str:
    """Render plain text, one segment per line (whitespace inside a segment collapsed).

    Args:
        t: the transcript; when it has no segments, its ``text`` is written instead.

    Returns:
        The text, ending with a newline, or an empty string when there is no text.
    """
    lines = [" ".join(s.text.split()) for s in t.segments if s.text.strip()]
    if not lines and t.text.strip():
        lines = [" ".join(t.text.split())]
    return "\n".join(lines) + ("\n" if lines else "")


def to_tsv(t: Transcript) -> str:
    """Render openai-whisper's TSV: a ``start\\tend\\ttext`` header, then one row per segment.

    Times are integer milliseconds. Fields are not quoted (as in openai-whisper), so tabs
    and line breaks inside the text become spaces; segments without text are skipped.

    Args:
        t: the transcript.

    Returns:
        The TSV document, ending with a newline.

    Raises:
        ConfigurationError: a segment time is not a finite number.
    """
    rows = ["start\tend\ttext"]
    for seg in t.segments:
        text = " ".join(seg.text.split())  # split() also takes tabs and every line break
        if text:
            start = _ms(seg.start)
            rows.append(f"{start}\t{max(start, _ms(seg.end))}\t{text}")
    return "\n".join(rows) + "\n"


def to_json(t: Transcript, *, indent: int | None = 2) -> str:
    """Render exactly ``t.to_dict()`` as JSON (``Transcript.from_dict`` reads it back).

    Args:
        t: the transcript.
        indent: spaces per nesting level; None writes one compact line.

    Returns:
        The JSON document, ending with a newline; non-ASCII text is kept as is (UTF-8).
    """
    return json.dumps(t.to_dict(), indent=indent, ensure_ascii=False) + "\n"


def _mmss(seconds: float) -> str:
    """``mm:ss``, or ``h:mm:ss`` from one hour on (whole seconds, truncated)."""
    hours, rest = divmod(_ms(seconds) // 1000, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _md_cell(text: str) -> str:
    # A "|" would end the table cell; the backslash is escaped first so "\\|" stays text.
    return " ".join(text.split()).replace("\\", "\\\\").replace("|", "\\|")


def _segment_line(seg: Segment) -> str:
    return f"- **[{_mmss(seg.start)} - {_mmss(seg.end)}]** {' '.join(seg.text.split())}"


def to_markdown(t: Transcript) -> str:
    """Render a Markdown document for people to read.

    It holds a title, a metadata line (language, duration, model), the full text, a
    "Segments" list of ``[mm:ss - mm:ss] text`` lines and, when word timestamps are
    present, a "Words" table (start, end, word, probability).

    Args:
        t: the transcript.

    Returns:
        The Markdown document, ending with a newline.

    Raises:
        ConfigurationError: a time is not a finite number.
    """
    meta = f"*Language:* {t.language or 'unknown'} · *Duration:* {_mmss(t.duration)}"
    if t.model:
        meta += f" · *Model:* {t.model}"
    parts = ["# Transcript", "", meta, "", t.text.strip() or "_(no speech)_", ""]
    segments = [s for s in t.segments if s.text.strip()]
    if segments:
        parts += ["## Segments", "", *(_segment_line(s) for s in segments), ""]
    if t.words:
        parts += ["## Words", "", "| start | end | word | probability |", "|---:|---:|---|---:|"]
        parts += [
            f"| {w.start:.2f} | {w.end:.2f} | {_md_cell(w.word)} | {w.probability:.2f} |"
            for w in t.words
        ]
        parts.append("")
    return "\n".join(parts)


#: format name -> writer; read-only so one caller cannot change another's output
WRITERS: Mapping[str, Callable[[Transcript], str]] = MappingProxyType(
    {
        "srt": to_srt,
        "vtt": to_vtt,
        "txt": to_txt,
        "tsv": to_tsv,
        "json": to_json,
        "md": to_markdown,
        "markdown": to_markdown,
    }
)
#: canonical format names, in the order the CLI lists them (``markdown`` is an alias of ``md``)
FORMATS: tuple[str, ...] = ("srt", "vtt", "txt", "tsv", "json", "md")


def write(t: Transcript, fmt: str) -> str:
    """Render ``t`` in the format named ``fmt`` (case-insensitive; a leading dot is allowed).

    Args:
        t: the transcript.
        fmt: one of ``FORMATS`` or the alias ``"markdown"``.

    Returns:
        The rendered document.

    Raises:
        ConfigurationError: ``fmt`` is not a known format (the message lists the valid ones),
            or a time in ``t`` is not a finite number.
    """
    writer = WRITERS.get(str(fmt).lower().removeprefix("."))
    if writer is None:
        raise ConfigurationError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return writer(t)


def format_from_path(path: str | Path) -> str | None:
    """Return the format a file name's suffix implies (``"a/b.SRT"`` -> ``"srt"``).

    Args:
        path: a file path or name.

    Returns:
        A name from ``FORMATS``, or None when the suffix is not a known format.
    """
    return _SUFFIXES.get(Path(path).suffix.lower())
