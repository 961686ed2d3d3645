"""Decode speed: whisper_modal.audio (in memory) vs whisper.audio.load_audio (ffmpeg CLI).

    python benchmarks/decode_speed.py                  # 5 and 60 minutes
    python benchmarks/decode_speed.py --minutes 5      # just 5 minutes
    python benchmarks/decode_speed.py --repeats 5

The audio is espeak-ng speech from tests/speech.py, repeated to length, at 44.1 kHz
stereo like an ordinary recording (so both decoders mix down and resample), written as
WAV, MP3 (128 kb/s, with its Xing/LAME tag) and m4a (AAC, index at the end) under
benchmarks/.audio/ (git-ignored). Both sides go from a path on disk to 16 kHz mono
float32: ours is ``load_audio(path)`` (read, then decode from memory with libsndfile or
PyAV, resample with soxr HQ); openai-whisper's runs an ffmpeg subprocess per file. Each
cell is the best of ``--repeats`` runs (one run for an hour of audio). The last columns
check that both produced the same audio: length difference and envelope correlation.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import speech  # noqa: E402
from whisper_modal.engine.audio import load_audio  # noqa: E402
from whisper_modal.engine.constants import SAMPLE_RATE  # noqa: E402

AUDIO_DIR = Path(__file__).parent / ".audio"
SOURCE_RATE = 44100  # Hz: a typical recording
VOICES = ("en-us", "en-gb", "en-us+m3", "en-us+f2")
ENCODERS = {
    "wav": ["-c:a", "pcm_s16le"],
    "mp3": ["-c:a", "libmp3lame", "-b:a", "128k"],
    "m4a": ["-c:a", "aac", "-b:a", "96k"],
}


def speech_source(minutes: float) -> np.ndarray:
    """``minutes`` of 44.1 kHz stereo speech: a 5-minute clip tiled to length."""
    import soxr

    parts: list[np.ndarray] = []
    total, i = 0, 0
    while total < min(minutes, 5) * 60 * speech.SAMPLE_RATE:
        sentence = speech.SENTENCES[i % len(speech.SENTENCES)]
        samples = speech.synthesize(sentence, voice=VOICES[i % len(VOICES)])
        pause = np.zeros(int((0.4 + 0.3 * (i % 4)) * speech.SAMPLE_RATE), np.float32)
        parts += [samples, pause]
        total += len(samples) + len(pause)
        i += 1
    clip = np.concatenate(parts)
    clip = np.tile(clip, int(np.ceil(minutes / 5)))[: int(minutes * 60 * speech.SAMPLE_RATE)]
    wide = soxr.resample(clip, speech.SAMPLE_RATE, SOURCE_RATE)
    return np.stack([wide, 0.8 * wide], axis=1).astype(np.float32)


def audio_file(minutes: float, fmt: str) -> Path:
    """The encoded file, made once with ffmpeg (fed through a pipe, written to disk)."""
    AUDIO_DIR.mkdir(exist_ok=True)
    path = AUDIO_DIR / f"decode-{minutes:g}min.{fmt}"
    if not path.is_file():
        wav = speech.wav_bytes(speech_source(minutes), SOURCE_RATE)
        part = path.with_name(path.name + ".part")
        subprocess.run(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "wav", "-i", "pipe:0",
             *ENCODERS[fmt], "-f", "mp4" if fmt == "m4a" else fmt, "-y", str(part)],
            input=wav, check=True,
        )  # fmt: skip
        part.replace(path)
    return path


def best_of(repeats: int, run: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    best, out = float("inf"), np.zeros(0, np.float32)
    for _ in range(repeats):
        started = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - started)
    return best, out


def envelope_correlation(a: np.ndarray, b: np.ndarray, hop: int = 160) -> float:
    n = min(len(a), len(b)) // hop
    ea = np.sqrt((a[: n * hop].reshape(n, hop) ** 2).mean(axis=1))
    eb = np.sqrt((b[: n * hop].reshape(n, hop) ** 2).mean(axis=1))
    return float(np.corrcoef(ea, eb)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", default="5,60", help="comma-separated lengths")
    parser.add_argument("--formats", default="wav,mp3,m4a")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell (1 over 10 min)")
    args = parser.parse_args()
    import whisper.audio

    print(f"# Decode speed ({platform.processor() or platform.machine()}, {_cores()} cores)\n")
    print("| audio | format | size MB | ours s | ffmpeg CLI s | speed-up | len diff ms | corr |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for minutes in (float(m) for m in args.minutes.split(",")):
        repeats = args.repeats if minutes <= 10 else 1
        for fmt in args.formats.split(","):
            path = audio_file(minutes, fmt)
            ours, a = best_of(repeats, lambda p=path: load_audio(p))  # type: ignore[misc]
            theirs, b = best_of(repeats, lambda p=path: whisper.audio.load_audio(str(p)))  # type: ignore[misc]
            diff_ms = (len(a) - len(b)) / SAMPLE_RATE * 1000
            print(
                f"| {minutes:g} min | {fmt} | {path.stat().st_size / 1e6:.1f} | {ours:.2f} "
                f"| {theirs:.2f} | {theirs / ours:.2f}x | {diff_ms:+.1f} "
                f"| {envelope_correlation(a, b):.4f} |",
                flush=True,
            )


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    main()
