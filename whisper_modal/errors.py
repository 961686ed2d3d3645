"""The exception tree of whisper_modal, and the one place foreign errors are mapped.

    WhisperModalError
    ├─ ConfigurationError      bad argument / setting; never retried
    ├─ AudioError              unreadable, empty, undecodable, too long, too large; never retried
    ├─ StorageError            S3 problems
    │  ├─ StorageNotFound      NoSuchKey / NoSuchBucket (permanent)
    │  ├─ StorageAccessDenied  AccessDenied / bad credentials (permanent)
    │  ├─ StorageTooLarge      object over the configured size cap (permanent)
    │  └─ StorageTransient     throttling, 5xx, connection reset (also a TransientError)
    ├─ BackendError
    │  ├─ TransientError       connection, timeout, throttling: the only class retried
    │  ├─ BackendUnavailable   retries exhausted / not deployed / no credentials -> may fall back
    │  ├─ CircuitOpenError     breaker refused the call -> may fall back
    │  └─ RemoteExecutionError the engine failed inside the container (carries the remote message)
    │     └─ ChunkFailed       one chunk of a fan-out job failed twice (names the chunk)
    ├─ JobError(job_id)
    │  ├─ JobTimeout           result not ready in time (also a builtin TimeoutError)
    │  ├─ JobCancelled
    │  ├─ JobNotFound
    │  └─ JobExpired           older than Modal's 7-day result retention
    └─ WebhookVerificationError  a received webhook's signature or timestamp is wrong

Foreign exceptions (modal, botocore, torch, tenacity) never reach the user: each family
is translated by exactly one function below (``map_*``), which callers use as
``raise map_x_error(exc) from exc``. ``tests/test_errors.py`` checks the mappings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "AudioError",
    "BackendError",
    "BackendUnavailable",
    "ChunkFailed",
    "CircuitOpenError",
    "ConfigurationError",
    "JobCancelled",
    "JobError",
    "JobExpired",
    "JobNotFound",
    "JobTimeout",
    "RemoteExecutionError",
    "StorageAccessDenied",
    "StorageError",
    "StorageNotFound",
    "StorageTooLarge",
    "StorageTransient",
    "TransientError",
    "WebhookVerificationError",
    "WhisperModalError",
    "error_from_dict",
    "error_to_dict",
    "map_boto_error",
    "map_engine_error",
    "map_modal_error",
    "outcome_of",
]


class WhisperModalError(Exception):
    """Base class of every error raised by whisper_modal."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Modal pickles exceptions raised in the container. The default reduce calls
        # ``cls(*args)``, which fails for keyword-only fields (``JobError(job_id=)``) and
        # drops them elsewhere (``AudioError.reason``): rebuild from args + attributes.
        return (_rebuild_error, (type(self), self.args, self.__dict__.copy()))


def _rebuild_error(
    cls: type[WhisperModalError], args: tuple[Any, ...], state: dict[str, Any]
) -> WhisperModalError:
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class ConfigurationError(WhisperModalError, ValueError):
    """A bad argument or setting; fix the call, retrying will not help."""


class AudioError(WhisperModalError, ValueError):
    """The audio is unreadable, empty, undecodable, too long or too large."""

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message)
        #: machine-readable cause: "empty", "not_audio", "truncated", "zero_length",
        #: "non_finite", "out_of_range", "not_found", "too_long", "too_large",
        #: "unsupported_type", "invalid"
        self.reason = reason


class StorageError(WhisperModalError):
    """An object store (S3, R2, MinIO) request failed."""


class StorageNotFound(StorageError):
    """The bucket or key does not exist (permanent)."""


class StorageAccessDenied(StorageError):
    """The credentials may not read or write the object (permanent)."""


class StorageTooLarge(StorageError):
    """The object is larger than the configured size cap (permanent)."""


class BackendError(WhisperModalError):
    """The backend (Modal or the local engine) could not produce a result."""


