"""Metrics: snapshot arithmetic, price lookup, thread safety and redacting log helper."""

from __future__ import annotations

import json
import logging
import math
import threading

import attrs
import pytest

from tests.test_resilience import FakeClock, run
from whisper_modal.errors import (
    AudioError,
    BackendUnavailable,
    ConfigurationError,
    StorageTransient,
    TransientError,
)
from whisper_modal.metrics import (
    GPU_PRICES_PER_SECOND,
    PRICES_TAKEN,
    Metrics,
    Stats,
    log_event,
    price_per_second,
    redact,
    redact_text,
)
from whisper_modal.resilience import CircuitBreaker

# ------------------------------------------------------------------------- prices


def test_price_table_defaults() -> None:
    assert PRICES_TAKEN == "2026-11"
    for gpu in ("T4", "L4", "A10G", "A100", "A100-80GB", "H100"):
        assert 0 < GPU_PRICES_PER_SECOND[gpu] < 0.01  # USD per *second*
    assert GPU_PRICES_PER_SECOND["CPU"] == 0.0
    # the relative order of Modal's tiers
    order = ["T4", "L4", "A10G", "A100", "A100-80GB", "H100"]
    assert [GPU_PRICES_PER_SECOND[g] for g in order] == sorted(
        GPU_PRICES_PER_SECOND[g] for g in order
    )
    with pytest.raises(TypeError):
        GPU_PRICES_PER_SECOND["T4"] = 0.0  # type: ignore[index]


@pytest.mark.parametrize(
    ("spec", "factor", "base"),
    [("A10G", 1, "A10G"), ("a10g", 1, "A10G"), ("A10G:2", 2, "A10G"), ("H100!", 1, "H100"),
     ("A100-40GB", 1, "A100"), ("a100-80gb:4", 4, "A100-80GB"), (" t4 ", 1, "T4")],
)  # fmt: skip
def test_price_lookup_understands_modal_spellings(spec: str, factor: int, base: str) -> None:
    assert price_per_second(spec) == pytest.approx(factor * GPU_PRICES_PER_SECOND[base])


def test_price_lookup_edge_cases() -> None:
    assert price_per_second(None) == 0.0 and price_per_second("cpu") == 0.0
    for unknown in ("B300", "A10G:x", "A10G:0", "any"):
        assert math.isnan(price_per_second(unknown))


# ------------------------------------------------------------------------ metrics


def test_snapshot_math() -> None:
    m = Metrics()
    m.record_call(backend="modal", ok=True, audio_seconds=600.0, wall_seconds=20.0,
                  gpu_seconds=16.0, gpu="A10G", cold_start=True)  # fmt: skip
    m.record_call(backend="modal", ok=True, audio_seconds=300.0, wall_seconds=10.0,
                  gpu_seconds=8.0, gpu="H100:2", retries=2)  # fmt: skip
    m.record_call(backend="modal", ok=False, error=TransientError("x"), wall_seconds=5.0)
    m.record_call(backend="modal", ok=False, error=StorageTransient("x"), wall_seconds=1.0)
    m.record_call(backend="modal", ok=False, error=TransientError("y"), wall_seconds=4.0)
    m.record_call(backend="local", ok=True, audio_seconds=60.0, wall_seconds=30.0,
                  gpu_seconds=0.0, fallback=True)  # fmt: skip
    m.record_call(backend="local", ok=False)  # a failure without an exception object
    m.record_retry()
    m.record_fallback(BackendUnavailable("modal down"))
    m.record_fallback("CircuitOpenError")
    m.record_breaker_transition("closed", "open")
    m.record_breaker_transition("closed", "open")
    s = m.snapshot()
    assert (s.invocations, s.successes, s.failures) == (7, 3, 4)
    assert s.failures_by_error == {"TransientError": 2, "StorageTransient": 1, "Unknown": 1}
    assert s.by_backend == {"modal": 5, "local": 2}
    assert (s.retries, s.retried_calls) == (3, 1)
    assert (s.fallbacks, s.fallback_calls) == (2, 1)
    assert s.fallback_reasons == {"BackendUnavailable": 1, "CircuitOpenError": 1}
    assert s.breaker_transitions == {"closed->open": 2}
    assert s.cold_starts == 1
    assert (s.audio_seconds, s.wall_seconds, s.gpu_seconds) == (960.0, 70.0, 24.0)
    expected = 16.0 * GPU_PRICES_PER_SECOND["A10G"] + 8.0 * 2 * GPU_PRICES_PER_SECOND["H100"]
    assert s.estimated_cost_usd == pytest.approx(expected)
    assert s.unpriced_gpu_seconds == 0.0
    assert s.real_time_factor == pytest.approx(960.0 / 70.0)


