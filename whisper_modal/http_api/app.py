"""The ASGI app: OpenAI-compatible audio endpoints, a jobs API and a health check.

    POST   /v1/audio/transcriptions   multipart, OpenAI's fields -> json|text|srt|vtt|verbose_json
    POST   /v1/audio/translations     the same, output in English
    GET    /v1/models[/{model}]       OpenAI's list shape: the models this deployment serves
    POST   /v1/jobs                   multipart upload, or JSON {"s3_uri": ...}; -> 202 {id, status}
    GET    /v1/jobs/{id}[?format=]    status, progress, error, result (srt|vtt|txt|json|...)
    DELETE /v1/jobs/{id}              cancel
    GET    /health                    unauthenticated; no secrets

Everything under ``/v1`` needs ``Authorization: Bearer <key>`` when keys are configured.
The app is built around a ``Client``: requests become the same ``Request`` an in-process
caller makes, so limits, fallback and retries behave exactly as in Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Annotated, Any, overload

from fastapi import APIRouter, Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response

from whisper_modal.client import Client
from whisper_modal.config import split_list
from whisper_modal.errors import ConfigurationError, WhisperModalError
from whisper_modal.http_api import openai_api as oa
from whisper_modal.http_api.auth import ApiKeys
from whisper_modal.http_api.errors import ApiError, http_error, shorten
from whisper_modal.http_api.jobs import DirectJobs, Jobs, JobView, PersistentJobs
from whisper_modal.http_api.limits import RequestGate
from whisper_modal.http_api.uploads import Form, read_form, read_json
from whisper_modal.wire import Request

__all__ = ["create_app"]

log = logging.getLogger("whisper_modal.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: ``?format=`` values of GET /v1/jobs/{id}
JOB_FORMATS = ("json", "verbose_json", "srt", "vtt", "txt")
#: bytes of a JSON job body: it names an S3 key and options, never the audio
MAX_JSON_BYTES = 1024 * 1024


class _RequestId:
    """Give every request an id (``X-Request-Id``) that 5xx messages and logs name."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "req_" + uuid.uuid4().hex[:24]
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)


def _request_id(request: HttpRequest) -> str:
    return str(getattr(request.state, "request_id", "req_unknown"))


def _error_response(request: HttpRequest, exc: BaseException) -> JSONResponse:
    request_id = _request_id(request)
    status, body, headers = http_error(exc, request_id)
    if status >= 500 and isinstance(exc, WhisperModalError):
        # the cause stays in the server log (uvicorn logs foreign exceptions' tracebacks)
        log.error(
            "request failed: %s: %s",
            type(exc).__name__,
            exc,
            extra={"event": "http_error", "request_id": request_id, "status": status},
        )
    headers["X-Request-Id"] = request_id
    return JSONResponse(body, status_code=status, headers=headers)


async def authorize(request: HttpRequest) -> str | None:
    """The one place a key is checked; returns the caller's owner hash (None: no auth).

    Every ``/v1`` route and the schema hang off routers that depend on it, so a new route
    cannot forget it, and it runs before any body is read. FastAPI runs a dependency once
    per request (cached), so routes that need the owner ask for it again as ``Owner``.
    """
    keys: ApiKeys = request.app.state.api_keys
    return keys.check(request.headers.get("authorization"))


#: a route parameter that is the caller's owner hash (see ``authorize``)
Owner = Annotated[str | None, Depends(authorize)]


def _form_fields(form: Form) -> oa.Fields:
    def get_all(name: str) -> list[str]:
        # the SDKs send "timestamp_granularities[]"; curl users often drop the brackets
        bare = name.removesuffix("[]")
        return form.get_all(name) + (form.get_all(bare) if bare != name else [])

    return form.get, get_all


#: OpenAI's code for a required field that is absent
MISSING = "missing_required_parameter"


@overload
def _upload(form: Form, *, missing: str) -> bytes: ...
@overload
def _upload(form: Form, *, missing: str | None) -> bytes | None: ...
def _upload(form: Form, *, missing: str | None) -> bytes | None:
    """The audio of the ``file`` part; 400 when it is empty, or absent and ``missing`` says
    what to send (None: the file is optional)."""
    if form.file is None:
        if missing is None:
            return None
        if form.other_files:
            names = ", ".join(repr(shorten(n)) for n in form.other_files)
            missing += f" (a file came in {names}; the audio goes in 'file', as in OpenAI's API)"
        raise ApiError(400, missing, param="file", code=MISSING)
    if not form.file:
        raise ApiError(400, "the uploaded 'file' is empty", param="file", code="empty")
    return form.file


