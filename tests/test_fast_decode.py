"""The inference-only decoder (``engine.fast_decode``) against stock ``whisper.transcribe``.

Real speech (espeak-ng) through the real tiny.en on CPU, the same settings on both sides:
the text, segment boundaries and tokens must be identical. Log probabilities are compared
to 1e-4 relative: the fast loop's matmuls read weights in another layout, so its floats
differ from stock's in the last bits (as stock's own do between thread counts).
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import pytest
import torch
import whisper

from tests import speech
from tests.models_cache import tiny_en_cache
from whisper_modal.engine.decoding import run_whisper
from whisper_modal.engine.fast_decode import _plain_fp32, fast_model
from whisper_modal.engine.models import LoadedModel, ModelStore, load_model
from whisper_modal.options import TranscribeOptions

pytestmark = pytest.mark.slow

EXACT = ("id", "seek", "start", "end", "text", "tokens", "temperature")
CLOSE = ("avg_logprob", "compression_ratio", "no_speech_prob")


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model("tiny.en", store=ModelStore(tiny_en_cache()), device="cpu")


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    # ~76 s of speech with pauses, two voices, faint noise (the batching tests' clip)
    samples, _ = speech.make_clip(
        speech.SENTENCES[8:24], gap_seconds=0.7, voices=("en-us", "en-gb"), noise_db=-55
    )
    return samples


@pytest.fixture(scope="module")
def short_clip() -> np.ndarray:
    samples, _ = speech.make_clip(speech.SENTENCES[:5], gap_seconds=0.5, noise_db=-50)
    return samples


def transcribe(model: Any, samples: np.ndarray, **kwargs: Any) -> dict[str, Any]:
    torch.manual_seed(0)  # the fallback samples at temperature > 0: the same draws
    return dict(whisper.transcribe(model, samples, language="en", fp16=False, **kwargs))


def assert_same(ours: dict[str, Any], stock: dict[str, Any]) -> None:
    assert ours["text"] == stock["text"]
    assert len(ours["segments"]) == len(stock["segments"])
    for a, b in zip(ours["segments"], stock["segments"], strict=True):
        assert {k: a[k] for k in EXACT} == {k: b[k] for k in EXACT}
        for key in CLOSE:
            assert math.isclose(a[key], b[key], rel_tol=1e-4, abs_tol=1e-6), key
        assert len(a.get("words", ())) == len(b.get("words", ()))
        for wa, wb in zip(a.get("words", ()), b.get("words", ()), strict=True):
            assert (wa["word"], wa["start"], wa["end"]) == (wb["word"], wb["start"], wb["end"])


def test_same_text_and_segments_as_stock(loaded: LoadedModel, clip: np.ndarray) -> None:
    stock = transcribe(loaded.model, clip)
    assert len(stock["segments"]) > 5  # several windows, each prompted by the last
    assert_same(transcribe(fast_model(loaded.model), clip), stock)


def test_temperature_fallback_matches_stock(loaded: LoadedModel, short_clip: np.ndarray) -> None:
    # a log-probability threshold every greedy decode misses: each window falls back to
    # sampling best_of=5 rows at temperature 0.2 (and up), from the same seeded RNG
    kwargs = {"logprob_threshold": -0.01, "temperature": (0.0, 0.2, 0.4)}
    stock = transcribe(loaded.model, short_clip, **kwargs)
    assert any(s["temperature"] > 0 for s in stock["segments"])
    assert_same(transcribe(fast_model(loaded.model), short_clip, **kwargs), stock)


def test_word_timestamps_match_stock(loaded: LoadedModel, short_clip: np.ndarray) -> None:
    stock = transcribe(loaded.model, short_clip, word_timestamps=True)
    ours = transcribe(fast_model(loaded.model), short_clip, word_timestamps=True)
    assert sum(len(s["words"]) for s in ours["segments"]) > 10
    assert_same(ours, stock)


def test_sequential_vad_off_is_stock(loaded: LoadedModel, short_clip: np.ndarray) -> None:
    options = TranscribeOptions(
        model="tiny.en", language="en", mode="sequential", vad=False, precision="fp32"
    )
    result = run_whisper(loaded, short_clip, options)
    assert_same(result, transcribe(loaded.model, short_clip))


def test_beam_search_keeps_stock_loop(loaded: LoadedModel, short_clip: np.ndarray) -> None:
    stock = transcribe(loaded.model, short_clip[: 10 * 16000], beam_size=2)
    ours = transcribe(fast_model(loaded.model), short_clip[: 10 * 16000], beam_size=2)
    assert ours["segments"] == stock["segments"]  # the same code: bit for bit


def test_model_is_not_patched(loaded: LoadedModel) -> None:
    view = fast_model(loaded.model)
    assert "decode" not in vars(loaded.model)  # stock callers of the model get stock code
    assert view.dims == loaded.model.dims and view.device == loaded.model.device
    assert _plain_fp32(loaded.model.decoder, torch.float32)
    assert not _plain_fp32(loaded.model.decoder, torch.float16)  # fp16: stock's loop


def test_two_threads(loaded: LoadedModel, short_clip: np.ndarray) -> None:
    # one thread decodes with the fast view while another runs stock on the same model
    stock = transcribe(loaded.model, short_clip)
    results: dict[str, dict[str, Any]] = {}

    def run(name: str, model: Any) -> None:
        results[name] = dict(whisper.transcribe(model, short_clip, language="en", fp16=False))

    threads = [
        threading.Thread(target=run, args=("fast", fast_model(loaded.model))),
        threading.Thread(target=run, args=("stock", loaded.model)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert_same(results["stock"], stock)
    assert_same(results["fast"], stock)


def _stock_batched(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the batched loop fall back to its stock-shaped loop (``_stock_loop``)."""
    from whisper_modal.engine.decode_batch import _prompted_task

    monkeypatch.setattr(_prompted_task(), "fast_main_loop", lambda self, *args: None)


