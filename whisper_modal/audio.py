"""Read any input to bytes; decode bytes to 16 kHz mono float32, in memory.

Why this path: openai-whisper's ``load_audio`` starts an ffmpeg subprocess per file and
needs a path on disk. Inside a container the audio arrives as bytes, so we decode from
``io.BytesIO`` instead: libsndfile (through ``soundfile``) reads WAV, FLAC, OGG/Vorbis,
Opus and MP3 directly, and ``soxr`` resamples. For containers libsndfile cannot read
(m4a/mp4/aac, webm, ...) we fall back to PyAV (FFmpeg's libraries in-process), again from a
``BytesIO``; it seeks, so mp4 files whose index sits at the end decode too. No temp files.
"""

from __future__ import annotations

import io
import math
import os
import struct
from typing import Any, BinaryIO

import numpy as np

from whisper_modal.errors import AudioError, ConfigurationError

__all__ = [
    "SAMPLE_RATE",
    "AudioInput",
    "decode_audio",
    "encode_flac",
    "from_array",
    "load_audio",
    "probe_duration",
    "read_audio_bytes",
]

SAMPLE_RATE = 16000  # Hz: what Whisper's log-mel front end expects
_EXTRA = "pip install 'whisper-modal[local]'"

AudioInput = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO | np.ndarray


