"""Where the time goes in openai-whisper's loop and in whisper_modal's batched streams.

    python benchmarks/profile_decode.py              # 2 minutes of speech, tiny.en, CPU
    python benchmarks/profile_decode.py --minutes 5

Wraps the model's encoder and decoder ``forward`` with timers (the same model object both
engines use), runs stock ``whisper.transcribe`` and ``mode="batched"`` once each, then
times the pieces of one decoder step in isolation: the 51,864-way logits projection, the
per-layer work, and the hook-based KV cache that grows by ``torch.cat`` every step.
Numbers are per call; on a shared machine read the ratios, not the absolute values.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Timers:
    """Wall time and call counts of wrapped module forwards."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.rows: dict[str, int] = defaultdict(int)

    def wrap(self, name: str, module: Any) -> None:
        forward = module.forward

        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            out = forward(*args, **kwargs)
            self.seconds[name] += time.perf_counter() - t
            self.calls[name] += 1
            self.rows[name] += int(args[0].shape[0])
            return out

        module.forward = timed

    def wrap_method(self, name: str, cls: Any, method: str) -> Any:
        """Time ``cls.method`` (rows from the instance's ``rows``); returns the original."""
        original = getattr(cls, method)

        def timed(obj: Any, *args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            out = original(obj, *args, **kwargs)
            self.seconds[name] += time.perf_counter() - t
            self.calls[name] += 1
            self.rows[name] += int(getattr(obj, "rows", 1))
            return out

        setattr(cls, method, timed)
        return original

    def report(self, title: str, wall: float) -> None:
        print(f"\n### {title}: {wall:.1f} s wall\n")
        print("| part | calls | rows | s | share of wall | ms per call |")
        print("|---|---:|---:|---:|---:|---:|")
        for name in sorted(self.seconds):
            s, n = self.seconds[name], self.calls[name]
            print(
                f"| {name} | {n} | {self.rows[name]} | {s:.2f} | {s / wall * 100:.0f}% | {s / n * 1000:.1f} |"
            )
        rest = wall - sum(self.seconds.values())
        print(
            f"| everything else (Python loop, mel, filters, sampling) | | | {rest:.2f} | {rest / wall * 100:.0f}% | |"
        )


def step_pieces(model: Any, rows: int, context: int) -> None:
    """One decoder step's pieces at ``rows`` batch rows and ``context`` cached tokens."""
    import torch

    d = model.dims.n_text_state
    layers = model.dims.n_text_layer
    x = torch.randn(rows, 1, d)
    emb = model.decoder.token_embedding.weight
    cache = torch.randn(rows, context, d)
    step = torch.randn(rows, 1, d)
    xa = torch.randn(rows, model.dims.n_audio_ctx, model.dims.n_audio_state)

    def clock(fn: Any, n: int = 50) -> float:
        fn()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n * 1000

    with torch.no_grad():
        logits = clock(lambda: (x @ emb.T).float())
        cat = clock(lambda: torch.cat([cache, step], dim=1)) * 2 * layers  # k and v, each layer
        tokens = torch.zeros(rows, context, dtype=torch.long)
        kv_cache, hooks = model.install_kv_cache_hooks()
        try:
            model.decoder(tokens, xa, kv_cache=kv_cache)  # fills the cache (prompt + cross)
            full = clock(lambda: model.decoder(tokens[:, -1:], xa, kv_cache=kv_cache), 20)
        finally:
            for hook in hooks:
                hook.remove()
    print(f"\n### One decoder step, {rows} rows, {context} cached tokens (isolated, ms)\n")
    print("| piece | ms | share of a step |")
    print("|---|---:|---:|")
    print(f"| whole decoder step (hook KV cache, as openai-whisper runs it) | {full:.2f} | 100% |")
    print(
        f"| logits projection ({model.dims.n_vocab}-way matmul + float) | {logits:.2f} | {logits / full * 100:.0f}% |"
    )
    print(
        f"| KV cache torch.cat (k and v, {layers} layers) | {cat:.2f} | {cat / full * 100:.0f}% |"
    )


def quantized_copy(model: Any) -> Any:
    """The engine's own int8 copy (``engine.quantize``): every ``nn.Linear`` *and* the logits
    projection (a plain matmul with the token embedding in openai-whisper, so
    ``quantize_dynamic`` alone leaves the largest matrix of tiny.en in fp32)."""
    from whisper_modal.engine.quantize import _quantized

    return _quantized(model)


def quantization_rows(loaded: Any, samples: Any, reference: str) -> None:
    """Speed and WER of stock transcribe on the fp32 model and on the int8 copy."""
    import whisper

    from tests.wer import wer

    print("\n### int8 dynamic quantisation (stock whisper.transcribe, same audio)\n")
    print("| model | wall s | RTF | WER |")
    print("|---|---:|---:|---:|")
    seconds = samples.shape[0] / 16000
    for name, model in (
        ("fp32", loaded.model),
        ("int8 linear + logits", quantized_copy(loaded.model)),
    ):
        t = time.perf_counter()
        text = whisper.transcribe(model, samples, language="en", fp16=False)["text"]
        wall = time.perf_counter() - t
        print(f"| {name} | {wall:.1f} | {seconds / wall:.1f} | {wer(reference, text) * 100:.1f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    args = parser.parse_args()
    import soundfile as sf
    import whisper

    from benchmarks.run_all import make_audio
    from tests.models_cache import tiny_en_cache
    from whisper_modal.engine.decoding import run_whisper
    from whisper_modal.engine.fast_decode import fast_task_class
    from whisper_modal.engine.models import ModelStore, load_model
    from whisper_modal.options import TranscribeOptions

    wav, ref = make_audio(args.minutes)
    samples, _ = sf.read(wav, dtype="float32")
    loaded = load_model("tiny.en", store=ModelStore(tiny_en_cache()), device="cpu")
    model = loaded.model
    print(
        f"# Decode profile: {args.minutes:g} min of speech, tiny.en, CPU, {time.strftime('%Y-%m-%d')}"
    )
    for title, run in (
        (
            "stock whisper.transcribe",
            lambda: whisper.transcribe(model, samples, language="en", fp16=False),
        ),
        (
            "whisper_modal batched (VAD on)",
            lambda: run_whisper(
                loaded, samples, TranscribeOptions(model="tiny.en", language="en", mode="batched")
            ),
        ),
    ):
        timers = Timers()
        timers.wrap("encoder (one call per window batch)", model.encoder)
        if title.startswith("stock"):
            timers.wrap("decoder (one call per token step)", model.decoder)
        # whisper_modal's loop calls its own step, not the decoder module (and a wrapped
        # decoder module would send it to openai-whisper's loop: fast_decode._plain_fp32)
        loop = fast_task_class().loop_class
        step = timers.wrap_method("fast decoder step (one call per token step)", loop, "forward")
        try:
            t = time.perf_counter()
            run()
            wall = time.perf_counter() - t
        finally:
            # drop the instance attributes: a module with its own ``forward`` in vars
            # would keep whisper_modal's decoder on openai-whisper's loop
            for module in (model.encoder, model.decoder):
                vars(module).pop("forward", None)
            loop.forward = step
        timers.report(title, wall)
    step_pieces(model, rows=1, context=100)
    step_pieces(model, rows=8, context=100)
    quantization_rows(loaded, samples, ref.read_text())


if __name__ == "__main__":
    main()