def test_batched_streams_match_the_stock_loop(
    loaded: LoadedModel, clip: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    # per-row prompts and per-row stops: the fast loop against openai-whisper's loop shape
    from whisper_modal.engine.batching import transcribe_batched

    options = TranscribeOptions(model="tiny.en", language="en", vad=False)
    fast = transcribe_batched(loaded, clip, options, language="en", stream_seconds=35)
    # two streams of ~38 s: two windows each, the second prompted by the first
    assert len({s["seek"] for s in fast["segments"]}) > 2
    with monkeypatch.context() as patch:
        _stock_batched(patch)
        stock = transcribe_batched(loaded, clip, options, language="en", stream_seconds=35)
    assert_same(fast, stock)


def test_int8_twin_quantizes_every_linear_layer(loaded: LoadedModel) -> None:
    # openai-whisper's Linear is a subclass, which quantize_dynamic skips silently
    from whisper.model import Linear

    from whisper_modal.engine.quantize import int8_model

    twin = int8_model(loaded).model
    assert not [name for name, m in twin.named_modules() if isinstance(m, Linear)]
    assert twin.fp32_decoder is loaded.model.decoder
    assert "fp32_decoder" not in dict(twin.named_modules())  # not registered as a submodule
    mel = torch.randn(1, 80, 3000)
    with torch.inference_mode():
        exact, approx = loaded.model.encoder(mel), twin.encoder(mel)
    error = float((approx - exact).norm() / exact.norm())
    assert 0 < error < 0.05  # int8 arithmetic: close, not equal


def test_int8_fast_loop_matches_the_int8_stock_loop(
    loaded: LoadedModel, clip: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the same per-row int8 weights in both loops (query/key/value fused or not), so the
    # transcripts agree; a word may differ where accumulation order breaks a near tie
    from tests.wer import wer

    options = TranscribeOptions(
        model="tiny.en", language="en", vad=False, mode="batched", cpu_int8=True
    )
    fast = run_whisper(loaded, clip, options)
    with monkeypatch.context() as patch:
        _stock_batched(patch)
        stock = run_whisper(loaded, clip, options)
    assert len(stock["text"].split()) > 150
    assert wer(stock["text"], fast["text"]) <= 0.02


def test_logits_projection_matches_stock_at_one_and_several_rows(loaded: LoadedModel) -> None:
    # one row: MKL's product; several: oneDNN's (where torch has it). Both are fp32.
    from whisper_modal.engine.fast_decode import _Logits

    weight = loaded.model.decoder.token_embedding.weight.detach()
    head = _Logits(weight)
    for rows in (1, 5):
        x = torch.randn(rows, weight.shape[1], generator=torch.Generator().manual_seed(rows))
        ours, stock = head(x), x @ weight.T
        assert ours.shape == stock.shape and ours.dtype == torch.float32
        assert torch.allclose(ours, stock, rtol=1e-4, atol=1e-4)
        assert torch.equal(ours.argmax(dim=-1), stock.argmax(dim=-1))
