"""``engine.mel.log_mel``: openai-whisper's log-mel spectrogram, a chunk at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import whisper

from whisper_modal.engine import mel


@pytest.mark.parametrize(
    ("seconds", "padding"),
    [(301.0, whisper.audio.N_SAMPLES), (612.37, 0), (300.0, 0), (0.01, whisper.audio.N_SAMPLES)],
)
def test_log_mel_equals_openai_whispers_at_every_length(seconds: float, padding: int) -> None:
    # sound that moves (a sweep over noise) and a loud burst late in the file: the
    # clamp to the global maximum minus 8 must see every chunk
    rng = np.random.default_rng(7)
    n = int(seconds * 16000)
    t = np.arange(n, dtype=np.float32) / 16000
    samples = (0.1 * np.sin(2 * np.pi * (200 + 3 * t) * t) + rng.normal(0, 0.01, n)).astype(
        np.float32
    )
    samples[-4000:] *= 8.0
    expected = whisper.log_mel_spectrogram(samples, 80, padding=padding)
    got = mel.log_mel(samples, 80, padding=padding)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert torch.equal(got, expected)  # frame-local FFTs: the same bits
    if n + padding > mel.CHUNK_FRAMES * mel.HOP:
        assert got.shape[1] > mel.CHUNK_FRAMES  # the chunked path ran, over 2+ chunks
