"""Decode encoded audio bytes (or sample arrays) to 16 kHz mono float32, in memory.

The engine side of audio; reading a caller's input into bytes is the client's job
(``whisper_modal.reading``), so the client core needs none of the decoders.


Why this path: openai-whisper's ``load_audio`` starts an ffmpeg subprocess per file and
needs the ``ffmpeg`` binary and a path on disk. Inside a container the audio arrives as
bytes, so we decode from ``io.BytesIO`` instead, never through a temp file:

* libsndfile (through ``soundfile``) reads WAV, FLAC, OGG/Vorbis and Opus directly (and
  MP3 when PyAV is missing). Channels are averaged to mono and ``soxr`` resamples ("HQ")
  when the rate differs.
* MP3 goes to PyAV when it is installed: libsndfile's libmpg123 prints its glitch notes
  (``part2_3_length ... too large``) to the process's stderr, FFmpeg's decoder skips the
  same frames quietly (see ``_decode_av(mp3=True)``).
* Containers libsndfile cannot read (m4a/mp4/aac, webm/mka, ...) go to PyAV, FFmpeg's
  libraries in-process. PyAV reads the ``BytesIO`` with seeking, so an mp4 whose index
  (``moov``) sits at the end of the file decodes too, which a pipe into ffmpeg cannot do.
  Its frames are mixed to mono here and resampled by a streaming ``soxr`` resampler, so
  both paths sound the same and a long file never holds its native-rate samples in memory.

Header facts are used before decoding: the duration limit is checked from the frame count
when the header is trustworthy, and a WAV whose ``data`` chunk promises more bytes than
present is refused as truncated (libsndfile would silently clamp it). An MP3's frame count
is trusted only when it carries a Xing/Info/VBRI tag: without one libsndfile estimates
from the first frame's bitrate, which is wrong for VBR files (a quiet start makes the
estimate several times too long). Truncation is detected where the format makes it
detectable (a header count, or a decoder error mid-stream); a raw MP3 cut between frames
is indistinguishable from a shorter file.

soundfile, soxr and PyAV are imported lazily: a missing one raises an error naming
``pip install 'whisper-modal[local]'``. Why not librosa: ``librosa.load`` goes through the
same soundfile/soxr (with audioread, a subprocess, as its fallback), so calling them
directly saves its import (about a second, numba) and lets us stream PyAV's frames.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import struct
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np

from whisper_modal.errors import AudioError, ConfigurationError
from whisper_modal.reading import read_audio_bytes

from .constants import SAMPLE_RATE

__all__ = [
    "AudioInput",
    "can_decode",
    "decode_audio",
    "encode_flac",
    "from_array",
    "load_audio",
    "probe_duration",
]

BLOCK_FRAMES = 1 << 16  # frames decoded, mixed and resampled at a time (fits in L2 cache)
MAX_ARRAY_CHANNELS = 8  # a 2-D array with more on both axes is not (n, channels) audio
# Float samples live in [-1, 1]; slight overs (clipped mixes) are clipped later, but a peak
# past this is a scaling mistake (int16 PCM stored as float reaches ~32767).
MAX_FLOAT_PEAK = 2.0
# A header count this far ahead of the decoded frames means the file was cut short
# (leaves room for an MP3 decoder's rounding of its gapless padding).
TRUNCATION_SLACK_FRAMES = 4096
UNKNOWN_FRAMES = 1 << 62  # libsndfile reports 2**63-1 frames for a stream of unknown length
_EXTRA = "pip install 'whisper-modal[local]'"

#: everything ``load_audio`` accepts (``s3://`` URIs are handled by the client, not here)
AudioInput = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO | np.ndarray

Buffer = bytes | bytearray | memoryview


def can_decode() -> bool:
    """True when this process has the decoder (soundfile and soxr, the ``[local]`` extra).

    The Modal web function's image and client-only installs do not: there a long blocking
    request goes to Modal as one call instead of being split here.
    """
    return all(importlib.util.find_spec(name) is not None for name in ("soundfile", "soxr"))


def _need(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise ConfigurationError(f"decoding audio needs {module}: {_EXTRA}") from exc


# ------------------------------------------------------------------------------ headers


def probe_duration(data: Buffer) -> float | None:
    """Duration in seconds read from the header, without decoding.

    Args:
        data: encoded audio.

    Returns:
        Seconds, or None when the header does not say reliably (a format libsndfile
        cannot read, a stream without a length, an MP3 without a Xing/Info/VBRI tag).

    Raises:
        ConfigurationError: soundfile is not installed.
    """
    sf = _need("soundfile")
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None  # unknown to libsndfile: "no header duration", not an error
    if not _trust_frames(data, info.format, info.frames, info.samplerate):
        return None
    return float(info.frames) / float(info.samplerate)


def _trust_frames(data: Buffer, fmt: str, frames: int, rate: int) -> bool:
    """Is the header's frame count a real count (not unknown, not an MP3 estimate)?"""
    # Streamed files (FLAC written to a pipe) report 0 or 2**63-1 frames.
    known = rate > 0 and 0 < frames < UNKNOWN_FRAMES
    return known and (fmt not in ("MP3", "MPEG") or _mp3_has_frame_count(data))


