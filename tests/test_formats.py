"""Writers, checked by real parsers: pysrt, webvtt-py and ffmpeg."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import unicodedata
from pathlib import Path

import pysrt
import pytest
import webvtt
from hypothesis import given, settings
from hypothesis import strategies as st

from whisper_modal.errors import ConfigurationError
from whisper_modal.formats import (
    FORMATS,
    WRITERS,
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
    (101 * HOURS + 2, 101 * HOURS + 3, "NUL\x00 and\tcontrol\x1b chars"),  # ffmpeg stops at NUL
)
CUES = 7  # TRICKY without the empty-text segment


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
    assert subs[6].text == "NUL and control chars"


def test_vtt_parses_with_webvtt() -> None:
    text = to_vtt(TRICKY)
    assert text.startswith("WEBVTT\n")
    cues = webvtt.from_buffer(io.StringIO(text)).captions
    assert len(cues) == CUES
    assert cues[0].start == "00:00:00.000" and cues[0].end == "00:00:01.234"
    assert "&lt;b&gt;" in text and "&amp;" in text
    assert cues[0].text == "Hello &lt;b&gt;world&lt;/b&gt; &amp; friends"  # no raw markup
    assert cues[4].start == "02:05:07.891"
    assert cues[5].start == "101:00:00.000"
    srt = pysrt.from_string(to_srt(TRICKY))
    assert [(c.start_in_seconds, c.end_in_seconds) for c in cues] == [
        (s.start.ordinal // 1000, s.end.ordinal // 1000) for s in srt
    ]
    assert [c.text for c in cues] == [
        s.text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") for s in srt
    ]


def test_rounding_never_breaks_a_time() -> None:
    t = transcript(
        (0.9996, 1.0004, "rounds up to a whole second"),
        (59.9999, 59.9994, "end before start after rounding"),
        (3599.9995, 3600.0, "to the hour"),
        (-0.2, 0.1, "negative start"),
    )
    srt, vtt = to_srt(t), to_vtt(t)
    assert ",1000" not in srt and ".1000" not in vtt
    subs = pysrt.from_string(srt)
    assert [(s.start.ordinal, s.end.ordinal) for s in subs] == [
        (1000, 1000),
        (60000, 60000),
        (3600000, 3600000),
        (0, 100),
    ]
    assert "01:00:00,000 --> 01:00:00,000" in srt
    assert all(s.end >= s.start for s in subs)
    assert len(webvtt.from_buffer(io.StringIO(vtt)).captions) == 4


def test_line_breaks_and_arrows_cannot_split_a_cue() -> None:
    t = transcript(
        (0.0, 1.0, "one\u2028\u2028two\x85\x85three\r\rfour \n \t\n five"),
        (1.0, 2.0, "<!-- comment --> and ---> arrows"),
        (2.0, 3.0, "1\n00:00:09,000 --> 00:00:10,000"),
    )
    subs = pysrt.from_string(to_srt(t))
    assert [s.text for s in subs] == [
        "one\ntwo\nthree\nfour\nfive",
        "<!-- comment → and -→ arrows",
        "1\n00:00:09,000 → 00:00:10,000",
    ]
    cues = webvtt.from_buffer(io.StringIO(to_vtt(t))).captions
    assert [c.text for c in cues] == [
        "one\ntwo\nthree\nfour\nfive",
        "&lt;!-- comment → and -→ arrows",
        "1\n00:00:09,000 → 00:00:10,000",
    ]


def test_non_finite_time_is_a_configuration_error() -> None:
    bad = transcript((0.0, float("nan"), "x"))
    for fmt in ("srt", "vtt", "tsv"):
        with pytest.raises(ConfigurationError, match="nan"):
            write(bad, fmt)
    with pytest.raises(ConfigurationError, match="inf"):
        to_markdown(Transcript("x", "en", float("inf")))


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
    t = transcript(
        (0.0, 1.5, "tab\there"),
        (1.5, 3.25, "a|b pipe in text"),
        (3.25, 4.0, '"quoted"\nline\u2028two'),
        words=True,
    )
    rows = list(csv.reader(io.StringIO(to_tsv(t)), delimiter="\t", quoting=csv.QUOTE_NONE))
    assert rows == [
        ["start", "end", "text"],
        ["0", "1500", "tab here"],
        ["1500", "3250", "a|b pipe in text"],
        ["3250", "4000", '"quoted" line two'],
    ]
    assert to_txt(t) == 'tab here\na|b pipe in text\n"quoted" line two\n'
    md = to_markdown(t)
    assert md.startswith("# Transcript\n")
    assert "*Language:* en · *Duration:* 00:04 · *Model:* tiny.en" in md
    assert t.text in md
    segments, words = md.split("## Segments")[1].split("## Words")
    assert "**[00:01 - 00:03]** a|b pipe in text" in segments  # plain text: no escaping
    assert "| 0.00 | 0.75 | tab | 0.90 |" in words
    assert "| 1.50 | 2.38 | a\\|b | 0.90 |" in words  # a cell must escape "|"
    rows_md = [line for line in words.splitlines() if line.startswith("|")]
    assert len(rows_md) == 2 + len(t.words)  # header, rule, one row per word


def test_json_round_trip() -> None:
    t = TRICKY.with_changes(language_probability=0.97, job_id="fc-1", cold_start=True)
    text = to_json(t)
    assert json.loads(text) == t.to_dict()
    assert Transcript.from_dict(json.loads(text)) == t
    assert "ünïcødé" in text  # UTF-8 kept, not \\u-escaped
    assert "\n" not in to_json(t, indent=None).rstrip("\n")


def test_markdown_without_words_has_no_table() -> None:
    md = to_markdown(TRICKY)
    assert "## Words" not in md and "101:00:00 - 101:00:01" in md


def test_registry() -> None:
    assert FORMATS == ("srt", "vtt", "txt", "tsv", "json", "md", "rttm")
    assert write(TRICKY, "markdown") == to_markdown(TRICKY)
    with pytest.raises(ConfigurationError, match="srt, vtt"):
        write(TRICKY, "docx")
    assert write(TRICKY, ".SRT") == to_srt(TRICKY)
    assert format_from_path("a/b.SRT") == "srt" and format_from_path("x.mp3") is None
    assert format_from_path("notes.markdown") == "md" and format_from_path("noext") is None
    assert set(FORMATS) <= set(WRITERS) and set(WRITERS) - set(FORMATS) == {"markdown"}
    assert all(write(TRICKY, f) == WRITERS[f](TRICKY) for f in FORMATS)
    with pytest.raises(TypeError):
        WRITERS["docx"] = to_txt  # type: ignore[index]


texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)  # no lone surrogates


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
    # a cue is written when the text has a visible character: not space, not a control
    kept = [
        s
        for s in t.segments
        if any(not c.isspace() and unicodedata.category(c) != "Cc" for c in s.text)
    ]
    subs = pysrt.from_string(to_srt(t))
    assert len(subs) == len(kept)
    assert [(s.start.ordinal, s.end.ordinal) for s in subs] == [
        (round(k.start * 1000), round(k.end * 1000)) for k in kept
    ]
    assert len(webvtt.from_buffer(io.StringIO(to_vtt(t))).captions) == len(kept)
