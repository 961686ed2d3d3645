"""Audio input: every format and input kind decodes in memory; every bad input is typed.

The autouse ``no_leaked_temp_files`` guard (tests/conftest.py) checks that none of this
writes a temp file.
"""

from __future__ import annotations

import io
import json
import math
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soxr

from tests import speech
from tests.conftest import SpeechClip
from whisper_modal.engine.audio import (
    decode_audio,
    encode_flac,
    from_array,
    load_audio,
    probe_duration,
)
from whisper_modal.engine.constants import SAMPLE_RATE
from whisper_modal.errors import AudioError, ConfigurationError
from whisper_modal.reading import read_audio_bytes

MAX_LENGTH_ERROR = 0.050  # seconds: decoded vs source duration, for files written normally


def envelope(x: np.ndarray, hop: int = 160) -> np.ndarray:
    """RMS over 10 ms frames."""
    frames = len(x) // hop
    rms: np.ndarray = np.sqrt((x[: frames * hop].reshape(frames, hop) ** 2).mean(axis=1))
    return rms


def similarity(decoded: np.ndarray, source: np.ndarray, max_lag: int = 30) -> float:
    """Best correlation of 10 ms RMS envelopes within +-0.3 s (codecs may add a delay)."""
    a, b = envelope(decoded), envelope(source)
    best = -1.0
    for lag in range(-max_lag, max_lag + 1):
        x, y = (a[lag:], b) if lag >= 0 else (a, b[-lag:])
        n = min(len(x), len(y))
        best = max(best, float(np.corrcoef(x[:n], y[:n])[0, 1]))
    return best


def reason_of(call: Callable[[], object]) -> str:
    with pytest.raises(AudioError) as info:
        call()
    return info.value.reason


# ---------------------------------------------------------------------- good inputs


@pytest.mark.parametrize("fmt", speech.FORMATS)
def test_every_format_decodes_to_the_source(
    fmt: str, speech_clip: SpeechClip, speech_formats: dict[str, bytes]
) -> None:
    decoded = decode_audio(speech_formats[fmt])
    assert decoded.dtype == np.float32 and decoded.ndim == 1 and decoded.flags.c_contiguous
    error = abs(len(decoded) - len(speech_clip.samples)) / SAMPLE_RATE
    assert error < MAX_LENGTH_ERROR, f"{fmt}: length off by {error * 1000:.1f} ms"
    assert similarity(decoded, speech_clip.samples) > 0.9


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "mp3-vbr", "m4a", "webm"])
def test_streamed_files_without_length_headers_decode(fmt: str, speech_clip: SpeechClip) -> None:
    # Written to a pipe: no WAV/FLAC length, untagged MP3 (libsndfile then guesses the
    # length from the first frame, far off for VBR), fragmented mp4. Encoder delay is not
    # signalled, so the decoded length may exceed the source by a codec frame or two.
    data = speech.to_format(speech_clip.samples, fmt, streamed=True)
    decoded = decode_audio(data)
    extra = (len(decoded) - len(speech_clip.samples)) / SAMPLE_RATE
    assert -MAX_LENGTH_ERROR < extra < 0.15, f"{fmt}: length off by {extra * 1000:.1f} ms"
    assert similarity(decoded, speech_clip.samples) > 0.9


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg", "m4a"])
def test_every_input_kind_gives_the_same_samples(
    fmt: str, speech_formats: dict[str, bytes], tmp_path: Path
) -> None:
    data = speech_formats[fmt]
    path = tmp_path / f"clip.{fmt}"
    path.write_bytes(data)
    reference = decode_audio(data)
    with path.open("rb") as opened:
        sources: list[object] = [bytearray(data), memoryview(data), str(path), path, opened]
        sources.append(io.BytesIO(data))
        for source in sources:
            assert np.array_equal(load_audio(source), reference), type(source).__name__  # type: ignore[arg-type]


