"""int8 weights for CPU decoding (``TranscribeOptions.cpu_int8``).

``int8_model`` makes an int8 twin of a CPU model: every linear layer of the encoder and
the decoder, and the decoder's 51,864-way logits projection, run with int8 weights (one
scale per output row) and int8 activations quantised per call, fbgemm's
``quantized::linear_dynamic``, the kernel ``torch.ao.quantization.quantize_dynamic`` uses.

Two things ``quantize_dynamic`` alone gets wrong for openai-whisper: its layers are a
*subclass* of ``nn.Linear``, which ``quantize_dynamic`` skips without a word (an earlier
version of this module quantised nothing but the projection that way), and the logits
projection is a plain matmul with the token embedding, not an ``nn.Linear`` at all. So the
layers are swapped here, one ``Int8Linear`` each.

Greedy decoding runs ``fast_decode``'s loop with int8 weights made from the twin's
``fp32_decoder``; beam search runs openai-whisper's loop on the twin's own int8 layers. The
text may differ from fp32 in places, so it is opt-in.
"""

from __future__ import annotations

import copy
import functools
import warnings
from typing import Any

from whisper_modal.errors import ConfigurationError

from .models import LoadedModel, cpu_flags, twin

__all__ = ["Int8Linear", "full_range", "has_kernels", "int8_model"]


@functools.cache
def has_kernels() -> bool:
    """Whether this torch has fbgemm's quantized CPU kernels (x86 builds do)."""
    import torch

    return "fbgemm" in torch.backends.quantized.supported_engines


@functools.cache
def full_range() -> bool:
    """Whether activations may use all 8 bits: on x86 CPUs with VNNI instructions.

    fbgemm's AVX2 kernels add pairs of u8 x s8 products in 16 bits, which saturates for
    full-range activations, so torch quantises them to 7 bits there ("reduce_range"). With
    VNNI (``vpdpbusd``, 32-bit sums) nothing saturates, and the eighth bit mattered: on
    the 30-minute benchmark clip ``mode="auto"`` gave WER 11.4% with 7 bits and 8.2% with
    8 (fp32: 8.6%).
    """
    flags = cpu_flags()
    return "avx512_vnni" in flags or "avx_vnni" in flags


class Int8Linear:
    """``x @ weight.T + bias`` with int8 weights, one scale per output row (symmetric).

    Activations are quantised per call, per tensor, with 8 bits where ``full_range`` and 7
    elsewhere. Per-row scales make quantising a stacked matrix (query, key and value in
    one) the same as quantising each part. For tiny.en's logits projection at 5 rows it
    took ~1 ms on the 2-core CPU against ~11 ms in fp32.
    """

    __slots__ = ("packed", "reduce_range")

    def __init__(self, weight: Any, bias: Any | None) -> None:
        import torch

        try:
            prepack = torch.ops.quantized.linear_prepack
            w = weight.detach().float()
            scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
            zeros = torch.zeros(scales.shape[0], dtype=torch.long)
            with warnings.catch_warnings():  # quantised tensors are deprecated for torch's users
                warnings.simplefilter("ignore")
                q = torch.quantize_per_channel(w, scales, zeros, 0, torch.qint8)
                b = None if bias is None else bias.detach().float()
                self.packed = prepack(q, b)
            self.reduce_range = not full_range()
        except (AttributeError, RuntimeError) as exc:  # a torch without fbgemm's kernels
            raise ConfigurationError(
                f"cpu_int8 needs torch's quantized kernels, which torch {torch.__version__} "
                f"does not have here ({exc}); pass cpu_int8=False"
            ) from exc

    def __call__(self, x: Any) -> Any:
        import torch

        return torch.ops.quantized.linear_dynamic(x, self.packed, self.reduce_range)


def _module(linear: Int8Linear) -> Any:
    """An ``nn.Module`` that applies ``linear`` (for openai-whisper's own forward code)."""
    from torch import nn

    class Int8Module(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = linear

        def forward(self, x: Any) -> Any:
            return self.linear(x)

    return Int8Module()


def _quantized(model: Any) -> Any:
    """The int8 twin: a copy of ``model`` with every ``Linear`` and the projection int8."""
    from whisper.model import Linear

    # a copy of the module tree only: every parameter and buffer is shared with ``model``
    # (the memo hands deepcopy each tensor as its own copy). The twin replaces its linear
    # layers and mutates no tensor, so sharing is safe, and the token embedding, layer
    # norms and convolutions are not held twice (80 MB for tiny.en, 265 MB for large-v3).
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    q = copy.deepcopy(model, shared)
    for parent in list(q.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Linear):
                setattr(parent, name, _module(Int8Linear(child.weight, child.bias)))
    head = Int8Linear(q.decoder.token_embedding.weight, None)
    decoder = q.decoder

    def forward(x: Any, xa: Any, kv_cache: Any = None) -> Any:
        # openai-whisper's TextDecoder.forward with the projection swapped for ``head``
        offset = next(iter(kv_cache.values())).shape[1] if kv_cache else 0
        h = decoder.token_embedding(x) + decoder.positional_embedding[offset : offset + x.shape[-1]]
        h = h.to(xa.dtype)
        for block in decoder.blocks:
            h = block(h, xa, mask=decoder.mask, kv_cache=kv_cache)
        return head(decoder.ln(h)).float()

    decoder.forward = forward
    decoder.int8_head = head  # the batched loop projects only some positions itself
    # fast_decode builds its own int8 layout from the fp32 weights; a plain attribute, so
    # the original is not registered as a submodule of the twin
    object.__setattr__(q, "fp32_decoder", model.decoder)
    return q


def int8_model(loaded: LoadedModel) -> LoadedModel:
    """The int8 twin of a CPU model, made once per process (about a second for tiny.en).

    Args:
        loaded: a model on the CPU.

    Returns:
        A ``LoadedModel`` with the same name and turns; ``loaded`` itself on CUDA,
        where int8 dynamic quantisation does not apply (the GPU runs fp16).

    Raises:
        ConfigurationError: this torch has no quantized CPU kernels.
    """
    if loaded.device != "cpu":
        return loaded
    return twin(loaded, "int8", _quantized)
