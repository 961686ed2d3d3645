"""An in-process fake of the Modal services, injected at the backend's lookup seam.

``FakeModal.cls_lookup`` stands in for ``modal.Cls.from_name``, ``function_lookup`` for
``modal.Function.from_name``, ``call_lookup`` for ``modal.FunctionCall.from_id`` and
``dict_lookup`` for ``modal.Dict.from_name`` (``fake.seams()`` gives all four as
``ModalBackend`` keywords). Method calls delegate to the *real*
``whisper_modal.app.Transcriber`` through Modal's own ``.local()`` (which runs the real
sync ``@modal.enter`` hook), so the real container code and the real tiny.en engine run;
the orchestrator runs the real ``whisper_modal.app.fanout`` coroutine on its own event
loop, and cancelling its call cancels its task, as Modal cancels an async input.

Inside the "container", ``whisper_modal.remote.context.platform`` is the fake's: the input's own
FunctionCall id, the fake's Dict as the job book, and the fake's class for the pieces.

Fault injection (``fake.faults``) makes the next calls raise real ``modal.exception``
types, builtin timeouts or remote errors, or hang until released, so the client's
deadlines, retries, breaker and fallback can be driven deterministically. Counters record
every lookup, call, spawn and execution, so tests can prove nothing was lost or run twice.

A ``handler`` can replace the real class for throughput tests (1,000 submits): it still
receives the real wire dict and must return a transcript dict.

Strict where sharing the test's process would hide a real failure:

- Every argument, result and exception crosses Modal's own serialiser
  (``modal._serialization``: cloudpickle out, pickle in), so what cannot cross the wire
  fails here as it would there: an exception that does not unpickle becomes Modal's
  ``ExecutionError("Could not deserialize remote exception ...")``, one that does not
  pickle a ``RemoteError`` with its repr.
- The container side sees only the image's environment (``whisper_modal.app.IMAGE_ENV``)
  plus ``secret_env`` (what a ``modal.Secret`` would inject), not the test's variables.
  The default secret points at the tiny.en cache, runs on CPU (this machine has no GPU;
  the image itself demands CUDA) and carries the S3 endpoint, region and webhook secret
  the test set before creating the fake, which is what a deploy's secret holds.
- ``call_lookup`` is lazy like ``modal.FunctionCall.from_id``: an unknown id fails at
  ``get``/``cancel``, not at lookup.
- The Dict stores what crosses the serialiser, and ``put(skip_if_exists=True)`` is atomic,
  as Modal's server makes it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import contextvars
import itertools
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import modal.exception as me
from modal._serialization import deserialize, serialize
from modal.call_graph import InputInfo
from modal.types import InputStatus

Handler = Callable[[dict[str, Any]], dict[str, Any]]

#: the FunctionCall id of the input a fake "container" thread is running
CURRENT_CALL: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fake_modal_call", default=None
)


class _Dual:
    """A callable with an ``.aio`` twin, like Modal's synchronicity-wrapped methods."""

    def __init__(self, sync: Callable[..., Any], aio: Callable[..., Any]) -> None:
        self._sync = sync
        self.aio = aio

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._sync(*args, **kwargs)


class Fault:
    """One injected behaviour for one call."""

    def __init__(
        self,
        *,
        raises: BaseException | None = None,
        hang: float | None = None,
        before: Callable[[], object] | None = None,
    ) -> None:
        self.raises = raises
        self.hang = hang
        self.before = before  # runs first, outside the plan's lock (it may wait)


