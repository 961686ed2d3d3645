"""Bounded concurrency: run one call per item, at most N at a time, results in input order.

Used by ``transcribe_many`` (one call per input) and by long-audio fan-out (one call per
chunk). Written once, for asyncio (the sync API runs it on the client's loop thread). A
``TaskGroup`` holds the calls, so the first failure (when not collected) cancels every
sibling still running or waiting: nothing keeps transcribing after the caller got its
error. A progress bar shows only on a terminal or in a notebook.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from whisper_modal.errors import ConfigurationError, WhisperModalError
from whisper_modal.progress import progress_bar

__all__ = ["arun_many"]

T = TypeVar("T")
R = TypeVar("R")


def _check(concurrency: int) -> None:
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ConfigurationError("concurrency must be a positive integer")


async def arun_many(
    call: Callable[[T], Awaitable[R]],
    items: Sequence[T],
    *,
    concurrency: int,
    return_exceptions: bool = False,
    progress: bool | None = None,
    desc: str = "transcribing",
) -> list[R | WhisperModalError]:
    """Await ``call(item)`` for every item, at most ``concurrency`` at once.

    Args:
        call: the coroutine function to run per item.
        items: the inputs, in the order results come back.
        concurrency: most calls in flight (>= 1).
        return_exceptions: put each item's ``WhisperModalError`` in its slot instead of
            raising the first one.
        progress: show a bar (None: only on a terminal or in a notebook).
        desc: the bar's label.

    Returns:
        One result (or error, with ``return_exceptions``) per item, in input order.

    Raises:
        WhisperModalError: the first failure when ``return_exceptions`` is False; every
            other call is cancelled before it propagates.
        ConfigurationError: ``concurrency`` is not a positive integer.
    """
    _check(concurrency)
    if not items:
        return []
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

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(item)) for item in items]
        except BaseExceptionGroup as failed:
            # The group has cancelled the siblings; surface the first error itself, as a
            # plain call would, rather than an ExceptionGroup (its own cause is kept).
            first = failed.exceptions[0]
            first.__suppress_context__ = True
            raise first  # noqa: B904 - the group is an implementation detail
        return [task.result() for task in tasks]
