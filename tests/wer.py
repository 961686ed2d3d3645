"""Word error rate after Whisper's English normalisation (numbers, spelling, punctuation)."""

from __future__ import annotations

import jiwer
from whisper.normalizers import EnglishTextNormalizer

_NORMALIZE = EnglishTextNormalizer()


def wer(reference: str, hypothesis: str) -> float:
    """WER in [0, inf) of ``hypothesis`` against ``reference`` after normalisation."""
    return float(jiwer.wer(_NORMALIZE(reference), _NORMALIZE(hypothesis)))
