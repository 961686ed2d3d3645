"""Long-audio fan-out: split at pauses, transcribe the chunks on many containers, merge.

For audio longer than ``settings.fanout_seconds`` sent to Modal, the client decodes it
(needs the ``[local]`` extra's decoder, not the model), cuts it into chunks of at most
``fanout_chunk_seconds`` at pauses with the same ``engine.chunking`` code the batched engine
uses, sends each chunk as compact FLAC to its own container (bounded by
``max_containers``), and merges the results with continuous timestamps. Each chunk gets
the normal deadline, retry, breaker and fallback. Requests that deliver results to S3 or
a webhook are not split (one job, one delivery).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

import attrs

from whisper_modal.backends.base import JobStatus, Request, future_result, future_status
from whisper_modal.config import Settings
from whisper_modal.errors import JobNotFound
from whisper_modal.results import Transcript

__all__ = ["FANOUT_JOB_PREFIX", "Chunk", "FanoutJobs", "merge", "merge_transcripts", "plan_fanout"]

SAMPLE_RATE = 16000  # Hz


@attrs.frozen
class Chunk:
    """One piece of a fanned-out request."""

    index: int
    offset: float  # seconds from the start of the original audio
    request: Request


def plan_fanout(request: Request, settings: Settings) -> list[Chunk] | None:
    """The chunks to send, or None when the request should go as one call."""
    if request.audio is None or request.output is not None or request.webhook_url is not None:
        return None
    try:
        from whisper_modal.audio import decode_audio, encode_flac, probe_duration
        from whisper_modal.engine.chunking import plan_chunks
    except ImportError:  # a client-only install cannot decode: send as one call
        return None
    try:
        seconds = probe_duration(request.audio)
    except Exception:  # the decoder is missing or the header unreadable: one call
        return None
    # ~16 kB/s is a generous upper bound for compressed speech: skip decoding short files
    if seconds is not None and seconds <= settings.fanout_seconds:
        return None
    if seconds is None and len(request.audio) < settings.fanout_seconds * 2_000:
        return None
    samples = decode_audio(request.audio, max_seconds=settings.max_audio_seconds)
    if samples.shape[0] / SAMPLE_RATE <= settings.fanout_seconds:
        return None
    chunk_seconds = min(settings.fanout_chunk_seconds, settings.fanout_seconds)
    base = request.client_job_id or "wm"
    chunks: list[Chunk] = []
    for window in plan_chunks(samples, target_seconds=chunk_seconds):
        if window.silent:
            continue
        piece = Request(
            options=request.options,
            audio=encode_flac(samples[window.start : window.end]),
            client_job_id=f"{base}-c{len(chunks)}",
        )
        chunks.append(Chunk(len(chunks), window.offset, piece))
    return chunks or None


def merge(
    chunks: list[Chunk], results: list[dict[str, Any]], *, duration: float | None = None
) -> dict[str, Any]:
    """Merge per-chunk transcript dicts (in chunk order) into one."""
    from whisper_modal.engine.chunking import merge_results

    merged = merge_results([(c.offset, r) for c, r in zip(chunks, results, strict=True)])
    if duration is not None:
        merged["duration"] = max(float(merged.get("duration") or 0.0), duration)
    return merged


def merge_transcripts(request: Request, chunks: list[Chunk], parts: list[Transcript]) -> Transcript:
    """One transcript from the chunks' transcripts; ``backend`` lists where they ran."""
    data = merge(chunks, [p.to_dict() for p in parts])
    reasons = [p.fallback_reason for p in parts if p.fallback_reason]
    data.update(
        backend="+".join(sorted({p.backend for p in parts})),
        mode="+".join(sorted({p.mode for p in parts if p.mode})),
        fallback_reason=reasons[0] if reasons else None,
        job_id=request.client_job_id,
    )
    return Transcript.from_dict(data)


FANOUT_JOB_PREFIX = "fanout-"


class FanoutJobs:
    """Jobs whose chunks run on many containers, coordinated by a thread in this process.

    ``submit()`` of long audio returns one of these: the Job reports ``progress()`` as
    (chunks done, chunks total). Like local jobs, they live in the submitting process.
    """

    name = "fanout"
    _lock = threading.Lock()
    _jobs: ClassVar[dict[str, tuple[cf.Future[dict[str, Any]], list[int]]]] = {}
    _pool = cf.ThreadPoolExecutor(max_workers=4, thread_name_prefix="whisper-modal-fanout")

    def start(self, run_chunks: Callable[[Callable[[], None]], Transcript], total: int) -> str:
        """Run ``run_chunks(on_done)`` in the background; returns the job id."""
        job_id = FANOUT_JOB_PREFIX + uuid.uuid4().hex
        counter = [0, total]

        def tick() -> None:
            with self._lock:
                counter[0] += 1

        def work() -> dict[str, Any]:
            return run_chunks(tick).with_changes(job_id=job_id).to_dict()

        with self._lock:
            self._jobs[job_id] = (self._pool.submit(work), counter)
        return job_id

    def _get(self, job_id: str) -> tuple[cf.Future[dict[str, Any]], list[int]]:
        with self._lock:
            found = self._jobs.get(job_id)
        if found is None:
            raise JobNotFound(
                f"no fan-out job {job_id} in this process (they live in the submitting process)",
                job_id=job_id,
            )
        return found

    def progress(self, job_id: str) -> tuple[int, int]:
        """(chunks done, chunks total)."""
        _, counter = self._get(job_id)
        with self._lock:
            return counter[0], counter[1]

    def status(self, job_id: str) -> JobStatus:
        """Pending, running, succeeded, failed or cancelled."""
        return future_status(self._get(job_id)[0])

    def result(self, job_id: str, *, timeout: float | None) -> dict[str, Any]:
        """Wait for the merged transcript dict."""
        return future_result(self._get(job_id)[0], job_id, timeout)

    async def aresult(self, job_id: str, *, timeout: float | None) -> dict[str, Any]:
        """Await the merged transcript dict without blocking the loop."""
        return await asyncio.to_thread(self.result, job_id, timeout=timeout)

    def cancel(self, job_id: str) -> None:
        """Cancel a job that has not started (chunks already sent keep running)."""
        self._get(job_id)[0].cancel()
