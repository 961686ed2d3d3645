"""Faults at the wire: what a test makes Modal's servers do wrong, one RPC or input at a time.

``Servicer.faults`` is a ``WireFaults``. Each fault is something a real client can meet:

- ``fail_rpc(name, status)``: the next calls of one RPC answer a gRPC error (``ClassGet``
  NOT_FOUND is an app that is not deployed, UNAUTHENTICATED a bad token, FunctionMap
  RESOURCE_EXHAUSTED a rate limit, UNAVAILABLE a reset that Modal's client retries
  itself). ``rpc_rule(name, decide)`` decides per call for patterns.
- ``fail_inputs(function, exc)``: the function's next inputs fail as if the container had
  raised ``exc`` (Modal's container serialises the exception into a FAILURE result; so
  does this), or with ``status=`` INTERNAL_FAILURE (a lost worker) or TIMEOUT.
- ``hold_inputs(function, seconds)``: the function's next inputs wait that long before a
  container may take them (a cold start, a busy pool, a hung GPU); ``release()`` ends
  every hold at once.
- ``hold_rpc(name, seconds)``: the next answers of one RPC come that late, after the server
  did the work (a FunctionMap that accepted the call, a FunctionGetOutputs that found the
  output, a DictContents about to stream): an answer that outlives the caller's deadline.
  ``hold_rpc_rule(name, decide)`` decides per call; ``release()`` ends these holds too.

``function`` is a function's name as deployed (``"fanout"``) or a class's
(``"Transcriber"``, which covers its methods and parameter-bound variants).
"""

from __future__ import annotations

import collections
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from grpclib import GRPCError, Status
from modal._serialization import serialize
from modal_proto import api_pb2

__all__ = ["InputFault", "WireFaults"]

T = TypeVar("T")


@dataclass
class InputFault:
    """What happens to one input of a function: it fails with a result, or it is held."""

    result: api_pb2.GenericResult | None = None
    hold_seconds: float = 0.0


def failure_result(
    exc: BaseException | None = None, status: int = api_pb2.GenericResult.GENERIC_STATUS_FAILURE
) -> api_pb2.GenericResult:
    """A result as Modal's container (or, for INTERNAL_FAILURE/TIMEOUT, its worker) writes it."""
    if exc is None:
        what = {
            api_pb2.GenericResult.GENERIC_STATUS_TIMEOUT: "the input hit the function's timeout",
            api_pb2.GenericResult.GENERIC_STATUS_INTERNAL_FAILURE: "the worker was lost",
        }.get(status, "the input failed")
        return api_pb2.GenericResult(status=status, exception=f"emulated: {what}")
    tb = "".join(traceback.format_exception(exc))
    return api_pb2.GenericResult(
        status=status, exception=repr(exc), traceback=tb, data=serialize(exc)
    )


def owner(function_name: str) -> str:
    """``"Transcriber.*"`` (a class's service function) -> ``"Transcriber"``."""
    return function_name.split(".", 1)[0]


