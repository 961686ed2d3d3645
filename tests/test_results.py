"""Typed results: one serialisation path, immutability, forward compatibility."""

from __future__ import annotations

import attrs
import pytest

from whisper_modal.errors import ConfigurationError
from whisper_modal.results import SCHEMA_VERSION, Segment, Timings, Transcript, Word


def sample() -> Transcript:
    words = [Word(0.0, 0.4, " Hello", 0.9), Word(0.4, 0.9, " there", 0.8)]
    return Transcript(
        text="Hello there. Bye.",
        language="en",
        duration=2.5,
        segments=[
            Segment(0, 0.0, 0.9, "Hello there.", words, avg_logprob=-0.2, no_speech_prob=0.01),
            Segment(1, 1.0, 2.0, "Bye.", compression_ratio=1.1, temperature=0.0),
        ],
        model="tiny.en",
        backend="modal",
        device="cuda:NVIDIA A10G",
        mode="batched",
        timings=Timings(load=1.5, decode=0.01, inference=0.3, total=1.9),
        language_probability=None,
        fallback_reason=None,
        cold_start=True,
        job_id="fc-123",
    )


def test_round_trip_is_exact() -> None:
    t = sample()
    d = t.to_dict()
    assert d["schema_version"] == SCHEMA_VERSION
    assert Transcript.from_dict(d) == t
    assert isinstance(t.segments, tuple) and isinstance(t.segments[0].words, tuple)


def test_optional_fields_round_trip_both_ways() -> None:
    full = sample().with_changes(
        language_probability=0.97,
        fallback_reason="modal unavailable",
        output_location="s3://b/k.json",
        job_id=None,
    )
    assert Transcript.from_dict(full.to_dict()) == full
    bare = Transcript(text="", language="", duration=0.0)
    d = bare.to_dict()
    assert d["segments"] == [] and d["job_id"] is None and d["language_probability"] is None
    assert Transcript.from_dict(d) == bare
    seg = sample().segments[1]
    assert seg.avg_logprob is None and Segment.from_dict(seg.to_dict()) == seg


def test_lists_become_tuples() -> None:
    t = sample()  # built from lists
    assert type(t.segments) is tuple and type(t.segments[0].words) is tuple
    assert type(Transcript.from_dict(t.to_dict()).segments) is tuple
    assert hash(t.segments[0]) == hash(Transcript.from_dict(t.to_dict()).segments[0])


def test_words_flatten_in_order() -> None:
    t = sample()
    assert [w.word for w in t.words] == [" Hello", " there"]
    assert t.words == t.segments[0].words + t.segments[1].words
    extra = Segment(2, 2.0, 2.5, "Again.", [Word(2.0, 2.5, " Again.", 0.7)])
    more = t.with_changes(segments=(*t.segments, extra))
    assert [w.start for w in more.words] == [0.0, 0.4, 2.0]
    assert Transcript("", "en", 0.0).words == ()


def test_timings_ignore_unknown_and_missing_stages() -> None:
    assert Timings.from_dict({"load": 1, "gpu_seconds": 9, "queue": None}) == Timings(load=1.0)
    assert Timings.from_dict(Timings(1, 2, 3, 6, 0.5).to_dict()) == Timings(1, 2, 3, 6, 0.5)


def test_results_are_frozen() -> None:
    t = sample()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        t.text = "changed"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        t.segments[0].start = 9.0  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        t.words[0].word = "x"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        t.timings.load = 0.0  # type: ignore[misc]
    assert t.with_changes(text="changed").text == "changed" and t.text != "changed"


def test_newer_schema_is_refused_and_unknown_keys_ignored() -> None:
    d = sample().to_dict()
    with pytest.raises(ConfigurationError, match="upgrade"):
        Transcript.from_dict({**d, "schema_version": SCHEMA_VERSION + 1})
    assert Transcript.from_dict({**d, "a_future_field": ["A"]}) == sample()
    with pytest.raises(ConfigurationError):
        Transcript.from_dict({"language": "en"})


def test_openai_whisper_segment_dicts_are_accepted() -> None:
    raw = {
        "id": 3,
        "seek": 0,
        "start": 1.0,
        "end": 2.0,
        "text": " hi",
        "tokens": [1, 2],
        "temperature": 0.0,
    }
    seg = Segment.from_dict(raw)
    assert seg.id == 3 and seg.text == " hi" and seg.words == ()


def test_a_dict_from_an_older_app_without_mode_still_parses() -> None:
    d = sample().to_dict()
    del d["mode"]  # added without a schema bump: an additive, optional key
    t = Transcript.from_dict(d)
    assert t.mode == "" and t.text == sample().text
