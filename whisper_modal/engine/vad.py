"""Voice-activity detection: find speech with Silero VAD, so Whisper only hears speech.

Whisper, given silence, room noise or a steady tone, writes text anyway ("you", "Thank
you."); its own no-speech probability is not a reliable guard. So, as faster-whisper and
WhisperX do, the engine asks a dedicated voice-activity detector where the speech is,
decodes only that audio (the speech regions joined end to end) and maps every timestamp
back to the original audio (``SpeechMap``).

The detector is Silero VAD v6 (MIT), loaded from the ``silero-vad`` PyPI package's
``silero_vad_16k_sequence.onnx`` and run with ONNX Runtime: the same network as the
streaming model, but one ONNX call per block of 512 frames instead of a Python loop over
32 ms frames (the package documents the outputs as bit-exact), and no torch or torchaudio.
The package is located without importing it, because its ``__init__`` imports torch.

Turning per-frame probabilities into regions follows faster-whisper's ``vad.py``
(itself adapted from silero-vad, MIT): a region opens at a frame above ``threshold``,
closes after ``min_silence_seconds`` below ``threshold - 0.15`` (hysteresis, so a soft
syllable does not end speech), and is padded by ``speech_pad_seconds`` on each side (or
half the gap, when two regions are closer than two pads) so no word edge is clipped.
Pauses shorter than ``min_silence_seconds`` stay inside a region: Whisper needs them to
place sentence boundaries.

``frame_speech_mask`` gives the same decision per 10 ms frame, which ``chunking`` uses to
place stream and chunk cuts in pauses.
"""

from __future__ import annotations

import bisect
import functools
import importlib.util
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from whisper_modal.errors import ConfigurationError

from .constants import MEL_HOP, SAMPLE_RATE  # the Silero model takes 16 kHz only

__all__ = [
    "VAD_FRAME",
    "SpeechMap",
    "VadParameters",
    "detect",
    "frame_speech_mask",
    "gate",
    "model_path",
    "speech_probabilities",
    "speech_regions",
]

VAD_FRAME = 512  # samples: one Silero frame, 32 ms at 16 kHz
CONTEXT = 64  # samples of the previous frame the model sees before each frame
BLOCK_FRAMES = 512  # frames per ONNX call (~16 s): bounds transient memory
MODEL_FILE = "silero_vad_16k_sequence.onnx"
HYSTERESIS = 0.15  # speech ends below threshold - this (silero-vad's default)


@attrs.frozen
class VadParameters:
    """How the detector's probabilities become speech regions (faster-whisper's defaults)."""

    threshold: float = 0.5  # frame probability above which speech starts
    min_silence_seconds: float = 2.0  # a pause at least this long ends a region
    speech_pad_seconds: float = 0.4  # kept on each side of a region (never clips a word)
    min_speech_seconds: float = 0.25  # shorter regions (a click, a cough) are dropped

    @classmethod
    def from_options(cls, options: Any) -> VadParameters:
        """The parameters a ``TranscribeOptions`` asks for (validated there)."""
        return cls(
            threshold=float(options.vad_threshold),
            min_silence_seconds=float(options.vad_min_silence_seconds),
        )


def model_path() -> Path:
    """Where the installed ``silero-vad`` package keeps its sequence ONNX model.

    Raises:
        ConfigurationError: the package is missing (it comes with the ``local`` extra).
    """
    spec = importlib.util.find_spec("silero_vad")
    locations = list(spec.submodule_search_locations or ()) if spec else []
    for location in locations:
        path = Path(location) / "data" / MODEL_FILE
        if path.is_file():
            return path
    raise ConfigurationError(
        "voice-activity detection needs the silero-vad package: "
        "pip install 'whisper-modal[local]' (or pass vad=False)"
    )


