"""The Modal path end to end at the wire: the SDK on unmodified ``modal`` against the emulator.

The deployed app's real container class runs in real containers (tiny.en on CPU); tests
about timing, ordering and error mapping use the echo app (``tests/echo_app.py``), whose
audio bytes script each run (``b"echo name=x sleep=0.2"``), so they take no model time.
Faults are Modal's own answers at the wire (``tests/emulator/faults.py``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import modal.exception as me
import pytest
from grpclib import Status
from modal_proto import api_pb2

import whisper_modal as wm
from tests.emulator.deployed import (
    Deployed,
    executions,
    max_open_calls,
    on_loop,
    outcomes,
    pieces_of,
    wait_for,
)
from tests.wer import wer
from whisper_modal.backends.base import JobStatus
from whisper_modal.backends.modal import ModalBackend
from whisper_modal.client import Client
from whisper_modal.options import TranscribeOptions
from whisper_modal.wire import Request

EXAMPLES = Path(__file__).parents[1] / "examples"
SAMPLE = EXAMPLES / "sample.flac"
REFERENCE = (EXAMPLES / "sample.txt").read_text()
ECHO = "whisper-modal-echo"
GENERIC = api_pb2.GenericResult

pytestmark = [pytest.mark.slow, pytest.mark.emulator]


@pytest.fixture
def client(wire: Deployed, monkeypatch: pytest.MonkeyPatch) -> Client:
    return wire.sdk(monkeypatch)


def echo(wire: Deployed, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Client:
    return wire.sdk(monkeypatch, app_name=ECHO, **overrides)


def echo_backend(wire: Deployed, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> ModalBackend:
    return ModalBackend(wire.settings(monkeypatch, **{"app_name": ECHO, **overrides}))


def script(**steps: Any) -> bytes:
    """Audio the echo app reads as its script: ``script(name="x", sleep=0.2)``."""
    return ("echo " + " ".join(f"{k}={v}" for k, v in steps.items())).encode()


def req(job: str = "a", audio: bytes | None = None, **options: Any) -> Request:
    """A hand-made request answered ``"ok <job>"``; its ``client_job_id`` is unique, since
    the app's job book remembers every id it ever claimed (a reused one is a duplicate)."""
    return Request(
        options=TranscribeOptions(model="tiny.en", **options),
        audio=audio if audio is not None else script(name=job),
        client_job_id=f"{job}-{uuid.uuid4().hex[:12]}",
    )


def kill_containers(wire: Deployed, prefix: str) -> None:
    """SIGKILL every container of the real app's functions named ``prefix``..."""
    emulator = wire.emulator
    servicer = emulator.servicer

    def ours() -> list[str]:
        app_id = servicer.apps["whisper-modal"]
        return [
            task
            for task, c in emulator.pool.containers.items()
            if servicer.functions[c.function_id].app_id == app_id
            and servicer.functions[c.function_id].definition.function_name.startswith(prefix)
        ]

    tasks = on_loop(wire, ours)
    for task in tasks:
        emulator.run(emulator.pool.kill(task))
    assert wait_for(lambda: not set(on_loop(wire, ours)) & set(tasks), 30)


def class_lookups(wire: Deployed) -> int:
    """``ClassGet`` lookups of our GPU class so far (a lookup also fetches its service function)."""
    return wire.emulator.servicer.lookups.count(("whisper-modal", "Transcriber"))


def test_transcribe_runs_the_real_container_class(client: Client, wire: Deployed) -> None:
    t = client.transcribe(SAMPLE, language="en")
    assert t.backend == "modal" and t.model == "tiny.en" and t.device == "cpu"
    assert wer(REFERENCE, t.text) <= 0.10
    assert ("whisper-modal", "Transcriber") in wire.emulator.servicer.lookups
    assert t.job_id is not None and t.job_id.startswith("fc-")  # the input's FunctionCall