def _mp3_has_frame_count(data: Buffer) -> bool:
    """True when the first MPEG frame carries a Xing/Info (with frame count) or VBRI tag."""
    start = 0
    head = bytes(data[:10])
    if head[:3] == b"ID3" and len(head) == 10:  # skip an ID3v2 tag (syncsafe size)
        size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
        start = 10 + size + (10 if head[5] & 0x10 else 0)
    first = bytes(data[start : start + 200])  # the tag sits in the first frame's payload
    for tag in (b"Xing", b"Info"):
        at = first.find(tag)
        if at >= 0 and len(first) >= at + 8:
            (flags,) = struct.unpack(">I", first[at + 4 : at + 8])
            return bool(flags & 1)  # bit 0: the frame-count field is present
    return b"VBRI" in first


def _declared_wav_shortfall(data: Buffer) -> int:
    """Bytes a RIFF/WAVE ``data`` chunk promises beyond what is present (0 if none).

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


def _container(data: Buffer) -> str | None:
    """The container named by the file's magic bytes, if it is one we know."""
    head = bytes(data[:12])
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[4:8] == b"ftyp":
        return "mp4"
    magics = {
        b"fLaC": "flac",
        b"OggS": "ogg",
        b"\x1a\x45\xdf\xa3": "matroska",  # EBML: webm / mka
        b"ID3": "mp3",
        b"\xff\xfb": "mp3",
        b"\xff\xf3": "mp3",
        b"\xff\xf1": "aac",  # ADTS
        b"\xff\xf9": "aac",
    }
    return next((name for magic, name in magics.items() if head.startswith(magic)), None)


def _check_length(seconds: float, max_seconds: float | None) -> None:
    if max_seconds is not None and seconds > max_seconds:
        raise AudioError(
            f"audio is {seconds:.1f} s long, over the limit of {max_seconds:g} s", reason="too_long"
        )


def _said(exc: BaseException) -> str:
    """A decoder's message without PyAV's file name (``: '<none>'`` for in-memory input)."""
    text = str(exc)
    return re.sub(r":\s*'(<none>|[a-z_]+\(\))'$", "", text) or type(exc).__name__


def _broken(data: Buffer, exc: BaseException) -> AudioError:
    """A decoder failure: truncated/corrupt when the container is known, else not audio."""
    kind = _container(data)
    if kind is not None:
        return AudioError(
            f"the {kind} audio is truncated or corrupt: {_said(exc)}", reason="truncated"
        )
    return AudioError(f"the input is not decodable audio: {_said(exc)}", reason="not_audio")


# ----------------------------------------------------------------------------- decoding


