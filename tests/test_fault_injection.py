"""Fault injection at the wire: the real client on unmodified ``modal``, against the emulator.

Faults are Modal's own answers (``tests/emulator/faults.py``): gRPC status codes on an
RPC (``RESOURCE_EXHAUSTED`` is a rate limit and reaches the SDK; ``UNAVAILABLE`` is retried
by Modal's client first), inputs that fail as a container or a lost worker makes them
fail, and inputs held back so the SDK's deadline passes. Throughput tests go through the
echo app (``tests/echo_app.py``: the GPU class's wire contract and the real job-book claim,
no model); the breaker and fallback test runs the real app and the real local engine.

Retry sleeps and the breaker clock are fake (no real backoff); the SDK's deadlines on held
calls are real and short.
"""

from __future__ import annotations

import asyncio
import collections
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from grpclib import Status
from modal_proto import api_pb2

import whisper_modal as wm
from tests.emulator.deployed import Deployed, executions, outcomes
from tests.models_cache import tiny_en_cache
from tests.test_resilience import FakeClock
from whisper_modal.client import Client
from whisper_modal.resilience import CircuitBreaker, RetryPolicy

SAMPLE = Path(__file__).parents[1] / "examples" / "sample.flac"
ECHO = "whisper-modal-echo"
AUDIO = b"RIFF-answered-by-the-echo-app"
INTERNAL_FAILURE = api_pb2.GenericResult.GENERIC_STATUS_INTERNAL_FAILURE

pytestmark = [pytest.mark.slow, pytest.mark.emulator]


def build(
    deployed: Deployed, monkeypatch: pytest.MonkeyPatch, clock: FakeClock, **overrides: Any
) -> Client:
    """A client of the emulated deployment (the echo app unless ``app_name`` says otherwise)
    whose retry backoff and breaker run on ``clock``."""
    monkeypatch.setenv("WHISPER_MODAL_CACHE_DIR", str(tiny_en_cache()))  # the local fallback
    base: dict[str, Any] = {"backend": "auto", "call_timeout": 5.0, "app_name": ECHO}
    settings = deployed.settings(monkeypatch, **{**base, **overrides})
    retry = RetryPolicy(
        max_attempts=settings.max_attempts, max_seconds=settings.retry_max_seconds,
        asleep=clock.asleep, clock=clock, rng=random.Random(1),
    )  # fmt: skip
    client = Client(settings, retry=retry)
    client.breaker = CircuitBreaker(
        "modal:test", failure_threshold=settings.breaker_failure_threshold,
        reset_timeout=settings.breaker_reset_seconds, clock=clock, on_transition=client._on_transition,
    )  # fmt: skip
    return client


def warm(client: Client) -> None:
    """One call first: the lookup and a started container are not what a test measures."""
    assert client.transcribe(AUDIO, timeout=120).backend == "modal"


def inject(deployed: Deployed, fault: str) -> None:
    """Two faults of one kind, each of which fails one attempt of a call."""
    faults = deployed.emulator.servicer.faults
    if fault == "rate limited":
        faults.fail_rpc("FunctionMap", Status.RESOURCE_EXHAUSTED, times=2)
    elif fault == "connection reset":  # Modal's client tries 4 times before it gives up
        faults.fail_rpc("FunctionMap", Status.UNAVAILABLE, times=8)
    elif fault == "worker lost":
        faults.fail_inputs("Transcriber", status=INTERNAL_FAILURE, times=2)
    else:  # "hung": held past the call's deadline
        faults.hold_inputs("Transcriber", 60, times=2)


