"""Writers, checked by real parsers: pysrt, webvtt-py and ffmpeg."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import pysrt
import pytest
import webvtt
from hypothesis import given, settings
from hypothesis import strategies as st

from whisper_modal.errors import ConfigurationError
from whisper_modal.formats import (
    FORMATS,
    format_from_path,
    to_json,
    to_markdown,
    to_srt,
    to_tsv,
    to_txt,
    to_vtt,
    write,
)
from whisper_modal.results import Segment, Transcript, Word

HOURS = 3600.0


def transcript(*segments: tuple[float, float, str], words: bool = False) -> Transcript:
    segs = []
    for i, (start, end, text) in enumerate(segments):
        ws = (
            (Word(start, (start + end) / 2, " " + text.split()[0] if text.split() else " x", 0.9),)
            if words
            else ()
        )
        segs.append(Segment(id=i, start=start, end=end, text=text, words=ws))
    return Transcript(
        text=" ".join(s[2] for s in segments),
        language="en",
        duration=segments[-1][1] if segments else 0.0,
        segments=tuple(segs),
        model="tiny.en",
    )


TRICKY = transcript(
    (0.0, 1.2345, "Hello <b>world</b> & friends"),
    (1.5, 3.0, "a --> b is not a timing line"),
    (3.0, 4.0, "first line\n\n\nafter blank lines"),
    (4.0, 4.0, "zero length"),
    (5.0, 6.0, "   "),  # empty text: skipped
    (2 * HOURS + 5 * 60 + 7.891, 2 * HOURS + 5 * 60 + 9.999, "past two hours"),
    (101 * HOURS, 101 * HOURS + 1.0, "over a hundred hours, ünïcødé ✓"),
)
CUES = 6  # TRICKY without the empty-text segment


def test_srt_parses_with_pysrt() -> None:
    text = to_srt(TRICKY)
    subs = pysrt.from_string(text)
    assert len(subs) == CUES
    assert subs[0].start.ordinal == 0 and subs[0].end.ordinal == 1234
    assert "-->" not in subs[1].text and "→" in subs[1].text
    assert subs[2].text == "first line\nafter blank lines"
    assert subs[4].start.ordinal == round((2 * HOURS + 5 * 60 + 7.891) * 1000)
    assert "101:00:00,000 --> 101:00:01,000" in text
    assert [s.index for s in subs] == list(range(1, CUES + 1))


def test_vtt_parses_with_webvtt() -> None:
    text = to_vtt(TRICKY)
    assert text.startswith("WEBVTT\n")
    cues = webvtt.from_buffer(io.StringIO(text)).captions
    assert len(cues) == CUES
    assert cues[0].start == "00:00:00.000" and cues[0].end == "00:00:01.234"
    assert "&lt;b&gt;" in text and "&amp;" in text
    assert cues[0].text == "Hello &lt;b&gt;world&lt;/b&gt; &amp; friends"  # no raw markup
    assert cues[4].start == "02:05:07.891"


@pytest.mark.parametrize(("src", "dst"), [("vtt", "srt"), ("srt", "vtt")])
def test_ffmpeg_converts_our_subtitles(src: str, dst: str, tmp_path: Path) -> None:
    source = tmp_path / f"in.{src}"
    source.write_text(write(TRICKY, src), encoding="utf-8")
    target = tmp_path / f"out.{dst}"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-i", str(source), str(target)], check=True
    )
    converted = target.read_text(encoding="utf-8")
    if dst == "srt":
        assert len(pysrt.from_string(converted)) == CUES
    else:
        assert len(webvtt.from_buffer(io.StringIO(converted)).captions) == CUES


def test_empty_transcript_is_valid_everywhere() -> None:
    empty = Transcript(text="", language="en", duration=0.0)
    assert to_srt(empty) == ""
    assert to_vtt(empty) == "WEBVTT\n"
    assert webvtt.from_buffer(io.StringIO(to_vtt(empty))).captions == []
    assert to_txt(empty) == ""
    assert to_tsv(empty) == "start\tend\ttext\n"
    assert Transcript.from_dict(json.loads(to_json(empty))) == empty
    assert "_(no speech)_" in to_markdown(empty)


def test_tsv_txt_json_markdown() -> None:
    t = transcript((0.0, 1.5, "tab\there"), (1.5, 3.25, "pipe | in text"), words=True)
    rows = list(csv.reader(io.StringIO(to_tsv(t)), delimiter="\t"))
    assert rows == [
        ["start", "end", "text"],
        ["0", "1500", "tab here"],
        ["1500", "3250", "pipe | in text"],
    ]
    assert to_txt(t) == "tab here\npipe | in text\n"
    assert Transcript.from_dict(json.loads(to_json(t))) == t
    md = to_markdown(t)
    assert "## Segments" in md and "**[00:01 - 00:03]** pipe | in text" in md
    assert "| 1.50 | 2.38 |  pipe" not in md and "\\|" not in md.split("## Words")[0]
    assert "## Words" in md and "| 0.00 | 0.75 | tab | 0.90 |" in md


def test_registry() -> None:
    assert FORMATS == ("srt", "vtt", "txt", "tsv", "json", "md")
    assert write(TRICKY, "markdown") == to_markdown(TRICKY)
    with pytest.raises(ConfigurationError, match="srt, vtt"):
        write(TRICKY, "docx")
    assert format_from_path("a/b.SRT") == "srt" and format_from_path("x.mp3") is None


texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 400 * HOURS, allow_nan=False), st.floats(0, 30), texts), max_size=12
    )
)
def test_any_transcript_gives_parseable_srt(items: list[tuple[float, float, str]]) -> None:
    items.sort(key=lambda x: x[0])
    t = (
        transcript(*[(s, s + d, text) for s, d, text in items])
        if items
        else Transcript("", "en", 0.0)
    )
    expected = sum(1 for s in t.segments if s.text.strip())
    assert len(pysrt.from_string(to_srt(t))) == expected
    assert len(webvtt.from_buffer(io.StringIO(to_vtt(t))).captions) == expected