def decode_audio(
    data: Buffer, *, max_seconds: float | None = None, channels_apart: bool = False
) -> np.ndarray:
    """Decode encoded audio bytes to 16 kHz mono float32 without touching the disk.

    Args:
        data: the encoded file's bytes (WAV, FLAC, OGG, Opus, MP3, M4A, WebM, ...).
        max_seconds: refuse longer audio; checked from the header before decoding when
            the header is trustworthy, else while decoding.
        channels_apart: keep the channels apart (``multichannel``) instead of mixing.

    Returns:
        A 1-D, C-contiguous float32 array of samples at ``SAMPLE_RATE``; with
        ``channels_apart``, a 2-D (channels, n) array.

    Raises:
        AudioError: reason "empty", "not_audio", "truncated", "zero_length", "non_finite",
            "too_long", or "unsupported_type" (a container that needs PyAV, not installed).
        ConfigurationError: soundfile or soxr is not installed.
    """
    if not data:
        raise AudioError("the audio input is empty", reason="empty")
    shortfall = _declared_wav_shortfall(data)
    if shortfall:
        raise AudioError(
            f"the WAV audio is truncated: {shortfall} bytes missing", reason="truncated"
        )
    if _container(data) == "mp3" and importlib.util.find_spec("av") is not None:
        return _decode_av(data, max_seconds, channels_apart, mp3=True)  # quiet, see there
    decoded = _decode_soundfile(data, max_seconds, channels_apart)
    return _decode_av(data, max_seconds, channels_apart) if decoded is None else decoded


class _Sink:
    """Mix blocks of (frames, channels) to mono and resample them to 16 kHz as they come.

    Working block by block keeps the big arrays at 16 kHz mono: an hour of 44.1 kHz stereo
    is 1.3 GB as float32 but 230 MB once mixed and resampled. It is also faster: a
    5-minute 44.1 kHz stereo WAV decoded in 0.14 s this way and 0.42 s as whole arrays
    (``mean(axis=1)`` over a huge (n, 2) array is slow). The length limit is enforced as
    the audio grows. ``apart=True`` keeps the channels apart instead (``multichannel``):
    each is resampled on its own and ``finish`` returns (channels, n).
    """

    def __init__(self, rate: int, max_seconds: float | None, apart: bool = False) -> None:
        self.rate = rate
        self.max_seconds = max_seconds
        self.apart = apart
        self.frames = 0  # input frames seen
        self.chunks: list[list[np.ndarray]] = []  # per output channel
        self.streams: list[Any] = []

    def _columns(self, block: np.ndarray) -> list[np.ndarray]:
        if self.apart:
            return [block[:, c].astype(np.float32, copy=True) for c in range(block.shape[1])]
        mono = block[:, 0].astype(np.float32, copy=True)  # a copy: callers reuse buffers
        for channel in range(1, block.shape[1]):
            mono += block[:, channel]
        if block.shape[1] > 1:
            mono *= np.float32(1.0 / block.shape[1])
        return [mono]

    def add(self, block: np.ndarray) -> None:
        """Take float32 samples shaped (frames, channels); the block may be reused after."""
        if block.shape[0] == 0:
            return
        if not np.isfinite(block).all():
            raise AudioError("the audio contains NaN or infinite samples", reason="non_finite")
        self.frames += block.shape[0]
        _check_length(self.frames / self.rate, self.max_seconds)
        columns = self._columns(block)
        if not self.chunks:
            self.chunks = [[] for _ in columns]
            if self.rate != SAMPLE_RATE:
                soxr = _need("soxr")
                self.streams = [
                    soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
                    for _ in columns
                ]
        for i, column in enumerate(columns[: len(self.chunks)]):
            self.chunks[i].append(
                self.streams[i].resample_chunk(column) if self.streams else column
            )

    def finish(self, keep: int | None = None) -> np.ndarray:
        """The 16 kHz result, mono (or (channels, n) when apart), cut to ``keep`` samples."""
        if self.frames == 0:
            raise AudioError("the audio has no samples", reason="zero_length")
        outs = []
        for i, chunks in enumerate(self.chunks):
            if self.streams:
                chunks.append(self.streams[i].resample_chunk(np.zeros(0, np.float32), last=True))
            out = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
            outs.append(out[:keep] if keep is not None else out)
        self.chunks = []
        if not self.apart:
            return np.ascontiguousarray(outs[0], dtype=np.float32)
        length = min(o.shape[0] for o in outs)
        return np.ascontiguousarray(np.stack([o[:length] for o in outs]), dtype=np.float32)


