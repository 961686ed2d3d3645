"""``TranscribeOptions.precision`` (#23): resolution per device, the wire, and real speech.

bf16 runs only on CPUs with native bf16 (AVX-512 BF16 or AMX); elsewhere its speech test
is skipped and the refusal is tested instead.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import whisper_modal as wm
from tests import speech
from tests.models_cache import tiny_en_cache
from tests.wer import wer
from whisper_modal.engine.decoding import run_whisper
from whisper_modal.engine.models import LoadedModel, ModelStore, load_model
from whisper_modal.engine.precision import bf16_supported, model_for, resolve_precision
from whisper_modal.options import TranscribeOptions

OPTS = TranscribeOptions(model="tiny.en", language="en", vad=False, mode="batched")


def test_auto_is_fp16_on_cuda_int8_for_english_models_on_a_vnni_cpu_else_fp32(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from whisper_modal.engine import quantize

    assert resolve_precision(OPTS, "cuda") == "fp16"
    monkeypatch.setattr(quantize, "full_range", lambda: True)  # VNNI: 8-bit activations
    assert resolve_precision(OPTS, "cpu") == "int8"
    for multilingual in ("base", "large-v3", "turbo"):  # int8 translated base's German
        assert resolve_precision(OPTS.replace(model=multilingual), "cpu") == "fp32"
    monkeypatch.setattr(quantize, "has_kernels", lambda: False)  # a torch without fbgemm
    assert resolve_precision(OPTS, "cpu") == "fp32"
    monkeypatch.setattr(quantize, "has_kernels", lambda: True)
    monkeypatch.setattr(quantize, "full_range", lambda: False)  # AVX2: 7 bits lost accuracy
    assert resolve_precision(OPTS, "cpu") == "fp32"
    for explicit in ("fp32", "int8"):
        assert resolve_precision(OPTS.replace(precision=explicit), "cpu") == explicit


def test_a_precision_the_device_cannot_run_is_a_configuration_error() -> None:
    with pytest.raises(wm.ConfigurationError, match="needs CUDA"):
        resolve_precision(OPTS.replace(precision="fp16"), "cpu")
    with pytest.raises(wm.ConfigurationError, match="for CPUs"):
        resolve_precision(OPTS.replace(precision="int8"), "cuda")
    with pytest.raises(wm.ConfigurationError, match="bf16"):
        resolve_precision(OPTS.replace(precision="bf16"), "cuda")
    with pytest.raises(wm.ConfigurationError, match="precision must be one of"):
        OPTS.replace(precision="fp8")


def test_cpu_int8_is_the_deprecated_alias_of_int8() -> None:
    alias = OPTS.replace(cpu_int8=True)
    assert resolve_precision(alias, "cpu") == "int8"
    assert resolve_precision(alias, "cuda") == "fp16"  # ignored on CUDA, as it always was
    with pytest.raises(wm.ConfigurationError, match="contradicts"):
        OPTS.replace(cpu_int8=True, precision="fp32")


def test_the_default_precision_stays_off_the_wire() -> None:
    # an app deployed before precision refuses unknown option keys: the default is not sent
    assert "precision" not in OPTS.to_dict()
    wire = OPTS.replace(precision="int8").to_dict()
    assert wire["precision"] == "int8"
    assert TranscribeOptions.from_dict(wire).precision == "int8"


@functools.cache
def _clip() -> tuple[np.ndarray, str]:
    """About 2 minutes of speech: batched mode makes several streams of it."""
    samples, text = speech.make_clip(speech.SENTENCES[:24], gap_seconds=0.6)
    return samples, text


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model("tiny.en", store=ModelStore(tiny_en_cache()), device="cpu")


@pytest.mark.slow
def test_auto_on_this_cpu_is_the_precision_it_resolves_to_exactly(loaded: LoadedModel) -> None:
    samples, text = _clip()
    resolved = resolve_precision(OPTS, "cpu")
    auto = run_whisper(loaded, samples, OPTS)["text"]
    assert auto == run_whisper(loaded, samples, OPTS.replace(precision=resolved))["text"]
    fp32 = run_whisper(loaded, samples, OPTS.replace(precision="fp32"))["text"]
    # int8 arithmetic is close, not equal: the bound is WER against fp32's (measured over
    # three clips pooled: 10.22% int8 against 10.24% fp32, docs/speed-and-benchmarks.md)
    assert wer(text, auto) <= wer(text, fp32) + 0.02


def test_the_int8_twin_shares_every_tensor_it_does_not_quantize(loaded: LoadedModel) -> None:
    # memory: the twin is a copy of the module tree; the embeddings, layer norms and
    # convolutions are the fp32 model's own tensors, not second copies
    twin = model_for(loaded, "int8").model
    fp32 = loaded.model
    assert twin is not fp32 and twin.decoder is not fp32.decoder
    assert twin.decoder.token_embedding.weight is fp32.decoder.token_embedding.weight
    assert twin.encoder.conv1.weight is fp32.encoder.conv1.weight
    assert twin.encoder.blocks[0].attn_ln.weight is fp32.encoder.blocks[0].attn_ln.weight
    assert twin.decoder.positional_embedding is fp32.decoder.positional_embedding
    # ...and the fp32 model keeps its own linear layers, untouched
    assert type(fp32.decoder.blocks[0].mlp[0]).__name__ == "Linear"
    assert fp32.decoder.blocks[0].mlp[0].weight.dtype == torch.float32
    assert type(twin.decoder.blocks[0].mlp[0]).__name__ == "Int8Module"


@pytest.mark.slow
@pytest.mark.skipif(not bf16_supported(), reason="this CPU has no native bf16")
def test_bf16_transcribes_like_fp32(loaded: LoadedModel) -> None:
    # the encoder's arithmetic changes, so the bound is on WER, not equal text: within 2
    # points of fp32 (measured: equal on the 5-minute benchmark clip, +0.8 held out)
    samples, text = _clip()
    fp32 = run_whisper(loaded, samples, OPTS)["text"]
    bf16 = run_whisper(loaded, samples, OPTS.replace(precision="bf16"))["text"]
    assert wer(text, bf16) <= wer(text, fp32) + 0.02
    twin = model_for(loaded, "bf16")
    assert twin.turns is loaded.turns and twin.model.decoder is loaded.model.decoder
    assert str(twin.model.encoder.conv1.weight.dtype) == "torch.bfloat16"
    assert str(loaded.model.encoder.conv1.weight.dtype) == "torch.float32"  # untouched


@pytest.mark.skipif(bf16_supported(), reason="this CPU has native bf16")
def test_bf16_without_native_support_is_refused() -> None:
    with pytest.raises(wm.ConfigurationError, match="no native bf16"):
        resolve_precision(OPTS.replace(precision="bf16"), "cpu")


def test_passing_cpu_int8_warns_that_it_is_deprecated() -> None:
    client = wm.Client(backend="local", model="tiny.en", cache_dir=tiny_en_cache())
    with client, pytest.warns(DeprecationWarning, match="precision='int8'"):
        request = client.build_request(b"RIFF" + b"\0" * 64, cpu_int8=True)
    assert request.options.cpu_int8 and resolve_precision(request.options, "cpu") == "int8"
