"""Transcription options: one frozen, validated object that crosses the Modal boundary.

Validation happens here, on the client, so a bad option fails fast with a
``ConfigurationError`` before any audio is uploaded; the container validates again with the
same code (``TranscribeOptions.from_dict``) because it must not trust its caller.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from whisper_modal.errors import ConfigurationError
from whisper_modal.names import check_names, checked_keywords

__all__ = [
    "DEFAULT_TEMPERATURES",
    "KNOWN_MODELS",
    "LANGUAGES",
    "TranscribeOptions",
    "is_known_model",
    "require_known_model",
]

#: every model name openai-whisper can download (its ``_MODELS`` keys, 20250625)
KNOWN_MODELS: tuple[str, ...] = (
    "tiny.en",
    "tiny",
    "base.en",
    "base",
    "small.en",
    "small",
    "medium.en",
    "medium",
    "large-v1",
    "large-v2",
    "large-v3",
    "large",
    "large-v3-turbo",
    "turbo",
)

#: ISO 639-1 codes Whisper knows (kept in sync with ``whisper.tokenizer.LANGUAGES``)
LANGUAGES: frozenset[str] = frozenset(
    [
        "en",
        "zh",
        "de",
        "es",
        "ru",
        "ko",
        "fr",
        "ja",
        "pt",
        "tr",
        "pl",
        "ca",
        "nl",
        "ar",
        "sv",
        "it",
        "id",
        "hi",
        "fi",
        "vi",
        "he",
        "uk",
        "el",
        "ms",
        "cs",
        "ro",
        "da",
        "hu",
        "ta",
        "no",
        "th",
        "ur",
        "hr",
        "bg",
        "lt",
        "la",
        "mi",
        "ml",
        "cy",
        "sk",
        "te",
        "fa",
        "lv",
        "bn",
        "sr",
        "az",
        "sl",
        "kn",
        "et",
        "mk",
        "br",
        "eu",
        "is",
        "hy",
        "ne",
        "mn",
        "bs",
        "kk",
        "sq",
        "sw",
        "gl",
        "mr",
        "pa",
        "si",
        "km",
        "sn",
        "yo",
        "so",
        "af",
        "oc",
        "ka",
        "be",
        "tg",
        "sd",
        "gu",
        "am",
        "yi",
        "lo",
        "uz",
        "fo",
        "ht",
        "ps",
        "tk",
        "nn",
        "mt",
        "sa",
        "lb",
        "my",
        "bo",
        "tl",
        "mg",
        "as",
        "tt",
        "haw",
        "ln",
        "ha",
        "ba",
        "jw",
        "su",
        "yue",
    ]
)

#: openai-whisper's default temperature fallback schedule
DEFAULT_TEMPERATURES: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)

Task = Literal["transcribe", "translate"]
Mode = Literal["sequential", "batched", "auto"]
Precision = Literal["auto", "fp32", "fp16", "bf16", "int8"]


def is_known_model(name: str) -> bool:
    """True for an official Whisper model name (the only names the container loads)."""
    return name in KNOWN_MODELS


def require_known_model(name: object) -> None:
    """Refuse a name the Modal app does not load (the client's check and the container's).

    Raises:
        ConfigurationError: ``name`` is not in ``KNOWN_MODELS``.
    """
    if not (isinstance(name, str) and is_known_model(name)):
        raise ConfigurationError(
            f"the Modal app serves only known Whisper models ({', '.join(KNOWN_MODELS)}), "
            f"not {name!r}; a checkpoint path works with backend='local'"
        )


def _temperatures(value: float | tuple[float, ...] | list[float]) -> tuple[float, ...]:
    if isinstance(value, int | float):
        return (float(value),)
    return tuple(float(v) for v in value)


def _check_model(_: Any, __: Any, value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError("model must be a non-empty string such as 'tiny.en' or 'turbo'")


def _check_language(_: Any, __: Any, value: str | None) -> None:
    if value is not None and not isinstance(value, str):
        raise ConfigurationError(f"language must be a string, not {type(value).__name__}")
    if value is not None and value not in LANGUAGES:
        raise ConfigurationError(
            f"unknown language {value!r}; use an ISO 639-1 code Whisper knows (e.g. 'en')"
        )


def _check_task(_: Any, __: Any, value: str) -> None:
    if value not in ("transcribe", "translate"):
        raise ConfigurationError(f"task must be 'transcribe' or 'translate', not {value!r}")


def _check_mode(_: Any, __: Any, value: str) -> None:
    if value not in ("sequential", "batched", "auto"):
        raise ConfigurationError(f"mode must be 'sequential', 'batched' or 'auto', not {value!r}")


#: the values of ``TranscribeOptions.precision`` (see ``engine.precision``)
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")


def _check_precision(_: Any, __: Any, value: str) -> None:
    if value not in PRECISIONS:
        raise ConfigurationError(
            f"precision must be one of {', '.join(map(repr, PRECISIONS))}, not {value!r}"
        )


def _check_temperature(_: Any, __: Any, value: tuple[float, ...]) -> None:
    if not value or any(not math.isfinite(t) or t < 0.0 or t > 1.0 for t in value):
        raise ConfigurationError("temperature must be one value or a sequence in [0, 1]")


def _check_positive_int_or_none(_: Any, attribute: Any, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ConfigurationError(f"{attribute.name} must be a positive integer or None")


def _check_prompt(_: Any, __: Any, value: str | None) -> None:
    # Whisper keeps only the last 223 prompt tokens; a huge prompt is almost surely a bug.
    if value is not None and (not isinstance(value, str) or len(value) > 4000):
        raise ConfigurationError("initial_prompt must be a string of at most 4000 characters")


def _check_optional_float(_: Any, attribute: Any, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise ConfigurationError(f"{attribute.name} must be a finite number or None")


def _check_bool(_: Any, attribute: Any, value: bool) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{attribute.name} must be True or False")


def _check_vad_threshold(_: Any, __: Any, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise ConfigurationError("vad_threshold must be a number strictly between 0 and 1")


def _check_min_silence(_: Any, __: Any, value: float) -> None:
    # below ~0.1 s every gap between words would cut the audio Whisper hears
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0.1 <= value <= 60.0
    ):
        raise ConfigurationError("vad_min_silence_seconds must be between 0.1 and 60 seconds")


#: options newer than the first wire schema: sent only when they differ from the default
_ADDED_LATER: tuple[str, ...] = (
    "vad", "vad_threshold", "vad_min_silence_seconds", "cpu_int8", "precision",
    "diarize", "num_speakers", "min_speakers", "max_speakers", "multichannel",
)  # fmt: skip


#: more speakers than this is almost surely a mistake (and would slow clustering down)
MAX_SPEAKERS = 32


def _check_speakers(_: Any, attribute: Any, value: int | None) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SPEAKERS:
        raise ConfigurationError(
            f"{attribute.name} must be an integer from 1 to {MAX_SPEAKERS} or None, not {value!r}"
        )


def _check_speaker_counts(o: TranscribeOptions) -> None:
    given = [
        n
        for n, v in (
            ("num_speakers", o.num_speakers),
            ("min_speakers", o.min_speakers),
            ("max_speakers", o.max_speakers),
        )
        if v is not None
    ]
    if given and not o.diarize:
        raise ConfigurationError(f"{', '.join(given)} need(s) diarize=True")
    if (
        o.min_speakers is not None
        and o.max_speakers is not None
        and o.min_speakers > o.max_speakers
    ):
        raise ConfigurationError(
            f"min_speakers ({o.min_speakers}) is more than max_speakers ({o.max_speakers})"
        )
    if o.num_speakers is not None and (o.min_speakers or o.max_speakers):
        raise ConfigurationError("give num_speakers or min_speakers/max_speakers, not both")


@checked_keywords("option")
@attrs.frozen(kw_only=True)
class TranscribeOptions:
    """How to transcribe: the model and the decoding knobs openai-whisper exposes."""

    # Whisper model name (see KNOWN_MODELS); local backends also accept a checkpoint path.
    model: str = attrs.field(default="turbo", validator=_check_model)
    # spoken language as an ISO code; None lets the model detect it from the first 30 s
    language: str | None = attrs.field(default=None, validator=_check_language)
    # "transcribe" keeps the spoken language; "translate" outputs English
    task: Task = attrs.field(default="transcribe", validator=_check_task)
    # text that conditions the first window (names, spelling, style)
    initial_prompt: str | None = attrs.field(default=None, validator=_check_prompt)
    # one temperature, or a fallback schedule tried when decoding looks like a failure
    temperature: tuple[float, ...] = attrs.field(
        default=DEFAULT_TEMPERATURES, converter=_temperatures, validator=_check_temperature
    )
    # beam search width at temperature 0 (None: greedy); best_of: samples at temperature > 0
    beam_size: int | None = attrs.field(default=None, validator=_check_positive_int_or_none)
    best_of: int | None = attrs.field(default=None, validator=_check_positive_int_or_none)
    # per-word start/end times from cross-attention alignment (costs ~10-20% more time)
    word_timestamps: bool = False
    # feed the previous window's text as a prompt; off reduces repetition loops
    condition_on_previous_text: bool = True
    # failure thresholds that trigger the temperature fallback (openai-whisper defaults)
    compression_ratio_threshold: float | None = attrs.field(
        default=2.4, validator=_check_optional_float
    )
    logprob_threshold: float | None = attrs.field(default=-1.0, validator=_check_optional_float)
    no_speech_threshold: float | None = attrs.field(default=0.6, validator=_check_optional_float)
    # "sequential" is openai-whisper's loop; "batched" runs that loop on several streams
    # (the audio split at pauses) in shared forward passes; "auto" batches audio long
    # enough for two streams (100 s)
    mode: Mode = attrs.field(default="auto", validator=_check_mode)
    # voice-activity detection (Silero VAD): decode only the speech, so silence, noise and
    # tones give no text; off decodes every window as openai-whisper does
    vad: bool = attrs.field(default=True, validator=_check_bool)
    # speech probability above which a 32 ms frame is speech (Silero's default 0.5)
    vad_threshold: float = attrs.field(default=0.5, validator=_check_vad_threshold)
    # pauses at least this long (seconds) are cut out of the audio Whisper hears
    vad_min_silence_seconds: float = attrs.field(default=2.0, validator=_check_min_silence)
    # the number format: "auto" (fp16 on CUDA; on a CPU int8 for *.en models where VNNI
    # gives 8-bit activations, else fp32), "fp32", "fp16" (CUDA),
    # "bf16" (the encoder in bfloat16, CPUs with native bf16), "int8" (CPU int8 twin)
    precision: Precision = attrs.field(default="auto", validator=_check_precision)
    # deprecated alias of precision="int8" on a CPU (ignored on CUDA, as it always was)
    cpu_int8: bool = attrs.field(default=False, validator=_check_bool)
    # find who spoke when and put SPEAKER_00... on words and segments (turns word
    # timestamps on internally; words stay in the result only if word_timestamps is set)
    diarize: bool = attrs.field(default=False, validator=_check_bool)
    # the number of speakers when known, or bounds on the estimate (need diarize=True)
    num_speakers: int | None = attrs.field(default=None, validator=_check_speakers)
    min_speakers: int | None = attrs.field(default=None, validator=_check_speakers)
    max_speakers: int | None = attrs.field(default=None, validator=_check_speakers)
    # transcribe each channel of a multi-channel file on its own (call centres, interviews:
    # one speaker per channel) and merge by time; segments and words carry ``channel``
    multichannel: bool = attrs.field(default=False, validator=_check_bool)

    @property
    def splittable(self) -> bool:
        """False when the recording must be transcribed whole, never cut into fan-out
        pieces: diarization clusters speakers over all of it, and ``multichannel`` keeps
        channels that pieces (mixed to mono) would lose."""
        return not (self.diarize or self.multichannel)

    @property
    def english_only(self) -> bool:
        """Whether ``model`` names an English-only model (``tiny.en``, ...; a path: no)."""
        return self.model.endswith(".en")

    def __attrs_post_init__(self) -> None:
        _check_speaker_counts(self)
        if self.cpu_int8 and self.precision not in ("auto", "int8"):
            raise ConfigurationError(
                f"cpu_int8=True (deprecated: precision='int8') contradicts "
                f"precision={self.precision!r}; pass precision alone"
            )
        if self.english_only and self.language not in (None, "en"):
            raise ConfigurationError(
                f"{self.model} is English-only; drop language={self.language!r} or use a "
                "multilingual model"
            )
        if self.english_only and self.task == "translate":
            raise ConfigurationError(f"{self.model} is English-only and cannot translate")

    def to_dict(self) -> dict[str, Any]:
        """Return the options as a plain dict (the wire form).

        Options added after the first release are left out at their default values, so
        an app deployed before them (whose ``from_dict`` refuses unknown keys) still
        accepts a newer client's options; ``from_dict`` restores the defaults.
        """
        d = attrs.asdict(self)
        d["temperature"] = list(self.temperature)
        fields = attrs.fields_dict(TranscribeOptions)
        for name in _ADDED_LATER:
            if d[name] == fields[name].default:
                del d[name]
        return d

    def pass_key(self) -> str:
        """Equal for options whose inputs may share one batched pass (the same options)."""
        return repr(sorted(self.to_dict().items()))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TranscribeOptions:
        """Build and validate options from a plain dict; unknown keys are an error."""
        known = attrs.fields_dict(cls)
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigurationError(f"unknown transcription option(s): {', '.join(unknown)}")
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise ConfigurationError(str(exc)) from exc

    def replace(self, **changes: Any) -> TranscribeOptions:
        """Return a validated copy with some options changed.

        Raises:
            ConfigurationError: an unknown option or an invalid value.
        """
        check_names("option", changes, attrs.fields_dict(TranscribeOptions))
        return attrs.evolve(self, **changes)
