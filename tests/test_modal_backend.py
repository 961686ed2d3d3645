"""The Modal path end to end through the in-process fake running the real container class."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import modal.exception as me
import pytest

import whisper_modal as wm
from tests.fakes import fake_backend, fake_client
from tests.fakes.modal_fake import FakeModal, wait_until
from tests.wer import wer
from whisper_modal.backends.base import JobStatus, Request
from whisper_modal.backends.modal import ModalBackend
from whisper_modal.client import Client
from whisper_modal.options import TranscribeOptions

EXAMPLES = Path(__file__).parents[1] / "examples"
SAMPLE = EXAMPLES / "sample.flac"
REFERENCE = (EXAMPLES / "sample.txt").read_text()

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeModal]:
    modal_fake = FakeModal()
    yield modal_fake
    modal_fake.close()


@pytest.fixture
def client(fake: FakeModal, monkeypatch: pytest.MonkeyPatch) -> Client:
    fake.faults.clear()
    return fake_client(fake, monkeypatch)


def test_transcribe_runs_the_real_container_class(client: Client, fake: FakeModal) -> None:
    t = client.transcribe(SAMPLE, language="en")
    assert t.backend == "modal" and t.model == "tiny.en"
    assert wer(REFERENCE, t.text) <= 0.10
    assert fake.lookups[-1] == ("whisper-modal", "Transcriber", None)
    assert t.job_id is not None  # the container's call id (or the client's id under .local())


def test_lookup_is_lazy_and_cached(fake: FakeModal, monkeypatch: pytest.MonkeyPatch) -> None:
    client = fake_client(fake, monkeypatch)
    before = fake.calls["hydrate"]
    assert fake.calls["hydrate"] == before  # creating a client calls nothing
    client.transcribe(SAMPLE, language="en")
    client.transcribe(SAMPLE, language="en")
    assert fake.calls["hydrate"] == before + 1


def test_cold_start_is_reported_once(fake: FakeModal, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = FakeModal()
    try:
        client = fake_client(fresh, monkeypatch)
        first = client.transcribe(SAMPLE, language="en")
        second = client.transcribe(SAMPLE, language="en")
        assert first.cold_start and not second.cold_start
        assert first.timings.load > 0
        assert client.stats().cold_starts == 1
    finally:
        fresh.close()


def test_submit_status_result_reattach(
    client: Client, fake: FakeModal, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = client.submit(SAMPLE, language="en")
    assert job.id.startswith("fc-") and job.backend == "modal"
    # another "process": a new client and backend that only share the id string
    other = fake_client(fake, monkeypatch)
    again = wm.Job.from_id(job.id, client=other)
    t = again.wait(timeout=120, poll_interval=0.05, progress=False)
    assert again.status() is wm.JobStatus.SUCCEEDED
    assert wer(REFERENCE, t.text) <= 0.10
    assert t.job_id == job.id


def test_unfinished_job_times_out_and_can_be_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()  # holds the one worker: the second job must wait
    fake = FakeModal(handler=scripted(gate), workers=1)
    try:
        client = fake_client(fake, monkeypatch)
        blocker = client.submit(SAMPLE, language="en")
        queued = client.submit(SAMPLE, language="en")
        assert wait_until(lambda: fake.in_flight == 1)
        assert blocker.status() is wm.JobStatus.RUNNING
        assert queued.status() is wm.JobStatus.PENDING
        with pytest.raises(wm.JobTimeout) as info:
            queued.result(timeout=0)
        assert info.value.job_id == queued.id and isinstance(info.value, TimeoutError)
        queued.cancel()
        assert queued.status() is wm.JobStatus.CANCELLED
        with pytest.raises(wm.JobCancelled):
            queued.result(timeout=5)
        gate.set()
        assert blocker.result(timeout=10).text.startswith("ok")
        assert sum(fake.executions.values()) == 1  # the cancelled job never ran
    finally:
        gate.set()
        fake.close()


def test_unknown_job_id(client: Client) -> None:
    with pytest.raises(wm.JobNotFound) as info:
        wm.Job.from_id("fc-doesnotexist", client=client).result(timeout=1)
    assert info.value.job_id == "fc-doesnotexist"


def test_bad_audio_fails_in_the_container_with_its_type(client: Client) -> None:
    with pytest.raises(wm.AudioError):
        client.transcribe(b"not audio" * 100)
    assert client.breaker.state.value == "closed"  # a user error never trips the breaker


def test_not_deployed_is_typed_with_a_fix(fake: FakeModal, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = FakeModal()
    fresh.deployed = False
    try:
        client = fake_client(fresh, monkeypatch)
        with pytest.raises(wm.BackendUnavailable) as info:
            client.transcribe(SAMPLE)
        assert "whisper-modal deploy" in str(info.value)
    finally:
        fresh.close()


def test_transcribe_many_bounded_and_ordered(client: Client, fake: FakeModal) -> None:
    fake.max_in_flight = 0
    inputs = [SAMPLE, b"junk" * 200, SAMPLE, SAMPLE]
    results = client.transcribe_many(inputs, concurrency=2, return_exceptions=True, language="en")
    assert [type(r).__name__ for r in results] == [
        "Transcript",
        "AudioError",
        "Transcript",
        "Transcript",
    ]
    assert fake.max_in_flight <= 2


async def test_async_twins(client: Client) -> None:
    t = await client.atranscribe(SAMPLE, language="en")
    job = await client.asubmit(SAMPLE, language="en")
    t2 = await job.aresult(timeout=120)
    assert t.text == t2.text and t.backend == "modal"
    many = await client.atranscribe_many([SAMPLE, SAMPLE], concurrency=2, language="en")
    assert all(isinstance(m, wm.Transcript) for m in many)


def test_hung_call_hits_the_sdk_deadline(fake: FakeModal, monkeypatch: pytest.MonkeyPatch) -> None:
    client = fake_client(fake, monkeypatch, call_timeout=0.5, max_attempts=1)
    client.transcribe(SAMPLE, language="en", timeout=60)  # warm: lookup done
    fake.faults.hang_next("remote", 30)
    import time

    started = time.monotonic()
    with pytest.raises(wm.BackendUnavailable) as info:
        client.transcribe(SAMPLE, language="en")
    elapsed = time.monotonic() - started
    assert elapsed < 3.0, elapsed
    assert isinstance(info.value.__cause__, wm.TransientError)
    fake.faults.release.set()
    assert wait_until(lambda: fake.in_flight == 0)
    fake.faults.release.clear()


def test_backend_never_leaks_modal_exceptions(
    fake: FakeModal, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modal.exception as me

    settings = fake_client(fake, monkeypatch).settings
    backend = ModalBackend(settings, cls_lookup=fake.cls_lookup, call_lookup=fake.call_lookup)
    for exc in [
        me.ConnectionError("x"),
        me.InternalFailure("x"),
        me.AuthError("x"),
        ValueError("remote"),
    ]:
        fake.faults.fail_next("lookup", exc)
        with pytest.raises(wm.WhisperModalError):
            asyncio.run(backend.ahealth(timeout=5))


def test_long_audio_fans_out_over_containers(
    fake: FakeModal, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests import speech
    from tests.wer import wer as word_error_rate

    samples, reference = speech.make_clip(speech.SENTENCES[:12], gap_seconds=0.7)
    client = fake_client(fake, monkeypatch, fanout_seconds=30, fanout_chunk_seconds=25)
    before = fake.calls["remote"]
    fake.max_in_flight = 0
    t = client.transcribe(samples, sample_rate=16000, language="en")
    chunks = fake.calls["remote"] - before
    assert chunks >= 3 and fake.max_in_flight >= 2  # several containers at once
    assert t.backend == "modal" and t.duration == pytest.approx(len(samples) / 16000, abs=0.5)
    assert t.mode == "sequential"  # 25 s chunks are one stream each
    assert word_error_rate(reference, t.text) <= 0.12
    starts = [s.start for s in t.segments]
    assert starts == sorted(starts) and t.segments[-1].end > t.duration - 8
    assert [s.id for s in t.segments] == list(range(len(t.segments)))
    # the same audio without splitting: one call
    whole = client.run(
        client.make_request(samples, options=client.make_options(language="en"), sample_rate=16000),
        split=False,
    )
    assert fake.calls["remote"] - before == chunks + 1 and whole.text


def test_packed_short_inputs_share_batches(client: Client, fake: FakeModal) -> None:
    from tests import speech

    sentences = speech.SENTENCES[25:33]
    inputs = [speech.wav_bytes(speech.synthesize(s)) for s in sentences] + [b"junk" * 100]
    results = client.transcribe_many(
        inputs, concurrency=9, pack=True, return_exceptions=True, language="en"
    )
    assert isinstance(results[-1], wm.AudioError) and results[-1].reason == "not_audio"
    texts = []
    for t in results[:-1]:
        assert isinstance(t, wm.Transcript) and t.backend == "modal" and t.mode == "batched"
        texts.append(t.text)
    # tiny.en gets 20.8% WER on these 8 short sentences transcribed one by one (measured
    # with whisper.transcribe); packing them into shared batches must not be worse
    assert wer(" ".join(sentences), " ".join(texts)) <= 0.21, texts
    sizes = fake.batcher("tiny.en").batch_sizes
    assert sum(sizes) == len(inputs) and max(sizes) >= 4  # several inputs per forward pass
    assert ("whisper-modal", "BatchTranscriber", None) in fake.lookups


# --------------------------------------------------------------------------- the backend alone
# ModalBackend's own contract (the Backend protocol + map/health), without the client's
# retry/breaker/fallback on top. Scripted handlers stand in for the engine where the test is
# about timing or ordering, so those tests are deterministic and take no model time.


def scripted(gate: threading.Event | None = None, delays: dict[str, float] | None = None) -> Any:
    """A handler answering ``ok <client_job_id>``: waits for ``gate``, sleeps per id,
    and fails ids starting with "bad" the way the engine fails undecodable audio."""

    def handle(wire: dict[str, Any]) -> dict[str, Any]:
        request = Request.from_wire(wire)
        job = request.client_job_id or ""
        if gate is not None:
            gate.wait(30)
        time.sleep((delays or {}).get(job, 0.0))
        if job.startswith("bad"):
            raise wm.AudioError("not audio", reason="not_audio")
        return wm.Transcript(
            text=f"ok {job}", language="en", duration=1.0, model=request.options.model,
            backend="modal", job_id=job,
        ).to_dict()  # fmt: skip

    return handle


def req(job: str = "a", audio: bytes = b"RIFF-scripted", **options: Any) -> Request:
    return Request(
        options=TranscribeOptions(model="tiny.en", **options), audio=audio, client_job_id=job
    )


def test_backend_transcribe_sync_and_async_share_one_lookup(
    fake: FakeModal, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = fake_backend(fake, monkeypatch)
    lookups, hydrates = len(fake.lookups), fake.calls["hydrate"]
    request = req(audio=SAMPLE.read_bytes(), language="en")
    first = wm.Transcript.from_dict(backend.transcribe(request, timeout=120))
    second = wm.Transcript.from_dict(asyncio.run(backend.atranscribe(request, timeout=120)))
    assert wer(REFERENCE, first.text) <= 0.10 and first.text == second.text
    assert len(fake.lookups) == lookups + 1 and fake.calls["hydrate"] == hydrates + 1
    assert backend.health(timeout=60)["model_loaded"] is True
    assert len(fake.lookups) == lookups + 1  # health reuses the cached handle


def test_backend_job_lifecycle_and_reattach_by_id(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    fake = FakeModal(handler=scripted(gate), workers=1)
    try:
        backend = fake_backend(fake, monkeypatch)
        running, queued = backend.submit(req("run")), backend.submit(req("queued"))
        assert fake.spawned == [running, queued] and running.startswith("fc-")
        assert wait_until(lambda: fake.in_flight == 1)
        assert backend.status(running) is JobStatus.RUNNING
        assert backend.status(queued) is JobStatus.PENDING
        with pytest.raises(wm.JobTimeout) as info:
            backend.result(queued, timeout=0)
        assert info.value.job_id == queued
        backend.cancel(queued)
        assert backend.status(queued) is JobStatus.CANCELLED
        with pytest.raises(wm.JobCancelled):
            backend.result(queued, timeout=1)
        gate.set()
        # "another process": a new backend that shares nothing but the id string
        other = fake_backend(fake, monkeypatch)
        assert other.result(running, timeout=10)["text"] == "ok run"
        assert other.status(running) is JobStatus.SUCCEEDED
        assert fake.executions == {"run": 1}  # the cancelled job never ran, nothing twice
        with pytest.raises(wm.JobNotFound):
            other.status("fc-unknown")
    finally:
        gate.set()
        fake.close()


def test_backend_map_keeps_order_bounds_concurrency_and_returns_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = [f"job{i}" for i in range(9)] + ["bad9"]
    delays = {job: 0.02 * (10 - i) for i, job in enumerate(ids)}  # later items finish first
    fake = FakeModal(handler=scripted(delays=delays), workers=16)
    try:
        backend = fake_backend(fake, monkeypatch)
        out = list(backend.map((req(job) for job in ids), concurrency=3, timeout=10))
        assert [o["text"] for o in out[:-1]] == [f"ok {job}" for job in ids[:-1]]  # type: ignore[index]
        assert isinstance(out[-1], wm.AudioError) and out[-1].reason == "not_audio"
        assert fake.max_in_flight == 3
        assert sum(fake.executions.values()) == len(ids)
        with pytest.raises(wm.ConfigurationError):
            next(backend.map([req()], concurrency=0, timeout=1))
    finally:
        fake.close()


def test_backend_map_closed_early_cancels_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeModal(handler=scripted(delays={f"j{i}": 0.1 for i in range(20)}), workers=16)
    try:
        backend = fake_backend(fake, monkeypatch)
        results = backend.map((req(f"j{i}") for i in range(20)), concurrency=2, timeout=10)
        assert next(results)["text"] == "ok j0"  # type: ignore[index]
        results.close()
        time.sleep(0.5)
        assert fake.calls["transcribe.remote"] <= 4  # the window (2 x concurrency), not 20
    finally:
        fake.close()


@pytest.mark.parametrize(
    ("op", "exc", "expected"),
    [
        ("remote", me.ConnectionError("reset"), wm.TransientError),
        ("remote", me.ResourceExhaustedError("busy"), wm.TransientError),
        ("remote", me.InternalFailure("lost"), wm.TransientError),
        ("remote", TimeoutError(), wm.TransientError),
        ("remote", ValueError("remote bug"), wm.RemoteExecutionError),
        ("lookup", me.AuthError("bad token"), wm.BackendUnavailable),
        ("lookup", me.NotFoundError("no app"), wm.BackendUnavailable),
        ("spawn", me.ConnectionError("reset"), wm.TransientError),
        ("get", me.OutputExpiredError(), wm.JobExpired),
    ],
)
def test_backend_maps_every_modal_failure(
    op: str, exc: Exception, expected: type[Exception], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeModal(handler=scripted())
    try:
        backend = fake_backend(fake, monkeypatch)
        job = backend.submit(req()) if op == "get" else None
        fake.faults.fail_next(op, exc)
        with pytest.raises(wm.WhisperModalError) as info:
            if op == "spawn":
                backend.submit(req())
            elif job is not None:
                backend.result(job, timeout=5)
            else:
                backend.transcribe(req(), timeout=5)
        assert type(info.value) is expected or isinstance(info.value, expected), info.value
        assert not type(info.value).__module__.startswith("modal")
        # raised "from" the original (asyncio re-creates a TimeoutError crossing threads)
        assert type(info.value.__cause__) is type(exc)
        if op != "lookup":  # the fault was one call only: the next one recovers
            assert backend.transcribe(req("again"), timeout=5)["text"] == "ok again"
    finally:
        fake.close()


def test_backend_hung_call_is_abandoned_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeModal(handler=scripted())
    try:
        backend = fake_backend(fake, monkeypatch)
        backend.transcribe(req(), timeout=5)  # lookup done
        for run in ("sync", "async"):
            fake.faults.hang_next("remote", 30)
            started = time.monotonic()
            with pytest.raises(wm.TransientError, match=r"within 0\.5 s"):
                if run == "sync":
                    backend.transcribe(req(), timeout=0.5)
                else:
                    asyncio.run(backend.atranscribe(req(), timeout=0.5))
            assert 0.45 <= time.monotonic() - started < 1.5
        # nothing of the abandoned calls is left running on the backend's private loop
        loop = backend._runner._ensure()

        async def tasks() -> int:
            return len(asyncio.all_tasks()) - 1  # minus this one

        assert asyncio.run_coroutine_threadsafe(tasks(), loop).result(5) == 0
    finally:
        fake.close()


def test_backend_gpu_override_uses_with_options(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeModal(handler=scripted())
    try:
        plain = fake_backend(fake, monkeypatch)
        plain.transcribe(req(), timeout=5)
        assert fake.option_overrides == []  # no override: the deployed pool
        tuned = ModalBackend(
            plain.settings, cls_lookup=fake.cls_lookup, call_lookup=fake.call_lookup,
            gpu="H100", remote_timeout=600,
        )  # fmt: skip
        assert tuned.transcribe(req("t"), timeout=5)["text"] == "ok t"
        assert tuned.health(timeout=60)["model_loaded"] is True  # same variant, one lookup
        assert fake.option_overrides == [{"gpu": "H100", "timeout": 600}]
    finally:
        fake.close()


def test_per_call_overhead_through_the_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    """Median ModalBackend.transcribe time minus the direct handler time, same input.

    The handler (wire validation + result building, no model) keeps the engine's ~1 s per
    call and its jitter out of the difference, so what is left is the SDK's own cost:
    request serialisation, the private loop hop, lookups, deadlines, error guard.
    (With the real tiny.en engine the difference, -37 ms on 20 calls, is within noise.)
    """
    handler = scripted()
    fake = FakeModal(handler=handler)
    try:
        backend = fake_backend(fake, monkeypatch)
        request = req(audio=SAMPLE.read_bytes(), language="en")
        wire = request.to_wire()
        backend.transcribe(request, timeout=10)  # warm: lookup done

        def timed(call: Any) -> float:
            started = time.perf_counter()
            call()
            return time.perf_counter() - started

        direct, through = [], []
        for _ in range(20):  # interleaved, so machine load hits both sides alike
            direct.append(timed(lambda: handler(wire)))
            through.append(timed(lambda: backend.transcribe(request, timeout=10)))
        overhead = statistics.median(through) - statistics.median(direct)
        print(
            f"\nper-call overhead through the fake: {overhead * 1000:.2f} ms "
            f"(backend {statistics.median(through) * 1000:.2f} ms, "
            f"direct {statistics.median(direct) * 1000:.2f} ms, median of 20)"
        )
        assert 0 < overhead < 0.05
    finally:
        fake.close()


def test_long_audio_submit_is_a_fan_out_job_with_progress(
    fake: FakeModal, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests import speech
    from tests.wer import wer as word_error_rate

    samples, reference = speech.make_clip(speech.SENTENCES[:12], gap_seconds=0.7)
    client = fake_client(fake, monkeypatch, fanout_seconds=30, fanout_chunk_seconds=25)
    job = client.submit(samples, sample_rate=16000, language="en")
    assert job.id.startswith("fanout-") and job.backend == "fanout"
    done, total = job.progress() or (0, 0)
    assert total >= 3 and 0 <= done <= total
    t = job.wait(timeout=180, poll_interval=0.1, progress=False)
    assert job.progress() == (total, total) and job.status() is wm.JobStatus.SUCCEEDED
    assert word_error_rate(reference, t.text) <= 0.12 and t.job_id == job.id
    assert wm.Job.from_id(job.id, client=client).result(timeout=1).text == t.text
    short = client.submit(SAMPLE, language="en")
    assert short.progress() is None and short.id.startswith("fc-")
    short.result(timeout=120)
