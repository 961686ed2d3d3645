"""Batched decoding: many windows through openai-whisper's decoder in one forward pass.

openai-whisper's ``transcribe`` walks the audio 30 s at a time, one window per forward
pass, seeking to the last timestamp it decoded. Here the audio is first cut at pauses into
windows of at most 30 s (``chunking.plan_windows``), then windows are decoded together:
one batched encoder pass and a batched decoder loop per group, which keeps a GPU (or the
CPU's vector units) busy.

Guards against Whisper's known failure modes, per window:
* silent windows are never decoded (hallucinated text on silence);
* openai-whisper's temperature fallback: a window whose compression ratio or average
  log-probability looks like a failure is decoded again, batched with the other failures,
  at the next temperature;
* its no-speech rule drops a window the model believes holds no speech;
* a window whose decoding stopped before its end (no final timestamp) is continued from
  the last timestamp in the next round, like openai-whisper's seek;
* runs of a repeated phrase (a decoding loop) are collapsed.
Conditioning on the previous window's text is not possible when windows decode together;
``initial_prompt`` is given to every window instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np

from whisper_modal.options import TranscribeOptions

from .chunking import SAMPLE_RATE, plan_windows, speech_mask
from .models import LoadedModel

__all__ = ["default_batch_size", "squash_repeats", "transcribe_batched", "transcribe_windows"]

N_FRAMES = 3000  # mel frames in Whisper's 30 s input
HOP_LENGTH = 160  # samples per mel frame (10 ms)
TIME_PRECISION = 0.02  # seconds per timestamp token
MAX_ROUNDS = 6  # continuation rounds for windows that stopped early


def default_batch_size(device: str) -> int:
    """Windows per forward pass: 16 on a GPU, 8 on a CPU (measured best for tiny.en here)."""
    return 16 if device == "cuda" else 8


@attrs.define
class _Span:
    """A piece of audio to decode: samples ``[start, end)`` of the input."""

    start: int
    end: int
    temperature_index: int = 0
    result: Any = None


_REPEAT = re.compile(r"((?:\S+\s+){1,6}?)\1{3,}")


def squash_repeats(text: str) -> str:
    """Collapse a phrase repeated 4+ times in a row to one occurrence (a decoding loop)."""
    padded = text.strip() + " "
    previous = None
    while previous != padded:
        previous = padded
        padded = _REPEAT.sub(r"\1", padded)
    return padded.strip()


def _mel(samples: np.ndarray, n_mels: int) -> Any:
    import whisper

    # Like openai-whisper: mel of the audio padded by 30 s of zeros, cut to N_FRAMES.
    mel = whisper.log_mel_spectrogram(samples, n_mels, padding=whisper.audio.N_SAMPLES)
    return whisper.pad_or_trim(mel[:, : max(1, samples.shape[0] // HOP_LENGTH)], N_FRAMES)


def _decode(
    loaded: LoadedModel,
    mels: list[Any],
    options: TranscribeOptions,
    language: str,
    temperature: float,
) -> list[Any]:
    import torch
    import whisper

    batch = torch.stack(mels).to(loaded.model.device)
    if loaded.device == "cuda":
        batch = batch.half()
    decode_options = whisper.DecodingOptions(
        task=options.task,
        language=language,
        temperature=temperature,
        beam_size=options.beam_size if temperature == 0 else None,
        best_of=options.best_of if temperature > 0 else None,
        prompt=options.initial_prompt,
        without_timestamps=False,
        fp16=loaded.device == "cuda",
    )
    results = whisper.decode(loaded.model, batch, decode_options)
    return results if isinstance(results, list) else [results]


def _needs_fallback(result: Any, options: TranscribeOptions) -> bool:
    if (
        options.no_speech_threshold is not None
        and result.no_speech_prob > options.no_speech_threshold
        and options.logprob_threshold is not None
        and result.avg_logprob < options.logprob_threshold
    ):
        return False  # silence: openai-whisper skips it rather than retrying
    too_repetitive = (
        options.compression_ratio_threshold is not None
        and result.compression_ratio > options.compression_ratio_threshold
    )
    too_unlikely = (
        options.logprob_threshold is not None and result.avg_logprob < options.logprob_threshold
    )
    return bool(too_repetitive or too_unlikely)


def _is_no_speech(result: Any, options: TranscribeOptions) -> bool:
    if options.no_speech_threshold is None or result.no_speech_prob <= options.no_speech_threshold:
        return False
    return options.logprob_threshold is None or result.avg_logprob < options.logprob_threshold


def _segments_of(
    span: _Span, result: Any, tokenizer: Any
) -> tuple[list[dict[str, Any]], int | None]:
    """Parse timestamp tokens like openai-whisper; returns (segments, resume sample or None)."""
    import torch

    tokens = torch.tensor(result.tokens)
    offset = span.start / SAMPLE_RATE
    length = (span.end - span.start) / SAMPLE_RATE
    is_ts = tokens.ge(tokenizer.timestamp_begin)
    single_ending = is_ts[-2:].tolist() == [False, True]
    consecutive = (torch.where(is_ts[:-1] & is_ts[1:])[0] + 1).tolist()

    def make(piece: Any, start: float, end: float) -> dict[str, Any]:
        ids = [t for t in piece.tolist() if t < tokenizer.eot]
        return {
            "seek": span.start // HOP_LENGTH,
            "start": offset + min(start, length),
            "end": offset + min(max(end, start), length),
            "text": tokenizer.decode(ids),
            "tokens": piece.tolist(),
            "temperature": result.temperature,
            "avg_logprob": result.avg_logprob,
            "compression_ratio": result.compression_ratio,
            "no_speech_prob": result.no_speech_prob,
        }

    segments: list[dict[str, Any]] = []
    resume: int | None = None
    if consecutive:
        slices = [*consecutive, len(tokens)] if single_ending else consecutive
        last = 0
        for cut in slices:
            piece = tokens[last:cut]
            start = (piece[0].item() - tokenizer.timestamp_begin) * TIME_PRECISION
            end = (piece[-1].item() - tokenizer.timestamp_begin) * TIME_PRECISION
            segments.append(make(piece, start, end))
            last = cut
        if not single_ending:
            # the text after the last complete segment was cut off: decode it again from there
            stop = (tokens[last - 1].item() - tokenizer.timestamp_begin) * TIME_PRECISION
            resume = span.start + int(stop * SAMPLE_RATE)
    else:
        stamps = tokens[is_ts.nonzero().flatten()]
        end = length
        if len(stamps) > 0 and stamps[-1].item() != tokenizer.timestamp_begin:
            end = (stamps[-1].item() - tokenizer.timestamp_begin) * TIME_PRECISION
        segments.append(make(tokens, 0.0, end))
    return [s for s in segments if s["text"].strip()], resume


def _decode_spans(
    loaded: LoadedModel,
    samples: np.ndarray,
    spans: list[_Span],
    options: TranscribeOptions,
    language: str,
    batch_size: int,
) -> None:
    """Decode every span (batched), applying the temperature fallback; fills ``span.result``."""
    n_mels = loaded.model.dims.n_mels
    temperatures = options.temperature
    pending = list(spans)
    while pending:
        by_temperature: dict[int, list[_Span]] = {}
        for span in pending:
            by_temperature.setdefault(span.temperature_index, []).append(span)
        retry: list[_Span] = []
        for index, group in sorted(by_temperature.items()):
            for i in range(0, len(group), batch_size):
                batch = group[i : i + batch_size]
                mels = [_mel(samples[s.start : s.end], n_mels) for s in batch]
                for span, result in zip(
                    batch,
                    _decode(loaded, mels, options, language, temperatures[index]),
                    strict=True,
                ):
                    span.result = result
                    if _needs_fallback(result, options) and index + 1 < len(temperatures):
                        span.temperature_index = index + 1
                        retry.append(span)
        pending = retry


def _word_timestamps(
    loaded: LoadedModel,
    samples: np.ndarray,
    span: _Span,
    segments: list[dict[str, Any]],
    tokenizer: Any,
) -> None:
    from whisper.timing import add_word_timestamps

    mel = _mel(samples[span.start : span.end], loaded.model.dims.n_mels).to(loaded.model.device)
    if loaded.device == "cuda":
        mel = mel.half()
    add_word_timestamps(
        segments=segments,
        model=loaded.model,
        tokenizer=tokenizer,
        mel=mel,
        num_frames=(span.end - span.start) // HOP_LENGTH,
        last_speech_timestamp=span.start / SAMPLE_RATE,
    )


def _run(
    loaded: LoadedModel,
    samples: np.ndarray,
    first_spans: list[_Span],
    options: TranscribeOptions,
    language: str,
    batch_size: int,
) -> list[dict[str, Any]]:
    from whisper.tokenizer import get_tokenizer

    model = loaded.model
    tokenizer = get_tokenizer(
        model.is_multilingual,
        num_languages=model.num_languages,
        language=language,
        task=options.task,
    )
    mask = speech_mask(samples)
    segments: list[dict[str, Any]] = []
    spans = first_spans
    for _ in range(MAX_ROUNDS):
        if not spans:
            break
        _decode_spans(loaded, samples, spans, options, language, batch_size)
        follow: list[_Span] = []
        for span in spans:
            if _is_no_speech(span.result, options):
                continue
            found, resume = _segments_of(span, span.result, tokenizer)
            if options.word_timestamps and found:
                _word_timestamps(loaded, samples, span, found, tokenizer)
            segments.extend(found)
            # continue a window that stopped early, if sound remains after the stop
            if resume is not None and span.end - resume > SAMPLE_RATE // 2:
                frames = mask[resume // HOP_LENGTH : span.end // HOP_LENGTH]
                if frames.any() and resume > span.start:
                    follow.append(_Span(resume, span.end))
        spans = follow
    segments.sort(key=lambda s: s["start"])
    return _clean(segments)


def _clean(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cleaned: list[dict[str, Any]] = []
    for seg in segments:
        text = squash_repeats(seg["text"])
        if not text:
            continue
        if (
            cleaned
            and text == cleaned[-1]["text"].strip()
            and seg["start"] - cleaned[-1]["end"] < 1.0
        ):
            continue  # the same line twice across a window edge
        cleaned.append({**seg, "text": " " + text, "id": len(cleaned)})
    return cleaned


def transcribe_batched(
    loaded: LoadedModel,
    samples: np.ndarray,
    options: TranscribeOptions,
    *,
    language: str,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Transcribe one input by cutting it at pauses and decoding the windows in batches.

    Returns:
        openai-whisper's result shape: ``text``, ``segments`` (with ``words`` when asked).
    """
    windows = [w for w in plan_windows(samples) if not w.silent]
    spans = [_Span(w.start, w.end) for w in windows]
    size = batch_size or default_batch_size(loaded.device)
    segments = _run(loaded, samples, spans, options, language, size)
    return {
        "text": "".join(s["text"] for s in segments),
        "segments": segments,
        "language": language,
    }