def test_injected_prices_and_unknown_gpus() -> None:
    m = Metrics(prices={"a10g": 0.5, "MYGPU": 2.0})  # names are case-insensitive
    m.record_call(backend="modal", ok=True, gpu_seconds=10.0, gpu="A10G")
    m.record_call(backend="modal", ok=True, gpu_seconds=3.0, gpu="mygpu")
    m.record_call(backend="modal", ok=True, gpu_seconds=7.0, gpu="T4")  # not in this table
    s = m.snapshot()
    assert s.estimated_cost_usd == pytest.approx(10.0 * 0.5 + 3.0 * 2.0)
    assert s.gpu_seconds == 20.0 and s.unpriced_gpu_seconds == 7.0


def test_empty_snapshot_and_json() -> None:
    s = Metrics().snapshot()
    assert s.invocations == 0 and s.real_time_factor == 0.0 and s.estimated_cost_usd == 0.0
    m = Metrics()
    m.record_call(backend="modal", ok=False, error=AudioError("x"), wall_seconds=2.0)
    m.record_call(backend="modal", ok=True, audio_seconds=8.0, wall_seconds=2.0)
    data = json.loads(json.dumps(m.snapshot().to_dict()))
    assert data["failures_by_error"] == {"AudioError": 1}
    assert data["real_time_factor"] == 2.0
    assert set(data) == {f.name for f in attrs.fields(Stats)} | {"real_time_factor"}


def test_snapshots_are_immutable_copies() -> None:
    m = Metrics()
    m.record_call(backend="modal", ok=False, error=TransientError("x"))
    s = m.snapshot()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        s.retries = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.failures_by_error["TransientError"] = 0  # type: ignore[index]
    m.record_call(backend="modal", ok=False, error=TransientError("x"))
    assert s.failures_by_error == {"TransientError": 1}  # unchanged by later calls
    assert m.snapshot().failures_by_error == {"TransientError": 2}


@pytest.mark.parametrize(
    "kw",
    [{"audio_seconds": -1.0}, {"wall_seconds": math.nan}, {"gpu_seconds": math.inf},
     {"retries": -1}],
)  # fmt: skip
def test_bad_measurements_are_refused(kw: dict[str, float]) -> None:
    m = Metrics()
    with pytest.raises(ConfigurationError):
        m.record_call(backend="modal", ok=True, **kw)  # type: ignore[arg-type]
    assert m.snapshot().invocations == 0


def test_no_audio_text_or_urls_are_kept() -> None:
    m = Metrics()
    secret_url = "https://bucket.s3.amazonaws.com/calls/42.wav?X-Amz-Signature=abc123"
    m.record_call(backend="modal", ok=False, error=AudioError(f"cannot read {secret_url}"))
    m.record_fallback(TransientError(f"down while fetching {secret_url}"))
    m.record_fallback(f"reason {secret_url}")  # free text: reduced to a code
    m.record_fallback(secret_url)
    assert m.snapshot().fallback_reasons == {"TransientError": 1, "reason": 1, "Other": 1}
    assert m.snapshot().failures_by_error == {"AudioError": 1}
    text = repr(m.snapshot()) + json.dumps(m.snapshot().to_dict())
    assert "abc123" not in text and "42.wav?" not in text and "cannot read" not in text