def disable_telemetry() -> None:
    """Keep onnxruntime from phoning home; call before its first import.

    onnxruntime's Linux wheels (1.32) carry Microsoft's 1DS telemetry, on by default: at
    import it makes ``~/.cache/Microsoft/DeveloperTools/.onnxruntime/`` (a device id and an
    event database), a session adds ``$TMPDIR/.ses``, and events are posted to
    ``mobile.events.data.microsoft.com``. ``ORT_DISABLE_TELEMETRY=1``, read once at import,
    turns all of it off; ``disable_telemetry_events()`` after the import stops the events
    only. A value the user set is kept.
    """
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


@functools.cache
def _session() -> tuple[Any, threading.Lock]:
    """The ONNX session, created once per process (about 10 ms), with its own lock."""
    disable_telemetry()
    try:
        import onnxruntime
    except ImportError as exc:
        raise ConfigurationError(
            "voice-activity detection needs onnxruntime: pip install 'whisper-modal[local]'"
        ) from exc
    # imported before us (the variable came too late): stop what can still be stopped
    onnxruntime.disable_telemetry_events()
    options = onnxruntime.SessionOptions()
    # One thread: the model is tiny (~2 ms per 16 s block) and the decoder wants the cores.
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # the exported graph has unused initialisers it warns about
    session = onnxruntime.InferenceSession(
        str(model_path()), sess_options=options, providers=["CPUExecutionProvider"]
    )
    return session, threading.Lock()


