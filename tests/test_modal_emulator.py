"""Modal at the wire (issue 20): unmodified ``modal`` against an emulator of Modal's API.

``modal deploy -m whisper_modal.app`` and ``modal secret create`` run as CLI processes,
the SDK runs in a client process of its own, and every input runs in a real
``python -m modal._container_entrypoint`` process with its image's packages and
environment only (``tests/emulator``). Nothing in our package is patched or swapped.
"""

from __future__ import annotations

import itertools
import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from modal_proto import api_pb2

from tests import speech
from tests.emulator.deployed import (
    Deployed,
    busy_containers,
    modal_cli,
    on_loop,
    pieces_of,
    wait_for,
)
from tests.emulator.faults import InputFault
from tests.emulator.servicer import InputState
from tests.wer import wer

ROOT = Path(__file__).parents[1]
SAMPLE = ROOT / "examples" / "sample.flac"
HEARTBEAT_INTERVAL = 15.0  # modal.client.HEARTBEAT_INTERVAL: how often a container asks
SUCCESS = api_pb2.GenericResult.GENERIC_STATUS_SUCCESS
TERMINATED = api_pb2.GenericResult.GENERIC_STATUS_TERMINATED
#: a client's fan-out thresholds made small: ~55 s of speech becomes 3 pieces of <= 25 s
FANOUT_ENV = {"WHISPER_MODAL_FANOUT_SECONDS": "30", "WHISPER_MODAL_FANOUT_CHUNK_SECONDS": "25"}

pytestmark = [pytest.mark.slow, pytest.mark.emulator]


def test_modal_deploy_publishes_the_app(deployed: Deployed) -> None:
    servicer = deployed.emulator.servicer
    app_id = servicer.apps["whisper-modal"]
    tags = set(servicer.app_objects[app_id])
    assert {"Transcriber", "Transcriber.*", "PackedTranscriber", "PackedTranscriber.*"} <= tags
    assert {"fanout", "prefetch", "web"} <= tags
    assert not servicer.unimplemented


def test_a_short_transcription_runs_in_a_real_container(deployed: Deployed) -> None:
    servicer = deployed.emulator.servicer
    taken = on_loop(deployed, lambda: len(servicer.deliveries))
    out = deployed.client(
        f"""
        import json, whisper_modal as wm
        t = wm.transcribe({str(SAMPLE)!r}, backend="modal", model="tiny.en")
        print(json.dumps({{"text": t.text, "backend": t.backend, "device": t.device}}))
        """
    )
    assert "weekly planning meeting" in str(out["text"]).lower()
    assert out["backend"] == "modal" and out["device"] == "cpu"
    assert {"FunctionBindParams", "FunctionMap", "FunctionGetInputs", "FunctionPutOutputs"} <= set(
        servicer.calls
    )
    # a container of the GPU class took the input (a warm one, when earlier tests started it)
    names = on_loop(
        deployed,
        lambda: [function_name(deployed, fn) for fn, _ in servicer.deliveries[taken:]],
    )
    assert "Transcriber.*" in names, "no container ran the input"
    assert not servicer.unimplemented


@pytest.fixture(scope="module")
def long_wav(deployed: Deployed) -> tuple[Path, str, float]:
    """About 55 s of speech as a WAV file the client processes can read."""
    samples, reference = speech.make_clip(speech.SENTENCES[:12], gap_seconds=0.7)
    path = deployed.emulator.root / "long.wav"
    path.write_bytes(speech.wav_bytes(samples))
    return path, reference, len(samples) / speech.SAMPLE_RATE


@pytest.fixture(scope="module")
def longer_wav(deployed: Deployed) -> tuple[Path, str, float]:
    """About 110 s of speech: 5 pieces, more than the 3 containers a function may have."""
    samples, reference = speech.make_clip(speech.SENTENCES[:24], gap_seconds=0.7)
    path = deployed.emulator.root / "longer.wav"
    path.write_bytes(speech.wav_bytes(samples))
    return path, reference, len(samples) / speech.SAMPLE_RATE


