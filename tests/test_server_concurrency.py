"""Real concurrency on one model (#24 item 4): turns, cancellation, time limits, a bounded pool.

The unit tests drive ``engine.turns`` with plain threads; the rest run real speech through
tiny.en behind uvicorn on 127.0.0.1, with the official ``openai`` SDK and raw sockets.
Each failed before its fix: one lock held for a whole request made a short request wait
for a long one, and nothing stopped a decode once it had started (``DELETE``, a caller
who hangs up, a time limit).
"""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.request import Request, urlopen

import numpy as np
import openai
import pytest

import whisper_modal as wm
from tests import speech
from tests.api_server import ApiServer, multipart
from tests.models_cache import tiny_en_cache
from tests.wer import wer
from whisper_modal.engine.models import ModelStore, load_model
from whisper_modal.engine.turns import OVERTAKE, ModelTurns, Work, handover_point, running
from whisper_modal.server import create_app

KEY = "sk-concurrency-0123456789"
SHORT_TEXT = speech.SENTENCES[2]


@functools.cache
def short_clip() -> bytes:
    samples, _ = speech.make_clip([SHORT_TEXT], gap_seconds=0.2)
    return speech.wav_bytes(samples)


@functools.cache
def long_clip() -> bytes:
    """About 2.5 minutes of speech: batched streams, several seconds of decoding."""
    minute, _ = speech.make_clip(speech.SENTENCES[:12], gap_seconds=0.6)
    samples = np.tile(minute, 3)[: 150 * speech.SAMPLE_RATE]
    return speech.wav_bytes(samples)


# --- engine.turns with plain threads ------------------------------------------------------


def _holder(turns: ModelTurns, seconds: float, steps: int, log: list[str], name: str,
            started: threading.Event | None = None, work: Work | None = None) -> None:  # fmt: skip
    with running(work or Work()), turns.hold(seconds):
        if started is not None:
            started.set()
        for _ in range(steps):
            handover_point()
            log.append(name)
            time.sleep(0.01)


def test_a_short_request_takes_the_model_at_the_next_handover_point() -> None:
    turns, log, started = ModelTurns(), [], threading.Event()
    long = threading.Thread(target=_holder, args=(turns, 600.0, 60, log, "long", started))
    long.start()
    started.wait(5)
    short = threading.Thread(target=_holder, args=(turns, 10.0, 3, log, "short"))
    short.start()
    short.join(10)
    long.join(10)
    first_short = log.index("short")
    assert log[first_short : first_short + 3] == ["short"] * 3  # it ran as one block
    assert first_short < 20  # the long one gave way at its next handover point
    assert log.count("long") == 60 and turns.handovers == 1


def test_a_request_that_arrived_much_later_does_not_overtake() -> None:
    turns, log, started = ModelTurns(), [], threading.Event()
    early = Work()
    early.arrived -= 2 * OVERTAKE * 10.0 + 1  # arrived long enough ago for a 10 s clip
    first = threading.Thread(target=_holder, args=(turns, 10.0, 20, log, "first", started, early))
    first.start()
    started.wait(5)
    second = threading.Thread(target=_holder, args=(turns, 10.0, 2, log, "second"))
    second.start()
    first.join(10)
    second.join(10)
    assert log == ["first"] * 20 + ["second"] * 2 and turns.handovers == 0


def test_cancelled_or_late_work_stops_at_the_next_handover_point() -> None:
    turns = ModelTurns()
    cancelled = Work(job_id="j-1")
    log: list[str] = []
    cancelled.cancel()
    with pytest.raises(wm.JobCancelled) as stopped:
        _holder(turns, 1.0, 5, log, "x", work=cancelled)
    assert stopped.value.job_id == "j-1" and log == []
    with pytest.raises(wm.JobTimeout):
        _holder(turns, 1.0, 5, log, "x", work=Work.within(-1.0))
    assert turns.stopped == 2 and not turns.busy
    _holder(turns, 1.0, 2, log, "after")  # the model is free again
    assert log == ["after", "after"]


