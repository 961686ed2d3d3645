"""Retry policy and circuit breaker, on a fake clock: no real sleeping.

Both are async (``acall``); the sync tests go in through ``run``, one event loop per call.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import tenacity

from whisper_modal.errors import (
    AudioError,
    BackendUnavailable,
    CircuitOpenError,
    ConfigurationError,
    RemoteExecutionError,
    StorageNotFound,
    StorageTransient,
    TransientError,
)
from whisper_modal.resilience import (
    ALLOWED_TRANSITIONS,
    BreakerState,
    BreakerToken,
    CircuitBreaker,
    RetryPolicy,
    counts_as_failure,
)


class FakeClock:
    """A clock that only moves when something sleeps or advances it (thread-safe)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


def policy(clock: FakeClock, **kw: object) -> RetryPolicy:
    args: dict[str, object] = {
        "max_attempts": 5, "max_seconds": 60.0, "initial_backoff": 0.5, "max_backoff": 8.0,
        "asleep": clock.asleep, "clock": clock, "rng": random.Random(7),
    }  # fmt: skip
    args.update(kw)
    return RetryPolicy(**args)  # type: ignore[arg-type]


T = TypeVar("T")


def _coro(fn: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    async def go(*args: Any, **kwargs: Any) -> T:
        return fn(*args, **kwargs)

    return go


def run(target: RetryPolicy | CircuitBreaker, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``target.acall`` around a sync callable, on a fresh event loop (the sync tests' way in)."""
    return asyncio.run(target.acall(_coro(fn), *args, **kwargs))


class Flaky:
    """Raises ``exc`` for the first ``failures`` calls, then returns "ok"."""

    def __init__(self, failures: int, exc: Exception) -> None:
        self.failures, self.exc, self.calls = failures, exc, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return "ok"


def _raiser(exc: BaseException) -> Callable[[], None]:
    def go() -> None:
        raise exc

    return go


def _chain(exc: BaseException | None) -> list[BaseException]:
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


# ------------------------------------------------------------------------ retry


def test_transient_errors_are_retried_with_growing_jittered_backoff() -> None:
    clock = FakeClock()
    retries: list[tuple[int, str, float]] = []
    p = policy(clock, on_retry=lambda n, e, d: retries.append((n, str(e), d)))
    fn = Flaky(3, TransientError("reset"))
    assert run(p, fn) == "ok" and fn.calls == 4
    assert [(n, e) for n, e, _ in retries] == [(1, "reset"), (2, "reset"), (3, "reset")]
    assert [d for *_, d in retries] == clock.sleeps  # the hook sees the real delays
    ceilings = [0.5, 1.0, 2.0]  # full jitter: uniform in [0, initial * 2**(n-1)]
    assert all(0 <= d <= c for d, c in zip(clock.sleeps, ceilings, strict=True))
    assert len(set(clock.sleeps)) == 3  # jittered, not constant
    assert clock.now == pytest.approx(sum(clock.sleeps))  # only fake time passed


def test_full_jitter_fills_its_range_and_grows() -> None:
    # Across many seeds the n-th wait covers [0, ceiling]: the mean grows with n.
    means = []
    for attempt in range(1, 5):
        samples = []
        for seed in range(200):
            clock = FakeClock()
            p = policy(clock, max_attempts=attempt + 1, rng=random.Random(seed))
            with pytest.raises(BackendUnavailable):
                run(p, Flaky(100, TransientError("x")))
            samples.append(clock.sleeps[-1])
        ceiling = 0.5 * 2 ** (attempt - 1)
        assert max(samples) <= ceiling and min(samples) < 0.1 * ceiling
        means.append(sum(samples) / len(samples))
    assert means == sorted(means) and means[-1] > 3 * means[0]


def test_backoff_without_jitter_is_exponential_and_capped() -> None:
    clock = FakeClock()
    p = policy(clock, max_attempts=8, max_seconds=1e6, jitter="none")
    with pytest.raises(BackendUnavailable):
        run(p, Flaky(100, TransientError("x")))
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_backoff_is_capped_with_full_jitter() -> None:
    clock = FakeClock()
    p = policy(clock, max_attempts=12, max_seconds=1e6)
    with pytest.raises(BackendUnavailable):
        run(p, Flaky(100, TransientError("x")))
    assert max(clock.sleeps) <= 8.0 and len(clock.sleeps) == 11


def test_decorrelated_jitter_stays_within_its_bounds() -> None:
    clock = FakeClock()
    p = policy(clock, max_attempts=30, max_seconds=1e6, jitter="decorrelated")
    with pytest.raises(BackendUnavailable):
        run(p, Flaky(100, TransientError("x")))
    previous = 0.5
    for delay in clock.sleeps:
        assert 0.5 <= delay <= min(8.0, 3 * previous) + 1e-12
        previous = delay
    uncapped = [d for d in clock.sleeps if d < 8.0]
    assert len(set(uncapped)) == len(uncapped) >= 2  # random, not a fixed schedule
    assert max(clock.sleeps) > 4.0  # it grows towards the cap


@pytest.mark.parametrize(
    "exc",
    [ConfigurationError("bad"), AudioError("empty", reason="empty"), RemoteExecutionError("oom"),
     BackendUnavailable("no creds"), CircuitOpenError("open"), StorageNotFound("gone"),
     ValueError("plain"), KeyboardInterrupt()],
)  # fmt: skip
def test_permanent_errors_are_not_retried(exc: BaseException) -> None:
    clock = FakeClock()
    calls = 0

    def fn() -> None:
        nonlocal calls
        calls += 1
        raise exc

    with pytest.raises(type(exc)) as info:
        run(policy(clock), fn)
    assert info.value is exc and calls == 1 and clock.sleeps == []


def test_storage_throttling_is_transient() -> None:
    clock = FakeClock()
    fn = Flaky(2, StorageTransient("SlowDown"))
    assert run(policy(clock), fn) == "ok" and fn.calls == 3


def test_arguments_are_passed_through() -> None:
    clock = FakeClock()
    assert run(policy(clock), lambda a, *, b: a + b, 2, b=3) == 5


def test_exhaustion_becomes_backend_unavailable_with_the_cause() -> None:
    clock = FakeClock()
    last = TransientError("still down")
    fn = Flaky(100, last)
    with pytest.raises(BackendUnavailable) as info:
        run(policy(clock, max_attempts=3), fn)
    assert fn.calls == 3 and info.value.__cause__ is last
    assert "after 3 attempts over" in str(info.value) and "still down" in str(info.value)
    # tenacity never leaks, not even as the implicit context
    assert not any(isinstance(e, tenacity.RetryError) for e in _chain(info.value))


def test_one_attempt_means_no_retry() -> None:
    clock = FakeClock()
    with pytest.raises(BackendUnavailable, match="after 1 attempt over"):
        run(policy(clock, max_attempts=1), Flaky(1, TransientError("x")))
    assert clock.sleeps == []


def test_total_time_budget_stops_retries() -> None:
    clock = FakeClock()
    starts: list[float] = []

    def slow_failure() -> str:
        starts.append(clock.now)
        clock.advance(4.0)  # each attempt takes 4 s
        raise TransientError("timeout")

    with pytest.raises(BackendUnavailable) as info:
        run(policy(clock, max_attempts=100, max_seconds=10.0), slow_failure)
    assert 2 <= len(starts) < 100  # the budget, not the attempt count, stopped it
    assert all(s <= 10.0 for s in starts)  # no attempt starts after the budget
    assert clock.now <= 10.0 + 4.0  # at most one attempt's length over
    assert "over 1" in str(info.value)  # "... over 1x.x s"


def test_waits_are_clipped_to_the_remaining_budget() -> None:
    clock = FakeClock()
    p = policy(clock, max_attempts=10, max_seconds=3.0, jitter="none")
    with pytest.raises(BackendUnavailable):
        run(p, Flaky(100, TransientError("x")))
    assert clock.sleeps == [0.5, 1.0, 1.5]  # the third wait (2.0) cut to what was left
    assert clock.now == 3.0


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


async def test_async_permanent_error_and_exhaustion() -> None:
    clock = FakeClock()
    audio_calls = 0

    async def bad_audio() -> None:
        nonlocal audio_calls
        audio_calls += 1
        raise AudioError("bad", reason="not_audio")

    with pytest.raises(AudioError):
        await policy(clock).acall(bad_audio)
    assert audio_calls == 1 and clock.sleeps == []
    last = TransientError("down")

    async def down() -> None:
        raise last

    with pytest.raises(BackendUnavailable) as info:
        await policy(clock, max_attempts=4).acall(down)
    assert info.value.__cause__ is last and len(clock.sleeps) == 3
    assert not any(isinstance(e, tenacity.RetryError) for e in _chain(info.value))


async def test_async_cancellation_is_not_retried() -> None:
    clock = FakeClock()
    calls = 0

    async def cancelled() -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await policy(clock).acall(cancelled)
    assert calls == 1


@pytest.mark.parametrize(
    "kw",
    [{"max_attempts": 0}, {"max_seconds": 0}, {"max_seconds": float("inf")},
     {"initial_backoff": 2.0, "max_backoff": 1.0}, {"initial_backoff": -1}, {"jitter": "some"}],
)  # fmt: skip
def test_bad_policies_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**kw)  # type: ignore[arg-type]


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


async def adown() -> None:
    raise TransientError("down")


async def atrip(b: CircuitBreaker, n: int = 3) -> None:
    for _ in range(n):
        with pytest.raises(TransientError):
            await b.acall(adown)


def trip(b: CircuitBreaker, n: int = 3) -> None:
    asyncio.run(atrip(b, n))


def test_breaker_opens_after_exactly_n_failures_and_refuses_without_calling() -> None:
    clock = FakeClock()
    b, moves = breaker(clock)
    trip(b, 2)
    assert b.state is BreakerState.CLOSED and b.snapshot().consecutive_failures == 2
    trip(b, 1)
    assert b.state is BreakerState.OPEN and moves == [("closed", "open")]
    called = []
    clock.advance(10)
    with pytest.raises(CircuitOpenError, match=r"next probe in 20\.0 s") as info:
        run(b, lambda: called.append(1))
    assert "TransientError: down" in str(info.value)
    assert called == [] and b.snapshot().rejections == 1


def test_a_success_resets_the_consecutive_count() -> None:
    clock = FakeClock()
    b, moves = breaker(clock)
    for _ in range(5):
        trip(b, 2)
        assert run(b, lambda: "ok") == "ok"
    assert b.state is BreakerState.CLOSED and moves == []
    assert b.snapshot().failures == 10 and b.snapshot().successes == 5


def test_half_open_probe_success_closes_failure_reopens() -> None:
    clock = FakeClock()
    b, moves = breaker(clock)
    trip(b)
    clock.advance(29.9)
    assert b.state is BreakerState.OPEN
    clock.advance(0.1)
    assert b.state is BreakerState.HALF_OPEN
    with pytest.raises(TransientError):
        run(b, fail)  # the probe fails: open again with a fresh timer
    assert b.state is BreakerState.OPEN
    clock.advance(29.0)
    assert b.state is BreakerState.OPEN  # the timer restarted at the probe failure
    clock.advance(1.0)
    assert run(b, lambda: "up") == "up"
    assert b.state is BreakerState.CLOSED
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "open"),
                     ("open", "half_open"), ("half_open", "closed")]  # fmt: skip
    snap = b.snapshot()
    assert snap.opened_count == 2 and snap.consecutive_failures == 0
    assert snap.last_transition == clock.now and snap.last_failure == "TransientError: down"


