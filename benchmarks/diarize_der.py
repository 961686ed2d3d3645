"""Diarization accuracy and speed on constructed conversations (tests/speakers.py).

    PYTHONPATH=. python benchmarks/diarize_der.py [--seeds 3] [--transcribe]

Prints DER (collar 0.25 s) and the estimated speaker count per case, the diarizer's
load time, and its real-time factor; with --transcribe also tiny.en's RTF on the same
audio (CPU), for the "diarization under a third of transcription" target.
"""

from __future__ import annotations

import argparse
import resource
import time

from tests import speakers
from whisper_modal.engine.diarize.pipeline import load_diarizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--transcribe", action="store_true")
    args = parser.parse_args()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    diarizer, load = load_diarizer("cpu")
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"load {load:.2f} s, peak RSS +{(rss1 - rss0) / 1024:.0f} MiB")
    engine = None
    if args.transcribe:
        from tests.models_cache import tiny_en_cache
        from whisper_modal.engine.transcriber import Engine
        from whisper_modal.options import TranscribeOptions

        engine = Engine(cache_dir=tiny_en_cache(), device="cpu")
        opts = TranscribeOptions(model="tiny.en", language="en", word_timestamps=True)
        engine.load("tiny.en")
    audio = spent = spent_asr = 0.0
    ders: list[float] = []
    right = total = 0
    print("| speakers | noise | seed | audio s | DER | found |")
    print("|---:|---|---:|---:|---:|---:|")
    for n in (2, 3, 4):
        for seed in range(args.seeds):
            for noise in (None, -35.0):
                clip, ref = speakers.conversation(n, seed=seed + 10 * n, noise_db=noise)
                began = time.perf_counter()
                turns = diarizer.diarize(clip)
                spent += time.perf_counter() - began
                audio += clip.shape[0] / speakers.SAMPLE_RATE
                if engine is not None:
                    began = time.perf_counter()
                    engine.transcribe(clip, opts, sample_rate=speakers.SAMPLE_RATE)
                    spent_asr += time.perf_counter() - began
                hyp = [(t.start, t.end, t.speaker) for t in turns]
                d = speakers.der(ref, hyp)
                found = len({t.speaker for t in turns})
                ders.append(d)
                right += found == n
                total += 1
                label = "clean" if noise is None else f"{noise:g} dBFS"
                print(
                    f"| {n} | {label} | {seed} | {clip.shape[0] / 16000:.1f} | {d:.3f} | {found} |"
                )
    print(f"mean DER {sum(ders) / len(ders):.3f}, max {max(ders):.3f}; count right {right}/{total}")
    print(f"diarization RTF {spent / audio:.4f}")
    if engine is not None:
        print(
            f"tiny.en (word timestamps) RTF {spent_asr / audio:.4f}; ratio {spent / spent_asr:.2f}"
        )


if __name__ == "__main__":
    main()
