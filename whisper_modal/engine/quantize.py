"""int8 weights for CPU decoding: ``torch``'s dynamic quantisation, logits projection included.

On a CPU each decoder step is bound by reading weights from memory, and for tiny.en the
largest matrix is the 51,864 x 384 logits projection. openai-whisper computes it as a plain
matmul with the token embedding, not an ``nn.Linear``, so ``quantize_dynamic`` alone leaves
it in fp32 (the issue measured only 1.2x for stock transcribe that way). Here the
projection becomes an int8 ``Linear`` too; measured 3.0x on a 1-minute clip with the same
WER (8.6%), on a heavily loaded 2-core machine (benchmarks/profile_decode.py). The text
may differ from fp32 in places, so it is opt-in (``TranscribeOptions.cpu_int8``).
"""

from __future__ import annotations

import copy
import threading
import warnings
from typing import Any

import attrs

from whisper_modal.errors import ConfigurationError

from .models import LoadedModel

__all__ = ["int8_model"]

# id of the fp32 model -> (that model, kept alive so the id is never reused; its int8 twin)
_CACHE: dict[int, tuple[Any, LoadedModel]] = {}
_LOCK = threading.Lock()


def _quantized(model: Any) -> Any:
    import torch
    from torch import nn

    try:
        quantize: Any = torch.ao.quantization.quantize_dynamic  # untyped in torch
    except AttributeError as exc:  # deprecated in torch 2.x; gone in some future release
        raise ConfigurationError(
            f"cpu_int8 needs torch's dynamic quantisation, which torch {torch.__version__} "
            "no longer has; pass cpu_int8=False"
        ) from exc
    q = copy.deepcopy(model)
    projection = nn.Linear(q.dims.n_text_state, q.dims.n_vocab, bias=False)
    projection.weight = nn.Parameter(q.decoder.token_embedding.weight.detach().clone())
    with warnings.catch_warnings():  # its deprecation notices are for torch's own users
        warnings.simplefilter("ignore")
        q = quantize(q, {nn.Linear}, dtype=torch.qint8)
        head = quantize(nn.Sequential(projection), {nn.Linear}, dtype=torch.qint8)
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
    return q


def int8_model(loaded: LoadedModel) -> LoadedModel:
    """The int8 twin of a CPU model, made once per process (about a second for tiny.en).

    Args:
        loaded: a model on the CPU.

    Returns:
        A ``LoadedModel`` with the same name and lock; ``loaded`` itself on CUDA,
        where int8 dynamic quantisation does not apply (the GPU runs fp16).
    """
    if loaded.device != "cpu":
        return loaded
    with _LOCK:
        entry = _CACHE.get(id(loaded.model))
        if entry is None:
            # the same lock: callers hold the fp32 model's lock while decoding with the twin
            entry = (loaded.model, attrs.evolve(loaded, model=_quantized(loaded.model)))
            _CACHE[id(loaded.model)] = entry
    return entry[1]
