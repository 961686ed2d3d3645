"""whisper_modal: GPU speech-to-text on Modal that feels like a local function call.

    import whisper_modal as wm
    t = wm.transcribe("meeting.mp3")            # -> Transcript
    job = wm.submit(audio_bytes)                # -> Job; wm.Job.from_id(job.id).result()

This module is the whole public contract: it only re-exports (``__all__`` is sorted and
checked by ``tests/test_public_api.py``) and gives the package logger a ``NullHandler``,
the library convention: nothing is printed unless the application configures ``logging``.
"""

import logging

from whisper_modal._api import (
    asubmit,
    atranscribe,
    atranscribe_many,
    configure,
    default_client,
    submit,
    transcribe,
    transcribe_many,
)
from whisper_modal.backends.base import JobStatus
from whisper_modal.client import Client
from whisper_modal.config import Settings
from whisper_modal.errors import (
    AudioError,
    BackendError,
    BackendUnavailable,
    ChunkFailed,
    CircuitOpenError,
    ConfigurationError,
    JobCancelled,
    JobError,
    JobExpired,
    JobNotFound,
    JobTimeout,
    RemoteExecutionError,
    StorageAccessDenied,
    StorageError,
    StorageNotFound,
    StorageTooLarge,
    StorageTransient,
    TransientError,
    WebhookVerificationError,
    WhisperModalError,
)
from whisper_modal.inputs import CallOptions
from whisper_modal.job_book import JobRecord
from whisper_modal.jobs import Job
from whisper_modal.metrics import Stats
from whisper_modal.options import TranscribeOptions
from whisper_modal.results import Segment, Timings, Transcript, Word
from whisper_modal.storage import S3Object
from whisper_modal.webhooks import verify
from whisper_modal.wire import Request

__version__ = "0.1.0"

__all__ = [
    "AudioError",
    "BackendError",
    "BackendUnavailable",
    "CallOptions",
    "ChunkFailed",
    "CircuitOpenError",
    "Client",
    "ConfigurationError",
    "Job",
    "JobCancelled",
    "JobError",
    "JobExpired",
    "JobNotFound",
    "JobRecord",
    "JobStatus",
    "JobTimeout",
    "RemoteExecutionError",
    "Request",
    "S3Object",
    "Segment",
    "Settings",
    "Stats",
    "StorageAccessDenied",
    "StorageError",
    "StorageNotFound",
    "StorageTooLarge",
    "StorageTransient",
    "Timings",
    "TranscribeOptions",
    "Transcript",
    "TransientError",
    "WebhookVerificationError",
    "WhisperModalError",
    "Word",
    "__version__",
    "asubmit",
    "atranscribe",
    "atranscribe_many",
    "configure",
    "default_client",
    "submit",
    "transcribe",
    "transcribe_many",
    "verify",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
