"""Retry policy, circuit breaker and deadlines, with a fake clock: no real sleeping."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import threading
import time

import pytest

from whisper_modal.errors import (
    AudioError,
    BackendUnavailable,
    CircuitOpenError,
    ConfigurationError,
    RemoteExecutionError,
    StorageTransient,
    TransientError,
)
from whisper_modal.resilience import (
    BreakerState,
    CircuitBreaker,
    Deadline,
    RetryPolicy,
    arun_with_deadline,
    run_with_deadline,
)


class FakeClock:
    """A clock that only moves when something sleeps (thread-safe)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


def policy(clock: FakeClock, **kw: object) -> RetryPolicy:
    args: dict[str, object] = {
        "max_attempts": 5, "max_seconds": 60.0, "initial_backoff": 0.5, "max_backoff": 8.0,
        "sleep": clock.sleep, "asleep": clock.asleep, "clock": clock, "rng": random.Random(7),
    }  # fmt: skip
    args.update(kw)
    return RetryPolicy(**args)  # type: ignore[arg-type]


class Flaky:
    def __init__(self, failures: int, exc: Exception) -> None:
        self.failures, self.exc, self.calls = failures, exc, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return "ok"


def test_transient_errors_are_retried_with_growing_jittered_backoff() -> None:
    clock = FakeClock()
    retries: list[tuple[int, float]] = []
    p = policy(clock, on_retry=lambda n, e, d: retries.append((n, d)))
    fn = Flaky(3, TransientError("reset"))
    assert p.call(fn) == "ok" and fn.calls == 4
    assert [n for n, _ in retries] == [1, 2, 3]
    ceilings = [0.5, 1.0, 2.0]  # full jitter: uniform in [0, ceiling]
    assert all(0 <= d <= c for d, c in zip(clock.sleeps, ceilings, strict=True))
    assert len(set(clock.sleeps)) == 3  # jittered, not constant


def test_backoff_is_capped() -> None:
    clock = FakeClock()
    p = policy(clock, max_attempts=12, max_seconds=1e6)
    with pytest.raises(BackendUnavailable):
        p.call(Flaky(100, TransientError("x")))
    assert max(clock.sleeps) <= 8.0 and len(clock.sleeps) == 11


@pytest.mark.parametrize(
    "exc",
    [ConfigurationError("bad"), AudioError("empty", reason="empty"), RemoteExecutionError("oom"),
     BackendUnavailable("no creds"), ValueError("plain")],
)  # fmt: skip
def test_permanent_errors_are_not_retried(exc: Exception) -> None:
    clock = FakeClock()
    fn = Flaky(100, exc)
    with pytest.raises(type(exc)) as info:
        policy(clock).call(fn)
    assert info.value is exc and fn.calls == 1 and clock.sleeps == []


def test_storage_throttling_is_transient() -> None:
    clock = FakeClock()
    assert policy(clock).call(Flaky(2, StorageTransient("SlowDown"))) == "ok"


def test_exhaustion_becomes_backend_unavailable_with_the_cause() -> None:
    clock = FakeClock()
    last = TransientError("still down")
    with pytest.raises(BackendUnavailable) as info:
        policy(clock, max_attempts=3).call(Flaky(100, last))
    assert info.value.__cause__ is last and "3 attempt" in str(info.value)


def test_total_time_budget_stops_retries() -> None:
    clock = FakeClock()

    def slow_failure() -> str:
        clock.now += 4.0  # each attempt takes 4 s
        raise TransientError("timeout")

    with pytest.raises(BackendUnavailable):
        policy(clock, max_attempts=100, max_seconds=10.0).call(slow_failure)
    assert clock.now <= 10.0 + 4.0 + 1e-9  # never starts an attempt after the budget


async def test_async_retry() -> None:
    clock = FakeClock()
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TransientError("x")
        return "ok"

    assert await policy(clock).acall(flaky) == "ok" and calls == 3 and len(clock.sleeps) == 2
    with pytest.raises(AudioError):
        await policy(clock).acall(_raise_audio)