def test_work_cancelled_while_in_line_leaves_the_line() -> None:
    turns, log, started = ModelTurns(), [], threading.Event()
    holder = threading.Thread(target=_holder, args=(turns, 600.0, 30, log, "long", started))
    holder.start()
    started.wait(5)
    # as long as the holder and later than it: it waits in line rather than overtaking
    queued = Work()
    queued.arrived += 1000
    errors: list[BaseException] = []

    def wait_in_line() -> None:
        try:
            _holder(turns, 600.0, 1, log, "queued", work=queued)
        except wm.JobCancelled as exc:
            errors.append(exc)

    line = threading.Thread(target=wait_in_line)
    line.start()
    time.sleep(0.05)
    queued.cancel()
    line.join(5)
    holder.join(10)
    assert not line.is_alive() and len(errors) == 1 and "queued" not in log


# --- through the HTTP API, real speech ----------------------------------------------------


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> wm.Client:
    return wm.Client(
        backend="local",
        model="tiny.en",
        cache_dir=tiny_en_cache(),
        device="cpu",
        api_keys=KEY,
        jobs_db=tmp_path_factory.mktemp("jobs") / "jobs.sqlite3",
    )


@pytest.fixture(scope="module")
def server(client: wm.Client) -> Iterator[ApiServer]:
    with ApiServer(create_app(client)) as up:
        yield up


@pytest.fixture(scope="module")
def turns(client: wm.Client) -> ModelTurns:
    """The turns of the model the server decodes with (the process caches one model)."""
    client.transcribe(short_clip())  # loaded and warm
    return load_model("tiny.en", store=ModelStore(tiny_en_cache()), device="cpu").turns


def _sdk(server: ApiServer, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=300,
                         **kwargs)  # fmt: skip


def _until(condition: Any, timeout: float = 120.0) -> float:
    """Seconds until ``condition()`` holds (fails past ``timeout``)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not met in time"
        time.sleep(0.02)
    return time.monotonic() - started


def _transcribe_at(server: ApiServer, audio: bytes, done: dict[str, float], name: str) -> None:
    text = _sdk(server).audio.transcriptions.create(
        model="whisper-1", file=("a.wav", audio), response_format="text"
    )
    done[name] = time.monotonic()
    done[name + "_text"] = text  # type: ignore[assignment]


def test_a_short_request_overtakes_a_long_one_on_the_same_model(
    server: ApiServer, turns: ModelTurns
) -> None:
    done: dict[str, float] = {}
    long = threading.Thread(target=_transcribe_at, args=(server, long_clip(), done, "long"))
    long.start()
    _until(lambda: turns.busy)  # the long request holds the model
    started = time.monotonic()
    _transcribe_at(server, short_clip(), done, "short")
    long.join(300)
    print(f"\nshort answered {done['short'] - started:.2f} s after it was sent; "
          f"the long one {done['long'] - done['short']:.2f} s later")  # fmt: skip
    assert done["short"] < done["long"]  # FIFO: the short one waited for the long one
    assert wer(SHORT_TEXT, str(done["short_text"])) < 0.2
    assert len(str(done["long_text"]).split()) > 200  # the long one was not cut short


def _job_backend_id(client: wm.Client, job_id: str) -> str:
    with sqlite3.connect(client.settings.jobs_db) as db:
        (backend_id,) = db.execute("SELECT backend_id FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return str(backend_id)


def _http(server: ApiServer, method: str, path: str, body: bytes | None = None,
          content_type: str | None = None) -> dict[str, Any]:  # fmt: skip
    request = Request(f"{server.url}{path}", data=body, method=method)
    request.add_header("Authorization", f"Bearer {KEY}")
    if content_type:
        request.add_header("Content-Type", content_type)
    with urlopen(request, timeout=60) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def test_delete_stops_a_running_job_between_windows(
    server: ApiServer, client: wm.Client, turns: ModelTurns
) -> None:
    stopped = turns.stopped
    body, content_type = multipart({"model": "whisper-1"}, long_clip())
    job_id = _http(server, "POST", "/v1/jobs", body, content_type)["id"]
    _until(lambda: turns.busy)
    assert _http(server, "DELETE", f"/v1/jobs/{job_id}")["status"] == "cancelled"
    seconds = _until(lambda: turns.stopped > stopped and not turns.busy)
    print(f"\nthe model was free {seconds:.2f} s after DELETE")
    # the engine raised JobCancelled: the local job did not run on to a transcript
    local = wm.Job.from_id(_job_backend_id(client, job_id), client=client)
    assert local.status() is wm.JobStatus.CANCELLED
    with pytest.raises(wm.JobCancelled):
        local.result(timeout=30)
    assert _http(server, "GET", f"/v1/jobs/{job_id}")["status"] == "cancelled"
    text = _sdk(server).audio.transcriptions.create(
        model="whisper-1", file=("a.wav", short_clip()), response_format="text"
    )
    assert wer(SHORT_TEXT, text) < 0.2  # the next request runs normally


def test_a_caller_who_hangs_up_stops_the_decode(server: ApiServer, turns: ModelTurns) -> None:
    stopped = turns.stopped
    body, content_type = multipart({"model": "whisper-1"}, long_clip())
    head = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {server.url[7:]}\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + body)
        _until(lambda: turns.busy)
    seconds = _until(lambda: turns.stopped > stopped and not turns.busy)
    print(f"\nthe model was free {seconds:.2f} s after the caller hung up")


def _client_like(client: wm.Client, **settings: Any) -> wm.Client:
    """The module client's settings (and so its cached model) with ``settings`` changed."""
    return wm.Client(
        backend="local", model="tiny.en", cache_dir=tiny_en_cache(), device="cpu",
        api_keys=KEY, jobs_db=client.settings.jobs_db, **settings,
    )  # fmt: skip


