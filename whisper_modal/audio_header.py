"""Audio durations from WAV and FLAC headers, in pure Python (no numpy, no soundfile).

The client decides from the audio's length whether a request fans out over many GPUs, and
it often runs where the decoder is not installed: a client-only install (no ``[local]``)
or the Modal web function, whose image has no soundfile. WAV and FLAC state their length
exactly in a few header bytes, so those are read here; for other containers the length is
only known to whoever decodes them (``engine.audio.probe_duration`` where soundfile is
installed, else the orchestrator on Modal).
"""

from __future__ import annotations

import struct

__all__ = ["header_seconds", "known_seconds"]

# A streamed WAV (written to a pipe) declares 0 or 0xFFFFFFFF data bytes: no length.
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)
_MAX_CHUNKS = 64  # chunks looked at before "data" (LIST, fact, bext, ...); past that: unknown


def header_seconds(data: bytes | bytearray | memoryview) -> float | None:
    """The duration a WAV or FLAC header declares, without decoding.

    Args:
        data: encoded audio (only the first few kB of a WAV are read, 42 bytes of a FLAC).

    Returns:
        Seconds, or None for another format, a header that is cut short or inconsistent,
        or a stream that does not declare its length.
    """
    head = bytes(data[:12])
    if head[:4] == b"fLaC":
        return _flac_seconds(bytes(data[:42]))
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return _wav_seconds(data)
    return None


def known_seconds(data: bytes | bytearray | memoryview) -> float | None:
    """The duration from the header: WAV and FLAC here, other formats through soundfile.

    soundfile (the ``[local]`` extra) reads the headers of Ogg, AIFF and MP3 with a frame
    count; where it is not installed, or the header does not say, the answer is None.
    Never raises: a length is a hint for routing, and the decoder reports bad audio.
    """
    seconds = header_seconds(data)
    if seconds is not None:
        return seconds
    try:
        from whisper_modal.engine.audio import probe_duration

        return probe_duration(data)
    except Exception:  # soundfile missing (ConfigurationError) or an unreadable header
        return None


def _flac_seconds(head: bytes) -> float | None:
    # "fLaC", then the STREAMINFO block: a 4-byte block header (type 0), then 34 bytes
    # whose bits 80..99 are the sample rate and 108..143 the total samples per channel.
    if len(head) < 42 or head[4] & 0x7F != 0:
        return None
    info = int.from_bytes(head[8:42], "big")
    rate = (info >> (272 - 100)) & 0xFFFFF
    total = (info >> 128) & ((1 << 36) - 1)  # the last 128 bits are the MD5
    if rate == 0 or total == 0:  # 0 samples: "unknown" (an encoder that could not seek back)
        return None
    return total / rate


def _wav_seconds(data: bytes | bytearray | memoryview) -> float | None:
    byte_rate = 0
    data_size: int | None = None
    ds64_size: int | None = None
    at = 12
    for _ in range(_MAX_CHUNKS):
        if at + 8 > len(data):
            return None
        chunk_id = bytes(data[at : at + 4])
        (size,) = struct.unpack("<I", data[at + 4 : at + 8])
        body = at + 8
        if chunk_id == b"ds64" and body + 16 <= len(data):  # RF64: the real sizes
            (ds64_size,) = struct.unpack("<Q", data[body + 8 : body + 16])
        elif chunk_id == b"fmt " and body + 16 <= len(data):
            (byte_rate,) = struct.unpack("<I", data[body + 8 : body + 12])
        elif chunk_id == b"data":
            declared = ds64_size if size == 0xFFFFFFFF and ds64_size else size
            if declared not in _UNKNOWN_SIZES:  # a file cut short plays what it holds
                data_size = min(declared, len(data) - body)
            break
        at = body + size + (size & 1)  # chunks are padded to an even length
    if not data_size or byte_rate <= 0:
        return None
    return data_size / byte_rate
