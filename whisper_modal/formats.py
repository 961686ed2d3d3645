r"""Writers: SRT, WebVTT, TXT, TSV, JSON, Markdown, RTTM (and HTML for notebooks).

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

Diarized transcripts (segments with a ``speaker``) carry it in every format: WebVTT as a
voice tag (``<v SPEAKER_00>``), SRT and TXT as a ``SPEAKER_00: `` prefix, TSV as a column,
JSON as fields, Markdown grouped by speaker, and RTTM (one ``SPEAKER`` line per segment).
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from whisper_modal.errors import ConfigurationError

if TYPE_CHECKING:  # results.py imports this module for its to_* methods
    from whisper_modal.backends.base import JobStatus
    from whisper_modal.jobs import Job
    from whisper_modal.results import Segment, Transcript, Word

__all__ = [
    "FORMATS",
    "WRITERS",
    "format_from_path",
    "job_html",
    "to_html",
    "to_json",
    "to_markdown",
    "to_rttm",
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
    ".rttm": "rttm",
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


def _cues(t: Transcript) -> list[tuple[int, int, str, str | None]]:
    """(start ms, end ms, text, speaker) of every segment that has text, end >= start."""
    cues: list[tuple[int, int, str, str | None]] = []
    for seg in t.segments:
        text = _cue_text(seg.text)
        if not text:
            continue
        start = _ms(seg.start)
        cues.append((start, max(start, _ms(seg.end)), text, seg.speaker))
    return cues


def _prefix(speaker: str | None) -> str:
    return f"{speaker}: " if speaker else ""


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
        f"{i}\n{_clock(start, ',')} --> {_clock(end, ',')}\n{_prefix(speaker)}{text}\n"
        for i, (start, end, text, speaker) in enumerate(_cues(t), start=1)
    ]
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    # "&" first, or the "&" of "&lt;" would be escaped again
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _voice(speaker: str | None) -> str:
    # A voice tag's annotation ends at ">" and may not hold "&", "<" or ">"; our labels
    # never do, but a label from elsewhere is escaped rather than trusted.
    return f"<v {_vtt_escape(speaker)}>" if speaker else ""


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
        f"{_clock(start, '.')} --> {_clock(end, '.')}\n{_voice(speaker)}{_vtt_escape(text)}\n"
        for start, end, text, speaker in _cues(t)
    ]
    return "\n".join(blocks)


def to_txt(t: Transcript) -> str:
    """Render plain text, one segment per line (whitespace inside a segment collapsed).

    Args:
        t: the transcript; when it has no segments, its ``text`` is written instead.

    Returns:
        The text, ending with a newline, or an empty string when there is no text.
    """
    lines = [_prefix(s.speaker) + " ".join(s.text.split()) for s in t.segments if s.text.strip()]
    if not lines and t.text.strip():
        lines = [" ".join(t.text.split())]
    return "\n".join(lines) + ("\n" if lines else "")


def to_tsv(t: Transcript) -> str:
    """Render openai-whisper's TSV: a ``start\\tend\\ttext`` header, then one row per segment.

    A diarized transcript gets a ``speaker`` column before ``text``.

    Times are integer milliseconds. Fields are not quoted (as in openai-whisper), so tabs
    and line breaks inside the text become spaces; segments without text are skipped.

    Args:
        t: the transcript.

    Returns:
        The TSV document, ending with a newline.

    Raises:
        ConfigurationError: a segment time is not a finite number.
    """
    diarized = any(seg.speaker for seg in t.segments)
    rows = ["start\tend\tspeaker\ttext" if diarized else "start\tend\ttext"]
    for seg in t.segments:
        text = " ".join(seg.text.split())  # split() also takes tabs and every line break
        if text:
            start = _ms(seg.start)
            speaker = f"{seg.speaker or ''}\t" if diarized else ""
            rows.append(f"{start}\t{max(start, _ms(seg.end))}\t{speaker}{text}")
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
    who = f"**{seg.speaker}:** " if seg.speaker else ""
    return f"- **[{_mmss(seg.start)} - {_mmss(seg.end)}]** {who}{' '.join(seg.text.split())}"


def _speaker_paragraphs(segments: list[Segment]) -> list[str]:
    """One paragraph per run of consecutive segments by the same speaker, label in bold."""
    paragraphs: list[str] = []
    current: str | None = None
    texts: list[str] = []
    for seg in [*segments, None]:
        if seg is None or seg.speaker != current:
            if texts:
                label = current or "Unknown speaker"
                paragraphs += [f"**{label}:** {' '.join(texts)}", ""]
            if seg is None:
                break
            current, texts = seg.speaker, []
        texts.append(" ".join(seg.text.split()))
    return paragraphs


def _word_table(words: list[Word]) -> list[str]:
    rows = ["| start | end | word | probability |", "|---:|---:|---|---:|"]
    rows += [
        f"| {w.start:.2f} | {w.end:.2f} | {_md_cell(w.word)} | {w.probability:.2f} |" for w in words
    ]
    return [*rows, ""]


def to_markdown(t: Transcript) -> str:
    """Render a Markdown document for people to read.

    It holds a title, a metadata line (language, duration, model), the full text, a
    "Segments" list of ``[mm:ss - mm:ss] text`` lines and, when word timestamps are
    present, a "Words" table (start, end, word, probability).

    A diarized transcript is written as a meeting transcript: the metadata names the
    speakers, the full text is grouped into paragraphs by speaker with bold labels
    (``**SPEAKER_00:** ...``), each segment line names its speaker, and the word timings
    come in one table per speaker.

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
    if t.speakers:
        meta += f" · *Speakers:* {len(t.speakers)}"
    parts = ["# Transcript", "", meta, ""]
    segments = [s for s in t.segments if s.text.strip()]
    if t.speakers and segments:
        parts += _speaker_paragraphs(segments)
    else:
        parts += [t.text.strip() or "_(no speech)_", ""]
    if segments:
        parts += ["## Segments", "", *(_segment_line(s) for s in segments), ""]
    if t.words:
        parts += ["## Words", ""]
        if t.speakers:
            for speaker in t.speakers:
                parts += [f"### {speaker}", ""]
                parts += _word_table([w for w in t.words if w.speaker == speaker])
        else:
            parts += _word_table(list(t.words))
    return "\n".join(parts)


