"""Audio constants of the engine, in one place (units in the names or comments)."""

from __future__ import annotations

__all__ = ["FRAMES_PER_SECOND", "MEL_HOP", "SAMPLE_RATE", "WINDOW_SAMPLES", "WINDOW_SECONDS"]

SAMPLE_RATE = 16000  # Hz: what Whisper's log-mel front end expects
#: samples per 10 ms frame: Whisper's mel hop, and the frame of the VAD mask and of the
#: pause finder, so their frame indices line up
MEL_HOP = SAMPLE_RATE // 100
FRAMES_PER_SECOND = SAMPLE_RATE // MEL_HOP  # 100 frames per second
WINDOW_SECONDS = 30  # s: one Whisper input window
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE  # 480000 samples in a 30-second window
