"""Audio constants of the engine, in one place (units in the names or comments)."""

from __future__ import annotations

__all__ = ["SAMPLE_RATE", "WINDOW_SAMPLES", "WINDOW_SECONDS"]

SAMPLE_RATE = 16000  # Hz: what Whisper's log-mel front end expects
WINDOW_SECONDS = 30  # s: one Whisper input window
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE  # 480000 samples in a 30-second window
