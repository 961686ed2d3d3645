"""``map_modal_error``: every exception class the installed ``modal`` package defines maps to
the typed tree, and the ones the SDK meets map to the class that drives the right action
(retry, fall back, report to the user)."""

from __future__ import annotations

import asyncio
import inspect

import modal.exception as me
import pytest

import whisper_modal.errors as errors
from whisper_modal.errors import map_modal_error

MODAL_ERRORS = sorted(
    (
        cls
        for cls in vars(me).values()
        if inspect.isclass(cls)
        and issubclass(cls, BaseException)
        and not issubclass(cls, Warning)
        and not cls.__name__.startswith("_")
    ),
    key=lambda c: c.__name__,
)


def make(cls: type[BaseException], message: str = "boom") -> BaseException:
    # most take a message; a few take none (OutputExpiredError) or more (ImageBuildError)
    for count in (1, 0, 2, 3):
        try:
            return cls(*[message] * count)
        except TypeError:
            continue
    raise AssertionError(f"cannot build {cls.__name__}")


def test_the_installed_modal_has_the_classes_we_expect() -> None:
    names = {c.__name__ for c in MODAL_ERRORS}
    assert {"AuthError", "NotFoundError", "ConnectionError", "InputCancellation"} <= names
    assert len(MODAL_ERRORS) >= 30


@pytest.mark.parametrize("cls", MODAL_ERRORS, ids=lambda c: c.__name__)
def test_every_modal_exception_maps_to_the_tree(cls: type[BaseException]) -> None:
    exc = make(cls)
    for job_id in (None, "fc-1"):
        mapped = map_modal_error(exc, job_id=job_id)
        assert isinstance(mapped, errors.WhisperModalError)
        assert type(mapped).__module__ == "whisper_modal.errors"
        assert str(mapped)  # a message a person can read


@pytest.mark.parametrize(
    ("exc", "job_id", "expected"),
    [
        # cannot work now: no credentials, not deployed, no access -> may fall back
        (me.AuthError("Token missing"), None, errors.BackendUnavailable),
        (me.NotFoundError("App not found"), None, errors.BackendUnavailable),
        (me.PermissionDeniedError("no"), None, errors.BackendUnavailable),
        (me.VersionError("too old"), None, errors.BackendUnavailable),
        (me.InvalidError("bad"), None, errors.BackendUnavailable),
        # transient: the only class the client retries
        (me.ConnectionError("refused"), None, errors.TransientError),
        (me.ResourceExhaustedError("busy"), None, errors.TransientError),
        (me.InternalFailure("lost"), None, errors.TransientError),
        (me.ServiceError("503"), None, errors.TransientError),
        (me.TimeoutError("slow"), None, errors.TransientError),
        (TimeoutError(), None, errors.TransientError),
        (OSError("reset"), None, errors.TransientError),
        # the container ran and failed
        (me.FunctionTimeoutError("3600 s"), None, errors.RemoteExecutionError),
        (me.RemoteError("boom"), None, errors.RemoteExecutionError),
        (me.ExecutionError("cannot unpickle"), None, errors.RemoteExecutionError),
        (ValueError("remote ValueError"), None, errors.RemoteExecutionError),
        # the user's request
        (me.RequestSizeError("too big"), None, errors.AudioError),
        # jobs
        (me.NotFoundError("no such call"), "fc-1", errors.JobNotFound),
        (me.OutputExpiredError(), "fc-1", errors.JobExpired),
        (me.InputCancellation("cancelled"), "fc-1", errors.JobCancelled),
        # text is not evidence: a terminated input is recognised by its call-graph status
        # (ModalBackend), so a remote error that merely mentions cancelling stays an error
        (me.RemoteError("Input was cancelled by user"), "fc-1", errors.RemoteExecutionError),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_mapping_drives_the_right_action(
    exc: BaseException, job_id: str | None, expected: type[errors.WhisperModalError]
) -> None:
    mapped = map_modal_error(exc, job_id=job_id)
    assert type(mapped) is expected, mapped
    if isinstance(mapped, errors.JobError):
        assert mapped.job_id == "fc-1"


def test_fixes_name_the_command() -> None:
    auth = map_modal_error(me.AuthError("Token missing"))
    assert isinstance(auth, errors.BackendUnavailable) and auth.fix == "modal token new"
    missing = map_modal_error(me.NotFoundError("App 'whisper-modal' not found"))
    assert isinstance(missing, errors.BackendUnavailable)
    assert missing.fix == "whisper-modal deploy" and "whisper-modal deploy" in str(missing)
    remote = map_modal_error(ValueError("bad options"))
    assert isinstance(remote, errors.RemoteExecutionError) and remote.remote_type == "ValueError"


def test_our_own_errors_pass_through() -> None:
    original = errors.AudioError("empty", reason="empty")
    assert map_modal_error(original) is original


def test_grpc_transport_errors_are_transient() -> None:
    from grpclib.const import Status
    from grpclib.exceptions import GRPCError, StreamTerminatedError

    assert isinstance(map_modal_error(StreamTerminatedError("gone")), errors.TransientError)
    assert isinstance(map_modal_error(GRPCError(Status.UNAVAILABLE, "x")), errors.TransientError)


def test_asyncio_cancellation_is_not_swallowed() -> None:
    # CancelledError is how our own deadlines stop work: the mapper must never see it
    # (ModalBackend catches Exception + InputCancellation only), and it is no Exception.
    assert not issubclass(asyncio.CancelledError, Exception)
    assert issubclass(me.InputCancellation, BaseException)
    assert not issubclass(me.InputCancellation, Exception)
