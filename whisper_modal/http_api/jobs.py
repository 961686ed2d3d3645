"""The jobs API's bookkeeping: a persistent store for a local server, a stateless one for Modal.

``PersistentJobs`` (``whisper-modal serve``): every accepted job is a row in SQLite
(stdlib ``sqlite3``, ``WHISPER_MODAL_JOBS_DB``), written and committed *before* the 202
answer, with the request and its audio, so the job survives the server. After a restart
each unfinished row is finished or resumed: a Modal job (``fc-...``) is re-attached by
its id, a local job (which died with the old process) is submitted again from its stored
request, and a row that cannot be rebuilt is marked failed with the reason. None is
silently missing. The audio is dropped from the row once the job has ended.

``DirectJobs`` (the Modal web function): the job id *is* the backend's job id, so any
web container can answer for any job and nothing needs storing. Server-side Modal jobs
(a jobs table on Modal) are another issue; until then this goes through ``Client``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import attrs

from whisper_modal.backends.base import JobStatus, is_in_process_job
from whisper_modal.client import Client
from whisper_modal.errors import JobCancelled, JobNotFound, WhisperModalError
from whisper_modal.http_api.errors import ApiError, shorten
from whisper_modal.job_book import JobRecord
from whisper_modal.jobs import Job
from whisper_modal.results import Transcript
from whisper_modal.wire import Request

__all__ = ["JOB_PREFIX", "DirectJobs", "JobView", "Jobs", "PersistentJobs"]

log = logging.getLogger("whisper_modal.server")

#: ids of jobs a local server accepted
JOB_PREFIX = "job_"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    wire TEXT NOT NULL,          -- Request.to_wire() without the audio (JSON)
    audio BLOB,                  -- the uploaded audio, until the job ends
    backend_id TEXT,             -- the Client's job id (local-... or fc-...)
    attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT,                 -- Transcript.to_dict() as JSON
    error_type TEXT,
    error TEXT,
    owner TEXT                   -- auth.owner_hash of the submitting key's owner (NULL: no auth)
)
"""