class FaultPlan:
    """A queue of faults per operation, or a rule. Operations: "lookup", "spawn" (before
    the input is accepted), "accepted" (after Modal accepted the input, before the client
    hears: a lost acknowledgement), "run" (the input running in the container, however it
    was called; ``transcribe.run`` only for the GPU class's transcribe), "map", "get".

    Queued faults are used first, so ``fail_next(op, exc, times=2)`` is "fail twice, then
    recover"; a ``rule`` decides per call number for patterns (every 3rd call fails...).
    """

    def __init__(self) -> None:
        self._queues: dict[str, collections.deque[Fault]] = collections.defaultdict(
            collections.deque
        )
        self._rules: dict[str, Callable[[int], Fault | None]] = {}
        self._where: dict[str, list[tuple[Callable[[dict[str, Any]], bool], Fault]]] = (
            collections.defaultdict(list)
        )
        self._counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self.release = threading.Event()  # set() ends every hang at once

    def fail_next(self, op: str, exc: BaseException, times: int = 1) -> None:
        """Make the next ``times`` calls of ``op`` raise ``exc``."""
        with self._lock:
            self._queues[op].extend(Fault(raises=exc) for _ in range(times))

    def queue(self, op: str, fault: Fault) -> None:
        """Make the next call of ``op`` meet ``fault``."""
        with self._lock:
            self._queues[op].append(fault)

    def hang_next(self, op: str, seconds: float, times: int = 1) -> None:
        """Make the next calls of ``op`` hang (until ``release`` or ``seconds``)."""
        with self._lock:
            self._queues[op].extend(Fault(hang=seconds) for _ in range(times))

    def rule(self, op: str, decide: Callable[[int], Fault | None]) -> None:
        """Decide per call number (1-based) of ``op``: a fault or None."""
        with self._lock:
            self._rules[op] = decide

    def fail_where(
        self, op: str, matches: Callable[[dict[str, Any]], bool], exc: BaseException
    ) -> None:
        """Make every call of ``op`` whose wire dict ``matches`` raise ``exc`` (until cleared)."""
        with self._lock:
            self._where[op].append((matches, Fault(raises=exc)))

    def clear(self) -> None:
        """Remove every planned fault."""
        with self._lock:
            self._queues.clear()
            self._rules.clear()
            self._where.clear()

    def take(self, op: str, args: tuple[Any, ...] = ()) -> Fault | None:
        with self._lock:
            self._counts[op] += 1
            wire = args[0] if args and isinstance(args[0], dict) else None
            for matches, fault in self._where.get(op, ()):
                if wire is not None and matches(wire):
                    return fault
            if self._queues[op]:
                return self._queues[op].popleft()
            rule = self._rules.get(op)
            return rule(self._counts[op]) if rule else None


#: variables a deploy's modal.Secret carries that tests set before creating a fake
SECRET_VARS = (
    "WHISPER_MODAL_S3_ENDPOINT_URL",
    "WHISPER_MODAL_S3_REGION",
    "WHISPER_MODAL_WEBHOOK_SECRET",
)


def wire(obj: Any) -> Any:
    """``obj`` after crossing Modal's serialiser (an argument or a result)."""
    return deserialize(serialize(obj), None)


def wire_exception(exc: BaseException) -> BaseException:
    """What the client receives when the container raises ``exc`` (see ``_process_result``)."""
    try:
        data = serialize(exc)
    except Exception:
        return me.RemoteError(repr(exc))  # the container sends only the text
    try:
        back = deserialize(data, None)
    except Exception as deser_exc:
        return me.ExecutionError(
            f"Could not deserialize remote exception due to local error:\n{deser_exc}"
        )
    return back if isinstance(back, BaseException) else me.ExecutionError(repr(back))


def _apply(fault: Fault | None, release: threading.Event) -> None:
    if fault is None:
        return
    if fault.before is not None:
        fault.before()
    if fault.hang is not None:
        release.wait(fault.hang)
        raise me.ConnectionError("fake: connection dropped after hanging")
    if fault.raises is not None:
        raise fault.raises


def _job_key(args: tuple[Any, ...]) -> Any:
    return args[0].get("client_job_id") if args and isinstance(args[0], dict) else None


