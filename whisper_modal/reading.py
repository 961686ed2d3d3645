"""Read any audio input into ``bytes``, with the standard library only.

The client side of audio: bytes, a path (its size checked before it is read) or a binary
file object become the encoded bytes, unchanged. Decoding is the engine's
(``engine/audio.py``), so a client-only install reads inputs without any decoder.
"""

from __future__ import annotations

import io
import os
from typing import Any

from whisper_modal.errors import AudioError, ConfigurationError

__all__ = ["read_audio_bytes"]


def read_audio_bytes(source: Any, *, max_bytes: int | None = None) -> bytes:
    """Read bytes, a path or a binary file object into ``bytes``.

    Args:
        source: ``bytes``/``bytearray``/``memoryview``, a path (``str`` or ``PathLike``),
            or a file object opened in binary mode.
        max_bytes: refuse larger inputs; a path's size is checked before it is read.

    Returns:
        The encoded audio, unchanged.

    Raises:
        AudioError: missing path ("not_found"); a directory, text-mode file or other type
            ("unsupported_type"); nothing to read ("empty"); over ``max_bytes``
            ("too_large"); the OS refused the read ("invalid").
        ConfigurationError: an ``s3://`` or ``http(s)://`` URI (the client reads S3).
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif isinstance(source, str | os.PathLike):
        data = _read_path(source, max_bytes)
    elif hasattr(source, "read"):
        data = _read_file_object(source, max_bytes)
    else:
        raise AudioError(
            f"cannot read audio from {type(source).__name__}; pass bytes, a path, a binary file, "
            "a numpy array (with sample_rate=) or an s3:// URI",
            reason="unsupported_type",
        )
    if not data:
        raise AudioError("the audio input is empty", reason="empty")
    if max_bytes is not None and len(data) > max_bytes:
        raise AudioError(f"audio is over the limit of {max_bytes} bytes", reason="too_large")
    return data


def _read_path(source: str | os.PathLike[str], max_bytes: int | None) -> bytes:
    path = os.fspath(source)
    if path.startswith("s3://"):
        raise ConfigurationError("s3:// inputs are read by the client: use wm.transcribe(uri)")
    if path.startswith(("http://", "https://")):
        raise ConfigurationError(f"URLs are not fetched: download {path} first, or use s3://")
    if not os.path.exists(path):
        raise AudioError(f"no such audio file: {path}", reason="not_found")
    if not os.path.isfile(path):
        raise AudioError(f"not a regular file: {path}", reason="unsupported_type")
    try:
        size = os.path.getsize(path)
        if max_bytes is not None and size > max_bytes:
            raise AudioError(
                f"{path} is {size} bytes, over the limit of {max_bytes}", reason="too_large"
            )
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError as exc:  # removed between the check and the read
        raise AudioError(f"no such audio file: {path}", reason="not_found") from exc
    except OSError as exc:  # permission denied, I/O error
        raise AudioError(f"cannot read {path}: {exc.strerror or exc}", reason="invalid") from exc


def _read_file_object(source: Any, max_bytes: int | None) -> bytes:
    if isinstance(source, io.TextIOBase):
        raise AudioError(
            "the file object is in text mode; open it with 'rb'", reason="unsupported_type"
        )
    try:
        # one byte over the cap is enough to know the input is too large
        chunk = source.read() if max_bytes is None else source.read(max_bytes + 1)
    except (OSError, ValueError) as exc:  # closed file, unreadable stream
        raise AudioError(f"cannot read the file object: {exc}", reason="invalid") from exc
    if not isinstance(chunk, bytes | bytearray | memoryview):
        raise AudioError(
            "the file object did not return bytes; open it with 'rb'", reason="unsupported_type"
        )
    return bytes(chunk)
