"""One asyncio loop on a private thread: how the sync API runs the async core.

Every operation of the client is written once, as a coroutine. Async callers await it on
their own loop; sync callers (scripts, notebooks, threads of a web server) hand it to this
loop and wait. Why this way round and not a sync core with ``asyncio.to_thread``: Modal's
client is asyncio underneath, a cancelled coroutine really cancels the remote call (a
thread cannot be stopped), and deadlines are ``asyncio.timeout`` scopes that hold however
the caller waits. Blocking work (file reads, local inference) runs in ``to_thread`` from
the coroutine, so the loop stays free. A sync call from inside a running event loop (a
Jupyter cell) works too: it waits on another thread's loop, never its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import queue
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from whisper_modal import _warnings
from whisper_modal.errors import ConfigurationError

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """A private event loop on a daemon thread, started on first use, stopped by ``close``."""

    def __init__(self, name: str = "whisper-modal-loop") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise ConfigurationError("this client is closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> cf.Future[T]:
        """Schedule ``coro`` on the loop; returns a thread-safe future."""
        try:
            loop = self._ensure()
        except BaseException:
            coro.close()  # never leave a coroutine un-awaited
            raise
        return asyncio.run_coroutine_threadsafe(coro, loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for it; an interrupted wait cancels it.

        Raises:
            ConfigurationError: the loop is closed, or this is the loop's own thread (a
                sync call from inside the client's loop would wait on itself forever).
        """
        if threading.current_thread() is self._thread:
            coro.close()
            raise ConfigurationError("a sync whisper_modal call inside its own loop: use await")
        sink: queue.SimpleQueue[_warnings.Forwarded | None] = queue.SimpleQueue()
        try:
            future = self.submit(_warnings.forwarding(coro, sink))
        except BaseException:
            coro.close()
            raise
        future.add_done_callback(lambda _: sink.put(None))
        try:
            _warnings.drain(sink)  # its warnings, issued at the caller's line (see _warnings)
            return future.result()
        except BaseException:
            future.cancel()  # KeyboardInterrupt in the caller: stop the remote work too
            raise

    def close(self, timeout: float = 5.0) -> None:
        """Cancel what still runs on the loop, stop it and join its thread (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def _cancel_all() -> None:
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await loop.shutdown_default_executor()

        if thread is not threading.current_thread():
            # a task that will not stop in time is left to the daemon thread
            with contextlib.suppress(cf.TimeoutError, RuntimeError):
                asyncio.run_coroutine_threadsafe(_cancel_all(), loop).result(timeout)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
        if not loop.is_running():
            loop.close()