class WireFaults:
    """Per-RPC and per-function faults (see the module docstring). Thread-safe: tests set
    faults from their own thread while the servicer's loop takes them."""

    def __init__(self) -> None:
        self._rpc: dict[str, collections.deque[Status]] = collections.defaultdict(collections.deque)
        self._rpc_rules: dict[str, Callable[[int], Status | None]] = {}
        self._inputs: dict[str, collections.deque[InputFault]] = collections.defaultdict(
            collections.deque
        )
        self._input_rules: dict[str, Callable[[int], InputFault | None]] = {}
        self._rpc_holds: dict[str, collections.deque[float]] = collections.defaultdict(
            collections.deque
        )
        self._rpc_hold_rules: dict[str, Callable[[int], float | None]] = {}
        self._counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self.released_at = 0.0  # holds that began before this have ended
        self.injected: list[tuple[str, str]] = []  # (rpc or function, what), in order

    # -- set by tests
    def fail_rpc(self, rpc: str, status: Status = Status.UNAVAILABLE, times: int = 1) -> None:
        """The next ``times`` calls of ``rpc`` answer ``status``."""
        with self._lock:
            self._rpc[rpc].extend([status] * times)

    def rpc_rule(self, rpc: str, decide: Callable[[int], Status | None]) -> None:
        """``decide(n)`` (n counts this RPC's calls from 1) gives a status to answer, or None."""
        with self._lock:
            self._rpc_rules[rpc] = decide

    def fail_inputs(
        self,
        function: str,
        exc: BaseException | None = None,
        *,
        status: int = api_pb2.GenericResult.GENERIC_STATUS_FAILURE,
        times: int = 1,
    ) -> None:
        """The next ``times`` inputs of ``function`` fail with ``exc`` (or just ``status``)."""
        result = failure_result(exc, status)
        with self._lock:
            self._inputs[function].extend(InputFault(result=result) for _ in range(times))

    def hold_inputs(self, function: str, seconds: float, times: int = 1) -> None:
        """The next ``times`` inputs of ``function`` wait ``seconds`` before a container
        may take them (``release()`` ends the wait)."""
        with self._lock:
            self._inputs[function].extend(InputFault(hold_seconds=seconds) for _ in range(times))

    def input_rule(self, function: str, decide: Callable[[int], InputFault | None]) -> None:
        """``decide(n)`` for the function's n-th input (from 1): a fault or None."""
        with self._lock:
            self._input_rules[function] = decide

    def fail_inputs_rule(
        self, function: str, exc: BaseException, every: Callable[[int], bool]
    ) -> None:
        """Inputs ``n`` with ``every(n)`` fail with ``exc``."""
        result = failure_result(exc)
        self.input_rule(function, lambda n: InputFault(result=result) if every(n) else None)

    def hold_rpc(self, rpc: str, seconds: float, times: int = 1) -> None:
        """The next ``times`` answers of ``rpc`` wait ``seconds`` (``release()`` ends the wait)."""
        with self._lock:
            self._rpc_holds[rpc].extend([seconds] * times)

    def hold_rpc_rule(self, rpc: str, decide: Callable[[int], float | None]) -> None:
        """``decide(n)`` (n counts the answers of ``rpc`` from 1): seconds to hold it, or None."""
        with self._lock:
            self._rpc_hold_rules[rpc] = decide

    def release(self) -> None:
        """End every hold now."""
        with self._lock:
            self.released_at = time.monotonic()

    def clear(self) -> None:
        """No more faults (holds already placed end too)."""
        with self._lock:
            self._rpc.clear()
            self._rpc_rules.clear()
            self._inputs.clear()
            self._input_rules.clear()
            self._rpc_holds.clear()
            self._rpc_hold_rules.clear()
        self.release()

    # -- taken by the servicer
    def rpc_error(self, rpc: str) -> GRPCError | None:
        """The error this call of ``rpc`` answers, if any (counted either way)."""
        with self._lock:
            status = self._take(self._rpc, self._rpc_rules, rpc, rpc)
            if status is None:
                return None
            self.injected.append((rpc, status.name))
        return GRPCError(status, f"emulated fault: {rpc} answered {status.name}")

    def rpc_hold(self, rpc: str) -> float:
        """How long this answer of ``rpc`` is held (0: not at all)."""
        with self._lock:
            seconds = self._take(self._rpc_holds, self._rpc_hold_rules, rpc, f"answer:{rpc}")
            if not seconds:
                return 0.0
            self.injected.append((rpc, "hold"))
        return seconds

    def input_fault(self, function_name: str) -> InputFault | None:
        """The fault for this new input of ``function_name``, if any."""
        key = owner(function_name)
        with self._lock:
            fault = self._take(self._inputs, self._input_rules, key, f"input:{key}")
            if fault is not None:
                self.injected.append((key, "hold" if fault.result is None else "fail"))
        return fault

    def _take(
        self,
        queued: dict[str, collections.deque[T]],
        rules: dict[str, Callable[[int], T | None]],
        key: str,
        counter: str,
    ) -> T | None:
        """Count one more ``counter``; the next fault queued for ``key``, else its rule's
        answer for that count (the caller holds the lock)."""
        self._counts[counter] += 1
        fault = queued[key].popleft() if queued[key] else None
        rule = rules.get(key)
        if fault is None and rule is not None:
            fault = rule(self._counts[counter])
        return fault
