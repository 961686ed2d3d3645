"""Voice-activity detection: the real Silero model on real speech (espeak-ng) and real
non-speech (digital silence, noise, tones), and the real tiny.en model behind it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests import speech
from tests.models_cache import tiny_en_cache
from tests.wer import wer
from whisper_modal.engine import vad
from whisper_modal.engine.batching import transcribe_windows
from whisper_modal.engine.chunking import frame_db, split_evenly
from whisper_modal.engine.constants import MEL_HOP
from whisper_modal.engine.models import ModelStore, load_model
from whisper_modal.engine.transcriber import Engine
from whisper_modal.errors import ConfigurationError
from whisper_modal.options import TranscribeOptions

SR = 16000
OPTS = TranscribeOptions(model="tiny.en", language="en", temperature=0.0)
# Speech that only gained silence must transcribe about as well as the bare clip: WER at
# most 5 points above the bare clip's (tiny.en's own error on it is ~3%; silence that
# is cut out should cost nothing, silence left in made stock whisper write "you you").
WER_SLACK = 0.05


def _tone(seconds: float, hz: float, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _melody(seconds: float) -> np.ndarray:
    """A music-like signal: a scale of soft sine notes, two per second."""
    notes = (262, 294, 330, 349, 392, 440, 494, 523)
    n = SR // 2
    env = np.hanning(n)
    tones = [
        0.2 * env * np.sin(2 * np.pi * notes[i % 8] * np.arange(n) / SR)
        for i in range(int(seconds * 2))
    ]
    return np.concatenate(tones).astype(np.float32)


def _non_speech() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "digital silence": np.zeros(30 * SR, dtype=np.float32),
        "room noise": rng.normal(0, 0.01, 30 * SR).astype(np.float32),  # ~ -40 dBFS hiss
        "tone": _tone(30, 440),
        "chord": sum((_tone(30, f, 0.1) for f in (262, 330, 392)), np.zeros(30 * SR, np.float32)),
        "melody": _melody(30),
    }


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(cache_dir=tiny_en_cache(), device="cpu")


@pytest.fixture(scope="module")
def clip() -> tuple[np.ndarray, str]:
    # ~25 s of speech with short pauses and faint noise
    return speech.make_clip(speech.SENTENCES[:6], gap_seconds=0.5, noise_db=-50)


@pytest.fixture(scope="module")
def bare(engine: Engine, clip: tuple[np.ndarray, str]) -> dict[str, Any]:
    """The clip through openai-whisper's own loop, without the VAD."""
    opts = OPTS.replace(vad=False, mode="sequential")
    return _run(engine, clip[0], opts, sample_rate=SR)


