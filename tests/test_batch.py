"""Bounded-concurrency fan-out helpers: order, bounds, errors, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from whisper_modal.batch import arun_many, run_many
from whisper_modal.errors import AudioError, ConfigurationError


def test_order_bound_and_errors() -> None:
    lock = threading.Lock()
    live = peak = 0

    def call(i: int) -> int:
        nonlocal live, peak
        with lock:
            live += 1
            peak = max(peak, live)
        time.sleep(0.01 * (5 - i % 5))  # finish out of order
        with lock:
            live -= 1
        if i == 3:
            raise AudioError("bad", reason="empty")
        return i * i

    out = run_many(call, list(range(12)), concurrency=3, return_exceptions=True)
    assert [o if isinstance(o, int) else "err" for o in out] == [
        0,
        1,
        4,
        "err",
        16,
        25,
        36,
        49,
        64,
        81,
        100,
        121,
    ]
    assert peak == 3
    with pytest.raises(AudioError):
        run_many(call, list(range(12)), concurrency=3)
    with pytest.raises(ConfigurationError):
        run_many(call, [1], concurrency=0)
    assert run_many(call, [], concurrency=2) == []


async def test_async_order_and_bound() -> None:
    live = peak = 0

    async def call(i: int) -> int:
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        await asyncio.sleep(0.001 * (7 - i % 7))
        live -= 1
        return i

    assert await arun_many(call, list(range(20)), concurrency=4) == list(range(20))
    assert peak == 4