class TransientError(BackendError):
    """A connection, timeout or throttling fault; the only class the retry policy retries."""


class StorageTransient(StorageError, TransientError):
    """Throttling, a 5xx answer or a dropped connection from the object store."""


class BackendUnavailable(BackendError):
    """Modal cannot be used now (not deployed, no credentials, retries exhausted)."""

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(f"{message} (fix: {fix})" if fix else message)
        #: a one-line action that makes the backend available, if one is known
        self.fix = fix


class CircuitOpenError(BackendError):
    """The circuit breaker refused the call because the backend failed recently."""


class RemoteExecutionError(BackendError):
    """The engine failed inside the container; ``remote_type`` names the remote error."""

    def __init__(self, message: str, *, remote_type: str | None = None) -> None:
        super().__init__(message)
        self.remote_type = remote_type


class ChunkFailed(RemoteExecutionError):
    """A chunk of a fan-out job failed on two containers, so the job failed (no partial result).

    ``chunk`` is its 0-based index, ``start``/``end`` its place in the audio in seconds,
    ``remote_type`` the class name of the chunk's last error.
    """

    def __init__(
        self, message: str, *, chunk: int, start: float, end: float, remote_type: str | None
    ) -> None:
        super().__init__(message, remote_type=remote_type)
        self.chunk = chunk
        self.start = start
        self.end = end