@attrs.frozen
class JobView:
    """What ``GET /v1/jobs/{id}`` reports about one job."""

    id: str
    status: JobStatus
    created_at: float | None = None
    progress: tuple[int, int] | None = None
    error_type: str | None = None
    error: str | None = None
    transcript: Transcript | None = None
    resumed: bool = False  # it was submitted again after a server restart

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (``result`` is the transcript dict once it succeeded)."""
        return {
            "id": self.id,
            "object": "transcription.job",
            "status": self.status.value,
            "created_at": None if self.created_at is None else int(self.created_at),
            "progress": None
            if self.progress is None
            else {"done": self.progress[0], "total": self.progress[1]},
            "error": None
            if self.error is None
            else {"type": self.error_type, "message": self.error},
            "resumed": self.resumed,
            "result": None if self.transcript is None else self.transcript.to_dict(),
        }


class Jobs(Protocol):
    """What the routes need from a job store.

    ``owner`` is the caller's ``auth.owner_hash`` (None when authentication is off). A job
    belongs to the owner that submitted it; to any other owner it does not exist
    (``JobNotFound``), so ids cannot be probed.
    """

    async def start(self) -> None:
        """Recover or prepare (called once when the server starts)."""

    async def stop(self) -> None:
        """Stop watching (called once when the server stops)."""

    async def submit(self, request: Request, *, owner: str | None = None) -> JobView:
        """Accept a job (durably, where the store is persistent) and start it."""
        ...

    async def get(self, job_id: str, *, owner: str | None = None) -> JobView:
        """The job's current view. Raises JobNotFound (also for another owner's job)."""
        ...

    async def cancel(self, job_id: str, *, owner: str | None = None) -> JobView:
        """Cancel the job (a finished job is left alone). Raises JobNotFound."""
        ...


def _error_fields(exc: BaseException) -> tuple[str, str]:
    return type(exc).__name__, str(exc)


class DirectJobs:
    """Stateless jobs: the id is the ``Client``'s job id (a Modal FunctionCall id).

    The owner travels in the job's ``client_job_id`` (``<owner hash>-<hex>``), which the
    app's job book records at submit, so any web container can tell whose job it is.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self._local_owners: dict[str, str | None] = {}  # in-process jobs (a local fallback)

    async def start(self) -> None:
        """Nothing to recover: Modal keeps the jobs."""

    async def stop(self) -> None:
        """Nothing to stop."""

    async def submit(self, request: Request, *, owner: str | None = None) -> JobView:
        """Submit through the client; answer with the backend's id."""
        client_job_id = f"{owner or 'anon'}-{uuid.uuid4().hex}"
        job = await self.client.asubmit_request(attrs.evolve(request, client_job_id=client_job_id))
        if is_in_process_job(job.id):
            self._local_owners[job.id] = owner
        return JobView(job.id, JobStatus.PENDING, created_at=time.time())

    async def _check_known(self, job_id: str, owner: str | None) -> JobRecord | None:
        """Serve only this app's jobs, each to its owner; the job's record.

        A Modal id needs a record in the app's job book (any FunctionCall id of the
        workspace would otherwise do, other apps' included) whose ``client_job_id`` names
        the caller's owner. Returns it (None for an in-process job, which has none).
        """
        missing = JobNotFound(f"no job {shorten(job_id)!r} in this app", job_id=job_id)
        if is_in_process_job(job_id):
            if job_id in self._local_owners and self._local_owners[job_id] != owner:
                raise missing
            return None
        record = await self.client.ajob_record(job_id)
        if record is None:
            raise missing
        if owner is not None and not (record.client_job_id or "").startswith(owner + "-"):
            raise missing
        return record

    async def get(self, job_id: str, *, owner: str | None = None) -> JobView:
        """Ask the backend (one status call, one non-blocking result call when done).

        ``created_at`` and a fan-out's ``progress`` come from the job book's record."""
        record = await self._check_known(job_id, owner)
        created = None if record is None else record.created
        progress = (record.done, record.total) if record is not None and record.total else None
        job = Job.from_id(job_id, client=self.client)
        status = await job.astatus()
        if not status.done or status is JobStatus.CANCELLED:
            # a cancelled call may still be stopping: its result call would time out
            return JobView(job_id, status, created_at=created, progress=progress)
        try:
            transcript = await job.aresult(timeout=0)
        except JobCancelled:
            return JobView(job_id, JobStatus.CANCELLED, created_at=created)
        except JobNotFound:
            raise
        except WhisperModalError as exc:
            kind, message = _error_fields(exc)
            return JobView(
                job_id, JobStatus.FAILED, created_at=created, error_type=kind, error=message
            )
        return JobView(
            job_id,
            JobStatus.SUCCEEDED,
            created_at=created,
            progress=progress,
            transcript=transcript,
        )

    async def cancel(self, job_id: str, *, owner: str | None = None) -> JobView:
        """Cancel through the client."""
        await self._check_known(job_id, owner)
        await Job.from_id(job_id, client=self.client).acancel()
        return await self.get(job_id, owner=owner)


