"""Warnings for the caller, shown at the caller's own line, not at a line of this package.

Python attributes a warning to the frame ``stacklevel`` levels up. A fixed level is wrong
here twice over: the depth from a public function to the code that warns differs per path,
and the sync API runs its coroutine on the client's private loop thread, whose stack holds
no frame of the caller at all. So:

* ``warn`` walks up past this package's frames (and asyncio's, concurrent.futures' and
  threading's) to the first frame that is someone else's, and attributes the warning there.
* While ``LoopThread.run`` waits for a coroutine, warnings raised inside it (on the loop, or
  in a thread it started through ``asyncio.to_thread``, which copies the context) are
  forwarded to the waiting thread and issued there by ``drain``, so a script sees
  ``script.py:9: RuntimeWarning: ...`` for its own ``wm.transcribe(...)`` line.

Python 3.12's ``warnings.warn(skip_file_prefixes=...)`` does the first half; 3.11 is
supported, so the walk is done here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import os
import queue
import sys
import threading
import warnings
from collections.abc import Coroutine
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from whisper_modal.results import Transcript

__all__ = ["Forwarded", "drain", "forwarding", "warn", "warn_uncovered"]

T = TypeVar("T")

#: one warning on its way to the waiting caller: (message, category)
Forwarded = tuple[str, type[Warning]]

_INTERNAL = (
    os.path.dirname(os.path.abspath(__file__)) + os.sep,  # this package
    os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep,
    os.path.dirname(os.path.abspath(concurrent.futures.__file__)) + os.sep,
    os.path.abspath(threading.__file__),
)

_sink: contextvars.ContextVar[queue.SimpleQueue[Forwarded | None] | None] = contextvars.ContextVar(
    "whisper_modal_warning_sink", default=None
)


def _internal(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_INTERNAL)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """Issue ``message`` at the first frame outside this package (or forward it, see above)."""
    sink = _sink.get()
    if sink is not None:
        sink.put((message, category))
        return
    frame: FrameType | None = sys._getframe(1)
    level = 2  # warnings.warn's stacklevel for warn()'s caller
    while frame is not None and _internal(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    # no outside frame at all (a loop thread nobody waits on): warn()'s caller it is
    warnings.warn(message, category, stacklevel=level if frame is not None else 2)


async def forwarding(coro: Coroutine[Any, Any, T], sink: queue.SimpleQueue[Forwarded | None]) -> T:
    """Await ``coro`` with its warnings sent to ``sink`` instead of issued on this thread."""
    _sink.set(sink)  # this task's own context (and the threads it hands work to)
    return await coro


def drain(sink: queue.SimpleQueue[Forwarded | None]) -> None:
    """Issue forwarded warnings on this (the caller's) thread until ``None`` arrives."""
    while (item := sink.get()) is not None:
        warn(*item)


def warn_uncovered(transcript: Transcript) -> None:
    """Warn when the VAD heard speech that got no text (``Transcript.uncovered_speech``)."""
    spans = transcript.uncovered_speech
    if not spans:
        return
    seconds = sum(b - a for a, b in spans)
    listed = ", ".join(f"{a:.1f}-{b:.1f} s" for a, b in spans[:3]) + (
        ", ..." if len(spans) > 3 else ""
    )
    warn(
        f"{seconds:.1f} s of speech got no text ({listed}), even decoded again; "
        "see Transcript.uncovered_speech",
        UserWarning,
    )
