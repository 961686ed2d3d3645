"""whisper_modal: GPU speech-to-text on Modal that feels like a local function call."""

from whisper_modal.errors import (
    AudioError,
    BackendError,
    BackendUnavailable,
    CircuitOpenError,
    ConfigurationError,
    JobCancelled,
    JobError,
    JobExpired,
    JobNotFound,
    JobTimeout,
    RemoteExecutionError,
    StorageError,
    TransientError,
    WhisperModalError,
)
from whisper_modal.options import TranscribeOptions
from whisper_modal.results import Segment, Timings, Transcript, Word

__version__ = "0.1.0"
