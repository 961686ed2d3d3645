"""Jobs that live on Modal: the app's fan-out orchestrator, idempotent submits, re-attach.

Through the strict fake: the orchestrator is the real ``whisper_modal.app.fanout``
coroutine, its pieces run the real ``Transcriber`` with tiny.en on real speech, and the
job book is the fake's ``modal.Dict``. The re-attach test reaches the fake from a second
Python process over loopback (``tests.fakes.remote``).

WER bound: tiny.en gets about 8% on these espeak sentences in one piece; the fan-out cuts
at pauses, so merging must not add errors: 12% leaves room for one word per cut.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import modal.exception as me
import numpy as np
import pytest

import whisper_modal as wm
from tests import speech
from tests.fakes import fake_client
from tests.fakes.modal_fake import FakeModal, wait_until
from tests.fakes.remote import FakeServer
from tests.wer import wer
from whisper_modal.job_book import CHUNK_MARK

ROOT = Path(__file__).parents[1]
SAMPLE = ROOT / "examples" / "sample.flac"
pytestmark = pytest.mark.slow

FANOUT = {"fanout_seconds": 30, "fanout_chunk_seconds": 25}


@pytest.fixture(scope="module")
def long_clip() -> tuple[np.ndarray, str]:
    """About 55 s of speech: three pieces of at most 25 s."""
    return speech.make_clip(speech.SENTENCES[:12], gap_seconds=0.7)


@pytest.fixture
def fake() -> Iterator[FakeModal]:
    modal_fake = FakeModal()
    yield modal_fake
    modal_fake.close()


def settle(fake: FakeModal) -> None:
    """Wait until every input the fake ever accepted has ended (hung ones included)."""
    assert wait_until(
        lambda: all(
            c._future is not None and c._future.done() for c in list(fake.function_calls.values())
        ),
        timeout=60,
    )


def chunk_runs(fake: FakeModal, counter: Any) -> dict[str, int]:
    return {k: v for k, v in counter.items() if isinstance(k, str) and CHUNK_MARK in k}


def test_long_submit_is_an_app_job_that_reattaches_from_another_process(
    fake: FakeModal, monkeypatch: pytest.MonkeyPatch, long_clip: tuple[np.ndarray, str]
) -> None:
    samples, reference = long_clip
    client = fake_client(fake, monkeypatch, **FANOUT)
    server = FakeServer(fake)
    try:
        job = client.submit(samples, sample_rate=16000, language="en")
        assert job.id.startswith("fc-") and job.backend == "modal"
        assert fake.calls["fanout.spawn"] == 1  # one orchestrator input; the pieces are its
        host, port = server.address
        out = subprocess.run(
            [sys.executable, "-m", "tests.fakes.remote", host, str(port), server.key, job.id],
            capture_output=True, text=True, cwd=ROOT, timeout=240, check=False,
        )  # fmt: skip
    finally:
        server.close()
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    total = seen["final_progress"][1]
    assert total >= 3 and seen["final_progress"] == [total, total]
    assert all(0 <= d <= t == total for d, t in seen["progress"])  # never beyond the total
    assert seen["status"] == "succeeded" and seen["job_id"] == job.id
    assert wer(reference, seen["text"]) <= 0.12, seen["text"]
    assert seen["duration"] == pytest.approx(len(samples) / 16000, abs=0.1)
    # the submitting process reads the same job, and each piece ran exactly once
    assert job.result(timeout=60).text == seen["text"]
    assert sorted(chunk_runs(fake, fake.completed).values()) == [1] * total
    assert fake.function_calls[job.id].outcome == "completed"


def test_a_failed_chunk_is_retried_once_as_a_new_input(
    fake: FakeModal, monkeypatch: pytest.MonkeyPatch, long_clip: tuple[np.ndarray, str]
) -> None:
    samples, reference = long_clip
    client = fake_client(fake, monkeypatch, **FANOUT)
    fake.faults.fail_where(
        "transcribe.run",
        lambda wire: str(wire.get("client_job_id", "")).endswith(f"{CHUNK_MARK}1-a0"),
        me.ExecutionError("fake: the GPU container died"),
    )
    job = client.submit(samples, sample_rate=16000, language="en")
    t = job.result(timeout=240)
    assert wer(reference, t.text) <= 0.12, t.text
    done, total = job.progress() or (0, 0)
    assert done == total >= 3
    shown = job._repr_html_()  # a notebook cell: status and the pieces' progress
    assert ">succeeded</b>" in shown and f'<progress value="{done}" max="{total}">' in shown
    completed = chunk_runs(fake, fake.completed)
    assert f"{job.id}{CHUNK_MARK}1-a1" in completed  # the second attempt ran piece 1
    assert f"{job.id}{CHUNK_MARK}1-a0" not in completed  # the first one failed
    assert len(completed) == total and set(completed.values()) == {1}


def test_a_chunk_failing_twice_fails_the_job_naming_it(
    fake: FakeModal, monkeypatch: pytest.MonkeyPatch, long_clip: tuple[np.ndarray, str]
) -> None:
    samples, _ = long_clip
    client = fake_client(fake, monkeypatch, **FANOUT)
    fake.faults.fail_where(
        "transcribe.run",
        lambda wire: f"{CHUNK_MARK}1-" in str(wire.get("client_job_id", "")),
        wm.AudioError("fake: corrupt frame", reason="truncated"),
    )
    job = client.submit(samples, sample_rate=16000, language="en")
    with pytest.raises(wm.ChunkFailed) as failed:
        job.result(timeout=240)
    err = failed.value
    assert err.chunk == 1 and err.remote_type == "AudioError" and 0 < err.start < err.end
    assert "chunk 2 of" in str(err) and "failed twice" in str(err)
    assert isinstance(err, wm.RemoteExecutionError)  # never retried by the client
    assert job.status() is wm.JobStatus.FAILED
    settle(fake)  # no piece is left running, and the job never produced a result
    assert fake.function_calls[job.id].outcome == "failed"


def test_cancelling_a_fan_out_job_cancels_its_chunks(
    fake: FakeModal, monkeypatch: pytest.MonkeyPatch, long_clip: tuple[np.ndarray, str]
) -> None:
    samples, _ = long_clip
    client = fake_client(fake, monkeypatch, **FANOUT)
    fake.faults.hang_next("transcribe.run", 60, times=50)  # every piece hangs until released
    job = client.submit(samples, sample_rate=16000, language="en")
    assert wait_until(lambda: (job.progress() or (0, 0))[1] >= 3, timeout=60)
    assert wait_until(lambda: fake.calls["transcribe.spawn"] >= 3, timeout=60)
    assert job.status() is wm.JobStatus.RUNNING
    job.cancel()
    assert wait_until(lambda: job.status() is wm.JobStatus.CANCELLED, timeout=30)
    with pytest.raises(wm.JobCancelled):
        job.result(timeout=10)
    pieces = [c for c in fake.function_calls.values() if c.object_id != job.id]
    assert len(pieces) == fake.calls["transcribe.spawn"]
    assert wait_until(lambda: all(c.cancelled for c in pieces), timeout=30)  # by the orchestrator
    book = client._modal_backend()._job_book()
    assert wait_until(lambda: getattr(book.get(job.id), "status", "") == "cancelled", timeout=30)
    spawned = fake.calls["transcribe.spawn"]
    fake.faults.release.set()  # the hung pieces end now, as cancelled runs
    settle(fake)
    assert fake.calls["transcribe.spawn"] == spawned  # nothing new started after the cancel
    assert chunk_runs(fake, fake.completed) == {}
    assert {c.outcome for c in pieces} <= {"terminated", None}  # None: cancelled while queued
    assert fake.function_calls[job.id].outcome == "terminated"


def test_a_submit_whose_acknowledgement_was_lost_runs_once(
    fake: FakeModal, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = fake_client(fake, monkeypatch)
    fake.faults.fail_next("accepted", me.ConnectionError("fake: reset after acceptance"))
    job = client.submit(SAMPLE, language="en")
    assert fake.calls["transcribe.spawn"] == 2  # the retry spawned again...
    t = job.result(timeout=120)
    assert "planning meeting" in t.text.lower()
    settle(fake)
    (client_job_id,) = [k for k in fake.executions if k]
    assert fake.completed[client_job_id] == 1  # ...but the audio was transcribed once
    # the job is whichever call claimed the id first: the accepted first attempt's
    # container, or the retry (then the first one's container finds it owned, and stops)
    assert job.id in fake.spawned
    assert (
        fake.deduplicated[client_job_id]
        + sum(fake.function_calls[c].cancelled for c in fake.spawned)
        == 1
    )


def test_a_duplicate_submit_returns_the_first_job(
    fake: FakeModal, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from whisper_modal.wire import Request

    client = fake_client(fake, monkeypatch)
    backend = client._modal_backend()
    request = Request(
        options=wm.TranscribeOptions(model="tiny.en", language="en"),
        audio=SAMPLE.read_bytes(),
        client_job_id="order-4711",
    )
    first = asyncio.run(backend.asubmit(request))
    again = asyncio.run(backend.asubmit(request))
    assert again.job_id == first.job_id
    assert wm.Job.from_id(first.job_id, client=client).result(timeout=120).text
    settle(fake)
    assert fake.completed["order-4711"] == 1 and fake.calls["transcribe.spawn"] == 2
    duplicate = fake.function_calls[fake.spawned[1]]
    assert duplicate.cancelled or fake.deduplicated["order-4711"] == 1


def test_whisper_modal_jobs_lists_recent_jobs(
    fake: FakeModal,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    long_clip: tuple[np.ndarray, str],
) -> None:
    from whisper_modal.cli import main

    samples, _ = long_clip
    client = fake_client(fake, monkeypatch, **FANOUT)
    wm.configure(client)  # conftest restores the default client
    single = client.submit(SAMPLE, language="en")
    fanned = client.submit(samples, sample_rate=16000, language="en")
    single.result(timeout=120)
    fanned.result(timeout=240)
    failed = client.submit(b"junk" * 100, language="en")
    with pytest.raises(wm.AudioError):
        failed.result(timeout=60)
    assert main(["jobs", "--json"]) == 0
    rows = {r["job_id"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {single.id, fanned.id, failed.id}  # pieces are not listed
    assert rows[single.id]["status"] == "succeeded" and rows[single.id]["kind"] == "single"
    assert rows[single.id]["audio_seconds"] == pytest.approx(20.3, abs=0.5)
    assert rows[fanned.id]["kind"] == "fanout" and rows[fanned.id]["done"] >= 3
    assert rows[failed.id]["status"] == "failed" and rows[failed.id]["error"] == "AudioError"
    assert main(["jobs"]) == 0
    table = capsys.readouterr().out
    assert single.id in table and "fanout" in table and "succeeded" in table


def test_a_restarted_orchestrator_reuses_the_pieces_that_ran(
    fake: FakeModal, monkeypatch: pytest.MonkeyPatch, long_clip: tuple[np.ndarray, str]
) -> None:
    """Modal re-runs an input whose container died: the same job id, the same piece ids."""
    import asyncio

    import whisper_modal.app as app
    from tests.fakes.modal_fake import CURRENT_CALL
    from whisper_modal.inputs import prepare
    from whisper_modal.remote import context

    samples, reference = long_clip
    request = prepare(
        samples, default_model="tiny.en", max_bytes=10**9, webhook_allow=(),
        sample_rate=16000, language="en",
    )  # fmt: skip

    monkeypatch.setattr(context, "platform", fake.platform)  # the orchestrator's "container"

    async def run_as(job_id: str) -> dict[str, Any]:
        token = CURRENT_CALL.set(job_id)
        try:
            return await app.fanout.local(request.to_wire(), 25.0)
        finally:
            CURRENT_CALL.reset(token)

    first = asyncio.run(run_as("fc-restarted"))
    runs = sum(chunk_runs(fake, fake.completed).values())
    second = asyncio.run(run_as("fc-restarted"))
    assert second["text"] == first["text"] and wer(reference, first["text"]) <= 0.12
    assert sum(chunk_runs(fake, fake.completed).values()) == runs  # nothing transcribed again
    assert sum(chunk_runs(fake, fake.deduplicated).values()) == runs


def test_200_submits_with_faults_and_expiries_run_each_job_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The note's soak: 10% transient faults (half before Modal accepted the input, half
    losing the acknowledgement after it had), and 5% of submits whose acknowledgement
    outlives the spawn deadline. Every job must complete with one transcribing run, and
    every other input must have been cancelled or have stood down as a duplicate."""
    import asyncio

    from tests.fakes.modal_fake import Fault
    from tests.test_modal_cancellation import client_for
    from whisper_modal.backends import modal_transport

    def ok(wire: dict[str, Any]) -> dict[str, Any]:
        job = str(wire["client_job_id"])
        return wm.Transcript(text=f"ok {job}", language="en", duration=1.0, job_id=job).to_dict()

    monkeypatch.setattr(modal_transport, "SPAWN_SECONDS", 0.5)  # deadline 1.5 s, not 61
    fake = FakeModal(handler=ok, workers=32)
    reset = me.ConnectionError("fake: reset")
    fake.faults.rule("spawn", lambda n: Fault(raises=reset) if n % 20 == 7 else None)
    fake.faults.rule(
        "accepted",
        lambda n: Fault(raises=reset) if n % 20 == 13 else Fault(hang=3.0) if n % 20 == 3 else None,
    )
    try:
        # every fault here is transient and spread out: a breaker opening on them would only
        # test the breaker (its own tests do), so it is set out of reach
        client = client_for(
            fake, monkeypatch, backend="modal", max_attempts=10, connect_timeout=1,
            breaker_failure_threshold=10_000,
        )  # fmt: skip

        async def submit_all() -> list[wm.Job]:
            limit = asyncio.Semaphore(16)

            async def one(i: int) -> wm.Job:
                async with limit:
                    return await client.asubmit(f"RIFF-{i}".encode())

            return await asyncio.gather(*(one(i) for i in range(200)))

        jobs = asyncio.run(submit_all())
        texts = [job.result(timeout=60).text for job in jobs]
        settle(fake)
        cjids = [t.removeprefix("ok ") for t in texts]
        job_ids = {job.id for job in jobs}
        duplicates = [c for c in cjids if fake.completed[c] != 1]
        orphans = [
            c.object_id
            for c in fake.function_calls.values()
            if c.object_id not in job_ids and c.outcome == "completed"
        ]
        outcomes = collections.Counter(c.outcome for c in fake.function_calls.values())
        print(
            f"\n200 submits: completed {len(set(cjids))}, duplicate runs {len(duplicates)}, "
            f"orphaned calls {len(orphans)}; inputs {len(fake.function_calls)} "
            f"({dict(outcomes)}), cancels {fake.calls['cancel']}"
        )
        assert len(set(cjids)) == 200 and duplicates == [] and orphans == []
        assert len(fake.function_calls) > 200  # the faults did make retries spawn again
    finally:
        fake.close()