def to_rttm(t: Transcript, *, file_id: str = "audio") -> str:
    """Render the speaker turns as RTTM, the diarization exchange format (NIST RT-09).

    Each segment with a speaker is one line ``SPEAKER <file> <channel> <onset> <duration>
    <NA> <NA> <speaker> <NA> <NA>``, times in seconds with millisecond precision, the
    channel counted from 1 (a ``multichannel`` segment's ``channel + 1``, else 1);
    consecutive segments of one speaker that touch are joined into one turn.

    Args:
        t: the transcript (empty output unless it is diarized).
        file_id: the recording's name in the first field (no spaces).

    Returns:
        The RTTM document, one line per turn.

    Raises:
        ConfigurationError: ``file_id`` is empty or holds whitespace, or a time is not
            a finite number.
    """
    if not file_id or any(c.isspace() for c in file_id):
        raise ConfigurationError(f"an RTTM file id needs no spaces, got {file_id!r}")
    turns: list[list[int | str]] = []
    for seg in t.segments:
        if not seg.speaker:
            continue
        start = _ms(seg.start)
        end = max(start, _ms(seg.end))
        if turns and turns[-1][2] == seg.speaker and int(turns[-1][1]) >= start:
            turns[-1][1] = max(int(turns[-1][1]), end)
        else:
            turns.append([start, end, seg.speaker, (seg.channel or 0) + 1])
    return "".join(
        f"SPEAKER {file_id} {channel} {int(a) / 1000:.3f} {(int(b) - int(a)) / 1000:.3f} "
        f"<NA> <NA> {who} <NA> <NA>\n"
        for a, b, who, channel in turns
    )


#: speaker colours in notebooks (Okabe-Ito, readable on light and dark themes)
_SPEAKER_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
# Jupyter's stylesheet right-aligns table cells; a transcript reads left to right
_CELL = 'style="text-align:left;vertical-align:top;padding:2px 8px"'
_TIME = 'style="text-align:right;vertical-align:top;padding:2px 8px;white-space:nowrap"'
_WHO = 'style="text-align:left;vertical-align:top;padding:2px 8px;white-space:nowrap"'


