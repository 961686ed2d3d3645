"""Limits on blocking transcription requests: how many at once, how long, and who waits.

* ``max_concurrent_requests`` in flight; one more is answered ``429`` with ``Retry-After``
  at once (``code: server_busy``), before its upload is read.
* ``request_timeout`` seconds each; past it the answer is ``504`` (``code:
  request_timeout``) and the decode stops at its next window (``engine.turns``).
* A caller that hangs up stops its decode too: nobody would read the transcript.

The order in which requests get the model (short before long) is the engine's
(``engine.turns``); this module only decides which requests are worth running.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from starlette.requests import Request as HttpRequest

from whisper_modal.http_api.errors import SERVER, ApiError

__all__ = ["RequestGate", "until_disconnected"]

T = TypeVar("T")

#: seconds a caller refused for ``server_busy`` is told to wait
BUSY_RETRY_AFTER = 2


async def until_disconnected(request: HttpRequest) -> None:
    """Return when the caller hangs up (call it once the body has been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class RequestGate:
    """Admits at most ``limit`` requests at once and runs each under ``timeout`` seconds.

    Used from one event loop (the server's), so a plain counter is enough.
    """

    def __init__(self, limit: int, timeout: float) -> None:
        self.limit = limit
        self.timeout = timeout
        self.in_flight = 0

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold a place for one request.

        Raises:
            ApiError: 429 ``server_busy`` while ``limit`` requests are in flight.
        """
        if self.in_flight >= self.limit:
            raise ApiError(
                429,
                f"the server is busy ({self.limit} transcriptions in flight); retry shortly, "
                "or submit the audio to POST /v1/jobs",
                code="server_busy",
                headers={"Retry-After": str(BUSY_RETRY_AFTER)},
            )
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def run(self, request: HttpRequest, call: Callable[[], Awaitable[T]]) -> T:
        """Await ``call()``; cancel it when the caller hangs up or the time is up.

        Raises:
            ApiError: 504 ``request_timeout`` past ``timeout`` seconds; 499 when the caller
                hung up (nobody reads it; it ends the handler and is logged as such).
        """
        work = asyncio.ensure_future(call())
        gone = asyncio.ensure_future(until_disconnected(request))
        try:
            done, _ = await asyncio.wait(
                {work, gone}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if work in done:
                return work.result()
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()  # the backend stops the decode at its next window
                await asyncio.gather(work, return_exceptions=True)
        if gone in done:
            raise ApiError(499, "the client closed the connection", code="client_closed")
        raise ApiError(
            504,
            f"the transcription ran past this server's limit of {self.timeout:g} s "
            "(WHISPER_MODAL_REQUEST_TIMEOUT) and was stopped; submit long audio to "
            "POST /v1/jobs",
            type=SERVER,
            code="request_timeout",
        )