class FakeFunctionCall:
    """Stands in for ``modal.FunctionCall``."""

    def __init__(
        self, fake: FakeModal, object_id: str, future: cf.Future[dict[str, Any]] | None
    ) -> None:
        self._fake = fake
        self.object_id = object_id
        self._future = future  # None: an id no spawn returned (fails on first use)
        self.cancelled = False
        self.on_cancel: Callable[[], None] | None = None  # an async input: cancel its task
        #: how the input ended: "completed", "deduplicated", "terminated", "failed" (or None)
        self.outcome: str | None = None
        #: the call whose input spawned this one (or ``FakeModal.spawn_parent``), if any
        self.parent: str | None = None
        self.get = _Dual(self._get, self._aget)
        self.cancel = _Dual(self._cancel, self._acancel)
        self.get_call_graph = _Dual(self._graph, self._agraph)

    def _known(self) -> cf.Future[dict[str, Any]]:
        if self._future is None:
            raise me.NotFoundError(f"Function call {self.object_id} not found")
        return self._future

    def _get(self, timeout: float | None = None, *, index: int = 0) -> dict[str, Any]:
        _apply(self._fake.faults.take("get"), self._fake.faults.release)
        future = self._known()
        if self.cancelled:
            # A TERMINATED result carries no data; modal's _process_result then raises
            # RemoteError(result.exception), with an empty text.
            raise me.RemoteError("")
        try:
            return future.result(timeout=timeout)
        except cf.TimeoutError:
            raise TimeoutError() from None  # modal raises the builtin TimeoutError here
        except cf.CancelledError:
            raise me.RemoteError("") from None

    async def _aget(self, timeout: float | None = None, *, index: int = 0) -> dict[str, Any]:
        return await asyncio.to_thread(self._get, timeout, index=index)

    def _cancel(self, terminate_containers: bool = False) -> None:
        self._fake.count("cancel")
        future = self._known()
        with self._fake._lock:  # the input's end is decided under the same lock
            if future.done() or self.outcome is not None:
                return  # a finished input is left alone, as Modal does
            self.cancelled = True
        future.cancel()  # a queued input never starts; a running one is terminated
        if self.on_cancel is not None:
            self.on_cancel()

    async def _acancel(self, terminate_containers: bool = False) -> None:
        self._cancel(terminate_containers)

    def _info(self) -> InputInfo:
        future = self._known()
        running = future.running() or future.done()
        if self.cancelled:
            status = InputStatus.TERMINATED
        elif future.done():
            failed = future.exception() is not None
            status = InputStatus.FAILURE if failed else InputStatus.SUCCESS
        else:
            status = InputStatus.PENDING
        task = "ta-fake" if running else ""
        return InputInfo("in-" + self.object_id, self.object_id, task, status, "f", "m", [])

    def _graph(self) -> list[Any]:
        """Shaped as ``modal/call_graph.py`` builds it: root inputs only, each call's input
        nested under the input that spawned it; a child whose parent input is past
        retention (``FakeModal.parent_retained = False``) is dropped with it."""
        self._known()
        fake = self._fake
        with fake._lock:
            calls = dict(fake.function_calls)
        root = self
        while root.parent in calls:
            root = calls[root.parent]

        def tree(call: FakeFunctionCall) -> InputInfo:
            info = call._info()
            info.children.extend(tree(c) for c in calls.values() if c.parent == call.object_id)
            return info

        if root.parent is None:
            return [tree(root)]
        if not fake.parent_retained:  # e.g. the web function's request input, long gone
            return []
        children = [tree(c) for c in calls.values() if c.parent == root.parent]
        outer = InputInfo("in-outer", root.parent, "ta-outer", InputStatus.SUCCESS, "web", "m", [])
        outer.children.extend(children)
        return [outer]

    async def _agraph(self) -> list[Any]:
        return self._graph()


