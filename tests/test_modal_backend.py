"""The Modal path end to end through the in-process fake running the real container class."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

import whisper_modal as wm
from tests.fakes import fake_client
from tests.fakes.modal_fake import FakeModal, wait_until
from tests.wer import wer
from whisper_modal.backends.modal import ModalBackend
from whisper_modal.client import Client

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


def test_unfinished_job_times_out_and_can_be_cancelled(client: Client, fake: FakeModal) -> None:
    blocker = [client.submit(SAMPLE, language="en") for _ in range(4)]  # fill the 4 workers
    queued = client.submit(SAMPLE, language="en")
    assert queued.status() in (wm.JobStatus.PENDING, wm.JobStatus.RUNNING)
    with pytest.raises(wm.JobTimeout) as info:
        queued.result(timeout=0)
    assert info.value.job_id == queued.id and isinstance(info.value, TimeoutError)
    queued.cancel()
    assert queued.status() is wm.JobStatus.CANCELLED
    with pytest.raises(wm.JobCancelled):
        queued.result(timeout=5)
    for job in blocker:
        assert job.result(timeout=120).text


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
        assert isinstance(t, wm.Transcript) and t.backend == "modal"
        texts.append(t.text)
    # tiny.en gets 20.8% WER on these 8 short sentences transcribed one by one (measured
    # with whisper.transcribe); packing them into shared batches must not be worse
    assert wer(" ".join(sentences), " ".join(texts)) <= 0.21, texts
    sizes = fake.batcher("tiny.en").batch_sizes
    assert sum(sizes) == len(inputs) and max(sizes) >= 4  # several inputs per forward pass
    assert ("whisper-modal", "BatchTranscriber", None) in fake.lookups
