"""OpenAI's audio API shapes: form fields -> ``TranscribeOptions``, ``Transcript`` -> response.

Field for field as ``POST /v1/audio/transcriptions`` documents them: ``file``, ``model``,
``language``, ``prompt``, ``response_format`` (json, text, srt, vtt, verbose_json),
``temperature`` and ``timestamp_granularities[]`` (word, segment). Extensions, which
OpenAI clients never send: ``word_timestamps``, ``mode``, and the speaker fields ``diarize``,
``num_speakers``, ``min_speakers``, ``max_speakers`` (``verbose_json`` then carries a
``speaker`` on segments and words, and ``speakers``), and ``multichannel`` (each channel
transcribed on its own; segments and words carry ``channel``). ``whisper-1`` names this
deployment's default model, so code written for OpenAI works unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from starlette.responses import JSONResponse, PlainTextResponse, Response

from whisper_modal.config import Settings, split_list
from whisper_modal.errors import ConfigurationError
from whisper_modal.http_api.errors import ApiError, shorten
from whisper_modal.options import DEFAULT_TEMPERATURES, TranscribeOptions
from whisper_modal.results import Transcript

__all__ = [
    "OPENAI_ALIAS",
    "RESPONSE_FORMATS",
    "Fields",
    "build_options",
    "granularities",
    "json_fields",
    "render",
    "response_format",
    "served_models",
    "text",
    "verbose_json",
]

#: OpenAI's ``response_format`` values (``diarized_json`` is not supported)
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
#: the model name OpenAI clients send; here it means the deployment's default model
OPENAI_ALIAS = "whisper-1"

#: ``name -> last value`` and ``name -> all values`` of a form or a JSON body
Fields = tuple[Callable[[str], Any], Callable[[str], list[str]]]


def served_models(settings: Settings) -> tuple[str, ...]:
    """The models this deployment serves: ``server_models``, or just ``model``."""
    return split_list(settings.server_models) or (settings.model,)


def text(value: Any, name: str) -> str | None:
    """A text field's value (None when absent); 400 naming ``name`` when it is not text.

    Form fields are always text; a JSON body can carry anything (``{"language": {...}}``).
    The message does not echo the value, which may be huge or nested.
    """
    if value is None or isinstance(value, str):
        return value
    raise ApiError(
        400,
        f"{name} must be a string, not {type(value).__name__}",
        param=name,
        code="invalid_value",
    )


def _model(name: str | None, settings: Settings) -> str:
    if name is None or name == OPENAI_ALIAS:
        return settings.model
    if name not in served_models(settings):
        raise ApiError(
            404,
            f"the model {shorten(name)!r} does not exist here; GET /v1/models lists them",
            param="model",
            code="model_not_found",
        )
    return name


def _bool(value: Any, name: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ApiError(400, f"{name} must be true or false", param=name, code="invalid_value")


def _int(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        raise ApiError(
            400, f"{name} must be an integer", param=name, code="invalid_value"
        ) from None


def _temperature(value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ApiError(
            400, "temperature must be a number", param="temperature", code="invalid_value"
        ) from None
    # OpenAI: 0 means "start at 0 and raise the temperature when decoding fails", which is
    # exactly Whisper's fallback schedule; any other value is used as given.
    return DEFAULT_TEMPERATURES if t == 0 else (t,)


def response_format(value: str | None) -> str:
    """Validate ``response_format`` (default ``json``)."""
    fmt = value or "json"
    if fmt not in RESPONSE_FORMATS:
        raise ApiError(
            400,
            f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, not {shorten(fmt)!r}",
            param="response_format",
            code="invalid_value",
        )
    return fmt


def granularities(values: Sequence[str]) -> frozenset[str]:
    """Validate ``timestamp_granularities[]`` (each ``word`` or ``segment``)."""
    given = frozenset(values)
    if given - {"word", "segment"}:
        raise ApiError(
            400,
            "timestamp_granularities[] takes 'word' and/or 'segment'",
            param="timestamp_granularities",
            code="invalid_value",
        )
    return given


def build_options(
    fields: Fields, settings: Settings, *, task: str = "transcribe"
) -> TranscribeOptions:
    """Turn OpenAI's form fields (plus our extensions) into validated options.

    Args:
        fields: accessors for the request's fields (see ``Fields``).
        settings: the server's settings (default model, served models).
        task: ``transcribe`` or ``translate`` (the endpoint decides).

    Raises:
        ApiError: 404 for a model this deployment does not serve, 400 for a bad value.
    """
    get, get_all = fields
    model = _model(text(get("model"), "model"), settings)
    words = "word" in granularities(get_all("timestamp_granularities[]")) or bool(
        _bool(get("word_timestamps"), "word_timestamps")
    )
    language = text(get("language"), "language")
    if task == "translate" and model.endswith(".en"):
        # An English-only model hears only English, and English translated to English is
        # its transcript: answer that instead of refusing what OpenAI would accept.
        task, language = "transcribe", language or "en"
    values: dict[str, Any] = {
        "model": model,
        "language": language,
        "task": task,
        "initial_prompt": text(get("prompt"), "prompt"),
        "word_timestamps": words,
        "temperature": _temperature(get("temperature")),
        "mode": text(get("mode"), "mode"),
        "diarize": _bool(get("diarize"), "diarize"),
        "num_speakers": _int(get("num_speakers"), "num_speakers"),
        "min_speakers": _int(get("min_speakers"), "min_speakers"),
        "max_speakers": _int(get("max_speakers"), "max_speakers"),
        "multichannel": _bool(get("multichannel"), "multichannel"),
    }
    given = {k: v for k, v in values.items() if v is not None}
    try:
        return TranscribeOptions(**given)
    except ConfigurationError as exc:
        message = str(exc)
        for value in given.values():  # the options' messages quote the value they refuse
            if isinstance(value, str) and value != shorten(value):
                message = message.replace(repr(value), repr(shorten(value)))
        raise ApiError(400, message, param=_bad_field(given), code="invalid_value") from exc


#: option name -> the form field it comes from, where they differ
_FIELD_NAMES = {"initial_prompt": "prompt"}


def _bad_field(given: Mapping[str, Any]) -> str | None:
    """The form field whose own validator refuses its value (None: a combination is wrong)."""
    import attrs

    fields = attrs.fields_dict(TranscribeOptions)
    for name, value in given.items():
        field = fields[name]
        try:
            converted = field.converter(value) if callable(field.converter) else value
            if field.validator is not None:
                field.validator(None, field, converted)
        except (ConfigurationError, TypeError, ValueError):
            return _FIELD_NAMES.get(name, name)
    return None


def verbose_json(t: Transcript, *, task: str, grains: frozenset[str]) -> dict[str, Any]:
    """OpenAI's ``verbose_json`` document (segments unless only words were asked for)."""
    body: dict[str, Any] = {
        "task": task,
        "language": t.language,
        "duration": t.duration,
        "text": t.text,
    }
    if not grains or "segment" in grains:
        body["segments"] = [
            {
                "id": s.id,
                "seek": 0,  # not tracked per segment
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": [],  # token ids are not kept
                "temperature": s.temperature or 0.0,
                "avg_logprob": s.avg_logprob or 0.0,
                "compression_ratio": s.compression_ratio or 0.0,
                "no_speech_prob": s.no_speech_prob or 0.0,
                **({"speaker": s.speaker} if s.speaker else {}),
                **({"channel": s.channel} if s.channel is not None else {}),
            }
            for s in t.segments
        ]
    if "word" in grains:
        body["words"] = [
            {"word": w.word.strip(), "start": w.start, "end": w.end}
            | ({"speaker": w.speaker} if w.speaker else {})
            | ({"channel": w.channel} if w.channel is not None else {})
            for w in t.words
        ]
    if t.speakers:
        body["speakers"] = list(t.speakers)
    return body


def render(t: Transcript, fmt: str, *, task: str, grains: frozenset[str]) -> Response:
    """The HTTP response for ``response_format=fmt``."""
    if fmt == "json":
        return JSONResponse({"text": t.text})
    if fmt == "verbose_json":
        return JSONResponse(verbose_json(t, task=task, grains=grains))
    if fmt == "text":
        return PlainTextResponse(t.text.strip() + "\n")
    from whisper_modal.formats import to_srt, to_vtt

    if fmt == "srt":
        return PlainTextResponse(to_srt(t))
    return Response(to_vtt(t), media_type="text/vtt")


def json_fields(data: Mapping[str, Any]) -> Fields:
    """``Fields`` over a JSON body (lists for repeatable fields).

    Options may also sit in an ``"options"`` object; top-level fields win.
    """
    nested = data.get("options")
    if isinstance(nested, Mapping):
        data = {**nested, **data}

    def get(name: str) -> Any:
        value = data.get(name)
        return None if value == "" else value

    def get_all(name: str) -> list[str]:
        value = data.get(name.removesuffix("[]"), data.get(name))
        if value is None:
            return []
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]

    return get, get_all
