"""The app's job book: claims on ``client_job_id`` and one record per job, in a ``modal.Dict``.

One named Dict per deployed app (``Settings.jobs_dict_name``, ``"<app>-jobs"``) holds:

- ``claim:<client_job_id>`` -> the FunctionCall id that owns that client id. The first
  writer wins (``put(skip_if_exists=True)``, atomic on Modal's server), so a submit that is
  retried after Modal had in fact accepted the first attempt returns the first job, and a
  container that finds its client id owned by another call does not run it (idempotent
  submits, at most one completed run per client id).
- ``job:<job_id>`` -> a ``JobRecord``: kind, status, timestamps, audio seconds, and chunks
  done / total for a fan-out job (``Job.progress()`` from any process; ``whisper-modal jobs``).
  The submitter writes it "pending" right after the spawn, the container "running" and
  then the outcome; whoever cancels writes "cancelled". Job status is read from these
  records first: Modal's call graph, the cross-check, is best effort by Modal's own word
  and nests a call spawned inside a container (the web function's jobs, the
  orchestrator's pieces) under its parent's input, or drops it with that parent.

Modal expires a Dict entry after 7 days without reads or writes, the same retention as a
FunctionCall's result, so records go with their jobs. The store is any object with the
sync ``put/get/pop/items`` of ``modal.Dict`` (the test fake has the same four).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import attrs

__all__ = [
    "CHUNK_MARK",
    "DictLike",
    "JobBook",
    "JobRecord",
    "arun_once",
    "best_effort",
    "chunk_job_id",
    "run_once",
]

log = logging.getLogger("whisper_modal.job_book")

#: what marks the client id of one fan-out chunk (``<job>/chunk-3-a0``): not listed as a job
CHUNK_MARK = "/chunk-"

_FINAL = frozenset({"succeeded", "failed", "cancelled", "expired"})


def chunk_job_id(job_id: str, index: int, attempt: int) -> str:
    """The client id of chunk ``index`` of fan-out job ``job_id``, attempt 0 or 1.

    Each attempt has its own id, so a retried chunk is a new claim and a new run.
    """
    return f"{job_id}{CHUNK_MARK}{index}-a{attempt}"


class DictLike(Protocol):
    """The part of ``modal.Dict``'s sync interface the job book uses."""

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool: ...

    def get(self, key: Any, default: Any | None = None) -> Any: ...

    def pop(self, key: Any, default: Any = ...) -> Any: ...

    def items(self) -> Iterable[tuple[Any, Any]]: ...


