"""Request bodies under a size limit, and multipart forms parsed into memory.

Limits: a ``Content-Length`` over the limit is refused with 413 before one byte of the
body is read; a chunked (or lying) body is counted as it streams and refused with 413 the
moment it passes the limit. A body that stops coming (no byte for ``timeout`` seconds) is
answered 408 with ``Connection: close``: uvicorn has no such timeout of its own (its
``timeout_keep_alive`` only runs between requests), so a client that sends its headers and
then stalls would hold its connection and its buffer for ever. Uploads are parsed
straight into memory (the audio becomes ``bytes`` in a ``Request`` anyway), so nothing is
spooled to disk: a client that disconnects mid-upload leaves no temp file, only a buffer
the garbage collector frees.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import attrs
from starlette.requests import ClientDisconnect, Request

from whisper_modal.http_api.errors import ApiError, shorten

__all__ = ["MAX_JSON_DEPTH", "Form", "read_form", "read_json"]

_MAX_FIELDS = 64  # form fields per request (the OpenAI form has about ten)
_MAX_FIELD_BYTES = 64 * 1024  # one text field (prompts are at most 4000 characters)
# one header line of a part: python-multipart's default (4 KiB + 128) refused a file name
# of 4.2 KB as a malformed body; OpenAI's SDKs send the name they are given
_MAX_HEADER_BYTES = 64 * 1024
_MAX_HEADERS = 8  # header lines per part (python-multipart's default; a part needs two)
# python-multipart's messages for those two limits (any other parse error is "malformed")
_HEADER_LIMITS = ("Maximum header size exceeded", "Maximum header count exceeded")


@attrs.frozen
class Form:
    """A parsed multipart form: text fields (repeatable) and at most one file.

    The audio is the part named ``file``, as in OpenAI's API; a file part under any other
    name is not read, only named in ``other_files`` (so a 400 can say what was sent).
    """

    fields: dict[str, list[str]]
    file: bytes | None
    filename: str | None
    other_files: tuple[str, ...] = ()

    def get(self, name: str) -> str | None:
        """The last value of a text field, None when absent or empty."""
        values = self.fields.get(name)
        return values[-1] if values and values[-1] != "" else None

    def get_all(self, name: str) -> list[str]:
        """Every value of a repeatable field (``timestamp_granularities[]``)."""
        return list(self.fields.get(name, ()))


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"request body is larger than the server's limit of {limit} bytes "
        "(WHISPER_MODAL_MAX_REQUEST_BYTES); upload long audio to S3 and submit a job with its key",
        code="file_too_large",
    )


def _stalled(timeout: float) -> ApiError:
    return ApiError(
        408,
        f"the request body stalled: no data for {timeout:g} s (WHISPER_MODAL_BODY_TIMEOUT)",
        code="body_timeout",
        headers={"Connection": "close"},  # the rest of the body may still come: not reusable
    )


async def _chunks(request: Request, limit: int, timeout: float) -> AsyncIterator[bytes]:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "malformed Content-Length header") from None
        if size > limit:  # refuse before reading anything
            raise _too_large(limit)
    received = 0
    stream = request.stream()
    try:
        while True:
            try:
                async with asyncio.timeout(timeout):  # per chunk: a slow body that moves is fine
                    chunk = await anext(stream)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise _stalled(timeout) from None
            received += len(chunk)
            if received > limit:
                raise _too_large(limit)
            yield chunk
    except ClientDisconnect:
        # nobody is left to answer; the buffers read so far are dropped with this frame
        raise ApiError(
            400, "the client disconnected during the upload", code="disconnected"
        ) from None
    finally:
        await stream.aclose()


async def read_json(request: Request, limit: int, *, timeout: float) -> dict[str, Any]:
    """Read a JSON object body of at most ``limit`` bytes.

    Args:
        request: the request whose body to read.
        limit: bytes of body accepted.
        timeout: seconds the body may go without a byte.

    Raises:
        ApiError: 413 over the limit; 408 stalled; 400 not a JSON object.
    """
    body = bytearray()
    async for chunk in _chunks(request, limit, timeout):
        body += chunk
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON", code="invalid_json") from None
    except RecursionError:  # json's parser recurses once per level
        raise _too_deep() from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    if _depth(data) > MAX_JSON_DEPTH:  # later code (repr, copies) would recurse as deep
        raise _too_deep()
    return data


#: nesting levels of a JSON body (a job needs three: body, "options", a list)
MAX_JSON_DEPTH = 16


def _too_deep() -> ApiError:
    return ApiError(
        400, f"the JSON body is nested more than {MAX_JSON_DEPTH} levels", code="invalid_json"
    )


def _depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects, counted without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level > MAX_JSON_DEPTH:
                break
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


async def read_form(request: Request, limit: int, *, timeout: float) -> Form:
    """Parse a ``multipart/form-data`` body of at most ``limit`` bytes.

    Args:
        request: the request whose body to read.
        limit: bytes of body accepted.
        timeout: seconds the body may go without a byte.

    Raises:
        ApiError: 413 over the limit; 408 stalled; 400 not multipart, malformed,
            truncated, more than one file, or too many / too long fields.
    """
    from python_multipart.multipart import MultipartParser, parse_options_header

    content_type, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise ApiError(
            400,
            "send the audio as multipart/form-data with a 'file' field",
            param="file",
            code="invalid_content_type",
        )
    state = _FormState()
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": state.part_begin,
            "on_part_data": state.part_data,
            "on_part_end": state.part_end,
            "on_header_field": state.header_field,
            "on_header_value": state.header_value,
            "on_header_end": state.header_end,
            "on_headers_finished": state.headers_finished,
            "on_end": state.end,
        },
        max_header_size=_MAX_HEADER_BYTES,
        max_header_count=_MAX_HEADERS,
    )
    try:
        async for chunk in _chunks(request, limit, timeout):
            parser.write(chunk)
            if state.error:
                raise ApiError(400, state.error, code="invalid_form")
        parser.finalize()
    except ApiError:
        raise
    except Exception as exc:  # python_multipart's parse errors: the body is not a valid form
        if str(exc) in _HEADER_LIMITS:
            raise ApiError(
                400,
                f"a form part's headers are too long: at most {_MAX_HEADERS} lines of "
                f"{_MAX_HEADER_BYTES} bytes (a file name counts in its line)",
                code="invalid_form",
            ) from None
        raise ApiError(400, "malformed multipart/form-data body", code="invalid_form") from None
    if state.error:
        raise ApiError(400, state.error, code="invalid_form")
    if not state.ended:
        raise ApiError(400, "the multipart body ended early", code="invalid_form")
    file = None if state.file is None else bytes(state.file)
    return Form(state.fields, file, state.filename, tuple(state.other_files))


class _FormState:
    """The callbacks' state: the current part's headers and data, and what was collected."""

    def __init__(self) -> None:
        self.fields: dict[str, list[str]] = {}
        self.file: bytearray | None = None
        self.filename: str | None = None
        self.other_files: list[str] = []  # names of file parts that are not "file"
        self.error: str | None = None
        self.ended = False
        self._count = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._name = ""
        self._is_file = False
        self._skip = False  # a file part under another name: its data is not kept
        self._data = bytearray()

    def part_begin(self) -> None:
        self._disposition, self._data = b"", bytearray()
        self._count += 1
        if self._count > _MAX_FIELDS:
            self.error = f"more than {_MAX_FIELDS} form fields"

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def header_end(self) -> None:
        if bytes(self._header_field).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_field, self._header_value = bytearray(), bytearray()

    def headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self._disposition)
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        self._is_file = self._name == "file"
        self._skip = not self._is_file and b"filename" in options
        if self._skip:
            self.other_files.append(self._name)
        if self._is_file:
            if self.file is not None:
                self.error = "send one file per request"
            self.file = bytearray()
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace")

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self._skip:
            return
        if self._is_file and self.file is not None:
            self.file += data[start:end]  # the request-level limit bounds this
            return
        self._data += data[start:end]
        if len(self._data) > _MAX_FIELD_BYTES:
            name = shorten(self._name)
            self.error = f"form field {name!r} is longer than {_MAX_FIELD_BYTES} bytes"

    def part_end(self) -> None:
        if not self._is_file and not self._skip:
            value = self._data.decode("utf-8", "replace")
            self.fields.setdefault(self._name, []).append(value)
        self._is_file = self._skip = False

    def end(self) -> None:
        self.ended = True