def _need(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise ConfigurationError(f"decoding audio needs {module}: {_EXTRA}") from exc


def read_audio_bytes(source: Any, *, max_bytes: int | None = None) -> bytes:
    """Read bytes, a path or a binary file object into ``bytes``.

    Raises:
        AudioError: missing path ("not_found"), directory/text file/other type
            ("unsupported_type"), nothing to read ("empty"), over ``max_bytes`` ("too_large").
        ConfigurationError: an ``s3://`` URI (use the client, which handles S3).
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        if isinstance(path, str) and path.startswith("s3://"):
            raise ConfigurationError("s3:// inputs are read by the client: use wm.transcribe(uri)")
        if not os.path.exists(path):
            raise AudioError(f"no such audio file: {path}", reason="not_found")
        if not os.path.isfile(path):
            raise AudioError(f"not a regular file: {path}", reason="unsupported_type")
        size = os.path.getsize(path)
        if max_bytes is not None and size > max_bytes:
            raise AudioError(
                f"{path} is {size} bytes, over the limit of {max_bytes}", reason="too_large"
            )
        with open(path, "rb") as fh:
            data = fh.read()
    elif hasattr(source, "read"):
        if isinstance(source, io.TextIOBase):
            raise AudioError(
                "the file object is in text mode; open it with 'rb'", reason="unsupported_type"
            )
        chunk = source.read() if max_bytes is None else source.read(max_bytes + 1)
        if not isinstance(chunk, bytes | bytearray):
            raise AudioError("the file object did not return bytes", reason="unsupported_type")
        data = bytes(chunk)
    else:
        raise AudioError(
            f"cannot read audio from {type(source).__name__}; pass bytes, a path, a binary file, "
            "a numpy array or an s3:// URI",
            reason="unsupported_type",
        )
    if not data:
        raise AudioError("the audio input is empty", reason="empty")
    if max_bytes is not None and len(data) > max_bytes:
        raise AudioError(f"audio is over the limit of {max_bytes} bytes", reason="too_large")
    return data


def probe_duration(data: bytes | bytearray | memoryview) -> float | None:
    """Duration in seconds from the header when libsndfile can read it, else None."""
    sf = _need("soundfile")
    try:
        info = sf.info(io.BytesIO(data))
    except Exception:  # any decoder complaint means "unknown", not an error here
        return None
    if info.samplerate <= 0 or info.frames <= 0:
        return None
    return float(info.frames) / float(info.samplerate)


def _check_length(seconds: float, max_seconds: float | None) -> None:
    if max_seconds is not None and seconds > max_seconds:
        raise AudioError(
            f"audio is {seconds:.1f} s long, over the limit of {max_seconds:g} s", reason="too_long"
        )


def _declared_wav_shortfall(data: bytes | bytearray | memoryview) -> int:
    """Bytes a RIFF/WAVE file's ``data`` chunk promises beyond what is present (0 if none).

    libsndfile quietly clamps a truncated WAV to the bytes it finds, so truncation is
    detected here from the header. Streamed WAVs (size 0 or 0xFFFFFFFF) promise nothing.
    """
    head = bytes(data[:12])
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return 0
    offset = 12
    while offset + 8 <= len(data):
        chunk_id = bytes(data[offset : offset + 4])
        (size,) = struct.unpack("<I", bytes(data[offset + 4 : offset + 8]))
        if chunk_id == b"data":
            if size in (0, 0xFFFFFFFF):
                return 0
            return max(0, int(size) - (len(data) - offset - 8))
        offset += 8 + size + (size & 1)
    return 0


def _decode_soundfile(
    data: bytes | bytearray | memoryview, max_seconds: float | None
) -> tuple[np.ndarray, int] | None:
    sf = _need("soundfile")
    shortfall = _declared_wav_shortfall(data)
    if shortfall:
        raise AudioError(f"WAV audio is truncated: {shortfall} bytes missing", reason="truncated")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate = int(f.samplerate)
            # Streamed files (e.g. FLAC written to a pipe) report no or absurd frame counts:
            # trust the header only when it is plausible for the byte count.
            plausible = 0 < f.frames < len(data) * 64
            if plausible and rate > 0:
                _check_length(f.frames / rate, max_seconds)
            blocks: list[np.ndarray] = []
            if plausible:
                blocks.append(f.read(dtype="float32", always_2d=True))  # one allocation
            else:  # unknown length: read in blocks, checking the limit as it grows
                total = 0
                for block in f.blocks(blocksize=1 << 18, dtype="float32", always_2d=True):
                    blocks.append(block)
                    total += block.shape[0]
                    if rate > 0:
                        _check_length(total / rate, max_seconds)
            expected = f.frames if plausible else 0
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        text = str(exc).lower()
        if "unknown format" in text or "not recognised" in text or "format not" in text:
            return None
        if _looks_foreign(data):
            return None
        # libsndfile knows the container but cannot finish it: truncated or corrupt, or a
        # stream it cannot seek in (FLAC written to a pipe). PyAV decides which.
        try:
            return _decode_av(data, max_seconds)
        except AudioError as av_error:
            if av_error.reason == "too_long":
                raise
        return _raise_truncated(exc)
    if not blocks:
        raise AudioError("the audio has no samples", reason="zero_length")
    samples = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    if expected > 0 and samples.shape[0] < expected * 0.99:
        raise AudioError(
            f"audio is truncated: header promises {expected} frames, found {samples.shape[0]}",
            reason="truncated",
        )
    return samples, rate


def _looks_foreign(data: bytes | bytearray | memoryview) -> bool:
    # Containers libsndfile does not handle: let PyAV try them.
    head = bytes(data[:16])
    return (
        head[4:8] == b"ftyp"
        or head[:4] == b"\x1a\x45\xdf\xa3"
        or head[:2] in (b"\xff\xf1", b"\xff\xf9")
    )


def _raise_truncated(exc: BaseException) -> tuple[np.ndarray, int]:
    raise AudioError(f"audio is truncated or corrupt: {exc}", reason="truncated") from exc


def _decode_av(
    data: bytes | bytearray | memoryview, max_seconds: float | None
) -> tuple[np.ndarray, int]:
    try:
        import av
    except ImportError as exc:
        raise AudioError(f"this format needs PyAV to decode: {_EXTRA}", reason="not_audio") from exc
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise AudioError("the input has no audio stream", reason="not_audio")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            chunks: list[np.ndarray] = []
            total = 0
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    array = out.to_ndarray().reshape(-1)
                    chunks.append(array)
                    total += array.shape[0]
                    _check_length(total / SAMPLE_RATE, max_seconds)
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except AudioError:
        raise
    except Exception as exc:  # av.error.* (InvalidDataError, EOFError, ...)
        raise AudioError(f"the input is not decodable audio: {exc}", reason="not_audio") from exc
    if not chunks:
        raise AudioError("the audio has no samples", reason="zero_length")
    return np.concatenate(chunks).astype(np.float32, copy=False)[:, None], SAMPLE_RATE


def decode_audio(
    data: bytes | bytearray | memoryview, *, max_seconds: float | None = None
) -> np.ndarray:
    """Decode encoded audio bytes to 16 kHz mono float32 without touching the disk.

    Args:
        data: the encoded file's bytes (WAV, FLAC, OGG, Opus, MP3, M4A, WebM, ...).
        max_seconds: refuse longer audio (checked from the header before decoding when
            the format has one).

    Raises:
        AudioError: reason "empty", "not_audio", "truncated", "zero_length", "non_finite"
            or "too_long".
    """
    if not data:
        raise AudioError("the audio input is empty", reason="empty")
    decoded = _decode_soundfile(data, max_seconds)
    if decoded is None:
        decoded = _decode_av(data, max_seconds)
    samples, rate = decoded
    return _finish(samples, rate, max_seconds)


def from_array(
    array: np.ndarray, sample_rate: int, *, max_seconds: float | None = None
) -> np.ndarray:
    """Validate samples, mix to mono and resample to 16 kHz float32.

    Accepts shape (n,), (n, channels) or (channels, n) with few channels.

    Raises:
        AudioError: empty, non-finite, or not a 1-D/2-D numeric array.
        ConfigurationError: a non-positive sample rate.
    """
    if not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
        raise ConfigurationError(f"sample_rate must be a positive integer, not {sample_rate!r}")
    arr = np.asarray(array)
    if arr.dtype.kind not in "fiu" or arr.ndim not in (1, 2):
        raise AudioError("a sample array must be 1-D or 2-D numbers", reason="unsupported_type")
    if arr.ndim == 2 and arr.shape[0] <= 8 and arr.shape[1] > arr.shape[0]:
        arr = arr.T  # (channels, n) -> (n, channels)
    if arr.dtype.kind in "iu":
        arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    samples = arr.astype(np.float32, copy=False)
    return _finish(
        samples if samples.ndim == 2 else samples[:, None], int(sample_rate), max_seconds
    )


def _finish(samples: np.ndarray, rate: int, max_seconds: float | None) -> np.ndarray:
    if samples.shape[0] == 0:
        raise AudioError("the audio has no samples", reason="zero_length")
    if not np.isfinite(samples).all():
        raise AudioError("the audio contains NaN or infinite samples", reason="non_finite")
    _check_length(samples.shape[0] / rate, max_seconds)
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if rate != SAMPLE_RATE:
        soxr = _need("soxr")
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def load_audio(
    source: Any,
    *,
    sample_rate: int | None = None,
    max_seconds: float | None = None,
    max_bytes: int | None = None,
) -> np.ndarray:
    """Any supported input -> 16 kHz mono float32 (arrays need ``sample_rate``)."""
    if isinstance(source, np.ndarray):
        if sample_rate is None:
            raise ConfigurationError("a numpy array needs sample_rate=")
        return from_array(source, sample_rate, max_seconds=max_seconds)
    return decode_audio(read_audio_bytes(source, max_bytes=max_bytes), max_seconds=max_seconds)


def encode_flac(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Encode samples as 16-bit FLAC in memory (compact transport for array inputs)."""
    sf = _need("soundfile")
    buffer = io.BytesIO()
    clipped = np.clip(samples, -1.0, 1.0)
    sf.write(buffer, clipped, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def duration_seconds(samples: np.ndarray) -> float:
    """Seconds of 16 kHz samples."""
    return float(samples.shape[0]) / SAMPLE_RATE if math.isfinite(samples.shape[0]) else 0.0