def test_a_request_past_the_time_limit_is_a_504_and_frees_the_model(
    client: wm.Client, turns: ModelTurns
) -> None:
    limited = _client_like(client, request_timeout=1.5)
    stopped = turns.stopped
    with ApiServer(create_app(limited)) as up:
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as refused:
            _sdk(up).audio.transcriptions.create(model="whisper-1", file=("a.wav", long_clip()))
        elapsed = time.monotonic() - started
        assert refused.value.status_code == 504
        error = refused.value.body
        assert isinstance(error, dict) and error["code"] == "request_timeout"
        assert "POST /v1/jobs" in error["message"]
        _until(lambda: turns.stopped > stopped and not turns.busy, timeout=30)
        text = _sdk(up).audio.transcriptions.create(
            model="whisper-1", file=("a.wav", short_clip()), response_format="text"
        )
    assert elapsed < 60 and wer(SHORT_TEXT, text) < 0.2


def test_more_requests_than_the_pool_admits_get_429_with_retry_after(
    client: wm.Client, turns: ModelTurns
) -> None:
    small = _client_like(client, max_concurrent_requests=1)
    with ApiServer(create_app(small)) as up:
        done: dict[str, float] = {}
        long = threading.Thread(target=_transcribe_at, args=(up, long_clip(), done, "long"))
        long.start()
        _until(lambda: turns.busy)
        with pytest.raises(openai.RateLimitError) as refused:
            _sdk(up).audio.transcriptions.create(model="whisper-1", file=("a.wav", short_clip()))
        long.join(300)
    assert refused.value.response.headers["retry-after"] == "2"
    body = refused.value.body
    assert isinstance(body, dict) and body["code"] == "server_busy"
    assert "long" in done  # the admitted request was not disturbed


def test_local_work_settings_are_validated() -> None:
    for bad in ({"local_workers": 0}, {"request_timeout": 0}, {"max_concurrent_requests": -1}):
        with pytest.raises(wm.ConfigurationError):
            wm.Settings.resolve(env={}, **bad)
    assert wm.Settings.resolve(env={"WHISPER_MODAL_LOCAL_WORKERS": "3"}).local_workers == 3


async def test_concurrent_short_calls_share_batched_passes(client: wm.Client) -> None:
    clips = [speech.wav_bytes(speech.make_clip([s], gap_seconds=0.2)[0])
             for s in speech.SENTENCES[3:9]]  # fmt: skip
    alone = [await client.atranscribe(clip) for clip in clips]
    results = await asyncio.gather(*(client.atranscribe(clip) for clip in clips))
    # the text of each alone (one stream per input: the same decode, batched; a batch
    # may round differently from a single row, so not asserted to the letter)
    for a, r in zip(alone, results, strict=True):
        assert wer(a.text, r.text) <= 0.1, (a.text, r.text)
    assert wer(" ".join(speech.SENTENCES[3:9]), " ".join(r.text for r in results)) < 0.15
    # the first ran alone (nothing else was in flight); the rest shared one pass, each
    # as a stream of it ("batched"; alone, a clip this short decodes "sequential")
    modes = [r.mode for r in results]
    assert modes[0] == "sequential" and modes[1:].count("batched") == len(clips) - 1, modes