class PersistentJobs:
    """Jobs kept in SQLite and watched by one task each; see the module docstring.

    Args:
        client: runs the jobs (``Client.asubmit_request``).
        path: the SQLite file (its directory is created).
        max_unfinished: jobs pending or running at once; more get 429 (bounded queue).
    """

    def __init__(self, client: Client, path: str | Path, *, max_unfinished: int = 64) -> None:
        self.client = client
        self.path = Path(path)
        self.max_unfinished = max_unfinished
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        # one short connection per operation: safe from any thread, nothing held open
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            with conn:  # commits, or rolls back on error
                yield conn
        finally:
            conn.close()

    def _run_sql(self, query: str, params: tuple[Any, ...]) -> list[Any]:
        with self._db() as db:
            return db.execute(query, params).fetchall()

    async def _sql(self, query: str, *params: Any) -> list[Any]:
        # on a thread: an insert carries the whole upload, and the disk may be slow
        return await asyncio.to_thread(self._run_sql, query, params)

    async def start(self) -> None:
        """Create the table and recover every job a previous process left unfinished."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._sql("PRAGMA journal_mode=WAL")
        await self._sql(_SCHEMA)
        columns = {row[1] for row in await self._sql("PRAGMA table_info(jobs)")}
        if "owner" not in columns:  # a database from before owners: its jobs have none
            await self._sql("ALTER TABLE jobs ADD COLUMN owner TEXT")
        rows = await self._sql(
            "SELECT id, wire, audio, backend_id FROM jobs WHERE status IN (?, ?)",
            JobStatus.PENDING.value,
            JobStatus.RUNNING.value,
        )
        for job_id, wire, audio, backend_id in rows:
            await self._recover(job_id, wire, audio, backend_id)

    async def _recover(
        self, job_id: str, wire: str, audio: bytes | None, backend: str | None
    ) -> None:
        if backend and Job.from_id(backend, client=self.client).backend == "modal":
            # a Modal job kept running without us: watch it again (local and fan-out jobs
            # lived in the old process and are submitted again below)
            self._watch(job_id, Job.from_id(backend, client=self.client))
            log.info("job re-attached after restart", extra={"event": "job_reattached"})
            return
        try:
            data = json.loads(wire)
            data["audio"] = audio
            # a row stored before public_job_id existed: its webhook names the HTTP id too
            request = attrs.evolve(Request.from_wire(data), public_job_id=job_id)
        except (WhisperModalError, ValueError, TypeError) as exc:
            error = ("ServerRestart", f"lost in a server restart, cannot be resumed: {exc}")
            await self._end(job_id, JobStatus.FAILED, error=error)
            return
        try:
            await self._launch(job_id, request)
        except WhisperModalError as exc:
            await self._end(job_id, JobStatus.FAILED, error=_error_fields(exc))
            return
        log.info("job resumed after restart", extra={"event": "job_resumed"})

    async def stop(self) -> None:
        """Stop the watchers (the rows stay; the next start recovers them)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def submit(self, request: Request, *, owner: str | None = None) -> JobView:
        """Store the job (committed before this returns), then start it.

        Raises:
            ApiError: 429 with ``Retry-After`` while ``max_unfinished`` jobs are unfinished.
        """
        (unfinished,) = (
            await self._sql(
                "SELECT COUNT(*) FROM jobs WHERE status IN (?, ?)",
                JobStatus.PENDING.value,
                JobStatus.RUNNING.value,
            )
        )[0]
        if unfinished >= self.max_unfinished:
            raise ApiError(
                429,
                f"the jobs queue is full ({self.max_unfinished} unfinished jobs); retry later",
                code="queue_full",
                headers={"Retry-After": "10"},
            )
        job_id = JOB_PREFIX + uuid.uuid4().hex
        # the server's id travels with the request: S3 keys and idempotent delivery use
        # client_job_id, and the webhook names the job by public_job_id (not local-...)
        request = attrs.evolve(request, client_job_id=job_id, public_job_id=job_id)
        wire = request.to_wire()
        audio = wire.pop("audio")
        now = time.time()
        await self._sql(
            "INSERT INTO jobs (id, status, created, updated, wire, audio, owner) "
            "VALUES (?,?,?,?,?,?,?)",
            job_id,
            JobStatus.PENDING.value,
            now,
            now,
            json.dumps(wire),
            audio,
            owner,
        )
        try:
            await self._launch(job_id, request)
        except WhisperModalError as exc:
            await self._end(job_id, JobStatus.FAILED, error=_error_fields(exc))
            raise
        return JobView(job_id, JobStatus.PENDING, created_at=now)

    async def _launch(self, job_id: str, request: Request) -> None:
        job = await self.client.asubmit_request(request)
        await self._sql(
            "UPDATE jobs SET backend_id = ?, attempts = attempts + 1, updated = ? WHERE id = ?",
            job.id,
            time.time(),
            job_id,
        )
        self._watch(job_id, job)

    def _watch(self, job_id: str, job: Job) -> None:
        task = asyncio.get_running_loop().create_task(self._settle(job_id, job))
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))

    async def _settle(self, job_id: str, job: Job) -> None:
        """Wait for the job and write how it ended (at once when it is already done)."""
        try:
            transcript = await job.aresult(timeout=None)
        except JobCancelled:
            await self._end(job_id, JobStatus.CANCELLED)
        except WhisperModalError as exc:
            await self._end(job_id, JobStatus.FAILED, error=_error_fields(exc))
        else:  # the transcript names the job by the id the caller reads it by
            await self._end(
                job_id, JobStatus.SUCCEEDED, result=transcript.with_changes(job_id=job_id)
            )

    async def _end(
        self,
        job_id: str,
        status: JobStatus,
        *,
        result: Transcript | None = None,
        error: tuple[str, str] | None = None,
    ) -> None:
        # only an unfinished row changes: a job cancelled by the caller stays cancelled
        # even when its (uninterruptible) local run completes afterwards
        await self._sql(
            "UPDATE jobs SET status = ?, updated = ?, audio = NULL, result = ?, "
            "error_type = ?, error = ? WHERE id = ? AND status IN (?, ?)",
            status.value,
            time.time(),
            None if result is None else json.dumps(result.to_dict()),
            None if error is None else error[0],
            None if error is None else error[1],
            job_id,
            JobStatus.PENDING.value,
            JobStatus.RUNNING.value,
        )

    async def _row(self, job_id: str, owner: str | None) -> tuple[Any, ...]:
        rows = await self._sql(
            "SELECT status, created, backend_id, attempts, result, error_type, error, owner "
            "FROM jobs WHERE id = ?",
            job_id,
        )
        # another owner's job answers exactly as a missing one
        if not rows or rows[0][7] != owner:
            raise JobNotFound(f"no job {shorten(job_id)}", job_id=job_id)
        return tuple(rows[0][:7])

    async def get(self, job_id: str, *, owner: str | None = None) -> JobView:
        """Read the job's row (``running`` while its backend says so).

        Raises:
            JobNotFound: no such job.
        """
        row = await self._row(job_id, owner)
        state, backend_id, progress = JobStatus(row[0]), row[2], None
        if not state.done and backend_id:
            handle = Job.from_id(backend_id, client=self.client)
            with contextlib.suppress(WhisperModalError):
                live = await handle.astatus()
                if live.done:  # ended, and its watcher has not written it yet: settle now
                    await self._settle(job_id, handle)
                    row = await self._row(job_id, owner)
                    state = JobStatus(row[0])
                else:
                    state = JobStatus.RUNNING if live is JobStatus.RUNNING else state
                    progress = await handle.aprogress()
        _, created, _, attempts, result, error_type, error = row
        return JobView(
            job_id,
            state,
            created_at=created,
            progress=progress,
            error_type=error_type,
            error=error,
            transcript=None if result is None else Transcript.from_dict(json.loads(result)),
            resumed=attempts > 1,
        )

    async def cancel(self, job_id: str, *, owner: str | None = None) -> JobView:
        """Mark the job cancelled and ask its backend to stop it.

        Raises:
            JobNotFound: no such job (or another owner's).
        """
        row = await self._row(job_id, owner)
        if JobStatus(row[0]).done:
            return await self.get(job_id, owner=owner)
        await self._end(job_id, JobStatus.CANCELLED)
        if row[2]:
            with contextlib.suppress(WhisperModalError):
                await Job.from_id(row[2], client=self.client).acancel()
        return await self.get(job_id, owner=owner)