def test_user_errors_do_not_count_and_release_the_probe() -> None:
    clock = FakeClock()
    b, _ = breaker(clock)
    user_errors = [AudioError("x"), ConfigurationError("y"), RemoteExecutionError("z"),
                   StorageNotFound("w"), CircuitOpenError("v"), ValueError("u")]  # fmt: skip
    for exc in user_errors * 3:
        with pytest.raises(type(exc)):
            run(b, _raiser(exc))
    assert b.state is BreakerState.CLOSED and b.snapshot().failures == 0
    trip(b)
    clock.advance(30)
    with pytest.raises(AudioError):
        run(b, _raiser(AudioError("bad input during the probe")))
    assert b.state is BreakerState.HALF_OPEN  # slot released, state unchanged
    assert run(b, lambda: 1) == 1 and b.state is BreakerState.CLOSED


def test_default_failure_classification() -> None:
    assert counts_as_failure(TransientError("x")) and counts_as_failure(StorageTransient("x"))
    assert counts_as_failure(BackendUnavailable("x"))
    for exc in [AudioError("x"), ConfigurationError("x"), RemoteExecutionError("x"),
                StorageNotFound("x"), CircuitOpenError("x"), asyncio.CancelledError()]:  # fmt: skip
        assert not counts_as_failure(exc)