class FakeMethod:
    """``Transcriber(model=...).transcribe`` with remote/spawn and their ``.aio`` twins."""

    def __init__(self, fake: FakeModal, model: str, name: str, cls: str = "Transcriber") -> None:
        self._fake = fake
        self._model = model
        self._name = name
        self._cls = cls
        self.remote = _Dual(self._remote, self._aremote)
        self.spawn = _Dual(self._spawn, self._aspawn)
        self.map = _Dual(self._map, self._amap)

    def _execute(self, payload: bytes) -> Any:
        """Run in the "container": arguments arrive serialised, results leave serialised."""
        from whisper_modal.remote import context

        fake = self._fake
        args: tuple[Any, ...] = deserialize(payload, None)
        context.install(fake.platform)  # type: ignore[arg-type]  # this fake's "containers"
        with fake._lock:
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
        try:
            if args and isinstance(args[0], dict):
                with fake._lock:
                    fake.executions[args[0].get("client_job_id")] += 1
            try:
                if fake.handler is not None and self._name == "transcribe":
                    from whisper_modal.job_book import JobBook, run_once  # the claim

                    handler = fake.handler
                    result = run_once(
                        JobBook(fake.platform.job_store()),
                        fake.platform.call_id(),
                        args[0],
                        lambda _job_id: fake.interruptible(handler, args),
                    )
                elif self._name == "transcribe_packed":  # @modal.batched groups single calls
                    result = fake.batcher(self._model).submit(args[0]).result()
                else:
                    method = getattr(fake.instance(self._model, self._cls), self._name)
                    result = method.local(*args)
            except Exception as exc:
                raise wire_exception(exc) from None
            return wire(result)
        finally:
            with fake._lock:
                fake.in_flight -= 1

    def _run_spawned(self, call: FakeFunctionCall, *args: Any) -> Any:
        """A spawned input: it completes, or (cancelled while running) is terminated.

        Modal raises ``InputCancellation`` inside a running input that is cancelled; a
        thread cannot be interrupted, so the fake lets it finish and then discards the
        result: it counts as ``terminated``, never as ``completed``.
        """
        fake, job = self._fake, _job_key(args)
        token = CURRENT_CALL.set(call.object_id)
        try:
            result = self._run(*args)
        except BaseException:
            with fake._lock:
                call.outcome = "terminated" if call.cancelled else "failed"
                if call.cancelled:
                    fake.terminated[job] += 1
            raise
        finally:
            CURRENT_CALL.reset(token)
        with fake._lock:
            if call.cancelled:
                call.outcome = "terminated"
                fake.terminated[job] += 1
                raise me.InputCancellation("fake: input cancelled while running")
            call.outcome = fake.count_outcome(job, result)
        return result

    def _run(self, *args: Any) -> Any:
        """One input running in the "container" (from ``.remote`` or ``.spawn``): the
        ``run`` faults apply here, so a fault is the same whichever way it was called."""
        self._fake.count("run")
        self._fake.count(f"{self._name}.run")
        _apply(self._fake.faults.take("run"), self._fake.faults.release)
        _apply(self._fake.faults.take(f"{self._name}.run", args), self._fake.faults.release)
        return self._execute(serialize(args))

    def _remote(self, *args: Any) -> Any:
        self._fake.count("remote")
        self._fake.count(f"{self._name}.remote")
        result = self._run(*args)
        with self._fake._lock:
            self._fake.count_outcome(_job_key(args), result)
        return result

    async def _aremote(self, *args: Any) -> Any:
        # its own executor: asyncio's default one has only cpu_count + 4 threads, which
        # would cap the fake's concurrency far below a real Modal deployment's
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._fake.io_pool, lambda: self._remote(*args))

    def _spawn(self, *args: Any) -> FakeFunctionCall:
        fake = self._fake
        fake.count("spawn")
        fake.count(f"{self._name}.spawn")
        _apply(fake.faults.take("spawn"), fake.faults.release)
        call = FakeFunctionCall(fake, f"fc-fake{next(fake._ids):06d}", None)
        call._future = fake.pool.submit(self._run_spawned, call, *args)
        fake.register(call)
        return call

    async def _aspawn(self, *args: Any) -> FakeFunctionCall:
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()  # the spawning input (CURRENT_CALL) goes along
        return await loop.run_in_executor(
            self._fake.io_pool, lambda: context.run(self._spawn, *args)
        )

    def _one_of_map(self, args: tuple[Any, ...]) -> Any:
        self._fake.count(f"{self._name}.map")
        _apply(self._fake.faults.take("map"), self._fake.faults.release)
        return self._execute(serialize(args))

    def _map(
        self,
        *input_iterators: Any,
        kwargs: dict[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
        wrap_returned_exceptions: bool | None = None,
    ) -> Iterator[Any]:
        """``Function.map``: one call per zipped input on the fake's workers."""
        futures = [
            self._fake.pool.submit(self._one_of_map, a) for a in zip(*input_iterators, strict=False)
        ]
        ordered = futures if order_outputs else cf.as_completed(futures)
        for future in ordered:
            try:
                yield future.result()
            except Exception as exc:
                if not return_exceptions:
                    for rest in futures:
                        rest.cancel()
                    raise
                yield exc

    async def _amap(self, *input_iterators: Any, **options: Any) -> AsyncIterator[Any]:
        outputs = self._map(*input_iterators, **options)
        done = object()
        while (item := await asyncio.to_thread(next, outputs, done)) is not done:
            yield item


class FakeFunction:
    """A ``modal.Function`` of the app (``Function.from_name``): the async orchestrator.

    Its inputs run the real app function (``whisper_modal.app.<name>``) through Modal's
    ``.local()``, each on a fresh event loop in a thread of its own; ``cancel`` cancels
    the input's task, as Modal does for an async function (so its ``finally`` blocks and
    ``CancelledError`` handlers run), and the input then counts as terminated.
    """

    def __init__(self, fake: FakeModal, name: str) -> None:
        self._fake = fake
        self._name = name
        self.hydrate = _Dual(self._hydrate, self._ahydrate)
        self.spawn = _Dual(self._spawn, self._aspawn)

    def _hydrate(self) -> FakeFunction:
        self._fake.count("hydrate")
        _apply(self._fake.faults.take("lookup"), self._fake.faults.release)
        if not self._fake.deployed:
            raise me.NotFoundError(f"Lookup failed for Function '{self._name}'")
        return self

    async def _ahydrate(self) -> FakeFunction:
        return await asyncio.to_thread(self._hydrate)

    def _spawn(self, *args: Any) -> FakeFunctionCall:
        fake = self._fake
        fake.count("spawn")
        fake.count(f"{self._name}.spawn")
        _apply(fake.faults.take("spawn"), fake.faults.release)
        call = FakeFunctionCall(fake, f"fc-fake{next(fake._ids):06d}", None)
        call._future = fake.fn_pool.submit(self._run, call, serialize(args))
        fake.register(call)
        return call

    async def _aspawn(self, *args: Any) -> FakeFunctionCall:
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()  # the spawning input (CURRENT_CALL) goes along
        return await loop.run_in_executor(
            self._fake.io_pool, lambda: context.run(self._spawn, *args)
        )

    def _run(self, call: FakeFunctionCall, payload: bytes) -> Any:
        import whisper_modal.app as app
        from whisper_modal.remote import context

        fake = self._fake
        args: tuple[Any, ...] = deserialize(payload, None)
        job = _job_key(args)
        context.install(fake.platform)  # type: ignore[arg-type]  # this fake's "containers"
        fake.count("run")
        fake.count(f"{self._name}.run")
        with fake._lock:
            fake.executions[job] += 1
        token = CURRENT_CALL.set(call.object_id)
        loop = asyncio.new_event_loop()
        try:
            _apply(fake.faults.take("run"), fake.faults.release)
            task = loop.create_task(getattr(app, self._name).local(*args))
            call.on_cancel = lambda: loop.call_soon_threadsafe(task.cancel)
            if call.cancelled:  # cancelled before the task existed
                task.cancel()
            try:
                result = loop.run_until_complete(task)
            except asyncio.CancelledError:
                with fake._lock:
                    call.outcome = "terminated"
                    fake.terminated[job] += 1
                raise me.InputCancellation("fake: input cancelled while running") from None
            except Exception as exc:
                call.outcome = "failed"
                raise wire_exception(exc) from None
        finally:
            loop.close()
            CURRENT_CALL.reset(token)
        with fake._lock:
            call.outcome = fake.count_outcome(job, result)
        return wire(result)


class FakeDict:
    """A ``modal.Dict`` (its sync interface): values cross the serialiser, and
    ``put(skip_if_exists=True)`` is atomic. The "dict" fault applies to every operation."""

    def __init__(self, fake: FakeModal, name: str) -> None:
        self._fake = fake
        self.name = name
        self._data: dict[Any, bytes] = {}
        self._lock = threading.Lock()

    def _op(self, op: str) -> None:
        self._fake.count(f"dict.{op}")
        _apply(self._fake.faults.take("dict"), self._fake.faults.release)

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        self._op("put")
        data = serialize(value)
        with self._lock:
            if skip_if_exists and key in self._data:
                return False
            self._data[key] = data
            return True

    def get(self, key: Any, default: Any | None = None) -> Any:
        self._op("get")
        with self._lock:
            data = self._data.get(key)
        return default if data is None else deserialize(data, None)

    def pop(self, key: Any, default: Any = None) -> Any:
        self._op("pop")
        with self._lock:
            data = self._data.pop(key, None)
        return default if data is None else deserialize(data, None)

    def items(self) -> list[tuple[Any, Any]]:
        self._op("items")
        with self._lock:
            pairs = list(self._data.items())
        return [(k, deserialize(v, None)) for k, v in pairs]


class FakePlatform:
    """``whisper_modal.remote.context.platform`` inside the fake's "containers"."""

    def __init__(self, fake: FakeModal) -> None:
        self._fake = fake

    def call_id(self) -> str | None:
        return CURRENT_CALL.get()

    def job_store(self) -> FakeDict:
        import whisper_modal.app as app

        return self._fake.dict_lookup(app.settings.jobs_dict_name)

    def chunk_method(self, model: str) -> FakeMethod:
        return FakeMethod(self._fake, model, "transcribe")

    def function_call(self, call_id: str) -> FakeFunctionCall:
        return self._fake.call_lookup(call_id)


class FakeObj:
    def __init__(self, fake: FakeModal, model: str, cls: str) -> None:
        self._fake = fake
        self._model = model
        self._cls = cls

    def __getattr__(self, name: str) -> FakeMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return FakeMethod(self._fake, self._model, name, self._cls)


class Batcher:
    """Groups concurrent single calls like ``@modal.batched`` (max 16, waiting 50 ms)."""

    def __init__(self, fake: FakeModal, model: str, max_size: int = 16, wait: float = 0.05) -> None:
        self._fake, self._model, self._max, self._wait = fake, model, max_size, wait
        self._queue: list[tuple[dict[str, Any], cf.Future[dict[str, Any]]]] = []
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self.batch_sizes: list[int] = []
        threading.Thread(target=self._loop, daemon=True, name="fake-batcher").start()

    def submit(self, wire: dict[str, Any]) -> cf.Future[dict[str, Any]]:
        future: cf.Future[dict[str, Any]] = cf.Future()
        with self._ready:
            self._queue.append((wire, future))
            self._ready.notify()
        return future

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
            time.sleep(self._wait)  # let more calls arrive, like wait_ms
            with self._lock:
                batch, self._queue = self._queue[: self._max], self._queue[self._max :]
            self.batch_sizes.append(len(batch))
            try:
                method = self._fake.instance(self._model, "PackedTranscriber").transcribe_packed
                results = method.local([wire for wire, _ in batch])
                for (_, future), result in zip(batch, results, strict=True):
                    future.set_result(result)
            except BaseException as exc:
                for _, future in batch:
                    future.set_exception(exc)


class FakeCls:
    """Stands in for the ``modal.Cls`` returned by ``Cls.from_name``."""

    def __init__(self, fake: FakeModal, name: str = "Transcriber") -> None:
        self._fake = fake
        self._name = name
        self.hydrate = _Dual(self._hydrate, self._ahydrate)
        self.options: dict[str, Any] = {}

    def _hydrate(self) -> FakeCls:
        self._fake.count("hydrate")
        _apply(self._fake.faults.take("lookup"), self._fake.faults.release)
        if not self._fake.deployed:
            raise me.NotFoundError(
                "Lookup failed for Cls 'Transcriber' from the 'whisper-modal' app"
            )
        return self

    async def _ahydrate(self) -> FakeCls:
        return await asyncio.to_thread(self._hydrate)

    def with_options(self, **options: Any) -> FakeCls:
        clone = FakeCls(self._fake, self._name)
        clone.options = {**self.options, **options}
        with self._fake._lock:
            self._fake.option_overrides.append(dict(options))
        return clone

    def __call__(self, **params: Any) -> FakeObj:
        return FakeObj(self._fake, params.get("model", "turbo"), self._name)


class FakeModal:
    """The fake Modal: lookups, calls, faults and counters (see the module docstring)."""

    def __init__(
        self,
        *,
        handler: Handler | None = None,
        workers: int = 4,
        secret_env: Mapping[str, str] | None = None,
    ) -> None:
        self.handler = handler
        if secret_env is None:
            secret_env = {k: os.environ[k] for k in SECRET_VARS if k in os.environ}
            secret_env = {**_tiny_cpu_env(), **secret_env}
        self.secret_env = dict(secret_env)
        self.deployed = True
        self.faults = FaultPlan()
        self.pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fake-modal")
        self.fn_pool = cf.ThreadPoolExecutor(max_workers=16, thread_name_prefix="fake-modal-fn")
        self.dicts: dict[str, FakeDict] = {}
        self.deduplicated: collections.Counter[Any] = collections.Counter()  # duplicate_of
        self.io_pool = cf.ThreadPoolExecutor(max_workers=64, thread_name_prefix="fake-modal-io")
        self.function_calls: dict[str, FakeFunctionCall] = {}
        self.executions: collections.Counter[Any] = collections.Counter()  # runs started
        self.completed: collections.Counter[Any] = collections.Counter()  # ran to the end
        self.terminated: collections.Counter[Any] = collections.Counter()  # cancelled mid-run
        self.calls: collections.Counter[str] = collections.Counter()
        self.lookups: list[tuple[str, str, str | None]] = []
        self.spawned: list[str] = []  # every FunctionCall id, in spawn order
        self.option_overrides: list[dict[str, Any]] = []  # every Cls.with_options(...)
        self.in_flight = 0
        self.max_in_flight = 0
        #: the (unmodelled) input that spawns calls made outside any fake input, as the web
        #: function's request does; None: they are root inputs, like a laptop's spawns
        self.spawn_parent: str | None = None
        self.parent_retained = True  # False: that parent input is past Modal's retention
        self._instances: dict[tuple[str, str], Any] = {}
        self._batchers: dict[str, Batcher] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._enter_lock = threading.Lock()  # held while a "container" starts
        self.platform = FakePlatform(self)

    def count(self, op: str) -> None:
        with self._lock:
            self.calls[op] += 1

    def count_outcome(self, job: Any, result: Any) -> str:
        """Count an input that ended normally (called with the lock held): a run that
        transcribed is ``completed``; one that found its id owned is ``deduplicated``."""
        if isinstance(result, dict) and "duplicate_of" in result:
            self.deduplicated[job] += 1
            return "deduplicated"
        self.completed[job] += 1
        return "completed"

    def interruptible(self, handler: Handler, args: tuple[Any, ...]) -> dict[str, Any]:
        """Run ``handler`` as the input's work; cancelled meanwhile: ``InputCancellation``.

        Modal raises it inside the running input, so the container's own code (the job
        book's record in ``run_once``) sees the cancellation; a thread cannot be
        interrupted, so the fake raises it as soon as the handler returns.
        """
        result = handler(*args)
        call = self.function_calls.get(CURRENT_CALL.get() or "")
        if call is not None and call.cancelled:
            raise me.InputCancellation("fake: input cancelled while running")
        return result

    def register(self, call: FakeFunctionCall) -> None:
        """Record a spawned call (then the "accepted" fault may lose its acknowledgement)."""
        call.parent = CURRENT_CALL.get() or self.spawn_parent
        with self._lock:
            self.function_calls[call.object_id] = call
            self.spawned.append(call.object_id)
        _apply(self.faults.take("accepted"), self.faults.release)

    def instance(self, model: str, cls: str = "Transcriber") -> Any:
        """The real app class instance (created once per class and model, like a warm container)."""
        import whisper_modal.app as app
        from whisper_modal.remote import context

        # A real container runs its enter hooks once, before taking any input. Modal's
        # ``.local()`` enters lazily and without a lock, so concurrent first calls would
        # each build an instance and one could run a method on a half-entered one: enter
        # here, once, under a lock, and only then hand the instance out.
        with self._enter_lock:
            obj = self._instances.get((cls, model))
            if obj is None:
                context.environ = self.container_env()  # what the hooks read
                obj = getattr(app, cls)(model=model)
                obj._enter()
                self._instances[(cls, model)] = obj
            return obj

    def container_env(self) -> dict[str, str]:
        """The container's whole environment: the image's variables, then the secret's."""
        import whisper_modal.app as app

        return {**app.IMAGE_ENV, **self.secret_env}

    def batcher(self, model: str) -> Batcher:
        """The batching queue of the ``@modal.batched`` class for ``model``."""
        with self._lock:
            if model not in self._batchers:
                self._batchers[model] = Batcher(self, model)
            return self._batchers[model]

    # -- the seam
    def cls_lookup(
        self, app_name: str, name: str, *, environment_name: str | None = None
    ) -> FakeCls:
        """Stands in for ``modal.Cls.from_name`` (lazy, like the real one)."""
        with self._lock:
            self.lookups.append((app_name, name, environment_name))
        return FakeCls(self, name)

    def function_lookup(
        self, app_name: str, name: str, *, environment_name: str | None = None
    ) -> FakeFunction:
        """Stands in for ``modal.Function.from_name`` (lazy, like the real one)."""
        with self._lock:
            self.lookups.append((app_name, name, environment_name))
        return FakeFunction(self, name)

    def dict_lookup(
        self, name: str, *, environment_name: str | None = None, create_if_missing: bool = False
    ) -> FakeDict:
        """Stands in for ``modal.Dict.from_name`` (one Dict per name)."""
        with self._lock:
            if name not in self.dicts:
                self.dicts[name] = FakeDict(self, name)
            return self.dicts[name]

    def seams(self) -> dict[str, Any]:
        """The four lookups as ``ModalBackend`` keywords."""
        return {
            "cls_lookup": self.cls_lookup,
            "call_lookup": self.call_lookup,
            "function_lookup": self.function_lookup,
            "dict_lookup": self.dict_lookup,
        }

    def call_lookup(self, function_call_id: str) -> FakeFunctionCall:
        """Stands in for ``modal.FunctionCall.from_id``: lazy, an unknown id fails at use."""
        with self._lock:
            call = self.function_calls.get(function_call_id)
        return call if call is not None else FakeFunctionCall(self, function_call_id, None)

    def close(self) -> None:
        """Release hangs, stop the worker pool and give the app back the real environment."""
        import whisper_modal.app as app
        from whisper_modal.remote import context

        context.environ = os.environ
        if context.platform is self.platform:  # the app's own again
            context.install(context.Platform(jobs=app.jobs_dict, gpu_class=app.Transcriber))
        self.faults.release.set()
        for call in list(self.function_calls.values()):  # orchestrators still waiting
            if call._future is not None and not call._future.done():
                call._cancel()
        self.fn_pool.shutdown(wait=True, cancel_futures=True)
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.io_pool.shutdown(wait=True, cancel_futures=True)


def _tiny_cpu_env() -> dict[str, str]:
    from tests.fakes import tiny_model_cache  # lazy: tests.fakes imports this module

    return {"WHISPER_MODAL_CACHE_DIR": str(tiny_model_cache()), "WHISPER_MODAL_DEVICE": "cpu"}


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll ``predicate`` until true or ``timeout`` (tests only)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
