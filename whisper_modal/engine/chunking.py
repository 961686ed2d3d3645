"""Where to cut long audio, and how to put the pieces back together.

One module, used the same way by the batched engine (windows of at most 30 s) and by
Modal fan-out (chunks of minutes, one per container):

* ``plan_windows`` cuts at *pauses*: it measures frame energy (25 ms frames, 10 ms hop),
  finds runs quieter than the clip's speech level minus ``silence_db``, and cuts in the
  middle of the latest pause that keeps the window under ``max_seconds``. Only when a
  stretch has no pause at all does it fall back to the quietest 10 ms in the last third of
  the window. Cutting at a pause rather than every 30 s is what keeps words whole: a naive
  30 s grid raised WER from ~5% to ~14% here.
* Windows that contain no frame above the silence threshold are marked ``silent`` so the
  engine skips them (Whisper tends to hallucinate text on silence).
* Each cutter takes an optional ``mask`` of speech frames from the voice-activity
  detector (``vad.frame_speech_mask``) in place of the energy threshold: Silero tells a
  pause from a soft consonant better than frame energy does in noisy audio.
* ``split_evenly`` cuts audio into N parts of about equal length at the pauses nearest
  the even split points: the batched engine's parallel streams.
* ``merge_transcripts`` joins per-piece transcripts into one with absolute timestamps.

Everything works on 10 ms analysis frames at 16 kHz; ``sample_rate`` scales the frame
sizes for other rates.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import attrs
import numpy as np

from whisper_modal.results import Segment, Timings, Transcript

from .constants import SAMPLE_RATE

__all__ = [
    "Window",
    "frame_db",
    "merge_transcripts",
    "plan_chunks",
    "plan_windows",
    "speech_mask",
    "split_evenly",
]

SILENCE_DB = 35.0  # dB below the clip's speech level (95th percentile) that counts as quiet
FLOOR_DB = -60.0  # dBFS: anything quieter is silence whatever the clip's level


@attrs.frozen
class Window:
    """A stretch of the input, in samples ``[start, end)``; ``silent`` when it holds no sound."""

    start: int  # first sample
    end: int  # one past the last sample
    silent: bool = False  # no frame above the pause threshold: nothing to transcribe
    sample_rate: int = SAMPLE_RATE  # Hz, to turn samples into seconds

    @property
    def seconds(self) -> float:
        """Length in seconds."""
        return (self.end - self.start) / self.sample_rate

    @property
    def offset(self) -> float:
        """Start time in seconds."""
        return self.start / self.sample_rate


def frame_db(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """RMS level of each 10 ms hop (25 ms frames), in dB relative to full scale.

    Frame ``i`` starts at sample ``i * hop``, so at 16 kHz frame indices are Whisper's mel
    frame indices. Computed from sums over 5 ms blocks (a frame is 5 of them), so memory
    stays linear in the input: an hour of audio needs no (frames x 400) copy.
    """
    half = max(1, sample_rate // 200)  # 5 ms in samples: 80 at 16 kHz
    if samples.shape[0] < 5 * half:
        samples = np.pad(samples, (0, 5 * half - samples.shape[0]))
    blocks = samples.shape[0] // half
    energy = np.square(samples[: blocks * half]).reshape(blocks, half).sum(axis=1, dtype=np.float64)
    cumulative = np.concatenate(([0.0], np.cumsum(energy)))
    n = 1 + (blocks - 5) // 2
    starts = 2 * np.arange(n)
    mean_square = (cumulative[starts + 5] - cumulative[starts]) / (5 * half)
    db: np.ndarray = 10.0 * np.log10(np.maximum(mean_square, 1e-20))
    return db


def speech_mask(
    samples: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    *,
    silence_db: float = SILENCE_DB,
    floor_db: float = FLOOR_DB,
) -> np.ndarray:
    """True for 10 ms frames that carry sound above the pause threshold.

    The threshold is relative (``silence_db`` under the 95th-percentile frame level) so a
    quiet recording and a loud one are cut alike, and never below ``floor_db``.
    """
    return _mask(frame_db(samples, sample_rate), silence_db, floor_db)


def _mask(db: np.ndarray, silence_db: float, floor_db: float = FLOOR_DB) -> np.ndarray:
    loud = float(np.percentile(db, 95)) if db.size else floor_db
    mask: np.ndarray = db > max(loud - silence_db, floor_db)
    return mask


def _pauses(mask: np.ndarray, min_frames: int) -> list[tuple[int, int]]:
    """Runs of quiet frames at least ``min_frames`` long, as [start, end) frame indices."""
    quiet = np.concatenate(([False], ~mask, [False]))
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))
    runs = edges.reshape(-1, 2)
    return [(int(a), int(b)) for a, b in runs if b - a >= min_frames]


def _levels(
    samples: np.ndarray, sample_rate: int, silence_db: float, mask: np.ndarray | None = None
) -> tuple[int, np.ndarray, np.ndarray]:
    """(samples per 10 ms hop, level of each hop in dBFS, speech mask of each hop).

    A given ``mask`` (e.g. ``vad.frame_speech_mask``) replaces the energy threshold; it is
    padded with pauses or trimmed to the level array's length.
    """
    db = frame_db(samples, sample_rate)
    if mask is None:
        return sample_rate // 100, db, _mask(db, silence_db)
    fitted = np.zeros(db.shape[0], dtype=bool)
    fitted[: min(db.shape[0], mask.shape[0])] = mask[: db.shape[0]]
    return sample_rate // 100, db, fitted


def _quietest(db: np.ndarray, lo: int, hi: int) -> int:
    """The quietest frame in [lo, hi), levels smoothed over 100 ms so one click is no pause."""
    smooth = np.convolve(db[lo:hi], np.ones(10) / 10, mode="same")
    return lo + int(np.argmin(smooth))


def _windows(
    cuts: list[int], total: int, mask: np.ndarray, hop: int, sample_rate: int
) -> list[Window]:
    bounds = [0, *[c * hop for c in cuts], total]
    windows = []
    for a, b in itertools.pairwise(bounds):
        fa, fb = a // hop, max(a // hop + 1, b // hop)
        windows.append(Window(a, b, silent=not bool(mask[fa:fb].any()), sample_rate=sample_rate))
    return windows


def plan_windows(
    samples: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    *,
    max_seconds: float = 30.0,
    min_seconds: float = 10.0,
    min_pause_seconds: float = 0.2,
    silence_db: float = SILENCE_DB,
    mask: np.ndarray | None = None,
) -> list[Window]:
    """Cut ``samples`` into windows of at most ``max_seconds``, at pauses.

    Each cut goes in the middle of the latest pause (a quiet run of at least
    ``min_pause_seconds``) between ``min_seconds`` and ``max_seconds`` into the window;
    without one, at the quietest 100 ms of the window's last third.

    Args:
        samples: mono audio.
        sample_rate: its rate in Hz.
        max_seconds: longest window (30 s for Whisper's encoder; minutes for fan-out).
        min_seconds: do not cut earlier than this into a window unless forced.
        min_pause_seconds: shortest quiet run that counts as a pause.
        silence_db: how far below the clip's speech level counts as quiet.
        mask: speech (True) per 10 ms frame from a voice-activity detector
            (``vad.frame_speech_mask``); replaces the energy threshold.

    Returns:
        Windows covering the whole input in order, none longer than ``max_seconds``;
        windows with no sound are marked ``silent``. Empty input gives ``[]``.

    Raises:
        ValueError: ``max_seconds`` is shorter than 0.1 s or ``min_seconds`` is negative.
    """
    if max_seconds < 0.1 or min_seconds < 0:
        raise ValueError("max_seconds must be at least 0.1 and min_seconds not negative")
    total = int(samples.shape[0])
    if total == 0:
        return []
    hop, db, mask = _levels(samples, sample_rate, silence_db, mask)
    max_f = int(max_seconds * 100)
    min_f = min(int(min_seconds * 100), max_f - 1)
    pauses = _pauses(mask, max(1, int(min_pause_seconds * 100)))
    middles = np.array([(a + b) // 2 for a, b in pauses], dtype=np.int64)
    cuts: list[int] = []  # frame indices
    start = 0
    while total - start * hop > max_f * hop:
        lo, hi = start + min_f, start + max_f
        # the latest pause in (lo, hi) keeps windows long (fewer windows); cut in its middle
        inside = middles[(middles > lo) & (middles < hi)]
        cut = int(inside[-1]) if inside.size else _quietest(db, start + (2 * max_f) // 3, hi)
        cuts.append(cut)
        start = cut
    return _windows(cuts, total, mask, hop, sample_rate)


def plan_chunks(
    samples: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    *,
    target_seconds: float = 300.0,
    mask: np.ndarray | None = None,
) -> list[Window]:
    """Cut long audio into chunks of at most ``target_seconds`` at pauses (for fan-out).

    The same cutter as ``plan_windows``, with longer pauses preferred (0.3 s) and chunks
    no shorter than 60% of the target unless the audio ends.

    Args:
        samples: mono audio.
        sample_rate: its rate in Hz.
        target_seconds: the longest chunk, e.g. 300 s per container.
        mask: speech per 10 ms frame from a voice-activity detector (see ``plan_windows``).

    Returns:
        Chunks covering the input in order; silent ones are marked.
    """
    return plan_windows(
        samples,
        sample_rate,
        max_seconds=target_seconds,
        min_seconds=target_seconds * 0.6,
        min_pause_seconds=0.3,
        mask=mask,
    )


def split_evenly(
    samples: np.ndarray,
    parts: int,
    sample_rate: int = SAMPLE_RATE,
    *,
    min_pause_seconds: float = 0.2,
    mask: np.ndarray | None = None,
) -> list[Window]:
    """Cut audio into ``parts`` pieces of about equal length, each cut at a pause.

    Each cut goes in the pause nearest the even split point, looking up to a quarter of a
    piece's length either way; without a pause there, at the quietest point in that range.

    Args:
        samples: mono audio.
        parts: how many pieces (fewer when the audio is too short to give each 1 s).
        sample_rate: its rate in Hz.
        min_pause_seconds: shortest quiet run that counts as a pause.
        mask: speech per 10 ms frame from a voice-activity detector (see ``plan_windows``).

    Returns:
        Pieces covering the input in order; silent ones are marked.

    Raises:
        ValueError: ``parts`` is less than 1.
    """
    if parts < 1:
        raise ValueError("parts must be at least 1")
    total = int(samples.shape[0])
    if total == 0:
        return []
    hop, db, mask = _levels(samples, sample_rate, SILENCE_DB, mask)
    parts = max(1, min(parts, total // sample_rate))
    step = db.shape[0] / parts
    reach = max(1, int(step / 4))
    pauses = _pauses(mask, max(1, int(min_pause_seconds * 100)))
    middles = np.array([(a + b) // 2 for a, b in pauses], dtype=np.int64)
    cuts: list[int] = []
    for k in range(1, parts):
        target = int(k * step)
        lo = max(target - reach, cuts[-1] + 1 if cuts else 1)
        hi = min(target + reach, db.shape[0] - 1)
        near = middles[(middles >= lo) & (middles < hi)]
        cut = int(near[np.argmin(np.abs(near - target))]) if near.size else _quietest(db, lo, hi)
        cuts.append(cut)
    return _windows(cuts, total, mask, hop, sample_rate)


def merge_transcripts(parts: Sequence[tuple[float, Transcript]]) -> Transcript:
    """Join the transcripts of consecutive pieces of one input into one.

    Args:
        parts: (offset in seconds of the piece, its transcript), in order.

    Returns:
        One transcript: absolute times, renumbered segments, joined text, summed timings
        (``total``: the longest piece, as they ran side by side), the duration up to the
        last piece's end; language from the first piece that has speech; ``backend`` and
        ``mode`` list what the pieces ran on, ``fallback_reason`` the first one given.

    Raises:
        ValueError: no parts.
    """
    if not parts:
        raise ValueError("nothing to merge")
    segments: list[Segment] = []
    for offset, part in parts:
        for seg in part.segments:
            segments.append(
                attrs.evolve(
                    seg,
                    id=len(segments),
                    start=seg.start + offset,
                    end=seg.end + offset,
                    words=tuple(
                        attrs.evolve(w, start=w.start + offset, end=w.end + offset)
                        for w in seg.words
                    ),
                )
            )
    pieces = [p for _, p in parts]
    first = pieces[0]
    spoken = next((p for p in pieces if p.text.strip()), first)
    reasons = [p.fallback_reason for p in pieces if p.fallback_reason]
    timings = Timings(
        load=sum(p.timings.load for p in pieces),
        decode=sum(p.timings.decode for p in pieces),
        inference=sum(p.timings.inference for p in pieces),
        queue=sum(p.timings.queue for p in pieces),
        total=max(p.timings.total for p in pieces),
    )
    return first.with_changes(
        text=" ".join(t for t in (p.text.strip() for p in pieces) if t),
        segments=tuple(segments),
        duration=max(offset + p.duration for offset, p in parts),
        timings=timings,
        language=spoken.language or first.language,
        language_probability=spoken.language_probability,
        cold_start=any(p.cold_start for p in pieces),
        backend="+".join(sorted({p.backend for p in pieces})),
        mode="+".join(sorted({p.mode for p in pieces if p.mode})),
        fallback_reason=reasons[0] if reasons else None,
        uncovered_speech=tuple(
            (a + offset, b + offset) for offset, p in parts for a, b in p.uncovered_speech
        ),
    )