def _decode_soundfile(
    data: Buffer, max_seconds: float | None, apart: bool = False
) -> np.ndarray | None:
    """Decode with libsndfile; None when it cannot open the input (PyAV's turn)."""
    sf = _need("soundfile")
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None
    with f:
        rate, frames = int(f.samplerate), int(f.frames)
        trusted = _trust_frames(data, f.format, frames, rate)
        try:
            if trusted:
                _check_length(frames / rate, max_seconds)  # before decoding anything
            sink = _Sink(rate, max_seconds, apart)
            buffer = np.empty((BLOCK_FRAMES, max(1, int(f.channels))), np.float32)
            # Not SoundFile.blocks(): it counts down from the header's frame estimate and,
            # for an untagged VBR MP3, yields padding far past the real end (seen: a 28 s
            # file read as 120 s). Read until libsndfile returns a short block.
            while True:
                block = f.read(out=buffer)
                sink.add(block)
                if block.shape[0] < BLOCK_FRAMES:
                    break
        except (AudioError, ConfigurationError):  # ours (both are also ValueErrors)
            raise
        except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
            if trusted:
                raise _broken(data, exc) from exc
            # libsndfile knew the container but could not finish it: truncated, corrupt, or
            # a stream it cannot handle (FLAC written to a pipe). PyAV decides which.
            return _decode_av_or_raise(data, max_seconds, exc, apart)
    if trusted and sink.frames + TRUNCATION_SLACK_FRAMES < frames:
        raise AudioError(
            f"audio is truncated: the header promises {frames} frames, found {sink.frames}",
            reason="truncated",
        )
    return sink.finish()


def _decode_av_or_raise(
    data: Buffer, max_seconds: float | None, cause: BaseException, apart: bool = False
) -> np.ndarray:
    try:
        return _decode_av(data, max_seconds, apart)
    except AudioError as av_error:
        if av_error.reason in ("too_long", "unsupported_type", "non_finite"):
            raise
        raise _broken(data, cause) from cause


#: an MP3 with more undecodable frames than this is corrupt, not glitched
MAX_BAD_MP3_FRAMES = 8


def _frames(container: Any, stream: Any, *, tolerant: bool) -> Iterator[Any]:
    """The stream's decoded frames; ``tolerant`` skips up to ``MAX_BAD_MP3_FRAMES``
    packets that do not decode (as the ``ffmpeg`` tool does) instead of failing."""
    import av

    if not tolerant:
        yield from container.decode(stream)
        return
    bad = 0
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.InvalidDataError:
            bad += 1
            if bad > MAX_BAD_MP3_FRAMES:
                raise
            continue
        yield from frames


