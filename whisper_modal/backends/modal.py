"""The Modal backend: look the deployed class up by name and call it under SDK deadlines.

Modal's client retries an unreachable server for about a minute and waits on a hung one
for minutes, with no public knob; so every call here is an ``.aio`` coroutine awaited
under our own ``asyncio.timeout`` (the first call also spends up to ``connect_timeout`` on the
lookup). Every method is a coroutine: the client's sync API runs them on its loop thread
(``whisper_modal._loop``), so an abandoned call is cancelled, never left waiting.

The lookup seams are ``cls_lookup`` (``modal.Cls.from_name``), ``function_lookup``
(``modal.Function.from_name``, the fan-out orchestrator), ``call_lookup``
(``modal.FunctionCall.from_id``) and ``dict_lookup`` (``modal.Dict.from_name``, the job
book): tests inject the in-process fake there.

Every spawn claims its ``client_job_id`` in the app's job book (``job_book``), and so
does the container before it runs: a retried spawn whose first attempt Modal had in fact
accepted returns (or reads) that first call, so one request runs at most once.

Results cross as plain dicts (``Transcript.to_dict()``) and become typed here, the only
place on the client side that sees the wire.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import modal
import modal.exception as modal_exception
from modal.types import InputStatus

from whisper_modal.backends.base import JobStatus, Submission
from whisper_modal.backends.modal_transport import (
    audio_seconds_hint,
    fail_fast,
    server_urls,
    spawn_deadline,
    stage_large_audio,
)
from whisper_modal.config import Settings
from whisper_modal.errors import (
    BackendUnavailable,
    JobCancelled,
    JobExpired,
    JobNotFound,
    JobTimeout,
    TransientError,
    WhisperModalError,
    error_from_dict,
    map_modal_error,
)
from whisper_modal.job_book import JobBook, JobRecord
from whisper_modal.options import require_known_model
from whisper_modal.results import Transcript
from whisper_modal.wire import Request

__all__ = ["ModalBackend", "PackedModal"]

log = logging.getLogger("whisper_modal.backends.modal")


class _NotFinished(TransientError):
    """``FunctionCall.get`` said "not finished yet" (a call retries it, a job poll waits)."""


T = TypeVar("T")
_RESULT_CACHE = 256  # finished results kept per backend (status() then result() = one fetch)
FANOUT_FUNCTION = "fanout"  # the app's orchestrator of long-audio jobs (app.fanout)
FUNCTION_KEY = "function:"  # marks a function's name among the looked-up handles
LATE_RESULT_SECONDS = 1.0  # after a cancel, how long a result that was being written may take


async def _within(
    work: Awaitable[T], seconds: float | None, expired: Callable[[], WhisperModalError]
) -> T:
    """Await ``work`` for at most ``seconds``; on expiry raise ``expired()``.

    Unlike ``asyncio.wait_for``, a ``TimeoutError`` raised *by* the work (a remote one, or
    ``FunctionCall.get`` saying "not ready") propagates unchanged: only our own deadline
    becomes ``expired()``.
    """
    scope = asyncio.timeout(seconds)
    try:
        async with scope:
            return await work
    except TimeoutError as exc:
        if scope.expired():
            raise expired() from exc
        raise


class ModalBackend:
    """Calls the deployed ``Transcriber`` class; see the module docstring.

    Args:
        settings: app/class/environment names and deadlines (``connect_timeout`` bounds the
            first lookup; each call gets its own ``timeout``).
        gpu: run on this GPU instead of the deployed one (``Cls.with_options``). Modal
            autoscales every option variant as a separate pool, so only pass it to override.
        remote_timeout: container-side timeout in seconds instead of the deployed one.
    """

    name = "modal"

    def __init__(
        self,
        settings: Settings,
        *,
        gpu: str | None = None,
        remote_timeout: int | None = None,
    ) -> None:
        self.settings = settings
        self._overrides: dict[str, Any] = {
            k: v for k, v in (("gpu", gpu), ("timeout", remote_timeout)) if v is not None
        }
        self._book: JobBook | None = None
        self._lock = threading.Lock()
        self._handles: dict[str, Any] = {}
        self._hydrated: set[str] = set()
        self._instances: dict[tuple[str, str], Any] = {}
        self._results: collections.OrderedDict[str, Transcript] = collections.OrderedDict()

    # ------------------------------------------------------------------ lookup

    def _lookup(self, name: str) -> Any:
        """The lazy handle of a class of the app, or of a function (``FUNCTION_KEY`` + name)."""
        with self._lock:
            if name not in self._handles:
                s = self.settings
                handle: Any
                if name.startswith(FUNCTION_KEY):
                    handle = modal.Function.from_name(
                        s.app_name, name.removeprefix(FUNCTION_KEY),
                        environment_name=s.environment_name,
                    )  # fmt: skip
                else:
                    handle = modal.Cls.from_name(
                        s.app_name, name, environment_name=s.environment_name
                    )
                    # with_options is lazy too: still no network until the first call
                    if self._overrides:
                        handle = handle.with_options(**self._overrides)
                self._handles[name] = handle
            return self._handles[name]

    async def _hydrate(self, name: str) -> Any:
        handle = self._lookup(name)
        if name not in self._hydrated:
            # Modal's client is still retrying behind an expired lookup: retrying it again
            # would only multiply the wait, so report "unavailable" (falls back in auto mode).
            # a refused port or failed DNS answers in milliseconds, not after modal's retries
            lookup = fail_fast(handle.hydrate.aio, server_urls(), self.settings.connect_timeout)
            await _within(
                lookup,
                self.settings.connect_timeout,
                lambda: BackendUnavailable(
                    f"Modal did not answer the lookup of {self.settings.app_name!r} within "
                    f"{self.settings.connect_timeout:g} s",
                    fix="check the network / MODAL_SERVER_URL, or use backend='local'",
                ),
            )
            self._hydrated.add(name)
        return handle

    @staticmethod
    def _method_check(model: str) -> None:
        # the container serves only known names (and would fail in its enter hook)
        require_known_model(model)

    async def _method(self, model: str, method: str, class_name: str | None = None) -> Any:
        self._method_check(model)
        name = class_name or self.settings.class_name
        handle = await self._hydrate(name)
        with self._lock:
            instance = self._instances.get((name, model))
            if instance is None:
                instance = self._instances[(name, model)] = handle(model=model)
        return getattr(instance, method)

    async def _guard(self, work: Awaitable[T], *, job_id: str | None = None) -> T:
        try:
            return await work
        except WhisperModalError:
            raise
        except (Exception, modal_exception.InputCancellation) as exc:
            # InputCancellation is a BaseException in modal (so user code cannot swallow it)
            raise map_modal_error(exc, job_id=job_id) from exc

    # ------------------------------------------------------------------ calls

    async def atranscribe(
        self, request: Request, *, timeout: float, packed: bool = False
    ) -> Transcript:
        """Run one request remotely, waiting at most ``timeout`` seconds for its result.

        The call is ``spawn`` + ``FunctionCall.get`` rather than ``.remote``, so that when
        the deadline passes (or the caller gives up: a cancelled task, a failed sibling in
        ``transcribe_many``) the input is cancelled on Modal (``FunctionCall.cancel``)
        before any retry or fallback: ``.remote`` sends no cancellation, and the abandoned
        input would run (and deliver) on a GPU up to the app's timeout. ``packed=True``
        sends the request to the ``@modal.batched`` class, whose short inputs Modal
        gathers from concurrent calls; it is spawned and cancelled the same way. Audio
        longer than ``fanout_seconds`` goes to the app's orchestrator, as a submit does
        (one fan-out path: the container splits it over GPU containers, so a client needs
        no decoder), and this waits on the orchestrator's call.
        """

        async def work() -> Transcript:
            if packed:
                name, cls = "transcribe_packed", self.settings.packed_class_name
                method = await self._method(request.options.model, name, cls)
                call = await self._start(method, request)
            elif self.fans_out(request):
                call = await self._start_fanout(request)
            else:
                # no claim from here: the container claims the client id before it runs
                # (a duplicate input answers ``duplicate_of``, which ``_get`` follows), so
                # a blocking call costs Modal's two round trips, not a third for the book
                method = await self._method(request.options.model, "transcribe")
                call = await self._spawn(method, request)
            try:
                result = await self._get(call, timeout)
            except BaseException as exc:
                # Deadline, a dropped connection while waiting, or a caller that gave up:
                # the input may still run, so stop it before anyone retries or falls back,
                # and free its client id for the retry. (Cancelling a call that already
                # finished or failed changes nothing.)
                await self._cancel_quietly(call)
                late = await self._finished(call) if isinstance(exc, Exception) else None
                if late is None:  # an input that finished as the deadline passed is kept
                    await self._release(request, call)
                    raise
                result = late
            if "error" in result:  # a per-item failure inside a packed batch
                raise error_from_dict(result["error"])
            return Transcript.from_dict(result)

        return await self._guard(work())

    async def _spawn(self, method: Any, request: Request, *extra: Any) -> Any:
        """Spawn ``request`` (large audio staged first); the deadline grows with the upload."""
        staged = await stage_large_audio(request, self.settings)
        return await _within(
            method.spawn.aio(staged.to_wire(), *extra),
            spawn_deadline(staged.size_bytes, self.settings),
            lambda: TransientError("Modal did not accept the call in time"),
        )

    async def _start(self, method: Any, request: Request, *extra: Any) -> Any:
        """Spawn, then claim the client id: the call that owns it (an earlier one wins).

        A retried spawn whose first attempt Modal had accepted gets that first call back,
        and its own duplicate input is cancelled (its container would not run it anyway).
        """
        call = await self._spawn(method, request, *extra)
        client_job_id = request.client_job_id
        if client_job_id is None:
            return call
        owner = await self._book_call(lambda b: b.claim(client_job_id, str(call.object_id)))
        if owner is None or owner == call.object_id:
            return call
        log.info(
            "a retried submit found its first attempt",
            extra={"event": "submit_deduplicated", "job_id": owner},
        )
        await self._cancel_quietly(call)
        first = modal.FunctionCall.from_id(str(owner))
        # ``FunctionCall.from_id`` is lazy: its ``object_id`` (the job id a submit returns)
        # exists once hydrated, which for a call id needs no RPC
        await first.hydrate.aio()
        return first

    async def _start_fanout(self, request: Request) -> Any:
        """Spawn the app's orchestrator (``fanout``) for long audio; see ``_start``."""
        self._method_check(request.options.model)
        method = await self._hydrate(FUNCTION_KEY + FANOUT_FUNCTION)
        chunk = min(self.settings.fanout_chunk_seconds, self.settings.fanout_seconds)
        return await self._start(method, request, chunk)

    async def _release(self, request: Request, call: Any) -> None:
        client_job_id = request.client_job_id
        if client_job_id is not None:
            await self._book_call(lambda b: b.release(client_job_id, str(call.object_id)))

    # ------------------------------------------------------------------ job book

    def _job_book(self) -> JobBook:
        with self._lock:
            if self._book is None:
                s = self.settings
                store = modal.Dict.from_name(
                    s.jobs_dict_name, environment_name=s.environment_name, create_if_missing=True
                )
                self._book = JobBook(store)
            return self._book

    async def _book_call(self, action: Callable[[JobBook], T]) -> T | None:
        """One job-book operation within ``connect_timeout``; None when the Dict fails.

        Best effort on purpose: the book makes retries idempotent and shows progress, and
        an outage of it must not fail a transcription (the container claims again).
        """
        book = self._job_book()
        try:
            return await _within(
                asyncio.to_thread(action, book),
                self.settings.connect_timeout,
                lambda: TransientError("the job book did not answer in time"),
            )
        except Exception as exc:
            log.warning(
                "job book unavailable",
                extra={"event": "job_book_failed", "error": type(exc).__name__},
            )
            return None

    async def arecent(self, limit: int = 20) -> list[JobRecord]:
        """The app's newest job records (``whisper-modal jobs``); empty when there are none.

        Unlike the book's writes, a listing that fails raises: an empty list would read
        as "no jobs" when the truth is "unknown".

        Raises:
            TransientError: the job book did not answer within ``connect_timeout``.
            BackendUnavailable: Modal refused (no credentials, app not deployed, ...).
        """
        return await self._book_read(lambda b: b.recent(limit))

    async def arecord(self, job_id: str) -> JobRecord | None:
        """The job book's record of ``job_id``; None: this app never recorded such a job.

        Raises:
            TransientError: the job book did not answer within ``connect_timeout``.
            BackendUnavailable: Modal refused (no credentials, app not deployed, ...).
        """
        return await self._book_read(lambda b: b.get(job_id))

    async def _book_read(self, action: Callable[[JobBook], T]) -> T:
        """A job-book read whose answer matters: it raises rather than guess."""
        book = self._job_book()
        seconds = self.settings.connect_timeout
        read = _within(
            asyncio.to_thread(action, book),
            seconds,
            lambda: TransientError(f"the job book did not answer within {seconds:g} s"),
        )
        return await self._guard(read)

    def fans_out(self, request: Request) -> bool:
        """Whether ``request`` goes to the app's orchestrator (long, splittable audio)."""
        return audio_seconds_hint(request, self.settings) > self.settings.fanout_seconds

    async def _get(self, call: Any, timeout: float | None) -> dict[str, Any]:
        """``call.get`` within ``timeout``; a terminated input is ``JobCancelled``.

        Raises:
            TransientError: not finished within ``timeout``. JobCancelled: terminated.
        """
        # ``get`` has its own timeout; ours is a backstop against a hung connection.
        backstop = None if timeout is None else timeout + self.settings.connect_timeout
        try:
            result: dict[str, Any] = await _within(
                call.get.aio(timeout=timeout),
                backstop,
                lambda: TransientError(f"no result from Modal within {timeout:g} s"),
            )
            if "duplicate_of" in result:  # this input did not run: another call owns its id
                return await self._get(
                    modal.FunctionCall.from_id(str(result["duplicate_of"])), timeout
                )
        except TimeoutError as exc:
            if type(exc) is not TimeoutError:  # a subclass means something else: map it
                raise
            # the builtin TimeoutError is how ``get`` says "not finished yet"
            raise _NotFinished(f"no result from Modal within {timeout:g} s") from exc
        except modal_exception.RemoteError as exc:
            # A cancelled input's result is TERMINATED, which modal's client turns into a
            # RemoteError without data; the call graph keeps the status itself.
            if await self._terminated(call):
                job_id = str(call.object_id)
                raise JobCancelled(f"job {job_id} was cancelled", job_id=job_id) from exc
            raise
        return result

    async def _finished(self, call: Any) -> dict[str, Any] | None:
        """The call's result if it has one now (after a cancel that came too late), else None."""
        try:
            return await self._get(call, LATE_RESULT_SECONDS)
        except Exception:  # not finished, failed or terminated: the caller's error stands
            return None

    async def _terminated(self, call: Any) -> bool:
        """True when the job book, or else Modal's call graph, says the call was cancelled."""
        call_id = str(call.object_id)
        record = await self._book_call(lambda b: b.get(call_id))
        if record is not None and record.final:
            return record.status == "cancelled"
        node = await self._graph_node(call)  # e.g. cancelled elsewhere while still queued
        return node is not None and getattr(node, "status", None) == InputStatus.TERMINATED

    async def _graph_node(self, call: Any) -> Any | None:
        """The call's own input in Modal's call graph (a cross-check only), or None.

        The graph holds root inputs, with a call spawned inside a container (the web
        function's jobs, the orchestrator's pieces) nested under its parent's input; a
        child whose parent is past retention is missing. Modal calls it best effort.
        """
        try:
            graph = await _within(
                call.get_call_graph.aio(),
                self.settings.connect_timeout,
                lambda: TransientError("no call graph in time"),
            )
        except Exception:  # best effort: without a graph, nothing is known
            return None
        pending = list(graph)
        while pending:
            node = pending.pop()
            if getattr(node, "function_call_id", None) == call.object_id:
                return node
            pending.extend(getattr(node, "children", None) or ())
        return None

    async def _cancel_quietly(self, call: Any) -> None:
        """Cancel an abandoned call; never raises (the caller's own error matters more)."""
        try:
            await asyncio.shield(
                _within(
                    call.cancel.aio(),
                    self.settings.connect_timeout,
                    lambda: TransientError("no answer to the cancellation"),
                )
            )
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            log.warning(
                "could not cancel an abandoned Modal call",
                extra={"event": "cancel_failed", "error": type(exc).__name__},
            )

    async def asubmit(self, request: Request) -> Submission:
        """Spawn the request and return the FunctionCall id (the job id).

        Audio longer than ``fanout_seconds`` goes to the app's orchestrator function
        (``app.fanout``), which splits it over many GPU containers; its call id is the job
        id, so either kind of job re-attaches from any process.
        """

        async def work() -> Submission:
            kind = "fanout" if self.fans_out(request) else "single"
            if kind == "fanout":
                call = await self._start_fanout(request)
            else:
                method = await self._method(request.options.model, "transcribe")
                call = await self._start(method, request)
            job_id, client_job_id = str(call.object_id), request.client_job_id
            await self._book_call(
                lambda b: b.submitted(job_id, kind=kind, client_job_id=client_job_id)
            )
            return Submission(job_id)

        return await self._guard(work())

    # ------------------------------------------------------------------ jobs

    def _remember(self, job_id: str, result: Transcript) -> Transcript:
        with self._lock:
            self._results[job_id] = result
            while len(self._results) > _RESULT_CACHE:
                self._results.popitem(last=False)
        return result

    def _cached(self, job_id: str) -> Transcript | None:
        with self._lock:
            return self._results.get(job_id)

    async def aresult(self, job_id: str, *, timeout: float | None) -> Transcript:
        """Wait up to ``timeout`` seconds for the job (0 polls; None waits forever)."""
        cached = self._cached(job_id)
        if cached is not None:
            return cached

        async def work() -> Transcript:
            call = modal.FunctionCall.from_id(job_id)
            try:
                result = await self._get(call, timeout)
            except _NotFinished as exc:
                raise JobTimeout(
                    f"job {job_id} not finished after {timeout} s", job_id=job_id
                ) from exc.__cause__
            return self._remember(job_id, Transcript.from_dict(result).with_changes(job_id=job_id))

        return await self._guard(work(), job_id=job_id)

    async def astatus(self, job_id: str) -> JobStatus:
        """Poll the job once: finished (with its outcome) or still waiting/running."""
        try:
            await self.aresult(job_id, timeout=0)
        except JobTimeout:
            return await self._running_or_pending(job_id)
        except JobCancelled:
            return JobStatus.CANCELLED
        except WhisperModalError as exc:
            if isinstance(exc, JobExpired):
                return JobStatus.EXPIRED
            if isinstance(exc, JobNotFound | BackendUnavailable | TransientError):
                raise
            return JobStatus.FAILED
        return JobStatus.SUCCEEDED

    async def _running_or_pending(self, job_id: str) -> JobStatus:
        """An unfinished call: cancelled or running from its record, else the call graph.

        A call cancelled while its container runs on has no result yet; the canceller's
        record says "cancelled" (and ``JobBook.start`` keeps it so when the container
        starts late).
        """
        record = await self._book_call(lambda b: b.get(job_id))
        if record is not None and record.status == "cancelled":
            return JobStatus.CANCELLED
        if record is not None and record.status == "running":
            return JobStatus.RUNNING
        # "pending" is cross-checked with the call graph
        node = await self._graph_node(modal.FunctionCall.from_id(job_id))
        # a container took the input when its task id is set; without a node: pending
        return JobStatus.RUNNING if getattr(node, "task_id", "") else JobStatus.PENDING

    async def acancel(self, job_id: str) -> None:
        """Cancel the job's input (a finished job is left alone)."""

        async def work() -> None:
            call = modal.FunctionCall.from_id(job_id)
            await _within(
                call.cancel.aio(),
                self.settings.connect_timeout,
                lambda: TransientError(f"Modal did not confirm cancelling job {job_id} in time"),
            )
            # a queued input has no container to record it: the canceller does
            await self._book_call(lambda b: b.cancelled(job_id))

        await self._guard(work(), job_id=job_id)

    async def aprogress(self, job_id: str) -> tuple[int, int] | None:
        """(chunks done, total) of a fan-out job, from the job book; None for a single job
        (or a fan-out job whose audio is not split yet)."""
        record = await self._book_call(lambda b: b.get(job_id))
        if record is None or record.kind != "fanout" or record.total == 0:
            return None
        return record.done, record.total

    # ------------------------------------------------------------------ health

    async def ahealth(self, *, model: str | None = None, timeout: float = 120.0) -> dict[str, Any]:
        """Ask a container for its health report (starts one if none is warm)."""

        async def work() -> dict[str, Any]:
            method = await self._method(model or self.settings.model, "health")
            report: dict[str, Any] = await _within(
                method.remote.aio(),
                timeout,
                lambda: TransientError(f"no health report within {timeout:g} s"),
            )
            return report

        return await self._guard(work())


class PackedModal:
    """The ``@modal.batched`` class as a backend (``transcribe_many(pack=True)``).

    Concurrent short inputs are collected by Modal into one container call and decoded in
    shared forward passes; jobs are submitted to the plain class as usual.
    """

    name = "modal"

    def __init__(self, modal: ModalBackend) -> None:
        self.modal = modal

    async def atranscribe(self, request: Request, *, timeout: float) -> Transcript:
        """Run ``request`` on the batched class."""
        return await self.modal.atranscribe(request, timeout=timeout, packed=True)

    async def asubmit(self, request: Request) -> Submission:
        """Submit to the plain class (packing is for calls waited on together)."""
        return await self.modal.asubmit(request)
