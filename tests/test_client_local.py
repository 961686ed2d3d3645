"""The public API on the local backend: real speech through the real tiny.en engine."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import whisper_modal as wm
from tests.models_cache import tiny_en_cache
from tests.wer import wer
from whisper_modal.cli import main as cli_main

EXAMPLES = Path(__file__).parents[1] / "examples"
SAMPLE = EXAMPLES / "sample.flac"
REFERENCE = (EXAMPLES / "sample.txt").read_text()
# espeak-ng speech through tiny.en measured 1-3% WER here (one misheard word in 50);
# 10% leaves room for other CPUs' float rounding while still failing on a broken engine.
MAX_WER = 0.10

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client() -> wm.Client:
    return wm.Client(backend="local", model="tiny.en", cache_dir=tiny_en_cache(), device="cpu")


def test_transcribe_sample(client: wm.Client) -> None:
    t = client.transcribe(SAMPLE, language="en", word_timestamps=True)
    assert wer(REFERENCE, t.text) <= MAX_WER, t.text
    assert t.backend == "local" and t.device == "cpu" and t.model == "tiny.en"
    assert t.language == "en" and t.fallback_reason is None
    assert t.mode == "sequential"  # 20 s is one stream: auto runs openai-whisper's loop
    assert 20.0 < t.duration < 21.0
    assert t.timings.inference > 0 and t.timings.decode > 0
    previous_end = 0.0
    for segment in t.segments:
        assert segment.start >= previous_end - 0.01 and segment.end > segment.start
        previous_end = segment.end
        for word in segment.words:
            # word times lie inside their segment and never run backwards
            assert segment.start - 0.01 <= word.start <= word.end <= segment.end + 0.01
    starts = [w.start for w in t.words]
    assert starts == sorted(starts) and len(t.words) > 40
    assert all(0.0 <= s.start <= s.end <= t.duration for s in t.segments)


def test_no_time_lies_past_the_audio() -> None:
    """Whisper's 20 ms timestamp tokens can end a clip's last segment past its end (seen:
    30.884 s on a 29.4 s clip); every segment and word time is clamped to the duration."""
    from whisper_modal.engine.transcriber import _within
    from whisper_modal.results import Segment, Word

    words = (Word(28.9, 29.744, " fine"), Word(29.744, 30.884, " thanks"))
    late = Segment(id=3, start=28.9, end=30.884, text="fine thanks", words=words)
    fixed = _within(late, 29.4)
    assert (fixed.start, fixed.end) == (28.9, 29.4)
    assert [(w.start, w.end) for w in fixed.words] == [(28.9, 29.4), (29.4, 29.4)]
    assert fixed.text == late.text and _within(fixed, 29.4) is fixed  # in range: unchanged


def test_every_input_kind_gives_the_same_text(client: wm.Client) -> None:
    data = SAMPLE.read_bytes()
    samples, rate = sf.read(SAMPLE, dtype="float32")
    stereo_44k = np.stack([samples, samples], axis=1)
    import soxr

    stereo_44k = soxr.resample(stereo_44k, rate, 44100)
    reference = client.transcribe(data, language="en").text
    for audio, kwargs in [
        (str(SAMPLE), {}),
        (bytearray(data), {}),
        (memoryview(data), {}),
        (io.BytesIO(data), {}),
        (stereo_44k, {"sample_rate": 44100}),
    ]:
        text = client.transcribe(audio, language="en", **kwargs).text
        assert wer(reference, text) <= 0.05, (type(audio), text)


def test_bad_input_is_typed(client: wm.Client, tmp_path: Path) -> None:
    with pytest.raises(wm.AudioError) as info:
        client.transcribe(tmp_path / "missing.wav")
    assert info.value.reason == "not_found"
    with pytest.raises(wm.AudioError):
        client.transcribe(b"this is not audio at all" * 100)
    with pytest.raises(wm.ConfigurationError):
        client.transcribe(np.zeros(16000, dtype=np.float32))  # no sample_rate
    with pytest.raises(wm.ConfigurationError):
        client.transcribe(SAMPLE, model="tiny.en", language="fr")
    with pytest.raises(wm.ConfigurationError):
        client.transcribe(SAMPLE, backend="cloud")
    with pytest.raises(wm.ConfigurationError, match="unknown argument"):
        client.transcribe(SAMPLE, lang="en")  # type: ignore[call-arg]


def test_submit_status_result_and_reattach(client: wm.Client) -> None:
    job = client.submit(SAMPLE, language="en")
    assert job.id.startswith("local-") and job.backend == "local"
    t = job.wait(timeout=120, poll_interval=0.2, progress=False)
    assert job.status() is wm.JobStatus.SUCCEEDED
    assert t.job_id == job.id
    other = wm.Client(backend="local", model="tiny.en", cache_dir=tiny_en_cache(), device="cpu")
    again = wm.Job.from_id(job.id, client=other).result(timeout=5)
    assert again.text == t.text


def test_a_request_built_elsewhere_is_submitted_as_built(client: wm.Client) -> None:
    """``submit_request`` keeps the caller's request: its client id and delivery fields
    (the HTTP server names jobs by it); ``Client.job`` re-attaches in the same way."""
    import attrs

    built = client.build_request(SAMPLE, language="en")
    assert isinstance(built, wm.Request) and built.options.language == "en"
    assert built.audio == Path(SAMPLE).read_bytes()
    request = attrs.evolve(built, client_job_id="caller-named-1")
    job = client.submit_request(request)
    assert job.id.startswith("local-")
    t = job.wait(timeout=120, poll_interval=0.2, progress=False)
    assert "weekly planning meeting" in t.text.lower()
    assert client.job(job.id).status() is wm.JobStatus.SUCCEEDED
    assert client.job(job.id).result(timeout=5).text == t.text


def test_a_job_displays_its_status_in_a_notebook_and_its_wait_line_is_clean(
    client: wm.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: a ``Job`` cell showed only its repr, and ``wait(progress=True)`` drew
    ``job local-...: , running`` (tqdm's postfix comma)."""
    job = client.submit(SAMPLE, language="en")
    job.wait(timeout=120, poll_interval=0.2, progress=True)
    drawn = capsys.readouterr().err
    assert f"job {job.id}: succeeded" in drawn and ": ," not in drawn, drawn
    shown = job._repr_html_()
    assert job.id in shown and "local" in shown and ">succeeded</b>" in shown, shown
    other = wm.Client(backend="local", model="tiny.en", cache_dir=tiny_en_cache(), device="cpu")
    gone = wm.Job.from_id("local-0123", client=other)._repr_html_()  # not in this process
    assert "status unavailable: JobNotFound" in gone, gone