def test_a_long_submit_fans_out_over_containers_and_reattaches_from_another_process(
    deployed: Deployed, long_wav: tuple[Path, str, float]
) -> None:
    path, reference, seconds = long_wav
    submitted = deployed.client(
        f"""
        import json, whisper_modal as wm
        job = wm.submit({str(path)!r}, backend="modal", model="tiny.en", language="en")
        print(json.dumps({{"id": job.id, "status": job.status().value}}))
        """,
        env=FANOUT_ENV,
    )
    job_id = submitted["id"]
    assert job_id.startswith("fc-") and submitted["status"] in {"pending", "running"}
    # a second process that knows only the id (and no fan-out settings)
    seen = deployed.client(
        f"""
        import json, whisper_modal as wm
        job = wm.Job.from_id({job_id!r})
        t = job.result(timeout=300)
        print(json.dumps({{"text": t.text, "duration": t.duration,
                           "status": job.status().value, "progress": job.progress()}}))
        """,
        timeout=360,
    )
    assert seen["status"] == "succeeded"
    assert wer(reference, seen["text"]) <= 0.12, seen["text"]
    assert seen["duration"] == pytest.approx(seconds, abs=0.1)
    done, total = seen["progress"]
    assert done == total >= 3
    pieces = pieces_of(deployed, job_id)
    assert len(pieces) == total  # each piece once: no retry, no duplicate
    assert all(p.output is not None and p.output.result.status == SUCCESS for p in pieces)
    # spawned side by side: every piece was queued before the first one finished (how many
    # containers took them depends on how soon the emulator's cold ones start: not asserted)
    assert max(p.queued_at for p in pieces) < min(p.finished_at for p in pieces)
    assert not deployed.emulator.servicer.unimplemented


def test_cancelling_a_fanned_out_job_stops_its_pieces(
    wire: Deployed, longer_wav: tuple[Path, str, float]
) -> None:
    deployed, path = wire, longer_wav[0]
    # pieces after the third wait in the queue (held far past the test), so the cancel
    # always lands on a job with running and queued pieces, however fast the pieces run
    taken = itertools.count(1)
    deployed.emulator.servicer.faults.input_rule(
        "Transcriber", lambda _: InputFault(hold_seconds=300) if next(taken) > 3 else None
    )
    out = deployed.client(
        f"""
        import json, time, whisper_modal as wm
        job = wm.submit({str(path)!r}, backend="modal", model="tiny.en", language="en")
        deadline = time.monotonic() + 120
        while (job.progress() is None) and time.monotonic() < deadline:
            time.sleep(0.2)  # until the orchestrator has split the audio and spawned pieces
        progress = job.progress()
        job.cancel()
        print(json.dumps({{"id": job.id, "at_cancel": progress}}))
        """,
        env=FANOUT_ENV,
    )
    job_id = out["id"]
    done, total = out["at_cancel"]
    assert done < total >= 5
    servicer = deployed.emulator.servicer
    cancelled_at = servicer.function_calls[job_id].cancelled_at
    assert cancelled_at > 0

    def settled() -> bool:
        pieces = pieces_of(deployed, job_id)
        return bool(pieces) and all(p.output is not None for p in pieces)

    assert wait_for(settled, 60), [p.status for p in pieces_of(deployed, job_id)]
    pieces = pieces_of(deployed, job_id)
    # pieces still queued never start; a running one stops by Modal's next heartbeat
    # (every 15 s) or ends on its own before that: no piece runs on past it
    late = [p for p in pieces if p.finished_at > cancelled_at + HEARTBEAT_INTERVAL + 3]
    assert not late, f"{len(late)} piece(s) ran on past a heartbeat after the cancel"
    queued = [p for p in pieces if p.held_from > 0]
    assert len(queued) == len(pieces) - 3 >= 2
    assert not any(p.tasks for p in queued), "a piece queued at the cancel reached a container"
    # (with warm containers every running piece may end on its own inside that window, so
    # no piece is required to read TERMINATED: the bound above is what the cancel promises)
    # the job reads cancelled from any process, and no container is left working on it
    seen = deployed.client(
        f"""
        import json, whisper_modal as wm
        print(json.dumps({{"status": wm.Job.from_id({job_id!r}).status().value}}))
        """
    )
    assert seen["status"] == "cancelled"
    assert wait_for(lambda: not busy_containers(deployed), 30)


