"""Batched decoding on real speech (espeak-ng) through the real tiny.en model on CPU."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import whisper

from tests import speech
from tests.models_cache import tiny_en_cache
from tests.wer import wer
from whisper_modal.engine.batching import (
    default_batch_size,
    transcribe_batched,
    transcribe_windows,
    trim_repeats,
)
from whisper_modal.engine.chunking import speech_mask, split_evenly
from whisper_modal.engine.constants import SAMPLE_RATE
from whisper_modal.engine.decoding import run_whisper
from whisper_modal.engine.models import LoadedModel, ModelStore, load_model
from whisper_modal.options import TranscribeOptions

# fp32: these tests compare with openai-whisper itself, text for text
OPTS = TranscribeOptions(model="tiny.en", language="en", precision="fp32")


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model("tiny.en", store=ModelStore(tiny_en_cache()), device="cpu")


@pytest.fixture(scope="module")
def clip() -> tuple[np.ndarray, str]:
    # ~76 s of speech with pauses, two voices, faint noise
    return speech.make_clip(
        speech.SENTENCES[8:24], gap_seconds=0.7, voices=("en-us", "en-gb"), noise_db=-55
    )


@pytest.fixture(scope="module")
def sequential(loaded: LoadedModel, clip: tuple[np.ndarray, str]) -> dict[str, Any]:
    # word timestamps on both sides: they move openai-whisper's seek to the last word's end
    return dict(
        whisper.transcribe(loaded.model, clip[0], language="en", fp16=False, word_timestamps=True)
    )


@pytest.fixture(scope="module")
def streams(loaded: LoadedModel, clip: tuple[np.ndarray, str]) -> dict[str, Any]:
    # 30 s streams: two streams of ~38 s (two windows each) side by side, word timestamps
    opts = OPTS.replace(word_timestamps=True)
    return transcribe_batched(loaded, clip[0], opts, language="en", batch_size=4, stream_seconds=30)


@pytest.mark.slow
def test_one_stream_is_openai_whispers_loop(loaded: LoadedModel) -> None:
    # ~35 s: two windows, the second prompted by the first one's text
    samples, _ = speech.make_clip(speech.SENTENCES[30:39], gap_seconds=0.5, noise_db=-55)
    sequential = whisper.transcribe(loaded.model, samples, language="en", fp16=False)
    one = transcribe_batched(loaded, samples, OPTS, language="en")
    # the same seeks, prompts and fallbacks give the same text and times
    assert one["text"] == sequential["text"]
    assert [(s["start"], s["end"]) for s in one["segments"]] == [
        (s["start"], s["end"]) for s in sequential["segments"] if s["text"].strip()
    ]


@pytest.mark.slow
def test_streams_keep_sequential_accuracy(
    clip: tuple[np.ndarray, str], sequential: dict[str, Any], streams: dict[str, Any]
) -> None:
    reference = clip[1]
    assert len({s["seek"] for s in streams["segments"]}) >= 4  # both streams, 2+ windows
    # Sequential decodes three windows, the last two prompted by the previous text; two
    # streams lose the prompt for the first window of the second stream. On four such
    # clips, streams minus sequential WER measured -3.1 to +1.9 points, so +3 points is
    # the budget; 12% absolute catches a broken decoder.
    bound = min(wer(reference, sequential["text"]) + 0.03, 0.12)
    assert wer(reference, streams["text"]) <= bound


@pytest.mark.slow
def test_timestamps_are_absolute_monotonic_and_on_speech(
    clip: tuple[np.ndarray, str], streams: dict[str, Any]
) -> None:
    samples = clip[0]
    segments = streams["segments"]
    duration = len(samples) / SAMPLE_RATE
    assert [s["id"] for s in segments] == list(range(len(segments)))
    assert segments[0]["start"] < 2 and segments[-1]["end"] > duration - 6  # start to end
    for a, b in itertools.pairwise(segments):
        assert a["start"] <= b["start"] and a["end"] <= b["start"] + 0.5
    mask = speech_mask(samples)
    for s in segments:
        assert 0 <= s["start"] < s["end"] <= duration + 0.01
        assert mask[int(s["start"] * 100) : int(s["end"] * 100) + 1].any()  # not on silence
        words = s["words"]
        assert words and "".join(w["word"] for w in words).strip() == s["text"].strip()
        for w in words:
            assert s["start"] - 0.5 <= w["start"] <= w["end"] <= s["end"] + 0.5


@pytest.mark.slow
def test_no_segment_straddles_a_stream_cut(
    clip: tuple[np.ndarray, str], streams: dict[str, Any]
) -> None:
    cuts = [w.offset for w in split_evenly(clip[0], 2)[1:]]
    assert len(cuts) == 1
    for s in streams["segments"]:
        for cut in cuts:
            assert not s["start"] < cut - 0.5 < cut + 0.5 < s["end"], (cut, s["text"])


@pytest.mark.slow
def test_silence_and_hiss_produce_no_text(loaded: LoadedModel) -> None:
    rng = np.random.default_rng(1)
    quiet = rng.normal(0, 3e-4, 20 * SAMPLE_RATE).astype(np.float32)  # ~ -70 dBFS hiss
    result = transcribe_batched(loaded, quiet, OPTS, language="en")
    assert result["text"].strip() == "" and result["segments"] == []
    assert (
        transcribe_windows(loaded, [np.zeros(5 * SAMPLE_RATE, np.float32)], OPTS, language="en")[0][
            "text"
        ]
        == ""
    )


@pytest.mark.slow
def test_speech_silence_speech(loaded: LoadedModel) -> None:
    a = speech.synthesize(speech.SENTENCES[0])
    b = speech.synthesize(speech.SENTENCES[-1])
    gap = np.zeros(40 * SAMPLE_RATE, dtype=np.float32)
    samples = np.concatenate([a, gap, b])
    result = transcribe_batched(loaded, samples, OPTS, language="en")
    text = result["text"].lower()
    assert "planning meeting" in text and "station was crowded" in text
    second = next(s for s in result["segments"] if "station" in s["text"].lower())
    assert abs(second["start"] - (len(a) + len(gap)) / SAMPLE_RATE) < 1.5


@pytest.mark.slow
def test_many_short_inputs_equal_one_by_one(loaded: LoadedModel) -> None:
    sentences = speech.SENTENCES[24:29]
    inputs = [speech.synthesize(s, speed=140 + 10 * i) for i, s in enumerate(sentences)]
    packed = transcribe_windows(loaded, inputs, OPTS, language="en", batch_size=5)
    assert len(packed) == 5
    for x, result in zip(inputs, packed, strict=True):
        alone = whisper.transcribe(loaded.model, x, language="en", fp16=False)
        assert result["text"] == alone["text"]
        assert all(
            0 <= s["start"] < s["end"] <= len(x) / SAMPLE_RATE + 0.02 for s in result["segments"]
        )


@pytest.mark.slow
def test_run_whisper_dispatches_batched_mode(loaded: LoadedModel) -> None:
    x = speech.synthesize(speech.SENTENCES[3])
    result = run_whisper(loaded, x, OPTS.replace(mode="batched"))
    assert result["mode"] == "batched" and result["language"] == "en"
    assert wer(speech.SENTENCES[3], result["text"]) <= 0.2


def test_trim_repeats_cuts_loops_only() -> None:
    loop = [11, 12] * 9 + [13]
    assert trim_repeats(loop) == [11, 12, 13]
    assert trim_repeats([5] * 10) == [5]
    ordinary = [1, 2, 2, 3, 4, 4, 4, 5]  # doubled and tripled words stay
    assert trim_repeats(ordinary) == ordinary
    assert trim_repeats([7, 8, 9] * 4) == [7, 8, 9]
    assert trim_repeats([]) == []


def test_gpu_streams_are_sized_by_memory_model_and_beams() -> None:
    # GPU-only sizing, checked as arithmetic with the official checkpoints' dimensions
    from whisper.model import ModelDimensions

    from whisper_modal.engine.batching import streams_for_memory

    large = dict(n_mels=128, n_audio_ctx=1500, n_audio_state=1280, n_audio_head=20,
                 n_audio_layer=32, n_vocab=51866, n_text_ctx=448, n_text_state=1280,
                 n_text_head=20)  # fmt: skip
    large_v3 = ModelDimensions(**large, n_text_layer=32)
    turbo = ModelDimensions(**large, n_text_layer=4)  # large-v3-turbo: 4 decoder layers
    gib = 1 << 30
    # an A10G with 20 GiB free gives half of it to the batch
    assert default_batch_size("cuda", large_v3, beams=1, free_bytes=20 * gib) == 16
    with_beams = default_batch_size("cuda", large_v3, beams=5, free_bytes=20 * gib)
    assert 4 <= with_beams < 16  # five cross-attention caches per stream: ~1.3 GiB each
    assert default_batch_size("cuda", turbo, beams=5, free_bytes=20 * gib) == 16
    assert streams_for_memory(gib // 4, large_v3, beams=5) == 1  # never zero
    assert streams_for_memory(4 * gib, large_v3, 5) < streams_for_memory(8 * gib, large_v3, 5)
    assert default_batch_size("cuda", free_bytes=5 * gib) == 8  # no dims: by free memory


def test_auto_mode_batches_only_audio_that_makes_two_streams() -> None:
    from whisper_modal.engine.batching import MIN_STREAM_SECONDS
    from whisper_modal.engine.decoding import choose_mode

    def audio(seconds: float) -> np.ndarray:
        return np.zeros(int(seconds * SAMPLE_RATE), np.float32)

    two_streams = 2 * MIN_STREAM_SECONDS
    assert choose_mode(OPTS, audio(two_streams - 1)) == "sequential"  # one stream: the same loop
    assert choose_mode(OPTS, audio(two_streams)) == "batched"
    assert choose_mode(OPTS.replace(mode="sequential"), audio(600)) == "sequential"
    assert choose_mode(OPTS.replace(mode="batched"), audio(5)) == "batched"


@pytest.mark.slow
def test_needed_logits_equal_openai_whispers_at_the_positions_read(loaded: LoadedModel) -> None:
    import torch
    from whisper.decoding import PyTorchInference

    from whisper_modal.engine.decode_batch import _needed_logits

    model = loaded.model
    x = speech.synthesize(speech.SENTENCES[2])
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(x), model.dims.n_mels)[None]
    tokens = torch.tensor([[50360, 464, 3290, 318, 50257, 50362]] * 2)  # prev, prompt, sot...
    sot_index = 4
    with torch.no_grad():
        features = model.embed_audio(mel.repeat(2, 1, 1))
        full = model.decoder(tokens, features)
        ours = PyTorchInference(model, tokens.shape[-1])
        picked = _needed_logits(ours, tokens, features, sot_index)
        ours.cleanup_caching()
    assert picked.shape == (2, 2, full.shape[-1])
    torch.testing.assert_close(picked[:, 0], full[:, sot_index], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(picked[:, 1], full[:, -1], rtol=1e-4, atol=1e-4)