@pytest.mark.parametrize("failure", ["hangs", "refuses"])
def test_whisper_modal_jobs_fails_when_the_book_cannot_be_read(
    fake: FakeModal,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    failure: str,
) -> None:
    """An unreadable book is an error (exit 1, a reason), never "(no jobs recorded ...)"."""
    import threading

    from whisper_modal.cli import main
    from whisper_modal.job_book import JobBook

    client = fake_client(fake, monkeypatch, connect_timeout=0.5)
    wm.configure(client)  # conftest restores the default client
    client.submit(SAMPLE, language="en").result(timeout=120)  # a job the listing would show
    release = threading.Event()

    def unreadable(self: JobBook, limit: int = 20, **_: object) -> list[object]:
        if failure == "hangs":  # streaming the whole Dict outlived the deadline
            release.wait(30)
            return []
        raise me.ConnectionError("fake: the Dict's server closed the stream")

    monkeypatch.setattr(JobBook, "recent", unreadable)
    try:
        assert main(["jobs"]) == 1
        assert main(["jobs", "--json"]) == 1
    finally:
        release.set()
    captured = capsys.readouterr()
    assert "no jobs" not in captured.err and captured.out == ""
    reason = "did not answer within 0.5 s" if failure == "hangs" else "closed the stream"
    assert captured.err.count("whisper-modal: failed:") == 2 and reason in captured.err


