"""Resilience: the retry policy, the circuit breaker and deadlines (independent of Modal).

* ``RetryPolicy`` retries **only** ``TransientError`` (connection, timeout, throttling;
  ``StorageTransient`` included) with exponential backoff and jitter, bounded in attempts
  and in total time; exhaustion becomes ``BackendUnavailable`` whose ``__cause__`` is the
  last transient error. Built on tenacity; ``asleep``/``clock``/``rng`` are injectable,
  so tests take no wall time and are reproducible.
* ``CircuitBreaker`` counts only backend-availability failures (``TransientError``,
  ``BackendUnavailable``), never a user error. CLOSED -> OPEN after N consecutive failures
  (or a failure rate over a sliding window); OPEN -> HALF_OPEN once ``reset_timeout`` has
  passed (checked lazily); exactly one probe at a time in HALF_OPEN; CLOSED on probe
  success, OPEN (fresh timer) on probe failure. One ``threading.Lock``, never held across
  the protected call or an ``await``, so one breaker is safe from threads and asyncio tasks.

Both are async inside the SDK: ``RetryPolicy.acall`` and ``CircuitBreaker.acall``. A caller
that wraps its own (sync or async) I/O uses the breaker's primitives ``before_call`` +
``record_success``/``record_failure``.

Deadlines belong to the transport (``backends.modal``: ``asyncio.timeout`` per phase).
Composition used by the client (``backends.chain.ResilientBackend``):
``retry.acall(breaker.acall, op)``, each attempt one breaker call; an open breaker raises
``CircuitOpenError``, which is not retried (-> fallback).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import attrs
import tenacity

from whisper_modal.errors import (
    BackendUnavailable,
    CircuitOpenError,
    ConfigurationError,
    TransientError,
)
from whisper_modal.metrics import redact_text

__all__ = [
    "BreakerState",
    "BreakerStats",
    "BreakerToken",
    "CircuitBreaker",
    "RetryPolicy",
    "counts_as_failure",
]

log = logging.getLogger("whisper_modal.resilience")
T = TypeVar("T")

Jitter = Literal["full", "decorrelated", "none"]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigurationError(message)


# ------------------------------------------------------------------------------ retry


def _map_tenacity_error(exc: tenacity.RetryError, elapsed: float) -> BackendUnavailable:
    """The one place tenacity's exhaustion error is translated (nothing tenacity leaks)."""
    attempts = exc.last_attempt.attempt_number
    last = exc.last_attempt.exception()
    plural = "" if attempts == 1 else "s"
    return BackendUnavailable(
        f"gave up after {attempts} attempt{plural} over {elapsed:.1f} s: "
        f"{type(last).__name__}: {last}"
    )


