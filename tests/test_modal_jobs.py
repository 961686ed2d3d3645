"""Jobs that live on Modal: the app's fan-out orchestrator, idempotent submits, re-attach.

Through the emulator of Modal's API (``tests/emulator``): the SDK runs in this process on
unmodified ``modal`` (``Deployed.settings``), the deployed app's ``fanout`` orchestrator
and its GPU pieces (the real ``Transcriber``, tiny.en on CPU, on real speech) run in real
``python -m modal._container_entrypoint`` processes, and the job book is the app's
``modal.Dict`` on the emulator. Faults are Modal's at the wire (``WireFaults``): inputs
failed as a container would fail them, inputs held as on a busy pool, answers lost or held
past a deadline, a container killed. The re-attach test reads the job from a second
Python process that knows only its id; the soak and the listing's failures go to the echo
app (``tests/echo_app.py``), the deadline test to a second copy of the app deployed with
an 8 s ``remote_timeout``.

WER bound: tiny.en gets about 8% on these espeak sentences in one piece; the fan-out cuts
at pauses, so merging must not add errors: 12% leaves room for one word per cut.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import uuid
from pathlib import Path
from typing import Any

import modal
import numpy as np
import pytest
from grpclib import Status
from modal._serialization import deserialize
from modal_proto import api_pb2

import whisper_modal as wm
from tests import speech
from tests.emulator.deployed import (
    Deployed,
    busy_containers,
    executions,
    modal_cli,
    on_loop,
    outcomes,
    pieces_of,
    request_of,
    wait_for,
)
from tests.emulator.faults import InputFault, failure_result
from tests.emulator.servicer import InputState, Servicer
from tests.test_modal_cancellation import ECHO, client_for
from tests.wer import wer
from whisper_modal.job_book import CHUNK_MARK, JobBook
from whisper_modal.wire import Request

ROOT = Path(__file__).parents[1]
SAMPLE = ROOT / "examples" / "sample.flac"
SHORT = "whisper-modal-short"  # the app again, deployed with an 8 s remote_timeout
SUCCESS = api_pb2.GenericResult.GENERIC_STATUS_SUCCESS
FAILURE = api_pb2.GenericResult.GENERIC_STATUS_FAILURE
TERMINATED = api_pb2.GenericResult.GENERIC_STATUS_TERMINATED
INTERNAL_FAILURE = api_pb2.GenericResult.GENERIC_STATUS_INTERNAL_FAILURE

pytestmark = [pytest.mark.slow, pytest.mark.emulator]

FANOUT = {"fanout_seconds": 30, "fanout_chunk_seconds": 25}


@pytest.fixture(scope="module")
def long_clip() -> tuple[np.ndarray, str]:
    """About 55 s of speech: three pieces of at most 25 s."""
    return speech.make_clip(speech.SENTENCES[:12], gap_seconds=0.7)


@pytest.fixture(scope="module")
def short_app(deployed: Deployed) -> str:
    """The app deployed a second time into the same emulator as ``SHORT``, by Modal's CLI,
    with ``remote_timeout=8`` baked in: its orchestrator's own deadline is 7.2 s."""
    marker = f"whisper_modal.app as {SHORT}"
    if marker not in deployed.apps:
        env = {**deployed.env, "WHISPER_MODAL_APP_NAME": SHORT, "WHISPER_MODAL_REMOTE_TIMEOUT": "8"}
        modal_cli(env, "deploy", "-m", "whisper_modal.app")
        deployed.apps.add(marker)
    return SHORT


