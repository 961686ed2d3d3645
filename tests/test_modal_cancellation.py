"""No orphaned GPU work: an expired deadline or a caller that gives up cancels the remote input.

Through the Modal fake, whose spawned inputs end either ``completed`` (ran to the end) or
``terminated`` (cancelled while running, as Modal's ``InputCancellation`` would stop them).
Each test counts runs per ``client_job_id``: however many deadlines expire, retries run or
fallbacks happen, exactly one run completes.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from pathlib import Path
from typing import Any

import modal.exception as me
import pytest

import whisper_modal as wm
from tests.fakes import fake_backend
from tests.fakes.modal_fake import FakeModal, Fault, wait_until
from whisper_modal.resilience import RetryPolicy
from whisper_modal.wire import Request

SAMPLE = Path(__file__).parents[1] / "examples" / "sample.flac"


async def _no_wait(_: float) -> None:
    return None


class SlowFirstRuns:
    """A container stand-in: answers ``ok``; the first run (every run, with ``always``) of
    every ``every``-th job takes ``slow`` seconds.

    A run that outlives its caller's deadline is cancelled by the client: the fake then
    counts it as terminated, not completed. Deadlines in these tests are seconds long and
    normal runs take milliseconds, so a loaded machine cannot turn one into the other.
    """

    def __init__(self, slow: float = 6.0, every: int = 1, *, always: bool = False) -> None:
        self.slow, self.every, self.always = slow, every, always
        self.runs: collections.Counter[str] = collections.Counter()
        self.order: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, wire: dict[str, Any]) -> dict[str, Any]:
        request = Request.from_wire(wire)
        job = request.client_job_id or ""
        with self.lock:
            self.runs[job] += 1
            first = self.runs[job] == 1
            index = self.order.setdefault(job, len(self.order))
        if (first or self.always) and index % self.every == 0:
            time.sleep(self.slow)
        return wm.Transcript(
            text=f"ok {job}", language="en", duration=1.0, model=request.options.model,
            backend="modal", job_id=job,
        ).to_dict()  # fmt: skip


def client_for(fake: FakeModal, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> wm.Client:
    backend = fake_backend(fake, monkeypatch, **settings)
    retry = RetryPolicy(
        max_attempts=backend.settings.max_attempts,
        max_seconds=backend.settings.retry_max_seconds,
        asleep=_no_wait,
    )
    return wm.Client(backend.settings, modal_backend=backend, retry=retry)


def settle(fake: FakeModal) -> None:
    """Wait until no input runs in the fake (terminated ones finish their sleep first)."""
    assert wait_until(lambda: fake.in_flight == 0, timeout=60)


def test_an_expired_deadline_cancels_the_input_before_the_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeModal(handler=SlowFirstRuns(), workers=8)
    try:
        client = client_for(fake, monkeypatch, backend="modal", max_attempts=3)
        t = client.transcribe(b"RIFF-one", timeout=2.0)
        assert t.text.startswith("ok wm-")
        settle(fake)
        job = t.text.removeprefix("ok ")
        # the first run timed out and was cancelled; the retry is the one completed run
        assert (fake.completed[job], fake.terminated[job]) == (1, 1)
        assert fake.calls["cancel"] == 1 and client.stats().retried_calls == 1
        client.close()
    finally:
        fake.close()


def test_a_result_that_lands_as_the_deadline_passes_is_used_not_run_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeModal(handler=SlowFirstRuns(slow=0.0), workers=4)
    # the first get says "not finished" (the builtin TimeoutError) once the input has in
    # fact completed: the deadline's cancel then comes too late to stop it
    finished = lambda: wait_until(lambda: sum(fake.completed.values()) == 1)  # noqa: E731
    fake.faults.queue("get", Fault(raises=TimeoutError(), before=finished))
    try:
        client = client_for(fake, monkeypatch, backend="modal", max_attempts=3)
        t = client.transcribe(b"RIFF-late", timeout=2.0)
        settle(fake)
        job = t.text.removeprefix("ok ")
        assert (fake.completed[job], fake.terminated[job]) == (1, 0)
        # the late result was taken: no second spawn, no retry, the claim kept
        assert fake.calls["spawn"] == 1 and client.stats().retried_calls == 0
        client.close()
    finally:
        fake.close()


def test_a_fallback_leaves_no_modal_run_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeModal(handler=SlowFirstRuns(always=True), workers=8)
    try:
        client = client_for(
            fake, monkeypatch, backend="auto", max_attempts=2, allow_cpu_fallback=True
        )
        with pytest.warns(RuntimeWarning, match="local CPU"):
            t = client.transcribe(SAMPLE, language="en", timeout=2.0)
        assert t.backend == "local" and "BackendUnavailable" in str(t.fallback_reason)
        settle(fake)
        # both Modal attempts were cancelled: the local run is the only one that completed
        assert sum(fake.completed.values()) == 0
        assert sum(fake.terminated.values()) == 2 == fake.calls["cancel"]
        client.close()
    finally:
        fake.close()


def test_a_packed_call_past_its_deadline_is_cancelled_before_the_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``pack=True`` used ``.remote``, which sends no cancellation: the retry ran beside a
    first input that ran on to the end (two GPU runs for one item)."""
    from tests import speech

    fake = FakeModal(workers=4)
    gate = threading.Event()
    fake.faults.queue("transcribe_packed.run", Fault(before=lambda: gate.wait(60)))
    try:
        client = client_for(fake, monkeypatch, backend="modal", max_attempts=3)
        fake.instance("tiny.en", "PackedTranscriber")  # the model loads before the clock runs
        clip = speech.wav_bytes(speech.synthesize(speech.SENTENCES[0]))
        [t] = client.transcribe_many([clip], pack=True, timeout=8.0, language="en")
        assert isinstance(t, wm.Transcript) and t.mode == "batched" and t.text
        assert fake.calls["cancel"] == 1  # the held input was cancelled at its deadline
        gate.set()  # the first input, cancelled while it was held, may now end
        assert wait_until(lambda: sum(fake.terminated.values()) == 1, timeout=60)
        settle(fake)
        assert fake.calls["transcribe_packed.run"] == 2
        assert (sum(fake.completed.values()), sum(fake.terminated.values())) == (1, 1)
        assert client.stats().retried_calls == 1
        client.close()
    finally:
        gate.set()
        fake.close()


