"""No orphaned GPU work: an expired deadline or a caller that gives up cancels the remote input.

Through the emulator of Modal's API (``tests/emulator``): the SDK runs in this process on
unmodified ``modal``, and every input runs in a real ``python -m modal._container_entrypoint``
process. Most tests call the echo app (``tests/echo_app.py``, the GPU class's wire contract
and real job-book claim without a model), whose audio bytes are a script: ``b"echo
sleep=60"`` keeps a run busy until Modal's ``InputCancellation`` stops it (its input then
ends ``terminated``), ``runs=1`` makes only the first run of a ``client_job_id`` slow. The
packed-call test uses the deployed app's batched class and the pieces test its fan-out
orchestrator and GPU class (tiny.en on CPU).

Each test reads how the inputs of each ``client_job_id`` ended (``outcomes``: completed,
terminated, failed...) and how many reached a container (``executions``): however many
deadlines expire, retries run or fallbacks happen, exactly one run completes. Deadlines are
seconds long and an echo run takes milliseconds, so a loaded machine cannot turn one into
the other.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from typing import Any

import modal
import pytest
from modal_proto import api_pb2

import whisper_modal as wm
from tests.emulator.deployed import Deployed, executions, on_loop, outcomes, wait_for
from tests.emulator.faults import InputFault, failure_result
from tests.models_cache import tiny_model_cache
from whisper_modal.job_book import JobBook
from whisper_modal.resilience import RetryPolicy

ECHO = "whisper-modal-echo"  # tests/echo_app.py's app
SLOW = b"echo sleep=60"  # busy until cancelled
SLOW_FIRST = b"echo sleep=60 runs=1"  # the first run of its client id only
TERMINATED = api_pb2.GenericResult.GENERIC_STATUS_TERMINATED
INTERNAL_FAILURE = api_pb2.GenericResult.GENERIC_STATUS_INTERNAL_FAILURE

pytestmark = [pytest.mark.slow, pytest.mark.emulator]


async def _no_wait(_: float) -> None:
    return None


def client_for(
    wire: Deployed, monkeypatch: pytest.MonkeyPatch, *, app: str = ECHO, **settings: Any
) -> wm.Client:
    """An SDK client in this process on the emulated ``app``; retries do not sleep."""
    resolved = wire.settings(monkeypatch, app_name=app, **settings)
    retry = RetryPolicy(
        max_attempts=resolved.max_attempts, max_seconds=resolved.retry_max_seconds, asleep=_no_wait
    )
    return wm.Client(resolved, retry=retry)


def rpc_mark(wire: Deployed) -> int:
    """Where the emulator's RPC log stands now (for ``rpcs_since``)."""
    servicer = wire.emulator.servicer
    return on_loop(wire, lambda: len(servicer.calls))


def rpcs_since(wire: Deployed, mark: int) -> collections.Counter[str]:
    """RPCs the emulator served since ``mark``, by name (clients' and containers')."""
    servicer = wire.emulator.servicer
    return collections.Counter(on_loop(wire, lambda: servicer.calls[mark:]))


def settle(
    wire: Deployed, app: str = ECHO, cls: str = "Transcriber"
) -> dict[Any, collections.Counter[str]]:
    """Wait until no input of the app's class is open (cancelled ones end as their container
    stops them); then how each ``client_job_id``'s inputs ended."""
    assert wait_for(lambda: not any(o["open"] for o in outcomes(wire, cls, app).values()), 60)
    return outcomes(wire, cls, app)


def running_new_job(wire: Deployed, before: set[Any], app: str = ECHO) -> str | None:
    """The ``client_job_id`` not in ``before`` whose input a container took, if any."""
    ran = executions(wire, app=app)
    opened = outcomes(wire, app=app)
    new = [k for k in ran if k not in before and opened.get(k, {}).get("open")]
    return new[0] if new else None