def _run(engine: Engine, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The engine's transcript as its wire dict (the assertions read plain fields)."""
    return engine.transcribe(*args, **kwargs).to_dict()


def _words(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [w for s in result["segments"] for w in s.get("words") or ()]


# --- the detector alone (no Whisper) -------------------------------------------------


@pytest.mark.parametrize("name", sorted(_non_speech()))
def test_no_speech_regions_in_non_speech(name: str) -> None:
    assert vad.speech_regions(_non_speech()[name]) == []


def test_speech_regions_cover_the_speech_and_skip_long_silence(
    clip: tuple[np.ndarray, str],
) -> None:
    samples = clip[0]
    gap = np.zeros(10 * SR, dtype=np.float32)
    padded = np.concatenate([gap, samples, gap, samples, gap])
    regions = vad.speech_regions(padded)
    assert len(regions) == 2  # the 10 s silence between the copies splits them
    speech_len = samples.shape[0]
    for (start, end), begins in zip(regions, (10 * SR, 20 * SR + speech_len), strict=True):
        # each region starts within the padding before its copy and covers most of it
        assert begins - int(0.5 * SR) <= start <= begins + 2 * SR
        assert end - start >= 0.8 * speech_len
        assert end <= begins + speech_len + int(0.5 * SR)


def test_speech_map_round_trip() -> None:
    regions = [(16000, 48000), (80000, 96000)]  # 1-3 s and 5-6 s
    speech_map = vad.SpeechMap(regions)
    audio = np.arange(112000, dtype=np.float32)
    joined = speech_map.join(audio)
    assert joined.shape[0] == 48000
    assert joined[32000] == 80000  # the second region follows the first
    assert speech_map.original(0.5) == pytest.approx(1.5)
    assert speech_map.original(2.5) == pytest.approx(5.5)
    # a segment ending exactly at the join stays in the first region
    result = {"segments": [{"start": 0.0, "end": 2.0, "words": []}]}
    assert speech_map.restore(result)["segments"][0]["end"] == pytest.approx(3.0)


def test_joined_mask_reads_the_original_probabilities(clip: tuple[np.ndarray, str]) -> None:
    samples = clip[0]
    gap = np.zeros(6 * SR, dtype=np.float32)
    padded = np.concatenate([gap, samples, gap, samples, gap])
    speech_map = vad.detect(padded)
    assert len(speech_map.regions) == 2
    joined = speech_map.join(padded)
    mask = speech_map.joined_mask(0.5)
    assert mask.shape[0] == -(-joined.shape[0] // MEL_HOP)
    # each joined frame carries the decision at its original position...
    probs = vad.speech_probabilities(padded)
    (a, b), (c, _) = speech_map.regions
    at = np.arange(mask.shape[0]) * MEL_HOP  # joined samples
    original = np.where(at < b - a, a + at, c + at - (b - a))
    expected = probs[np.minimum(original // vad.VAD_FRAME, probs.size - 1)] >= 0.5 - 0.15
    assert np.array_equal(mask, expected)
    # ...and agrees with running the detector again on the joined speech (which only sees
    # a different LSTM state at the join)
    again = vad.frame_speech_mask(joined)
    assert (mask == again).mean() >= 0.97
    assert 0.3 < mask.mean() < 0.98  # speech and pauses both present


def test_the_detector_runs_once_per_input(
    engine: Engine, clip: tuple[np.ndarray, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = vad.speech_probabilities

    def counted(samples: np.ndarray) -> np.ndarray:
        calls.append(samples.shape[0])
        return real(samples)

    monkeypatch.setattr(vad, "speech_probabilities", counted)
    gap = np.zeros(3 * SR, dtype=np.float32)
    long = np.concatenate([clip[0], gap, clip[0], gap, clip[0], gap, clip[0]])  # ~110 s
    result = _run(engine, long, OPTS.replace(mode="batched"), sample_rate=SR)
    assert wer(" ".join([clip[1]] * 4), result["text"]) <= 0.15
    assert calls == [long.shape[0]]  # the original audio only, not the joined speech again


def test_vad_options_are_validated() -> None:
    for bad in ({"vad_threshold": 0.0}, {"vad_threshold": 1.5}, {"vad_min_silence_seconds": 0}):
        with pytest.raises(ConfigurationError, match="vad_"):
            TranscribeOptions(model="tiny.en", **bad)
    with pytest.raises(ConfigurationError, match="vad"):
        TranscribeOptions(model="tiny.en", vad="yes")  # type: ignore[arg-type]
    opts = TranscribeOptions(model="tiny.en", vad=False, vad_threshold=0.6)
    assert TranscribeOptions.from_dict(opts.to_dict()) == opts


# --- gating Whisper -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sequential", "batched"])
def test_no_text_on_non_speech(engine: Engine, mode: str) -> None:
    for name, samples in _non_speech().items():
        result = _run(engine, samples, OPTS.replace(mode=mode), sample_rate=SR)
        assert result["text"] == "", name
        assert result["segments"] == [], name


@pytest.mark.slow
def test_vad_on_and_off_both_transcribe(
    engine: Engine, clip: tuple[np.ndarray, str], bare: dict[str, Any]
) -> None:
    # vad=False is openai-whisper's own loop; the VAD path hears the same speech
    samples, text = clip
    off = bare
    on = _run(engine, samples, OPTS.replace(mode="sequential"), sample_rate=SR)
    assert wer(text, off["text"]) <= 0.15
    assert wer(text, on["text"]) <= wer(text, off["text"]) + WER_SLACK


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sequential", "batched"])
def test_speech_padded_with_silence(
    engine: Engine, clip: tuple[np.ndarray, str], bare: dict[str, Any], mode: str
) -> None:
    samples, text = clip
    lead, gap = 40 * SR, 20 * SR
    half = samples.shape[0] // 2
    # cut the clip in a pause near its middle, so the silence lies between sentences
    cut = split_evenly(samples, 2)[1].start
    assert abs(cut - half) < 8 * SR
    padded = np.concatenate([
        np.zeros(lead, np.float32), samples[:cut], np.zeros(gap, np.float32),
        samples[cut:], np.zeros(lead, np.float32),
    ])  # fmt: skip
    opts = OPTS.replace(mode=mode, word_timestamps=True)
    result = _run(engine, padded, opts, sample_rate=SR)
    assert wer(text, result["text"]) <= wer(text, bare["text"]) + WER_SLACK
    words = _words(result)
    assert words
    # no words in the leading, inner or trailing silence (0.3 s slack for alignment)
    first_speech, gap_start = lead / SR, (lead + cut) / SR
    gap_end, last_speech = gap_start + gap / SR, (lead + gap + samples.shape[0]) / SR
    for w in words:
        assert w["start"] >= first_speech - 0.3, w
        assert w["end"] <= last_speech + 0.3, w
        assert not (gap_start + 0.3 < w["start"] < gap_end - 0.3), w
    # times are in the padded audio, not in the speech-only clip Whisper heard
    assert words[0]["start"] >= first_speech - 0.3
    assert words[-1]["end"] >= gap_end


@pytest.mark.slow
def test_vad_cuts_never_inside_a_word(engine: Engine) -> None:
    # long pauses (2.5 s) between sentences: the VAD cuts them out. A cut is inside a word
    # when it lies within a sentence's audio (known exactly: the clip is built here),
    # within a word of the un-gated transcript, and where there is sound (within 50 ms,
    # 10 dB over the -50 dBFS noise): Whisper's alignment stretches a sentence's first and
    # last words into the silence around them, so word times alone misplace its edges.
    sentences = speech.SENTENCES[10:16]
    gap = int(2.5 * SR)
    spoken = [speech.synthesize(s) for s in sentences]
    spans, at = [], gap
    for part in spoken:
        spans.append((at / SR, (at + part.shape[0]) / SR))
        at += part.shape[0] + gap
    samples, _ = speech.make_clip(sentences, gap_seconds=2.5, noise_db=-50)
    assert samples.shape[0] == at
    reference = _run(
        engine,
        samples,
        OPTS.replace(vad=False, mode="sequential", word_timestamps=True),
        sample_rate=SR,
    )
    words = [(w["start"], w["end"]) for w in _words(reference)]
    assert len(words) > 40
    regions = vad.speech_regions(samples)
    assert len(regions) == len(sentences)  # one per sentence
    cuts = [t / SR for region in regions for t in region]
    # and the stream cuts the batched mode makes with the VAD's pause mask
    mask = vad.frame_speech_mask(samples)
    cuts += [w.start / SR for w in split_evenly(samples, 4, mask=mask)[1:]]
    level = frame_db(samples)
    for cut in cuts:
        in_sentence = any(a < cut < b for a, b in spans)
        in_word = [(a, b) for a, b in words if a + 0.1 < cut < b - 0.1]
        frame = round(cut * 100)
        sound = bool((level[max(0, frame - 5) : frame + 5] > -40.0).any())
        assert not (in_sentence and in_word and sound), (cut, in_word)


@pytest.mark.slow
def test_packed_inputs_are_gated(clip: tuple[np.ndarray, str]) -> None:
    loaded = load_model("tiny.en", store=ModelStore(tiny_en_cache()), device="cpu")
    samples, _ = clip
    padded = np.concatenate([np.zeros(3 * SR, np.float32), samples[: 12 * SR]])
    results = transcribe_windows(
        loaded, [np.zeros(20 * SR, np.float32), padded], OPTS, language="en"
    )
    assert results[0]["text"] == "" and results[0]["segments"] == []
    assert results[1]["text"].strip()
    assert results[1]["segments"][0]["start"] >= 2.5  # in the padded input's time


def test_sequential_loops_are_cut() -> None:
    # a result as openai-whisper returns it when it loops: one segment repeating a phrase,
    # then the same segment text five times in a row
    from whisper.tokenizer import get_tokenizer

    from whisper_modal.engine.decoding import cut_loops

    loaded = load_model("tiny.en", store=ModelStore(tiny_en_cache()), device="cpu")
    tokenizer = get_tokenizer(False, language="en", task="transcribe")
    phrase = tokenizer.encode(" thank you so much")
    looped = tokenizer.encode(" Hello there.") + phrase * 6
    again = tokenizer.encode(" See you.")
    segments = [
        {"id": 0, "start": 0.0, "end": 5.0, "text": tokenizer.decode(looped), "tokens": looped}
    ]
    segments += [
        {
            "id": i,
            "start": float(i),
            "end": i + 1.0,
            "text": tokenizer.decode(again),
            "tokens": again,
        }
        for i in range(1, 6)
    ]
    ordinary = tokenizer.encode(" Yes, yes.")
    segments.append({"id": 6, "start": 6.0, "end": 7.0, "text": " Yes, yes.", "tokens": ordinary})
    result: dict[str, Any] = {"text": "".join(s["text"] for s in segments), "segments": segments}
    cut_loops(result, loaded, OPTS, "en")
    texts = [s["text"].strip() for s in result["segments"]]
    assert texts == ["Hello there. thank you so much", "See you.", "Yes, yes."]
    assert [s["id"] for s in result["segments"]] == [0, 1, 2]
    assert result["text"] == "".join(s["text"] for s in result["segments"])


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the message a CPU machine gets"
)
def test_gpu_check_refuses_a_cpu_machine_clearly() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "gpu_check.py")],
        capture_output=True, text=True, cwd=root, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2
    assert "no CUDA GPU here" in out.stderr and "Traceback" not in out.stderr


def test_default_vad_options_stay_off_the_wire() -> None:
    # an app deployed before the VAD refuses unknown option keys: defaults are not sent
    wire = TranscribeOptions(model="tiny.en").to_dict()
    assert not {"vad", "vad_threshold", "vad_min_silence_seconds"} & set(wire)
    assert TranscribeOptions.from_dict(wire).vad is True
    changed = TranscribeOptions(model="tiny.en", vad=False).to_dict()
    assert changed["vad"] is False and "vad_threshold" not in changed


@pytest.mark.slow
def test_cpu_int8_transcribes_like_fp32(
    engine: Engine, clip: tuple[np.ndarray, str], bare: dict[str, Any]
) -> None:
    # int8 weights change the arithmetic, so the bound is on WER, not equal text: within
    # 3 points of fp32 (measured equal, 8.6% both, on the 1-minute benchmark clip)
    samples, text = clip
    for mode in ("sequential", "batched"):
        opts = OPTS.replace(vad=False, mode=mode, cpu_int8=True)
        result = _run(engine, samples, opts, sample_rate=SR)
        assert wer(text, result["text"]) <= wer(text, bare["text"]) + 0.03, mode


def test_the_detectors_input_is_built_a_block_at_a_time_as_it_was_whole() -> None:
    # the rows once made for the whole audio at once (250 MB for 30 minutes), as reference
    from whisper_modal.engine.vad import BLOCK_FRAMES, CONTEXT, VAD_FRAME, _block_inputs

    audio = np.random.default_rng(3).normal(0, 0.1, 3 * BLOCK_FRAMES * VAD_FRAME + 700)
    audio = audio.astype(np.float32)
    count = -(-audio.shape[0] // VAD_FRAME)
    frames = np.zeros((count, VAD_FRAME), dtype=np.float32)
    frames.reshape(-1)[: audio.shape[0]] = audio
    contexts = np.zeros((count, CONTEXT), dtype=np.float32)
    contexts[1:] = frames[:-1, -CONTEXT:]
    whole = np.concatenate((contexts, frames), axis=1)
    blocks = [
        _block_inputs(audio, first, min(BLOCK_FRAMES, count - first))
        for first in range(0, count, BLOCK_FRAMES)
    ]
    assert len(blocks) == 4 and np.array_equal(np.concatenate(blocks), whole)
