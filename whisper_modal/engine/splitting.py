"""Cut long audio into the pieces a fan-out sends, one per container.

Used by the app's orchestrator (``remote.orchestrator``), the one fan-out path for
blocking calls and submitted jobs alike. Cuts fall at pauses, placed with
the VAD's speech mask when the request uses the VAD (the same cuts the batched engine's
streams use), and wholly silent stretches are not sent at all.
"""

from __future__ import annotations

import attrs
import numpy as np

from whisper_modal.options import TranscribeOptions

from .audio import encode_flac
from .chunking import plan_chunks

__all__ = ["Piece", "split_for_fanout"]


@attrs.frozen
class Piece:
    """One piece of long audio: where it starts in the original, and its audio as FLAC."""

    index: int
    offset: float  # seconds from the start of the original audio
    seconds: float
    audio: bytes = attrs.field(repr=False)


def split_for_fanout(
    samples: np.ndarray, options: TranscribeOptions, *, chunk_seconds: float
) -> list[Piece]:
    """Pieces of at most ``chunk_seconds`` covering the speech of ``samples`` (16 kHz mono).

    Returns:
        The non-silent pieces in order (an empty list for audio with no speech at all).
    """
    mask = None
    if options.vad:  # cut at the pauses the VAD hears, as the engine's streams are
        from .vad import frame_speech_mask

        mask = frame_speech_mask(samples, threshold=options.vad_threshold)
    pieces: list[Piece] = []
    for window in plan_chunks(samples, target_seconds=chunk_seconds, mask=mask):
        if window.silent:
            continue
        audio = encode_flac(samples[window.start : window.end])
        pieces.append(Piece(len(pieces), window.offset, window.seconds, audio))
    return pieces
