"""Run one call per item with bounded concurrency, results in input order.

Used by ``Client.transcribe_many`` (one call per input) and by long-audio fan-out (one call
per chunk). Threads for sync callers, a semaphore for asyncio. A progress bar shows only
on a terminal or in a notebook.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from whisper_modal.errors import ConfigurationError, WhisperModalError
from whisper_modal.progress import progress_bar

__all__ = ["arun_many", "run_many"]

T = TypeVar("T")
R = TypeVar("R")


def _check(concurrency: int) -> None:
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ConfigurationError("concurrency must be a positive integer")


def run_many(
    call: Callable[[T], R],
    items: Sequence[T],
    *,
    concurrency: int,
    return_exceptions: bool = False,
    progress: bool | None = None,
    desc: str = "transcribing",
    on_done: Callable[[], None] | None = None,
) -> list[R | WhisperModalError]:
    """``call`` each item on at most ``concurrency`` threads; results in input order.

    ``on_done`` is called after each item finishes (progress reporting).

    Raises:
        WhisperModalError: the first failure when ``return_exceptions`` is False (items not
            started yet are cancelled).
    """
    _check(concurrency)
    results: list[R | WhisperModalError | None] = [None] * len(items)
    if not items:
        return []
    with (
        progress_bar(len(items), desc, enabled=progress) as bar,
        cf.ThreadPoolExecutor(concurrency, thread_name_prefix="whisper-modal-batch") as pool,
    ):
        futures = {pool.submit(call, item): i for i, item in enumerate(items)}
        try:
            for future in cf.as_completed(futures):
                try:
                    results[futures[future]] = future.result()
                except WhisperModalError as exc:
                    if not return_exceptions:
                        raise
                    results[futures[future]] = exc
                bar.update()
                if on_done is not None:
                    on_done()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return [r for r in results if r is not None]


async def arun_many(
    call: Callable[[T], Awaitable[R]],
    items: Sequence[T],
    *,
    concurrency: int,
    return_exceptions: bool = False,
    progress: bool | None = None,
    desc: str = "transcribing",
) -> list[R | WhisperModalError]:
    """Async twin of ``run_many``: at most ``concurrency`` awaiting at once."""
    _check(concurrency)
    gate = asyncio.Semaphore(concurrency)
    with progress_bar(len(items), desc, enabled=progress) as bar:

        async def one(item: T) -> R | WhisperModalError:
            async with gate:
                try:
                    return await call(item)
                except WhisperModalError as exc:
                    if not return_exceptions:
                        raise
                    return exc
                finally:
                    bar.update()

        return list(await asyncio.gather(*(one(i) for i in items)))