class JobError(WhisperModalError):
    """A problem with a submitted job; ``job_id`` says which."""

    def __init__(self, message: str, *, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobTimeout(JobError, TimeoutError):
    """The job's result was not ready within the timeout (the job keeps running)."""


class JobCancelled(JobError):
    """The job was cancelled before it produced a result."""


class JobNotFound(JobError):
    """No job with this id exists (or it belongs to another workspace)."""


class JobExpired(JobError):
    """The job's result is older than the backend's retention (7 days on Modal)."""


class WebhookVerificationError(WhisperModalError, ValueError):
    """A received webhook's signature or timestamp did not verify (see ``webhooks.verify``)."""


# --------------------------------------------------------------------------- mapping


def map_engine_error(exc: BaseException) -> WhisperModalError:
    """Translate an error raised while decoding or running the model (torch, numpy, whisper).

    Errors that are already ours pass through unchanged; out-of-memory becomes a
    ``RemoteExecutionError`` whose message says what to change; anything else becomes a
    ``RemoteExecutionError`` naming the original type.
    """
    if isinstance(exc, WhisperModalError):
        return exc
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else name
    if "OutOfMemory" in name or "out of memory" in text.lower():
        return RemoteExecutionError(
            f"the engine ran out of memory ({text}); use a smaller model or a larger GPU",
            remote_type=name,
        )
    return RemoteExecutionError(f"the engine failed: {name}: {text}", remote_type=name)


def outcome_of(work: Callable[[], T]) -> T | WhisperModalError:
    """``work()``, or the typed error it raised (``map_engine_error``).

    The one per-item sieve of the packed path (the engine, the service and the packed
    container class): an item that fails becomes its own error, the others still run.
    """
    try:
        return work()
    except Exception as exc:
        return map_engine_error(exc)


def map_modal_error(exc: BaseException, *, job_id: str | None = None) -> WhisperModalError:
    """Translate an exception raised by the ``modal`` client library.

    Args:
        exc: the exception caught around a Modal call.
        job_id: the FunctionCall id when the call concerned a job.

    Returns:
        The whisper_modal exception to raise (``raise map_modal_error(e) from e``).
    """
    if isinstance(exc, WhisperModalError):
        return exc
    import modal.exception as me  # the core dependency; imported lazily to keep import light

    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else name
    jid = job_id or "?"
    if isinstance(exc, me.AuthError):
        return BackendUnavailable(f"Modal rejected the credentials: {text}", fix="modal token new")
    if isinstance(exc, me.NotFoundError):
        if job_id is not None:
            return JobNotFound(f"no Modal job {job_id}: {text}", job_id=job_id)
        return BackendUnavailable(
            f"the Modal app is not deployed: {text}", fix="whisper-modal deploy"
        )
    if isinstance(exc, me.OutputExpiredError):
        return JobExpired(f"the result of job {jid} has expired (Modal keeps 7 days)", job_id=jid)
    if isinstance(exc, me.FunctionTimeoutError):
        return RemoteExecutionError(
            f"the container hit its timeout: {text}; raise WHISPER_MODAL_REMOTE_TIMEOUT",
            remote_type=name,
        )
    if isinstance(exc, me.InputCancellation):
        return JobCancelled(f"job {jid} was cancelled", job_id=jid)
    if isinstance(exc, me.PermissionDeniedError):
        return BackendUnavailable(
            f"these Modal credentials may not use the app: {text}",
            fix="use a token of the workspace the app is deployed in (modal profile list)",
        )
    if isinstance(exc, me.VersionError):
        return BackendUnavailable(
            f"Modal no longer accepts this client: {text}", fix="pip install -U modal"
        )
    if isinstance(exc, me.ClientClosed):
        return BackendUnavailable(f"the Modal client was closed: {text}")
    if isinstance(exc, me.RequestSizeError):
        return AudioError(
            f"the request is too large for Modal ({text}); pass an s3:// URI instead",
            reason="too_large",
        )
    if isinstance(
        exc,
        me.ResourceExhaustedError
        | me.InternalFailure
        | me.ConnectionError
        | me.ServiceError
        | me.InternalError
        | me.TimeoutError,  # Modal's own timeout base (not the builtin)
    ):
        return TransientError(f"Modal is temporarily unavailable ({name}: {text})")
    if isinstance(exc, me.RemoteError):
        # (A cancelled input also arrives as a RemoteError; the Modal backend tells it
        # apart by the call graph's TERMINATED status, not by this text.)
        return RemoteExecutionError(f"the remote call failed: {text}", remote_type=name)
    if isinstance(exc, me.ExecutionError):  # e.g. a remote exception we cannot unpickle
        return RemoteExecutionError(f"the remote call failed: {text}", remote_type=name)
    if isinstance(exc, TimeoutError | OSError):
        return TransientError(f"Modal did not answer in time ({name}: {text})")
    if isinstance(exc, me.InvalidError):
        return BackendUnavailable(f"Modal refused the call: {name}: {text}")
    if _is_grpc_transport_error(exc):
        return TransientError(f"the connection to Modal broke ({name}: {text})")
    # Any other exception raised inside the container (a remote ValueError arrives as a
    # ValueError) is an engine failure, reported with its remote type.
    return RemoteExecutionError(f"the remote call failed: {name}: {text}", remote_type=name)


def _is_grpc_transport_error(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    return module.startswith(("grpclib", "h2", "ssl", "aiohttp"))


_S3_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "NoSuchVersion", "NotFound", "404"}
_S3_DENIED = {
    "AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
    "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "AccountProblem",
}  # fmt: skip
_S3_TRANSIENT = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
    "InternalError", "ServiceUnavailable", "503", "500", "502", "504",
    # S3Store pins a read to the ETag it measured: the object changed in between, and a
    # retry (which measures again) will read the new version whole.
    "PreconditionFailed", "412",
}  # fmt: skip
_BOTO_DENIED = ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError")
# botocore's transport failures, by name (botocore is optional) - all end in a retry.
_BOTO_TRANSIENT = (
    "EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError",
    "ConnectTimeoutError", "ResponseStreamingError", "IncompleteReadError",
    "ProxyConnectionError", "HTTPClientError", "ConnectionError",
    # urllib3 / http.client errors, should one escape botocore's wrapping
    "ProtocolError", "IncompleteRead", "RemoteDisconnected",
)  # fmt: skip


