"""The module-level functions and the process-wide default client they use.

``wm.transcribe(...)`` is ``default_client().transcribe(...)``; the default client is made
on first use from the environment (``WHISPER_MODAL_*``) and can be replaced with
``configure``. ``Job.from_id`` without a client re-attaches through it too.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, Unpack

from whisper_modal import jobs
from whisper_modal.client import Client
from whisper_modal.errors import WhisperModalError
from whisper_modal.inputs import AudioLike, CallOptions
from whisper_modal.jobs import Job
from whisper_modal.results import Transcript

__all__ = [
    "asubmit",
    "atranscribe",
    "atranscribe_many",
    "configure",
    "default_client",
    "submit",
    "transcribe",
    "transcribe_many",
]

_DEFAULT: Client | None = None
_DEFAULT_LOCK = threading.Lock()


def default_client() -> Client:
    """The process-wide client used by the module-level functions (created lazily)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Client()
        return _DEFAULT


def configure(client: Client | None = None, **overrides: Any) -> Client:
    """Replace the default client: ``client`` itself, or one built from ``overrides``.

    The previous default client is left open (jobs made with it keep working).
    """
    global _DEFAULT
    client = client or Client(**overrides)
    with _DEFAULT_LOCK:
        _DEFAULT = client
    return client


jobs._set_default_source(default_client)


def transcribe(
    audio: AudioLike,
    *,
    backend: str | None = None,
    timeout: float | None = None,
    **kwargs: Unpack[CallOptions],
) -> Transcript:
    """``default_client().transcribe(...)``; see ``Client.atranscribe`` for the arguments."""
    return default_client().transcribe(audio, backend=backend, timeout=timeout, **kwargs)


async def atranscribe(
    audio: AudioLike,
    *,
    backend: str | None = None,
    timeout: float | None = None,
    **kwargs: Unpack[CallOptions],
) -> Transcript:
    """``await default_client().atranscribe(...)``."""
    return await default_client().atranscribe(audio, backend=backend, timeout=timeout, **kwargs)


def submit(audio: AudioLike, *, backend: str | None = None, **kwargs: Unpack[CallOptions]) -> Job:
    """``default_client().submit(...)``; see ``Client.asubmit``."""
    return default_client().submit(audio, backend=backend, **kwargs)


async def asubmit(
    audio: AudioLike, *, backend: str | None = None, **kwargs: Unpack[CallOptions]
) -> Job:
    """``await default_client().asubmit(...)``."""
    return await default_client().asubmit(audio, backend=backend, **kwargs)


def transcribe_many(
    inputs: Iterable[AudioLike], **kwargs: Any
) -> list[Transcript | WhisperModalError]:
    """``default_client().transcribe_many(inputs, **kwargs)``."""
    return default_client().transcribe_many(inputs, **kwargs)


async def atranscribe_many(
    inputs: Iterable[AudioLike], **kwargs: Any
) -> list[Transcript | WhisperModalError]:
    """``await default_client().atranscribe_many(inputs, **kwargs)``."""
    return await default_client().atranscribe_many(inputs, **kwargs)
