"""The Modal path end to end through the in-process fake running the real container class."""

from __future__ import annotations

import asyncio
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
from whisper_modal.backends.base import JobStatus
from whisper_modal.backends.modal import ModalBackend
from whisper_modal.client import Client
from whisper_modal.options import TranscribeOptions
from whisper_modal.wire import Request

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
    fake.faults.hang_next("run", 30)
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
    backend = ModalBackend(settings, **fake.seams())
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
    before, orchestrated = fake.calls["run"], fake.calls["fanout.spawn"]
    fake.max_in_flight = 0
    t = client.transcribe(samples, sample_rate=16000, language="en")
    chunks = fake.calls["run"] - before
    assert fake.calls["fanout.spawn"] == orchestrated + 1  # the app's orchestrator split it
    assert chunks >= 3 and fake.max_in_flight >= 2  # several containers at once
    assert t.backend == "modal" and t.duration == pytest.approx(len(samples) / 16000, abs=0.5)
    assert t.mode == "sequential"  # 25 s chunks are one stream each
    assert word_error_rate(reference, t.text) <= 0.12
    starts = [s.start for s in t.segments]
    assert starts == sorted(starts) and t.segments[-1].end > t.duration - 8
    assert [s.id for s in t.segments] == list(range(len(t.segments)))
    # the same audio under the fan-out threshold: one call
    whole = fake_client(fake, monkeypatch, fanout_seconds=3600).transcribe(
        samples, sample_rate=16000, language="en"
    )
    assert fake.calls["run"] - before == chunks + 1 and whole.text


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
    assert ("whisper-modal", "PackedTranscriber", None) in fake.lookups


# --------------------------------------------------------------------------- the backend alone
# ModalBackend's own contract (the Backend/JobBackend protocols + health), and the client's
# bounded fan-out over it. Scripted handlers stand in for the engine where the test is about
# timing or ordering, so those tests are deterministic and take no model time.


def scripted(gate: threading.Event | None = None, delays: dict[str, float] | None = None) -> Any:
    """A handler answering ``ok <name>``: waits for ``gate``, sleeps per name, and fails
    names starting with "bad" the way the engine fails undecodable audio. The name is the
    ``client_job_id`` of a hand-made request, or what follows ``RIFF-`` in the audio of one
    a Client made (its ids are random)."""

    def handle(wire: dict[str, Any]) -> dict[str, Any]:
        request = Request.from_wire(wire)
        job = request.client_job_id or ""
        if job.startswith("wm-") and request.audio and request.audio.startswith(b"RIFF-"):
            job = request.audio[5:].decode()
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