def _tenths(seconds: float) -> str:
    """``m:ss.s`` (``h:mm:ss.s`` from an hour): tenths, so short turns do not read 0:08-0:08."""
    tenths = max(0, round(seconds * 10))
    hours, rest = divmod(tenths, 36000)
    minutes, rest = divmod(rest, 600)
    secs = f"{rest // 10:02d}.{rest % 10}"
    return f"{hours}:{minutes:02d}:{secs}" if hours else f"{minutes}:{secs}"


def _turns(t: Transcript) -> list[tuple[float, float, str | None, str]]:
    """Rows for display: consecutive segments of one speaker joined into one turn."""
    rows: list[tuple[float, float, str | None, str]] = []
    for seg in t.segments:
        text = " ".join(seg.text.split())
        if not text:
            continue
        if rows and seg.speaker is not None and rows[-1][2] == seg.speaker:
            start, _, speaker, before = rows[-1]
            rows[-1] = (start, seg.end, speaker, f"{before} {text}")
        else:
            rows.append((seg.start, seg.end, seg.speaker, text))
    return rows


def to_html(t: Transcript) -> str:
    """Render an HTML table of turns (start, end, speaker, text) for notebooks.

    Times show tenths of a second; on a diarized transcript consecutive segments of one
    speaker are one row and each speaker has a colour. Cells carry inline styles, so the
    table reads the same under Jupyter's stylesheet (which right-aligns cells) and in VS
    Code or a static HTML export.

    Args:
        t: the transcript; the speaker column appears when it is diarized.

    Returns:
        An HTML fragment: a caption line and a ``<table>``.
    """
    diarized = any(s.speaker for s in t.segments)
    colour = {
        name: _SPEAKER_COLOURS[i % len(_SPEAKER_COLOURS)] for i, name in enumerate(t.speakers)
    }
    head = f"<th {_TIME}>start</th><th {_TIME}>end</th>"
    head += (f"<th {_WHO}>speaker</th>" if diarized else "") + f"<th {_CELL}>text</th>"
    rows = []
    for start, end, who, text in _turns(t):
        speaker = ""
        if diarized:
            dot = colour.get(who or "", "#888888")
            speaker = (
                f'<td {_WHO}><span style="color:{dot}">&#9679;</span> {html.escape(who or "")}</td>'
            )
        rows.append(
            f"<tr><td {_TIME}>{_tenths(start)}</td><td {_TIME}>{_tenths(end)}</td>{speaker}"
            f"<td {_CELL}>{html.escape(text)}</td></tr>"
        )
    caption = f"{html.escape(t.language or 'unknown')} · {_tenths(t.duration)}"
    if t.model:
        caption += f" · {html.escape(t.model)}"
    if t.speakers:
        caption += f" · {len(t.speakers)} speakers"
    if t.diarization_error:
        caption += f" · diarization failed: {html.escape(t.diarization_error)}"
    return (
        f"<div><p><b>Transcript</b> ({caption})</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


_STATUS_COLOURS = {"succeeded": "#009E73", "failed": "#D55E00", "cancelled": "#888888"}


def job_html(
    job: Job, status: JobStatus | None, parts: tuple[int, int] | None, error: str | None
) -> str:
    """A job's notebook view (``Job._repr_html_``): id, backend, status, fan-out progress."""
    bits = [f"<code>{html.escape(job.id)}</code>", html.escape(job.backend)]
    if status is not None:
        colour = _STATUS_COLOURS.get(status.value, "#0072B2")
        bits.append(f'<b style="color:{colour}">{html.escape(status.value)}</b>')
    if error is not None:
        bits.append(f"status unavailable: {html.escape(error)}")
    if parts is not None:
        done, total = parts
        bits.append(
            f'<progress value="{done}" max="{max(total, 1)}"></progress> {done}/{total} pieces'
        )
    if job.fallback_reason:
        bits.append(f"fell back: {html.escape(job.fallback_reason)}")
    return f'<div style="text-align:left"><b>Job</b> {" · ".join(bits)}</div>'


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
        "rttm": to_rttm,
    }
)
#: canonical format names, in the order the CLI lists them (``markdown`` is an alias of ``md``)
FORMATS: tuple[str, ...] = ("srt", "vtt", "txt", "tsv", "json", "md", "rttm")


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