async def _raise_audio() -> None:
    raise AudioError("bad", reason="not_audio")


# ---------------------------------------------------------------------- breaker


def breaker(clock: FakeClock, **kw: object) -> tuple[CircuitBreaker, list[tuple[str, str]]]:
    moves: list[tuple[str, str]] = []
    b = CircuitBreaker(
        "test", failure_threshold=3, reset_timeout=30.0, clock=clock,
        on_transition=lambda a, z: moves.append((a.value, z.value)), **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    return b, moves


def fail() -> None:
    raise TransientError("down")


def test_breaker_opens_after_n_failures_and_refuses_without_calling() -> None:
    clock = FakeClock()
    b, moves = breaker(clock)
    for _ in range(2):
        with pytest.raises(TransientError):
            b.call(fail)
    assert b.state is BreakerState.CLOSED
    with pytest.raises(TransientError):
        b.call(fail)
    assert b.state is BreakerState.OPEN and moves == [("closed", "open")]
    called = []
    with pytest.raises(CircuitOpenError, match=r"next probe in 30\.0 s"):
        b.call(lambda: called.append(1))
    assert called == [] and b.snapshot().rejections == 1


def test_half_open_probe_success_closes_failure_reopens() -> None:
    clock = FakeClock()
    b, moves = breaker(clock)
    for _ in range(3):
        with pytest.raises(TransientError):
            b.call(fail)
    clock.now += 29.9
    assert b.state is BreakerState.OPEN
    clock.now += 0.1
    assert b.state is BreakerState.HALF_OPEN
    with pytest.raises(TransientError):
        b.call(fail)  # the probe fails: open again with a fresh timer
    assert b.state is BreakerState.OPEN
    clock.now += 30
    assert b.call(lambda: "up") == "up"
    assert b.state is BreakerState.CLOSED
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "open"),
                     ("open", "half_open"), ("half_open", "closed")]  # fmt: skip
    assert b.snapshot().opened_count == 2


def test_user_errors_do_not_count_and_release_the_probe() -> None:
    clock = FakeClock()
    b, _ = breaker(clock)
    for exc in [AudioError("x"), ConfigurationError("y"), RemoteExecutionError("z")] * 3:
        with pytest.raises(type(exc)):
            b.call(_raiser(exc))
    assert b.state is BreakerState.CLOSED and b.snapshot().failures == 0
    for _ in range(3):
        with pytest.raises(TransientError):
            b.call(fail)
    clock.now += 30
    with pytest.raises(AudioError):
        b.call(_raiser(AudioError("bad input during the probe")))
    assert b.state is BreakerState.HALF_OPEN  # slot released, state unchanged
    assert b.call(lambda: 1) == 1 and b.state is BreakerState.CLOSED


def _raiser(exc: Exception):  # type: ignore[no-untyped-def]
    def go() -> None:
        raise exc

    return go


def test_failure_rate_rule() -> None:
    clock = FakeClock()
    b, _ = breaker(clock, window=60.0, failure_rate=0.5, min_calls=10)
    for i in range(20):  # alternate: never 3 in a row, but 50% failures
        clock.now += 1
        if i % 2:
            with pytest.raises(TransientError):
                b.call(fail)
        else:
            b.call(lambda: None)
        if b.state is BreakerState.OPEN:
            break
    assert b.state is BreakerState.OPEN and b.snapshot().consecutive_failures == 1


def test_exactly_one_probe_among_32_threads() -> None:
    clock = FakeClock()
    b, _ = breaker(clock)
    for _ in range(3):
        with pytest.raises(TransientError):
            b.call(fail)
    clock.now += 30
    start, hold = threading.Barrier(32), threading.Event()
    admitted, refused = [], []
    lock = threading.Lock()

    def probe() -> None:
        with lock:
            admitted.append(threading.get_ident())
        hold.wait(5)

    def worker() -> None:
        start.wait()
        try:
            b.call(probe)
        except CircuitOpenError:
            with lock:
                refused.append(1)

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while len(refused) < 31 and time.monotonic() < deadline:
        time.sleep(0.005)
    hold.set()
    for t in threads:
        t.join(5)
    assert len(admitted) == 1 and len(refused) == 31
    assert b.state is BreakerState.CLOSED