async def test_a_caller_that_gives_up_cancels_the_remote_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeModal(handler=SlowFirstRuns(), workers=4)
    try:
        client = client_for(fake, monkeypatch, backend="modal")
        task = asyncio.create_task(client.atranscribe(b"RIFF-x", timeout=60))
        assert await asyncio.to_thread(wait_until, lambda: fake.in_flight == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.to_thread(settle, fake)
        assert sum(fake.completed.values()) == 0 and sum(fake.terminated.values()) == 1
        client.close()
    finally:
        fake.close()


def test_a_job_cancelled_elsewhere_is_job_cancelled_from_structured_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = threading.Event()

    def held(wire: dict[str, Any]) -> dict[str, Any]:
        gate.wait(30)
        return SlowFirstRuns(slow=0.0)(wire)

    fake = FakeModal(handler=held, workers=2)
    try:
        client = client_for(fake, monkeypatch, backend="modal")
        job = client.submit(b"RIFF-j")
        assert wait_until(lambda: fake.in_flight == 1)
        # another process cancels it by id
        other = client_for(fake, monkeypatch, backend="modal")
        wm.Job.from_id(job.id, client=other).cancel()
        gate.set()
        with pytest.raises(wm.JobCancelled) as info:
            job.result(timeout=10)
        assert info.value.job_id == job.id
        assert job.status() is wm.JobStatus.CANCELLED
        settle(fake)
        assert sum(fake.completed.values()) == 0 and sum(fake.terminated.values()) == 1
        client.close()
        other.close()
    finally:
        gate.set()
        fake.close()


def test_200_calls_with_faults_and_expiries_complete_exactly_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """10% of runs fail with a transient error, 5% of jobs hit their deadline once."""
    handler = SlowFirstRuns(every=20)  # jobs 0, 20, 40...: 5% of 200
    fake = FakeModal(handler=handler, workers=32)
    fake.faults.rule(
        "run", lambda n: Fault(raises=me.ConnectionError("reset")) if n % 10 == 3 else None
    )
    try:
        # 10 attempts: a call whose runs all fail at 10% is then a 1e-10 event, not 1e-5
        client = client_for(fake, monkeypatch, backend="modal", max_attempts=10)
        audio = [f"RIFF-{i}".encode() for i in range(200)]
        results = client.transcribe_many(audio, concurrency=16, timeout=3.0)
        settle(fake)
        jobs = [r.text.removeprefix("ok ") for r in results]  # type: ignore[union-attr]
        assert len(set(jobs)) == 200
        duplicates = [j for j in jobs if fake.completed[j] != 1]
        orphans = sum(fake.completed.values()) - 200  # completed runs nobody collected
        print(
            f"\n200 calls: completed {sum(fake.completed[j] == 1 for j in jobs)}, duplicate "
            f"runs {len(duplicates)}, orphaned runs {orphans}, terminated "
            f"{sum(fake.terminated.values())}, transient faults {fake.calls['run'] // 10}, "
            f"cancels {fake.calls['cancel']}"
        )
        assert duplicates == [] and orphans == 0
        assert sum(fake.terminated.values()) >= 10  # each expiry cancelled its run
        client.close()
    finally:
        fake.close()


@pytest.mark.parametrize("parent_retained", [True, False], ids=["nested", "parent-gone"])
def test_jobs_spawned_inside_a_container_read_pending_then_cancelled(
    monkeypatch: pytest.MonkeyPatch, parent_retained: bool
) -> None:
    """The web function's jobs API spawns inside its own input: Modal's call graph nests
    those calls under the request's input (or drops them with it), so status comes from
    the job book: a queued job reads PENDING, not RUNNING, and a job cancelled while
    queued reads CANCELLED, not FAILED."""
    gate = threading.Event()

    def held(wire: dict[str, Any]) -> dict[str, Any]:
        gate.wait(30)
        return SlowFirstRuns(slow=0.0)(wire)

    fake = FakeModal(handler=held, workers=1)  # one container: the second job queues
    fake.spawn_parent, fake.parent_retained = "fc-web-request", parent_retained
    try:
        client = client_for(fake, monkeypatch, backend="modal")
        first = client.submit(b"RIFF-a")
        assert wait_until(lambda: fake.in_flight == 1)
        queued = client.submit(b"RIFF-b")
        assert first.status() is wm.JobStatus.RUNNING
        assert queued.status() is wm.JobStatus.PENDING
        queued.cancel()
        assert queued.status() is wm.JobStatus.CANCELLED
        gate.set()
        assert first.result(timeout=10).text.startswith("ok ")
        assert first.status() is wm.JobStatus.SUCCEEDED
        assert queued.status() is wm.JobStatus.CANCELLED
        settle(fake)
        assert sum(fake.completed.values()) == 1
        client.close()
    finally:
        gate.set()
        fake.close()


def test_a_cancelled_record_stays_cancelled_when_its_container_starts_late() -> None:
    """The canceller writes "cancelled" while the input's container is only starting: the
    container's "running" and its outcome must not undo the caller's cancel."""
    from whisper_modal.job_book import JobBook

    fake = FakeModal()
    try:
        book = JobBook(fake.dict_lookup("jobs"))
    finally:
        fake.close()
    assert book.submitted("fc-1", kind="single", client_job_id="c-1")
    assert book.cancelled("fc-1").status == "cancelled"
    assert book.start("fc-1", kind="single", client_job_id="c-1").status == "cancelled"
    late = book.update("fc-1", status="failed", error="InputCancellation", audio_seconds=2.0)
    assert late is not None and late.status == "cancelled" and late.audio_seconds == 2.0
    record = book.get("fc-1")
    assert record is not None and record.status == "cancelled" and record.final
    book.start("fc-2", kind="single", client_job_id="c-2")  # no cancel: runs as before
    assert book.update("fc-2", status="succeeded") is not None
    assert (book.get("fc-2") or record).status == "succeeded"


def test_a_job_cancelled_while_its_container_runs_on_reads_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cancel whose container starts late and writes "running": the job's status is
    CANCELLED from the canceller's record (Modal's call graph, nesting the call under a
    request input that is gone, has no node for it), never FAILED or RUNNING."""
    from whisper_modal.job_book import JobBook

    gate = threading.Event()

    def stubborn(wire: dict[str, Any]) -> dict[str, Any]:
        gate.wait(30)  # blocks its event loop: the fake's cancel lands only afterwards
        return SlowFirstRuns(slow=0.0)(wire)

    fake = FakeModal(handler=stubborn)
    # spawned inside the web function's input, which is gone: the call graph cannot tell
    fake.spawn_parent, fake.parent_retained = "fc-web-request", False
    try:
        client = client_for(fake, monkeypatch, backend="modal")
        job = client.submit(b"RIFF-a")
        assert wait_until(lambda: fake.in_flight == 1)
        job.cancel()
        book = JobBook(fake.platform.job_store())
        book.start(job.id, kind="single", client_job_id=None)  # a container starting late
        assert job.status() is wm.JobStatus.CANCELLED
        gate.set()
        settle(fake)
        assert job.status() is wm.JobStatus.CANCELLED
        with pytest.raises(wm.JobCancelled):
            job.result(timeout=10)
        client.close()
    finally:
        gate.set()
        fake.close()
