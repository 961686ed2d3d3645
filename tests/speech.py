"""Real speech with a known transcript, made by espeak-ng from text written here.

Used by every test file and the benchmarks:

    samples = speech.synthesize("Hello there.")                 # 16 kHz mono float32
    clip, text = speech.make_clip(speech.SENTENCES[:6], gap_seconds=0.5, noise_db=-50)
    mp3 = speech.to_format(clip, "mp3")                          # a file as a recorder writes it
    raw = speech.to_format(clip, "m4a", streamed=True)           # as a live stream writes it

Generated audio is cached under ``tests/.fixtures/speech`` (git-ignored), keyed by a hash
of its parameters, so repeated runs cost nothing. Cache files are written under a private
name and renamed into place, so parallel test runs never read a half-written file. Nothing
is written to the system temp directory.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000  # Hz
CACHE = Path(__file__).parent / ".fixtures" / "speech"
# 150 words/min: tiny.en hears espeak-ng's voice well at this pace (espeak's default, 175,
# costs a few points of WER); the cached fixtures other tests calibrated on use it.
DEFAULT_SPEED = 150

#: ordinary English sentences (tiny.en hears espeak-ng's voice well at ~150 wpm)
SENTENCES: tuple[str, ...] = (
    "Welcome to the weekly planning meeting.",
    "Today we will review the budget for the new project.",
    "The design team finished the first version of the website last Friday.",
    "Please send your comments to the project manager before the end of the month.",
    "Our next meeting will take place on Tuesday morning.",
    "The weather was cold and windy all week.",
    "She bought fresh bread and a bottle of milk at the market.",
    "The train to the city leaves every hour from the main station.",
    "We need to hire two more engineers for the support team.",
    "The library is closed on Sundays and public holidays.",
    "He forgot his umbrella at the office yesterday.",
    "The children played football in the park after school.",
    "Our sales grew by ten percent in the last quarter.",
    "The doctor told him to drink more water and sleep longer.",
    "Please turn off the lights when you leave the room.",
    "The new phone has a larger screen and a better camera.",
    "They visited their grandparents in the country for the holidays.",
    "The restaurant on the corner serves excellent pizza.",
    "I will call you back after the meeting is over.",
    "The river flows slowly through the quiet green valley.",
    "The museum opened a new exhibition about ancient history.",
    "Remember to bring your passport to the airport.",
    "The computer needs a new battery and a faster disk.",
    "Our team won the first prize in the science competition.",
    "The garden is full of roses and tall sunflowers.",
    "We should finish the report before the deadline on Thursday.",
    "The teacher explained the lesson with simple examples.",
    "A small boat sailed across the lake at sunrise.",
    "The company will open a new office in the spring.",
    "Please read the instructions carefully before you start.",
    "The hotel room had a beautiful view of the mountains.",
    "My brother is learning to play the guitar.",
    "The bus was late because of the heavy traffic.",
    "We talked about music, books and our favourite films.",
    "The bakery sells cakes, cookies and warm bread every morning.",
    "The price of fuel went up again this week.",
    "She writes a short story every evening before bed.",
    "The engineers tested the bridge for many months.",
    "Thank you all for coming, and see you next week.",
    "The station was crowded with people going home.",
)


def _key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _store(path: Path, data: bytes) -> None:
    """Write a cache entry atomically (parallel runs may generate the same entry)."""
    part = path.with_name(f"{path.name}.{os.getpid()}.part")
    part.write_bytes(data)
    os.replace(part, path)


def _need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise RuntimeError(f"the speech fixtures need {tool}: apt-get install {tool}")
    return found


def synthesize(
    text: str,
    *,
    voice: str = "en-us",
    speed: int = DEFAULT_SPEED,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Speak ``text`` with ``espeak-ng --stdout`` (the WAV is parsed in memory).

    Args:
        text: what to say; it is also the reference transcript.
        voice: an espeak-ng voice ("en-us", "en-gb", "en-us+f2", "de", ...).
        speed: words per minute.
        sample_rate: rate of the returned samples in Hz (espeak-ng speaks at 22050).

    Returns:
        Mono float32 samples at ``sample_rate``.
    """
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"tts-{_key(text, voice, speed, sample_rate)}.npy"
    if path.is_file():
        return np.asarray(np.load(path), dtype=np.float32)
    wav = subprocess.run(
        [_need("espeak-ng"), "-v", voice, "-s", str(speed), "--stdout", text],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    mono: np.ndarray = samples.mean(axis=1, dtype=np.float32)
    if rate != sample_rate:
        import soxr

        mono = soxr.resample(mono, rate, sample_rate, quality="HQ").astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, mono)
    _store(path, buffer.getvalue())
    return mono