def submit_long(deployed: Deployed, path: Path) -> str:
    """Submit ``path`` as a fan-out job from a client process; its job id."""
    out = deployed.client(
        f"""
        import json, whisper_modal as wm
        job = wm.submit({str(path)!r}, backend="modal", model="tiny.en", language="en")
        print(json.dumps({{"id": job.id}}))
        """,
        env=FANOUT_ENV,
    )
    return str(out["id"])


def result_of(deployed: Deployed, job_id: str) -> dict[str, Any]:
    """Wait for job ``job_id`` in a fresh process; its text, status and progress."""
    return deployed.client(
        f"""
        import json, whisper_modal as wm
        job = wm.Job.from_id({job_id!r})
        t = job.result(timeout=300)
        print(json.dumps({{"text": t.text, "status": job.status().value,
                           "progress": job.progress()}}))
        """,
        timeout=360,
    )


def test_a_gpu_container_killed_mid_piece_costs_one_retry_of_that_piece(
    deployed: Deployed, long_wav: tuple[Path, str, float]
) -> None:
    path, reference, _ = long_wav
    job_id = submit_long(deployed, path)

    def a_running_piece() -> str:
        running = [p for p in pieces_of(deployed, job_id) if p.status == "running"]
        return running[0].task_id if running else ""

    assert wait_for(lambda: bool(a_running_piece()), 120)
    victim = a_running_piece()
    deployed.emulator.run(deployed.emulator.pool.kill(victim))  # SIGKILL, as an OOM kill
    seen = result_of(deployed, job_id)
    assert seen["status"] == "succeeded"
    assert wer(reference, seen["text"]) <= 0.12, seen["text"]
    done, total = seen["progress"]
    assert done == total >= 3
    pieces = pieces_of(deployed, job_id)
    statuses = sorted(p.output.result.status for p in pieces if p.output is not None)
    assert len(pieces) == total + 1  # the lost piece ran again as a new input, once
    assert statuses.count(SUCCESS) == total
    assert statuses.count(api_pb2.GenericResult.GENERIC_STATUS_INTERNAL_FAILURE) == 1
    assert all(p.tasks[0] != victim or p.output.result.status != SUCCESS for p in pieces)
    assert wait_for(lambda: not busy_containers(deployed), 30)  # nothing left running


def piece_result(piece: InputState) -> dict[str, Any]:
    """What a piece's input returned (a transcript's dict, or ``duplicate_of``)."""
    assert piece.output is not None and piece.output.result.status == SUCCESS
    assert piece.output.data_format == api_pb2.DATA_FORMAT_PICKLE
    result: dict[str, Any] = pickle.loads(piece.output.result.data)
    return result