@attrs.frozen
class JobRecord:
    """What the app records about one job (plain types only: it crosses Modal's pickler)."""

    job_id: str
    kind: str  # "single" (one container) or "fanout" (split over many)
    status: str  # a JobStatus value: "running", "succeeded", "failed", "cancelled"...
    created: float  # unix seconds
    updated: float
    client_job_id: str | None = None
    audio_seconds: float | None = None
    done: int = 0  # chunks finished (fan-out)
    total: int = 0  # chunks planned (fan-out; 0 until the audio is split)
    error: str | None = None  # the error's class name, for a failed job
    # the error itself (``errors.error_to_dict``): a run Modal repeats raises it again
    failure: dict[str, Any] | None = None

    @property
    def final(self) -> bool:
        """True once the status can no longer change."""
        return self.status in _FINAL

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (what the Dict stores)."""
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        """Inverse of ``to_dict``; unknown keys (a newer writer) are ignored."""
        names = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class JobBook:
    """Claims and records over one Dict; see the module docstring.

    Args:
        store: a ``modal.Dict``, or anything with its sync methods (which are what is used).
        now: the clock for timestamps (tests pass a fake one).
    """

    def __init__(self, store: DictLike, *, now: Callable[[], float] = time.time) -> None:
        self.store = store
        self._now = now

    # ------------------------------------------------------------------ claims

    def claim(self, client_job_id: str, call_id: str) -> str:
        """Claim ``client_job_id`` for ``call_id``; return the call that owns it.

        The owner is ``call_id`` when this was the first claim (or the owner's claim was
        released meanwhile), else the earlier call's id.
        """
        key = "claim:" + client_job_id
        for _ in range(3):  # a claim released between our put and get: try again
            if self.store.put(key, call_id, skip_if_exists=True):
                return call_id
            owner = self.store.get(key)
            if owner is not None:
                return str(owner)
        return call_id

    def release(self, client_job_id: str, call_id: str) -> None:
        """Drop the claim if ``call_id`` holds it (a failed or cancelled run frees its id)."""
        key = "claim:" + client_job_id
        if self.store.get(key) == call_id:
            self.store.pop(key, None)

    # ------------------------------------------------------------------ records

    def get(self, job_id: str) -> JobRecord | None:
        """The record of ``job_id``, or None when the app has none (yet, or any more)."""
        data = self.store.get("job:" + job_id)
        return None if data is None else JobRecord.from_dict(data)

    def submitted(self, job_id: str, *, kind: str, client_job_id: str | None) -> bool:
        """Record a job just spawned as "pending", unless its container wrote first.

        Returns:
            True when this wrote the record (False: one existed already).
        """
        now = self._now()
        record = JobRecord(job_id, kind, "pending", now, now, client_job_id=client_job_id)
        return bool(self.store.put("job:" + job_id, record.to_dict(), skip_if_exists=True))

    def cancelled(self, job_id: str) -> JobRecord:
        """Record that ``job_id`` was cancelled, unless it had already ended.

        Written by whoever cancels: a job cancelled before any container took it has
        no container to record it, and Modal's call graph does not say so reliably.
        """
        old = self.get(job_id)
        if old is not None and old.final:
            return old
        now = self._now()
        record = (
            attrs.evolve(old, status="cancelled", updated=now)
            if old is not None
            else JobRecord(job_id, "single", "cancelled", now, now)
        )
        self.store.put("job:" + job_id, record.to_dict())
        return record

    def start(
        self, job_id: str, *, kind: str, client_job_id: str | None, total: int = 0
    ) -> JobRecord:
        """Record that ``job_id`` started running (keeps ``created`` of an earlier record).

        A job cancelled before its container got here stays "cancelled": the canceller's
        record is the caller's word, and a container that starts late must not undo it.
        """
        now = self._now()
        old = self.get(job_id)
        if old is not None and old.status == "cancelled":
            return old
        record = JobRecord(
            job_id=job_id,
            kind=kind,
            status="running",
            created=old.created if old else now,
            updated=now,
            client_job_id=client_job_id,
            total=total,
        )
        self.store.put("job:" + job_id, record.to_dict())
        return record

    def update(self, job_id: str, **changes: Any) -> JobRecord | None:
        """Change fields of ``job_id``'s record (one writer per job: its container).

        A "cancelled" status is kept (see ``start``); the other fields still change.
        """
        old = self.get(job_id)
        if old is None:
            return None
        if old.status == "cancelled":
            changes.pop("status", None)
        record = attrs.evolve(old, updated=self._now(), **changes)
        self.store.put("job:" + job_id, record.to_dict())
        return record

    def recent(self, limit: int = 20) -> list[JobRecord]:
        """The newest ``limit`` records of jobs (a fan-out job's pieces are not listed)."""
        records = [
            JobRecord.from_dict(value)
            for key, value in self.store.items()
            if isinstance(key, str) and key.startswith("job:") and isinstance(value, dict)
        ]
        records = [r for r in records if CHUNK_MARK not in (r.client_job_id or "")]
        records.sort(key=lambda r: r.created, reverse=True)
        return records[:limit]


def best_effort(action: Callable[[], Any], what: str) -> Any:
    """Run a job-book write; a Dict outage is logged, never fails the transcription."""
    try:
        return action()
    except Exception as exc:
        log.warning(
            "job book %s failed",
            what,
            extra={"event": "job_book_failed", "error": type(exc).__name__},
        )
        return None


# ---------------------------------------------------------------------- the claim protocol
# A spawned input runs at most once per ``client_job_id``: it claims the id first and does
# not run when another call owns it (a submit retried after Modal had accepted the first
# attempt, a restarted orchestrator re-spawning a piece). A failed or cancelled run frees
# its claim, so a retry may run. ``run_once`` is the GPU class's entry, ``arun_once`` the
# orchestrator's (an async function on a CPU container).

#: the JSON line a duplicate input writes (on the containers' request log)
_requests_log = logging.getLogger("whisper_modal.requests")


def _duplicate_of(book: JobBook, client_job_id: str, call_id: str) -> dict[str, Any] | None:
    """Claim ``client_job_id`` for ``call_id``; ``{"duplicate_of": owner}`` if another owns it."""
    owner = best_effort(lambda: book.claim(client_job_id, call_id), "claim")
    if owner is None or owner == call_id:  # ours (or the book is down: run anyway)
        return None
    _requests_log.info(
        json.dumps({"event": "whisper_modal.duplicate", "job_id": call_id, "duplicate_of": owner})
    )
    return {"duplicate_of": owner}


def _ended(book: JobBook, client_job_id: str, call_id: str, exc: BaseException | None) -> None:
    """Free a failed or cancelled run's claim (``exc`` None: nothing to free)."""
    if exc is not None:
        best_effort(lambda: book.release(client_job_id, call_id), "release")


def _outcome(exc: BaseException) -> str:
    import modal.exception

    return "cancelled" if isinstance(exc, modal.exception.InputCancellation) else "failed"


def run_once(
    book: JobBook,
    call_id: str | None,
    request: dict[str, Any],
    work: Callable[[str | None], dict[str, Any]],
) -> dict[str, Any]:
    """Run ``work(job_id)`` under the claim of ``request["client_job_id"]``; see above.

    The run is recorded as a "single" job (``whisper-modal jobs``). Without a call id or a
    client id (``.remote`` outside a spawn, ``.local()``) there is nothing to claim.
    """
    client_job_id = request.get("client_job_id")
    if not (call_id and client_job_id):
        return work(call_id or client_job_id)
    duplicate = _duplicate_of(book, client_job_id, call_id)
    if duplicate is not None:
        return duplicate
    best_effort(lambda: book.start(call_id, kind="single", client_job_id=client_job_id), "record")
    try:
        result = work(call_id)
    except BaseException as exc:  # InputCancellation is a BaseException
        _ended(book, client_job_id, call_id, exc)
        status, error = _outcome(exc), type(exc).__name__
        best_effort(lambda: book.update(call_id, status=status, error=error), "record")
        raise
    seconds = result.get("duration")
    best_effort(lambda: book.update(call_id, status="succeeded", audio_seconds=seconds), "record")
    return result


async def arun_once(
    book: JobBook,
    call_id: str,
    request: dict[str, Any],
    work: Callable[[], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """``run_once`` for a coroutine whose work keeps its own record (the orchestrator)."""
    client_job_id = request.get("client_job_id")
    if not client_job_id:
        return await work()
    duplicate = await asyncio.to_thread(_duplicate_of, book, client_job_id, call_id)
    if duplicate is not None:
        return duplicate
    try:
        return await work()
    except BaseException as exc:
        await asyncio.to_thread(_ended, book, client_job_id, call_id, exc)
        raise
