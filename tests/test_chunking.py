"""Cut planning and merging: pure numpy, on real speech with pauses."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tests import speech
from whisper_modal.engine.chunking import (
    HOP,
    SAMPLE_RATE,
    frame_db,
    merge_results,
    plan_chunks,
    plan_windows,
    speech_mask,
)
from whisper_modal.results import Transcript


@pytest.fixture(scope="module")
def long_clip() -> tuple[np.ndarray, str]:
    # ~100 s: 16 sentences, pauses of 0.6 s between them
    return speech.make_clip(speech.SENTENCES[:16], gap_seconds=0.6, noise_db=-60)


def test_windows_cover_the_clip_and_respect_the_limit(long_clip: tuple[np.ndarray, str]) -> None:
    samples, _ = long_clip
    windows = plan_windows(samples)
    assert windows[0].start == 0 and windows[-1].end == len(samples)
    assert all(a.end == b.start for a, b in itertools.pairwise(windows))
    assert all(w.seconds <= 30.0 for w in windows)
    assert len(windows) >= len(samples) / SAMPLE_RATE / 30


def test_cuts_fall_in_pauses(long_clip: tuple[np.ndarray, str]) -> None:
    samples, _ = long_clip
    mask = speech_mask(samples)
    for w in plan_windows(samples)[1:]:
        frame = w.start // HOP
        # never mid-word: the 50 ms around each cut are quiet
        assert not mask[max(0, frame - 5) : frame + 5].any(), w


def test_no_pause_falls_back_to_the_quietest_point() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(70 * SAMPLE_RATE) / SAMPLE_RATE
    tone = (0.3 + 0.25 * np.sin(2 * np.pi * 0.37 * t)) * rng.normal(
        0, 1, t.shape
    )  # no silence at all
    windows = plan_windows(tone.astype(np.float32))
    assert all(w.seconds <= 30.0 for w in windows) and len(windows) == 3
    db = frame_db(tone.astype(np.float32))
    for w in windows[1:]:
        lo = w.start // HOP - 1000
        assert db[w.start // HOP] <= np.percentile(db[lo : lo + 1000], 25)


def test_silence_is_marked(long_clip: tuple[np.ndarray, str]) -> None:
    samples, _ = long_clip
    silence = np.zeros(45 * SAMPLE_RATE, dtype=np.float32)
    windows = plan_windows(np.concatenate([samples[: 20 * SAMPLE_RATE], silence]))
    assert windows[-1].silent and not windows[0].silent
    assert plan_windows(np.zeros(0, dtype=np.float32)) == []


def test_chunks_for_fan_out(long_clip: tuple[np.ndarray, str]) -> None:
    samples, _ = long_clip
    chunks = plan_chunks(samples, target_seconds=40)
    assert len(chunks) >= 2 and all(c.seconds <= 40 for c in chunks)
    mask = speech_mask(samples)
    for c in chunks[1:]:
        assert not mask[c.start // HOP - 3 : c.start // HOP + 3].any()


def _part(text: str, start: float, end: float, duration: float) -> dict[str, object]:
    return {
        "schema_version": 1, "text": text, "language": "en", "duration": duration, "model": "tiny.en",
        "segments": [{"id": 0, "start": start, "end": end, "text": text,
                      "words": [{"start": start, "end": end, "word": " " + text, "probability": 0.9}]}],
        "timings": {"decode": 0.1, "inference": 1.0, "total": 1.5, "load": 0.0},
    }  # fmt: skip


def test_merge_offsets_ids_words_and_timings() -> None:
    merged = merge_results(
        [(0.0, _part("one", 0.5, 1.0, 30.0)), (30.0, _part("two", 2.0, 3.0, 25.0))]
    )
    t = Transcript.from_dict(merged)
    assert t.text == "one two" and t.duration == 55.0
    assert [(s.id, s.start, s.end) for s in t.segments] == [(0, 0.5, 1.0), (1, 32.0, 33.0)]
    assert [w.start for w in t.words] == [0.5, 32.0]
    assert t.timings.inference == 2.0 and t.timings.total == 1.5
    with pytest.raises(ValueError, match="nothing to merge"):
        merge_results([])