def test_32_threads_and_32_tasks_hammer_one_breaker() -> None:
    clock = FakeClock()
    b, moves = breaker(clock)
    allowed = {
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
        ("half_open", "open"),
    }
    outcomes = {"ok": 0, "failed": 0, "refused": 0}
    lock = threading.Lock()
    in_probe = 0
    max_in_probe = 0

    def op(i: int) -> None:
        nonlocal in_probe, max_in_probe
        if b.state is BreakerState.HALF_OPEN:
            with lock:
                in_probe += 1
                max_in_probe = max(max_in_probe, in_probe)
        try:
            if i % 5 in (1, 2, 3):  # a deterministic 60% fault pattern
                raise TransientError("injected")
        finally:
            if b.state is BreakerState.HALF_OPEN:
                with lock:
                    in_probe -= 1

    def record(kind: str) -> None:
        with lock:
            outcomes[kind] += 1

    def one(i: int) -> None:
        clock.now += 0.5  # time passes between calls, so the breaker cycles
        try:
            b.call(op, i)
            record("ok")
        except TransientError:
            record("failed")
        except CircuitOpenError:
            record("refused")

    def thread_main(t: int) -> None:
        for i in range(50):
            one(t * 50 + i)

    async def task_main(t: int) -> None:
        for i in range(50):
            try:
                await b.acall(_async_op, t * 50 + i)
                record("ok")
            except TransientError:
                record("failed")
            except CircuitOpenError:
                record("refused")
            await asyncio.sleep(0)

    async def _async_op(i: int) -> None:
        clock.now += 0.5
        if i % 5 in (1, 2, 3):
            raise TransientError("injected")

    threads = [threading.Thread(target=thread_main, args=(t,)) for t in range(32)]
    for t in threads:
        t.start()

    async def all_tasks() -> None:
        await asyncio.gather(*(task_main(t) for t in range(32)))

    asyncio.run(all_tasks())
    for t in threads:
        t.join(30)
    snap = b.snapshot()
    total = 64 * 50
    assert sum(outcomes.values()) == total
    assert snap.successes == outcomes["ok"] and snap.failures == outcomes["failed"]
    assert snap.rejections == outcomes["refused"]
    assert set(moves) <= allowed and moves[0] == ("closed", "open")
    assert all(a[1] == b_[0] for a, b_ in itertools.pairwise(moves))  # a connected path
    assert snap.opened_count >= 2


def test_transitions_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    b, _ = breaker(clock)
    with caplog.at_level(logging.INFO, logger="whisper_modal.resilience"):
        for _ in range(3):
            with pytest.raises(TransientError):
                b.call(fail)
    record = caplog.records[-1]
    assert record.levelno == logging.WARNING
    assert (record.breaker, getattr(record, "from"), record.to) == ("test", "closed", "open")  # type: ignore[attr-defined]


# --------------------------------------------------------------------- deadlines


def test_deadline_object() -> None:
    clock = FakeClock()
    d = Deadline(10, clock=clock)
    clock.now = 4
    assert d.remaining() == 6 and not d.expired
    clock.now = 11
    with pytest.raises(TransientError, match="deadline of 10 s passed while uploading"):
        d.check("uploading")


def test_hung_sync_call_returns_on_time() -> None:
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(TransientError, match=r"0\.2 s"):
        run_with_deadline(release.wait, 0.2, 30)
    assert time.monotonic() - started < 1.0
    release.set()
    assert run_with_deadline(lambda: 42, 1.0) == 42
    with pytest.raises(AudioError):
        run_with_deadline(_raiser(AudioError("x")), 1.0)


async def test_hung_async_call_returns_on_time() -> None:
    started = time.monotonic()
    with pytest.raises(TransientError):
        await arun_with_deadline(asyncio.sleep(30), 0.2)
    assert time.monotonic() - started < 1.0