def test_numpy_input_is_mixed_and_resampled(speech_clip: SpeechClip) -> None:
    source = speech_clip.samples
    stereo = soxr.resample(np.stack([source, source * 0.5], axis=1), SAMPLE_RATE, 44100)
    out = load_audio(stereo, sample_rate=44100)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - len(source)) / SAMPLE_RATE < MAX_LENGTH_ERROR
    assert similarity(out, source) > 0.99
    # the mix is the mean of the channels: 0.75 of the source (least-squares gain; the
    # round trip through 44.1 kHz only loses the band above soxr's passband)
    n = min(len(out), len(source))
    gain = float(np.dot(out[:n], source[:n]) / np.dot(source[:n], source[:n]))
    assert gain == pytest.approx(0.75, rel=0.02)
    assert np.allclose(from_array(np.ascontiguousarray(stereo.T), 44100), out)  # (channels, n)
    int16 = (source * 32767).astype(np.int16)
    assert np.allclose(from_array(int16, SAMPLE_RATE), source, atol=1e-3)
    uint8 = np.clip(np.round(source * 128 + 128), 0, 255).astype(np.uint8)  # centred on 128
    assert np.allclose(from_array(uint8, SAMPLE_RATE), source, atol=1e-2)
    float64 = from_array(source.astype(np.float64), SAMPLE_RATE)
    assert float64.dtype == np.float32 and np.array_equal(float64, source)


def test_numpy_input_errors(speech_clip: SpeechClip) -> None:
    source = speech_clip.samples
    with pytest.raises(ConfigurationError, match="sample_rate"):
        load_audio(source)  # arrays need a rate
    for rate in (0, -16000, 16000.0, True):
        with pytest.raises(ConfigurationError):
            from_array(source, rate)  # type: ignore[arg-type]
    bad = source.copy()
    bad[100] = math.nan
    assert reason_of(lambda: from_array(bad, SAMPLE_RATE)) == "non_finite"
    bad[100] = math.inf
    assert reason_of(lambda: load_audio(bad, sample_rate=SAMPLE_RATE)) == "non_finite"
    assert reason_of(lambda: from_array(np.zeros(0, np.float32), SAMPLE_RATE)) == "zero_length"
    assert reason_of(lambda: from_array(np.zeros((2, 3, 4)), SAMPLE_RATE)) == "unsupported_type"
    assert reason_of(lambda: from_array(source > 0, SAMPLE_RATE)) == "unsupported_type"
    assert reason_of(lambda: from_array(np.zeros((100, 100)), SAMPLE_RATE)) == "unsupported_type"
    assert reason_of(lambda: from_array(source, SAMPLE_RATE, max_seconds=5)) == "too_long"


def test_flac_round_trip_and_probe(
    speech_clip: SpeechClip, speech_formats: dict[str, bytes]
) -> None:
    source = speech_clip.samples
    data = encode_flac(source)
    assert data[:4] == b"fLaC" and len(data) < len(speech_clip.wav)
    assert np.allclose(decode_audio(data), source, atol=1e-4)  # 16-bit quantisation only
    seconds = len(source) / SAMPLE_RATE
    for fmt in ("wav", "flac", "mp3", "ogg", "opus"):  # headers that state the length
        assert probe_duration(speech_formats[fmt]) == pytest.approx(seconds, abs=0.01), fmt
    vbr_streamed = speech.to_format(source, "mp3-vbr", streamed=True)
    assert probe_duration(vbr_streamed) is None  # no Xing tag: the estimate is not trusted
    assert probe_duration(speech_formats["m4a"]) is None  # not a libsndfile format
    assert probe_duration(b"not audio at all") is None
    assert reason_of(lambda: encode_flac(np.zeros(0, np.float32))) == "zero_length"
    assert reason_of(lambda: encode_flac(np.full(10, np.nan, np.float32))) == "non_finite"


# ----------------------------------------------------------------------- bad inputs


def _wav_header(frames_promised: int) -> bytes:
    data_bytes = frames_promised * 2
    return (
        b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
        + b"data" + struct.pack("<I", data_bytes)
    )  # fmt: skip


