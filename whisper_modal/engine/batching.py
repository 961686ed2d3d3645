"""Batched decoding: openai-whisper's transcribe loop, run on several streams at once.

openai-whisper's ``transcribe`` walks the audio one 30 s window per forward pass, seeking
to the last timestamp it decoded and giving the model the previous text as a prompt. Both
matter for accuracy: windows decoded independently (cut at pauses, no prompt) were 2.9
WER points worse on the benchmark clip. So instead of decoding windows independently,
the audio is split at pauses into ``batch_size`` *streams* (``chunking.split_evenly``);
each stream follows openai-whisper's loop exactly (seek, prompt from its own previous
text, temperature fallback, no-speech skip), and the streams advance in lockstep: one
batched encoder pass and one batched decoder loop per step. Only the first window of each
stream loses the previous text.

Guards against Whisper's known failure modes:
* silence is never decoded: a stream skips leading silence longer than 1 s, and a stream
  with no sound left ends (hallucinated text on silence);
* segments whose time span holds no sound are dropped (hallucination on silence);
* openai-whisper's temperature fallback: a window whose compression ratio or average
  log-probability looks like a failure is decoded again, batched with the other failures,
  at the next temperature, reusing the encoder output;
* its no-speech rule skips a window the model believes holds no speech;
* a token phrase repeated in a loop is cut to one occurrence.

A stream's window shows the model up to 30 s of audio, past the stream's end where the
next stream follows (so its last window ends in sound, not zero padding); a row stops at
its stream's end and segments whose midpoint lies past it are left to the next stream.
The decoder call itself (a prompt and a stop per row) is ``decode_batch``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np

from whisper_modal.options import TranscribeOptions

from .chunking import speech_mask, split_evenly
from .constants import FRAMES_PER_SECOND, MEL_HOP, SAMPLE_RATE
from .decode_batch import INPUT_STRIDE, N_FRAMES, decode_with_fallback, is_no_speech
from .memory import trim_heap
from .models import LoadedModel
from .precision import model_for, resolve_precision
from .turns import handover_point

__all__ = [
    "default_batch_size",
    "streams_for_memory",
    "transcribe_batched",
    "transcribe_windows",
    "trim_repeats",
]

TIME_PRECISION = INPUT_STRIDE * MEL_HOP / SAMPLE_RATE  # 0.02 s per timestamp token
# Shorter streams give up the previous-text prompt for too many windows, and a stream
# of ~2 windows wastes little of its last window (measured best of 30, 45, 50 and 60 s).
MIN_STREAM_SECONDS = 50.0
SKIP_SILENCE_FRAMES = 100  # leading silence longer than 1 s is skipped, not decoded
SILENCE_MARGIN_FRAMES = 30  # ...keeping 0.3 s of it before the sound
HALLUCINATION_SPEECH_SECONDS = 0.1  # a segment with less sound than this is dropped
MIN_LOOP_TOKENS = 8  # a loop: one phrase repeated 4+ times, 8+ tokens in all
PROMPT_RESET_TEMPERATURE = 0.5  # openai-whisper: above this, do not prompt with the output


MAX_GPU_STREAMS = 16  # the earlier fixed GPU batch; a cap, not measured here (no GPU)
GPU_MEMORY_SHARE = 0.5  # of the free memory, for the batch's caches and activations


def default_batch_size(
    device: str, dims: Any | None = None, beams: int = 1, free_bytes: int | None = None
) -> int:
    """Streams decoded together: 8 on a CPU; on a GPU as many as half the free memory holds.

    On a CPU each decoder step is bound by memory bandwidth (the 51,864 x d output
    projection and the cross-attention cache are read once per step for the whole
    batch), so wider batches pay off until the encoder, which scales with the batch,
    dominates. Measured with tiny.en on 4.5-10 minute clips (2 cores): 8 streams of at
    least 50 s were 1.7-2.3x stock openai-whisper, 4 streams of 60 s 1.4-1.6x.

    On a GPU the limit is memory: see ``streams_for_memory``.

    Args:
        device: "cuda" or "cpu".
        dims: the model's ``ModelDimensions`` (GPU only; without it 16/8/4 by free memory).
        beams: rows per stream (the beam size, or best_of when sampling).
        free_bytes: free GPU memory (default: ``torch.cuda.mem_get_info``).
    """
    if device != "cuda":
        return 8
    if free_bytes is None:
        import torch

        free_bytes, _ = torch.cuda.mem_get_info()
    if dims is None:
        return 16 if free_bytes >= 8 << 30 else 8 if free_bytes >= 4 << 30 else 4
    return streams_for_memory(int(free_bytes * GPU_MEMORY_SHARE), dims, beams)


def streams_for_memory(budget_bytes: int, dims: Any, beams: int = 1) -> int:
    """How many streams fit in ``budget_bytes`` of fp16 GPU memory (1 to 16).

    Per stream: the decoder's cross-attention key/value cache (audio context x text width
    x 2 x decoder layers, for each of ``beams`` rows), the encoder's largest transient (one
    layer's attention weights, context^2 x heads, plus its activations) and the window's
    audio features. For large-v3 with beam search (5 rows) that is about 1.3 GB a stream,
    so 16 streams would not fit on a 24 GB A10G; for turbo (4 decoder layers) about 0.25 GB.
    """
    fp16 = 2
    ctx, audio_width = dims.n_audio_ctx, dims.n_audio_state
    cross_cache = ctx * dims.n_text_state * 2 * dims.n_text_layer * fp16 * max(1, beams)
    encoder = (ctx * ctx * dims.n_audio_head + 8 * ctx * audio_width) * fp16
    per_stream = cross_cache + encoder + ctx * audio_width * fp16
    return max(1, min(MAX_GPU_STREAMS, int(budget_bytes // per_stream)))


@attrs.define
class _Stream:
    """One run of openai-whisper's loop over mel frames ``[seek, end)`` of ``mel``."""

    mel: Any  # (n_mels, frames) log-mel of the whole source, plus 30 s of padding
    mask: np.ndarray  # speech mask of the source, one entry per mel frame
    seek: int  # next mel frame to decode
    end: int  # one past the stream's last mel frame
    frames: int  # mel frames of sound in the whole source (windows may look past ``end``)
    prompt: list[int]  # tokens that prompt the next window (initial prompt + own output)
    segments: list[dict[str, Any]] = attrs.field(factory=list)
    last_speech: float = 0.0  # for word timestamps: end of the last word, seconds


