"""Fault injection: the real client, through the in-process Modal fake, under failures.

Retry sleeps and the breaker clock are fake (no real waiting); the only real waits are the
SDK deadlines on hung calls, kept short.
"""

from __future__ import annotations

import asyncio
import collections
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import modal.exception as me
import pytest

import whisper_modal as wm
from tests.fakes.modal_fake import FakeModal, Fault, wait_until
from tests.models_cache import tiny_en_cache
from tests.test_resilience import FakeClock
from whisper_modal.backends.modal import ModalBackend
from whisper_modal.client import Client
from whisper_modal.config import Settings
from whisper_modal.resilience import CircuitBreaker, RetryPolicy
from whisper_modal.wire import Request

SAMPLE = Path(__file__).parents[1] / "examples" / "sample.flac"
AUDIO = b"RIFF-not-decoded-by-the-fast-handler"


def fast_handler(wire: dict[str, Any]) -> dict[str, Any]:
    """Stands in for the engine in throughput tests: validates the wire dict, answers fast."""
    request = Request.from_wire(wire)
    return wm.Transcript(
        text=f"ok {request.client_job_id}", language="en", duration=1.0, model=request.options.model,
        backend="modal", job_id=request.client_job_id,
    ).to_dict()  # fmt: skip


def build(
    fake: FakeModal,
    monkeypatch: pytest.MonkeyPatch,
    clock: FakeClock,
    **overrides: Any,
) -> Client:
    monkeypatch.setenv("WHISPER_MODAL_CACHE_DIR", str(tiny_en_cache()))
    base: dict[str, Any] = {
        "model": "tiny.en",
        "backend": "auto",
        "device": "cpu",
        "call_timeout": 5.0,
    }
    settings = Settings.resolve(**{**base, **overrides})
    backend = ModalBackend(settings, **fake.seams())
    retry = RetryPolicy(
        max_attempts=settings.max_attempts, max_seconds=settings.retry_max_seconds,
        asleep=clock.asleep, clock=clock, rng=random.Random(1),
    )  # fmt: skip
    client = Client(settings, modal_backend=backend, retry=retry)
    client.breaker = CircuitBreaker(
        "modal:test", failure_threshold=settings.breaker_failure_threshold,
        reset_timeout=settings.breaker_reset_seconds, clock=clock, on_transition=client._on_transition,
    )  # fmt: skip
    client.retry = RetryPolicy(
        max_attempts=settings.max_attempts, max_seconds=settings.retry_max_seconds,
        asleep=clock.asleep, clock=clock, rng=random.Random(1),
    )  # fmt: skip
    return client


@pytest.fixture
def fast_fake() -> Iterator[FakeModal]:
    fake = FakeModal(handler=fast_handler, workers=16)
    yield fake
    fake.close()