@pytest.mark.parametrize("fault", ["rate limited", "connection reset", "worker lost", "hung"])
def test_transient_faults_are_retried(
    fault: str, echo_wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    client = build(echo_wire, monkeypatch, clock, backend="modal", call_timeout=2.0)
    warm(client)
    inject(echo_wire, fault)
    t = client.transcribe(AUDIO)
    assert t.backend == "modal" and t.fallback_reason is None and t.text.startswith("ok wm-")
    stats = client.stats()
    assert stats.retries == 2 and stats.successes == 2 and len(clock.sleeps) == 2
    job = t.text.split()[1]
    if fault in ("worker lost", "hung"):  # three inputs: two lost or cancelled, one ran
        ended = outcomes(echo_wire, app=ECHO)[job]
        assert ended["completed"] == 1 and sum(ended.values()) == 3, ended
    if fault == "hung":  # the held inputs were cancelled before any container took them
        assert executions(echo_wire, app=ECHO)[job] == 1


def test_remote_engine_error_is_not_retried_and_not_counted(
    echo_wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    client = build(echo_wire, monkeypatch, clock)
    warm(client)
    echo_wire.emulator.servicer.faults.fail_inputs(
        "Transcriber", ValueError("CUDA kernel failed"), times=10
    )
    for _ in range(10):
        with pytest.raises(wm.RemoteExecutionError) as info:
            client.transcribe(AUDIO)
        assert info.value.remote_type == "ValueError" and "CUDA kernel failed" in str(info.value)
    assert client.stats().retries == 0 and client.breaker.state.value == "closed"
    assert client.stats().failures_by_error == {"RemoteExecutionError": 10}


def test_hung_calls_never_outlive_their_deadline(
    echo_wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    client = build(echo_wire, monkeypatch, clock, backend="modal", call_timeout=0.5, max_attempts=3)
    warm(client)
    before = outcomes(echo_wire, app=ECHO)
    echo_wire.emulator.servicer.faults.hold_inputs("Transcriber", 60, times=3)
    started = time.monotonic()
    with pytest.raises(wm.BackendUnavailable) as info:
        client.transcribe(AUDIO)
    elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 6.0, elapsed  # three 0.5 s deadlines, no real backoff sleeping
    assert "3 attempt" in str(info.value)
    # each abandoned attempt was cancelled on Modal: none is left queued for a GPU
    new = {k: v for k, v in outcomes(echo_wire, app=ECHO).items() if k not in before}
    assert [dict(v) for v in new.values()] == [{"terminated": 3}], new


def test_breaker_opens_falls_back_and_recovers(
    wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    servicer = wire.emulator.servicer
    # the real app and engine: a deadline generous enough for a loaded 2-core machine (the
    # test injects its faults; a slow CPU must not make the first call "unavailable")
    client = build(
        wire, monkeypatch, clock, app_name="whisper-modal", allow_cpu_fallback=True,
        max_attempts=2, breaker_failure_threshold=3, breaker_reset_seconds=30, call_timeout=300.0,
    )  # fmt: skip
    assert client.transcribe(SAMPLE, language="en").backend == "modal"
    servicer.faults.rpc_rule("FunctionMap", lambda n: Status.UNAVAILABLE)  # Modal is down
    reasons = []
    with pytest.warns(RuntimeWarning, match="local CPU"):
        for _ in range(3):
            t = client.transcribe(SAMPLE, language="en")
            assert t.backend == "local"
            reasons.append(t.fallback_reason)
    # call 1: two failed attempts -> BackendUnavailable; call 2: its first attempt is the
    # third failure, which opens the breaker, and its retry is refused (CircuitOpenError);
    # call 3 is refused without touching Modal
    assert client.breaker.state.value == "open"
    assert "BackendUnavailable" in reasons[0]
    assert "CircuitOpenError" in reasons[1] and "CircuitOpenError" in reasons[2]
    maps = servicer.calls.count("FunctionMap")
    with pytest.warns(RuntimeWarning, match="CircuitOpenError"):
        client.transcribe(SAMPLE, language="en")
    assert servicer.calls.count("FunctionMap") == maps  # open: Modal not called
    servicer.faults.clear()  # Modal recovers
    clock.now += 30
    assert client.transcribe(SAMPLE, language="en").backend == "modal"  # the probe
    assert client.breaker.state.value == "closed"
    stats = client.stats()
    assert stats.fallbacks == 4 and stats.breaker_transitions == {
        "closed->open": 1, "open->half_open": 1, "half_open->closed": 1,
    }  # fmt: skip
    assert stats.fallback_reasons == {"BackendUnavailable": 1, "CircuitOpenError": 3}


def test_fallback_only_when_policy_allows(
    echo_wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    echo_wire.emulator.servicer.faults.rpc_rule("FunctionMap", lambda n: Status.RESOURCE_EXHAUSTED)
    strict = build(echo_wire, monkeypatch, clock, backend="modal")
    with pytest.raises(wm.BackendUnavailable):
        strict.transcribe(AUDIO)
    no_cpu = build(echo_wire, monkeypatch, clock, backend="auto", allow_cpu_fallback=False)
    with pytest.raises(wm.BackendUnavailable, match="allow_cpu_fallback"):
        no_cpu.transcribe(AUDIO)
    assert strict.stats().fallbacks == 0 and no_cpu.stats().fallbacks == 0


def test_not_deployed_and_no_credentials_fall_back(
    wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    client = build(wire, monkeypatch, clock, app_name="never-deployed", allow_cpu_fallback=True)
    with pytest.warns(RuntimeWarning):
        t = client.transcribe(SAMPLE, language="en")
    assert t.backend == "local" and "not deployed" in str(t.fallback_reason)
    assert client.stats().retries == 0  # permanent: not retried
    wire.emulator.servicer.faults.fail_rpc("ClassGet", Status.UNAUTHENTICATED)  # a bad token
    client2 = build(wire, monkeypatch, clock, app_name="whisper-modal", allow_cpu_fallback=True)
    with pytest.warns(RuntimeWarning):
        job = client2.submit(SAMPLE, language="en")  # a Job even while falling back
    assert job.backend == "local" and job.id.startswith("local-")
    assert "modal token new" in str(job.fallback_reason)
    assert "weekly planning" in job.result(timeout=120).text.lower()


def test_thousand_submits_with_ten_percent_faults_complete_exactly_once(
    echo_wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    # 10 attempts: a submit failing all of them at 10% faults is a 1e-10 event (6 gave 1e-6
    # per submit, 1 run in 1,000 of this test)
    client = build(echo_wire, monkeypatch, clock, backend="modal", max_attempts=10)
    rng = random.Random(42)
    lock = threading.Lock()

    def ten_percent(_: int) -> Status | None:
        with lock:
            return Status.RESOURCE_EXHAUSTED if rng.random() < 0.10 else None

    echo_wire.emulator.servicer.faults.rpc_rule("FunctionMap", ten_percent)
    jobs = [client.submit(AUDIO) for _ in range(1000)]
    assert len({j.id for j in jobs}) == 1000
    texts = [j.result(timeout=120).text for j in jobs]
    client_ids = [t.split()[1] for t in texts]
    assert len(set(client_ids)) == 1000
    # every request ran exactly once in a container: none lost, none duplicated
    ran = executions(echo_wire, app=ECHO)
    assert [ran[c] for c in client_ids] == [1] * 1000
    stats = client.stats()
    assert 60 <= stats.retries <= 140  # ~10% of 1000 spawns were retried


def test_32_threads_and_32_tasks_through_one_client(
    echo_wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    # Every call must succeed: with 10% of attempts failing independently, 12 attempts
    # leave a 1e-12 chance per call of failing all of them, and the budget is far above
    # what the fake clock, which all 64 callers' backoff sleeps advance, can reach here.
    client = build(
        echo_wire, monkeypatch, clock, backend="modal", max_attempts=12, call_timeout=60.0,
        retry_max_seconds=100_000.0, breaker_failure_threshold=50,
    )  # fmt: skip
    warm(client)
    rng = random.Random(3)
    lock = threading.Lock()

    def faulty(_: int) -> Status | None:
        with lock:
            return Status.RESOURCE_EXHAUSTED if rng.random() < 0.10 else None

    echo_wire.emulator.servicer.faults.rpc_rule("FunctionMap", faulty)
    outcomes_by_backend: collections.Counter[str] = collections.Counter()

    def worker() -> None:
        for _ in range(10):
            t = client.transcribe(AUDIO)
            with lock:
                outcomes_by_backend[t.backend] += 1

    async def tasks() -> None:
        async def one() -> None:
            for _ in range(10):
                t = await client.atranscribe(AUDIO)
                with lock:
                    outcomes_by_backend[t.backend] += 1

        await asyncio.gather(*(one() for _ in range(32)))

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    asyncio.run(tasks())
    for t in threads:
        t.join(120)
    assert outcomes_by_backend == {"modal": 640}
    stats = client.stats()
    assert stats.successes == 641 and stats.failures == 0 and stats.retries > 20
    assert client.breaker.state.value == "closed"
