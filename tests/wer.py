"""Word error rate after Whisper's English normalisation (numbers, spelling, punctuation)."""

from __future__ import annotations

import jiwer
from whisper.normalizers import EnglishTextNormalizer

_NORMALIZE = EnglishTextNormalizer()


def wer(reference: str, hypothesis: str) -> float:
    """WER in [0, inf) of ``hypothesis`` against ``reference`` after normalisation."""
    return float(jiwer.wer(_NORMALIZE(reference), _NORMALIZE(hypothesis)))


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(errors, reference words) after normalisation: WER's numerator and denominator, for
    pooling several clips (``benchmarks/run_all.py``)."""
    out = jiwer.process_words(_NORMALIZE(reference), _NORMALIZE(hypothesis))
    return out.substitutions + out.deletions + out.insertions, len(out.references[0])
