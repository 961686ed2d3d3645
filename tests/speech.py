"""Real speech with a known transcript, made by espeak-ng from text written here.

Used by the tests and the benchmarks. Generated audio is cached under
``tests/.fixtures/speech`` (git-ignored), keyed by a hash of its parameters.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000  # Hz
CACHE = Path(__file__).parent / ".fixtures" / "speech"

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


def synthesize(text: str, *, voice: str = "en-us", speed: int = 150) -> np.ndarray:
    """Speak ``text`` with espeak-ng; returns 16 kHz mono float32 samples."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"tts-{_key(text, voice, speed)}.npy"
    if path.is_file():
        return np.load(path)
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    if samples.ndim > 1:
        samples = samples.mean(axis=1)
    if rate != SAMPLE_RATE:
        import soxr

        samples = soxr.resample(samples, rate, SAMPLE_RATE).astype(np.float32)
    np.save(path, samples)
    return samples


def make_clip(
    sentences: Sequence[str],
    *,
    gap_seconds: float = 0.6,
    noise_db: float | None = None,
    voices: Sequence[str] = ("en-us",),
    speeds: Sequence[int] = (150,),
    seed: int = 0,
) -> tuple[np.ndarray, str]:
    """Concatenate spoken sentences with silences; optionally mix in white noise.

    Returns:
        (samples at 16 kHz, the reference text).
    """
    gap = np.zeros(int(gap_seconds * SAMPLE_RATE), dtype=np.float32)
    parts: list[np.ndarray] = [gap]
    for i, sentence in enumerate(sentences):
        parts += [
            synthesize(sentence, voice=voices[i % len(voices)], speed=speeds[i % len(speeds)]),
            gap,
        ]
    clip = np.concatenate(parts)
    if noise_db is not None:
        rng = np.random.default_rng(seed)
        clip = clip + rng.normal(0, 10 ** (noise_db / 20), clip.shape).astype(np.float32)
    return clip.astype(np.float32), " ".join(sentences)


def wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM WAV in memory."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


_FFMPEG_ARGS = {
    "wav": ["-f", "wav"],
    "flac": ["-f", "flac"],
    "mp3": ["-f", "mp3", "-b:a", "64k"],
    "ogg": ["-f", "ogg", "-c:a", "libvorbis"],
    "opus": ["-f", "ogg", "-c:a", "libopus"],
    "m4a": ["-f", "mp4", "-c:a", "aac", "-movflags", "frag_keyframe+empty_moov"],
    "webm": ["-f", "webm", "-c:a", "libopus"],
}


def to_format(samples: np.ndarray, fmt: str, rate: int = SAMPLE_RATE) -> bytes:
    """Encode samples as ``fmt`` with ffmpeg through pipes (no files)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(samples.tobytes()).hexdigest()[:16]
    path = CACHE / f"enc-{_key(digest, fmt, rate)}.{fmt}"
    if path.is_file():
        return path.read_bytes()
    data = subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", "wav", "-i", "pipe:0", *_FFMPEG_ARGS[fmt], "pipe:1"],
        input=wav_bytes(samples, rate), check=True, capture_output=True,
    ).stdout  # fmt: skip
    path.write_bytes(data)
    return data