def trim_repeats(tokens: Sequence[int], *, min_repeats: int = 4, max_period: int = 16) -> list[int]:
    """Cut a phrase repeated ``min_repeats`` or more times in a row down to one occurrence.

    A decoding loop ("thank you thank you thank you ...") is the failure; ordinary
    doubled words are kept because a loop must also span ``MIN_LOOP_TOKENS`` tokens.
    """
    out = list(tokens)
    i = 0
    while i < len(out):
        for period in range(1, max_period + 1):
            count = 1
            while out[i + count * period : i + (count + 1) * period] == out[i : i + period]:
                count += 1
            if count >= min_repeats and count * period >= MIN_LOOP_TOKENS:
                del out[i + period : i + count * period]
                break
        i += 1
    return out


def _start_at_sound(stream: _Stream) -> bool:
    """Skip the stream's leading silence; False when no sound is left."""
    ahead = stream.mask[stream.seek : stream.end]
    if not ahead.any():
        stream.seek = stream.end
        return False
    first = int(np.argmax(ahead))
    if first > SKIP_SILENCE_FRAMES:
        stream.seek += first - SILENCE_MARGIN_FRAMES
    return True


def _parse(result: Any, tokenizer: Any, offset: float, size: int) -> tuple[list[Any], int, bool]:
    """Split tokens at timestamps like openai-whisper; returns (pieces, frames used, ended).

    Each piece is (start s, end s, tokens). ``ended`` is True when the window's text ran
    to its end (a single timestamp at the end), else the seek moves to the last timestamp.
    """
    tokens = list(result.tokens)
    begin = tokenizer.timestamp_begin
    is_ts = [t >= begin for t in tokens]
    ended = is_ts[-2:] == [False, True]
    consecutive = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]
    if not consecutive:
        stamps = [t for t in tokens if t >= begin]
        duration = size / FRAMES_PER_SECOND
        if stamps and stamps[-1] != begin:
            duration = (stamps[-1] - begin) * TIME_PRECISION
        return [(offset, offset + duration, tokens)], size, True
    slices = [*consecutive, len(tokens)] if ended else consecutive
    pieces, last = [], 0
    for cut in slices:
        piece = tokens[last:cut]
        start = offset + (piece[0] - begin) * TIME_PRECISION
        pieces.append((start, offset + (piece[-1] - begin) * TIME_PRECISION, piece))
        last = cut
    used = size if ended else (tokens[last - 1] - begin) * INPUT_STRIDE
    return pieces, used, ended