def test_an_expired_deadline_cancels_the_input_before_the_retry(
    echo_wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = client_for(echo_wire, monkeypatch, max_attempts=3)
    mark = rpc_mark(echo_wire)
    t = client.transcribe(SLOW_FIRST, timeout=4.0)
    assert t.text.startswith("ok wm-")
    job = t.text.removeprefix("ok ")
    ended = settle(echo_wire)
    # the first run timed out and was cancelled in its container; the retry is the one
    # completed run
    assert ended[job] == {"terminated": 1, "completed": 1}
    assert executions(echo_wire, app=ECHO)[job] == 2  # both reached a container
    assert rpcs_since(echo_wire, mark)["FunctionCallCancel"] == 1
    assert client.stats().retried_calls == 1
    client.close()


def test_a_result_that_lands_as_the_deadline_passes_is_used_not_run_again(
    echo_wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The input completes, but the answer of ``FunctionGetOutputs`` that carries its result
    is held past the call's deadline: the deadline's cancel comes too late to stop it, and
    the result, read once more after the cancel, is used."""
    client = client_for(echo_wire, monkeypatch, max_attempts=3, connect_timeout=2)
    faults = echo_wire.emulator.servicer.faults
    faults.hold_rpc("FunctionGetOutputs", 60)  # one answer, held until the test ends
    mark, seen = rpc_mark(echo_wire), len(faults.injected)
    t = client.transcribe(b"echo", timeout=2.0)
    job = t.text.removeprefix("ok ")
    assert faults.injected[seen:] == [("FunctionGetOutputs", "hold")]
    assert settle(echo_wire)[job] == {"completed": 1}
    rpcs = rpcs_since(echo_wire, mark)
    assert rpcs["FunctionCallCancel"] == 1  # the deadline did pass, and cancelled
    # the late result was taken: no second spawn, no retry, the claim kept by the call
    assert rpcs["FunctionMap"] == 1 and client.stats().retried_calls == 0
    jobs_dict = modal.Dict.from_name(f"{ECHO}-jobs")
    assert jobs_dict.get(f"claim:{job}") == t.job_id and str(t.job_id).startswith("fc-")
    client.close()


def test_a_fallback_leaves_no_modal_run_alive(
    echo_wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both Modal attempts wait for a container (held, as on a busy pool) past their
    deadlines; each is cancelled before the next attempt, then the local CPU runs it (a
    short clip: the local run has the same deadline)."""
    from tests import speech

    monkeypatch.setenv("WHISPER_MODAL_CACHE_DIR", str(tiny_model_cache()))  # the local model
    client = client_for(
        echo_wire, monkeypatch, backend="auto", max_attempts=2, allow_cpu_fallback=True
    )
    faults = echo_wire.emulator.servicer.faults
    faults.hold_inputs("Transcriber", 120, times=2)
    clip = speech.wav_bytes(speech.synthesize(speech.SENTENCES[1]))
    before = set(outcomes(echo_wire, app=ECHO))
    mark = rpc_mark(echo_wire)
    with pytest.warns(RuntimeWarning, match="local CPU"):
        t = client.transcribe(clip, language="en", timeout=8.0)
    assert t.backend == "local" and "BackendUnavailable" in str(t.fallback_reason)
    assert "budget" in t.text.lower()
    ended = settle(echo_wire)
    (job,) = set(ended) - before  # one client id, two attempts
    # both Modal attempts were cancelled before any container took them: the local run is
    # the only one that ran
    assert ended[job] == {"terminated": 2}
    assert executions(echo_wire, app=ECHO)[job] == 0
    assert rpcs_since(echo_wire, mark)["FunctionCallCancel"] == 2
    client.close()


def test_a_packed_call_past_its_deadline_is_cancelled_before_the_retry(
    wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pack=True`` used ``.remote``, which sends no cancellation: the retry ran beside a
    first input that ran on to the end (two GPU runs for one item). The first input is
    held past its deadline here (a hung GPU): it is cancelled, never runs, and the retry on
    the deployed batched class (tiny.en) is the one run."""
    from tests import speech

    client = client_for(wire, monkeypatch, app="whisper-modal", max_attempts=3)
    faults = wire.emulator.servicer.faults
    faults.hold_inputs("PackedTranscriber", 120, times=1)
    clip = speech.wav_bytes(speech.synthesize(speech.SENTENCES[0]))
    before = set(outcomes(wire, "PackedTranscriber"))
    mark, seen = rpc_mark(wire), len(faults.injected)
    # the deadline also covers the class's cold start (its container starts during the hold)
    [t] = client.transcribe_many([clip], pack=True, timeout=15.0, language="en")
    assert isinstance(t, wm.Transcript) and t.mode == "batched" and t.text
    assert faults.injected[seen:] == [("PackedTranscriber", "hold")]
    ended = settle(wire, app="whisper-modal", cls="PackedTranscriber")
    (job,) = set(ended) - before
    assert ended[job] == {"terminated": 1, "completed": 1}
    assert executions(wire, "PackedTranscriber")[job] == 1  # the held input never ran
    assert rpcs_since(wire, mark)["FunctionCallCancel"] == 1  # cancelled at its deadline
    assert client.stats().retried_calls == 1
    client.close()


async def test_a_caller_that_gives_up_cancels_the_remote_input(
    echo_wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = client_for(echo_wire, monkeypatch)
    before = set(outcomes(echo_wire, app=ECHO))
    task = asyncio.create_task(client.atranscribe(SLOW, timeout=60))
    found: list[str] = []

    def running() -> bool:
        job = running_new_job(echo_wire, before)
        found.extend([job] if job else [])
        return job is not None

    assert await asyncio.to_thread(wait_for, running, 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    ended = await asyncio.to_thread(settle, echo_wire)
    assert ended[found[0]] == {"terminated": 1}  # stopped in its container, not run on
    assert executions(echo_wire, app=ECHO)[found[0]] == 1
    client.close()


def test_a_job_cancelled_elsewhere_is_job_cancelled_from_structured_status(
    echo_wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = client_for(echo_wire, monkeypatch)
    before = set(outcomes(echo_wire, app=ECHO))
    job = client.submit(SLOW)
    assert wait_for(lambda: running_new_job(echo_wire, before) is not None, 60)
    assert job.status() is wm.JobStatus.RUNNING
    # another process cancels it by id
    other = client_for(echo_wire, monkeypatch)
    wm.Job.from_id(job.id, client=other).cancel()
    with pytest.raises(wm.JobCancelled) as info:  # once the container stopped the run
        job.result(timeout=60)
    assert info.value.job_id == job.id
    assert job.status() is wm.JobStatus.CANCELLED
    ended = settle(echo_wire)
    (client_job_id,) = set(ended) - before
    assert ended[client_job_id] == {"terminated": 1}
    servicer = echo_wire.emulator.servicer
    (state,) = on_loop(echo_wire, lambda: list(servicer.function_calls[job.id].inputs))
    assert state.output is not None and state.output.result.status == TERMINATED
    client.close()
    other.close()


def test_200_calls_with_faults_and_expiries_complete_exactly_once(
    echo_wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10% of inputs fail as a lost worker would (a transient error), 5% of jobs hit their
    deadline once."""
    faults = echo_wire.emulator.servicer.faults
    # Modal's word for a lost worker: INTERNAL_FAILURE, which the SDK retries
    lost = InputFault(result=failure_result(status=INTERNAL_FAILURE))
    faults.input_rule("Transcriber", lambda n: lost if n % 10 == 3 else None)
    before = set(outcomes(echo_wire, app=ECHO))
    mark = rpc_mark(echo_wire)
    try:
        # 10 attempts: a call whose runs all fail at 10% is then a 1e-10 event, not 1e-5
        # every fault is transient and spread out: a breaker opening on them would only
        # test the breaker (its own tests do), so it is set out of reach
        client = client_for(
            echo_wire, monkeypatch, max_attempts=10, breaker_failure_threshold=10_000
        )
        # jobs 0, 20, 40...: 5% of 200 sleep in their first run; every audio is its own
        audio = [(SLOW_FIRST if i % 20 == 0 else b"echo") + f" i={i}".encode() for i in range(200)]
        results = client.transcribe_many(audio, concurrency=16, timeout=4.0)
    finally:
        faults.clear()
    ended = settle(echo_wire)
    jobs = [r.text.removeprefix("ok ") for r in results]  # type: ignore[union-attr]
    assert len(set(jobs)) == 200 and set(jobs) == set(ended) - before
    totals = sum((ended[j] for j in jobs), collections.Counter())
    duplicates = [j for j in jobs if ended[j]["completed"] != 1]
    orphans = totals["completed"] - 200  # completed runs nobody collected
    seen = rpcs_since(echo_wire, mark)
    print(
        f"\n200 calls: completed {sum(ended[j]['completed'] == 1 for j in jobs)}, duplicate "
        f"runs {len(duplicates)}, orphaned runs {orphans}, terminated {totals['terminated']}, "
        f"lost workers {totals['failed']}, cancels {seen['FunctionCallCancel']}"
    )
    assert duplicates == [] and orphans == 0
    assert totals["failed"] >= 20  # the faults did fail runs (10% of 200 and more)...
    assert totals["terminated"] >= 10  # ...and each expiry cancelled its run
    assert client.stats().retried_calls >= 20
    client.close()


def test_pieces_spawned_inside_a_container_read_pending_then_cancelled(
    wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app's orchestrator spawns a job's pieces inside its own input: Modal's call graph
    nests those calls under it, and the job book has no "pending" record of them. A queued
    piece reads PENDING, not RUNNING; one cancelled while queued reads CANCELLED, not
    FAILED, and stays so while the orchestrator runs that piece again and the job succeeds."""
    from tests import speech
    from tests.emulator.deployed import pieces_of
    from whisper_modal.job_book import CHUNK_MARK

    samples, _ = speech.make_clip(speech.SENTENCES[:12], gap_seconds=0.7)  # 3 pieces
    client = client_for(
        wire, monkeypatch, app="whisper-modal", fanout_seconds=30, fanout_chunk_seconds=25
    )
    faults = wire.emulator.servicer.faults
    faults.hold_inputs("Transcriber", 300, times=3)  # every piece's first attempt waits
    job = client.submit(samples, sample_rate=16000, language="en")
    assert wait_for(lambda: (job.progress() or (0, 0))[1] >= 3, 120)
    total = (job.progress() or (0, 0))[1]
    assert wait_for(lambda: len(pieces_of(wire, job.id)) == total, 60)
    assert job.status() is wm.JobStatus.RUNNING
    servicer = wire.emulator.servicer
    (parent,) = on_loop(wire, lambda: [i.input_id for i in servicer.function_calls[job.id].inputs])
    pieces = pieces_of(wire, job.id)
    calls = on_loop(wire, lambda: [servicer.function_calls[p.function_call_id] for p in pieces])
    assert {c.parent_input_id for c in calls} == {parent}  # nested under the job's input
    queued = [wm.Job.from_id(p.function_call_id, client=client) for p in pieces]
    assert [q.status() for q in queued] == [wm.JobStatus.PENDING] * total
    victim = queued[0]
    victim.cancel()
    assert victim.status() is wm.JobStatus.CANCELLED
    faults.release()
    assert job.result(timeout=240).text
    assert job.status() is wm.JobStatus.SUCCEEDED
    assert victim.status() is wm.JobStatus.CANCELLED
    with pytest.raises(wm.JobCancelled):
        victim.result(timeout=10)
    # the cancelled piece never ran; the orchestrator's second attempt transcribed it
    ended = outcomes(wire)
    mine = {k: v for k, v in ended.items() if str(k).startswith(job.id + CHUNK_MARK)}
    assert sum(v["completed"] for v in mine.values()) == total
    assert sum(v["terminated"] for v in mine.values()) == 1 and len(mine) == total + 1
    client.close()


def test_a_cancelled_record_stays_cancelled_when_its_container_starts_late(
    wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The canceller writes "cancelled" while the input's container is only starting: the
    container's "running" and its outcome must not undo the caller's cancel (the job book
    on a ``modal.Dict`` of the emulator's, through Modal's client)."""
    wire.use(monkeypatch)
    book = JobBook(modal.Dict.from_name(f"book-{uuid.uuid4().hex}", create_if_missing=True))
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
    echo_wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel whose container then writes "running" (one that started late, through the
    app's job book): the job's status is CANCELLED from the canceller's record, never
    FAILED or RUNNING, before and after its container stops."""
    client = client_for(echo_wire, monkeypatch)
    before = set(outcomes(echo_wire, app=ECHO))
    job = client.submit(SLOW)
    assert wait_for(lambda: running_new_job(echo_wire, before) is not None, 60)
    job.cancel()
    book = JobBook(modal.Dict.from_name(f"{ECHO}-jobs"))
    book.start(job.id, kind="single", client_job_id=None)  # a container starting late
    assert job.status() is wm.JobStatus.CANCELLED
    record = book.get(job.id)
    assert record is not None and record.status == "cancelled"
    ended = settle(echo_wire)
    (client_job_id,) = set(ended) - before
    assert ended[client_job_id] == {"terminated": 1}
    assert job.status() is wm.JobStatus.CANCELLED
    with pytest.raises(wm.JobCancelled):
        job.result(timeout=10)
    client.close()