def test_an_orchestrator_past_its_deadline_cancels_its_pieces_and_is_not_rerun(
    fake: FakeModal, monkeypatch: pytest.MonkeyPatch, long_clip: tuple[np.ndarray, str]
) -> None:
    """Modal's timeout would stop the orchestrator's input and leave its pieces on their
    GPUs, its record "running" and its claim held; its own deadline, inside Modal's,
    cleans up first. Modal's retry (``retries=1``) of the failed input does not run again."""
    import asyncio

    import attrs

    import whisper_modal.app as app
    from tests.fakes.modal_fake import CURRENT_CALL
    from whisper_modal.inputs import prepare
    from whisper_modal.remote import context
    from whisper_modal.remote.runtime import job_book

    samples, _ = long_clip
    request = prepare(
        samples, default_model="tiny.en", max_bytes=10**9, webhook_allow=(),
        sample_rate=16000, language="en",
    )  # fmt: skip
    monkeypatch.setattr(context, "platform", fake.platform)
    monkeypatch.setattr(app, "settings", attrs.evolve(app.settings, remote_timeout=8))
    fake.faults.hang_next("transcribe.run", 60, times=50)  # every piece outlives the deadline

    async def run_as(job_id: str) -> dict[str, Any]:
        token = CURRENT_CALL.set(job_id)
        try:
            return await app.fanout.local(request.to_wire(), 25.0)
        finally:
            CURRENT_CALL.reset(token)

    book = job_book()

    def release_once_failed() -> None:
        # the fake's FunctionCall.get.aio blocks a thread until its piece ends (Modal's
        # does not), and asyncio.run waits for that thread: end the hung pieces once the
        # job has failed, as cancelled runs
        wait_until(lambda: getattr(book.get("fc-too-long"), "final", False), timeout=60)
        fake.faults.release.set()

    releaser = threading.Thread(target=release_once_failed, daemon=True)
    releaser.start()
    with pytest.raises(wm.RemoteExecutionError, match=r"past its deadline of 7\.2 s") as info:
        asyncio.run(run_as("fc-too-long"))
    releaser.join(timeout=60)
    assert info.value.remote_type == "FanoutDeadline"
    pieces = [c for c in fake.function_calls.values() if c.object_id != "fc-too-long"]
    assert len(pieces) == 3 and all(c.cancelled for c in pieces)
    record = book.get("fc-too-long")
    assert record is not None and (record.status, record.error) == (
        "failed",
        "RemoteExecutionError",
    )
    # the claim is released: a new call claiming the id gets it
    assert book.claim(str(request.client_job_id), "fc-after") == "fc-after"
    spawned = fake.calls["transcribe.spawn"]
    with pytest.raises(wm.RemoteExecutionError, match="failed already"):
        asyncio.run(run_as("fc-too-long"))  # Modal's retry of the failed input
    assert fake.calls["transcribe.spawn"] == spawned
    settle(fake)
    assert chunk_runs(fake, fake.completed) == {}


