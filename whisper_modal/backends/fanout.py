"""Long-audio fan-out of blocking calls: split at pauses, transcribe on many containers, merge.

For a blocking ``transcribe()`` of audio longer than ``settings.fanout_seconds`` sent to
Modal, the client decodes it (needs the ``[local]`` extra's decoder, not the model), cuts
it into pieces of at most ``fanout_chunk_seconds`` (``engine.splitting``, the cutter the
app's orchestrator uses too), sends each piece as compact FLAC through the whole policy
chain below (deadline, retry, breaker, fallback; bounded by ``max_containers``), and merges
the transcripts with continuous timestamps. Requests that deliver results to S3 or a
webhook are not split here (one call, one delivery), nor are diarized ones (chunk-local
speaker labels would disagree).

Submitted jobs do not fan out here: ``ModalBackend.asubmit`` hands long audio to the
app's orchestrator function, so the job lives on Modal and re-attaches from anywhere.
"""

from __future__ import annotations

import asyncio

import attrs

from whisper_modal.audio_header import known_seconds
from whisper_modal.backends.base import Backend, Request, Submission
from whisper_modal.concurrency import arun_many
from whisper_modal.config import Settings
from whisper_modal.results import Transcript

__all__ = ["Chunk", "FanoutBackend", "audio_seconds_hint", "plan_fanout"]

# ~16 kB/s is a generous upper bound for compressed speech: a file smaller than this many
# bytes per second of the fan-out threshold is too short to split, without decoding it
_MIN_BYTES_PER_SECOND = 2_000


@attrs.frozen
class Chunk:
    """One piece of a fanned-out request."""

    index: int
    offset: float  # seconds from the start of the original audio
    request: Request


def audio_seconds_hint(request: Request, settings: Settings) -> float:
    """The audio's length from its header, for deciding whether to fan out (no decoding).

    Returns ``0.0`` for a request that must not be split whatever its length: S3 input
    (its length is unknown here), or options that need the whole recording
    (``TranscribeOptions.splittable``: diarization, ``multichannel``). WAV and FLAC
    headers are read without any decoder installed; other formats need soundfile.
    Without a length (raw MP3, m4a, no soundfile) the size decides: ``inf`` when the
    bytes could hold more than ``fanout_seconds``, else ``0.0``.
    """
    if request.audio is None or not request.options.splittable:
        return 0.0
    seconds = known_seconds(request.audio)
    if seconds is not None:
        return seconds
    if len(request.audio) < settings.fanout_seconds * _MIN_BYTES_PER_SECOND:
        return 0.0
    return float("inf")


def plan_fanout(request: Request, settings: Settings) -> list[Chunk] | None:
    """The chunks to send, or None when the request should go as one call (blocking)."""
    if request.output is not None or request.webhook_url is not None:
        return None
    if audio_seconds_hint(request, settings) <= settings.fanout_seconds:
        return None
    try:
        from whisper_modal.engine.audio import can_decode, decode_audio
        from whisper_modal.engine.constants import SAMPLE_RATE
        from whisper_modal.engine.splitting import split_for_fanout
    except ImportError:  # a client-only install cannot decode: send as one call
        return None
    if not can_decode():  # no soundfile/soxr (client-only, the web image): one call
        return None
    assert request.audio is not None  # audio_seconds_hint said so
    samples = decode_audio(request.audio, max_seconds=settings.max_audio_seconds)
    if samples.shape[0] / SAMPLE_RATE <= settings.fanout_seconds:
        return None
    chunk_seconds = min(settings.fanout_chunk_seconds, settings.fanout_seconds)
    base = request.client_job_id or "wm"
    pieces = split_for_fanout(samples, request.options, chunk_seconds=chunk_seconds)
    chunks = [
        Chunk(
            p.index,
            p.offset,
            Request(options=request.options, audio=p.audio, client_job_id=f"{base}-c{p.index}"),
        )
        for p in pieces
    ]
    return chunks or None


class FanoutBackend:
    """Splits long audio of blocking calls over ``inner`` (the policy chain).

    Args:
        inner: the chain each chunk goes through.
        settings: thresholds (``fanout_seconds``, ``fanout_chunk_seconds``) and the bound
            on chunks in flight (``max_containers``).
    """

    def __init__(self, inner: Backend, settings: Settings) -> None:
        self.inner = inner
        self.name = inner.name
        self.settings = settings

    async def atranscribe(self, request: Request, *, timeout: float) -> Transcript:
        """Transcribe, in chunks when the audio is long enough."""
        chunks = await asyncio.to_thread(plan_fanout, request, self.settings)
        if not chunks:
            return await self.inner.atranscribe(request, timeout=timeout)
        from whisper_modal.engine.chunking import merge_transcripts

        parts = await arun_many(
            lambda c: self.inner.atranscribe(c.request, timeout=timeout),
            chunks,
            concurrency=min(len(chunks), self.settings.max_containers),
            desc="chunks",
        )
        merged = merge_transcripts(
            [(c.offset, p) for c, p in zip(chunks, parts, strict=True)]  # type: ignore[misc]
        )
        return merged.with_changes(job_id=request.client_job_id)

    async def asubmit(self, request: Request) -> Submission:
        """Submit as one job: the Modal backend hands long audio to the app's orchestrator."""
        return await self.inner.asubmit(request)
