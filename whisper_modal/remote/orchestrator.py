"""Fan-out of a submitted long-audio job, run inside the app (``app.fanout``, on CPU).

One orchestrator input per job, and its FunctionCall id is the job id, so
``Job.from_id(id)`` finds a fan-out job from any process just as it finds a single one.
The orchestrator:

1. fetches the audio (inline or S3) and decodes it;
2. splits it at pauses (``engine.splitting``);
   a diarized request stays one piece (speakers are clustered over the whole recording);
3. spawns one GPU input per piece and records chunks done / total in the job book
   (``job_book``), where ``Job.progress()`` reads it from anywhere;
4. retries a failed piece once as a new input (Modal places it on any free container;
   the first attempt's container may be reused); a piece that fails twice fails the job
   with ``ChunkFailed`` naming it, the other pieces are cancelled, and nothing is
   delivered as if complete;
5. merges the pieces and delivers the result once (S3 output, webhook), as
   ``Service.handle`` does for a single job.

Cancelling the job cancels the orchestrator's task (Modal cancels an async input's
task), which cancels every piece still running. Every piece has its own client id per
attempt (``chunk_job_id``): if Modal restarts the orchestrator after a crash, a piece
that already ran is claimed in the job book, its container answers ``duplicate_of``, and
the orchestrator reads the finished run's result instead of transcribing it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from whisper_modal.concurrency import arun_many
from whisper_modal.config import Settings
from whisper_modal.delivery import notify
from whisper_modal.errors import (
    ChunkFailed,
    RemoteExecutionError,
    error_from_dict,
    error_to_dict,
    map_engine_error,
)
from whisper_modal.job_book import JobBook, arun_once, best_effort, chunk_job_id
from whisper_modal.results import Transcript
from whisper_modal.service import Service
from whisper_modal.wire import Request

if TYPE_CHECKING:  # the engine's modules load in _run, inside the container
    from whisper_modal.engine.splitting import Piece

__all__ = ["orchestrate", "run_fanout"]

log = logging.getLogger("whisper_modal.orchestrator")

#: wire dict -> a spawned ``modal.FunctionCall`` of the GPU class's ``transcribe``
SpawnChunk = Callable[[dict[str, Any]], Awaitable[Any]]
#: FunctionCall id -> ``modal.FunctionCall`` (``FunctionCall.from_id``)
CallLookup = Callable[[str], Any]


async def run_fanout(
    request: dict[str, Any], chunk_seconds: float, deployed: Settings
) -> dict[str, Any]:
    """The app's ``fanout`` function: one submitted job, once per ``client_job_id``.

    Its FunctionCall id is the job id. A duplicate input (a retried submit) answers
    ``duplicate_of``; Modal's retry of a job that already failed raises its first error.
    Returns the merged ``Transcript.to_dict()``.
    """
    from whisper_modal.remote import context
    from whisper_modal.remote.deployment import fanout_deadline
    from whisper_modal.remote.runtime import job_book, runtime_settings

    platform = context.platform
    job_id = platform.call_id() or str(request.get("client_job_id"))
    book = job_book()
    earlier = await asyncio.to_thread(best_effort, lambda: book.get(job_id), "read")
    if earlier is not None and earlier.status == "failed":
        # Modal's retry after the job failed (retries cover exceptions too): not run
        # again, and the caller gets the first run's error (a ChunkFailed naming the
        # chunk, the deadline), not word of the refusal
        if earlier.failure is not None:
            raise error_from_dict(earlier.failure)
        raise RemoteExecutionError(
            f"fan-out job {job_id} failed already ({earlier.error}); not run again",
            remote_type=earlier.error,
        )
    method = platform.chunk_method(str((request.get("options") or {}).get("model", "turbo")))

    async def work() -> dict[str, Any]:
        result = await orchestrate(
            request,
            job_id=job_id,
            chunk_seconds=chunk_seconds,
            service=Service(None, runtime_settings()),
            spawn=method.spawn.aio,
            lookup=platform.function_call,
            book=book,
            deadline=fanout_deadline(deployed.remote_timeout),
        )
        return result.to_dict()

    return await arun_once(book, job_id, request, work)


async def orchestrate(
    wire: dict[str, Any],
    *,
    job_id: str,
    chunk_seconds: float,
    service: Service,
    spawn: SpawnChunk,
    lookup: CallLookup,
    book: JobBook | None,
    deadline: float | None = None,
) -> Transcript:
    """Run one fan-out job end to end; see the module docstring.

    Args:
        wire: the job's ``Request.to_wire()``.
        job_id: the orchestrator's FunctionCall id (the job id).
        chunk_seconds: the longest piece, in seconds (the client's ``fanout_chunk_seconds``).
        service: fetches the audio and delivers the result (no engine of its own).
        spawn: starts one piece on the GPU class.
        lookup: finds a FunctionCall by id (to read a piece that already ran).
        book: where progress and the job's record go (None: not recorded).
        deadline: seconds the whole job may take (None: no limit). Set it inside the
            function's own Modal timeout: a job past it cancels its pieces, records
            "failed" and raises, where Modal's timeout would stop this input and leave
            the pieces running and the record "running".

    Raises:
        ChunkFailed: a piece failed twice. RemoteExecutionError: past ``deadline``.
        WhisperModalError: the audio could not be read or decoded, or delivery failed.
        asyncio.CancelledError: the job was cancelled.
    """
    request = Request.from_wire(wire)
    started = time.perf_counter()
    record = _Recorder(book, job_id)
    await record(lambda b: b.start(job_id, kind="fanout", client_job_id=request.client_job_id))
    try:
        scope = asyncio.timeout(deadline)
        try:
            async with scope:
                result = await _run(request, job_id, chunk_seconds, service, spawn, lookup, record)
        except TimeoutError as exc:
            if not scope.expired():
                raise
            raise RemoteExecutionError(
                f"fan-out job {job_id} ran past its deadline of {deadline:g} s; its pieces"
                " were cancelled",
                remote_type="FanoutDeadline",
            ) from exc
    except asyncio.CancelledError:
        await asyncio.shield(record(lambda b: b.update(job_id, status="cancelled")))
        raise
    except Exception as exc:
        error = map_engine_error(exc)
        failure = error_to_dict(error)
        await record(
            lambda b: b.update(job_id, status="failed", error=type(error).__name__, failure=failure)
        )
        await asyncio.to_thread(notify, service.settings, request, job_id, started, error=error)
        if error is exc:
            raise
        raise error from exc
    await record(lambda b: b.update(job_id, status="succeeded"))
    await asyncio.to_thread(notify, service.settings, request, job_id, started, result=result)
    return result


class _Recorder:
    """Job-book writes, one at a time (progress is a read-modify-write), never failing."""

    def __init__(self, book: JobBook | None, job_id: str) -> None:
        self.book = book
        self.job_id = job_id
        self._lock = asyncio.Lock()

    async def __call__(self, write: Callable[[JobBook], Any]) -> None:
        book = self.book
        if book is None:
            return
        async with self._lock:
            await asyncio.to_thread(best_effort, lambda: write(book), "write")


async def _run(
    request: Request,
    job_id: str,
    chunk_seconds: float,
    service: Service,
    spawn: SpawnChunk,
    lookup: CallLookup,
    record: _Recorder,
) -> Transcript:
    from whisper_modal.engine.audio import decode_audio
    from whisper_modal.engine.chunking import merge_transcripts
    from whisper_modal.engine.constants import SAMPLE_RATE
    from whisper_modal.engine.splitting import Piece, split_for_fanout

    audio = await asyncio.to_thread(service.fetch_audio, request)
    samples = await asyncio.to_thread(
        decode_audio, audio, max_seconds=service.settings.max_audio_seconds
    )
    seconds = samples.shape[0] / SAMPLE_RATE
    pieces: list[Piece] = []
    if request.options.splittable:
        pieces = await asyncio.to_thread(
            split_for_fanout, samples, request.options, chunk_seconds=chunk_seconds
        )
    del samples
    if not pieces:  # whole-recording options, or no speech: one piece, the engine decides
        pieces = [Piece(0, 0.0, seconds, audio)]
    total = len(pieces)
    await record(lambda b: b.update(job_id, total=total, audio_seconds=seconds))
    done = 0

    async def one(piece: Piece) -> Transcript:
        nonlocal done
        part = await _piece(request, job_id, piece, total, spawn, lookup)
        done += 1
        finished = done
        await record(lambda b: b.update(job_id, done=finished))
        return part

    # all pieces at once (Modal queues them); the first failure cancels the others
    parts = await arun_many(one, pieces, concurrency=total, progress=False)
    merged = merge_transcripts(
        [(p.offset, t) for p, t in zip(pieces, parts, strict=True)]  # type: ignore[misc]
    )
    merged = merged.with_changes(job_id=job_id, duration=seconds)
    return await asyncio.to_thread(service.store_results, request, merged, job_id)


async def _piece(
    request: Request,
    job_id: str,
    piece: Piece,
    total: int,
    spawn: SpawnChunk,
    lookup: CallLookup,
) -> Transcript:
    """Transcribe one piece: two attempts, each a new input; cancelled with the job."""
    last: BaseException | None = None
    for attempt in (0, 1):
        wire = Request(
            options=request.options,
            audio=piece.audio,
            client_job_id=chunk_job_id(job_id, piece.index, attempt),
        ).to_wire()
        call = await _spawn_or_cancel(spawn, wire)
        try:
            result: dict[str, Any] = await call.get.aio()
            while "duplicate_of" in result:  # this attempt already ran (a restarted job)
                call = lookup(str(result["duplicate_of"]))
                result = await call.get.aio()
        except asyncio.CancelledError:
            await asyncio.shield(_cancel(call))
            raise
        except Exception as exc:
            last = exc
            log.warning(
                "fan-out chunk failed",
                extra={"event": "chunk_failed", "job_id": job_id, "chunk": piece.index,
                       "attempt": attempt, "error": type(exc).__name__},
            )  # fmt: skip
            continue
        return Transcript.from_dict(result)
    assert last is not None
    kind = str(error_to_dict(last)["type"])
    raise ChunkFailed(
        f"chunk {piece.index + 1} of {total} ({piece.offset:.1f}-{piece.offset + piece.seconds:.1f}"
        f" s) failed twice; last error {kind}: {last}",
        chunk=piece.index,
        start=piece.offset,
        end=piece.offset + piece.seconds,
        remote_type=kind,
    )


async def _spawn_or_cancel(spawn: SpawnChunk, wire: dict[str, Any]) -> Any:
    """``spawn(wire)``; a job cancelled meanwhile still cancels the piece it started.

    The spawn may have reached Modal by the time the cancellation lands: without this,
    that piece ran on with nobody to cancel it.
    """
    spawning = asyncio.ensure_future(spawn(wire))
    try:
        return await asyncio.shield(spawning)
    except asyncio.CancelledError:
        try:
            call = await spawning
        except Exception:  # the spawn failed: nothing started
            raise asyncio.CancelledError() from None
        await _cancel(call)
        raise


async def _cancel(call: Any) -> None:
    try:
        await call.cancel.aio()
    except Exception as exc:  # the job is being cancelled anyway; the piece may have ended
        log.warning("could not cancel a chunk", extra={"event": "cancel_failed",
                                                       "error": type(exc).__name__})  # fmt: skip
