"""Modal's web proxy on loopback: HTTP requests to a web function's URL become its inputs.

Each web function (``@modal.asgi_app`` and the other web decorators) gets a loopback port
of its own, which ``FunctionCreate`` reports as its ``web_url`` (Modal gives each its own
host, so the app's routes start at ``/``). A request becomes what Modal's server makes of
it: a function call of one input whose argument is the ASGI scope, with the body streamed
into the call's ``data_in`` as ``http.request`` messages (``FunctionCallGetDataIn``). The
container's runtime (``modal/_runtime/asgi.py``) runs the app and puts its messages
(``http.response.start``, ``http.response.body`` ...) on the call's ``data_out``
(``FunctionCallPutDataOut``), which the proxy streams back to the HTTP client.

Modal cuts a request whose response has not started within 150 s: it answers ``303 See
Other`` to the same path with ``?__modal_function_call_id=<call id>``, the *result URL*,
which waits for that call's response (again up to the cut) and gives it; the function is
not called again. ``cut_seconds`` makes the cut short; ``result_cut_seconds`` is the
result URL's wait (the same as the cut unless set).

Proxy auth: a function deployed with ``requires_proxy_auth=True`` answers only requests
carrying the ``Modal-Key`` and ``Modal-Secret`` headers of a proxy auth token of the
workspace (``WebProxy.tokens``, which tests fill as a workspace admin would in Modal's
dashboard); any other request is a ``401`` with Modal's body ``modal-http: missing
credentials for proxy authorization`` and never becomes an input. (For a wrong token the
body wording is this emulator's; Modal documents only the missing case.)

Not emulated: websockets, custom domains, the request's ``https`` scheme (the loopback
URL is ``http``).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from modal._serialization import deserialize_data_format, serialize_data_format
from modal_proto import api_pb2

if TYPE_CHECKING:
    from tests.emulator.servicer import CallState, Servicer

__all__ = ["RESULT_PARAM", "WebProxy"]

#: the result URL's query parameter (Modal's)
RESULT_PARAM = "__modal_function_call_id"
#: a request body goes to the container in ``http.request`` messages of at most this size
BODY_CHUNK_BYTES = 1024 * 1024
#: response headers that describe one connection, not the response (aiohttp writes its own)
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade"})


class WebProxy:
    """The web URLs of deployed web functions; see the module docstring."""

    def __init__(self, servicer: Servicer, *, cut_seconds: float = 150.0) -> None:
        self.servicer = servicer
        self.cut_seconds = cut_seconds
        self.result_cut_seconds: float | None = None  # None: cut_seconds
        self.urls: dict[str, str] = {}  # function id -> its web URL
        self.calls: dict[str, CallState] = {}  # function call id -> a web request's call
        self.redirects = 0  # 303s answered
        self.tokens: dict[str, str] = {}  # the workspace's proxy auth tokens: key -> secret
        self.refused = 0  # requests the proxy auth turned away
        self._runners: list[web.AppRunner] = []

    @contextlib.contextmanager
    def cut(self, seconds: float, *, result_seconds: float | None = None) -> Iterator[None]:
        """Make the cut ``seconds`` (and the result URL's wait ``result_seconds``) inside the
        block. Set from the test's thread: the proxy reads them when a request comes."""
        saved = self.cut_seconds, self.result_cut_seconds
        self.cut_seconds, self.result_cut_seconds = seconds, result_seconds
        try:
            yield
        finally:
            self.cut_seconds, self.result_cut_seconds = saved

    async def serve(self, function_id: str) -> str:
        """Listen for ``function_id``'s requests (once); its web URL."""
        if function_id in self.urls:
            return self.urls[function_id]

        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(function_id, request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runners.append(runner)
        self.urls[function_id] = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return self.urls[function_id]

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    async def _handle(self, function_id: str, request: web.Request) -> web.StreamResponse:
        refusal = self._proxy_auth(function_id, request)
        if refusal is not None:
            self.refused += 1
            return web.Response(status=401, text=refusal)
        ticket = request.query.get(RESULT_PARAM)
        if ticket is not None:  # the result URL: the same call's answer, no new input
            call = self.calls.get(ticket)
            if call is None or call.function_id != function_id:
                return web.Response(status=404, text=f"no web request {ticket}")
            wait = self.cut_seconds if self.result_cut_seconds is None else self.result_cut_seconds
            return await self._answer(request, call, wait)
        cut = self.cut_seconds  # the cut in force when the request came
        first, more = await _read_chunk(request)
        call = await self.servicer.web_input(
            function_id, _scope(request), first_message=_body_message(first, more)
        )
        self.calls[call.function_call_id] = call
        while more:  # the rest of the body, as the container's app reads it
            chunk, more = await _read_chunk(request)
            self.servicer.put_data_in(call, _body_message(chunk, more))
        return await self._answer(request, call, cut)

    def _proxy_auth(self, function_id: str, request: web.Request) -> str | None:
        """Why Modal's proxy refuses ``request`` (None: it may pass)."""
        definition = self.servicer.functions[function_id].definition
        if not definition.webhook_config.requires_proxy_auth:
            return None
        key, secret = request.headers.get("Modal-Key"), request.headers.get("Modal-Secret")
        if not key or not secret:
            return "modal-http: missing credentials for proxy authorization"
        known = self.tokens.get(key)
        if known is None or not secrets.compare_digest(known, secret):
            return "modal-http: invalid credentials for proxy authorization"
        return None

    async def _answer(
        self, request: web.Request, call: CallState, wait: float
    ) -> web.StreamResponse:
        """The call's response, or the 303 to its result URL when none starts in ``wait``."""
        async with contextlib.aclosing(self._messages(call)) as messages:
            try:
                async with asyncio.timeout(max(0.0, wait)):
                    start = await anext(messages, None)
            except TimeoutError:
                self.redirects += 1
                location = f"{request.path}?{RESULT_PARAM}={call.function_call_id}"
                return web.Response(status=303, headers={"Location": location})
            return await self._stream(request, call, start, messages)

    async def _stream(
        self,
        request: web.Request,
        call: CallState,
        start: dict[str, Any] | None,
        messages: AsyncIterator[dict[str, Any]],
    ) -> web.StreamResponse:
        if start is None or start.get("type") != "http.response.start":
            # the function failed (or ended) before its app answered: Modal's 500
            return web.Response(status=500, text=f"web function failed ({_outcome(call)})")
        response = web.StreamResponse(status=int(start["status"]))
        for name, value in start.get("headers", []):
            key = name.decode("latin-1")
            if key.lower() not in HOP_BY_HOP:
                response.headers.add(key, value.decode("latin-1"))
        await response.prepare(request)
        async for message in messages:
            if message.get("type") != "http.response.body":
                continue  # trailers: not sent on HTTP/1.1
            await response.write(message.get("body", b""))
            if not message.get("more_body"):
                await response.write_eof()
                return response
        response.force_close()  # the function ended mid-body: the client sees a cut connection
        return response

    async def _messages(self, call: CallState) -> AsyncGenerator[dict[str, Any], None]:
        """The call's ``data_out`` as ASGI messages, as the container puts them."""
        async for chunk in self.servicer.data_chunks(call, "data_out", idle=None):
            if chunk.WhichOneof("data_oneof") == "data_blob_id":
                data = self.servicer.blobs.blobs[chunk.data_blob_id]
            else:
                data = chunk.data
            yield deserialize_data_format(data, chunk.data_format, None)


def _scope(request: web.Request) -> dict[str, Any]:
    """The ASGI ``http`` scope of ``request`` (the fields Modal's ``Asgi.Http`` carries)."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    scope: dict[str, Any] = {
        "type": "http",
        "http_version": f"{request.version.major}.{request.version.minor}",
        "method": request.method,
        "scheme": request.scheme,
        "path": request.path,
        "query_string": request.rel_url.raw_query_string.encode(),
        "headers": [(k.lower(), v) for k, v in request.raw_headers],
    }
    if peer:
        scope["client"] = (str(peer[0]), int(peer[1]))
    return scope


async def _read_chunk(request: web.Request) -> tuple[bytes, bool]:
    """Up to ``BODY_CHUNK_BYTES`` of the body, and whether more follows."""
    buf = bytearray()
    while len(buf) < BODY_CHUNK_BYTES:
        part = await request.content.read(BODY_CHUNK_BYTES - len(buf))
        if not part:
            break
        buf += part
    return bytes(buf), not request.content.at_eof()


def _body_message(body: bytes, more: bool) -> bytes:
    return serialize_data_format(
        {"type": "http.request", "body": body, "more_body": more}, api_pb2.DATA_FORMAT_ASGI
    )


def _outcome(call: CallState) -> str:
    outputs = [i.output for i in call.inputs if i.output is not None]
    if not outputs:
        return "no output"
    result = outputs[0].result
    name = api_pb2.GenericResult.GenericStatus.Name(result.status)
    return f"{name}: {result.exception}" if result.exception else name