class _StopAfterBudget(tenacity.stop.stop_base):
    """``stop_after_delay`` on our injectable clock (tenacity's uses ``time.monotonic``)."""

    def __init__(self, clock: Callable[[], float], started: float, budget: float) -> None:
        self.clock, self.started, self.budget = clock, started, budget

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self.clock() - self.started >= self.budget


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """Retry ``TransientError`` with capped exponential backoff and jitter.

    The n-th wait (n = 1, 2, ...) has the exponential ceiling
    ``c(n) = min(max_backoff, initial_backoff * 2**(n-1))`` and, by ``jitter``:

    * ``"full"`` (default): uniform in ``[0, c(n)]``. Spreads a thundering herd of clients
      best (AWS Architecture Blog, "Exponential Backoff And Jitter").
    * ``"decorrelated"``: uniform in ``[initial_backoff, 3 * previous wait]``, capped at
      ``max_backoff``; grows like the exponential but each client drifts independently.
    * ``"none"``: exactly ``c(n)`` (deterministic; for tests and tooling).

    No wait extends past the total budget ``max_seconds`` and no attempt starts after it.
    Any exception that is not a ``TransientError`` propagates at once, unchanged.
    """

    max_attempts: int = 4  # including the first call
    max_seconds: float = 60.0  # total budget: attempts plus waits
    initial_backoff: float = 0.5  # seconds; ceiling of the first wait
    max_backoff: float = 8.0  # seconds; no single wait is longer
    jitter: Jitter = "full"
    asleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    clock: Callable[[], float] = time.monotonic  # monotonic seconds
    rng: random.Random = attrs.field(factory=random.Random, eq=False)
    #: called as ``on_retry(attempt, exc, delay)`` before each wait (metrics, logging);
    #: ``attempt`` is the number of the attempt that just failed.
    on_retry: Callable[[int, BaseException, float], None] | None = None

    def __attrs_post_init__(self) -> None:
        _check(self.max_attempts >= 1, f"max_attempts must be >= 1, got {self.max_attempts}")
        _check(
            math.isfinite(self.max_seconds) and self.max_seconds > 0,
            f"max_seconds must be positive, got {self.max_seconds}",
        )
        _check(
            0 <= self.initial_backoff <= self.max_backoff < math.inf,
            "need 0 <= initial_backoff <= max_backoff (finite), got "
            f"{self.initial_backoff} and {self.max_backoff}",
        )
        _check(self.jitter in ("full", "decorrelated", "none"), f"bad jitter {self.jitter!r}")

    def _retrying_kwargs(self, started: float) -> dict[str, Any]:
        ceiling = tenacity.wait_exponential(multiplier=self.initial_backoff, max=self.max_backoff)
        previous = [self.initial_backoff]  # per call: decorrelated jitter's memory

        def wait(state: tenacity.RetryCallState) -> float:
            if self.jitter == "full":
                delay = self.rng.uniform(0.0, ceiling(state))
            elif self.jitter == "decorrelated":
                high = max(self.initial_backoff, 3 * previous[0])
                delay = min(self.max_backoff, self.rng.uniform(self.initial_backoff, high))
                previous[0] = delay
            else:
                delay = ceiling(state)
            remaining = self.max_seconds - (self.clock() - started)
            return max(0.0, min(delay, remaining))

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            if self.on_retry is not None and exc is not None:
                self.on_retry(state.attempt_number, exc, state.upcoming_sleep)

        return {
            "retry": tenacity.retry_if_exception_type(TransientError),
            "stop": tenacity.stop_after_attempt(self.max_attempts)
            | _StopAfterBudget(self.clock, started, self.max_seconds),
            "wait": wait,
            "before_sleep": before_sleep,
            "reraise": False,
        }

    async def acall(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Await ``fn(*args, **kwargs)``, retrying it on ``TransientError``; waits use ``asleep``.

        Returns:
            What the awaitable returns.

        Raises:
            BackendUnavailable: attempts or time exhausted; ``__cause__`` is the last error.
            Exception: any error that is not a ``TransientError``, at once and unchanged.
        """
        started = self.clock()
        retrying = tenacity.AsyncRetrying(sleep=self.asleep, **self._retrying_kwargs(started))

        async def invoke() -> T:
            # tenacity awaits only coroutine *functions*; a plain callable returning an
            # awaitable would come back un-awaited, so always hand it one.
            return await fn(*args, **kwargs)

        try:
            result: T = await retrying(invoke)
            return result
        except tenacity.RetryError as exc:
            mapped, cause = _map_tenacity_error(exc, self.clock() - started), exc
        # Raised outside the except block so tenacity's RetryError is not even __context__.
        raise mapped from cause.last_attempt.exception()


# ---------------------------------------------------------------------------- breaker


class BreakerState(enum.StrEnum):
    """Circuit breaker states (``str(state)`` is the value, e.g. ``"half_open"``)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


#: The only edges the state machine takes.
ALLOWED_TRANSITIONS = frozenset(
    {
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
        (BreakerState.HALF_OPEN, BreakerState.OPEN),
    }
)


@attrs.frozen
class BreakerStats:
    """A consistent snapshot of a breaker (counters are totals since creation)."""

    name: str
    state: BreakerState
    consecutive_failures: int
    successes: int
    failures: int  # counted failures only (user errors are not failures)
    rejections: int  # calls refused with CircuitOpenError
    opened_count: int  # times the breaker went OPEN
    last_failure: str | None  # "TransientError: message" (redacted, truncated)
    last_transition: float | None  # clock() value of the last state change


@attrs.frozen(eq=False)
class BreakerToken:
    """Proof of admission from ``before_call``; hand it back to ``record_*`` exactly once."""

    probe: bool  # this call is the single half-open probe


def counts_as_failure(exc: BaseException) -> bool:
    """Backend-availability failures count; user errors (audio, options, engine) do not."""
    return isinstance(exc, TransientError | BackendUnavailable)


class CircuitBreaker:
    """A thread- and asyncio-safe circuit breaker; see the module docstring.

    Use ``acall``, or the primitives ``before_call`` + ``record_success``/``record_failure``
    around I/O of your own.

    Args:
        name: shown in logs and errors (e.g. ``"modal:whisper-modal"``).
        failure_threshold: consecutive counted failures that open the breaker.
        reset_timeout: seconds OPEN before one probe call is let through.
        window: seconds of history for the failure-rate rule (``None``: rule off).
        failure_rate: open when failures / calls in ``window`` reach this fraction.
        min_calls: calls needed in the window before the rate rule applies.
        clock: monotonic clock (injectable for tests).
        on_transition: called as ``on_transition(old, new)`` outside the lock, in the order
            the transitions happened; keep it quick (it may run on the event loop thread).
        is_failure: which exceptions count (default ``counts_as_failure``).

    Raises:
        ConfigurationError: inconsistent arguments.
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
        _check(failure_threshold >= 1, f"failure_threshold must be >= 1, got {failure_threshold}")
        _check(reset_timeout > 0, f"reset_timeout must be positive, got {reset_timeout}")
        _check((window is None) == (failure_rate is None), "give window and failure_rate together")
        _check(window is None or window > 0, f"window must be positive, got {window}")
        _check(
            failure_rate is None or 0 < failure_rate <= 1,
            f"failure_rate must be in (0, 1], got {failure_rate}",
        )
        _check(min_calls >= 1, f"min_calls must be >= 1, got {min_calls}")
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
        self._probe: BreakerToken | None = None  # the probe in flight, if any
        self._consecutive = 0
        self._successes = self._failures = self._rejections = self._opened = 0
        self._last_failure: str | None = None
        self._last_transition: float | None = None
        self._history: collections.deque[tuple[float, bool]] = collections.deque()
        # Transitions are queued under _lock and delivered in order under _report_lock
        # (reentrant, so a hook may use the breaker), never while holding _lock.
        self._pending: collections.deque[tuple[BreakerState, BreakerState]] = collections.deque()
        self._report_lock = threading.RLock()

    @property
    def state(self) -> BreakerState:
        """The current state (OPEN turns HALF_OPEN lazily once the reset timeout passed)."""
        with self._lock:
            self._maybe_half_open()
            state = self._state
        self._flush()
        return state

    def snapshot(self) -> BreakerStats:
        """A consistent copy of the state and counters."""
        with self._lock:
            self._maybe_half_open()
            stats = BreakerStats(
                self.name, self._state, self._consecutive, self._successes, self._failures,
                self._rejections, self._opened, self._last_failure, self._last_transition,
            )  # fmt: skip
        self._flush()
        return stats

    # -- the primitives
    def before_call(self) -> BreakerToken:
        """Admit a call, or refuse it.

        Returns:
            A token to pass to ``record_success`` or ``record_failure`` exactly once.

        Raises:
            CircuitOpenError: the breaker is open, or half-open with its probe in flight.
        """
        refused: str | None = None
        token = BreakerToken(probe=False)
        with self._lock:
            self._maybe_half_open()
            if self._state is BreakerState.HALF_OPEN and self._probe is None:
                token = self._probe = BreakerToken(probe=True)
            elif self._state is BreakerState.HALF_OPEN:
                self._rejections += 1
                refused = f"circuit {self.name} is half-open and its probe call is in flight"
            elif self._state is BreakerState.OPEN:
                self._rejections += 1
                wait = max(0.0, self._opened_at + self.reset_timeout - self.clock())
                refused = (
                    f"circuit {self.name} is open after repeated failures "
                    f"(last: {self._last_failure}); next probe in {wait:.1f} s"
                )
        self._flush()
        if refused is not None:
            raise CircuitOpenError(refused)
        return token

    def record_success(self, token: BreakerToken) -> None:
        """Report that an admitted call succeeded (a probe success closes the breaker)."""
        with self._lock:
            self._successes += 1
            self._consecutive = 0
            self._remember(ok=True)
            if self._release(token):
                self._move(BreakerState.CLOSED)
        self._flush()

    def record_failure(self, token: BreakerToken, exc: BaseException) -> None:
        """Report that an admitted call raised ``exc``.

        A counted failure (``is_failure``) may open the breaker; a failed probe re-opens it
        with a fresh timer. Any other exception (a user error, a cancellation) only
        releases the probe slot and leaves the state alone.
        """
        counts = self.is_failure(exc)
        with self._lock:
            probe = self._release(token)
            if counts:
                self._failures += 1
                self._consecutive += 1
                self._last_failure = redact_text(f"{type(exc).__name__}: {exc}")[:300]
                self._remember(ok=False)
                if probe or self._should_open():
                    self._move(BreakerState.OPEN)
        self._flush()

    # -- the convenience
    async def acall(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Await ``fn(*args, **kwargs)`` through the breaker (cancellation frees the probe).

        Raises:
            CircuitOpenError: refused without calling ``fn``.
            BaseException: whatever the awaitable raises, unchanged (after being recorded).
        """
        token = self.before_call()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:  # CancelledError too: it must release the probe slot
            self.record_failure(token, exc)
            raise
        self.record_success(token)
        return result

    # -- internals (called with _lock held)
    def _release(self, token: BreakerToken) -> bool:
        # Identity, not the flag: a stale or repeated token cannot free someone's probe.
        if token.probe and token is self._probe:
            self._probe = None
            return True
        return False

    def _maybe_half_open(self) -> None:
        if (
            self._state is BreakerState.OPEN
            and self.clock() - self._opened_at >= self.reset_timeout
        ):
            self._move(BreakerState.HALF_OPEN)

    def _should_open(self) -> bool:
        if self._state is not BreakerState.CLOSED:
            return False
        if self._consecutive >= self.failure_threshold:
            return True
        if self.failure_rate is None or len(self._history) < self.min_calls:
            return False
        failed = sum(1 for _, ok in self._history if not ok)
        return failed / len(self._history) >= self.failure_rate

    def _remember(self, *, ok: bool) -> None:
        # Only successes and counted failures enter the window: a user error says nothing
        # about the backend's availability.
        if self.window is None:
            return
        now = self.clock()
        self._history.append((now, ok))
        while self._history and self._history[0][0] <= now - self.window:
            self._history.popleft()

    def _move(self, new: BreakerState) -> None:
        old = self._state
        if old is new:
            return
        if (old, new) not in ALLOWED_TRANSITIONS:  # a bug here, never the caller's fault
            raise RuntimeError(f"circuit {self.name}: illegal transition {old} -> {new}")
        self._state = new
        self._last_transition = self.clock()
        if new is BreakerState.OPEN:
            self._opened_at = self._last_transition
            self._opened += 1
        elif new is BreakerState.CLOSED:
            self._consecutive = 0
            self._history.clear()
        self._pending.append((old, new))

    # -- reporting (called without _lock)
    def _flush(self) -> None:
        if not self._pending:
            return
        with self._report_lock:
            # Only this section pops (other threads only append), so a non-empty queue
            # still holds its head here.
            while self._pending:
                old, new = self._pending.popleft()
                level = logging.WARNING if new is BreakerState.OPEN else logging.INFO
                extra = {"event": "breaker_transition", "breaker": self.name,
                         "from": old.value, "to": new.value}  # fmt: skip
                log.log(level, "circuit %s: %s -> %s", self.name, old, new, extra=extra)
                if self.on_transition is None:
                    continue
                try:
                    self.on_transition(old, new)
                except Exception:  # an observer must never break the protected call
                    log.exception("on_transition hook of circuit %s failed", self.name)