def _cut(fmt: str, fraction: float) -> Callable[[dict[str, bytes]], bytes]:
    return lambda f: f[fmt][: int(len(f[fmt]) * fraction)]


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda f: b"", "empty"),
        (lambda f: np.random.default_rng(0).bytes(50_000), "not_audio"),
        (lambda f: b"<html><body>404 Not Found</body></html>" * 20, "not_audio"),
        (_cut("wav", 0.33), "truncated"),
        (_cut("wav", 0.999), "truncated"),  # even a few missing bytes
        (_cut("flac", 0.33), "truncated"),
        (_cut("mp3", 0.33), "truncated"),  # the Xing tag states the frame count
        (_cut("m4a", 0.33), "truncated"),  # the index at the end is gone
        (lambda f: _wav_header(0), "zero_length"),
    ],
    ids=["empty", "random", "html", "wav", "wav-tail", "flac", "mp3", "m4a", "zero-length"],
)
def test_bad_bytes_are_typed(
    make: Callable[[dict[str, bytes]], bytes], reason: str, speech_formats: dict[str, bytes]
) -> None:
    data = make(speech_formats)
    assert reason_of(lambda: decode_audio(data)) == reason
    with pytest.raises(AudioError) as info:
        decode_audio(data)
    # PyAV names the file it read; ours is in memory, so it said ": '<none>'"
    assert "<none>" not in str(info.value) and "()'" not in str(info.value), info.value


@pytest.mark.parametrize("fmt", speech.FORMATS)
def test_a_cut_anywhere_never_leaks_a_foreign_error(
    fmt: str, speech_formats: dict[str, bytes]
) -> None:
    data = speech_formats[fmt]
    reasons: list[str] = []
    for cut in (1, 10, 100, 417, 4096, len(data) // 2, len(data) - 1):
        try:
            out = decode_audio(data[:cut])
        except AudioError as error:  # anything else fails the test
            reasons.append(error.reason)
            continue
        # Ogg, webm and raw streams end at any page: a decodable prefix is fine
        assert out.dtype == np.float32 and np.isfinite(out).all() and len(out) > 0
    assert set(reasons) <= {"not_audio", "truncated", "zero_length"}, reasons


def test_length_limits(speech_clip: SpeechClip, speech_formats: dict[str, bytes]) -> None:
    for data in (speech_formats[fmt] for fmt in ("wav", "flac", "mp3", "m4a", "webm")):
        assert reason_of(lambda: decode_audio(data, max_seconds=5)) == "too_long"  # noqa: B023
    streamed = speech.to_format(speech_clip.samples, "flac", streamed=True)  # checked while read
    assert reason_of(lambda: decode_audio(streamed, max_seconds=5)) == "too_long"
    assert len(decode_audio(speech_formats["wav"], max_seconds=30)) == len(speech_clip.samples)


def test_too_long_is_refused_from_the_header_before_decoding() -> None:
    silence = encode_flac(np.zeros(10 * 60 * SAMPLE_RATE, np.float32))  # 10 min, ~40 MB decoded
    assert len(silence) < 2_000_000
    tracemalloc.start()
    try:
        assert reason_of(lambda: decode_audio(silence, max_seconds=60)) == "too_long"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * len(silence), f"decoded before refusing: peak {peak} bytes"


def test_sizes_paths_and_objects(tmp_path: Path, speech_formats: dict[str, bytes]) -> None:
    wav = speech_formats["wav"]
    assert reason_of(lambda: read_audio_bytes(wav, max_bytes=1000)) == "too_large"
    assert reason_of(lambda: load_audio(io.BytesIO(wav), max_bytes=1000)) == "too_large"
    assert read_audio_bytes(wav, max_bytes=len(wav)) == wav  # the limit itself is allowed
    big = tmp_path / "big.wav"
    with big.open("wb") as fh:
        fh.truncate(2 * 1024**3)  # a sparse 2 GiB file: reading it would take 2 GiB
    tracemalloc.start()
    try:
        assert reason_of(lambda: read_audio_bytes(big, max_bytes=100)) == "too_large"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, "the file was read before its size was checked"
    assert reason_of(lambda: read_audio_bytes(tmp_path / "missing.wav")) == "not_found"
    assert reason_of(lambda: load_audio(str(tmp_path / "missing.wav"))) == "not_found"
    assert reason_of(lambda: read_audio_bytes(tmp_path)) == "unsupported_type"  # a directory
    (tmp_path / "empty.wav").write_bytes(b"")
    assert reason_of(lambda: read_audio_bytes(tmp_path / "empty.wav")) == "empty"
    (tmp_path / "clip.wav").write_bytes(wav)
    with (tmp_path / "clip.wav").open("r") as text_mode:
        assert reason_of(lambda: read_audio_bytes(text_mode)) == "unsupported_type"
    assert reason_of(lambda: read_audio_bytes(io.StringIO("text"))) == "unsupported_type"
    assert reason_of(lambda: read_audio_bytes(12345)) == "unsupported_type"
    assert reason_of(lambda: read_audio_bytes([wav])) == "unsupported_type"
    assert reason_of(lambda: read_audio_bytes(io.BytesIO(b""))) == "empty"
    closed = io.BytesIO(wav)
    closed.close()
    assert reason_of(lambda: read_audio_bytes(closed)) == "invalid"
    with pytest.raises(ConfigurationError, match="s3"):
        read_audio_bytes("s3://bucket/key.wav")
    with pytest.raises(ConfigurationError, match="not fetched"):
        load_audio("https://example.com/a.mp3")


_WITHOUT_DEPS = """
import json, sys
for name in ("soundfile", "soxr", "av"):
    sys.modules[name] = None  # makes `import name` raise ImportError
import whisper_modal.engine.audio as audio  # imports without the decoders (lazy)
from whisper_modal.errors import AudioError, ConfigurationError
data, cuts = sys.stdin.buffer.read(), [int(n) for n in sys.argv[1:]]
wav16k, wav44k, m4a = data[: cuts[0]], data[cuts[0] : cuts[1]], data[cuts[1] :]
out = {}
try:
    audio.decode_audio(wav16k)
except ConfigurationError as e:
    out["no_soundfile"] = str(e)
del sys.modules["soundfile"]
out["wav16k_without_soxr"] = len(audio.decode_audio(wav16k))  # no resampling needed
try:
    audio.decode_audio(wav44k)
except ConfigurationError as e:
    out["no_soxr"] = str(e)
del sys.modules["soxr"]
try:
    audio.decode_audio(m4a)
except AudioError as e:
    out["no_av"] = [e.reason, str(e)]
print(json.dumps(out))
"""


def test_missing_decoders_name_the_extra(
    speech_clip: SpeechClip, speech_formats: dict[str, bytes]
) -> None:
    wav16k, m4a = speech_formats["wav"], speech_formats["m4a"]
    wav44k = speech.wav_bytes(soxr.resample(speech_clip.samples, SAMPLE_RATE, 44100), 44100)
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_DEPS, str(len(wav16k)), str(len(wav16k) + len(wav44k))],
        input=wav16k + wav44k + m4a, capture_output=True, check=True,
    )  # fmt: skip
    out = json.loads(done.stdout)
    assert "whisper-modal[local]" in out["no_soundfile"]
    assert out["wav16k_without_soxr"] == len(speech_clip.samples)
    assert "whisper-modal[local]" in out["no_soxr"] and "soxr" in out["no_soxr"]
    assert out["no_av"][0] == "unsupported_type" and "whisper-modal[local]" in out["no_av"][1]


