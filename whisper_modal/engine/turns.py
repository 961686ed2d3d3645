"""Who decodes next on a shared model, and stopping work between windows.

One model object decodes one request at a time (openai-whisper installs kv-cache hooks
on it per decode), so requests take *turns*. A turn is not the whole request: the holder
calls ``handover_point()`` before each 30 s window (sequential), before each batch of windows
(batched) and between the tokens of the inference-only decoding loop (``fast_decode``,
which installs no hooks on the model, so the model is clean at every such point), and there

* a request that should go first takes the model over: the line is ordered by a virtual
  deadline, ``arrival + OVERTAKE * audio seconds``, so an 11 s clip that arrives while a
  10-minute file decodes goes next, and the long one still cannot starve (anything that
  arrives more than ``OVERTAKE * 600`` = 60 s after it queues behind it);
* the holder's ``Work`` is checked: cancelled (``JobCancelled``) or past its deadline
  (``JobTimeout``) stops the decode at once, which frees the model for the next request.

``Work`` is the request's side of this: its cancel flag and deadline, set by whoever runs
it (the local backend, for a call or a job) and found through a context variable, so
the engine's signatures do not carry it. Code that sets none (a script calling
``Engine.transcribe``) runs as anonymous work that is never cancelled.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import threading
import time
from collections.abc import Iterator

from whisper_modal.errors import JobCancelled, JobTimeout

__all__ = ["OVERTAKE", "ModelTurns", "Work", "current_work", "handover_point", "running"]

#: a request may be overtaken by one that arrives up to OVERTAKE x its audio length later
OVERTAKE = 0.1
#: how often a waiting request looks at its own cancel flag and deadline (seconds)
POLL = 0.25

_CURRENT: contextvars.ContextVar[Work | None] = contextvars.ContextVar(
    "whisper_modal_work", default=None
)
#: per thread: the turns it holds and its place (set by ``ModelTurns.hold``)
_HELD = threading.local()


class Work:
    """One request's claim on the engine: when it arrived, its cancel flag, its deadline.

    Args:
        deadline: ``time.monotonic()`` after which it stops with ``JobTimeout``.
        job_id: named in the errors it raises.
    """

    def __init__(self, *, deadline: float | None = None, job_id: str | None = None) -> None:
        self.arrived = time.monotonic()
        self.deadline = deadline
        self.job_id = job_id or "?"
        self.seconds = 0.0  # the longest audio it has held the model for
        self._cancelled = threading.Event()

    @classmethod
    def within(cls, seconds: float | None, *, job_id: str | None = None) -> Work:
        """Work that must finish within ``seconds`` from now (None: no limit)."""
        return cls(deadline=None if seconds is None else time.monotonic() + seconds, job_id=job_id)

    def cancel(self) -> None:
        """Ask it to stop: it raises ``JobCancelled`` at its next window (thread-safe)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        """True once ``cancel()`` was called."""
        return self._cancelled.is_set()

    def check(self) -> None:
        """Raise if this work should stop now.

        Raises:
            JobCancelled: ``cancel()`` was called.
            JobTimeout: its deadline has passed.
        """
        if self._cancelled.is_set():
            raise JobCancelled(f"job {self.job_id} was cancelled", job_id=self.job_id)
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise JobTimeout(
                f"job {self.job_id} ran past its time limit; the decode stopped",
                job_id=self.job_id,
            )


def current_work() -> Work | None:
    """The ``Work`` this thread or task runs for, if its caller set one (``running``)."""
    return _CURRENT.get()


@contextlib.contextmanager
def running(work: Work) -> Iterator[Work]:
    """Run the block as ``work``: the engine checks it between windows."""
    token = _CURRENT.set(work)
    try:
        yield work
    finally:
        _CURRENT.reset(token)


class _Place:
    __slots__ = ("key", "work")

    def __init__(self, key: tuple[float, int], work: Work) -> None:
        self.key = key
        self.work = work


def handover_point() -> None:
    """Where the thread holding a model may stop or hand it over (no-op without a turn).

    Raises:
        JobCancelled, JobTimeout: the holder's work was cancelled or ran out of time (the
            model is released by ``ModelTurns.hold``'s exit as the error propagates).
    """
    held: tuple[ModelTurns, _Place] | None = getattr(_HELD, "turn", None)
    if held is not None:
        held[0]._handover(held[1])


class ModelTurns:
    """The lock of one model: it goes to the waiting request with the earliest key."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._holder: _Place | None = None
        self._waiting: list[_Place] = []
        self._order = itertools.count()
        self.handovers = 0  # times a holder gave the model to a request that goes first
        self.stopped = 0  # works stopped (cancelled, out of time) at a handover or in line

    @contextlib.contextmanager
    def hold(self, seconds: float) -> Iterator[None]:
        """Hold the model for a request of ``seconds`` of audio (waiting for its turn).

        Raises:
            JobCancelled, JobTimeout: the current ``Work`` stopped while it waited.
        """
        work = current_work() or Work()
        work.seconds = max(work.seconds, seconds)
        place = _Place((work.arrived + OVERTAKE * seconds, next(self._order)), work)
        self._take(place)
        outer = getattr(_HELD, "turn", None)
        _HELD.turn = (self, place)
        try:
            yield
        finally:
            _HELD.turn = outer
            self._release(place)

    @property
    def busy(self) -> bool:
        """True while a request holds the model."""
        with self._cond:
            return self._holder is not None

    def _handover(self, place: _Place) -> None:
        self._check(place)
        if not self._waiting:  # the common case, read without the lock (a list's length)
            return
        with self._cond:
            if not self._waiting or min(self._waiting, key=_key).key > place.key:
                return
            self._holder = None
            self.handovers += 1
            self._cond.notify_all()
        self._take(place)

    def _take(self, place: _Place) -> None:
        with self._cond:
            self._waiting.append(place)
            try:
                while self._holder is not None or min(self._waiting, key=_key) is not place:
                    self._check(place)
                    self._cond.wait(POLL)
                self._check(place)
            except BaseException:
                self._waiting.remove(place)
                self._cond.notify_all()  # the next in line may be able to go now
                raise
            self._waiting.remove(place)
            self._holder = place

    def _check(self, place: _Place) -> None:
        try:
            place.work.check()
        except (JobCancelled, JobTimeout):
            with self._cond:
                self.stopped += 1
            raise

    def _release(self, place: _Place) -> None:
        with self._cond:
            if self._holder is place:
                self._holder = None
            self._cond.notify_all()


def _key(place: _Place) -> tuple[float, int]:
    return place.key
