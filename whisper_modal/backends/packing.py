"""Concurrent short local calls share one batched pass: the local twin of ``PackedTranscriber``.

While another local call is in flight, a short plain call (inline audio of at most
``PACK_MAX_BYTES``, no S3 input, no result delivery, no webhook) waits up to
``PACK_WAIT`` seconds for company with the same options; the group then runs as one
``Service.handle_packed`` (``Engine.transcribe_packed``: one stream per input, decoded
in shared forward passes) on the call pool, and each caller gets its own transcript or
typed error. A lone call never waits, and a group is at most ``PACK_MAX`` calls.

A caller who leaves (a cancelled task) gives up its place; the pass stops only when every
member has left, or at the latest member's deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import time
from collections.abc import Callable

from whisper_modal.engine.turns import Work, running
from whisper_modal.errors import BackendUnavailable, WhisperModalError, map_engine_error
from whisper_modal.results import Transcript
from whisper_modal.service import Service
from whisper_modal.wire import Request

__all__ = ["PACK_MAX", "PACK_MAX_BYTES", "PACK_WAIT", "Packer"]

#: seconds a call waits for others to share its pass (only while another call runs)
PACK_WAIT = 0.05
#: calls in one pass (the CPU batch size of ``engine.batching``)
PACK_MAX = 8
#: encoded bytes of a call that may be packed (about 30 s of 16 kHz 16-bit WAV)
PACK_MAX_BYTES = 1024 * 1024

Outcome = Transcript | WhisperModalError


class _Group:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.requests: list[Request] = []
        self.slots: list[asyncio.Future[Outcome]] = []
        self.work = Work()
        self.launched = False

    def add(self, request: Request, timeout: float) -> asyncio.Future[Outcome]:
        slot: asyncio.Future[Outcome] = self.loop.create_future()
        self.requests.append(request)
        self.slots.append(slot)
        deadline = time.monotonic() + timeout
        if self.work.deadline is None or deadline > self.work.deadline:
            self.work.deadline = deadline
        return slot

    def leave(self) -> None:
        if all(s.cancelled() for s in self.slots):
            self.work.cancel()  # nobody waits for this pass any more


class Packer:
    """Groups concurrent short calls by their options and runs each group as one pass.

    Args:
        service: runs ``handle_packed``.
        submit: puts a function on the call pool (``ThreadPoolExecutor.submit``).
    """

    def __init__(
        self,
        service: Service,
        submit: Callable[[Callable[[], list[Outcome]]], cf.Future[list[Outcome]]],
    ) -> None:
        self._service = service
        self._submit = submit
        self._open: dict[tuple[int, str], _Group] = {}

    @staticmethod
    def packable(request: Request) -> bool:
        """A short plain call: inline audio, nothing delivered, decodable in windows."""
        return (
            request.audio is not None
            and len(request.audio) <= PACK_MAX_BYTES
            and request.output is None
            and request.webhook_url is None
            and request.options.splittable
        )

    async def atranscribe(self, request: Request, *, timeout: float) -> Transcript:
        """Transcribe ``request`` in a shared pass.

        Raises:
            WhisperModalError: this call's own failure (the others' do not touch it).
        """
        loop = asyncio.get_running_loop()
        key = (id(loop), request.options.pass_key())
        group = self._open.get(key)
        if group is None:
            group = self._open[key] = _Group(loop)
            loop.call_later(PACK_WAIT, self._launch, key, group)
        slot = group.add(request, timeout)
        if len(group.requests) >= PACK_MAX:
            self._launch(key, group)
        try:
            outcome = await slot
        except asyncio.CancelledError:
            group.leave()
            raise
        if isinstance(outcome, WhisperModalError):
            raise outcome
        return outcome

    def _launch(self, key: tuple[int, str], group: _Group) -> None:
        if self._open.get(key) is group:
            del self._open[key]
        if group.launched:
            return
        group.launched = True
        wires = [r.to_wire() for r in group.requests]

        def run() -> list[Outcome]:
            with running(group.work):
                return self._service.handle_packed(wires)

        future = self._submit(run)
        future.add_done_callback(
            lambda done: group.loop.call_soon_threadsafe(self._settle, group, done)
        )

    @staticmethod
    def _settle(group: _Group, done: cf.Future[list[Outcome]]) -> None:
        try:
            outcomes: list[Outcome] = done.result()
        except cf.CancelledError:  # the pool shut down before the pass began
            outcomes = [BackendUnavailable("the local engine was closed")] * len(group.slots)
        except Exception as exc:  # the pass itself failed
            outcomes = [map_engine_error(exc)] * len(group.slots)
        for slot, outcome in zip(group.slots, outcomes, strict=True):
            if not slot.done():
                slot.set_result(outcome)
