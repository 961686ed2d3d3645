"""Which number format a decode runs in: ``TranscribeOptions.precision`` resolved per device.

=========  ==========================================================================
``fp32``   everything in float32 (CPU or CUDA)
``fp16``   CUDA only: openai-whisper's half-precision path (the GPU default)
``bf16``   CPUs with native bf16 (AVX-512 BF16 or AMX): the encoder's linear and
           convolution weights in bfloat16 (its layer norms and the whole decoder stay
           float32: the decoder's few-row steps are bound by memory, not arithmetic)
``int8``   CPU only: the int8 twin (``quantize.int8_model``)
``auto``   ``fp16`` on CUDA; on a CPU ``int8`` for the English-only models (``*.en``)
           where activations get all 8 bits (x86 with VNNI, ``quantize.full_range``),
           else ``fp32``
=========  ==========================================================================

Why ``auto`` picks int8 on VNNI CPUs (docs/speed-and-benchmarks.md, "Precision"): over
three clips pooled (the 5- and 30-minute benchmark clips and a held-out text, 4,816
words) the batched loop's WER was 10.22% in int8 and 10.24% in fp32, at 1.3-1.6x the speed,
and within 1 point of faster-whisper's int8 sequential loop (9.28%). With 7-bit
activations (AVX2 without VNNI) int8 lost 3 points on the 30-minute clip, so there ``auto``
stays fp32. bf16 is never picked: where a CPU has native bf16 it also has VNNI, and int8
measured faster at the same pooled WER. Multilingual models stay fp32: in int8,
multilingual ``base`` wrote the German half of an English-then-German clip as an English
translation (tests/test_coverage.py's language switch; fp32 keeps both languages). Text
equal to openai-whisper's needs ``fp32``.

The deprecated ``cpu_int8=True`` means ``precision="int8"`` on a CPU and, as before,
nothing on CUDA. Twins (bf16, int8) are made once per process and model, and share the
model's turns: they are the same model in another format.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from whisper_modal.errors import ConfigurationError
from whisper_modal.options import PRECISIONS, TranscribeOptions

from .models import LoadedModel, cpu_flags, twin

__all__ = ["PRECISIONS", "bf16_supported", "model_for", "resolve_precision"]


@functools.cache
def bf16_supported() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX-512 BF16 or AMX)."""
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(options: TranscribeOptions, device: str) -> str:
    """The precision ``options`` ask for on ``device`` ("cpu" or "cuda"), ``auto`` resolved.

    Raises:
        ConfigurationError: a precision this device cannot run (fp16 or int8 where they do
            not apply, bf16 on a CPU without native bf16 or on CUDA).
    """
    asked = options.precision
    if options.cpu_int8:  # the deprecated alias: int8 on a CPU, nothing on CUDA
        return (
            "int8"
            if device == "cpu"
            else resolve_precision(options.replace(cpu_int8=False), device)
        )
    if asked == "auto":
        if device == "cuda":
            return "fp16"
        from . import quantize

        int8 = options.english_only and quantize.full_range() and quantize.has_kernels()
        return "int8" if int8 else "fp32"
    if asked == "fp16" and device != "cuda":
        raise ConfigurationError("precision='fp16' needs CUDA; on a CPU use fp32, bf16 or int8")
    if asked == "int8" and device != "cpu":
        raise ConfigurationError("precision='int8' is for CPUs; on CUDA use fp16 (or auto)")
    if asked == "bf16" and (device != "cpu" or not bf16_supported()):
        where = (
            "this CPU has no native bf16 (AVX-512 BF16 or AMX)"
            if device == "cpu"
            else ("on CUDA this engine runs fp16 or fp32")
        )
        raise ConfigurationError(f"precision='bf16' is not available: {where}")
    return asked


def model_for(loaded: LoadedModel, precision: str) -> LoadedModel:
    """``loaded`` in ``precision``: itself (fp32, fp16) or its bf16 or int8 twin."""
    if precision == "int8":
        from .quantize import int8_model

        return int8_model(loaded)
    return twin(loaded, "bf16", _bf16_twin) if precision == "bf16" else loaded


def _bf16_twin(model: Any) -> Any:
    """A shallow copy of ``model`` with a bfloat16 copy of its encoder (decoder shared)."""
    import torch

    encoder = copy.deepcopy(model.encoder)
    for module in encoder.modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Conv1d):
            module.to(torch.bfloat16)
    forward = encoder.forward

    def encode(mel: Any) -> Any:  # float32 in and out: the decoder sees what it always sees
        return forward(mel.to(torch.bfloat16)).float()

    encoder.forward = encode
    twin = copy.copy(model)
    twin._modules = dict(model._modules)  # the copy's own table: the model keeps its encoder
    twin.encoder = encoder
    return twin
