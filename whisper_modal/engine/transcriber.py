"""The engine: audio bytes in, a typed ``Transcript`` out.

This one class runs both inside the Modal container and in the local backend, so the two
produce the same result for the same input. The language is resolved here, once (given,
English for ``.en`` models, or detected from the first 30 s), and passed down to the
decoding modes. Only the container turns the transcript into the wire dict.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from typing import Any

import attrs
import numpy as np

from whisper_modal.errors import (
    RemoteExecutionError,
    WhisperModalError,
    map_engine_error,
    outcome_of,
)
from whisper_modal.options import TranscribeOptions
from whisper_modal.results import Segment, Timings, Transcript

from .constants import SAMPLE_RATE, WINDOW_SAMPLES
from .models import LoadedModel, ModelStore, load_model, require_local_extra

__all__ = ["Engine"]


class Engine:
    """Decode audio and run openai-whisper; models are loaded once per process.

    Args:
        cache_dir: the model store directory.
        device: "auto" (CUDA when present), "cuda" or "cpu".
        allow_paths: accept checkpoint paths as model names (False in the container).
        allow_download: download missing official checkpoints.
        max_audio_seconds: refuse longer audio with ``AudioError(reason="too_long")``.
        backend: the label put in results ("local" or "modal").
    """

    def __init__(
        self,
        *,
        cache_dir: str | os.PathLike[str],
        device: str = "auto",
        allow_paths: bool = True,
        allow_download: bool = True,
        max_audio_seconds: float | None = None,
        backend: str = "local",
    ) -> None:
        self.store = ModelStore(cache_dir)
        self.device = device
        self.allow_paths = allow_paths
        self.allow_download = allow_download
        self.max_audio_seconds = max_audio_seconds
        self.backend = backend

    def load(self, model: str) -> LoadedModel:
        """Load (or fetch from the process cache) a model; see ``models.load_model``."""
        return load_model(
            model,
            store=self.store,
            device=self.device,
            allow_paths=self.allow_paths,
            allow_download=self.allow_download,
        )

    def decode(
        self,
        audio: bytes | bytearray | np.ndarray,
        *,
        sample_rate: int | None = None,
        channels_apart: bool = False,
    ) -> np.ndarray:
        """Turn encoded bytes (or an array at ``sample_rate``) into 16 kHz mono float32
        (or (channels, n) with ``channels_apart``)."""
        from .audio import load_audio

        return load_audio(
            audio,
            sample_rate=sample_rate,
            max_seconds=self.max_audio_seconds or None,
            channels_apart=channels_apart,
        )

    def transcribe(
        self,
        audio: bytes | bytearray | np.ndarray,
        options: TranscribeOptions,
        *,
        sample_rate: int | None = None,
    ) -> Transcript:
        """Transcribe one input.

        Raises:
            AudioError: the audio cannot be decoded or breaks a limit.
            ConfigurationError: unknown model or bad options.
            RemoteExecutionError: the model failed (e.g. out of memory).
        """
        from .decoding import run_whisper

        require_local_extra()
        if options.multichannel:  # each channel on its own, then merged by time
            channels = self.decode(audio, sample_rate=sample_rate, channels_apart=True)
            if channels.shape[0] > 1:
                from .channels import merge_channels

                mono = options.replace(multichannel=False)
                parts = [self.transcribe(c, mono, sample_rate=SAMPLE_RATE) for c in channels]
                return merge_channels(parts, diarized=options.diarize)
            audio, sample_rate = channels[0], SAMPLE_RATE
        started = time.perf_counter()
        samples = self.decode(audio, sample_rate=sample_rate)
        decoded = time.perf_counter()
        loaded = self.load(options.model)
        try:
            with loaded.turns.hold(samples.shape[0] / SAMPLE_RATE):
                began = time.perf_counter()
                # diarization splits segments at word times, so it needs words
                result = run_whisper(loaded, samples, _with_words(options))  # language once
                inference = time.perf_counter() - began
        except Exception as exc:  # torch/whisper internals -> typed error
            raise map_engine_error(exc) from exc
        timings = Timings(
            load=loaded.load_seconds,
            decode=decoded - started,
            inference=inference,
            total=time.perf_counter() - started,
        )
        transcript = self._transcript(
            result,
            samples,
            loaded,
            options,
            language=str(result["language"]),
            language_probability=result.get("language_probability"),
            timings=timings,
        )
        if options.diarize:
            transcript = _diarize(transcript, samples, options, loaded.device)
        return transcript

    def transcribe_packed(
        self, inputs: list[bytes], options: TranscribeOptions
    ) -> list[Transcript | WhisperModalError]:
        """Transcribe many short inputs in shared batches; one result or error per input.

        Inputs longer than one 30 s window (or whose language must be detected with a
        multilingual model) go through ``transcribe`` one by one.
        """
        from .batching import transcribe_windows
        from .decoding import recover_speech

        started = time.perf_counter()
        out: list[Transcript | WhisperModalError | None] = [None] * len(inputs)
        short: list[tuple[int, np.ndarray]] = []
        loaded = self.load(options.model)
        for i, data in enumerate(inputs):
            samples = outcome_of(functools.partial(self.decode, data))
            if isinstance(samples, WhisperModalError):
                out[i] = samples
                continue
            language_known = options.language is not None or not loaded.is_multilingual
            if samples.shape[0] <= WINDOW_SAMPLES and language_known and options.splittable:
                short.append((i, samples))
            else:
                out[i] = outcome_of(functools.partial(self.transcribe, data, options))
        if short:
            decoded = time.perf_counter()
            language = options.language or "en"
            try:
                with loaded.turns.hold(max(s.shape[0] for _, s in short) / SAMPLE_RATE):
                    raw = transcribe_windows(
                        loaded,
                        [s for _, s in short],
                        options,
                        language=language,
                        recover=functools.partial(
                            recover_speech, _decoder(loaded, options), options
                        ),
                    )
            except Exception as exc:
                error = map_engine_error(exc)
                for i, _ in short:
                    out[i] = error
                raw = []
            share = (time.perf_counter() - decoded) / max(1, len(short))
            timings = Timings(inference=share, total=share + (decoded - started) / len(inputs))
            for (i, samples), result in zip(short, raw, strict=False):
                # one stream per input, in shared forward passes
                result["mode"] = "batched"
                out[i] = self._transcript(
                    result, samples, loaded, options, language=language, timings=timings
                )
        return [
            o if o is not None else RemoteExecutionError("the engine returned no result")
            for o in out
        ]

    def _transcript(
        self,
        result: dict[str, Any],
        samples: np.ndarray,
        loaded: LoadedModel,
        options: TranscribeOptions,
        *,
        language: str,
        timings: Timings,
        language_probability: float | None = None,
    ) -> Transcript:
        """The one place a ``Transcript`` is built from openai-whisper's result dict."""
        duration = samples.shape[0] / SAMPLE_RATE
        segments = tuple(
            _within(Segment.from_dict(dict(s, text=str(s["text"]).strip())), duration)
            for s in result["segments"]
        )
        return Transcript(
            text=str(result["text"]).strip(),
            language=language,
            duration=duration,
            segments=segments,
            model=options.model,
            backend=self.backend,
            device=_device_label(loaded.device),
            mode=str(result.get("mode") or ""),
            timings=timings,
            language_probability=language_probability,
            cold_start=loaded.load_seconds > 0.0,
            uncovered_speech=tuple(result.get("uncovered_speech") or ()),
        )

    def health(self, model: str | None = None) -> dict[str, Any]:
        """Versions, device and (optionally) whether ``model`` loads; plain dict."""
        import torch
        import whisper

        info: dict[str, Any] = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "whisper": getattr(whisper, "__version__", "unknown"),
            "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "cache_dir": str(self.store.cache_dir),
            "models_on_disk": [m.name for m in self.store.list()],
        }
        if model is not None:
            loaded = self.load(model)
            info["model"] = model
            info["model_loaded"] = True
            info["device"] = loaded.device
        return info


