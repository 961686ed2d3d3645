"""The Modal backend: look the deployed class up by name and call it under SDK deadlines.

Modal's client retries an unreachable server for about a minute and waits on a hung one
for minutes, with no public knob; so every call here is an ``.aio`` coroutine awaited
under our own ``asyncio.timeout``. Sync methods run that coroutine on a private
event-loop thread and wait for it, so a hung call never blocks a caller past its deadline
(the first call also spends up to ``connect_timeout`` on the lookup), and an abandoned
call is cancelled.

The lookup seam is ``cls_lookup`` (``modal.Cls.from_name``) and ``call_lookup``
(``modal.FunctionCall.from_id``): tests inject the in-process fake there.

Batch: ``map`` runs one ``.remote.aio`` per request on the private loop, at most
``concurrency`` at a time, and yields in input order (an error in place of a failed item).
Modal's own ``Function.map`` was not used: it cannot bound client-side concurrency (only
``max_containers`` on the server does), it has no per-item deadline, and it would bypass the
per-call mapping of errors. ``Client.transcribe_many`` adds retry/breaker/fallback per item.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from typing import Any, TypeVar

from whisper_modal.backends.base import JobStatus, Request
from whisper_modal.backends.modal_transport import (
    fail_fast,
    server_urls,
    spawn_deadline,
    stage_large_audio,
    upload_seconds,
)
from whisper_modal.config import Settings
from whisper_modal.errors import (
    BackendUnavailable,
    ConfigurationError,
    JobCancelled,
    JobTimeout,
    TransientError,
    WhisperModalError,
    error_from_dict,
    map_modal_error,
)

__all__ = ["ModalBackend"]

T = TypeVar("T")
_RESULT_CACHE = 256  # finished results kept per backend (status() then result() = one fetch)


class _LoopThread:
    """A private asyncio loop on a daemon thread, for running coroutines from sync code."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="whisper-modal-loop", daemon=True
                ).start()
                self._loop = loop
            return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> cf.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._ensure())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        future = self.submit(coro)
        done, _ = cf.wait([future], timeout)
        if not done:  # the inner deadline should fire first; this is a backstop
            future.cancel()
            raise TransientError(f"no answer from Modal within {timeout:g} s")
        return future.result()  # re-raises the coroutine's own error (JobTimeout included)


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
        cls_lookup: ``modal.Cls.from_name`` or a fake with the same signature.
        call_lookup: ``modal.FunctionCall.from_id`` or a fake.
        gpu: run on this GPU instead of the deployed one (``Cls.with_options``). Modal
            autoscales every option variant as a separate pool, so only pass it to override.
        remote_timeout: container-side timeout in seconds instead of the deployed one.
    """

    name = "modal"

    def __init__(
        self,
        settings: Settings,
        *,
        cls_lookup: Callable[..., Any] | None = None,
        call_lookup: Callable[[str], Any] | None = None,
        gpu: str | None = None,
        remote_timeout: int | None = None,
    ) -> None:
        import modal.exception

        self.settings = settings
        self._overrides: dict[str, Any] = {
            k: v for k, v in (("gpu", gpu), ("timeout", remote_timeout)) if v is not None
        }
        self._input_cancellation: type[BaseException] = modal.exception.InputCancellation
        # only the real client has a server to probe (a fake lookup never touches one)
        self._probe_server = cls_lookup is None
        self._cls_lookup = cls_lookup or modal.Cls.from_name
        self._call_lookup = call_lookup or modal.FunctionCall.from_id
        self._lock = threading.Lock()
        self._handles: dict[str, Any] = {}
        self._hydrated: set[str] = set()
        self._instances: dict[tuple[str, str], Any] = {}
        self._results: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._runner = _LoopThread()

    # ------------------------------------------------------------------ lookup

    def _cls(self, class_name: str) -> Any:
        with self._lock:
            if class_name not in self._handles:
                s = self.settings
                handle = self._cls_lookup(
                    s.app_name, class_name, environment_name=s.environment_name
                )
                # with_options is lazy too: still no network until the first call
                if self._overrides:
                    handle = handle.with_options(**self._overrides)
                self._handles[class_name] = handle
            return self._handles[class_name]

    async def _hydrate(self, class_name: str) -> Any:
        handle = self._cls(class_name)
        if class_name not in self._hydrated:
            # Modal's client is still retrying behind an expired lookup: retrying it again
            # would only multiply the wait, so report "unavailable" (falls back in auto mode).
            lookup = handle.hydrate.aio()
            if self._probe_server:  # a refused port or failed DNS answers in milliseconds
                lookup = fail_fast(lookup, server_urls(), self.settings.connect_timeout)
            await _within(
                lookup,
                self.settings.connect_timeout,
                lambda: BackendUnavailable(
                    f"Modal did not answer the lookup of {self.settings.app_name!r} within "
                    f"{self.settings.connect_timeout:g} s",
                    fix="check the network / MODAL_SERVER_URL, or use backend='local'",
                ),
            )
            self._hydrated.add(class_name)
        return handle

    async def _method(self, model: str, method: str, class_name: str | None = None) -> Any:
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
        except (Exception, self._input_cancellation) as exc:
            # InputCancellation is a BaseException in modal (so user code cannot swallow it)
            raise map_modal_error(exc, job_id=job_id) from exc

    def _sync(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        backstop = None if timeout is None else timeout + self.settings.connect_timeout + 5.0
        return self._runner.run(coro, backstop)

    # ------------------------------------------------------------------ calls

    async def atranscribe(
        self, request: Request, *, timeout: float, packed: bool = False
    ) -> dict[str, Any]:
        """Run one request remotely (``.remote.aio``) within ``timeout`` seconds.

        ``packed=True`` sends it to the ``@modal.batched`` class, which decodes concurrent
        short inputs together.
        """

        async def work() -> dict[str, Any]:
            if packed:
                cls, name = self.settings.batch_class_name, "transcribe_batch"
            else:
                cls, name = self.settings.class_name, "transcribe"
            method = await self._method(request.options.model, name, cls)
            staged = await stage_large_audio(request, self.settings)
            deadline = timeout + upload_seconds(staged.size_bytes)  # uploaded inside the call
            result: dict[str, Any] = await _within(
                method.remote.aio(staged.to_wire()),
                deadline,
                lambda: TransientError(f"no result from Modal within {timeout:g} s"),
            )
            if "error" in result:  # a per-item failure inside a packed batch
                raise error_from_dict(result["error"])
            return result

        return await self._guard(work())

    def transcribe(
        self, request: Request, *, timeout: float, packed: bool = False
    ) -> dict[str, Any]:
        """Sync twin of ``atranscribe`` (runs on the private loop, same deadline)."""
        backstop = timeout + 2 * upload_seconds(request.size_bytes)  # staging + the call
        return self._sync(self.atranscribe(request, timeout=timeout, packed=packed), backstop)

    async def asubmit(self, request: Request) -> str:
        """Spawn the request and return the FunctionCall id."""

        async def work() -> str:
            method = await self._method(request.options.model, "transcribe")
            staged = await stage_large_audio(request, self.settings)
            call = await _within(
                method.spawn.aio(staged.to_wire()),
                spawn_deadline(staged.size_bytes, self.settings),  # grows with the upload
                lambda: TransientError("Modal did not accept the job in time"),
            )
            return str(call.object_id)

        return await self._guard(work())

    def submit(self, request: Request) -> str:
        """Sync twin of ``asubmit``."""
        backstop = spawn_deadline(request.size_bytes, self.settings) + upload_seconds(
            request.size_bytes
        )
        return self._sync(self.asubmit(request), backstop)

    def map(
        self, requests: Iterable[Request], *, concurrency: int, timeout: float
    ) -> Iterator[dict[str, Any] | WhisperModalError]:
        """Transcribe many requests, at most ``concurrency`` at once, yielding in input order.

        Each item gets its own ``timeout`` (counted from when it starts, not from when it
        was queued). A failed item yields its typed error in its place; the others go on.
        Requests are read lazily, a bounded window ahead of the slowest unfinished item, so a
        long generator is never held in memory. Closing the iterator early cancels the rest.

        Args:
            requests: the requests, in the order results should come back.
            concurrency: the most calls in flight at once (>= 1).
            timeout: seconds each call may take.

        Yields:
            A transcript dict, or the ``WhisperModalError`` that item raised.

        Raises:
            ConfigurationError: ``concurrency`` is below 1.
        """
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be at least 1, got {concurrency}")
        gate = asyncio.Semaphore(concurrency)  # binds to the private loop on first use

        async def one(request: Request) -> dict[str, Any]:
            async with gate:
                return await self.atranscribe(request, timeout=timeout)

        # Up to 2x concurrency scheduled: a slow head item does not idle the other slots.
        window: collections.deque[cf.Future[dict[str, Any]]] = collections.deque()
        pending = iter(requests)
        exhausted = False
        try:
            while True:
                while not exhausted and len(window) < 2 * concurrency:
                    request = next(pending, None)
                    if request is None:
                        exhausted = True
                    else:
                        window.append(self._runner.submit(one(request)))
                if not window:
                    return
                outcome: dict[str, Any] | WhisperModalError
                try:
                    # Every step inside ``one`` has its own deadline, so this wait ends.
                    outcome = window.popleft().result()
                except WhisperModalError as exc:
                    outcome = exc
                yield outcome
        finally:
            for future in window:
                future.cancel()

    # ------------------------------------------------------------------ jobs

    def _remember(self, job_id: str, result: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._results[job_id] = result
            while len(self._results) > _RESULT_CACHE:
                self._results.popitem(last=False)
        return result

    def _cached(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._results.get(job_id)

    async def aresult(self, job_id: str, *, timeout: float | None) -> dict[str, Any]:
        """Wait up to ``timeout`` seconds for the job (0 polls; None waits forever)."""
        cached = self._cached(job_id)
        if cached is not None:
            return cached

        async def work() -> dict[str, Any]:
            call = self._call_lookup(job_id)
            # ``get`` has its own timeout; ours is a backstop against a hung connection.
            backstop = None if timeout is None else timeout + self.settings.connect_timeout
            try:
                result: dict[str, Any] = await _within(
                    call.get.aio(timeout=timeout),
                    backstop,
                    lambda: TransientError(f"Modal did not answer about job {job_id} in time"),
                )
            except TimeoutError as exc:
                if type(exc) is not TimeoutError:  # a subclass means something else: map it
                    raise
                # the builtin TimeoutError is how ``get`` says "not finished yet"
                raise JobTimeout(
                    f"job {job_id} not finished after {timeout} s", job_id=job_id
                ) from exc
            return self._remember(job_id, result)

        return await self._guard(work(), job_id=job_id)

    def result(self, job_id: str, *, timeout: float | None) -> dict[str, Any]:
        """Sync twin of ``aresult``."""
        return self._sync(self.aresult(job_id, timeout=timeout), timeout)

    async def astatus(self, job_id: str) -> JobStatus:
        """Poll the job once: finished (with its outcome) or still waiting/running."""
        try:
            await self.aresult(job_id, timeout=0)
        except JobTimeout:
            return await self._running_or_pending(job_id)
        except JobCancelled:
            return JobStatus.CANCELLED
        except WhisperModalError as exc:
            from whisper_modal.errors import JobExpired, JobNotFound

            if isinstance(exc, JobExpired):
                return JobStatus.EXPIRED
            if isinstance(exc, JobNotFound | BackendUnavailable | TransientError):
                raise
            return JobStatus.FAILED
        return JobStatus.SUCCEEDED

    async def _running_or_pending(self, job_id: str) -> JobStatus:
        # The call graph says whether a container took the input (task id set). It is
        # best-effort on Modal's side, so any problem just means "pending".
        try:
            call = self._call_lookup(job_id)
            graph = await _within(
                call.get_call_graph.aio(),
                self.settings.connect_timeout,
                lambda: TransientError("no call graph in time"),
            )
        except Exception:
            return JobStatus.PENDING
        return (
            JobStatus.RUNNING
            if any(getattr(i, "task_id", "") for i in graph)
            else JobStatus.PENDING
        )

    def status(self, job_id: str) -> JobStatus:
        """Sync twin of ``astatus``."""
        return self._sync(self.astatus(job_id), 2 * self.settings.connect_timeout)

    async def acancel(self, job_id: str) -> None:
        """Cancel the job's input (a finished job is left alone)."""

        async def work() -> None:
            call = self._call_lookup(job_id)
            await _within(
                call.cancel.aio(),
                self.settings.connect_timeout,
                lambda: TransientError(f"Modal did not confirm cancelling job {job_id} in time"),
            )

        await self._guard(work(), job_id=job_id)

    def cancel(self, job_id: str) -> None:
        """Sync twin of ``acancel``."""
        self._sync(self.acancel(job_id), self.settings.connect_timeout)

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

    def health(self, *, model: str | None = None, timeout: float = 120.0) -> dict[str, Any]:
        """Sync twin of ``ahealth``."""
        return self._sync(self.ahealth(model=model, timeout=timeout), timeout)