def test_local_job_is_not_found_in_another_process(client: wm.Client) -> None:
    code = (
        "import whisper_modal as wm\n"
        "try:\n"
        "    wm.Job.from_id('local-0123', client=wm.Client(backend='local')).status()\n"
        "except wm.JobNotFound as e:\n"
        "    print('JobNotFound', e.job_id)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "JobNotFound local-0123", out.stderr


def test_queued_job_can_be_cancelled(client: wm.Client) -> None:
    first = client.submit(SAMPLE, language="en")
    second = client.submit(SAMPLE, language="en")
    second.cancel()  # queued, or running beside the first: it stops at its next window
    assert second.status() is wm.JobStatus.CANCELLED
    with pytest.raises(wm.JobCancelled):
        second.result(timeout=60)
    assert first.result(timeout=120).text
    with pytest.raises(wm.JobTimeout):
        client.submit(SAMPLE, language="en").result(timeout=0)


def test_transcribe_many_keeps_order_and_returns_errors(client: wm.Client) -> None:
    inputs = [SAMPLE, b"garbage bytes" * 50, SAMPLE.read_bytes()]
    results = client.transcribe_many(inputs, concurrency=2, return_exceptions=True, language="en")
    assert isinstance(results[0], wm.Transcript) and isinstance(results[2], wm.Transcript)
    assert isinstance(results[1], wm.AudioError)
    with pytest.raises(wm.AudioError):
        client.transcribe_many(inputs, concurrency=2, language="en")
    with pytest.raises(wm.ConfigurationError):
        client.transcribe_many(inputs, concurrency=0)


async def test_async_twins(client: wm.Client) -> None:
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    beat = asyncio.create_task(heartbeat())
    t = await client.atranscribe(SAMPLE, language="en")
    job = await client.asubmit(SAMPLE, language="en")
    t2 = await job.aresult(timeout=120)
    many = await client.atranscribe_many([SAMPLE, SAMPLE], concurrency=2, language="en")
    beat.cancel()
    assert t.text == t2.text == many[0].text  # type: ignore[union-attr]
    assert ticks > 5  # the event loop kept running while the model worked


def test_stats_count_calls(client: wm.Client) -> None:
    fresh = wm.Client(backend="local", model="tiny.en", cache_dir=tiny_en_cache(), device="cpu")
    fresh.transcribe(SAMPLE, language="en")
    with pytest.raises(wm.AudioError):
        fresh.transcribe(b"\x00" * 1000)
    stats = fresh.stats()
    # the undecodable bytes reach the engine, fail there and are counted by class
    assert stats.invocations == 2 and stats.successes == 1
    assert stats.failures_by_error == {"AudioError": 1}
    assert stats.by_backend == {"local": 2}
    assert stats.audio_seconds > 20


def test_cli_transcribe_srt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import pysrt

    monkeypatch.setenv("WHISPER_MODAL_CACHE_DIR", str(tiny_en_cache()))
    monkeypatch.setenv("WHISPER_MODAL_DEVICE", "cpu")
    out = tmp_path / "sample.srt"
    code = cli_main(
        [
            "transcribe",
            str(SAMPLE),
            "--backend",
            "local",
            "--model",
            "tiny.en",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    subs = pysrt.open(str(out))
    assert len(subs) >= 3 and wer(REFERENCE, " ".join(s.text for s in subs)) <= MAX_WER
    assert (
        cli_main(
            ["transcribe", str(tmp_path / "nope.wav"), "--backend", "local", "--model", "tiny.en"]
        )
        == 2
    )
    assert "error" in capsys.readouterr().err
