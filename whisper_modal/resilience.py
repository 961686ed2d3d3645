"""Resilience: the retry policy, the circuit breaker and deadlines.

* ``RetryPolicy`` retries **only** ``TransientError`` (connection, timeout, throttling,
  Modal internal failures, S3 throttling) with exponential backoff and full jitter, bounded
  in attempts and total time; exhaustion becomes ``BackendUnavailable``. Built on tenacity;
  sleep and clock are injectable, so tests take no wall time.
* ``CircuitBreaker`` counts only backend-availability failures (``TransientError``,
  ``BackendUnavailable``) — never a user error. CLOSED -> OPEN after N consecutive failures
  (or a failure rate over a window); OPEN -> HALF_OPEN after ``reset_timeout``; exactly one
  probe in HALF_OPEN; CLOSED on probe success, OPEN (fresh timer) on probe failure. One
  ``threading.Lock``, never held across a call or an ``await``, so one breaker is safe from
  threads and asyncio tasks at once.
* Deadlines: ``arun_with_deadline`` (``asyncio.wait_for``) and ``run_with_deadline``
  (a daemon worker thread) turn a hung call into a ``TransientError`` on time.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import tenacity

from whisper_modal.errors import BackendUnavailable, CircuitOpenError, TransientError

__all__ = [
    "BreakerState",
    "BreakerStats",
    "CircuitBreaker",
    "Deadline",
    "RetryPolicy",
    "arun_with_deadline",
    "counts_as_failure",
    "run_with_deadline",
]

log = logging.getLogger("whisper_modal.resilience")
T = TypeVar("T")


# ------------------------------------------------------------------------------ retry


def _map_tenacity_error(
    exc: tenacity.RetryError, attempts: int, elapsed: float
) -> BackendUnavailable:
    """The one place tenacity's exhaustion error is translated."""
    last = exc.last_attempt.exception() if exc.last_attempt.failed else None
    return BackendUnavailable(
        f"gave up after {attempts} attempt(s) over {elapsed:.1f} s: {type(last).__name__}: {last}"
    )


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter for ``TransientError`` only.

    The n-th wait is uniform in [0, min(max_backoff, initial_backoff * 2**n)] ("full
    jitter", which spreads a thundering herd best), and never beyond the remaining time
    budget.
    """

    max_attempts: int = 4
    max_seconds: float = 60.0  # total budget, including waits
    initial_backoff: float = 0.5
    max_backoff: float = 8.0
    sleep: Callable[[float], None] = time.sleep
    asleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = attrs.field(factory=random.Random, eq=False)
    on_retry: Callable[[int, BaseException, float], None] | None = None

    def _wait(self, state: tenacity.RetryCallState, started: float) -> float:
        ceiling = min(self.max_backoff, self.initial_backoff * 2 ** (state.attempt_number - 1))
        delay = self.rng.uniform(0, ceiling)
        remaining = self.max_seconds - (self.clock() - started)
        return max(0.0, min(delay, remaining))

    def _stop(self, state: tenacity.RetryCallState, started: float) -> bool:
        # Our own clock, not tenacity's time.monotonic, so the budget is testable.
        spent = self.clock() - started
        return state.attempt_number >= self.max_attempts or spent >= self.max_seconds

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        if self.on_retry is not None and exc is not None:
            self.on_retry(state.attempt_number, exc, delay)

    def _kwargs(self, started: float) -> dict[str, Any]:
        return {
            "retry": tenacity.retry_if_exception_type(TransientError),
            "stop": lambda state: self._stop(state, started),
            "wait": lambda state: self._wait(state, started),
            "before_sleep": self._before_sleep,
            "reraise": False,
        }

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn`` and retry it on ``TransientError``.

        Raises:
            BackendUnavailable: attempts or time exhausted (``__cause__`` is the last error).
            Exception: any non-transient error, at once and unchanged.
        """
        started = self.clock()
        retrying = tenacity.Retrying(sleep=self.sleep, **self._kwargs(started))
        try:
            result: T = retrying(fn, *args, **kwargs)
            return result
        except tenacity.RetryError as exc:
            attempts = retrying.statistics.get("attempt_number", self.max_attempts)
            raise _map_tenacity_error(exc, attempts, self.clock() - started) from (
                exc.last_attempt.exception()
            )

    async def acall(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Async twin of ``call`` (waits with the injectable ``asleep``)."""
        started = self.clock()
        retrying = tenacity.AsyncRetrying(sleep=self.asleep, **self._kwargs(started))

        async def invoke() -> T:
            # tenacity only awaits coroutine *functions*; a lambda returning an awaitable
            # would be returned un-awaited, so always hand it a real coroutine function.
            return await fn(*args, **kwargs)

        try:
            result: T = await retrying(invoke)
            return result
        except tenacity.RetryError as exc:
            attempts = retrying.statistics.get("attempt_number", self.max_attempts)
            raise _map_tenacity_error(exc, attempts, self.clock() - started) from (
                exc.last_attempt.exception()
            )


# ---------------------------------------------------------------------------- breaker


class BreakerState(str, enum.Enum):
    """Circuit breaker states."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@attrs.frozen
class BreakerStats:
    """A consistent snapshot of a breaker."""

    name: str
    state: BreakerState
    consecutive_failures: int
    successes: int
    failures: int
    rejections: int
    opened_count: int
    last_failure: str | None
    last_transition: float | None  # clock() value


def counts_as_failure(exc: BaseException) -> bool:
    """Backend-availability failures count; user errors (audio, options, engine) do not."""
    return isinstance(exc, TransientError | BackendUnavailable)


_ALLOWED = {
    (BreakerState.CLOSED, BreakerState.OPEN),
    (BreakerState.OPEN, BreakerState.HALF_OPEN),
    (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    (BreakerState.HALF_OPEN, BreakerState.OPEN),
}


class CircuitBreaker:
    """A thread- and asyncio-safe circuit breaker; see the module docstring.

    Args:
        name: shown in logs and errors (e.g. "modal:whisper-modal").
        failure_threshold: consecutive failures that open the breaker.
        reset_timeout: seconds OPEN before one probe is allowed.
        window: seconds of history for the failure-rate rule (None: rate rule off).
        failure_rate: open when failures/calls in ``window`` reach this (with ``min_calls``).
        min_calls: calls needed in the window before the rate rule applies.
        clock: monotonic clock (injectable for tests).
        on_transition: called as ``on_transition(old, new)`` outside the lock.
        is_failure: which exceptions count (default ``counts_as_failure``).
    """

    def __init__(
        self,
        name: str,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        *,
        window: float | None = None,
        failure_rate: float | None = None,
        min_calls: int = 20,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Callable[[BreakerState, BreakerState], None] | None = None,
        is_failure: Callable[[BaseException], bool] = counts_as_failure,
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.window = window
        self.failure_rate = failure_rate
        self.min_calls = min_calls
        self.clock = clock
        self.on_transition = on_transition
        self.is_failure = is_failure
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._probe_out = False
        self._consecutive = 0
        self._successes = self._failures = self._rejections = self._opened = 0
        self._last_failure: str | None = None
        self._last_transition: float | None = None
        self._history: collections.deque[tuple[float, bool]] = collections.deque()

    @property
    def state(self) -> BreakerState:
        """The current state (OPEN turns HALF_OPEN lazily once the reset timeout passed)."""
        with self._lock:
            moved = self._maybe_half_open()
            state = self._state
        self._report(moved)
        return state

    def snapshot(self) -> BreakerStats:
        """A consistent copy of the counters."""
        with self._lock:
            moved = self._maybe_half_open()
            stats = BreakerStats(
                self.name, self._state, self._consecutive, self._successes, self._failures,
                self._rejections, self._opened, self._last_failure, self._last_transition,
            )  # fmt: skip
        self._report(moved)
        return stats

    # The three primitives. A token says whether this caller holds the half-open probe.
    def before_call(self) -> bool:
        """Admit a call or raise ``CircuitOpenError``; returns the probe token."""
        refused: str | None = None
        probe = False
        with self._lock:
            moved = self._maybe_half_open()
            if self._state is BreakerState.HALF_OPEN and not self._probe_out:
                self._probe_out = probe = True
            elif self._state is not BreakerState.CLOSED:
                self._rejections += 1
                wait = max(0.0, self._opened_at + self.reset_timeout - self.clock())
                refused = (
                    f"circuit {self.name} is half-open and a probe is in flight"
                    if self._state is BreakerState.HALF_OPEN
                    else f"circuit {self.name} is open after repeated failures; "
                    f"next probe in {wait:.1f} s"
                )
        self._report(moved)
        if refused is not None:
            raise CircuitOpenError(refused)
        return probe

    def record_success(self, probe: bool) -> None:
        """Report a successful call."""
        with self._lock:
            self._successes += 1
            self._consecutive = 0
            self._remember(ok=True)
            moved = None
            if probe:
                self._probe_out = False
                moved = self._move(BreakerState.CLOSED)
        self._report(moved)

    def record_failure(self, probe: bool, exc: BaseException) -> None:
        """Report a failed call; user errors only release a probe slot."""
        counts = self.is_failure(exc)
        with self._lock:
            moved = None
            if probe:
                self._probe_out = False
            if counts:
                self._failures += 1
                self._consecutive += 1
                self._last_failure = f"{type(exc).__name__}: {exc}"[:300]
                self._remember(ok=False)
                if probe or self._should_open():
                    moved = self._move(BreakerState.OPEN)
        self._report(moved)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` through the breaker."""
        probe = self.before_call()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.record_failure(probe, exc)
            raise
        self.record_success(probe)
        return result

    async def acall(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Await ``fn(...)`` through the breaker (cancellation releases the probe)."""
        probe = self.before_call()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self.record_failure(probe, exc)
            raise
        self.record_success(probe)
        return result

    # -- internals (called with the lock held)
    def _maybe_half_open(self) -> tuple[BreakerState, BreakerState] | None:
        if (
            self._state is BreakerState.OPEN
            and self.clock() - self._opened_at >= self.reset_timeout
        ):
            return self._move(BreakerState.HALF_OPEN)
        return None

    def _should_open(self) -> bool:
        if self._state is not BreakerState.CLOSED:
            return False
        if self._consecutive >= self.failure_threshold:
            return True
        if self.window is None or self.failure_rate is None or len(self._history) < self.min_calls:
            return False
        failed = sum(1 for _, ok in self._history if not ok)
        return failed / len(self._history) >= self.failure_rate

    def _remember(self, *, ok: bool) -> None:
        if self.window is None:
            return
        now = self.clock()
        self._history.append((now, ok))
        while self._history and self._history[0][0] < now - self.window:
            self._history.popleft()

    def _move(self, new: BreakerState) -> tuple[BreakerState, BreakerState] | None:
        old = self._state
        if old is new:
            return None
        assert (old, new) in _ALLOWED, (old, new)
        self._state = new
        self._last_transition = self.clock()
        if new is BreakerState.OPEN:
            self._opened_at = self._last_transition
            self._opened += 1
        if new is BreakerState.CLOSED:
            self._consecutive = 0
            self._history.clear()
        return old, new

    def _report(self, moved: tuple[BreakerState, BreakerState] | None) -> None:
        if moved is None:
            return
        old, new = moved
        level = logging.WARNING if new is BreakerState.OPEN else logging.INFO
        log.log(
            level,
            "circuit %s: %s -> %s",
            self.name,
            old.value,
            new.value,
            extra={
                "event": "breaker_transition",
                "breaker": self.name,
                "from": old.value,
                "to": new.value,
            },
        )
        if self.on_transition is not None:
            self.on_transition(old, new)


# --------------------------------------------------------------------------- deadlines


@attrs.define
class Deadline:
    """A point in time after which work must stop."""

    seconds: float
    clock: Callable[[], float] = time.monotonic
    started: float = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.started = self.clock()

    def remaining(self) -> float:
        """Seconds left (never negative)."""
        return max(0.0, self.seconds - (self.clock() - self.started))

    @property
    def expired(self) -> bool:
        """True once no time is left."""
        return self.remaining() <= 0.0

    def check(self, what: str) -> None:
        """Raise ``TransientError`` if the deadline has passed."""
        if self.expired:
            raise TransientError(f"deadline of {self.seconds:g} s passed while {what}")


async def arun_with_deadline(awaitable: Awaitable[T], timeout: float, what: str = "waiting") -> T:
    """Await with a deadline; a timeout cancels the awaitable and raises ``TransientError``."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError as exc:
        raise TransientError(f"no answer within {timeout:g} s while {what}") from exc


def run_with_deadline(fn: Callable[..., T], timeout: float, *args: Any, what: str = "waiting") -> T:
    """Run ``fn`` on a daemon thread and stop waiting after ``timeout`` seconds.

    The worker cannot be killed; it is abandoned (a daemon thread never blocks exit).

    Raises:
        TransientError: ``fn`` did not finish in time.
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name="whisper-modal-deadline", daemon=True).start()
    if not done.wait(timeout):
        raise TransientError(f"no answer within {timeout:g} s while {what}")
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value
