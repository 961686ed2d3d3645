"""Long-audio fan-out: split at pauses, transcribe the chunks on many containers, merge.

For audio longer than ``settings.fanout_seconds`` sent to Modal, the client decodes it
(needs the ``[local]`` extra's decoder, not the model), cuts it into chunks of at most
``fanout_chunk_seconds`` at pauses with the same ``engine.chunking`` code the batched engine
uses, sends each chunk as compact FLAC through the whole policy chain below (deadline,
retry, breaker, fallback; bounded by ``max_containers``), and merges the transcripts with
continuous timestamps. Requests that deliver results to S3 or a webhook are not split (one
job, one delivery), nor are diarized ones (chunk-local speaker labels would disagree).
A submitted fan-out job (``fanout-<hex>``) runs on the client's loop
and lives in the process registry: ``Job.progress()`` reports chunks done / total.
"""

from __future__ import annotations

import asyncio
import uuid

import attrs

from whisper_modal._loop import LoopThread
from whisper_modal.backends.base import FANOUT_JOB_PREFIX, Backend, Request, Submission
from whisper_modal.backends.registry import in_process_jobs
from whisper_modal.concurrency import arun_many
from whisper_modal.config import Settings
from whisper_modal.results import Transcript

__all__ = ["Chunk", "FanoutBackend", "plan_fanout"]

# ~16 kB/s is a generous upper bound for compressed speech: a file smaller than this many
# bytes per second of the fan-out threshold is too short to split, without decoding it
_MIN_BYTES_PER_SECOND = 2_000


@attrs.frozen
class Chunk:
    """One piece of a fanned-out request."""

    index: int
    offset: float  # seconds from the start of the original audio
    request: Request


def plan_fanout(request: Request, settings: Settings) -> list[Chunk] | None:
    """The chunks to send, or None when the request should go as one call (blocking)."""
    if request.audio is None or request.output is not None or request.webhook_url is not None:
        return None
    if request.options.diarize:  # speakers must be clustered over the whole recording
        return None
    try:
        from whisper_modal.engine.audio import decode_audio, encode_flac, probe_duration
        from whisper_modal.engine.chunking import plan_chunks
        from whisper_modal.engine.constants import SAMPLE_RATE
    except ImportError:  # a client-only install cannot decode: send as one call
        return None
    try:
        seconds = probe_duration(request.audio)
    except Exception:  # the decoder is missing or the header unreadable: one call
        return None
    if seconds is not None and seconds <= settings.fanout_seconds:
        return None
    if seconds is None and len(request.audio) < settings.fanout_seconds * _MIN_BYTES_PER_SECOND:
        return None
    samples = decode_audio(request.audio, max_seconds=settings.max_audio_seconds)
    if samples.shape[0] / SAMPLE_RATE <= settings.fanout_seconds:
        return None
    chunk_seconds = min(settings.fanout_chunk_seconds, settings.fanout_seconds)
    base = request.client_job_id or "wm"
    chunks: list[Chunk] = []
    mask = None
    if request.options.vad:  # cut at the pauses the VAD hears, as the engine's streams are
        from whisper_modal.engine.vad import frame_speech_mask

        mask = frame_speech_mask(samples, threshold=request.options.vad_threshold)
    for window in plan_chunks(samples, target_seconds=chunk_seconds, mask=mask):
        if window.silent:
            continue
        piece = Request(
            options=request.options,
            audio=encode_flac(samples[window.start : window.end]),
            client_job_id=f"{base}-c{len(chunks)}",
        )
        chunks.append(Chunk(len(chunks), window.offset, piece))
    return chunks or None


class FanoutBackend:
    """Splits long audio over ``inner`` (the policy chain); short audio goes straight through.

    Args:
        inner: the chain each chunk goes through.
        settings: thresholds (``fanout_seconds``, ``fanout_chunk_seconds``) and the bound
            on chunks in flight (``max_containers``).
        loop: the client's loop thread, where submitted fan-out jobs run (so a job outlives
            the event loop of the caller that submitted it).
    """

    def __init__(self, inner: Backend, settings: Settings, loop: LoopThread) -> None:
        self.inner = inner
        self.name = inner.name
        self.settings = settings
        self._loop = loop

    async def _run(
        self, request: Request, chunks: list[Chunk], timeout: float, job_id: str | None = None
    ) -> Transcript:
        from whisper_modal.engine.chunking import merge_transcripts

        registry = in_process_jobs()
        parts = await arun_many(
            lambda c: self.inner.atranscribe(c.request, timeout=timeout),
            chunks,
            concurrency=min(len(chunks), self.settings.max_containers),
            desc="chunks",
            on_done=None if job_id is None else lambda: registry.tick(job_id),
        )
        merged = merge_transcripts(
            [(c.offset, p) for c, p in zip(chunks, parts, strict=True)]  # type: ignore[misc]
        )
        return merged.with_changes(job_id=job_id or request.client_job_id)

    async def atranscribe(self, request: Request, *, timeout: float) -> Transcript:
        """Transcribe, in chunks when the audio is long enough."""
        chunks = await asyncio.to_thread(plan_fanout, request, self.settings)
        if not chunks:
            return await self.inner.atranscribe(request, timeout=timeout)
        return await self._run(request, chunks, timeout)

    async def asubmit(self, request: Request) -> Submission:
        """Start a fan-out job for long audio (``fanout-<hex>``), else submit as one job."""
        chunks = await asyncio.to_thread(plan_fanout, request, self.settings)
        if not chunks:
            return await self.inner.asubmit(request)
        job_id = FANOUT_JOB_PREFIX + uuid.uuid4().hex
        future = self._loop.submit(self._run(request, chunks, self.settings.call_timeout, job_id))
        in_process_jobs().add(job_id, future, total=len(chunks))
        return Submission(job_id)
