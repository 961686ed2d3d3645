"""An in-process fake of the Modal services, injected at the backend's lookup seam.

``FakeModal.cls_lookup`` stands in for ``modal.Cls.from_name`` and ``call_lookup`` for
``modal.FunctionCall.from_id``. Method calls delegate to the *real*
``whisper_modal.app.Transcriber`` through Modal's own ``.local()`` (which runs the real
sync ``@modal.enter`` hook), so the real container code and the real tiny.en engine run.

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
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import itertools
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import modal.exception as me
from modal._serialization import deserialize, serialize
from modal.types import InputStatus

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class _Dual:
    """A callable with an ``.aio`` twin, like Modal's synchronicity-wrapped methods."""

    def __init__(self, sync: Callable[..., Any], aio: Callable[..., Any]) -> None:
        self._sync = sync
        self.aio = aio

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._sync(*args, **kwargs)


class Fault:
    """One injected behaviour for one call."""

    def __init__(self, *, raises: BaseException | None = None, hang: float | None = None) -> None:
        self.raises = raises
        self.hang = hang


class FaultPlan:
    """A queue of faults per operation, or a rule. Operations: "lookup", "spawn" (before
    the input is accepted), "run" (the input running in the container, however it was
    called), "map", "get".

    Queued faults are used first, so ``fail_next(op, exc, times=2)`` is "fail twice, then
    recover"; a ``rule`` decides per call number for patterns (every 3rd call fails...).
    """

    def __init__(self) -> None:
        self._queues: dict[str, collections.deque[Fault]] = collections.defaultdict(
            collections.deque
        )
        self._rules: dict[str, Callable[[int], Fault | None]] = {}
        self._counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self.release = threading.Event()  # set() ends every hang at once

    def fail_next(self, op: str, exc: BaseException, times: int = 1) -> None:
        """Make the next ``times`` calls of ``op`` raise ``exc``."""
        with self._lock:
            self._queues[op].extend(Fault(raises=exc) for _ in range(times))

    def hang_next(self, op: str, seconds: float, times: int = 1) -> None:
        """Make the next calls of ``op`` hang (until ``release`` or ``seconds``)."""
        with self._lock:
            self._queues[op].extend(Fault(hang=seconds) for _ in range(times))

    def rule(self, op: str, decide: Callable[[int], Fault | None]) -> None:
        """Decide per call number (1-based) of ``op``: a fault or None."""
        with self._lock:
            self._rules[op] = decide

    def clear(self) -> None:
        """Remove every planned fault."""
        with self._lock:
            self._queues.clear()
            self._rules.clear()

    def take(self, op: str) -> Fault | None:
        with self._lock:
            self._counts[op] += 1
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
        if future.done():
            return  # a finished input is left alone, as Modal does
        self.cancelled = True
        future.cancel()  # a queued input never starts; a running one is terminated

    async def _acancel(self, terminate_containers: bool = False) -> None:
        self._cancel(terminate_containers)

    def _graph(self) -> list[Any]:
        future = self._known()
        running = future.running() or future.done()
        if self.cancelled:
            status = InputStatus.TERMINATED
        elif future.done():
            failed = future.exception() is not None
            status = InputStatus.FAILURE if failed else InputStatus.SUCCESS
        else:
            status = InputStatus.PENDING
        info = collections.namedtuple("InputInfo", "input_id function_call_id task_id status")
        return [info("in-1", self.object_id, "ta-fake" if running else "", status)]

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
        fake = self._fake
        args: tuple[Any, ...] = deserialize(payload, None)
        with fake._lock:
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
        try:
            if args and isinstance(args[0], dict):
                with fake._lock:
                    fake.executions[args[0].get("client_job_id")] += 1
            try:
                if fake.handler is not None and self._name == "transcribe":
                    result = fake.handler(*args)
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

    def _run_spawned(self, holder: list[FakeFunctionCall], *args: Any) -> Any:
        """A spawned input: it completes, or (cancelled while running) is terminated.

        Modal raises ``InputCancellation`` inside a running input that is cancelled; a
        thread cannot be interrupted, so the fake lets it finish and then discards the
        result: it counts as ``terminated``, never as ``completed``.
        """
        fake, job = self._fake, _job_key(args)
        try:
            result = self._run(*args)
        except BaseException:
            if holder and holder[0].cancelled:
                with fake._lock:
                    fake.terminated[job] += 1
            raise
        with fake._lock:
            if holder and holder[0].cancelled:
                fake.terminated[job] += 1
                raise me.InputCancellation("fake: input cancelled while running")
            fake.completed[job] += 1
        return result

    def _run(self, *args: Any) -> Any:
        """One input running in the "container" (from ``.remote`` or ``.spawn``): the
        ``run`` faults apply here, so a fault is the same whichever way it was called."""
        self._fake.count("run")
        self._fake.count(f"{self._name}.run")
        _apply(self._fake.faults.take("run"), self._fake.faults.release)
        return self._execute(serialize(args))

    def _remote(self, *args: Any) -> Any:
        self._fake.count("remote")
        self._fake.count(f"{self._name}.remote")
        result = self._run(*args)
        with self._fake._lock:
            self._fake.completed[_job_key(args)] += 1
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
        call_id = f"fc-fake{next(fake._ids):06d}"
        holder: list[FakeFunctionCall] = []
        call = FakeFunctionCall(fake, call_id, fake.pool.submit(self._run_spawned, holder, *args))
        holder.append(call)
        with fake._lock:
            fake.function_calls[call_id] = call
            fake.spawned.append(call_id)
        return call

    async def _aspawn(self, *args: Any) -> FakeFunctionCall:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._fake.io_pool, lambda: self._spawn(*args))

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
        self._instances: dict[tuple[str, str], Any] = {}
        self._batchers: dict[str, Batcher] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._enter_lock = threading.Lock()  # held while a "container" starts

    def count(self, op: str) -> None:
        with self._lock:
            self.calls[op] += 1

    def instance(self, model: str, cls: str = "Transcriber") -> Any:
        """The real app class instance (created once per class and model, like a warm container)."""
        import whisper_modal.app as app

        # A real container runs its enter hooks once, before taking any input. Modal's
        # ``.local()`` enters lazily and without a lock, so concurrent first calls would
        # each build an instance and one could run a method on a half-entered one: enter
        # here, once, under a lock, and only then hand the instance out.
        with self._enter_lock:
            obj = self._instances.get((cls, model))
            if obj is None:
                app.container_environ = self.container_env()  # what the hooks read
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

    def call_lookup(self, function_call_id: str) -> FakeFunctionCall:
        """Stands in for ``modal.FunctionCall.from_id``: lazy, an unknown id fails at use."""
        with self._lock:
            call = self.function_calls.get(function_call_id)
        return call if call is not None else FakeFunctionCall(self, function_call_id, None)

    def close(self) -> None:
        """Release hangs, stop the worker pool and give the app back the real environment."""
        import whisper_modal.app as app

        app.container_environ = os.environ
        self.faults.release.set()
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