def transcribe_windows(
    loaded: LoadedModel,
    inputs: Sequence[np.ndarray],
    options: TranscribeOptions,
    *,
    language: str,
    batch_size: int | None = None,
) -> list[dict[str, Any]]:
    """Transcribe many short inputs (each at most 30 s) in shared batches.

    Packs the inputs end to end with one second of silence between them, decodes the
    windows of all of them together, and splits the segments back per input.
    """
    gap = np.zeros(SAMPLE_RATE, dtype=np.float32)
    pieces: list[np.ndarray] = []
    bounds: list[tuple[int, int]] = []
    cursor = 0
    for x in inputs:
        pieces += [x.astype(np.float32, copy=False), gap]
        bounds.append((cursor, cursor + x.shape[0]))
        cursor += x.shape[0] + gap.shape[0]
    joined = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    spans = [_Span(a, b) for a, b in bounds if b > a]
    size = batch_size or default_batch_size(loaded.device)
    segments = _run(loaded, joined, spans, options, language, size)
    out: list[dict[str, Any]] = []
    for a, b in bounds:
        mine = [s for s in segments if a / SAMPLE_RATE - 0.01 <= s["start"] < b / SAMPLE_RATE]
        shift = a / SAMPLE_RATE
        moved = []
        for i, s in enumerate(mine):
            words = [
                dict(w, start=w["start"] - shift, end=w["end"] - shift) for w in s.get("words", ())
            ]
            moved.append(
                {**s, "id": i, "start": s["start"] - shift, "end": s["end"] - shift, "words": words}
            )
        out.append(
            {"text": "".join(s["text"] for s in moved), "segments": moved, "language": language}
        )
    return out