def test_a_piece_whose_spawn_is_in_flight_at_the_cancel_is_cancelled_too(
    fake: FakeModal, monkeypatch: pytest.MonkeyPatch, long_clip: tuple[np.ndarray, str]
) -> None:
    """The cancellation can land while a piece's spawn is on its way to Modal: the spawn
    goes through, and that piece must be cancelled like the others (it ran on before)."""
    from tests.fakes.modal_fake import Fault

    samples, _ = long_clip
    client = fake_client(fake, monkeypatch, **FANOUT)
    fake.faults.hang_next("transcribe.run", 60, times=50)  # every piece hangs until released
    # spawn 1 is the job itself, 2-4 its pieces: the last piece's spawn takes 3 s
    slow = Fault(before=lambda: time.sleep(3.0))  # then it goes through
    fake.faults.rule("spawn", lambda n: slow if n == 4 else None)
    job = client.submit(samples, sample_rate=16000, language="en")
    assert wait_until(lambda: fake.calls["transcribe.spawn"] >= 3, timeout=60)
    job.cancel()  # while the third piece's spawn is still on its way
    with pytest.raises(wm.JobCancelled):
        job.result(timeout=30)
    assert wait_until(lambda: len(fake.function_calls) == 4, timeout=30)
    pieces = [c for c in fake.function_calls.values() if c.object_id != job.id]
    assert wait_until(lambda: all(c.cancelled for c in pieces), timeout=30), [
        (c.object_id, c.cancelled) for c in pieces
    ]
    fake.faults.release.set()
    settle(fake)
    assert chunk_runs(fake, fake.completed) == {}