def _decoder(loaded: LoadedModel, options: TranscribeOptions) -> LoadedModel:
    """The model that decodes: ``loaded`` in the options' precision (twins made once)."""
    from .precision import model_for, resolve_precision

    return model_for(loaded, resolve_precision(options, loaded.device))


def _with_words(options: TranscribeOptions) -> TranscribeOptions:
    return options.replace(word_timestamps=True) if options.diarize else options


def _diarize(
    transcript: Transcript, samples: np.ndarray, options: TranscribeOptions, device: str
) -> Transcript:
    from whisper_modal.engine.diarize.pipeline import apply_diarization

    return apply_diarization(
        transcript,
        samples,
        device=device,
        num_speakers=options.num_speakers,
        min_speakers=options.min_speakers,
        max_speakers=options.max_speakers,
        keep_words=options.word_timestamps,
    )


def _device_label(device: str) -> str:
    if device == "cuda":
        import torch

        return f"cuda:{torch.cuda.get_device_name(0)}"
    return device


def _within(segment: Segment, duration: float) -> Segment:
    """``segment`` with its and its words' times clamped to ``[0, duration]``.

    Whisper's timestamps come from 20 ms tokens of a 30 s window, so the last segment of
    a clip can end past the audio (seen: 30.884 s on a 29.4 s clip).
    """

    def at(t: float) -> float:
        return min(max(t, 0.0), duration)

    if (
        segment.start >= 0.0
        and segment.end <= duration
        and all(w.start >= 0.0 and w.end <= duration for w in segment.words)
    ):
        return segment
    words = tuple(attrs.evolve(w, start=at(w.start), end=at(w.end)) for w in segment.words)
    return attrs.evolve(segment, start=at(segment.start), end=at(segment.end), words=words)