def test_primitives_and_tokens() -> None:
    clock = FakeClock()
    b, _ = breaker(clock)
    trip(b)
    clock.advance(30)
    probe = b.before_call()
    assert isinstance(probe, BreakerToken) and probe.probe
    with pytest.raises(CircuitOpenError, match="probe call is in flight"):
        b.before_call()
    # a forged or stale token cannot free the probe slot or close the breaker
    b.record_success(BreakerToken(probe=True))
    assert b.state is BreakerState.HALF_OPEN
    with pytest.raises(CircuitOpenError):
        b.before_call()
    b.record_failure(probe, TransientError("probe failed"))
    assert b.state is BreakerState.OPEN
    b.record_success(probe)  # the same token again: an ordinary success, no transition
    assert b.state is BreakerState.OPEN and b.snapshot().successes == 2


async def test_acall_records_outcomes_and_refuses_without_running() -> None:
    clock = FakeClock()
    b, moves = breaker(clock)
    await atrip(b)
    assert b.snapshot().failures == 3 and b.state is BreakerState.OPEN
    ran = []

    async def never() -> None:
        ran.append(1)

    with pytest.raises(CircuitOpenError):
        await b.acall(never)
    assert ran == [] and b.snapshot().rejections == 1
    clock.advance(30)

    async def probe() -> str:
        with pytest.raises(CircuitOpenError, match="probe call is in flight"):
            b.before_call()  # this call holds the one probe slot
        await asyncio.sleep(0)
        return "up"

    assert await b.acall(probe) == "up"
    assert b.state is BreakerState.CLOSED and moves[-1] == ("half_open", "closed")
    snap = b.snapshot()
    assert (snap.successes, snap.failures, snap.rejections) == (1, 3, 2)