def test_lookup_is_lazy_and_cached(wire: Deployed, monkeypatch: pytest.MonkeyPatch) -> None:
    before = class_lookups(wire)
    client = wire.sdk(monkeypatch)
    assert class_lookups(wire) == before  # creating a client calls nothing
    client.transcribe(SAMPLE, language="en")
    client.transcribe(SAMPLE, language="en")
    assert class_lookups(wire) == before + 1


def test_cold_start_is_reported_once(wire: Deployed, monkeypatch: pytest.MonkeyPatch) -> None:
    kill_containers(wire, "Transcriber")  # the next input starts a container
    client = wire.sdk(monkeypatch)
    first = client.transcribe(SAMPLE, language="en")
    second = client.transcribe(SAMPLE, language="en")
    assert first.cold_start and not second.cold_start
    assert first.timings.load > 0
    assert client.stats().cold_starts == 1


def test_submit_status_result_reattach(
    client: Client, wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = client.submit(SAMPLE, language="en")
    assert job.id.startswith("fc-") and job.backend == "modal"
    # another client with its own backend that shares only the id string
    other = wire.sdk(monkeypatch)
    again = wm.Job.from_id(job.id, client=other)
    t = again.wait(timeout=120, poll_interval=0.05, progress=False)
    assert again.status() is wm.JobStatus.SUCCEEDED
    assert wer(REFERENCE, t.text) <= 0.10
    assert t.job_id == job.id


def test_unfinished_job_times_out_and_can_be_cancelled(
    echo_wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    servicer = echo_wire.emulator.servicer
    client = echo(echo_wire, monkeypatch)
    client.transcribe(b"warm", timeout=120)
    blocker = client.submit(script(name="blocker", sleep=4))
    assert wait_for(lambda: blocker.status() is wm.JobStatus.RUNNING, 30)
    servicer.faults.hold_inputs("Transcriber", 120)  # no container takes the next one
    queued = client.submit(b"queued")
    assert queued.status() is wm.JobStatus.PENDING
    with pytest.raises(wm.JobTimeout) as info:
        queued.result(timeout=0)
    assert info.value.job_id == queued.id and isinstance(info.value, TimeoutError)
    queued.cancel()
    assert queued.status() is wm.JobStatus.CANCELLED
    with pytest.raises(wm.JobCancelled):
        queued.result(timeout=5)
    assert blocker.result(timeout=30).text == "ok blocker"
    ran = on_loop(
        echo_wire, lambda: [len(i.tasks) for i in servicer.function_calls[queued.id].inputs]
    )
    assert ran == [0]  # the cancelled job never reached a container


def test_unknown_job_id(client: Client) -> None:
    with pytest.raises(wm.JobNotFound) as info:
        wm.Job.from_id("fc-doesnotexist", client=client).result(timeout=1)
    assert info.value.job_id == "fc-doesnotexist"


def test_bad_audio_fails_in_the_container_with_its_type(client: Client) -> None:
    with pytest.raises(wm.AudioError):
        client.transcribe(b"not audio" * 100)
    assert client.breaker.state.value == "closed"  # a user error never trips the breaker


def test_not_deployed_is_typed_with_a_fix(wire: Deployed, monkeypatch: pytest.MonkeyPatch) -> None:
    client = wire.sdk(monkeypatch, app_name="never-deployed")
    with pytest.raises(wm.BackendUnavailable) as info:
        client.transcribe(SAMPLE)
    assert "whisper-modal deploy" in str(info.value)


def test_transcribe_many_bounded_and_ordered(client: Client, wire: Deployed) -> None:
    since = time.monotonic()
    inputs = [SAMPLE, b"junk" * 200, SAMPLE, SAMPLE]
    results = client.transcribe_many(inputs, concurrency=2, return_exceptions=True, language="en")
    assert [type(r).__name__ for r in results] == [
        "Transcript",
        "AudioError",
        "Transcript",
        "Transcript",
    ]
    assert max_open_calls(wire, since=since) <= 2


async def test_async_twins(client: Client) -> None:
    t = await client.atranscribe(SAMPLE, language="en")
    job = await client.asubmit(SAMPLE, language="en")
    t2 = await job.aresult(timeout=120)
    assert t.text == t2.text and t.backend == "modal"
    many = await client.atranscribe_many([SAMPLE, SAMPLE], concurrency=2, language="en")
    assert all(isinstance(m, wm.Transcript) for m in many)


def test_hung_call_hits_the_sdk_deadline(wire: Deployed, monkeypatch: pytest.MonkeyPatch) -> None:
    client = wire.sdk(monkeypatch, call_timeout=0.5, max_attempts=1)
    client.transcribe(SAMPLE, language="en", timeout=120)  # warm: lookup done
    before = set(outcomes(wire))
    wire.emulator.servicer.faults.hold_inputs("Transcriber", 60)
    started = time.monotonic()
    with pytest.raises(wm.BackendUnavailable) as info:
        client.transcribe(SAMPLE, language="en")
    elapsed = time.monotonic() - started
    assert elapsed < 3.0, elapsed
    assert isinstance(info.value.__cause__, wm.TransientError)
    new = {k: dict(v) for k, v in outcomes(wire).items() if k not in before}
    assert list(new.values()) == [{"terminated": 1}], new  # cancelled on Modal, not left queued


def test_backend_never_leaks_modal_exceptions(
    echo_wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults = echo_wire.emulator.servicer.faults
    breaking = [
        lambda: faults.fail_rpc("ClassGet", Status.UNAVAILABLE, times=4),
        lambda: faults.fail_rpc("ClassGet", Status.UNAUTHENTICATED),
        lambda: faults.fail_rpc("ClassGet", Status.PERMISSION_DENIED),
        lambda: faults.fail_rpc("FunctionBindParams", Status.INTERNAL, times=4),
        lambda: faults.fail_inputs("Transcriber", status=GENERIC.GENERIC_STATUS_INTERNAL_FAILURE),
        lambda: faults.fail_inputs("Transcriber", ValueError("remote")),
    ]
    for fault in breaking:
        backend = echo_backend(echo_wire, monkeypatch)  # each lookup afresh
        fault()
        with pytest.raises(wm.WhisperModalError) as info:
            asyncio.run(backend.atranscribe(req(), timeout=30))
        assert not type(info.value).__module__.startswith("modal"), info.value
        faults.clear()


def test_long_audio_fans_out_over_containers(
    wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests import speech

    samples, reference = speech.make_clip(speech.SENTENCES[:12], gap_seconds=0.7)
    client = wire.sdk(monkeypatch, fanout_seconds=30, fanout_chunk_seconds=25)
    t = client.transcribe(samples, sample_rate=16000, language="en")
    assert t.backend == "modal" and t.job_id is not None
    servicer = wire.emulator.servicer
    call = on_loop(wire, lambda: servicer.function_calls[t.job_id or ""])
    assert servicer.functions[call.function_id].definition.function_name == "fanout"
    pieces = pieces_of(wire, t.job_id)
    assert len(pieces) >= 3 and len({p.tasks[-1] for p in pieces}) >= 2  # several containers
    assert t.duration == pytest.approx(len(samples) / 16000, abs=0.5)
    assert t.mode == "sequential"  # 25 s chunks are one stream each
    assert wer(reference, t.text) <= 0.12
    starts = [s.start for s in t.segments]
    assert starts == sorted(starts) and t.segments[-1].end > t.duration - 8
    assert [s.id for s in t.segments] == list(range(len(t.segments)))
    # the same audio under the fan-out threshold: one call of the GPU class
    whole = wire.sdk(monkeypatch, fanout_seconds=3600).transcribe(
        samples, sample_rate=16000, language="en"
    )
    assert whole.text and not pieces_of(wire, whole.job_id or "")
    call = on_loop(wire, lambda: servicer.function_calls[whole.job_id or ""])
    assert servicer.functions[call.function_id].definition.function_name == "Transcriber.*"


def test_packed_short_inputs_share_batches(client: Client, wire: Deployed) -> None:
    from tests import speech

    servicer = wire.emulator.servicer
    before = on_loop(wire, lambda: len(servicer.deliveries))
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

    def packed() -> list[int]:
        return [
            len(ids)
            for fn, ids in servicer.deliveries[before:]
            if servicer.functions[fn].definition.function_name.startswith("PackedTranscriber")
        ]

    sizes = on_loop(wire, packed)
    assert sum(sizes) == len(inputs) and max(sizes) >= 4  # several inputs per forward pass
    assert ("whisper-modal", "PackedTranscriber") in servicer.lookups


def test_backend_calls_share_one_lookup(wire: Deployed, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = ModalBackend(wire.settings(monkeypatch))
    lookups = class_lookups(wire)
    request = req(audio=SAMPLE.read_bytes(), language="en")
    first = asyncio.run(backend.atranscribe(request, timeout=120))
    second = asyncio.run(backend.atranscribe(request, timeout=120))  # another event loop
    assert isinstance(first, wm.Transcript)  # typed as soon as it leaves the wire
    assert wer(REFERENCE, first.text) <= 0.10 and first.text == second.text
    assert class_lookups(wire) == lookups + 1
    assert asyncio.run(backend.ahealth(timeout=60))["model_loaded"] is True
    assert class_lookups(wire) == lookups + 1  # health reuses the cached handle


def test_backend_job_lifecycle_and_reattach_by_id(
    echo_wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    servicer = echo_wire.emulator.servicer
    backend = echo_backend(echo_wire, monkeypatch)
    asyncio.run(backend.atranscribe(req("warm"), timeout=120))
    run, later = req("run", audio=script(name="run", sleep=4)), req("queued")
    running = asyncio.run(backend.asubmit(run)).job_id
    assert running.startswith("fc-")
    assert wait_for(lambda: asyncio.run(backend.astatus(running)) is JobStatus.RUNNING, 30)
    servicer.faults.hold_inputs("Transcriber", 120)
    queued = asyncio.run(backend.asubmit(later)).job_id
    assert asyncio.run(backend.astatus(queued)) is JobStatus.PENDING
    with pytest.raises(wm.JobTimeout) as info:
        asyncio.run(backend.aresult(queued, timeout=0))
    assert info.value.job_id == queued
    asyncio.run(backend.acancel(queued))
    assert asyncio.run(backend.astatus(queued)) is JobStatus.CANCELLED
    with pytest.raises(wm.JobCancelled):
        asyncio.run(backend.aresult(queued, timeout=1))
    # "another process": a new backend that shares nothing but the id string
    other = echo_backend(echo_wire, monkeypatch)
    done = asyncio.run(other.aresult(running, timeout=30))
    assert done.text == "ok run" and done.job_id == running
    assert asyncio.run(other.astatus(running)) is JobStatus.SUCCEEDED
    ran = executions(echo_wire, app=ECHO)
    assert (ran[run.client_job_id], ran[later.client_job_id]) == (
        1,
        0,
    )  # the cancelled job never ran, nothing twice
    with pytest.raises(wm.JobNotFound):
        asyncio.run(other.astatus("fc-unknown"))


def test_transcribe_many_keeps_order_bounds_concurrency_and_returns_errors(
    echo_wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = echo(echo_wire, monkeypatch)
    client.transcribe(b"warm", timeout=120)
    since = time.monotonic()
    # later items finish first; the last one fails the way undecodable audio does
    audio = [script(name=f"job{i}", sleep=0.1 * (10 - i)) for i in range(9)]
    audio.append(script(name="bad9", fail="AudioError", reason="not_audio"))
    out = client.transcribe_many(audio, concurrency=3, return_exceptions=True)
    assert [o.text for o in out[:-1]] == [f"ok job{i}" for i in range(9)]  # type: ignore[union-attr]
    assert isinstance(out[-1], wm.AudioError) and out[-1].reason == "not_audio"
    assert max_open_calls(echo_wire, app=ECHO, since=since) == 3
    with pytest.raises(wm.ConfigurationError):
        client.transcribe_many(audio, concurrency=0)
    client.close()


def test_transcribe_many_first_error_cancels_the_rest(
    echo_wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    servicer = echo_wire.emulator.servicer
    client = echo(echo_wire, monkeypatch)
    client.transcribe(b"warm", timeout=120)
    maps = on_loop(echo_wire, lambda: len(servicer.function_calls))
    since = time.monotonic()
    audio = [script(name="bad0", sleep=0.05, runs=0, fail="AudioError", reason="not_audio")]
    audio += [script(name=f"j{i}", sleep=30) for i in range(1, 20)]  # the rest would hang
    with pytest.raises(wm.AudioError):
        client.transcribe_many(audio, concurrency=2)
    assert time.monotonic() - since < 20  # not the 30 s the siblings would take
    # the bound held: only the first window of calls ever started, not 20
    assert on_loop(echo_wire, lambda: len(servicer.function_calls)) - maps <= 3
    # and the sibling that was running was cancelled on Modal, not left to run 30 s
    assert wait_for(
        lambda: not any(c.running for c in echo_wire.emulator.pool.containers.values()), 30
    )
    client.close()


@pytest.mark.parametrize(
    ("fault", "expected", "cause"),
    [
        ("connection reset", wm.TransientError, me.ServiceError),
        ("rate limited", wm.TransientError, me.ResourceExhaustedError),
        ("worker lost", wm.TransientError, me.InternalFailure),
        # the container's own timeout: retrying would time out again; the error says which
        # setting to raise
        ("container timeout", wm.RemoteExecutionError, me.FunctionTimeoutError),
        ("remote bug", wm.RemoteExecutionError, ValueError),
        ("bad token", wm.BackendUnavailable, me.AuthError),
        ("no app", wm.BackendUnavailable, me.NotFoundError),
        ("spawn reset", wm.TransientError, me.ServiceError),
        ("expired", wm.JobExpired, me.OutputExpiredError),
    ],
)
def test_backend_maps_every_modal_failure(
    fault: str,
    expected: type[Exception],
    cause: type[Exception],
    echo_wire: Deployed,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    faults = echo_wire.emulator.servicer.faults
    app = "never-deployed" if fault == "no app" else ECHO
    backend = echo_backend(echo_wire, monkeypatch, app_name=app)
    job = asyncio.run(backend.asubmit(req())).job_id if fault == "expired" else None
    if job is not None:
        asyncio.run(backend.aresult(job, timeout=60))
        echo_wire.emulator.run(echo_wire.emulator.servicer.expire(job))
    steps = {
        "connection reset": lambda: faults.fail_rpc("FunctionMap", Status.UNAVAILABLE, times=4),
        "rate limited": lambda: faults.fail_rpc("FunctionMap", Status.RESOURCE_EXHAUSTED),
        "worker lost": lambda: faults.fail_inputs(
            "Transcriber", status=GENERIC.GENERIC_STATUS_INTERNAL_FAILURE
        ),
        "container timeout": lambda: faults.fail_inputs(
            "Transcriber", status=GENERIC.GENERIC_STATUS_TIMEOUT
        ),
        "remote bug": lambda: faults.fail_inputs("Transcriber", ValueError("remote bug")),
        "bad token": lambda: faults.fail_rpc("ClassGet", Status.UNAUTHENTICATED),
        "spawn reset": lambda: faults.fail_rpc("FunctionMap", Status.UNAVAILABLE, times=4),
    }
    if fault in steps:
        steps[fault]()
    with pytest.raises(wm.WhisperModalError) as info:
        if fault == "spawn reset":
            asyncio.run(backend.asubmit(req()))
        elif job is not None:  # a backend that has not seen the result yet
            asyncio.run(ModalBackend(backend.settings).aresult(job, timeout=5))
        else:
            asyncio.run(backend.atranscribe(req(), timeout=30))
    assert isinstance(info.value, expected), info.value
    assert not type(info.value).__module__.startswith("modal")
    assert type(info.value.__cause__) is cause, repr(info.value.__cause__)
    if fault not in ("bad token", "no app"):  # the fault was one call only: the next recovers
        assert asyncio.run(backend.atranscribe(req("again"), timeout=30)).text == "ok again"


def test_hung_call_is_abandoned_at_the_deadline_and_retried(
    echo_wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults = echo_wire.emulator.servicer.faults
    client = echo(echo_wire, monkeypatch)
    client.transcribe(b"warm", timeout=120)  # lookup done, a container up
    for run in ("sync", "async"):
        faults.hold_inputs("Transcriber", 60)  # the first attempt hangs, the retry answers
        started = time.monotonic()
        if run == "sync":
            t = client.transcribe(script(name="x"), timeout=0.5)
        else:
            t = asyncio.run(client.atranscribe(script(name="x"), timeout=0.5))
        assert t.text == "ok x"
        assert time.monotonic() - started < 20  # not the 60 s hold
    stats = client.stats()
    assert (stats.retries, stats.retried_calls) == (2, 2)  # one retry in each call

    # nothing of the abandoned attempts is left running on the client's loop
    async def tasks() -> int:
        return len(asyncio.all_tasks()) - 1  # minus this one

    assert client._loop.submit(tasks()).result(5) == 0
    client.close()


def test_backend_gpu_override_uses_with_options(
    echo_wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    servicer = echo_wire.emulator.servicer

    def variants() -> set[tuple[str, int]]:
        """(GPU, timeout) that each parameter-bound variant of the echo class overrides."""
        app_id = servicer.apps[ECHO]
        return {
            (f.options.resources.gpu_config.gpu_type, f.options.timeout_secs)
            for f in servicer.functions.values()
            if f.app_id == app_id and f.base_function_id and f.options is not None
        }

    plain = echo_backend(echo_wire, monkeypatch)
    asyncio.run(plain.atranscribe(req(), timeout=60))
    assert variants() <= {("", 0)}  # no override: the deployed pool
    tuned = ModalBackend(plain.settings, gpu="H100", remote_timeout=600)
    assert asyncio.run(tuned.atranscribe(req("t"), timeout=60)).text == "ok t"
    assert on_loop(echo_wire, variants) - {("", 0)} == {("H100", 600)}


def test_long_audio_submit_goes_to_the_orchestrator_short_to_the_class(
    wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests import speech

    servicer = wire.emulator.servicer
    samples, reference = speech.make_clip(speech.SENTENCES[:12], gap_seconds=0.7)
    client = wire.sdk(monkeypatch, fanout_seconds=30, fanout_chunk_seconds=25)
    job = client.submit(samples, sample_rate=16000, language="en")
    t = job.wait(timeout=180, poll_interval=0.1, progress=False)
    done, total = job.progress() or (0, 0)
    assert done == total >= 3 and job.status() is wm.JobStatus.SUCCEEDED
    assert wer(reference, t.text) <= 0.12 and t.job_id == job.id
    assert len(pieces_of(wire, job.id)) == total  # one GPU input per piece, none retried
    short = client.submit(SAMPLE, language="en")
    assert short.result(timeout=120).text and short.progress() is None
    call = on_loop(wire, lambda: servicer.function_calls[short.id])
    assert servicer.functions[call.function_id].definition.function_name == "Transcriber.*"


def test_a_blocking_call_costs_modals_two_round_trips(
    echo_wire: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``transcribe`` sends what ``.remote`` sends (a call, then its output): the client id's
    claim is the container's, so the client writes nothing to the job book on the way."""
    client = echo(echo_wire, monkeypatch)
    client.transcribe(b"warm", timeout=120)  # the lookup is a one-off
    rpcs = echo_wire.emulator.servicer.client_calls
    mark = len(rpcs)
    assert client.transcribe(script(name="small")).text == "ok small"  # inline: under 8 KiB
    assert rpcs[mark:] == ["FunctionMap", "FunctionGetOutputs"]
