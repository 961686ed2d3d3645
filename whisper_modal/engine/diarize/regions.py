"""Where someone speaks: a small energy detector, kept behind one function.

Speaker embeddings of silence or noise are meaningless and would pull clusters apart, so
only speech regions are embedded. The detector adapts to the recording: a frame is speech
when its energy is well above the recording's noise floor (its quiet 10th percentile)
and within a range of its loudest frame. A neural VAD can replace ``speech_regions``
without touching the rest of the pipeline (same signature).
"""

from __future__ import annotations

import numpy as np

from whisper_modal.engine.constants import SAMPLE_RATE

__all__ = ["speech_regions"]

FRAME_SECONDS = 0.02  # 20 ms energy frames
ABOVE_FLOOR_DB = 12.0  # speech is at least this much louder than the noise floor
BELOW_PEAK_DB = 50.0  # ...and no more than this below the loudest frame
MIN_PAUSE = 0.3  # s: shorter pauses stay inside a region (pauses between words)
MIN_SPEECH = 0.15  # s: shorter bursts are clicks, not speech


def speech_regions(samples: np.ndarray) -> list[tuple[float, float]]:
    """Return (start, end) seconds of the speech in 16 kHz mono ``samples``, in order."""
    hop = int(FRAME_SECONDS * SAMPLE_RATE)
    count = samples.shape[0] // hop
    if count == 0:
        return []
    frames = np.asarray(samples[: count * hop], dtype=np.float64).reshape(count, hop)
    energy = 10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    threshold = max(np.percentile(energy, 10) + ABOVE_FLOOR_DB, energy.max() - BELOW_PEAK_DB)
    active = np.concatenate(([False], energy > threshold, [False]))
    edges = np.flatnonzero(np.diff(active.astype(np.int8)))
    regions: list[list[float]] = []
    for start, end in zip(edges[::2] * FRAME_SECONDS, edges[1::2] * FRAME_SECONDS, strict=True):
        if regions and start - regions[-1][1] < MIN_PAUSE:
            regions[-1][1] = float(end)
        else:
            regions.append([float(start), float(end)])
    return [(a, b) for a, b in regions if b - a >= MIN_SPEECH]