def test_counters_are_thread_safe() -> None:
    m = Metrics()
    threads_n, per_thread = 8, 1500
    start = threading.Barrier(threads_n)

    def work(t: int) -> None:
        start.wait()
        for i in range(per_thread):
            ok = i % 3 != 0
            m.record_call(
                backend="modal" if t % 2 else "local", ok=ok,
                error=None if ok else TransientError("x"), audio_seconds=0.5,
                wall_seconds=0.25, gpu_seconds=0.125, gpu="A10G", cold_start=i % 10 == 0,
            )  # fmt: skip
            m.record_retry()
            if i % 5 == 0:
                m.record_fallback("TransientError")
                m.record_breaker_transition("closed", "open")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    s = m.snapshot()
    total = threads_n * per_thread
    failures = threads_n * len(range(0, per_thread, 3))
    assert s.invocations == total and s.successes + s.failures == total
    assert s.failures_by_error == {"TransientError": failures}
    assert s.by_backend == {"modal": total // 2, "local": total // 2}
    assert s.retries == total
    assert s.fallbacks == threads_n * per_thread // 5 == s.fallback_reasons["TransientError"]
    assert s.breaker_transitions == {"closed->open": s.fallbacks}
    assert s.cold_starts == threads_n * per_thread // 10
    # binary fractions add exactly, so lost updates would show as a mismatch
    assert (s.audio_seconds, s.wall_seconds, s.gpu_seconds) == (total * 0.5, total * 0.25,
                                                                 total * 0.125)  # fmt: skip
    assert s.estimated_cost_usd == pytest.approx(total * 0.125 * GPU_PRICES_PER_SECOND["A10G"])


def test_breaker_transitions_feed_metrics() -> None:
    clock, m = FakeClock(), Metrics()
    b = CircuitBreaker("m", 2, 10.0, clock=clock, on_transition=m.record_breaker_transition)
    for _ in range(2):
        with pytest.raises(TransientError):
            run(b, _fail)
    clock.advance(10)
    run(b, lambda: None)
    assert m.snapshot().breaker_transitions == {
        "closed->open": 1, "open->half_open": 1, "half_open->closed": 1,
    }  # fmt: skip


def _fail() -> None:
    raise TransientError("down")


# ------------------------------------------------------------------------ logging


def test_log_event_redacts_secrets(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("whisper_modal.test_metrics")
    presigned = (
        "https://b.s3.amazonaws.com/k.wav?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAEXAMPLE%2F20261122&X-Amz-Signature=deadbeef"
    )
    with caplog.at_level(logging.INFO, logger=logger.name):
        log_event(
            logger, "upload",
            webhook_secret="s3cr3t", api_token="tok-123", password="hunter2",
            signature="sig-xyz", Authorization="Bearer abc.def",
            url="https://hooks.example.com/cb?key=value123", presigned=presigned,
            note=f"fetched {presigned} as user", creds_in_url="https://bob:pw1@example.com/x",
            header="Authorization: Bearer eyJhbGciOi", audio=b"\x00" * 1024,
            nested={"aws_secret_access_key": "wJalr", "bucket": "b"},
            attempts=3, s3_uri="s3://bucket/calls/42.wav", name="shadows LogRecord.name",
        )  # fmt: skip
    (record,) = caplog.records
    assert record.getMessage() == "upload" and record.event == "upload"  # type: ignore[attr-defined]
    fields = record.__dict__
    for key in ("webhook_secret", "api_token", "password", "signature", "Authorization"):
        assert fields[key] == "[redacted]"
    assert fields["url"] == "https://hooks.example.com/cb?[redacted]"
    assert fields["presigned"] == "https://b.s3.amazonaws.com/k.wav?[redacted]"
    assert fields["note"] == "fetched https://b.s3.amazonaws.com/k.wav?[redacted] as user"
    assert fields["creds_in_url"] == "https://[redacted]@example.com/x"
    assert fields["header"] == "Authorization: Bearer [redacted]"
    assert fields["audio"] == "[1024 bytes]"
    assert fields["nested"] == {"aws_secret_access_key": "[redacted]", "bucket": "b"}
    assert fields["attempts"] == 3 and fields["s3_uri"] == "s3://bucket/calls/42.wav"
    assert fields["name_"] == "shadows LogRecord.name" and record.name == logger.name
    dumped = json.dumps({k: fields[k] for k in ("url", "presigned", "note", "nested", "header")})
    for secret in ("deadbeef", "AKIAEXAMPLE", "value123", "wJalr", "eyJhbGciOi", "pw1"):
        assert secret not in dumped and secret not in caplog.text


def test_log_event_respects_the_level(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("whisper_modal.test_metrics.level")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        log_event(logger, "quiet", attempts=1)
        log_event(logger, "loud", level=logging.WARNING, error=TransientError("x?token=1"))
    assert [r.getMessage() for r in caplog.records] == ["loud"]
    assert caplog.records[0].error == "TransientError: x?token=[redacted]"  # type: ignore[attr-defined]


def test_redact_helpers() -> None:
    assert redact("count", 3) == 3 and redact("ok", True) is True and redact("x", None) is None
    assert redact("items", ["a", "https://x.io/p?q=1"]) == ["a", "https://x.io/p?[redacted]"]
    assert redact("session_token", {"a": 1}) == "[redacted]"
    assert redact_text("plain words, no secrets") == "plain words, no secrets"
    assert redact_text("?X-Amz-Signature=abc&x=1") == "?X-Amz-Signature=[redacted]&x=1"


def test_a_gpu_fallback_list_is_priced_as_its_first_gpu() -> None:
    import math
    import time

    from whisper_modal.backends.chain import _record_success
    from whisper_modal.config import Settings
    from whisper_modal.results import Timings, Transcript

    m = Metrics()
    t = Transcript(
        text="x", language="en", duration=60.0, backend="modal", timings=Timings(total=10.0)
    )
    _record_success(m, Settings.resolve(env={}, gpu="L40S,A10G"), t, time.monotonic())
    single = Metrics()
    _record_success(single, Settings.resolve(env={}, gpu="L40S"), t, time.monotonic())
    cost = m.snapshot().estimated_cost_usd
    assert not math.isnan(cost) and cost > 0 and cost == single.snapshot().estimated_cost_usd
