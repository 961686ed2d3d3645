"""Audio input: every format and input kind decodes in memory; every bad input is typed."""

from __future__ import annotations

import io
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import soxr

from whisper_modal.audio import (
    SAMPLE_RATE,
    decode_audio,
    encode_flac,
    from_array,
    load_audio,
    probe_duration,
    read_audio_bytes,
)
from whisper_modal.errors import AudioError, ConfigurationError


def envelope(x: np.ndarray, hop: int = 160) -> np.ndarray:
    frames = len(x) // hop
    return np.sqrt((x[: frames * hop].reshape(frames, hop) ** 2).mean(axis=1))


def similar(decoded: np.ndarray, source: np.ndarray, max_lag: int = 30) -> float:
    """Best correlation of 10 ms RMS envelopes within +-0.3 s (codecs add a delay)."""
    a, b = envelope(decoded), envelope(source)
    best = -1.0
    for lag in range(-max_lag, max_lag + 1):
        x, y = (a[lag:], b) if lag >= 0 else (a, b[-lag:])
        n = min(len(x), len(y))
        best = max(best, float(np.corrcoef(x[:n], y[:n])[0, 1]))
    return best


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg", "opus", "m4a", "webm"])
def test_every_format_decodes_in_memory(
    fmt: str, speech_clip: tuple[np.ndarray, str], speech_formats: dict[str, bytes]
) -> None:
    source, _ = speech_clip
    decoded = decode_audio(speech_formats[fmt])
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    # lossy codecs add priming/padding the decoders keep (measured: mp3 76 ms, aac 100 ms)
    assert abs(len(decoded) - len(source)) / SAMPLE_RATE < 0.12, (len(decoded), len(source))
    assert similar(decoded, source) > 0.9


def test_every_input_kind(speech_formats: dict[str, bytes], tmp_path: Path) -> None:
    data = speech_formats["mp3"]
    path = tmp_path / "clip.mp3"
    path.write_bytes(data)
    reference = decode_audio(data)
    for source in (data, bytearray(data), memoryview(data), str(path), path, io.BytesIO(data)):
        assert np.array_equal(load_audio(source), reference), type(source)


def test_numpy_input_is_mixed_and_resampled(speech_clip: tuple[np.ndarray, str]) -> None:
    source, _ = speech_clip
    stereo = soxr.resample(np.stack([source, source * 0.5], axis=1), SAMPLE_RATE, 44100)
    out = from_array(stereo, 44100)
    assert abs(len(out) - len(source)) <= 2 and similar(out, source) > 0.99
    channels_first = from_array(stereo.T.copy(), 44100)
    assert np.allclose(channels_first, out)
    ints = from_array((source * 32767).astype(np.int16), SAMPLE_RATE)
    assert np.allclose(ints, source, atol=1e-3)
    with pytest.raises(ConfigurationError):
        load_audio(source)  # arrays need a rate
    with pytest.raises(ConfigurationError):
        from_array(source, 0)


def test_flac_round_trip(speech_clip: tuple[np.ndarray, str]) -> None:
    source, _ = speech_clip
    data = encode_flac(source)
    assert data[:4] == b"fLaC"
    assert np.allclose(decode_audio(data), source, atol=1e-4)
    assert probe_duration(data) == pytest.approx(len(source) / SAMPLE_RATE)


def _wav_header(frames_promised: int) -> bytes:
    data_bytes = frames_promised * 2
    return (
        b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
        + b"data" + struct.pack("<I", data_bytes)
    )  # fmt: skip


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda f: b"", "empty"),
        (lambda f: np.random.default_rng(0).bytes(50_000), "not_audio"),
        (lambda f: b"<html><body>404 Not Found</body></html>" * 20, "not_audio"),
        (lambda f: f["wav"][: len(f["wav"]) // 3], "truncated"),
        (lambda f: f["flac"][: len(f["flac"]) // 3], "truncated"),
        (lambda f: _wav_header(0), "zero_length"),
    ],
)
def test_bad_bytes_are_typed(make: object, reason: str, speech_formats: dict[str, bytes]) -> None:
    data = make(speech_formats)  # type: ignore[operator]
    with pytest.raises(AudioError) as info:
        decode_audio(data)
    assert info.value.reason == reason, str(info.value)


def test_truncated_mp3_never_leaks_a_foreign_error(speech_formats: dict[str, bytes]) -> None:
    data = speech_formats["mp3"]
    for cut in (10, 100, 417, len(data) // 2):
        try:
            out = decode_audio(data[:cut])
        except AudioError:
            continue
        assert out.dtype == np.float32 and np.isfinite(out).all()  # a decodable prefix is fine


def test_non_finite_and_limits(
    speech_clip: tuple[np.ndarray, str], speech_formats: dict[str, bytes]
) -> None:
    source, _ = speech_clip
    bad = source.copy()
    bad[100] = math.nan
    with pytest.raises(AudioError) as info:
        from_array(bad, SAMPLE_RATE)
    assert info.value.reason == "non_finite"
    bad[100] = math.inf
    with pytest.raises(AudioError, match="NaN or infinite"):
        from_array(bad, SAMPLE_RATE)
    with pytest.raises(AudioError) as info:
        decode_audio(speech_formats["wav"], max_seconds=5)
    assert info.value.reason == "too_long"
    with pytest.raises(AudioError) as info:
        decode_audio(
            speech_formats["m4a"], max_seconds=5
        )  # no header length: checked while decoding
    assert info.value.reason == "too_long"
    with pytest.raises(AudioError) as info:
        read_audio_bytes(speech_formats["wav"], max_bytes=1000)
    assert info.value.reason == "too_large"
    with pytest.raises(AudioError) as info:
        from_array(np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    assert info.value.reason == "zero_length"


def test_paths_and_objects(tmp_path: Path, speech_formats: dict[str, bytes]) -> None:
    with pytest.raises(AudioError) as info:
        read_audio_bytes(tmp_path / "missing.wav")
    assert info.value.reason == "not_found"
    with pytest.raises(AudioError) as info:
        read_audio_bytes(tmp_path)
    assert info.value.reason == "unsupported_type"
    big = tmp_path / "big.wav"
    big.write_bytes(speech_formats["wav"])
    with pytest.raises(AudioError) as info:
        read_audio_bytes(big, max_bytes=100)  # refused from the size, before reading
    assert info.value.reason == "too_large"
    with pytest.raises(AudioError) as info:
        read_audio_bytes(io.StringIO("text"))
    assert info.value.reason == "unsupported_type"
    with pytest.raises(AudioError) as info:
        read_audio_bytes(12345)
    assert info.value.reason == "unsupported_type"
    with pytest.raises(AudioError) as info:
        read_audio_bytes(io.BytesIO(b""))
    assert info.value.reason == "empty"
    with pytest.raises(ConfigurationError):
        read_audio_bytes("s3://bucket/key.wav")