def map_boto_error(exc: BaseException, *, uri: str = "") -> WhisperModalError:
    """Translate a botocore/boto3 exception raised while talking to an object store.

    This is the only place botocore errors are interpreted.

    Args:
        exc: the exception caught around a boto3 call or a body read.
        uri: the object's ``s3://`` URI, for the message.

    Returns:
        ``StorageNotFound`` for NoSuchKey/NoSuchBucket/404; ``StorageAccessDenied`` for
        AccessDenied/403/bad or missing credentials; ``StorageTransient`` (retried) for
        throttling, 5xx, timeouts, dropped connections and short bodies; ``StorageError``
        for anything else (including TLS certificate failures, which a retry cannot fix).
        Errors that are already ours pass through unchanged.
    """
    if isinstance(exc, WhisperModalError):
        return exc
    where = f" ({uri})" if uri else ""
    names = {cls.__name__ for cls in type(exc).__mro__}
    response = getattr(exc, "response", None)
    if "ClientError" in names and isinstance(response, dict):
        error = response.get("Error") or {}
        code = str(error.get("Code", ""))
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        message = error.get("Message") or code
        if code in _S3_NOT_FOUND or status == 404:
            return StorageNotFound(f"object store: not found{where}: {message}")
        if code in _S3_DENIED or status == 403:
            return StorageAccessDenied(f"object store: access denied{where}: {message}")
        if code in _S3_TRANSIENT or (isinstance(status, int) and status >= 500):
            return StorageTransient(f"object store is busy or failing{where}: {code or status}")
        return StorageError(f"object store error{where}: {code or status}: {message}")
    name = type(exc).__name__
    if names.intersection(_BOTO_DENIED):
        return StorageAccessDenied(f"no usable S3 credentials{where}: {exc}")
    if "SSLError" in names:
        return StorageError(f"TLS failure talking to the object store{where}: {exc}")
    if names.intersection(_BOTO_TRANSIENT) or isinstance(exc, ConnectionError | TimeoutError):
        return StorageTransient(f"object store unreachable or the transfer broke{where}: {name}")
    return StorageError(f"object store error{where}: {name}: {exc}")


def error_to_dict(exc: BaseException) -> dict[str, Any]:
    """A plain-dict form of an error (per-item failures in batched results, a failed job's
    record): its type, message and reason, and a remote error's ``remote_type`` and a
    ``ChunkFailed``'s chunk and span, so ``error_from_dict`` rebuilds the same error."""
    data: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": str(exc),
        "reason": getattr(exc, "reason", None),
    }
    if isinstance(exc, RemoteExecutionError):
        data["remote_type"] = exc.remote_type
    if isinstance(exc, ChunkFailed):
        data.update(chunk=exc.chunk, start=exc.start, end=exc.end)
    return data


def error_from_dict(data: dict[str, Any]) -> WhisperModalError:
    """Rebuild a typed error from ``error_to_dict`` output (unknown types: remote failure)."""
    kind, message = data.get("type") or "", data.get("message") or ""
    if kind == "AudioError":
        return AudioError(message, reason=data.get("reason") or "invalid")
    if kind == "ChunkFailed" and isinstance(data.get("chunk"), int):
        return ChunkFailed(
            message, chunk=data["chunk"], start=float(data.get("start") or 0.0),
            end=float(data.get("end") or 0.0), remote_type=data.get("remote_type"),
        )  # fmt: skip
    if kind == "RemoteExecutionError" and "remote_type" in data:
        return RemoteExecutionError(message, remote_type=data["remote_type"])
    simple: dict[str, type[WhisperModalError]] = {
        "ConfigurationError": ConfigurationError,
        "StorageNotFound": StorageNotFound,
        "StorageAccessDenied": StorageAccessDenied,
        "StorageTooLarge": StorageTooLarge,
        "StorageTransient": StorageTransient,
        "StorageError": StorageError,
    }
    if kind in simple:
        return simple[kind](message)
    return RemoteExecutionError(f"{kind}: {message}", remote_type=kind or None)