def fanout_client(wire: Deployed, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> wm.Client:
    """An SDK client in this process whose long audio goes to the app's orchestrator."""
    return wire.sdk(monkeypatch, **{**FANOUT, **settings})


def chunks(ended: dict[Any, Any], job_id: str) -> dict[str, Any]:
    """The entries of ``outcomes``/``executions`` that are pieces of job ``job_id``."""
    return {k: v for k, v in ended.items() if str(k).startswith(job_id + CHUNK_MARK)}


def completed_chunks(wire: Deployed, job_id: str, app: str = "whisper-modal") -> dict[str, int]:
    """Piece client id -> how many of its inputs transcribed (ended ``completed``)."""
    ended = chunks(outcomes(wire, app=app), job_id)
    return {k: v["completed"] for k, v in ended.items() if v["completed"]}


def orchestrator_input(wire: Deployed, job_id: str) -> InputState:
    """The job's one input (its FunctionCall is the orchestrator's call)."""
    servicer = wire.emulator.servicer
    (state,) = on_loop(wire, lambda: list(servicer.function_calls[job_id].inputs))
    return state


def settle(wire: Deployed, job_id: str) -> list[InputState]:
    """Wait until the job's input and every piece it spawned have ended; its pieces."""
    servicer = wire.emulator.servicer

    def done() -> bool:
        finished = on_loop(wire, lambda: servicer.function_calls[job_id].finished)
        return finished and all(p.output is not None for p in pieces_of(wire, job_id))

    assert wait_for(done, 90), [p.status for p in pieces_of(wire, job_id)]
    return pieces_of(wire, job_id)


def piece_calls(wire: Deployed, job_id: str) -> list[Any]:
    """The FunctionCalls of the job's pieces (``cancelled`` says who got a cancel)."""
    servicer = wire.emulator.servicer
    pieces = pieces_of(wire, job_id)
    return on_loop(wire, lambda: [servicer.function_calls[p.function_call_id] for p in pieces])


def calls_made(wire: Deployed, before: set[str]) -> list[tuple[str, str, str]]:
    """(call id, function name, parent input id) of the FunctionCalls made since ``before``
    (a set of ids); the parent is "" for a client's call, an input's id for a container's."""
    servicer = wire.emulator.servicer

    def read() -> list[tuple[str, str, str]]:
        return [
            (i, servicer.functions[c.function_id].definition.function_name, c.parent_input_id)
            for i, c in servicer.function_calls.items()
            if i not in before
        ]

    return on_loop(wire, read)


def calls_of(wire: Deployed, ids: list[str]) -> list[Any]:
    """The emulator's FunctionCalls of these ids (``finished``, ``cancelled``...)."""
    servicer = wire.emulator.servicer
    return on_loop(wire, lambda: [servicer.function_calls[c] for c in ids])


def call_outcomes(wire: Deployed, ids: list[str]) -> dict[str, str]:
    """Call id -> how its one input ended: completed, deduplicated, terminated, failed, open
    (as ``outcomes`` tells them, per call instead of per client id)."""
    servicer = wire.emulator.servicer
    status = api_pb2.GenericResult

    def read() -> dict[str, str]:
        out = {}
        for call_id in ids:
            (state,) = servicer.function_calls[call_id].inputs
            result = state.output.result if state.output else None
            if result is None:
                out[call_id] = "open"
            elif result.status == status.GENERIC_STATUS_SUCCESS:
                data = (
                    servicer.blobs.blobs[result.data_blob_id]
                    if result.WhichOneof("data_oneof") == "data_blob_id"
                    else result.data
                )
                value = deserialize(data, None)
                dup = isinstance(value, dict) and "duplicate_of" in value
                out[call_id] = "deduplicated" if dup else "completed"
            elif result.status == status.GENERIC_STATUS_TERMINATED:
                out[call_id] = "terminated"
            else:
                out[call_id] = "failed"
        return out

    return on_loop(wire, read)


def call_ids(wire: Deployed) -> set[str]:
    servicer = wire.emulator.servicer
    return set(on_loop(wire, lambda: list(servicer.function_calls)))


def newest_request(servicer: Servicer) -> dict[str, Any]:
    """The request of the input being put in now. An input rule (``WireFaults.input_rule``)
    is asked as a FunctionMap's input is queued, right after it was made: it is the newest
    input (run on the emulator's loop, where the rule runs)."""
    return request_of(servicer, next(reversed(servicer.inputs.values())))


def fail_piece(wire: Deployed, piece: int, result: api_pb2.GenericResult, *, attempts: str) -> None:
    """Every input of piece ``piece`` whose attempt is in ``attempts`` ("0", "01") fails."""
    servicer = wire.emulator.servicer
    marks = tuple(f"{CHUNK_MARK}{piece}-a{a}" for a in attempts)

    def decide(_: int) -> InputFault | None:
        client_job_id = str(newest_request(servicer).get("client_job_id", ""))
        return InputFault(result=result) if client_job_id.endswith(marks) else None

    servicer.faults.input_rule("Transcriber", decide)


def test_long_submit_is_an_app_job_that_reattaches_from_another_process(
    wire: Deployed, monkeypatch: pytest.MonkeyPatch, long_clip: tuple[np.ndarray, str]
) -> None:
    samples, reference = long_clip
    client = fanout_client(wire, monkeypatch)
    before = call_ids(wire)
    job = client.submit(samples, sample_rate=16000, language="en")
    assert job.id.startswith("fc-") and job.backend == "modal"
    # one orchestrator input from this client; the pieces are the orchestrator's
    assert [(c, name) for c, name, parent in calls_made(wire, before) if not parent] == [
        (job.id, "fanout")
    ]
    seen = wire.client(
        f"""
        import json, time, whisper_modal as wm
        job = wm.Job.from_id({job.id!r})
        seen, deadline = [], time.monotonic() + 240
        while time.monotonic() < deadline:
            progress = job.progress()
            if progress is not None and (not seen or list(progress) != seen[-1]):
                seen.append(list(progress))
            if job.status().done:
                break
            time.sleep(0.05)
        t = job.result(timeout=240)
        final = job.progress()
        print(json.dumps({{"progress": seen, "final_progress": None if final is None
                           else list(final), "status": job.status().value, "text": t.text,
                           "job_id": t.job_id, "duration": t.duration}}))
        """,
        timeout=300,
    )
    total = seen["final_progress"][1]
    assert total >= 3 and seen["final_progress"] == [total, total]
    assert all(0 <= d <= t == total for d, t in seen["progress"])  # never beyond the total
    assert seen["status"] == "succeeded" and seen["job_id"] == job.id
    assert wer(reference, seen["text"]) <= 0.12, seen["text"]
    assert seen["duration"] == pytest.approx(len(samples) / 16000, abs=0.1)
    # the submitting process reads the same job, and each piece ran exactly once
    assert job.result(timeout=60).text == seen["text"]
    pieces = settle(wire, job.id)
    assert sorted(completed_chunks(wire, job.id).values()) == [1] * total == [1] * len(pieces)
    assert sorted(chunks(executions(wire), job.id).values()) == [1] * total
    assert len(calls_made(wire, before)) == 1 + total  # the job and its pieces, no more
    state = orchestrator_input(wire, job.id)
    assert state.output is not None and state.output.result.status == SUCCESS


def test_a_failed_chunk_is_retried_once_as_a_new_input(
    wire: Deployed, monkeypatch: pytest.MonkeyPatch, long_clip: tuple[np.ndarray, str]
) -> None:
    samples, reference = long_clip
    client = fanout_client(wire, monkeypatch)
    # piece 1's first input fails as a lost worker would fail it
    fail_piece(wire, 1, failure_result(status=INTERNAL_FAILURE), attempts="0")
    job = client.submit(samples, sample_rate=16000, language="en")
    t = job.result(timeout=240)
    assert wer(reference, t.text) <= 0.12, t.text
    done, total = job.progress() or (0, 0)
    assert done == total >= 3
    shown = job._repr_html_()  # a notebook cell: status and the pieces' progress
    assert ">succeeded</b>" in shown and f'<progress value="{done}" max="{total}">' in shown
    completed = completed_chunks(wire, job.id)
    assert f"{job.id}{CHUNK_MARK}1-a1" in completed  # the second attempt ran piece 1
    assert f"{job.id}{CHUNK_MARK}1-a0" not in completed  # the first one failed
    assert outcomes(wire)[f"{job.id}{CHUNK_MARK}1-a0"] == {"failed": 1}
    assert len(completed) == total and set(completed.values()) == {1}
    assert len(settle(wire, job.id)) == total + 1  # one new input, for piece 1 only


def test_a_chunk_failing_twice_fails_the_job_naming_it(
    wire: Deployed, monkeypatch: pytest.MonkeyPatch, long_clip: tuple[np.ndarray, str]
) -> None:
    samples, _ = long_clip
    client = fanout_client(wire, monkeypatch)
    corrupt = wm.AudioError(f"emulated: corrupt frame {uuid.uuid4().hex}", reason="truncated")
    fail_piece(wire, 1, failure_result(corrupt), attempts="01")  # as the container raises it
    job = client.submit(samples, sample_rate=16000, language="en")
    with pytest.raises(wm.RemoteExecutionError) as failed:
        job.result(timeout=240)
    assert not isinstance(failed.value, wm.TransientError)  # never retried by the client
    assert job.status() is wm.JobStatus.FAILED
    settle(wire, job.id)  # no piece is left running
    ended = chunks(outcomes(wire), job.id)
    failing = {f"{job.id}{CHUNK_MARK}1-a0", f"{job.id}{CHUNK_MARK}1-a1"}
    assert all(ended[k] == {"failed": 1} for k in failing), ended
    # the other pieces ended: stopped by the orchestrator's cancel, or done before it
    others = [v for k, v in ended.items() if k not in failing]
    assert others and all(v in ({"terminated": 1}, {"completed": 1}) for v in others), ended
    # the job produced no result
    state = orchestrator_input(wire, job.id)
    assert state.output is not None and state.output.result.status == FAILURE
    # the first run's error, in its container's log
    assert f"failed twice; last error AudioError: {corrupt}" in wire.emulator.container_logs()
    # ...and the caller's: Modal's re-run of the failed input (retries=1) raises the first
    # run's error from the job's record (it used to raise only "failed already")
    err = failed.value
    assert isinstance(err, wm.ChunkFailed), err
    assert err.chunk == 1 and err.remote_type == "AudioError" and 0 < err.start < err.end
    assert "chunk 2 of" in str(err) and "failed twice" in str(err)


def test_cancelling_a_fan_out_job_cancels_its_chunks(
    wire: Deployed, monkeypatch: pytest.MonkeyPatch, long_clip: tuple[np.ndarray, str]
) -> None:
    samples, _ = long_clip
    client = fanout_client(wire, monkeypatch)
    faults = wire.emulator.servicer.faults
    faults.hold_inputs("Transcriber", 300, times=50)  # no container takes a piece
    job = client.submit(samples, sample_rate=16000, language="en")
    assert wait_for(lambda: (job.progress() or (0, 0))[1] >= 3, 120)
    total = (job.progress() or (0, 0))[1]
    assert wait_for(lambda: len(pieces_of(wire, job.id)) == total, 60)
    assert job.status() is wm.JobStatus.RUNNING
    job.cancel()
    assert job.status() is wm.JobStatus.CANCELLED  # the canceller's record, at once
    # the orchestrator cancels its pieces once Modal's cancellation reached its container
    # (at the container's next heartbeat: up to 15 s), and then its input ends
    assert wait_for(lambda: all(c.cancelled for c in piece_calls(wire, job.id)), 60)
    with pytest.raises(wm.JobCancelled):
        job.result(timeout=60)
    book = client._modal_backend()._job_book()
    assert wait_for(lambda: getattr(book.get(job.id), "status", "") == "cancelled", 30)
    faults.release()  # nothing is held any more: a piece that was not cancelled would run
    pieces = settle(wire, job.id)
    assert len(pieces) == total  # nothing new started after the cancel
    assert chunks(executions(wire), job.id) == {}  # no piece reached a container
    assert {p.output.result.status for p in pieces if p.output} == {TERMINATED}
    state = orchestrator_input(wire, job.id)
    assert state.output is not None and state.output.result.status == TERMINATED


def test_a_submit_whose_acknowledgement_was_lost_runs_once(
    wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Modal accepts the input but its answer is lost on every attempt of modal's own
    retries (one idempotency key, one call): the SDK's retry spawns again."""
    client = client_for(wire, monkeypatch, app="whisper-modal")
    servicer = wire.emulator.servicer
    before, known = call_ids(wire), set(outcomes(wire))
    attempts = 4  # modal's client: the first try and DEFAULT_MAX_RETRIES (3) more
    wire.emulator.run(servicer.drop_acks("Transcriber.*", attempts))
    job = client.submit(SAMPLE, language="en")
    made = [c for c, _, _ in calls_made(wire, before)]
    assert [name for _, name, _ in calls_made(wire, before)] == ["Transcriber.*"] * 2
    assert job.id in made  # the retry spawned again...
    t = job.result(timeout=120)
    assert "planning meeting" in t.text.lower()
    assert wait_for(lambda: all(c.finished for c in calls_of(wire, made)), 60)
    (client_job_id,) = set(outcomes(wire)) - known
    ended = outcomes(wire)[client_job_id]
    # ...but the audio was transcribed once. The job is whichever call claimed the id
    # first: the accepted first attempt's container, or the retry (then the first one's
    # container finds it owned and answers duplicate_of); the other was stood down
    assert ended["completed"] == 1 and ended["deduplicated"] + ended["terminated"] == 1
    assert sum(ended.values()) == 2


def test_a_duplicate_submit_returns_the_first_job(
    wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = client_for(wire, monkeypatch, app="whisper-modal")
    client_job_id = f"order-{uuid.uuid4().hex[:8]}"
    request = Request(
        options=wm.TranscribeOptions(model="tiny.en", language="en"),
        audio=SAMPLE.read_bytes(),
        client_job_id=client_job_id,
    )
    before = call_ids(wire)
    first = client.submit_request(request)
    again = client.submit_request(request)
    assert again.id == first.id
    assert "planning meeting" in wm.Job.from_id(first.id, client=client).result(timeout=120).text
    made = [c for c, _, _ in calls_made(wire, before)]
    assert [name for _, name, _ in calls_made(wire, before)] == ["Transcriber.*"] * 2
    assert wait_for(lambda: all(c.finished for c in calls_of(wire, made)), 60)  # two spawns...
    ended = outcomes(wire)[client_job_id]
    # ...one transcription: the second call was cancelled by the SDK (or, had its
    # container been first, answered duplicate_of)
    assert ended["completed"] == 1 and ended["deduplicated"] + ended["terminated"] == 1
    (duplicate,) = [c for c in made if c != first.id]
    servicer = wire.emulator.servicer
    cancelled = on_loop(wire, lambda: servicer.function_calls[duplicate].cancelled)
    assert cancelled or ended["deduplicated"] == 1


def test_whisper_modal_jobs_lists_recent_jobs(
    wire: Deployed,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    long_clip: tuple[np.ndarray, str],
) -> None:
    from whisper_modal.cli import main

    samples, _ = long_clip
    client = fanout_client(wire, monkeypatch)
    wm.configure(client)  # conftest restores the default client
    single = client.submit(SAMPLE, language="en")
    fanned = client.submit(samples, sample_rate=16000, language="en")
    single.result(timeout=120)
    fanned.result(timeout=240)
    failed = client.submit(b"junk" * 100, language="en")
    with pytest.raises(wm.AudioError):
        failed.result(timeout=60)
    assert main(["jobs", "--json", "--limit", "50"]) == 0
    rows = {r["job_id"]: r for r in json.loads(capsys.readouterr().out)}
    # the session's other jobs are in the app's book too; none of the pieces is listed
    assert {single.id, fanned.id, failed.id} <= set(rows)
    assert not {p.function_call_id for p in pieces_of(wire, fanned.id)} & set(rows)
    assert all(CHUNK_MARK not in str(r["client_job_id"]) for r in rows.values())
    assert rows[single.id]["status"] == "succeeded" and rows[single.id]["kind"] == "single"
    assert rows[single.id]["audio_seconds"] == pytest.approx(20.3, abs=0.5)
    assert rows[fanned.id]["kind"] == "fanout" and rows[fanned.id]["done"] >= 3
    assert rows[failed.id]["status"] == "failed" and rows[failed.id]["error"] == "AudioError"
    assert main(["jobs", "--limit", "50"]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith(single.id))
    assert "succeeded" in row.split() and "fanout" in table


def test_a_restarted_orchestrator_reuses_the_pieces_that_ran(
    wire: Deployed, monkeypatch: pytest.MonkeyPatch, long_clip: tuple[np.ndarray, str]
) -> None:
    """Modal re-runs an input whose container died: the same job id, the same piece ids.
    One piece is held; once the others have run, the orchestrator's container is killed.
    Its re-run finds every piece that ran claimed (their new inputs answer duplicate_of)
    and transcribes only the held one; the held first input, let go at the end, finds its
    id claimed too."""
    samples, reference = long_clip
    client = fanout_client(wire, monkeypatch)
    faults = wire.emulator.servicer.faults
    faults.hold_inputs("Transcriber", 300, times=1)
    job = client.submit(samples, sample_rate=16000, language="en")
    assert wait_for(lambda: (job.progress() or (0, 0))[1] >= 3, 120)
    total = (job.progress() or (0, 0))[1]

    def ran_but_one() -> bool:
        outputs = [p.output for p in pieces_of(wire, job.id)]
        return sum(o is not None and o.result.status == SUCCESS for o in outputs) == total - 1

    assert wait_for(ran_but_one, 120)
    ran = set(completed_chunks(wire, job.id))
    orchestrator = orchestrator_input(wire, job.id)
    task = on_loop(wire, lambda: orchestrator.task_id if orchestrator.output is None else "")
    assert task  # still running, waiting on the held piece
    wire.emulator.run(wire.emulator.pool.kill(task))  # its container dies
    t = job.result(timeout=240)
    assert wer(reference, t.text) <= 0.12, t.text
    servicer = wire.emulator.servicer
    assert orchestrator.input_id in on_loop(wire, lambda: list(servicer.server_retries))
    faults.release()  # the dead orchestrator's held piece may run now
    settle(wire, job.id)
    ended = chunks(outcomes(wire), job.id)
    assert len(ended) == total and set(ran) < set(ended)
    # every piece transcribed once; each of them also had an input that stood down
    assert all(v == {"completed": 1, "deduplicated": 1} for v in ended.values()), ended
    assert wait_for(lambda: not busy_containers(wire), 30)


def test_200_submits_with_faults_and_expiries_run_each_job_once(
    echo_wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The note's soak: 15% of spawns meet a transient fault, a third of them before Modal
    accepted the input (FunctionMap answers RESOURCE_EXHAUSTED), the rest after (the answer
    is held past the spawn deadline, as a lost acknowledgement is). Every job must complete
    with one transcribing run, and every other input must have been cancelled or have
    stood down as a duplicate."""
    from whisper_modal.backends import modal_transport

    monkeypatch.setattr(modal_transport, "SPAWN_SECONDS", 0.5)  # deadline 2.5 s, not 62
    faults = echo_wire.emulator.servicer.faults
    faults.rpc_rule("FunctionMap", lambda n: Status.RESOURCE_EXHAUSTED if n % 20 == 7 else None)
    faults.hold_rpc_rule("FunctionMap", lambda n: 6.0 if n % 20 in (3, 13) else None)
    before, seen = call_ids(echo_wire), len(faults.injected)
    # every fault here is transient and spread out: a breaker opening on them would only
    # test the breaker (its own tests do), so it is set out of reach
    client = client_for(
        echo_wire, monkeypatch, max_attempts=10, connect_timeout=2,
        breaker_failure_threshold=10_000,
    )  # fmt: skip

    async def submit_all() -> list[wm.Job]:
        limit = asyncio.Semaphore(16)

        async def one(i: int) -> wm.Job:
            async with limit:
                return await client.asubmit(f"echo i={i}".encode())

        return await asyncio.gather(*(one(i) for i in range(200)))

    try:
        jobs = asyncio.run(submit_all())
        texts = [job.result(timeout=60).text for job in jobs]
    finally:
        faults.clear()
    made = [c for c, name, _ in calls_made(echo_wire, before) if name == "Transcriber.*"]
    assert wait_for(lambda: all(c.finished for c in calls_of(echo_wire, made)), 60)
    cjids = [t.removeprefix("ok ") for t in texts]
    job_ids = {job.id for job in jobs}
    ended = outcomes(echo_wire, app=ECHO)
    duplicates = [c for c in cjids if ended[c]["completed"] != 1]
    by_call = call_outcomes(echo_wire, made)
    orphans = [c for c, kind in by_call.items() if c not in job_ids and kind == "completed"]
    kinds = collections.Counter(by_call.values())
    injected = collections.Counter(faults.injected[seen:])
    print(
        f"\n200 submits: completed {len(set(cjids))}, duplicate runs {len(duplicates)}, "
        f"orphaned calls {len(orphans)}; inputs {len(made)} ({dict(kinds)}); faults "
        f"refused {injected['FunctionMap', 'RESOURCE_EXHAUSTED']}, "
        f"held {injected['FunctionMap', 'hold']}"
    )
    assert len(set(cjids)) == 200 and duplicates == [] and orphans == []
    assert len(made) > 200  # the faults did make retries spawn again
    assert set(kinds) <= {"completed", "deduplicated", "terminated"}
    assert kinds["completed"] == 200
    assert injected["FunctionMap", "RESOURCE_EXHAUSTED"] >= 5
    assert injected["FunctionMap", "hold"] >= 10


@pytest.mark.parametrize("failure", ["hangs", "refuses"])
def test_whisper_modal_jobs_fails_when_the_book_cannot_be_read(
    echo_wire: Deployed,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    failure: str,
) -> None:
    """An unreadable book is an error (exit 1, a reason), never "(no jobs recorded ...)"."""
    from whisper_modal.cli import main

    client = client_for(echo_wire, monkeypatch, connect_timeout=2)
    wm.configure(client)  # conftest restores the default client
    client.submit(b"echo", language="en").result(timeout=60)  # a job the listing would show
    faults = echo_wire.emulator.servicer.faults
    if failure == "hangs":  # streaming the whole Dict outlives the deadline
        faults.hold_rpc("DictContents", 60, times=2)
    else:  # the Dict's server ends the stream with an error
        faults.fail_rpc("DictContents", Status.UNAVAILABLE, times=2)
    try:
        assert main(["jobs"]) == 1
        assert main(["jobs", "--json"]) == 1
    finally:
        faults.release()
    captured = capsys.readouterr()
    assert "no jobs" not in captured.err and captured.out == ""
    reason = "did not answer within 2 s" if failure == "hangs" else "DictContents answered"
    assert captured.err.count("whisper-modal: failed:") == 2 and reason in captured.err
    # the fault was the wire's, not the book's (a client with time to stream the whole book:
    # the soak tests of this session left over a thousand records in it)
    wm.configure(client_for(echo_wire, monkeypatch, connect_timeout=120))
    assert main(["jobs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)


def test_an_orchestrator_past_its_deadline_cancels_its_pieces_and_is_not_rerun(
    wire: Deployed,
    monkeypatch: pytest.MonkeyPatch,
    long_clip: tuple[np.ndarray, str],
    short_app: str,
) -> None:
    """Modal's timeout would stop the orchestrator's input and leave its pieces on their
    GPUs, its record "running" and its claim held; its own deadline, inside Modal's (7.2 s
    of ``remote_timeout=8``), cleans up first. Modal's retry (``retries=1``) of the failed
    input does not run it again."""
    samples, _ = long_clip
    client = fanout_client(wire, monkeypatch, app_name=short_app)
    faults = wire.emulator.servicer.faults
    faults.hold_inputs("Transcriber", 300, times=50)  # every piece outlives the deadline
    job = client.submit(samples, sample_rate=16000, language="en")
    with pytest.raises(wm.RemoteExecutionError) as info:
        job.result(timeout=120)
    pieces = settle(wire, job.id)
    assert len(pieces) == 3  # the re-run (the same input) spawned none
    assert all(c.cancelled for c in piece_calls(wire, job.id))
    assert {p.output.result.status for p in pieces if p.output} == {TERMINATED}
    assert chunks(executions(wire, app=short_app), job.id) == {}
    state = orchestrator_input(wire, job.id)
    servicer = wire.emulator.servicer
    assert state.input_id in on_loop(wire, lambda: list(servicer.server_retries))
    assert state.output is not None and state.output.result.status == FAILURE
    book = JobBook(modal.Dict.from_name(f"{short_app}-jobs"))
    record = book.get(job.id)
    assert record is not None and (record.status, record.error) == (
        "failed",
        "RemoteExecutionError",
    )
    assert record.failure is not None and record.failure["remote_type"] == "FanoutDeadline"
    # the claim is released: a new call claiming the id gets it
    assert book.claim(str(record.client_job_id), "fc-after") == "fc-after"
    # the first run's error, in its container's log
    assert f"{job.id} ran past its deadline of 7.2 s" in wire.emulator.container_logs()
    err = info.value  # the first run's, raised again by Modal's re-run
    assert "failed already" not in str(err)
    assert "past its deadline of 7.2 s" in str(err) and err.remote_type == "FanoutDeadline"


def test_a_piece_whose_spawn_is_in_flight_at_the_cancel_is_cancelled_too(
    wire: Deployed, monkeypatch: pytest.MonkeyPatch, long_clip: tuple[np.ndarray, str]
) -> None:
    """The cancellation can land while a piece's spawn is on its way to Modal: the spawn
    goes through, and that piece must be cancelled like the others (it ran on before)."""
    samples, _ = long_clip
    client = fanout_client(wire, monkeypatch)
    servicer = wire.emulator.servicer
    faults = servicer.faults
    # FunctionMap 1 is the job itself, 2-4 its pieces: the last piece's is accepted, and
    # its answer held until the cancellation has reached the orchestrator's container
    count = itertools.count(1)
    faults.hold_rpc_rule("FunctionMap", lambda _: 300.0 if next(count) == 4 else None)
    wire.emulator.run(servicer.pause("Transcriber.*"))  # no container takes a piece
    try:
        cancel_with_a_spawn_in_flight(wire, client, samples)
    finally:
        wire.emulator.run(servicer.resume("Transcriber.*"))


def cancel_with_a_spawn_in_flight(wire: Deployed, client: wm.Client, samples: np.ndarray) -> None:
    servicer = wire.emulator.servicer
    faults = servicer.faults
    seen = len(faults.injected)
    job = client.submit(samples, sample_rate=16000, language="en")
    assert wait_for(lambda: ("FunctionMap", "hold") in faults.injected[seen:], 120)
    state = orchestrator_input(wire, job.id)
    job.cancel()  # while the third piece's spawn is still on its way

    def delivered() -> bool:  # Modal's next heartbeat took the cancel to the container
        def read() -> bool:
            call = servicer.function_calls[job.id]
            return call.cancelled and not servicer.cancelled_for_task.get(state.task_id)

        return on_loop(wire, read)

    assert wait_for(delivered, 60)
    assert job.status() is wm.JobStatus.CANCELLED
    # the pieces whose spawns were answered are cancelled by the orchestrator; the third
    # call, accepted by Modal, is not: its spawn's answer has not reached the orchestrator
    cancelled = lambda: sorted(c.cancelled for c in piece_calls(wire, job.id))  # noqa: E731
    assert wait_for(lambda: cancelled() == [False, True, True], 30), cancelled()
    # the orchestrator's input waits on that spawn: its answer goes out now, and the third
    # piece must be cancelled too
    faults.release()
    with pytest.raises(wm.JobCancelled):
        job.result(timeout=30)
    assert len(pieces_of(wire, job.id)) == 3
    assert wait_for(lambda: all(c.cancelled for c in piece_calls(wire, job.id)), 30), [
        (c.function_call_id, c.cancelled) for c in piece_calls(wire, job.id)
    ]
    pieces = settle(wire, job.id)
    assert chunks(executions(wire), job.id) == {}
    assert {p.output.result.status for p in pieces if p.output} == {TERMINATED}