def _decode_av(
    data: Buffer, max_seconds: float | None, apart: bool = False, *, mp3: bool = False
) -> np.ndarray:
    """Decode with PyAV from memory; returns 16 kHz mono float32 (see the module doc).

    ``mp3=True`` is the MP3 path: libsndfile would decode MP3 with libmpg123, which prints
    ``part2_3_length ... too large`` and ``Trying to resync...`` to the process's stderr
    for glitches it then skips; FFmpeg skips them too (``_frames(tolerant=True)``) and
    PyAV keeps its log quiet. A file whose Xing/Info/VBRI tag states a frame count must
    deliver it (else "truncated"), as on the libsndfile path.
    """
    try:
        import av
    except ImportError as exc:
        raise AudioError(
            f"this container needs PyAV to decode: {_EXTRA}", reason="unsupported_type"
        ) from exc
    sink: _Sink | None = None
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise AudioError("the input has no audio stream", reason="not_audio")
            stream = container.streams.audio[0]
            declared = _declared_samples(stream)
            if mp3:  # without a frame-count tag FFmpeg's duration is a bitrate guess
                declared = declared if _mp3_has_frame_count(data) else None
                if declared is not None:
                    _check_length(declared / SAMPLE_RATE, max_seconds)  # before decoding
            # float planar at the native layout and rate: we mix and resample ourselves,
            # exactly as on the libsndfile path
            planar = av.AudioResampler(format="fltp")
            pending: list[np.ndarray] = []  # codec frames are small (1024 samples for AAC):
            queued = 0  # hand the sink blocks of BLOCK_FRAMES, not thousands of calls
            for frame in _frames(container, stream, tolerant=mp3):
                for out in planar.resample(frame):
                    if sink is None:
                        sink = _Sink(int(out.sample_rate), max_seconds, apart)
                    pending.append(out.to_ndarray())  # (channels, n)
                    queued += pending[-1].shape[1]
                    if queued >= BLOCK_FRAMES:
                        sink.add(np.concatenate(pending, axis=1).T)
                        pending, queued = [], 0
            if sink is not None and pending:
                sink.add(np.concatenate(pending, axis=1).T)
    except (AudioError, ConfigurationError):  # ours (both are also ValueErrors)
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError) as exc:
        if sink is not None:  # decoded a while, then the stream broke
            raise AudioError(
                f"audio is truncated or corrupt: {_said(exc)}", reason="truncated"
            ) from exc
        raise _broken(data, exc) from exc
    if sink is None:
        if mp3:
            raise _broken(data, ValueError("no MPEG audio frame decoded"))
        raise AudioError("the audio has no samples", reason="zero_length")
    samples = sink.finish()
    if mp3 and declared is not None and samples.shape[-1] + SAMPLE_RATE // 10 < declared:
        raise AudioError(
            f"the MP3 audio is truncated: its header promises {declared / SAMPLE_RATE:.2f} s, "
            f"found {samples.shape[-1] / SAMPLE_RATE:.2f} s",
            reason="truncated",
        )
    # AAC decoders emit the last frame's padding (up to 64 ms at 16 kHz); the container's
    # duration (its edit list) says where the audio really ends.
    if declared is not None and 0 < samples.shape[-1] - declared <= SAMPLE_RATE // 2:
        samples = np.ascontiguousarray(samples[..., :declared])
    return samples


def _declared_samples(stream: Any) -> int | None:
    """The stream's duration from the container, in 16 kHz samples, if it has one."""
    if not stream.duration or stream.time_base is None:
        return None
    return round(float(stream.duration * stream.time_base) * SAMPLE_RATE)


# ------------------------------------------------------------------------------- arrays


