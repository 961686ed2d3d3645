"""Cut planning and merging: pure numpy, on real speech with pauses (espeak-ng)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tests import speech
from whisper_modal.engine.chunking import (
    Window,
    frame_db,
    merge_transcripts,
    plan_chunks,
    plan_windows,
    speech_mask,
    split_evenly,
)
from whisper_modal.engine.constants import MEL_HOP, SAMPLE_RATE
from whisper_modal.results import Transcript


@pytest.fixture(scope="module")
def long_clip() -> tuple[np.ndarray, str]:
    # ~68 s: 16 sentences, pauses of 0.6 s between them, faint noise
    return speech.make_clip(speech.SENTENCES[:16], gap_seconds=0.6, noise_db=-60)


def _covers(windows: list[Window], total: int) -> bool:
    return (
        windows[0].start == 0
        and windows[-1].end == total
        and all(a.end == b.start for a, b in itertools.pairwise(windows))
    )


def _quiet_around(mask: np.ndarray, sample: int, frames: int = 5) -> bool:
    frame = sample // MEL_HOP
    return not mask[max(0, frame - frames) : frame + frames].any()


def test_frame_db_is_the_rms_of_each_25ms_frame() -> None:
    rng = np.random.default_rng(3)
    x = (rng.normal(0, 0.1, 16_123) * np.linspace(0, 1, 16_123)).astype(np.float32)
    db = frame_db(x)
    n = 1 + (len(x) - 400) // 160
    direct = [
        10 * np.log10(np.mean(np.square(x[i * 160 : i * 160 + 400], dtype=np.float64)))
        for i in range(n)
    ]
    assert db.shape == (n,)
    np.testing.assert_allclose(db, direct, atol=1e-6)


@pytest.mark.parametrize("max_seconds", [30.0, 12.0])
def test_windows_cover_the_clip_and_respect_the_limit(
    long_clip: tuple[np.ndarray, str], max_seconds: float
) -> None:
    samples, _ = long_clip
    windows = plan_windows(samples, max_seconds=max_seconds, min_seconds=max_seconds / 3)
    assert _covers(windows, len(samples))
    assert all(w.seconds <= max_seconds for w in windows)
    # cutting at the *latest* pause keeps windows long: no more than one extra window
    assert len(windows) <= np.ceil(len(samples) / SAMPLE_RATE / (max_seconds - 5)) + 1


def test_cuts_fall_in_pauses_never_mid_word(long_clip: tuple[np.ndarray, str]) -> None:
    samples, _ = long_clip
    mask = speech_mask(samples)
    windows = plan_windows(samples)
    assert len(windows) >= 3
    for w in windows[1:]:
        assert _quiet_around(mask, w.start), w  # the 100 ms around each cut are quiet
        assert frame_db(samples[w.start - 800 : w.start + 800]).max() < -50  # ~ the noise floor


def test_sample_rate_scales_the_frames(long_clip: tuple[np.ndarray, str]) -> None:
    samples, _ = long_clip
    at_8k = samples[::2].copy()  # crude decimation keeps the pauses where they are
    cuts_16k = [w.offset for w in plan_windows(samples)]
    cuts_8k = [w.offset for w in plan_windows(at_8k, 8000)]
    assert len(cuts_8k) == len(cuts_16k)
    assert np.allclose(cuts_8k, cuts_16k, atol=0.1)
    assert plan_windows(at_8k, 8000)[-1].end == len(at_8k)


def test_no_pause_falls_back_to_the_quietest_point() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(70 * SAMPLE_RATE) / SAMPLE_RATE
    noise = ((0.3 + 0.25 * np.sin(2 * np.pi * 0.37 * t)) * rng.normal(0, 1, t.shape)).astype(
        np.float32
    )
    windows = plan_windows(noise)  # no silence anywhere
    assert all(w.seconds <= 30.0 for w in windows) and len(windows) == 3
    db = frame_db(noise)
    for w in windows[1:]:
        lo = w.start // MEL_HOP - 1000  # the last third of the window before the cut
        assert db[w.start // MEL_HOP] <= np.percentile(db[lo : lo + 1000], 25)


def test_silence_is_marked(long_clip: tuple[np.ndarray, str]) -> None:
    samples, _ = long_clip
    rng = np.random.default_rng(2)
    silence = rng.normal(0, 1e-4, 45 * SAMPLE_RATE).astype(np.float32)  # -80 dBFS hiss
    windows = plan_windows(np.concatenate([samples[: 20 * SAMPLE_RATE], silence]))
    assert windows[-1].silent and not windows[0].silent
    assert plan_windows(np.zeros(0, dtype=np.float32)) == []
    assert all(w.silent for w in plan_windows(np.zeros(40 * SAMPLE_RATE, dtype=np.float32)))


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_seconds"):
        plan_windows(np.zeros(100, dtype=np.float32), max_seconds=0.0)
    with pytest.raises(ValueError, match="parts"):
        split_evenly(np.zeros(100, dtype=np.float32), 0)


def test_chunks_for_fan_out(long_clip: tuple[np.ndarray, str]) -> None:
    samples, _ = long_clip
    chunks = plan_chunks(samples, target_seconds=40)
    assert _covers(chunks, len(samples)) and len(chunks) >= 2
    assert all(c.seconds <= 40 for c in chunks)
    assert all(c.seconds >= 24 for c in chunks[:-1])  # no shorter than 60% unless last
    mask = speech_mask(samples)
    assert all(_quiet_around(mask, c.start, 3) for c in chunks[1:])


def test_split_evenly_balances_parts_at_pauses(long_clip: tuple[np.ndarray, str]) -> None:
    samples, _ = long_clip
    parts = split_evenly(samples, 4)
    assert len(parts) == 4 and _covers(parts, len(samples))
    quarter = len(samples) / 4 / SAMPLE_RATE
    assert all(abs(p.seconds - quarter) < quarter / 2 for p in parts)
    mask = speech_mask(samples)
    assert all(_quiet_around(mask, p.start) for p in parts[1:])
    assert len(split_evenly(samples[: SAMPLE_RATE * 2], 8)) == 2  # at least 1 s each


def _part(text: str, start: float, end: float, duration: float) -> dict[str, object]:
    return {
        "schema_version": 1, "text": text, "language": "en", "duration": duration, "model": "tiny.en",
        "segments": [{"id": 0, "start": start, "end": end, "text": text,
                      "words": [{"start": start, "end": end, "word": " " + text, "probability": 0.9}]}],
        "timings": {"decode": 0.1, "inference": 1.0, "total": 1.5, "load": 0.0},
    }  # fmt: skip


def test_merge_offsets_ids_words_and_timings() -> None:
    silent = {**_part("", 0, 0, 10.0), "segments": [], "text": "", "language": "cy"}
    t = merge_transcripts(
        [
            (0.0, Transcript.from_dict(silent)),
            (10.0, Transcript.from_dict(_part("one", 0.5, 1.0, 30.0))),
            (40.0, Transcript.from_dict(_part("two", 2.0, 3.0, 25.0))),
        ]
    )
    assert t.text == "one two" and t.duration == 65.0 and t.language == "en"
    assert [(s.id, s.start, s.end) for s in t.segments] == [(0, 10.5, 11.0), (1, 42.0, 43.0)]
    assert [(w.start, w.end) for w in t.words] == [(10.5, 11.0), (42.0, 43.0)]
    assert t.timings.inference == 3.0 and t.timings.total == 1.5
    assert t.timings.decode == pytest.approx(0.3)
    with pytest.raises(ValueError, match="nothing to merge"):
        merge_transcripts([])


def test_diarized_requests_are_not_fanned_out() -> None:
    """Chunk-local speaker labels would disagree: a diarized request goes as one call."""
    from tests import speech
    from whisper_modal.backends.modal import ModalBackend
    from whisper_modal.config import Settings
    from whisper_modal.options import TranscribeOptions
    from whisper_modal.wire import Request

    samples, _ = speech.make_clip(speech.SENTENCES[:6], gap_seconds=0.7)
    audio = speech.wav_bytes(samples)
    backend = ModalBackend(Settings.resolve(env={}, fanout_seconds=10, fanout_chunk_seconds=8))
    plain = Request(options=TranscribeOptions(model="tiny.en"), audio=audio)
    assert backend.fans_out(plain)  # long enough to split...
    diarized = Request(options=TranscribeOptions(model="tiny.en", diarize=True), audio=audio)
    assert not backend.fans_out(diarized)  # ...but not when speakers are wanted
