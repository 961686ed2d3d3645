"""Bounded concurrency (``concurrency.arun_many``): order, bounds, errors, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from whisper_modal.concurrency import arun_many
from whisper_modal.errors import AudioError, ConfigurationError


async def test_order_bound_and_collected_errors() -> None:
    live = peak = 0

    async def call(i: int) -> int:
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        await asyncio.sleep(0.001 * (5 - i % 5))  # finish out of order
        live -= 1
        if i == 3:
            raise AudioError("bad", reason="empty")
        return i * i

    out = await arun_many(call, list(range(12)), concurrency=3, return_exceptions=True)
    assert [o if isinstance(o, int) else "err" for o in out] == [
        0, 1, 4, "err", 16, 25, 36, 49, 64, 81, 100, 121,
    ]  # fmt: skip
    assert isinstance(out[3], AudioError) and out[3].reason == "empty"
    assert peak == 3
    with pytest.raises(ConfigurationError):
        await arun_many(call, [1], concurrency=0)
    assert await arun_many(call, [], concurrency=2) == []


async def test_first_error_cancels_the_siblings() -> None:
    """Without return_exceptions, the first failure stops every other call (TaskGroup)."""
    started: list[int] = []
    cancelled: list[int] = []
    finished: list[int] = []
    failing = asyncio.Event()

    async def call(i: int) -> int:
        started.append(i)
        if i == 0:
            await asyncio.sleep(0.01)
            failing.set()
            raise AudioError("first item is bad", reason="empty")
        try:
            await asyncio.sleep(30)  # would run long: must be cancelled, not awaited
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        finished.append(i)
        return i

    with pytest.raises(AudioError, match="first item is bad") as info:
        await asyncio.wait_for(arun_many(call, list(range(10)), concurrency=4), 10)
    assert not isinstance(info.value, BaseExceptionGroup)  # the error itself, not a group
    assert failing.is_set()
    # the bound held (the slot item 0 freed may have admitted one more before the abort);
    # every item that started, but the failing one, was cancelled; none finished
    assert {0, 1, 2, 3} <= set(started) and len(started) <= 5
    assert sorted(cancelled) == sorted(set(started) - {0}) and finished == []


async def test_non_whisper_errors_propagate_unchanged() -> None:
    async def call(i: int) -> int:
        if i == 1:
            raise KeyError("bug")
        return i

    with pytest.raises(KeyError):
        await arun_many(call, [0, 1, 2], concurrency=2, return_exceptions=True)
