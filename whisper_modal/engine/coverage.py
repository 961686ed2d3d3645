"""Speech the decode left without text: found with the VAD, decoded again, reported.

Whisper decodes a file in one language, detected from its first 30 s. Speech in another
language later in the file is translated into the first language for a window or two,
then the decoder loops ("The weather was cold and windy all week." five times over a
German minute) or stops; once the loop is cut, that speech has no text at all, and stock
openai-whisper and faster-whisper say nothing about it. Whisper also skips speech after
a loop or a long silence. The VAD knows where the speech is, so after the decode:

1. ``uncovered`` finds speech (VAD frames inside speech regions) that no segment spans,
   allowing ``COVER_TOLERANCE`` for Whisper's coarse segment times; stretches with less
   than ``MIN_UNCOVERED_SECONDS`` of speech frames (a breath, a click) are ignored.
2. ``recover`` decodes each stretch alone. When the language was not given, it is
   detected on the stretch; if that is not the file's language, the neighbouring
   segments whose own audio is in the stretch's language (the windows Whisper translated
   before it looped) are decoded again with it, so a language switch is transcribed in
   the new language from where it begins.
3. What still has no text is returned as ``uncovered_speech`` (seconds), and the caller
   is warned: nothing is dropped without a word.

When every stretch of speech has text, step 1 is the only cost (a few array operations
over the 10 ms frames).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .constants import FRAMES_PER_SECOND, MEL_HOP, SAMPLE_RATE
from .vad import SpeechMap, _mask_at

__all__ = [
    "COVER_TOLERANCE",
    "MIN_LANGUAGE_PROBABILITY",
    "MIN_UNCOVERED_SECONDS",
    "recover",
    "uncovered",
]

COVER_TOLERANCE = 0.5  # s: speech this close to a segment counts as covered by it
MIN_UNCOVERED_SECONDS = 1.0  # s of speech frames: shorter stretches without text are ignored
# a stretch's detected language below this probability (music, noise the VAD took for
# speech) is not trusted: the stretch is decoded in the file's language
MIN_LANGUAGE_PROBABILITY = 0.5

#: decodes a clip in a language -> openai-whisper's result shape
Decode = Callable[[np.ndarray, str], dict[str, Any]]
#: the spoken language of a clip and its probability
Detect = Callable[[np.ndarray], tuple[str, float]]


def uncovered(
    speech: SpeechMap,
    spans: Sequence[tuple[float, float]],
    total: int,
    threshold: float,
) -> list[tuple[int, int]]:
    """Speech that no span covers: ``[start, end)`` sample ranges, in order.

    Args:
        speech: the VAD's regions and probabilities over the audio (``vad.detect``).
        spans: (start, end) in seconds of what has text (the segments).
        total: length of the audio in samples.
        threshold: the VAD threshold (a frame is speech at ``threshold - 0.15``, as
            ``frame_speech_mask`` says).

    Returns:
        Stretches inside speech regions, outside every span widened by ``COVER_TOLERANCE``,
        holding at least ``MIN_UNCOVERED_SECONDS`` of speech frames.
    """
    if not speech.regions or speech.probs is None:
        return []
    frames = -(-total // MEL_HOP)
    candidate = np.zeros(frames, dtype=bool)
    for a, b in speech.regions:
        candidate[a // MEL_HOP : -(-b // MEL_HOP)] = True
    for start, end in spans:
        lo = max(0, int((start - COVER_TOLERANCE) * FRAMES_PER_SECOND))
        candidate[lo : int(np.ceil((end + COVER_TOLERANCE) * FRAMES_PER_SECOND))] = False
    if not candidate.any():
        return []
    voiced = _mask_at(speech.probs, np.arange(frames, dtype=np.int64) * MEL_HOP, threshold)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], candidate.view(np.int8), [0]))))
    out = []
    for lo, hi in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
        if voiced[lo:hi].sum() >= MIN_UNCOVERED_SECONDS * FRAMES_PER_SECOND:
            out.append((lo * MEL_HOP, min(total, hi * MEL_HOP)))
    return out


def _spans(segments: Sequence[dict[str, Any]]) -> list[tuple[float, float]]:
    return [(float(s["start"]), float(s["end"])) for s in segments if str(s["text"]).strip()]


def _clip(segments: Sequence[dict[str, Any]], a: int, b: int) -> list[int]:
    """Indices of segments inside the samples ``[a, b)`` (by midpoint)."""
    lo, hi = a / SAMPLE_RATE, b / SAMPLE_RATE
    return [
        i for i, s in enumerate(segments) if lo <= (float(s["start"]) + float(s["end"])) / 2 < hi
    ]


def _widen(
    samples: np.ndarray,
    segments: list[dict[str, Any]],
    gap: tuple[int, int],
    language: str,
    detect: Detect,
) -> tuple[int, int, set[int]]:
    """Grow ``gap`` over the adjacent segments whose audio is spoken in ``language``.

    Returns the grown range and the indices of the segments it swallowed.
    """
    a, b = gap
    taken: set[int] = set()
    before = [i for i, s in enumerate(segments) if float(s["end"]) * SAMPLE_RATE <= a + 1]
    after = [i for i, s in enumerate(segments) if float(s["start"]) * SAMPLE_RATE >= b - 1]
    for order in (reversed(before), after):
        for i in order:
            s = segments[i]
            lo, hi = int(float(s["start"]) * SAMPLE_RATE), int(float(s["end"]) * SAMPLE_RATE)
            if hi <= lo or _language(detect, samples[lo:hi], "") != language:
                break
            taken.add(i)
            a, b = min(a, lo), max(b, hi)
    return a, b, taken


def _language(detect: Detect | None, clip: np.ndarray, otherwise: str) -> str:
    """The clip's detected language when the detector is sure enough, else ``otherwise``."""
    if detect is None:
        return otherwise
    language, probability = detect(clip)
    return language if probability >= MIN_LANGUAGE_PROBABILITY else otherwise


