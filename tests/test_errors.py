"""The error tree and the engine-side mapping of foreign errors."""

from __future__ import annotations

import pytest
import torch

import whisper_modal.errors as errors
from whisper_modal.errors import (
    AudioError,
    BackendError,
    ConfigurationError,
    JobTimeout,
    RemoteExecutionError,
    StorageTransient,
    TransientError,
    WhisperModalError,
    map_engine_error,
    outcome_of,
)


def test_every_public_error_is_in_the_tree() -> None:
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, WhisperModalError), name
            assert obj.__doc__, f"{name} needs a one-line docstring"


def test_tree_shape() -> None:
    assert issubclass(TransientError, BackendError)
    assert issubclass(StorageTransient, TransientError)  # retried by the one retry rule
    assert issubclass(JobTimeout, TimeoutError)
    assert issubclass(AudioError, ValueError) and issubclass(ConfigurationError, ValueError)
    assert JobTimeout("x", job_id="fc-1").job_id == "fc-1"


def test_engine_errors_are_mapped() -> None:
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
    mapped = map_engine_error(oom)
    assert isinstance(mapped, RemoteExecutionError)
    assert "smaller model" in str(mapped) and mapped.remote_type == "OutOfMemoryError"
    try:
        torch.zeros(2, 3) @ torch.zeros(4, 5)
    except RuntimeError as exc:
        mapped = map_engine_error(exc)
    assert isinstance(mapped, RemoteExecutionError) and mapped.remote_type == "RuntimeError"
    ours = AudioError("empty", reason="empty")
    assert map_engine_error(ours) is ours


def test_outcome_of_returns_the_value_or_the_typed_error_of_one_item() -> None:
    assert outcome_of(lambda: 3) == 3
    ours = AudioError("not audio", reason="not_audio")

    def bad_audio() -> int:
        raise ours

    def engine_bug() -> int:
        raise IndexError("index 7 is out of bounds")

    assert outcome_of(bad_audio) is ours  # our errors pass through unchanged
    mapped = outcome_of(engine_bug)
    assert isinstance(mapped, RemoteExecutionError) and "IndexError" in str(mapped)


@pytest.mark.parametrize("exc", [ValueError(""), KeyError("k")])
def test_mapping_never_returns_foreign_types(exc: Exception) -> None:
    assert isinstance(map_engine_error(exc), WhisperModalError)


def test_a_failed_jobs_error_survives_its_record_as_the_same_typed_error() -> None:
    # a fan-out job's record keeps error_to_dict(error); Modal's re-run raises it again
    from whisper_modal.job_book import JobRecord

    chunk = errors.ChunkFailed(
        "chunk 2 of 3 (25.0-50.0 s) failed twice", chunk=1, start=25.0, end=50.0,
        remote_type="AudioError",
    )  # fmt: skip
    deadline = errors.RemoteExecutionError("past its deadline", remote_type="FanoutDeadline")
    audio = errors.AudioError("not audio", reason="not_audio")
    for original in (chunk, deadline, audio):
        record = JobRecord(
            "fc-1", "fanout", "failed", 1.0, 2.0, failure=errors.error_to_dict(original)
        )
        back = errors.error_from_dict(JobRecord.from_dict(record.to_dict()).failure or {})
        assert type(back) is type(original) and str(back) == str(original)
        assert getattr(back, "remote_type", None) == getattr(original, "remote_type", None)
    rebuilt = errors.error_from_dict(errors.error_to_dict(chunk))
    assert isinstance(rebuilt, errors.ChunkFailed)
    assert (rebuilt.chunk, rebuilt.start, rebuilt.end) == (1, 25.0, 50.0)
    # a record written before the field existed still reads
    assert JobRecord.from_dict({"job_id": "x", "kind": "single", "status": "failed",
                                "created": 1.0, "updated": 1.0}).failure is None  # fmt: skip