async def test_cancelled_probe_frees_the_slot() -> None:
    clock = FakeClock()
    b, _ = breaker(clock)
    await atrip(b)
    clock.advance(30)
    entered = asyncio.Event()

    async def hang() -> None:
        entered.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(b.acall(hang))
    await entered.wait()
    with pytest.raises(CircuitOpenError):
        b.before_call()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.state is BreakerState.HALF_OPEN and b.snapshot().failures == 3
    assert b.before_call().probe  # the next caller may probe


def test_failure_rate_rule() -> None:
    clock = FakeClock()
    b, _ = breaker(clock, window=60.0, failure_rate=0.5, min_calls=10)
    calls = 0
    for i in range(20):  # alternate: never 3 in a row, but 50% failures
        clock.advance(1)
        calls += 1
        if i % 2:
            with pytest.raises(TransientError):
                run(b, fail)
        else:
            run(b, lambda: None)
        if b.state is BreakerState.OPEN:
            break
    assert calls == 10  # opened on the first call that reached min_calls
    assert b.state is BreakerState.OPEN and b.snapshot().consecutive_failures == 1


def test_failure_rate_window_slides() -> None:
    clock = FakeClock()
    b, _ = breaker(clock, window=10.0, failure_rate=0.6, min_calls=4)
    for i in range(42):  # 1 failure in 3 calls: at most 50% of a window, under 60%
        clock.advance(1)
        if i % 3 == 0:
            with pytest.raises(TransientError):
                run(b, fail)
        else:
            run(b, lambda: None)
    assert b.state is BreakerState.CLOSED
    clock.advance(100)  # the old successes slide out of the window
    trip(b, 2)
    assert b.state is BreakerState.CLOSED  # 2 calls in the window < min_calls
    run(b, lambda: None)
    trip(b, 1)  # 3 of the 4 calls in the window failed, never 3 in a row
    assert b.state is BreakerState.OPEN and b.snapshot().consecutive_failures == 1


@pytest.mark.parametrize(
    "kw",
    [{"failure_threshold": 0}, {"reset_timeout": 0}, {"window": 10.0},
     {"window": 10.0, "failure_rate": 1.5}, {"min_calls": 0}],
)  # fmt: skip
def test_bad_breakers_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        CircuitBreaker("x", **kw)  # type: ignore[arg-type]