def recover(
    result: dict[str, Any],
    samples: np.ndarray,
    speech: SpeechMap,
    *,
    threshold: float,
    decode: Decode,
    detect: Detect | None,
) -> None:
    """Decode the speech ``result`` left without text again; record what still has none.

    Args:
        result: openai-whisper's result over ``samples`` (original times), changed in
            place: recovered segments merged in time order (renumbered, ``text`` rebuilt),
            each segment with a ``language`` when they differ, and ``uncovered_speech``
            (a list of (start, end) seconds) added.
        samples: the 16 kHz audio the result is for.
        speech: its VAD regions and probabilities (``vad.detect``).
        threshold: the VAD threshold.
        decode: decodes a clip in a language.
        detect: detects a clip's language (trusted from ``MIN_LANGUAGE_PROBABILITY`` on);
            None when the language was given (or the model is English-only): stretches
            are then decoded in the file's language.
    """
    total = int(samples.shape[0])
    segments: list[dict[str, Any]] = list(result.get("segments") or ())
    gaps = uncovered(speech, _spans(segments), total, threshold)
    if gaps:
        file_language = str(result.get("language") or "")
        planned: list[tuple[int, int, str]] = []
        dropped: set[int] = set()
        for a, b in gaps:
            language = _language(detect, samples[a:b], file_language)
            if detect is not None and language != file_language:
                a, b, taken = _widen(samples, segments, (a, b), language, detect)
                dropped |= taken
            if planned and planned[-1][2] == language and a <= planned[-1][1]:
                a = planned.pop()[0]  # widened into the previous stretch: decode them as one
            planned.append((a, b, language))
        kept = [s for i, s in enumerate(segments) if i not in dropped]
        for a, b, language in planned:
            inside = set(_clip(kept, a, b))  # decoded again with the stretch
            kept = [s for i, s in enumerate(kept) if i not in inside]
            kept += _shifted(decode(samples[a:b], language), a, b, language, file_language)
        segments = sorted(kept, key=lambda s: (float(s["start"]), float(s["end"])))
        if any(s.get("language", file_language) != file_language for s in segments):
            for s in segments:  # more than one language: every segment says which
                s.setdefault("language", file_language)
        for i, s in enumerate(segments):
            s["id"] = i
        result["segments"] = segments
        result["text"] = "".join(str(s["text"]) for s in segments)
        gaps = uncovered(speech, _spans(segments), total, threshold)
    result["uncovered_speech"] = [
        (round(a / SAMPLE_RATE, 3), round(b / SAMPLE_RATE, 3)) for a, b in gaps
    ]


def _shifted(
    sub: dict[str, Any], a: int, b: int, language: str, file_language: str
) -> list[dict[str, Any]]:
    """The segments of a clip's result at their times in the file, inside ``[a, b)``."""
    offset, lo, hi = a / SAMPLE_RATE, a / SAMPLE_RATE, b / SAMPLE_RATE
    out = []
    for s in sub.get("segments") or ():
        if not str(s["text"]).strip():
            continue
        start, end = float(s["start"]) + offset, float(s["end"]) + offset
        if not lo <= (start + end) / 2 < hi:
            continue  # text Whisper placed past the clip: not what the clip says
        moved = dict(s, start=round(max(lo, start), 3), end=round(min(hi, end), 3))
        moved["words"] = [
            dict(
                w,
                start=round(float(w["start"]) + offset, 3),
                end=round(float(w["end"]) + offset, 3),
            )
            for w in s.get("words") or ()
        ]
        if language != file_language:
            moved["language"] = language
        out.append(moved)
    return out
