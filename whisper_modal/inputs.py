"""Turn what a caller passes into a ``Request``: options, audio bytes or an S3 key.

The client side of input handling, and the first stage of every call: keyword options
are validated into a ``TranscribeOptions`` (every field of it is a keyword of
``transcribe``/``submit``), the audio is read into bytes with the standard library only
(``reading.py``: paths, file objects, bytes), numpy samples are encoded as compact FLAC (needs the
``[local]`` extra's soundfile), and ``s3://`` URIs pass through as keys for the container
to fetch. Nothing here decodes audio or touches a backend.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from typing import IO, Any, TypedDict

import attrs
import numpy as np

from whisper_modal.errors import ConfigurationError
from whisper_modal.formats import FORMATS
from whisper_modal.names import check_names
from whisper_modal.options import TranscribeOptions
from whisper_modal.reading import read_audio_bytes
from whisper_modal.storage import S3Object, parse_s3_prefix, parse_s3_uri
from whisper_modal.webhooks import check_destination
from whisper_modal.wire import Request

__all__ = ["AudioLike", "CallOptions", "build_options", "prepare"]

#: anything ``transcribe`` accepts: encoded bytes, a path, a binary file object, samples
#: (with ``sample_rate``), an ``s3://`` URI or an ``S3Object``
AudioLike = bytes | bytearray | memoryview | str | os.PathLike[str] | IO[bytes] | np.ndarray | Any


class CallOptions(TypedDict, total=False):
    """Keyword arguments of ``transcribe``/``submit`` and their async twins.

    Any other ``TranscribeOptions`` field (``beam_size``, ``temperature``...) is accepted
    as a keyword too; these are the common ones.
    """

    model: str  # Whisper model (default: settings.model)
    language: str  # ISO code; omitted: detect
    task: str  # "transcribe" or "translate"
    word_timestamps: bool
    initial_prompt: str
    mode: str  # "sequential", "batched" or "auto"
    vad: bool  # decode only the speech Silero VAD finds (default True)
    precision: str  # "auto", "fp32", "fp16" (CUDA), "bf16" (CPU with native bf16), "int8" (CPU)
    cpu_int8: bool  # deprecated: precision="int8"
    diarize: bool  # speakers on words and segments (needs the [diarize] extra)
    num_speakers: int  # the number of speakers when known (with diarize=True)
    min_speakers: int  # bounds on the estimated number of speakers
    max_speakers: int
    options: TranscribeOptions  # a whole set of options; keywords override its fields
    sample_rate: int  # Hz, for numpy input
    output: str  # s3://bucket/prefix/ for result delivery
    formats: Sequence[str]  # extra formats stored with ``output``
    webhook_url: str  # gets a signed POST when the job ends


_REQUEST_KEYS = frozenset({"options", "sample_rate", "output", "formats", "webhook_url"})
_OPTION_KEYS = frozenset(a.name for a in attrs.fields(TranscribeOptions))


def build_options(
    default_model: str, options: TranscribeOptions | None = None, **fields: Any
) -> TranscribeOptions:
    """Merge keyword ``fields`` (None means "not given") over ``options`` over the model.

    Raises:
        ConfigurationError: an unknown field or an invalid value.
    """
    given = {k: v for k, v in fields.items() if v is not None}
    if given.get("cpu_int8"):
        from whisper_modal._warnings import warn

        warn("cpu_int8=True is deprecated: pass precision='int8'", DeprecationWarning)
    if options is None:
        given.setdefault("model", default_model)
        try:
            return TranscribeOptions(**given)
        except TypeError as exc:
            raise ConfigurationError(str(exc)) from exc
    return options.replace(**given) if given else options


def prepare(
    audio: AudioLike,
    *,
    default_model: str,
    max_bytes: int | None,
    webhook_allow: Sequence[str] = (),
    **kwargs: Any,
) -> Request:
    """Validate the keywords and read the input into a ``Request`` (no backend call).

    Args:
        audio: see ``AudioLike``.
        default_model: the model when neither keywords nor ``options`` name one.
        max_bytes: refuse larger encoded inputs (a path's size is checked before reading).
        webhook_allow: hosts or networks a ``webhook_url`` may name although they are not
            public (``settings.webhook_allow_hosts``).
        **kwargs: ``CallOptions`` and any ``TranscribeOptions`` field.

    Raises:
        ConfigurationError: an unknown keyword, a bad option, URI, prefix or format; a
            ``webhook_url`` that resolves to a loopback, private, link-local or metadata
            address not in ``webhook_allow`` (delivery would refuse it: better now).
        AudioError: unreadable, empty or too large input; bad samples.
    """
    check_names("argument", kwargs, _REQUEST_KEYS | _OPTION_KEYS)
    options = build_options(
        default_model,
        kwargs.get("options"),
        **{k: v for k, v in kwargs.items() if k in _OPTION_KEYS},
    )
    output = kwargs.get("output")
    formats = tuple(kwargs.get("formats") or ())
    if output is not None:
        parse_s3_prefix(output)  # malformed prefixes fail before any upload
    if formats:
        unknown = [f for f in formats if f not in FORMATS]
        if unknown:
            raise ConfigurationError(f"unknown format(s) {unknown}; use {', '.join(FORMATS)}")
    webhook_url = kwargs.get("webhook_url")
    if webhook_url is not None:
        check_destination(webhook_url, allow=webhook_allow)
    common: dict[str, Any] = {
        "options": options,
        "output": output,
        "webhook_url": webhook_url,
        "formats": formats,
        "client_job_id": "wm-" + uuid.uuid4().hex,
    }
    uri = _s3_uri(audio)
    if uri is not None:
        return Request(s3_uri=uri, **common)
    if isinstance(audio, np.ndarray):
        return Request(audio=_encode_samples(audio, kwargs.get("sample_rate")), **common)
    return Request(audio=read_audio_bytes(audio, max_bytes=max_bytes), **common)


def _encode_samples(samples: np.ndarray, sample_rate: int | None) -> bytes:
    if sample_rate is None:
        raise ConfigurationError("pass sample_rate= with a numpy array")
    from whisper_modal.engine.audio import encode_flac, from_array

    return encode_flac(from_array(samples, sample_rate))


def _s3_uri(audio: Any) -> str | None:
    if isinstance(audio, str) and audio.startswith("s3://"):
        return parse_s3_uri(audio).uri
    return audio.uri if isinstance(audio, S3Object) else None
