"""HTTP errors: the one function that maps the whisper_modal error tree to a status code.

Every error leaves the server as OpenAI's error document, so OpenAI SDKs raise their
usual exception classes (``AuthenticationError`` for 401, ``BadRequestError`` for 400...):

    {"error": {"message": "...", "type": "invalid_request_error", "param": null, "code": "..."}}

An unexpected exception becomes a 500 whose message carries the request id (also in the
``X-Request-Id`` header) and never a traceback: the traceback goes to the server log.
"""

from __future__ import annotations

from typing import Any

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
    WhisperModalError,
)

__all__ = ["ApiError", "http_error", "shorten"]

INVALID = "invalid_request_error"
SERVER = "server_error"

#: characters of a caller's value (a model name, a job id) that an error message repeats
ECHO_CHARS = 64
#: characters of any error message: a backstop for a message that quotes a value in full
MESSAGE_CHARS = 1024


def shorten(value: str, limit: int = ECHO_CHARS) -> str:
    """``value`` cut to ``limit`` characters plus "…": a message never echoes 100 KB back."""
    return value if len(value) <= limit else value[:limit] + "…"


class ApiError(WhisperModalError):
    """An error the HTTP layer raises itself, with its status and OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID,  # OpenAI's field name
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}


# (class, status, type, code) in order: the first matching class wins, so subclasses
# come before their bases (StorageTransient is also a TransientError).
_TABLE: tuple[tuple[type[BaseException], int, str, str], ...] = (
    (StorageTooLarge, 413, INVALID, "file_too_large"),
    (StorageNotFound, 404, INVALID, "storage_not_found"),
    (StorageAccessDenied, 403, INVALID, "storage_access_denied"),
    (StorageTransient, 503, SERVER, "storage_unavailable"),
    (StorageError, 502, SERVER, "storage_error"),
    (JobNotFound, 404, INVALID, "job_not_found"),
    (JobExpired, 410, INVALID, "job_expired"),
    (JobCancelled, 409, INVALID, "job_cancelled"),
    (JobTimeout, 504, SERVER, "job_timeout"),
    (ConfigurationError, 400, INVALID, "invalid_value"),
    (CircuitOpenError, 503, SERVER, "backend_unavailable"),
    (BackendUnavailable, 503, SERVER, "backend_unavailable"),
    (TransientError, 503, SERVER, "backend_busy"),
    (ChunkFailed, 500, SERVER, "chunk_failed"),
    (RemoteExecutionError, 500, SERVER, "engine_failed"),
    (JobError, 400, INVALID, "job_error"),
    (BackendError, 500, SERVER, "backend_error"),
    (WhisperModalError, 500, SERVER, "error"),  # ours: the message is safe to show
)


def http_error(exc: BaseException, request_id: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Map any exception to ``(status, OpenAI error document, extra headers)``.

    Args:
        exc: what the request raised.
        request_id: this request's id (named in 5xx messages so logs can be found).

    Returns:
        The HTTP status, ``{"error": {"message", "type", "param", "code"}}`` and headers
        (``Retry-After`` for 503, ``WWW-Authenticate`` for 401).
    """
    headers: dict[str, str] = {}
    if isinstance(exc, ApiError):
        status, kind, code, param = exc.status, exc.type, exc.code, exc.param
        message = str(exc)
        headers.update(exc.headers)
    elif isinstance(exc, AudioError):
        # too large is a size limit (413); any other audio problem is the caller's file (400)
        status = 413 if exc.reason == "too_large" else 400
        kind, code, param, message = INVALID, exc.reason, "file", str(exc)
    else:
        match = next((row for row in _TABLE if isinstance(exc, row[0])), None)
        if match is not None:
            _, status, kind, code = match
            message, param = str(exc), None
        else:  # not ours: never show its text or traceback
            status, kind, code, param = 500, SERVER, "internal_error", None
            message = f"internal server error (request id {request_id})"
    message = shorten(message, MESSAGE_CHARS)
    if status >= 500 and request_id not in message:
        message = f"{message} (request id {request_id})"
    if status == 503:
        headers.setdefault("Retry-After", "5")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return status, body, headers