def from_array(
    array: np.ndarray,
    sample_rate: int,
    *,
    max_seconds: float | None = None,
    channels_apart: bool = False,
) -> np.ndarray:
    """Validate samples, mix to mono and resample to 16 kHz float32.

    Args:
        array: shape (n,), (n, channels) or (channels, n) with at most 8 channels; float
            in [-1, 1] or integer PCM (scaled by its type's range).
        sample_rate: the array's rate in Hz.
        max_seconds: refuse longer audio.
        channels_apart: keep the channels apart (``multichannel``) instead of mixing.

    Returns:
        A new 1-D, C-contiguous float32 array of samples at ``SAMPLE_RATE``; with
        ``channels_apart``, 2-D (channels, n).

    Raises:
        AudioError: not a 1-D/2-D real numeric array ("unsupported_type"), no samples
            ("zero_length"), NaN/inf ("non_finite"), float peaks over 2.0
            ("out_of_range"), too long ("too_long").
        ConfigurationError: a sample rate that is not a positive integer.
    """
    if (
        isinstance(sample_rate, bool)
        or not isinstance(sample_rate, int | np.integer)
        or sample_rate <= 0
    ):
        raise ConfigurationError(f"sample_rate must be a positive integer, not {sample_rate!r}")
    arr = np.asarray(array)
    if arr.dtype.kind not in "fiu" or arr.ndim not in (1, 2):
        raise AudioError(
            f"a sample array must be 1-D or 2-D real numbers, not {arr.dtype} {arr.shape}",
            reason="unsupported_type",
        )
    if arr.dtype.kind == "f" and arr.size:
        peak = float(np.max(np.abs(arr)))  # NaN/inf are refused below as "non_finite"
        if np.isfinite(peak) and peak > MAX_FLOAT_PEAK:
            raise AudioError(
                f"float samples must lie in [-1, 1], these reach {peak:g}: scale them "
                "(int16 PCM stored as float: divide by 32768)",
                reason="out_of_range",
            )
    if arr.ndim == 1:
        arr = arr[:, None]
    elif min(arr.shape) > MAX_ARRAY_CHANNELS:
        raise AudioError(
            f"cannot tell samples from channels in shape {arr.shape}; pass (n, channels)",
            reason="unsupported_type",
        )
    elif arr.shape[0] <= MAX_ARRAY_CHANNELS and arr.shape[1] > arr.shape[0]:
        arr = arr.T  # (channels, n) -> (n, channels)
    _check_length(arr.shape[0] / int(sample_rate), max_seconds)  # before any work
    # integer PCM -> [-1, 1): signed by 2**(bits-1); unsigned is centred on half its range
    offset, scale = 0.0, 1.0
    if arr.dtype.kind == "i":
        scale = 1.0 / float(-np.iinfo(arr.dtype).min)
    elif arr.dtype.kind == "u":
        offset = float(np.iinfo(arr.dtype).max // 2 + 1)
        scale = 1.0 / offset
    sink = _Sink(int(sample_rate), max_seconds, channels_apart)
    for start in range(0, arr.shape[0], BLOCK_FRAMES):
        block = arr[start : start + BLOCK_FRAMES].astype(np.float32)
        if arr.dtype.kind in "iu":
            block = (block - np.float32(offset)) * np.float32(scale)
        sink.add(block)
    return sink.finish()


# -------------------------------------------------------------------------- entry points


def load_audio(
    source: AudioInput,
    *,
    sample_rate: int | None = None,
    max_seconds: float | None = None,
    max_bytes: int | None = None,
    channels_apart: bool = False,
) -> np.ndarray:
    """Any supported input -> 16 kHz mono float32 (the engine's one way in).

    Args:
        source: encoded bytes, a path, a binary file object, or a numpy array of samples.
        sample_rate: the array's rate in Hz (required for arrays, ignored otherwise).
        max_seconds: refuse longer audio.
        max_bytes: refuse larger encoded inputs (a path's size is checked before reading).
        channels_apart: keep the channels apart (``multichannel``) instead of mixing.

    Returns:
        A 1-D float32 array at ``SAMPLE_RATE``; with ``channels_apart``, 2-D (channels, n).

    Raises:
        AudioError: see ``read_audio_bytes``, ``decode_audio`` and ``from_array``.
        ConfigurationError: an array without ``sample_rate``, an ``s3://`` URI, or a
            missing decoder dependency.
    """
    if isinstance(source, np.ndarray):
        if sample_rate is None:
            raise ConfigurationError("a numpy array needs sample_rate= (its rate in Hz)")
        return from_array(
            source, sample_rate, max_seconds=max_seconds, channels_apart=channels_apart
        )
    data = read_audio_bytes(source, max_bytes=max_bytes)
    return decode_audio(data, max_seconds=max_seconds, channels_apart=channels_apart)


def encode_flac(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Encode mono or (n, channels) float samples as 16-bit FLAC, in memory.

    Used to send array inputs (and fan-out chunks) compactly: speech FLAC is about a
    third of the 16-bit PCM size, and 16 bits keep ~96 dB of range, far below what Whisper
    can hear.

    Args:
        samples: float samples in [-1, 1] (values outside are clipped).
        sample_rate: their rate in Hz.

    Returns:
        The FLAC file's bytes.

    Raises:
        AudioError: no samples ("zero_length") or NaN/inf ("non_finite").
        ConfigurationError: soundfile is missing, or libsndfile rejects the rate.
    """
    sf = _need("soundfile")
    arr = np.asarray(samples, dtype=np.float32)
    if arr.size == 0:
        raise AudioError("the audio has no samples", reason="zero_length")
    if not np.isfinite(arr).all():
        raise AudioError("the audio contains NaN or infinite samples", reason="non_finite")
    buffer = io.BytesIO()
    try:
        sf.write(buffer, np.clip(arr, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise ConfigurationError(f"cannot encode FLAC at {sample_rate} Hz: {exc}") from exc
    return buffer.getvalue()
