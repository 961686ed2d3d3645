"""Multi-speaker conversations built from espeak-ng voices, with their reference turns.

    clip, reference = speakers.conversation(3, seed=1, noise_db=-35)
    # reference: [(start s, end s, speaker index), ...] in time order

Voices were chosen by measurement: espeak-ng 1.51 (Debian 12) ignores a variant after
``en-gb`` and has no ``en-sc``, so ``en-gb+f2`` and ``en-sc+m1`` both speak as plain
``en`` and are one voice to any embedding model. The four below are distinct: CAM++
cosine similarity between them is 0.47-0.65, within each 0.84-0.90.

Each turn's reference span is where its synthesized samples are non-silent (espeak pads
its output with silence), so the reference is exact by construction. Turns are one or
two sentences (about 1-8 s) or a back-channel ("Yeah.", under a second); a fifth of the
turn changes have no pause at all.
"""

from __future__ import annotations

import numpy as np

from tests import speech

SAMPLE_RATE = speech.SAMPLE_RATE
VOICES: tuple[str, ...] = ("en-us+m3", "en+f2", "en-us+f4", "en-gb-scotland+m1")
BACK_CHANNELS: tuple[str, ...] = ("Yeah.", "Right.", "Okay.", "Sure.", "I see.")
SILENCE = 1e-3  # |sample| below this is espeak's padding

Turn = tuple[float, float, int]


def build(
    turns: list[tuple[int, str, float]], *, noise_db: float | None = None, seed: int = 0
) -> tuple[np.ndarray, list[Turn]]:
    """Speak (speaker index, text, pause after in s) turns one after another.

    Returns:
        (16 kHz mono float32 samples, reference turns).
    """
    edge = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    parts = [edge]
    position = edge.shape[0]
    reference: list[Turn] = []
    for speaker, text, pause in turns:
        voice = speech.synthesize(text, voice=VOICES[speaker])
        loud = np.flatnonzero(np.abs(voice) > SILENCE)
        voice = voice[loud[0] : loud[-1] + 1]
        reference.append(
            (position / SAMPLE_RATE, (position + voice.shape[0]) / SAMPLE_RATE, speaker)
        )
        gap = np.zeros(int(pause * SAMPLE_RATE), dtype=np.float32)
        parts += [voice, gap]
        position += voice.shape[0] + gap.shape[0]
    clip = np.concatenate([*parts, edge])
    if noise_db is not None:
        rng = np.random.default_rng(seed)
        clip = clip + rng.normal(0.0, 10 ** (noise_db / 20), clip.shape).astype(np.float32)
    return clip.astype(np.float32), reference


def conversation(
    speakers: int, *, seed: int, noise_db: float | None = None, turns: int = 10
) -> tuple[np.ndarray, list[Turn]]:
    """A deterministic conversation of ``turns`` turns among ``speakers`` voices."""
    rng = np.random.default_rng(seed)
    sentence = int(rng.integers(len(speech.SENTENCES)))
    plan: list[tuple[int, str, float]] = []
    previous = -1
    for _ in range(turns):
        speaker = int(rng.integers(speakers))
        if speaker == previous:
            speaker = (speaker + 1) % speakers
        previous = speaker
        kind = rng.random()
        if kind < 0.15:
            text = BACK_CHANNELS[int(rng.integers(len(BACK_CHANNELS)))]
        else:
            count = 1 if kind < 0.6 else 2
            text = " ".join(
                speech.SENTENCES[(sentence + i) % len(speech.SENTENCES)] for i in range(count)
            )
            sentence += count
        pause = 0.0 if rng.random() < 0.2 else float(rng.uniform(0.2, 0.8))
        plan.append((speaker, text, pause))
    return build(plan, noise_db=noise_db, seed=seed)


def der(reference: list[Turn], hypothesis: list[Turn], *, collar: float = 0.25) -> float:
    """Diarization error rate (pyannote.metrics, overlap scored, ``collar`` s forgiven)."""
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    def annotation(turns: list[Turn]) -> Annotation:
        a = Annotation()
        for start, end, who in turns:
            a[Segment(start, end)] = str(who)
        return a

    metric = DiarizationErrorRate(collar=collar, skip_overlap=False)
    return float(metric(annotation(reference), annotation(hypothesis)))