def make_clip(
    sentences: Sequence[str],
    *,
    gap_seconds: float = 0.6,
    noise_db: float | None = None,
    voices: Sequence[str] = ("en-us",),
    speeds: Sequence[int] = (DEFAULT_SPEED,),
    seed: int = 0,
) -> tuple[np.ndarray, str]:
    """Concatenate spoken sentences with silences; optionally mix in white noise.

    Args:
        sentences: the text, one utterance each.
        gap_seconds: silence before, between and after the sentences.
        noise_db: white-noise level in dBFS (e.g. -50), or None for clean speech.
        voices, speeds: cycled over the sentences.
        seed: noise seed (the clip is deterministic).

    Returns:
        (samples at 16 kHz, the reference text: the sentences joined by spaces).
    """
    gap = np.zeros(int(gap_seconds * SAMPLE_RATE), dtype=np.float32)
    parts: list[np.ndarray] = [gap]
    for i, sentence in enumerate(sentences):
        voice, speed = voices[i % len(voices)], speeds[i % len(speeds)]
        parts += [synthesize(sentence, voice=voice, speed=speed), gap]
    clip = np.concatenate(parts)
    if noise_db is not None:
        rng = np.random.default_rng(seed)
        clip = clip + rng.normal(0, 10 ** (noise_db / 20), clip.shape).astype(np.float32)
    return clip.astype(np.float32), " ".join(sentences)


def wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM WAV in memory, with a correct length header."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


#: ffmpeg muxer and codec arguments per format
FFMPEG_ARGS: dict[str, tuple[str, ...]] = {
    "wav": ("-f", "wav"),
    "flac": ("-f", "flac"),
    "mp3": ("-f", "mp3", "-b:a", "64k"),
    "ogg": ("-f", "ogg", "-c:a", "libvorbis"),
    "opus": ("-f", "ogg", "-c:a", "libopus"),
    "m4a": ("-f", "mp4", "-c:a", "aac"),
    "webm": ("-f", "webm", "-c:a", "libopus"),
    "mp3-vbr": ("-f", "mp3", "-q:a", "6"),  # variable bitrate (LAME quality 6)
}
#: the formats a test usually wants (``speech_formats`` holds all of these)
FORMATS = ("wav", "flac", "mp3", "ogg", "opus", "m4a", "webm")


def to_format(
    samples: np.ndarray, fmt: str, rate: int = SAMPLE_RATE, *, streamed: bool = False
) -> bytes:
    """Encode samples as ``fmt`` with ffmpeg (cached).

    Args:
        samples: mono float32 samples.
        fmt: one of ``FORMATS``, or "mp3-vbr".
        rate: the samples' rate in Hz.
        streamed: False writes a seekable file, as a recorder or editor does: MP3 gets
            its Xing/LAME tag (frame count, encoder delay), m4a its index at the end and
            an edit list, WAV and FLAC their lengths. True writes to a pipe, as a live
            stream does: no length headers, fragmented mp4, untagged MP3.

    Returns:
        The encoded file's bytes.
    """
    if fmt not in FFMPEG_ARGS:
        raise ValueError(f"unknown format {fmt!r}; use one of {tuple(FFMPEG_ARGS)}")
    if fmt == "wav" and not streamed:
        return wav_bytes(samples, rate)
    CACHE.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(np.ascontiguousarray(samples).tobytes()).hexdigest()[:16]
    path = CACHE / f"enc-{_key(digest, fmt, rate, streamed)}.{fmt}"
    if path.is_file():
        return path.read_bytes()
    args = list(FFMPEG_ARGS[fmt])
    command = [_need("ffmpeg"), "-nostdin", "-loglevel", "error", "-f", "wav", "-i", "pipe:0"]
    if streamed:
        if fmt == "m4a":  # mp4 to a pipe must be fragmented: the index cannot come last
            args += ["-movflags", "frag_keyframe+empty_moov"]
        data = subprocess.run(
            [*command, *args, "pipe:1"], input=wav_bytes(samples, rate), check=True,
            capture_output=True,
        ).stdout  # fmt: skip
        _store(path, data)
        return data
    # ffmpeg seeks back to finish headers, so it writes a file: a private name in the
    # cache directory (never the system temp dir), renamed into place when complete.
    part = path.with_name(f"{path.name}.{os.getpid()}.part")
    subprocess.run(
        [*command, *args, "-y", str(part)], input=wav_bytes(samples, rate), check=True,
        capture_output=True,
    )  # fmt: skip
    os.replace(part, path)
    return path.read_bytes()