@pytest.mark.parametrize(
    "exc",
    [me.ConnectionError("reset by peer"), me.ResourceExhaustedError("rate limited"),
     me.InternalFailure("worker lost"), TimeoutError()],
)  # fmt: skip
def test_transient_faults_are_retried(
    exc: Exception, fast_fake: FakeModal, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    client = build(fast_fake, monkeypatch, clock)
    fast_fake.faults.fail_next("run", exc, times=2)
    t = client.transcribe(AUDIO)
    assert t.backend == "modal" and t.fallback_reason is None
    stats = client.stats()
    assert stats.retries == 2 and stats.successes == 1 and len(clock.sleeps) == 2


def test_remote_engine_error_is_not_retried_and_not_counted(
    fast_fake: FakeModal, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    client = build(fast_fake, monkeypatch, clock)
    for _ in range(10):
        fast_fake.faults.fail_next("run", ValueError("CUDA kernel failed"))
        with pytest.raises(wm.RemoteExecutionError) as info:
            client.transcribe(AUDIO)
        assert info.value.remote_type == "ValueError"
    assert client.stats().retries == 0 and client.breaker.state.value == "closed"
    assert client.stats().failures_by_error == {"RemoteExecutionError": 10}


def test_hung_calls_never_outlive_their_deadline(
    fast_fake: FakeModal, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    client = build(fast_fake, monkeypatch, clock, backend="modal", call_timeout=0.3, max_attempts=3)
    client.transcribe(AUDIO)  # lookup done
    fast_fake.faults.hang_next("run", 30, times=3)
    started = time.monotonic()
    with pytest.raises(wm.BackendUnavailable) as info:
        client.transcribe(AUDIO)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 3.0, elapsed  # three 0.3 s deadlines, no real backoff sleeping
    assert "3 attempt" in str(info.value)
    fast_fake.faults.release.set()
    assert wait_until(lambda: fast_fake.in_flight == 0)


def test_breaker_opens_falls_back_and_recovers(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeModal()  # the real container class
    clock = FakeClock()
    try:
        # the real engine: a deadline generous enough for a loaded 2-core machine (the test
        # injects its faults; a slow CPU must not make the first call "unavailable")
        client = build(
            fake, monkeypatch, clock, allow_cpu_fallback=True, max_attempts=2,
            breaker_failure_threshold=3, breaker_reset_seconds=30, call_timeout=300.0,
        )  # fmt: skip
        assert client.transcribe(SAMPLE, language="en").backend == "modal"
        fake.faults.rule("run", lambda n: Fault(raises=me.ConnectionError("down")))
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
        remote_calls = fake.calls["run"]
        with pytest.warns(RuntimeWarning, match="CircuitOpenError"):
            client.transcribe(SAMPLE, language="en")
        assert fake.calls["run"] == remote_calls  # open: Modal not called
        fake.faults.clear()  # Modal recovers
        clock.now += 30
        assert client.transcribe(SAMPLE, language="en").backend == "modal"  # the probe
        assert client.breaker.state.value == "closed"
        stats = client.stats()
        assert stats.fallbacks == 4 and stats.breaker_transitions == {
            "closed->open": 1, "open->half_open": 1, "half_open->closed": 1,
        }  # fmt: skip
        assert stats.fallback_reasons == {"BackendUnavailable": 1, "CircuitOpenError": 3}
    finally:
        fake.close()


def test_fallback_only_when_policy_allows(
    fast_fake: FakeModal, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    fast_fake.faults.rule("run", lambda n: Fault(raises=me.ConnectionError("down")))
    strict = build(fast_fake, monkeypatch, clock, backend="modal")
    with pytest.raises(wm.BackendUnavailable):
        strict.transcribe(AUDIO)
    no_cpu = build(fast_fake, monkeypatch, clock, backend="auto", allow_cpu_fallback=False)
    with pytest.raises(wm.BackendUnavailable, match="allow_cpu_fallback"):
        no_cpu.transcribe(AUDIO)
    assert strict.stats().fallbacks == 0 and no_cpu.stats().fallbacks == 0


def test_not_deployed_and_no_credentials_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeModal()
    fake.deployed = False
    clock = FakeClock()
    try:
        client = build(fake, monkeypatch, clock, allow_cpu_fallback=True)
        with pytest.warns(RuntimeWarning):
            t = client.transcribe(SAMPLE, language="en")
        assert t.backend == "local" and "not deployed" in str(t.fallback_reason)
        assert client.stats().retries == 0  # permanent: not retried
        fake.deployed = True
        fake.faults.fail_next("lookup", me.AuthError("Token missing"))
        client2 = build(fake, monkeypatch, clock, allow_cpu_fallback=True)
        with pytest.warns(RuntimeWarning):
            job = client2.submit(SAMPLE, language="en")  # a Job even while falling back
        assert job.backend == "local" and job.id.startswith("local-")
        assert "modal token new" in str(job.fallback_reason)
        assert "weekly planning" in job.result(timeout=120).text.lower()
    finally:
        fake.close()


def test_thousand_submits_with_ten_percent_faults_complete_exactly_once(
    fast_fake: FakeModal, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    # 10 attempts: a submit failing all of them at 10% faults is a 1e-10 event (6 gave 1e-6
    # per submit, 1 run in 1,000 of this test)
    client = build(fast_fake, monkeypatch, clock, backend="modal", max_attempts=10)
    rng = random.Random(42)
    lock = threading.Lock()

    def ten_percent(_: int) -> Fault | None:
        with lock:
            return Fault(raises=me.ConnectionError("reset")) if rng.random() < 0.10 else None

    fast_fake.faults.rule("spawn", ten_percent)
    jobs = [client.submit(AUDIO) for _ in range(1000)]
    assert len({j.id for j in jobs}) == 1000
    texts = [j.result(timeout=60).text for j in jobs]
    client_ids = [t.split()[1] for t in texts]
    assert len(set(client_ids)) == 1000
    # every request ran exactly once on the "GPU": none lost, none duplicated
    assert sum(fast_fake.executions.values()) == 1000
    assert set(fast_fake.executions.values()) == {1}
    stats = client.stats()
    assert 60 <= stats.retries <= 140  # ~10% of 1000 spawns were retried


def test_32_threads_and_32_tasks_through_one_client(
    fast_fake: FakeModal, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    # Every call must succeed: with 10% of runs failing independently, 5 attempts leave a
    # 1e-5 chance per call of failing all of them (about 1 run in 150 of this test lost a
    # call that way). 12 attempts make it 1e-12, and the budget is far above what the fake
    # clock, which all 64 callers' backoff sleeps advance, can reach in this test.
    client = build(
        fast_fake, monkeypatch, clock, backend="modal", max_attempts=12,
        retry_max_seconds=100_000.0, breaker_failure_threshold=50,
    )  # fmt: skip
    rng = random.Random(3)
    lock = threading.Lock()

    def faulty(_: int) -> Fault | None:
        with lock:
            return Fault(raises=me.ResourceExhaustedError("busy")) if rng.random() < 0.10 else None

    fast_fake.faults.rule("run", faulty)
    outcomes: collections.Counter[str] = collections.Counter()

    def worker() -> None:
        for _ in range(10):
            t = client.transcribe(AUDIO)
            with lock:
                outcomes[t.backend] += 1

    async def tasks() -> None:
        async def one() -> None:
            for _ in range(10):
                t = await client.atranscribe(AUDIO)
                with lock:
                    outcomes[t.backend] += 1

        await asyncio.gather(*(one() for _ in range(32)))

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    asyncio.run(tasks())
    for t in threads:
        t.join(60)
    assert outcomes == {"modal": 640}
    stats = client.stats()
    assert stats.successes == 640 and stats.failures == 0 and stats.retries > 20
    assert client.breaker.state.value == "closed"