def test_non_finite_samples_in_a_float_wav(speech_clip: SpeechClip) -> None:
    import soundfile as sf

    samples = speech_clip.samples.copy()
    samples[SAMPLE_RATE * 10] = np.inf  # deep inside: found while decoding, block by block
    buffer = io.BytesIO()
    sf.write(buffer, samples, SAMPLE_RATE, format="WAV", subtype="FLOAT")
    assert reason_of(lambda: decode_audio(buffer.getvalue())) == "non_finite"


def test_a_glitched_mp3_decodes_quietly(
    speech_formats: dict[str, bytes], capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """MP3s joined without re-encoding (a common podcast edit) break the bit reservoir at
    each seam. libsndfile's libmpg123 printed ``part2_3_length ... too large for available
    bit count`` to the process's stderr for each; the PyAV path skips the same frames
    quietly, as the ``ffmpeg`` tool does, and the audio comes out whole."""
    single = tmp_path / "one.mp3"
    single.write_bytes(speech_formats["mp3"])
    joined = subprocess.run(
        ["ffmpeg", "-v", "error", "-stream_loop", "3", "-i", str(single), "-c", "copy",
         "-f", "mp3", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    one = decode_audio(speech_formats["mp3"])
    capfd.readouterr()
    four = decode_audio(joined)
    out, err = capfd.readouterr()
    assert err == "" and out == "", err[:300]
    assert abs(four.shape[0] - 4 * one.shape[0]) <= 0.2 * SAMPLE_RATE, (four.shape, one.shape)