def _has_sound(stream: _Stream, start: float, end: float) -> bool:
    lo = max(0, int((start - 0.5) * FRAMES_PER_SECOND))
    hi = int((end + 0.5) * FRAMES_PER_SECOND) + 1
    return int(stream.mask[lo:hi].sum()) >= HALLUCINATION_SPEECH_SECONDS * FRAMES_PER_SECOND


def _step(
    loaded: LoadedModel,
    streams: list[_Stream],
    options: TranscribeOptions,
    language: str,
    tokenizer: Any,
) -> None:
    """Decode the next window of every stream in one batch and advance each stream."""
    import torch
    import whisper
    from whisper.timing import add_word_timestamps

    model = loaded.model
    # A window shows the model up to 30 s of the source, past the stream's end when the
    # next stream's audio follows: a stream's last window then ends in real sound rather
    # than zero padding (tiny.en garbled the last sentence before a stream cut without it).
    # Segments that start after the stream's end are left to the next stream.
    sizes = [min(N_FRAMES, s.frames - s.seek) for s in streams]
    windows = [s.mel[:, s.seek : s.seek + n] for s, n in zip(streams, sizes, strict=True)]
    mels = torch.stack([whisper.pad_or_trim(w, N_FRAMES) for w in windows]).to(model.device)
    if resolve_precision(options, loaded.device) == "fp16":
        mels = mels.half()
    with torch.no_grad():
        features = model.embed_audio(mels)  # once; fallback decodes reuse it
    prompts = [s.prompt[-(model.dims.n_text_ctx // 2 - 1) :] for s in streams]
    # timestamp index where each stream ends (a row stops decoding there)
    limits = [max(1, -(-(s.end - s.seek) // INPUT_STRIDE)) for s in streams]
    results = decode_with_fallback(loaded, features, prompts, limits, options, language)
    for i, (stream, size, result) in enumerate(zip(streams, sizes, results, strict=True)):
        offset = stream.seek / FRAMES_PER_SECOND
        if is_no_speech(result, options):
            stream.seek += size
            continue
        pieces, used, ended = _parse(result, tokenizer, offset, size)
        segments = []
        for start, end, tokens in pieces:
            if (start + end) / 2 >= stream.end / FRAMES_PER_SECOND:
                # the next stream's audio (by the midpoint: timestamps are coarse, the cut
                # sits in a pause, so a sentence lies clearly on one side of it)
                break
            text_tokens = trim_repeats([t for t in tokens if t < tokenizer.eot])
            text = tokenizer.decode(text_tokens)
            if end <= start or not text.strip() or not _has_sound(stream, start, end):
                continue
            stamps = [t for t in tokens if t >= tokenizer.timestamp_begin]
            segments.append({
                "seek": stream.seek, "start": float(start), "end": float(end), "text": text,
                "tokens": [*stamps[:1], *text_tokens, *stamps[1:]],
                "temperature": result.temperature, "avg_logprob": result.avg_logprob,
                "compression_ratio": result.compression_ratio,
                "no_speech_prob": result.no_speech_prob,
            })  # fmt: skip
        seek = stream.seek + used
        if options.word_timestamps and segments:
            # align over the stream's own frames: the kept text does not cover the next
            # stream's audio, and DTW stretches words over all the frames it is given
            add_word_timestamps(
                segments=segments, model=model, tokenizer=tokenizer, mel=mels[i],
                num_frames=min(size, stream.end - stream.seek),
                last_speech_timestamp=stream.last_speech,
            )  # fmt: skip
            word_ends = [w["end"] for s in segments for w in s.get("words") or ()]
            if word_ends:
                stream.last_speech = float(word_ends[-1])
                if not ended and word_ends[-1] > offset:
                    seek = round(float(word_ends[-1]) * FRAMES_PER_SECOND)
        # never stand still: a window that yielded no timestamp still moves on
        stream.seek = max(seek, stream.seek + 1) if used else stream.seek + size
        stream.segments.extend(segments)
        if not options.condition_on_previous_text or (
            result.temperature > PROMPT_RESET_TEMPERATURE
        ):
            stream.prompt = []
        else:
            stream.prompt += [t for s in segments for t in s["tokens"]]


def _run(
    loaded: LoadedModel,
    streams: list[_Stream],
    options: TranscribeOptions,
    language: str,
    batch_size: int,
) -> None:
    """Advance all streams in lockstep, ``batch_size`` windows per forward pass."""
    tokenizer = _tokenizer(loaded, options, language)
    cpu = loaded.device == "cpu"
    if cpu:
        trim_heap()  # what the VAD and the log-mel freed, before the steps build on it
    while active := [s for s in streams if s.seek < s.end and _start_at_sound(s)]:
        for i in range(0, len(active), batch_size):
            handover_point()  # hand the model over, or stop when cancelled (engine.turns)
            _step(loaded, active[i : i + batch_size], options, language, tokenizer)
            if cpu:
                trim_heap()  # the step's activations leave the heap, not lie beside the next


def _batch_size(loaded: LoadedModel, options: TranscribeOptions) -> int:
    beams = max(options.beam_size or 1, options.best_of or 1)
    return default_batch_size(loaded.device, loaded.model.dims, beams)


def _speech_mask(samples: np.ndarray, options: TranscribeOptions) -> np.ndarray:
    """Speech per 10 ms frame: Silero VAD's when ``options.vad``, else frame energy's."""
    if options.vad:
        from .vad import frame_speech_mask

        return frame_speech_mask(samples, threshold=options.vad_threshold)
    return speech_mask(samples)


def _source(samples: np.ndarray, n_mels: int, mask: np.ndarray) -> tuple[Any, np.ndarray, int]:
    """(log-mel with 30 s of padding as openai-whisper computes it, speech mask, frames)."""
    import whisper

    from .mel import log_mel

    mel = log_mel(samples, n_mels, padding=whisper.audio.N_SAMPLES)  # chunked: less memory
    frames = int(mel.shape[-1]) - N_FRAMES
    mask = np.pad(mask, (0, max(0, frames - mask.shape[0])))[:frames]
    return mel, mask, frames


def _initial_prompt(loaded: LoadedModel, options: TranscribeOptions, language: str) -> list[int]:
    if not options.initial_prompt:
        return []
    tokenizer = _tokenizer(loaded, options, language)
    return list(tokenizer.encode(" " + options.initial_prompt.strip()))


def _tokenizer(loaded: LoadedModel, options: TranscribeOptions, language: str) -> Any:
    from whisper.tokenizer import get_tokenizer

    model = loaded.model
    return get_tokenizer(
        model.is_multilingual, num_languages=model.num_languages, language=language,
        task=options.task,
    )  # fmt: skip


def _result(segments: list[dict[str, Any]], language: str) -> dict[str, Any]:
    # plain floats: word alignment leaves numpy scalars in start/end
    numbered = [
        {"id": i, **s, "start": float(s["start"]), "end": float(s["end"])}
        for i, s in enumerate(segments)
    ]
    return {
        "text": "".join(s["text"] for s in numbered),
        "segments": numbered,
        "language": language,
    }


def transcribe_batched(
    loaded: LoadedModel,
    samples: np.ndarray,
    options: TranscribeOptions,
    *,
    language: str,
    batch_size: int | None = None,
    stream_seconds: float = MIN_STREAM_SECONDS,
    mask: np.ndarray | None = None,
) -> dict[str, Any]:
    """Transcribe one input as ``batch_size`` streams decoded together.

    Args:
        loaded: the model (``models.load_model``); the caller holds ``loaded.turns``.
        samples: 16 kHz mono float32 audio.
        options: decoding options (``mode`` is ignored: this is the batched mode).
        language: the spoken language (the engine resolves it once per input).
        batch_size: streams per forward pass; default ``default_batch_size`` for the device,
            model and beam size.
        stream_seconds: the shortest stream: audio shorter than ``batch_size`` times this
            gets fewer streams, so more windows keep the previous text as their prompt.
        mask: speech per 10 ms frame of ``samples``, when the caller has it (the VAD's
            ``SpeechMap.joined_mask``); else computed here.

    Returns:
        openai-whisper's result shape: ``text``, ``segments`` (id, seek, start, end, text,
        tokens, temperature, avg_logprob, compression_ratio, no_speech_prob and ``words``
        when asked), ``language``.
    """
    size = batch_size or _batch_size(loaded, options)
    speech = _speech_mask(samples, options) if mask is None else mask
    mel, mask, frames = _source(samples, loaded.model.dims.n_mels, speech)
    count = min(size, int(samples.shape[0] / SAMPLE_RATE // stream_seconds)) or 1
    prompt = _initial_prompt(loaded, options, language)
    streams = [
        _Stream(mel, mask, w.start // MEL_HOP, min(w.end // MEL_HOP, frames), frames, list(prompt))
        for w in split_evenly(samples, count, mask=speech)
        if not w.silent
    ]
    if streams:
        streams[-1].end = frames
    _run(loaded, streams, options, language, size)
    return _result([seg for s in streams for seg in s.segments], language)


def transcribe_windows(
    loaded: LoadedModel,
    inputs: Sequence[np.ndarray],
    options: TranscribeOptions,
    *,
    language: str,
    batch_size: int | None = None,
    recover: Callable[[dict[str, Any], np.ndarray, Any], None] | None = None,
) -> list[dict[str, Any]]:
    """Transcribe many inputs together: one stream each, ``batch_size`` per forward pass.

    Made for many short files (a window each): the result for each input is what
    ``transcribe_batched`` (and, for a single window, ``whisper.transcribe``) gives for it
    alone, with times relative to that input.

    Args:
        loaded: the model; the caller holds ``loaded.turns``.
        inputs: 16 kHz mono float32 arrays, any lengths.
        options: decoding options.
        language: the spoken language of all inputs.
        batch_size: windows per forward pass; default ``default_batch_size`` for the device,
            model and beam size.
        recover: with the VAD, called as ``recover(result, input, speech_map)`` for each
            input with speech (``decoding.recover_speech``: uncovered speech decoded again).

    Returns:
        One openai-whisper-shaped dict per input, in order.
    """
    if not inputs:
        return []
    from .vad import SpeechMap, VadParameters, detect

    loaded = model_for(loaded, resolve_precision(options, loaded.device))
    clips = [np.asarray(x, dtype=np.float32) for x in inputs]
    maps: list[SpeechMap | None] = [None] * len(clips)
    if options.vad:  # each input hears only its own speech, as in ``decoding.run_whisper``
        params = VadParameters.from_options(options)
        speech_maps = [detect(x, params) for x in clips]
        clips = [m.join(x) for m, x in zip(speech_maps, clips, strict=True)]
        maps = list(speech_maps)
    prompt = _initial_prompt(loaded, options, language)
    streams: list[_Stream | None] = []
    for samples, speech in zip(clips, maps, strict=True):
        if not samples.shape[0]:  # no speech: nothing to decode
            streams.append(None)
            continue
        # with the VAD, the mask comes from the detector pass that found the speech
        frame_mask = (
            _speech_mask(samples, options)
            if speech is None
            else speech.joined_mask(options.vad_threshold)
        )
        mel, mask, frames = _source(samples, loaded.model.dims.n_mels, frame_mask)
        streams.append(_Stream(mel, mask, 0, frames, frames, list(prompt)))
    size = batch_size or _batch_size(loaded, options)
    _run(loaded, [s for s in streams if s is not None], options, language, size)
    results = []
    for stream, speech, original in zip(streams, maps, inputs, strict=True):
        result = _result(stream.segments if stream else [], language)
        if speech and speech.regions:
            result = speech.restore(result)
            if recover is not None:
                recover(result, np.asarray(original, dtype=np.float32), speech)
        results.append(result)
    return results
