"""Run openai-whisper on 16 kHz samples with our options; returns openai-whisper's dict.

Language detection is done here (not inside ``whisper.transcribe``) so the result can
carry the detected language's probability, which openai-whisper computes and discards.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import numpy as np

from whisper_modal.options import TranscribeOptions

from .constants import SAMPLE_RATE
from .models import LoadedModel
from .precision import model_for, resolve_precision

if TYPE_CHECKING:
    from .vad import SpeechMap

__all__ = [
    "choose_mode",
    "cut_loops",
    "detect_language",
    "drop_repeated_segments",
    "recover_speech",
    "resolve_language",
    "run_whisper",
    "whisper_kwargs",
]

LOOP_SEGMENTS = 4  # the same segment text this many times in a row is a decoding loop


def whisper_kwargs(options: TranscribeOptions, *, device: str) -> dict[str, Any]:
    """Map our options to ``whisper.transcribe`` keyword arguments (``device``: "cpu" or
    "cuda"; fp16 is on where the resolved precision is fp16)."""
    kwargs: dict[str, Any] = {
        "task": options.task,
        "initial_prompt": options.initial_prompt,
        "temperature": options.temperature
        if len(options.temperature) > 1
        else options.temperature[0],
        "word_timestamps": options.word_timestamps,
        "condition_on_previous_text": options.condition_on_previous_text,
        "compression_ratio_threshold": options.compression_ratio_threshold,
        "logprob_threshold": options.logprob_threshold,
        "no_speech_threshold": options.no_speech_threshold,
        "fp16": resolve_precision(options, device) == "fp16",
        "verbose": None,
    }
    if options.beam_size is not None:
        kwargs["beam_size"] = options.beam_size
    if options.best_of is not None:
        kwargs["best_of"] = options.best_of
    return kwargs


def detect_language(loaded: LoadedModel, samples: np.ndarray) -> tuple[str, float]:
    """Detect the language from the first 30 s; returns (code, probability)."""
    import torch
    import whisper

    model = loaded.model
    if not model.is_multilingual:
        return "en", 1.0
    audio = whisper.pad_or_trim(torch.from_numpy(samples))
    mel = whisper.log_mel_spectrogram(audio, model.dims.n_mels).to(model.device)
    if loaded.device == "cuda":
        mel = mel.half()
    _, probs = model.detect_language(mel)
    assert isinstance(probs, dict)
    language = max(probs, key=lambda k: probs[k])
    return str(language), float(probs[language])


def choose_mode(options: TranscribeOptions, samples: np.ndarray) -> str:
    """Resolve ``mode="auto"``: batched streams when the audio makes two or more of them.

    Measured here (tiny.en, CPU, espeak-ng clips of 4.5-10 minutes with noise and several
    voices): batched streams were 1.7-2.3x faster than openai-whisper's sequential loop,
    with WER 0.75 points worse on average (per clip from -0.6 to +3.4 points: each
    stream's first window has no previous text to condition on). Audio shorter than two
    streams (``2 * MIN_STREAM_SECONDS``) would be one stream, which is the sequential loop
    itself, so it runs sequentially.
    """
    if options.mode != "auto":
        return options.mode
    from .batching import MIN_STREAM_SECONDS

    seconds = samples.shape[0] / SAMPLE_RATE
    return "batched" if seconds >= 2 * MIN_STREAM_SECONDS else "sequential"


def resolve_language(
    loaded: LoadedModel, samples: np.ndarray, options: TranscribeOptions
) -> tuple[str, float | None]:
    """The spoken language and, when detected, its probability.

    Given (``options.language``) wins; ``.en`` models are English; otherwise the language
    is detected from the first 30 s of ``samples``. Called once per input, on the audio
    that is decoded (with the VAD: its speech), so no decoding mode detects it again.
    """
    if options.language is not None:
        return options.language, None
    return detect_language(loaded, samples)


def run_whisper(
    loaded: LoadedModel, samples: np.ndarray, options: TranscribeOptions
) -> dict[str, Any]:
    """Transcribe ``samples``: openai-whisper's loop, or batched streams.

    With ``options.vad`` only the speech Silero VAD finds is decoded (``vad.gate``) and
    times are mapped back to the input; audio without speech decodes nothing. Language
    detection then also hears speech rather than a leading silence.

    Returns openai-whisper's result dict plus ``language_probability`` and ``mode``.
    """
    mode = choose_mode(options, samples)
    loaded = model_for(loaded, resolve_precision(options, loaded.device))
    if not options.vad:
        return _run(loaded, samples, options, mode)
    from .vad import VadParameters, detect, gate

    params = VadParameters.from_options(options)
    speech = detect(samples, params)
    result = gate(
        samples, lambda clip, mask: _run(loaded, clip, options, mode, mask), params, speech=speech
    )
    if result is None:  # no speech: nothing to decode, so nothing to hallucinate
        return {
            "text": "",
            "segments": [],
            "language": options.language or ("en" if not loaded.is_multilingual else ""),
            "language_probability": None,
            "mode": mode,
        }
    # speech the decode left without text (a language switch, a loop): decoded again
    recover_speech(loaded, options, result, samples, speech)
    return result


def recover_speech(
    loaded: LoadedModel,
    options: TranscribeOptions,
    result: dict[str, Any],
    samples: np.ndarray,
    speech: SpeechMap,
) -> None:
    """``coverage.recover`` with this model (its bf16 or int8 twin, by precision): stretches
    decoded alone in ``_run``, their language detected when ``options.language`` is None
    (multilingual models)."""
    from .coverage import recover

    recover(
        result,
        samples,
        speech,
        threshold=options.vad_threshold,
        decode=lambda clip, language: _run(
            loaded, clip, options.replace(language=language), choose_mode(options, clip)
        ),
        detect=None
        if options.language is not None or not loaded.is_multilingual
        else lambda clip: detect_language(loaded, clip),
    )


def _run(
    loaded: LoadedModel,
    samples: np.ndarray,
    options: TranscribeOptions,
    mode: str,
    mask: np.ndarray | None = None,
) -> dict[str, Any]:
    """Transcribe ``samples`` in ``mode``; ``mask``: their speech per 10 ms, when known."""
    import whisper

    language, probability = resolve_language(loaded, samples, options)
    if mode == "batched":
        from .batching import transcribe_batched

        result = transcribe_batched(loaded, samples, options, language=language, mask=mask)
    else:
        from .fast_decode import fast_model

        kwargs = whisper_kwargs(options, device=loaded.device)
        # openai-whisper's loop with the inference-only decoder (same text; fast_decode)
        model = fast_model(loaded.model)
        result = whisper.transcribe(model, samples, language=language, **kwargs)
        if options.vad:  # the batched loop cuts loops itself, token by token
            cut_loops(result, loaded, options, language)
    if options.vad and mode == "batched":
        drop_repeated_segments(result)
    result["language"] = language
    result["language_probability"] = probability
    result["mode"] = mode
    return result


def cut_loops(
    result: dict[str, Any], loaded: LoadedModel, options: TranscribeOptions, language: str
) -> None:
    """Cut Whisper's repetition loops out of a sequential result, in place.

    Two shapes of loop: a phrase repeated within a segment ("thank you thank you ..."),
    cut to one occurrence with the batched loop's ``trim_repeats``; and the same segment
    text ``LOOP_SEGMENTS`` or more times in a row, kept once.
    """
    from .batching import _tokenizer, trim_repeats

    tokenizer = _tokenizer(loaded, options, language)
    segments = list(result.get("segments") or ())
    for segment in segments:
        tokens = [t for t in segment.get("tokens") or () if t < tokenizer.eot]
        trimmed = trim_repeats(tokens)
        if len(trimmed) < len(tokens):
            segment["text"] = tokenizer.decode(trimmed)
            segment["tokens"] = trimmed
            if segment.get("words"):  # keep the words the trimmed text still holds
                segment["words"] = segment["words"][: len(segment["text"].split())]
    result["segments"] = segments
    drop_repeated_segments(result)


def drop_repeated_segments(result: dict[str, Any]) -> None:
    """Keep once the same segment text repeated ``LOOP_SEGMENTS`` or more times in a row.

    A loop across windows: each window repeats the last one's text (batched streams cut
    loops within a window token by token, but not this). The speech under the dropped
    copies is then uncovered, and ``coverage.recover`` decodes it again.
    """
    kept: list[dict[str, Any]] = []
    for _, group in itertools.groupby(
        result.get("segments") or (), key=lambda s: str(s["text"]).strip()
    ):
        run = list(group)
        kept.extend(run[:1] if len(run) >= LOOP_SEGMENTS else run)
    for i, segment in enumerate(kept):
        segment["id"] = i
    result["segments"] = kept
    result["text"] = "".join(str(s["text"]) for s in kept)