def test_an_orchestrator_killed_mid_job_is_run_again_and_reuses_the_pieces_that_ran(
    deployed: Deployed, longer_wav: tuple[Path, str, float]
) -> None:
    path, reference, _ = longer_wav
    job_id = submit_long(deployed, path)
    servicer = deployed.emulator.servicer
    (orchestrator,) = on_loop(deployed, lambda: list(servicer.function_calls[job_id].inputs))

    def some_done_some_not() -> bool:
        outputs = [p.output for p in pieces_of(deployed, job_id)]
        return any(outputs) and not all(outputs)

    assert wait_for(some_done_some_not, 120)
    task = on_loop(deployed, lambda: orchestrator.task_id)
    deployed.emulator.run(deployed.emulator.pool.kill(task))  # its container dies mid-job
    seen = result_of(deployed, job_id)
    assert seen["status"] == "succeeded"
    assert wer(reference, seen["text"]) <= 0.12, seen["text"]
    done, total = seen["progress"]
    assert done == total >= 5
    assert on_loop(deployed, lambda: orchestrator.tasks[:1] == [task] and orchestrator.retry_count)
    assert orchestrator.input_id in servicer.server_retries  # Modal ran the job's input again
    results = [piece_result(p) for p in pieces_of(deployed, job_id)]
    transcribed = [r for r in results if "duplicate_of" not in r]
    assert len(transcribed) == total  # every piece transcribed once, none twice
    assert any("duplicate_of" in r for r in results)  # the re-run found the earlier pieces
    assert wait_for(lambda: not busy_containers(deployed), 30)


def function_name(deployed: Deployed, function_id: str) -> str:
    """The name a deployed (or parameter-bound) function was created with."""
    return deployed.emulator.servicer.functions[function_id].definition.function_name


def test_packed_transcriptions_share_batched_calls_and_keep_per_item_errors(
    deployed: Deployed,
) -> None:
    clips = []
    for n, sentences in enumerate(
        (speech.SENTENCES[:2], speech.SENTENCES[2:4], speech.SENTENCES[4:6])
    ):
        samples, reference = speech.make_clip(sentences, gap_seconds=0.5)
        path = deployed.emulator.root / f"packed-{n}.wav"
        path.write_bytes(speech.wav_bytes(samples))
        clips.append((path, reference))
    broken = deployed.emulator.root / "packed-broken.wav"
    broken.write_bytes(b"RIFF" + bytes(2000))  # a WAV header's start, then nothing decodable
    servicer = deployed.emulator.servicer
    before = on_loop(deployed, lambda: len(servicer.deliveries))
    out = deployed.client(
        f"""
        import json, whisper_modal as wm
        paths = {[str(p) for p, _ in clips] + [str(broken)]!r}
        results = wm.transcribe_many(paths, backend="modal", pack=True, model="tiny.en",
                                     return_exceptions=True,
                                     language="en")
        print(json.dumps([
            {{"text": r.text, "backend": r.backend}} if isinstance(r, wm.Transcript)
            else {{"error": type(r).__name__, "message": str(r)}}
            for r in results
        ]))
        """
    )
    assert len(out) == 4
    for (_, reference), result in zip(clips, out[:3], strict=True):
        assert result.get("backend") == "modal", result
        assert wer(reference, result["text"]) <= 0.2, result
    assert out[3]["error"] == "AudioError", out[3]  # one bad item fails alone, typed
    deliveries = on_loop(deployed, lambda: servicer.deliveries[before:])
    packed_inputs = [
        ids for fn, ids in deliveries if function_name(deployed, fn).startswith("PackedTranscriber")
    ]
    assert sum(len(ids) for ids in packed_inputs) == 4  # every item went to the batched class
    # the class is cold when the four arrive (only this test uses it): one take holds several
    assert max(len(ids) for ids in packed_inputs) >= 2
    assert not servicer.unimplemented