def test_backend_calls_share_one_lookup(fake: FakeModal, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = fake_backend(fake, monkeypatch)
    lookups, hydrates = len(fake.lookups), fake.calls["hydrate"]
    request = req(audio=SAMPLE.read_bytes(), language="en")
    first = asyncio.run(backend.atranscribe(request, timeout=120))
    second = asyncio.run(backend.atranscribe(request, timeout=120))  # another event loop
    assert isinstance(first, wm.Transcript)  # typed as soon as it leaves the wire
    assert wer(REFERENCE, first.text) <= 0.10 and first.text == second.text
    assert len(fake.lookups) == lookups + 1 and fake.calls["hydrate"] == hydrates + 1
    assert asyncio.run(backend.ahealth(timeout=60))["model_loaded"] is True
    assert len(fake.lookups) == lookups + 1  # health reuses the cached handle


def test_backend_job_lifecycle_and_reattach_by_id(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    fake = FakeModal(handler=scripted(gate), workers=1)
    try:
        backend = fake_backend(fake, monkeypatch)
        running = asyncio.run(backend.asubmit(req("run"))).job_id
        queued = asyncio.run(backend.asubmit(req("queued"))).job_id
        assert fake.spawned == [running, queued] and running.startswith("fc-")
        assert wait_until(lambda: fake.in_flight == 1)
        assert asyncio.run(backend.astatus(running)) is JobStatus.RUNNING
        assert asyncio.run(backend.astatus(queued)) is JobStatus.PENDING
        with pytest.raises(wm.JobTimeout) as info:
            asyncio.run(backend.aresult(queued, timeout=0))
        assert info.value.job_id == queued
        asyncio.run(backend.acancel(queued))
        assert asyncio.run(backend.astatus(queued)) is JobStatus.CANCELLED
        with pytest.raises(wm.JobCancelled):
            asyncio.run(backend.aresult(queued, timeout=1))
        gate.set()
        # "another process": a new backend that shares nothing but the id string
        other = fake_backend(fake, monkeypatch)
        done = asyncio.run(other.aresult(running, timeout=10))
        assert done.text == "ok run" and done.job_id == running
        assert asyncio.run(other.astatus(running)) is JobStatus.SUCCEEDED
        assert fake.executions == {"run": 1}  # the cancelled job never ran, nothing twice
        with pytest.raises(wm.JobNotFound):
            asyncio.run(other.astatus("fc-unknown"))
    finally:
        gate.set()
        fake.close()


def test_transcribe_many_keeps_order_bounds_concurrency_and_returns_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = [f"job{i}" for i in range(9)] + ["bad9"]
    delays = {job: 0.02 * (10 - i) for i, job in enumerate(ids)}  # later items finish first
    fake = FakeModal(handler=scripted(delays=delays), workers=16)
    try:
        client = Client(modal_backend=fake_backend(fake, monkeypatch), backend="modal")
        audio = [f"RIFF-{job}".encode() for job in ids]
        out = client.transcribe_many(audio, concurrency=3, return_exceptions=True)
        assert [o.text for o in out[:-1]] == [f"ok {job}" for job in ids[:-1]]  # type: ignore[union-attr]
        assert isinstance(out[-1], wm.AudioError) and out[-1].reason == "not_audio"
        assert fake.max_in_flight == 3
        assert sum(fake.executions.values()) == len(ids)
        with pytest.raises(wm.ConfigurationError):
            client.transcribe_many(audio, concurrency=0)
        client.close()
    finally:
        fake.close()


def test_transcribe_many_first_error_cancels_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    delays = {"bad0": 0.05} | {f"j{i}": 30.0 for i in range(1, 20)}  # the rest would hang
    fake = FakeModal(handler=scripted(delays=delays), workers=16)
    try:
        client = Client(modal_backend=fake_backend(fake, monkeypatch), backend="modal")
        audio = [b"RIFF-bad0"] + [f"RIFF-j{i}".encode() for i in range(1, 20)]
        started = time.monotonic()
        with pytest.raises(wm.AudioError):
            client.transcribe_many(audio, concurrency=2)
        assert time.monotonic() - started < 20  # not the 30 s the siblings would take
        # the bound held: only the first window of calls ever started, not 20
        assert fake.calls["transcribe.run"] <= 3
        client.close()
    finally:
        fake.faults.release.set()
        fake.close()


@pytest.mark.parametrize(
    ("op", "exc", "expected"),
    [
        ("run", me.ConnectionError("reset"), wm.TransientError),
        ("run", me.ResourceExhaustedError("busy"), wm.TransientError),
        ("run", me.InternalFailure("lost"), wm.TransientError),
        ("run", TimeoutError(), wm.TransientError),
        ("run", ValueError("remote bug"), wm.RemoteExecutionError),
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
        job = asyncio.run(backend.asubmit(req())).job_id if op == "get" else None
        fake.faults.fail_next(op, exc)
        with pytest.raises(wm.WhisperModalError) as info:
            if op == "spawn":
                asyncio.run(backend.asubmit(req()))
            elif job is not None:
                asyncio.run(backend.aresult(job, timeout=5))
            else:
                asyncio.run(backend.atranscribe(req(), timeout=5))
        assert type(info.value) is expected or isinstance(info.value, expected), info.value
        assert not type(info.value).__module__.startswith("modal")
        # raised "from" the original (asyncio re-creates a TimeoutError crossing threads)
        assert type(info.value.__cause__) is type(exc)
        if op != "lookup":  # the fault was one call only: the next one recovers
            assert asyncio.run(backend.atranscribe(req("again"), timeout=5)).text == "ok again"
    finally:
        fake.close()


def test_hung_call_is_abandoned_at_the_deadline_and_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeModal(handler=scripted())
    try:
        client = Client(modal_backend=fake_backend(fake, monkeypatch), backend="modal")
        client.transcribe(b"RIFF-warm", timeout=5)  # lookup done
        for run in ("sync", "async"):
            fake.faults.hang_next("run", 30)  # the first attempt hangs, the retry answers
            started = time.monotonic()
            if run == "sync":
                t = client.transcribe(b"RIFF-x", timeout=0.5)
            else:
                t = asyncio.run(client.atranscribe(b"RIFF-x", timeout=0.5))
            assert t.text == "ok x"
            assert time.monotonic() - started < 20  # not the 30 s hang
        stats = client.stats()
        assert (stats.retries, stats.retried_calls) == (2, 2)  # one retry in each call

        # nothing of the abandoned attempts is left running on the client's loop
        async def tasks() -> int:
            return len(asyncio.all_tasks()) - 1  # minus this one

        assert client._loop.submit(tasks()).result(5) == 0
        client.close()
    finally:
        fake.faults.release.set()
        fake.close()


def test_backend_gpu_override_uses_with_options(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeModal(handler=scripted())
    try:
        plain = fake_backend(fake, monkeypatch)
        asyncio.run(plain.atranscribe(req(), timeout=5))
        assert fake.option_overrides == []  # no override: the deployed pool
        tuned = ModalBackend(
            plain.settings, **fake.seams(),
            gpu="H100", remote_timeout=600,
        )  # fmt: skip
        assert asyncio.run(tuned.atranscribe(req("t"), timeout=5)).text == "ok t"
        assert asyncio.run(tuned.ahealth(timeout=60))["model_loaded"] is True  # one lookup
        assert fake.option_overrides == [{"gpu": "H100", "timeout": 600}]
    finally:
        fake.close()


def test_long_audio_submit_goes_to_the_orchestrator_short_to_the_class(
    fake: FakeModal, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests import speech
    from tests.wer import wer as word_error_rate

    samples, reference = speech.make_clip(speech.SENTENCES[:12], gap_seconds=0.7)
    client = fake_client(fake, monkeypatch, fanout_seconds=30, fanout_chunk_seconds=25)
    before = (fake.calls["fanout.spawn"], fake.calls["transcribe.spawn"])
    job = client.submit(samples, sample_rate=16000, language="en")
    t = job.wait(timeout=180, poll_interval=0.1, progress=False)
    done, total = job.progress() or (0, 0)
    assert done == total >= 3 and job.status() is wm.JobStatus.SUCCEEDED
    assert word_error_rate(reference, t.text) <= 0.12 and t.job_id == job.id
    short = client.submit(SAMPLE, language="en")
    assert short.result(timeout=120).text and short.progress() is None
    after = (fake.calls["fanout.spawn"], fake.calls["transcribe.spawn"])
    assert (after[0] - before[0], after[1] - before[1]) == (1, total + 1)