def test_exactly_one_probe_among_32_threads() -> None:
    clock = FakeClock()
    b, _ = breaker(clock)
    trip(b)
    clock.advance(30)
    start, hold = threading.Barrier(32), threading.Event()
    admitted: list[int] = []
    refused = 0
    cond = threading.Condition()

    def probe() -> None:
        with cond:
            admitted.append(threading.get_ident())
        hold.wait(10)

    def worker() -> None:
        nonlocal refused
        start.wait()
        try:
            run(b, probe)
        except CircuitOpenError:
            with cond:
                refused += 1
                cond.notify_all()

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    with cond:  # every other thread is refused while the probe is held
        assert cond.wait_for(lambda: refused == 31, timeout=10)
    hold.set()
    for t in threads:
        t.join(10)
    assert len(admitted) == 1 and refused == 31
    assert b.state is BreakerState.CLOSED and b.snapshot().rejections == 31


def test_32_threads_and_32_tasks_hammer_one_breaker() -> None:
    clock = FakeClock()
    moves: list[tuple[BreakerState, BreakerState]] = []
    b = CircuitBreaker(
        "hammer", failure_threshold=3, reset_timeout=5.0, clock=clock,
        on_transition=lambda a, z: moves.append((a, z)),
    )  # fmt: skip
    lock = threading.Lock()
    outcomes = {"ok": 0, "failed": 0, "refused": 0, "probes": 0}
    in_probe = max_in_probe = 0

    def admit() -> BreakerToken | None:
        nonlocal in_probe, max_in_probe
        clock.advance(0.25)  # time passes between calls, so the breaker cycles
        try:
            token = b.before_call()
        except CircuitOpenError:
            with lock:
                outcomes["refused"] += 1
            return None
        if token.probe:
            with lock:
                in_probe += 1
                outcomes["probes"] += 1
                max_in_probe = max(max_in_probe, in_probe)
        return token

    def finish(token: BreakerToken, i: int) -> None:
        nonlocal in_probe
        if token.probe:  # leave the probe section before the slot is released
            with lock:
                in_probe -= 1
        failed = i % 5 in (1, 2, 3)  # a deterministic 60% fault pattern
        with lock:
            outcomes["failed" if failed else "ok"] += 1
        if failed:
            b.record_failure(token, TransientError("injected"))
        else:
            b.record_success(token)

    def thread_main(t: int) -> None:
        for i in range(50):
            if (token := admit()) is not None:
                time.sleep(0)  # let others run while this call is "in flight"
                finish(token, t * 50 + i)

    async def task_main(t: int) -> None:
        for i in range(50):
            if (token := admit()) is not None:
                await asyncio.sleep(0)  # other tasks run while the call (or probe) is open
                finish(token, t * 50 + i)
            await asyncio.sleep(0)

    threads = [threading.Thread(target=thread_main, args=(t,)) for t in range(32)]
    for th in threads:
        th.start()

    async def all_tasks() -> None:
        await asyncio.gather(*(task_main(t) for t in range(32, 64)))

    asyncio.run(all_tasks())
    for th in threads:
        th.join(30)
    snap = b.snapshot()
    assert outcomes["ok"] + outcomes["failed"] + outcomes["refused"] == 64 * 50
    assert snap.successes == outcomes["ok"] and snap.failures == outcomes["failed"]
    assert snap.rejections == outcomes["refused"]
    assert max_in_probe == 1 and outcomes["probes"] >= 1  # probes ran, never two at once
    assert set(moves) <= ALLOWED_TRANSITIONS and moves[0][0] is BreakerState.CLOSED
    assert all(a[1] is z[0] for a, z in itertools.pairwise(moves))  # one connected path
    assert moves[-1][1] is snap.state
    assert snap.opened_count == sum(1 for _, z in moves if z is BreakerState.OPEN) >= 2


def test_transitions_are_logged_and_a_failing_hook_is_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()

    def hook(old: BreakerState, new: BreakerState) -> None:
        raise RuntimeError("observer bug")

    b = CircuitBreaker("logged", 3, 30.0, clock=clock, on_transition=hook)
    with caplog.at_level(logging.INFO, logger="whisper_modal.resilience"):
        trip(b)  # the hook raises: the caller still sees its own TransientError
    moved = [r for r in caplog.records if getattr(r, "event", None) == "breaker_transition"]
    assert len(moved) == 1 and moved[0].levelno == logging.WARNING
    record = moved[0]
    assert (record.breaker, getattr(record, "from"), record.to) == ("logged", "closed", "open")  # type: ignore[attr-defined]
    assert any("on_transition hook" in r.getMessage() for r in caplog.records)
    assert b.state is BreakerState.OPEN