def test_whisper_modal_jobs_lists_what_the_job_book_recorded(deployed: Deployed) -> None:
    out = deployed.client(
        f"""
        import json, whisper_modal as wm
        job = wm.submit({str(SAMPLE)!r}, backend="modal", model="tiny.en")
        job.result(timeout=180)
        print(json.dumps({{"id": job.id}}))
        """
    )
    job_id = out["id"]
    listing = subprocess.run(
        [sys.executable, "-m", "whisper_modal", "jobs", "--json", "--limit", "50"],
        env=deployed.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listing.returncode == 0, listing.stderr
    records = {r["job_id"]: r for r in json.loads(listing.stdout)}
    assert records[job_id]["status"] == "succeeded", records[job_id]
    table = subprocess.run(
        [sys.executable, "-m", "whisper_modal", "jobs"],
        env=deployed.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if line.startswith(job_id))
    assert "succeeded" in row.split()


def test_modal_run_smoke_entrypoint_checks_health_then_transcribes(deployed: Deployed) -> None:
    done = modal_cli(
        deployed.env, "run", "-m", "whisper_modal.app", "--path", str(SAMPLE), "--model", "tiny.en"
    )
    assert '"model_loaded": true' in done.stdout, done.stdout[-3000:]
    assert "weekly planning meeting" in done.stdout.lower(), done.stdout[-3000:]


def test_a_long_blocking_transcribe_waits_on_the_orchestrator(
    deployed: Deployed, long_wav: tuple[Path, str, float]
) -> None:
    """One fan-out path: a blocking call on long audio is the app's orchestrator's job too."""
    path, reference, seconds = long_wav
    servicer = deployed.emulator.servicer
    before = on_loop(deployed, lambda: set(servicer.function_calls))
    out = deployed.client(
        f"""
        import json, whisper_modal as wm
        t = wm.transcribe({str(path)!r}, backend="modal", model="tiny.en", language="en")
        print(json.dumps({{"text": t.text, "duration": t.duration}}))
        """,
        env=FANOUT_ENV,
    )
    assert wer(reference, out["text"]) <= 0.12, out["text"]
    assert out["duration"] == pytest.approx(seconds, abs=0.1)

    def started() -> list[str]:
        return [
            function_name(deployed, servicer.function_calls[c].function_id)
            for c in set(servicer.function_calls) - before
        ]

    names = on_loop(deployed, started)
    assert names.count("fanout") == 1 and names.count("Transcriber.*") >= 3, names


def test_a_spawn_whose_acknowledgement_is_lost_runs_the_audio_once(deployed: Deployed) -> None:
    """Modal accepts the input but its answer is lost, on every attempt of modal's own
    retries (one idempotency key, so one call): the SDK's retry spawns a second call with
    the same client id, and the job book's claim lets only one of the two transcribe."""
    servicer = deployed.emulator.servicer
    before = set(on_loop(deployed, lambda: list(servicer.function_calls)))
    # the session's emulator keeps every test's lost answers: count this test's only
    lost_before = on_loop(deployed, lambda: len(servicer.dropped_acks))
    attempts = 4  # modal's client: the first try and DEFAULT_MAX_RETRIES (3) more
    deployed.emulator.run(servicer.drop_acks("Transcriber.*", attempts))
    out = deployed.client(
        f"""
        import json, whisper_modal as wm
        t = wm.transcribe({str(SAMPLE)!r}, backend="modal", model="tiny.en", language="en")
        print(json.dumps({{"text": t.text}}))
        """
    )
    assert "weekly planning meeting" in str(out["text"]).lower()
    lost = on_loop(deployed, lambda: servicer.dropped_acks[lost_before:])
    assert len(lost) == attempts and len(set(lost)) == 1  # modal's retries: one call

    def new_calls() -> list[Any]:
        return [c for i, c in servicer.function_calls.items() if i not in before]

    calls = on_loop(deployed, new_calls)
    assert len(calls) == 2 and lost[0] in {c.function_call_id for c in calls}
    assert wait_for(lambda: all(c.finished for c in on_loop(deployed, new_calls)), 60)
    inputs = [i for c in on_loop(deployed, new_calls) for i in c.inputs]
    assert len(inputs) == 2
    ran = [
        i
        for i in inputs
        if i.output is not None and i.output.result.status == SUCCESS and "text" in piece_result(i)
    ]
    assert len(ran) == 1  # the other was cancelled by the SDK or answered duplicate_of
    assert not servicer.unimplemented
