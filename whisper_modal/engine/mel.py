"""openai-whisper's log-mel spectrogram of long audio, computed a few minutes at a time.

``whisper.log_mel_spectrogram`` takes the STFT of the whole signal at once: for 30 minutes
its complex frames, their magnitudes and the mel product are transients of about 800 MB
(measured: peak RSS 435 MB with the audio loaded, 1,259 MB after the call), more than the
model, the audio and the decode together. ``log_mel`` gives the same array (each STFT
frame depends only on its own 400 samples; the one global step, clamping to the maximum
minus 8, runs once at the end) with transients of one chunk. Audio of up to one chunk
goes through openai-whisper's own function.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["CHUNK_FRAMES", "log_mel"]

N_FFT = 400  # openai-whisper's STFT: 25 ms windows...
HOP = 160  # ...every 10 ms
CHUNK_FRAMES = 30_000  # 5 minutes of frames per STFT (about 50 MB of transients)


def log_mel(samples: np.ndarray, n_mels: int, padding: int = 0) -> Any:
    """``whisper.log_mel_spectrogram(samples, n_mels, padding=padding)``, chunked.

    Args:
        samples: 16 kHz mono float32 audio.
        n_mels: mel bands (the model's ``dims.n_mels``).
        padding: zero samples appended before the STFT, as openai-whisper's argument.

    Returns:
        A float32 tensor (n_mels, frames), equal to openai-whisper's up to float rounding.
    """
    import torch
    import whisper

    length = samples.shape[0] + padding  # the signal openai-whisper transforms
    frames = length // HOP  # its STFT has one more, which it drops
    if frames <= CHUNK_FRAMES or samples.shape[0] <= N_FFT:
        return whisper.log_mel_spectrogram(samples, n_mels, padding=padding)
    window = torch.hann_window(N_FFT)
    filters = whisper.audio.mel_filters("cpu", n_mels)
    out = torch.empty((n_mels, frames), dtype=torch.float32)
    for first in range(0, frames, CHUNK_FRAMES):
        last = min(first + CHUNK_FRAMES, frames)
        # frame t covers samples [t*HOP - N_FFT/2, t*HOP + N_FFT/2) of the padded signal
        piece = torch.from_numpy(_centred(samples, length, first * HOP, (last - 1) * HOP + N_FFT))
        stft = torch.stft(piece, N_FFT, HOP, window=window, center=False, return_complex=True)
        out[:, first:last] = (filters @ (stft.abs() ** 2)).clamp_(min=1e-10).log10_()
    torch.maximum(out, out.max() - 8.0, out=out)
    return out.add_(4.0).div_(4.0)


def _centred(samples: np.ndarray, length: int, lo: int, hi: int) -> np.ndarray:
    """Samples ``[lo, hi)`` of the signal as ``torch.stft(center=True)`` sees it.

    That signal is ``samples`` followed by zeros up to ``length``, reflected by
    ``N_FFT // 2`` samples at both ends (``pad_mode="reflect"``): index ``i`` holds the
    padded signal's ``i - N_FFT // 2``. Only the first and last chunks reach the reflected
    ends, ``N_FFT // 2`` samples each; the rest is a plain slice.
    """
    half = N_FFT // 2
    out = np.zeros(hi - lo, dtype=np.float32)
    inner_lo, inner_hi = max(lo, half), min(hi, half + samples.shape[0])
    if inner_hi > inner_lo:
        out[inner_lo - lo : inner_hi - lo] = samples[inner_lo - half : inner_hi - half]
    for i in (*range(lo, min(hi, half)), *range(max(lo, half + length), hi)):
        j = abs(i - half)  # the start's reflection...
        j = 2 * (length - 1) - j if j >= length else j  # ...and the end's
        out[i - lo] = samples[j] if j < samples.shape[0] else 0.0
    return out