def speech_probabilities(samples: np.ndarray) -> np.ndarray:
    """Silero's speech probability for each 32 ms frame (``VAD_FRAME`` samples) of 16 kHz audio.

    Args:
        samples: 16 kHz mono float32 audio; the last frame is zero-padded.

    Returns:
        float32 array of ``ceil(len / 512)`` probabilities in [0, 1].
    """
    audio = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
    count = -(-audio.shape[0] // VAD_FRAME)
    if count == 0:
        return np.zeros(0, dtype=np.float32)
    session, lock = _session()
    hidden = np.zeros((1, 1, 128), dtype=np.float32)
    cell = np.zeros((1, 1, 128), dtype=np.float32)
    out = []
    with lock:  # the LSTM state is threaded through the calls in order
        for first in range(0, count, BLOCK_FRAMES):
            inputs = _block_inputs(audio, first, min(BLOCK_FRAMES, count - first))
            probs, hidden, cell = session.run(
                ["speech_probs", "hn", "cn"], {"input": inputs, "h": hidden, "c": cell}
            )
            out.append(np.asarray(probs, dtype=np.float32).reshape(-1))
    return np.concatenate(out)


def _block_inputs(audio: np.ndarray, first: int, count: int) -> np.ndarray:
    """The detector's input rows for frames ``[first, first + count)``: each frame's
    ``VAD_FRAME`` samples preceded by the last ``CONTEXT`` samples of the frame before
    (zeros before the audio's start and after its end), as the streaming model keeps them.
    Built one block at a time, so long audio is never copied whole (for 30 minutes the
    rows of every frame at once were 250 MB)."""
    start = first * VAD_FRAME - CONTEXT  # the audio sample at the block's column 0
    span = np.zeros(count * VAD_FRAME + CONTEXT, dtype=np.float32)
    lo, hi = max(start, 0), min(start + span.shape[0], audio.shape[0])
    if hi > lo:
        span[lo - start : hi - start] = audio[lo:hi]
    rows = np.lib.stride_tricks.sliding_window_view(span, CONTEXT + VAD_FRAME)[::VAD_FRAME]
    return np.ascontiguousarray(rows)


def _regions_from_probs(
    probs: np.ndarray, total: int, params: VadParameters
) -> list[tuple[int, int]]:
    """faster-whisper's state machine (no maximum region length), in samples."""
    threshold = params.threshold
    low = max(threshold - HYSTERESIS, 0.01)
    min_silence = SAMPLE_RATE * params.min_silence_seconds
    min_speech = SAMPLE_RATE * params.min_speech_seconds
    pad = int(SAMPLE_RATE * params.speech_pad_seconds)
    regions: list[list[int]] = []
    start: int | None = None
    quiet_since = 0  # first sample of the current run below ``low`` (0: none)
    for i, p in enumerate(probs.tolist()):
        at = VAD_FRAME * i
        if p >= threshold:
            quiet_since = 0
            if start is None:
                start = at
            continue
        if start is not None and p < low:
            if not quiet_since:
                quiet_since = at
            if at - quiet_since >= min_silence:
                if quiet_since - start > min_speech:
                    regions.append([start, quiet_since])
                start, quiet_since = None, 0
    if start is not None and total - start > min_speech:
        regions.append([start, total])
    # pad each side; regions closer than two pads share the gap between them
    for k, region in enumerate(regions):
        if k == 0:
            region[0] = max(0, region[0] - pad)
        if k + 1 < len(regions):
            gap = regions[k + 1][0] - region[1]
            if gap < 2 * pad:
                region[1] += gap // 2
                regions[k + 1][0] -= gap // 2
            else:
                region[1] = min(total, region[1] + pad)
                regions[k + 1][0] = max(0, regions[k + 1][0] - pad)
        else:
            region[1] = min(total, region[1] + pad)
    return [(a, b) for a, b in regions if b > a]


def speech_regions(
    samples: np.ndarray, params: VadParameters | None = None
) -> list[tuple[int, int]]:
    """Where the speech is: ``[start, end)`` sample ranges, padded, in order, disjoint.

    Args:
        samples: 16 kHz mono float32 audio.
        params: thresholds and durations (default ``VadParameters()``).

    Returns:
        The speech regions; ``[]`` for audio with no speech (silence, noise, tones).
    """
    return list(detect(samples, params).regions)


def frame_speech_mask(
    samples: np.ndarray, frames: int | None = None, *, threshold: float = 0.5
) -> np.ndarray:
    """Speech (True) or pause for each 10 ms frame, from Silero's probabilities.

    A frame counts as a pause when the detector is below ``threshold - 0.15`` there, the
    same point at which a speech region would end, so short gaps between words stay
    speech and only real pauses are offered to the cutters in ``chunking``.

    Args:
        samples: 16 kHz mono float32 audio.
        frames: length of the mask (default: one per 160 samples, rounded up).
        threshold: the VAD threshold.

    Returns:
        Boolean array of ``frames`` entries.
    """
    frames = -(-int(samples.shape[0]) // MEL_HOP) if frames is None else frames
    return _mask_at(speech_probabilities(samples), np.arange(frames) * MEL_HOP, threshold)


def _mask_at(probs: np.ndarray, at: np.ndarray, threshold: float) -> np.ndarray:
    """Speech (True) or pause at sample positions ``at``, from Silero's frame probabilities."""
    if probs.size == 0:
        return np.zeros(at.shape[0], dtype=bool)
    index = np.minimum(at // VAD_FRAME, probs.size - 1)  # the Silero frame holding each sample
    mask: np.ndarray = probs[index] >= max(threshold - HYSTERESIS, 0.01)
    return mask


class SpeechMap:
    """Joins speech regions into one clip and maps times in it back to the original.

    Args:
        regions: ``[start, end)`` sample ranges in order (``speech_regions``).
        probs: the detector's frame probabilities over the original audio, when known
            (``detect``): then ``joined_mask`` needs no second pass of the detector.
    """

    def __init__(self, regions: Sequence[tuple[int, int]], probs: np.ndarray | None = None) -> None:
        self.regions = tuple(regions)
        self.probs = probs
        self._ends: list[int] = []  # end of each region, in joined samples
        self._removed: list[int] = []  # samples of removed audio before each region
        removed, previous = 0, 0
        for start, end in self.regions:
            removed += start - previous
            previous = end
            self._ends.append(end - removed)
            self._removed.append(removed)

    def join(self, samples: np.ndarray) -> np.ndarray:
        """The speech regions of ``samples`` end to end (float32)."""
        if not self.regions:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate([samples[a:b] for a, b in self.regions]).astype(
            np.float32, copy=False
        )

    def joined_mask(self, threshold: float) -> np.ndarray:
        """``frame_speech_mask`` of the joined clip, read from the original's probabilities.

        One 10 ms frame per ``MEL_HOP`` joined samples, each looked up at its original
        position: the detector runs once per input instead of again on the joined speech
        (~0.6 s for 5 minutes on the 2-core CPU). Needs ``probs``.
        """
        if self.probs is None:
            raise ValueError("joined_mask needs the probabilities (build the map with detect)")
        if not self._ends:
            return np.zeros(0, dtype=bool)
        at = np.arange(-(-self._ends[-1] // MEL_HOP), dtype=np.int64) * MEL_HOP
        region = np.minimum(np.searchsorted(self._ends, at, side="right"), len(self._ends) - 1)
        return _mask_at(self.probs, at + np.asarray(self._removed)[region], threshold)

    def region_of(self, seconds: float) -> int:
        """Index of the region that a time in the joined clip falls in."""
        sample = round(seconds * SAMPLE_RATE)
        return min(bisect.bisect_right(self._ends, sample), len(self._ends) - 1)

    def original(self, seconds: float, region: int | None = None) -> float:
        """A time in the joined clip as a time in the original audio (seconds)."""
        k = self.region_of(seconds) if region is None else region
        return round(seconds + self._removed[k] / SAMPLE_RATE, 3)

    def restore(self, result: dict[str, Any]) -> dict[str, Any]:
        """Move the segment and word times of an openai-whisper-shaped result to the original.

        Each word's start and end are moved by the region its midpoint lies in, so a word
        keeps its length; a segment with words takes its times from its first and last
        word, one without by the regions its start and end fall in.
        """
        for segment in result.get("segments") or ():
            words = segment.get("words") or []
            for word in words:
                k = self.region_of((float(word["start"]) + float(word["end"])) / 2)
                word["start"] = self.original(float(word["start"]), k)
                word["end"] = self.original(float(word["end"]), k)
            start, end = float(segment["start"]), float(segment["end"])
            segment["start"] = self.original(start)
            # an end on a region's last sample belongs to that region, not the next one
            segment["end"] = self.original(end, self.region_of(max(start, end - 1e-3)))
            if words:
                segment["start"] = min(segment["start"], words[0]["start"])
                segment["end"] = max(segment["end"], words[-1]["end"])
        return result


def detect(samples: np.ndarray, params: VadParameters | None = None) -> SpeechMap:
    """The speech regions of ``samples`` (as ``speech_regions``), as a ``SpeechMap`` that
    keeps the detector's probabilities for ``joined_mask``."""
    params = params or VadParameters()
    total = int(samples.shape[0])
    if total == 0:
        return SpeechMap([], np.zeros(0, dtype=np.float32))
    probs = speech_probabilities(samples)
    return SpeechMap(_regions_from_probs(probs, total, params), probs)


def gate(
    samples: np.ndarray,
    run: Callable[[np.ndarray, np.ndarray], dict[str, Any]],
    params: VadParameters | None = None,
    *,
    speech: SpeechMap | None = None,
) -> dict[str, Any] | None:
    """Run ``run`` on the speech in ``samples`` only, with times mapped back.

    Args:
        samples: 16 kHz mono float32 audio.
        run: transcribes a clip given the clip and its 10 ms speech mask
            (``SpeechMap.joined_mask``), and returns openai-whisper's result shape.
        params: VAD thresholds.
        speech: ``detect(samples, params)``, when the caller has it already.

    Returns:
        ``run``'s result with original times, plus ``speech_seconds``; None when the
        audio holds no speech (the caller returns an empty transcript: nothing is decoded).
    """
    params = params or VadParameters()
    speech = detect(samples, params) if speech is None else speech
    if not speech.regions:
        return None
    result = speech.restore(run(speech.join(samples), speech.joined_mask(params.threshold)))
    result["speech_seconds"] = sum(b - a for a, b in speech.regions) / SAMPLE_RATE
    return result
