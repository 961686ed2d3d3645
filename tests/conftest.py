"""Shared fixtures: real speech clips, and a guard that no test leaks temp files."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import numpy as np
import pytest

from tests import speech


@pytest.fixture(scope="session")
def speech_clip() -> tuple[np.ndarray, str]:
    """About 20 s of speech (6 sentences with pauses) and its reference text."""
    return speech.make_clip(speech.SENTENCES[5:11], gap_seconds=0.5)


@pytest.fixture(scope="session")
def speech_formats(speech_clip: tuple[np.ndarray, str]) -> dict[str, bytes]:
    """The clip encoded as wav, flac, mp3, ogg, opus, m4a and webm."""
    samples, _ = speech_clip
    encoded = {
        fmt: speech.to_format(samples, fmt) for fmt in ("flac", "mp3", "ogg", "opus", "m4a", "webm")
    }
    # a WAV with a real length header (ffmpeg writing to a pipe cannot fill it in)
    return {"wav": speech.wav_bytes(samples), **encoded}


def _temp_entries() -> set[str]:
    root = tempfile.gettempdir()
    try:
        names = os.listdir(root)
    except OSError:
        return set()
    # Our code must never create temp files; look at what Python's tempfile would name.
    return {n for n in names if n.startswith(("tmp", "wm-")) or "whisper" in n.lower()}


@pytest.fixture(autouse=True)
def no_leaked_temp_files(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves new tmp*/whisper* entries in the system temp directory.

    Tests that legitimately make temp dirs use pytest's ``tmp_path`` (under pytest-of-*),
    which this guard ignores. Mark a test ``@pytest.mark.allow_temp`` to opt out.
    """
    if request.node.get_closest_marker("allow_temp"):
        yield
        return
    before = _temp_entries()
    yield
    leaked = _temp_entries() - before
    assert not leaked, f"test left temp files behind: {sorted(leaked)}"
