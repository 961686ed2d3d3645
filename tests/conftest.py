"""Shared fixtures for every test file.

* ``speech_clip``: ~25 s of real speech (espeak-ng), its reference text and WAV bytes.
* ``speech_formats``: that clip encoded as wav, flac, mp3, ogg, opus, m4a and webm.
* ``no_leaked_temp_files`` (autouse): fails a test that leaves temp files behind.
* ``deployed``: Modal's API emulated on loopback with our app deployed by Modal's CLI
  (``tests/emulator``), once per session for every test that asks for it.
* ``isolated_default_client`` (autouse): a test that configures (or creates) the
  process-wide default client cannot hand it to the next test.

The temp-file guard. Our code promises never to write temp files, so every test checks it.
Several engineers (and CI jobs) share this machine's ``/tmp``, so a guard that watched it
would blame a test for another process's files. Instead the session gets a private temp
directory: ``tempfile.gettempdir()`` and ``$TMPDIR`` (inherited by subprocesses) point
into it, so whatever appears there came from this test run. A test fails when an entry
named like a temp file (``tmp*``, ``wm-*``, ``*whisper*``) is new after it. Library caches
that land in the temp dir under other names (e.g. ``torchinductor_*``) are not flagged.
pytest's own ``tmp_path`` lives outside the private directory and is never flagged.
Opt a test out with ``@pytest.mark.allow_temp``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from tests import speech

_TEMP_ENV = ("TMPDIR", "TEMP", "TMP")


class SpeechClip(NamedTuple):
    """A clip of speech with a known transcript."""

    samples: np.ndarray  # 16 kHz mono float32
    text: str  # the reference transcript
    wav: bytes  # the samples as a 16-bit PCM WAV file


@pytest.fixture(scope="session")
def speech_clip() -> SpeechClip:
    """About 25 s of speech (6 sentences with 0.5 s pauses), its text and WAV bytes."""
    samples, text = speech.make_clip(speech.SENTENCES[5:11], gap_seconds=0.5)
    return SpeechClip(samples, text, speech.wav_bytes(samples))


@pytest.fixture(scope="session")
def speech_formats(speech_clip: SpeechClip) -> dict[str, bytes]:
    """The clip as files written the usual (seekable) way: fmt -> bytes.

    Keys: wav, flac, mp3, ogg, opus, m4a, webm. The WAV has a real length header, the MP3
    a Xing/LAME tag, the m4a its index at the end (see ``speech.to_format``).
    """
    return {fmt: speech.to_format(speech_clip.samples, fmt) for fmt in speech.FORMATS}


@pytest.fixture(scope="session", autouse=True)
def private_tempdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point ``tempfile`` and ``$TMPDIR`` at a directory only this test run uses."""
    tmp_path_factory.getbasetemp()  # pytest's own dirs stay where pytest put them
    private = Path(tempfile.mkdtemp(prefix="pytest-tempguard-"))
    saved_tempdir = tempfile.tempdir
    saved_env = {name: os.environ.get(name) for name in _TEMP_ENV}
    tempfile.tempdir = str(private)
    os.environ.update(dict.fromkeys(_TEMP_ENV, str(private)))
    try:
        yield private
    finally:
        tempfile.tempdir = saved_tempdir
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(private, ignore_errors=True)


def _temp_entries(root: Path) -> set[str]:
    try:
        names = os.listdir(root)
    except OSError:
        return set()
    # what tempfile names things, and our own prefixes
    return {n for n in names if n.startswith(("tmp", "wm-")) or "whisper" in n.lower()}


@pytest.fixture(autouse=True)
def no_leaked_temp_files(request: pytest.FixtureRequest, private_tempdir: Path) -> Iterator[None]:
    """Fail a test that leaves new tmp*/wm-*/*whisper* entries in the temp directory."""
    if request.node.get_closest_marker("allow_temp"):
        yield
        return
    root = Path(tempfile.gettempdir())
    before = _temp_entries(root)
    yield
    leaked = _temp_entries(root) - before
    assert not leaked, f"test left temp files behind in {root}: {sorted(leaked)}"


@pytest.fixture(autouse=True)
def isolated_default_client() -> Iterator[None]:
    """Restore ``whisper_modal``'s process-wide default client after each test.

    The default client resolves its settings (``WHISPER_MODAL_*``) when it is created, so
    one created by an earlier test would carry that test's environment into later ones.
    """
    from whisper_modal import _api

    saved = _api._DEFAULT
    yield
    made, _api._DEFAULT = _api._DEFAULT, saved
    if made is not None and made is not saved:
        made.close()  # its loop thread and local job thread end with the test


@pytest.fixture(scope="session")
def deployed() -> Iterator[Any]:
    """``tests.emulator.deployed.deploy()``: one emulated deployment for the whole session."""
    from tests.emulator.deployed import deploy

    with deploy() as emulated:
        yield emulated


@pytest.fixture(scope="session")
def echo_deployed(deployed: Any) -> Any:
    """``deployed`` with ``tests.echo_app`` (``whisper-modal-echo``) deployed beside our app."""
    deployed.deploy_app("tests.echo_app")
    return deployed


@pytest.fixture
def wire(deployed: Any) -> Iterator[Any]:
    """The session's emulated deployment; the faults a test injects end with it."""
    deployed.emulator.servicer.faults.clear()
    yield deployed
    deployed.emulator.servicer.faults.clear()


@pytest.fixture
def echo_wire(echo_deployed: Any, wire: Any) -> Any:
    """``wire`` with the echo app deployed."""
    return echo_deployed