def create_app(
    client: Client,
    *,
    jobs: Jobs | str | None = None,
    api_keys: list[str] | tuple[str, ...] | None = None,
    require_auth: bool = False,
    max_queued_jobs: int = 64,
) -> FastAPI:
    """Build the HTTP API around ``client``.

    Args:
        client: runs every request (its settings give the default model, the served
            models, the upload limit and the webhook allow-list).
        jobs: ``"persistent"`` (the default: SQLite at ``settings.jobs_db``, survives
            restarts), ``"direct"`` (stateless, the job id is the backend's: for Modal,
            where many web containers answer and Modal keeps the jobs) or a ``Jobs``.
        api_keys: accepted bearer keys (default: ``settings.api_keys``); none: no auth.
        require_auth: refuse every ``/v1`` request when no key is configured.
        max_queued_jobs: unfinished jobs a persistent store holds; more get ``429`` with
            ``Retry-After`` (a bounded queue: one caller cannot pile up work without end).

    Returns:
        A FastAPI app; serve it with uvicorn or Modal's ``@modal.asgi_app``.

    Raises:
        ConfigurationError: an unknown ``jobs`` kind.
    """
    settings = client.settings
    keys = ApiKeys(
        split_list(settings.api_keys) if api_keys is None else api_keys, required=require_auth
    )
    if jobs is None or jobs == "persistent":
        store: Jobs = PersistentJobs(client, settings.jobs_db, max_unfinished=max_queued_jobs)
    elif jobs == "direct":
        store = DirectJobs(client)
    elif isinstance(jobs, str):
        raise ConfigurationError(f"jobs must be 'persistent' or 'direct', not {jobs!r}")
    else:
        store = jobs
    limit, body_timeout = settings.max_request_bytes, settings.body_timeout
    allow_hosts = split_list(settings.webhook_allow_hosts)
    if not keys.enabled:
        log.warning("HTTP API without API keys: anyone who can reach it may use it")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await store.start()
        try:
            yield
        finally:
            await store.stop()

    # With keys, the schema is served only with a key, and the browsable docs (whose page
    # fetches the schema without one) not at all: the API's shape is not for anyone.
    public_docs = not keys.enabled
    app = FastAPI(
        title="whisper_modal",
        summary="OpenAI-compatible speech-to-text and a jobs API",
        lifespan=lifespan,
        openapi_url="/openapi.json" if public_docs else None,
        docs_url="/docs" if public_docs else None,
        redoc_url="/redoc" if public_docs else None,
    )
    app.add_middleware(_RequestId)

    # Our errors are answered by FastAPI's exception middleware; anything else reaches
    # Starlette's outermost middleware, which answers with this handler and then re-raises
    # so uvicorn logs the traceback (the caller only sees the request id).
    @app.exception_handler(WhisperModalError)
    async def our_error(request: HttpRequest, exc: WhisperModalError) -> JSONResponse:
        return _error_response(request, exc)

    @app.exception_handler(Exception)
    async def any_error(request: HttpRequest, exc: Exception) -> JSONResponse:
        return _error_response(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_exception(request: HttpRequest, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _error_response(request, ApiError(exc.status_code, str(exc.detail), code=code))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: HttpRequest, exc: RequestValidationError) -> JSONResponse:
        return _error_response(request, ApiError(400, "invalid request parameters"))

    app.state.api_keys = keys
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    if not public_docs:

        @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(authorize)])
        async def openapi() -> dict[str, Any]:
            """The OpenAPI schema, for callers with a key."""
            return app.openapi()

    gate = RequestGate(settings.max_concurrent_requests, settings.request_timeout)

    async def audio_request(request: HttpRequest, task: str) -> Response:
        with gate.admit():  # before the upload is read: a busy server reads no bodies
            return await transcribe_form(request, task)

    async def transcribe_form(request: HttpRequest, task: str) -> Response:
        form = await read_form(request, limit, timeout=body_timeout)
        audio = _upload(form, missing="the 'file' field is missing")
        if form.get("model") is None:  # OpenAI requires it; its SDKs always send it
            raise ApiError(
                400,
                f"the 'model' field is missing ({oa.OPENAI_ALIAS!r} is this server's default)",
                param="model",
                code=MISSING,
            )
        fields = _form_fields(form)
        fmt = oa.response_format(form.get("response_format"))
        grains = oa.granularities(fields[1]("timestamp_granularities[]"))
        if grains and fmt != "verbose_json":
            raise ApiError(
                400,
                "timestamp_granularities[] needs response_format=verbose_json",
                param="timestamp_granularities",
                code="invalid_value",
            )
        options = oa.build_options(fields, settings, task=task)
        transcript = await gate.run(request, lambda: client.atranscribe(audio, options=options))
        return oa.render(transcript, fmt, task=task, grains=grains)

    @v1.post("/audio/transcriptions")
    async def transcriptions(request: HttpRequest) -> Response:
        """OpenAI's transcription endpoint."""
        return await audio_request(request, "transcribe")

    @v1.post("/audio/translations")
    async def translations(request: HttpRequest) -> Response:
        """OpenAI's translation endpoint (speech in any language -> English text)."""
        return await audio_request(request, "translate")

    @v1.get("/models")
    async def models() -> dict[str, Any]:
        """OpenAI's model list: ``whisper-1`` (the default) and every served model."""
        names = (oa.OPENAI_ALIAS, *oa.served_models(settings))
        return {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "created": 0, "owned_by": "whisper-modal"}
                for n in names
            ],
        }

    @v1.get("/models/{model}")
    async def model(model: str) -> dict[str, Any]:
        """One model of the list (OpenAI's retrieve), or 404 ``model_not_found``."""
        if model not in (oa.OPENAI_ALIAS, *oa.served_models(settings)):
            raise ApiError(
                404, f"the model {shorten(model)!r} does not exist here", code="model_not_found"
            )
        return {"id": model, "object": "model", "created": 0, "owned_by": "whisper-modal"}

    @v1.post("/jobs", status_code=202)
    async def submit_job(request: HttpRequest, owner: Owner) -> JSONResponse:
        """Accept a job: multipart upload, or JSON naming an ``s3://`` key."""
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            data = await read_json(request, min(limit, MAX_JSON_BYTES), timeout=body_timeout)
            fields = oa.json_fields(data)
            audio, s3_uri = None, fields[0]("s3_uri")
            if not isinstance(s3_uri, str) or not s3_uri.startswith("s3://"):
                raise ApiError(400, 'a JSON job needs "s3_uri": "s3://bucket/key"', param="s3_uri")
        else:
            form = await read_form(request, limit, timeout=body_timeout)
            fields, s3_uri = _form_fields(form), form.get("s3_uri")
            audio = _upload(form, missing=None if s3_uri else "send a 'file' or an 's3_uri'")
        task = oa.text(fields[0]("task"), "task") or "transcribe"
        options = oa.build_options(fields, settings, task=task)
        webhook = oa.text(fields[0]("webhook_url"), "webhook_url")
        if webhook is not None:
            from whisper_modal.webhooks import check_destination

            try:  # resolving the host may block: off the event loop
                await asyncio.to_thread(check_destination, webhook, allow=allow_hosts)
            except ConfigurationError as exc:
                raise ApiError(400, str(exc), param="webhook_url", code="webhook_refused") from exc
        try:
            req = Request(
                options=options,
                audio=audio or None,
                s3_uri=None if audio else s3_uri,
                webhook_url=webhook,
            )
        except ConfigurationError as exc:
            raise ApiError(400, str(exc)) from exc
        view = await store.submit(req, owner=owner)
        return JSONResponse({"id": view.id, "status": view.status.value}, status_code=202)

    def job_body(view: JobView, fmt: str | None) -> Response:
        if fmt is None:
            return JSONResponse(view.to_dict())
        if fmt not in JOB_FORMATS:
            raise ApiError(400, f"format must be one of {', '.join(JOB_FORMATS)}", param="format")
        if view.transcript is None:
            raise ApiError(
                409,
                f"job {view.id} is {view.status.value}; its result is not available",
                code="job_not_ready",
            )
        t = view.transcript
        if fmt == "json":
            return JSONResponse(t.to_dict())
        if fmt == "verbose_json":
            return JSONResponse(
                oa.verbose_json(t, task="transcribe", grains=frozenset(("word", "segment")))
            )
        if fmt == "txt":
            return PlainTextResponse(t.to_txt())
        return oa.render(t, fmt, task="transcribe", grains=frozenset())

    @v1.get("/jobs/{job_id}")
    async def get_job(request: HttpRequest, job_id: str, owner: Owner) -> Response:
        """A job's status, progress, error and (once done) result."""
        return job_body(await store.get(job_id, owner=owner), request.query_params.get("format"))

    @v1.delete("/jobs/{job_id}")
    async def cancel_job(job_id: str, owner: Owner) -> Response:
        """Cancel a job (a finished one is left alone)."""
        return JSONResponse((await store.cancel(job_id, owner=owner)).to_dict())

    app.include_router(v1)
    started = time.time()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness and what this server is (no keys, secrets or paths)."""
        from whisper_modal import __version__

        return {
            "status": "ok",
            "version": __version__,
            "backend": settings.backend,
            "models": list(oa.served_models(settings)),
            "auth": keys.enabled,
            "jobs": "persistent" if isinstance(store, PersistentJobs) else "direct",
            "uptime_seconds": round(time.time() - started, 1),
        }

    return app
