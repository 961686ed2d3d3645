"""Handle one request end to end: fetch audio, transcribe, deliver (S3, webhook).

The Modal container (``app.py``) and the local backend both call ``Service.handle`` with
a ``Request`` (or its wire dict), so S3 inputs, result delivery and webhooks behave the same on
both. Only the engine and the credentials differ. It returns a typed ``Transcript``;
the container turns it into the wire dict (``app.py``).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from whisper_modal.config import Settings
from whisper_modal.delivery import notify, write_results
from whisper_modal.engine.transcriber import Engine
from whisper_modal.errors import (
    ConfigurationError,
    RemoteExecutionError,
    WhisperModalError,
    map_engine_error,
    outcome_of,
)
from whisper_modal.results import Transcript
from whisper_modal.storage import S3Store, parse_s3_uri
from whisper_modal.wire import Request

__all__ = ["Service"]

log = logging.getLogger("whisper_modal.service")


class Service:
    """Runs requests on one engine with one set of settings (credentials, secrets).

    ``engine=None`` makes a service that only fetches audio and delivers results: the
    app's fan-out orchestrator, which transcribes nothing itself.
    """

    def __init__(self, engine: Engine | None, settings: Settings) -> None:
        self._engine = engine
        self.settings = settings
        self._store: Any = None

    @property
    def engine(self) -> Engine:
        """The engine requests run on.

        Raises:
            ConfigurationError: this service was made without one (an orchestrator's).
        """
        if self._engine is None:
            raise ConfigurationError("this service has no engine (it only delivers results)")
        return self._engine

    def store(self) -> Any:
        """The S3 store, created on first use (boto3 is optional)."""
        if self._store is None:
            self._store = S3Store(
                endpoint_url=self.settings.s3_endpoint_url,
                region=self.settings.s3_region,
                max_object_bytes=self.settings.max_object_bytes,
            )
        return self._store

    def handle(
        self,
        wire: dict[str, Any] | Request,
        *,
        job_id: str | None = None,
        defer_notify: Callable[[Callable[[], None]], None] | None = None,
    ) -> Transcript:
        """Run one request and return its transcript.

        A webhook (when asked for) is sent on success and on failure; the original error
        is re-raised after a failure notification. ``defer_notify`` takes the sending
        instead of running it here: the local backend sends once the job is final, on its
        own workers, so a slow receiver holds up no job.

        Raises:
            WhisperModalError: any typed failure (audio, storage, configuration, engine).
        """
        request = wire if isinstance(wire, Request) else Request.from_wire(wire)
        job_id = job_id or request.client_job_id
        started = time.perf_counter()
        send = defer_notify or (lambda deliver: deliver())
        try:
            result = self._run(request, job_id)
        except Exception as exc:
            error = map_engine_error(exc)
            if request.webhook_url is not None:
                send(
                    functools.partial(notify, self.settings, request, job_id, started, error=error)
                )
            if error is exc:
                raise
            raise error from exc
        if request.webhook_url is not None:
            send(functools.partial(notify, self.settings, request, job_id, started, result=result))
        return result

    def handle_packed(self, wires: list[dict[str, Any]]) -> list[Transcript | WhisperModalError]:
        """Run many requests, packing short plain ones into shared batched passes.

        Requests with S3 input, result delivery or a webhook run one by one through
        ``handle``. Returns one outcome per request, in order: its transcript, or the typed
        error of a request that failed (the others still run).
        """
        results: list[Transcript | WhisperModalError | None] = [None] * len(wires)
        groups: dict[str, list[tuple[int, Request]]] = {}
        for i, wire in enumerate(wires):
            request = outcome_of(functools.partial(Request.from_wire, wire))
            if isinstance(request, WhisperModalError):
                results[i] = request
                continue
            plain = request.audio is not None and not (request.output or request.webhook_url)
            if not plain:
                results[i] = outcome_of(functools.partial(self.handle, request))
                continue
            key = request.options.pass_key()
            groups.setdefault(key, []).append((i, request))
        for members in groups.values():
            audios = [r.audio for _, r in members if r.audio is not None]
            packed = self.engine.transcribe_packed(audios, members[0][1].options)
            for (i, request), outcome in zip(members, packed, strict=True):
                results[i] = (
                    outcome
                    if isinstance(outcome, WhisperModalError)
                    else outcome.with_changes(job_id=request.client_job_id)
                )
        # every entry is set above; a gap must stay a gap (dropping it would shift the rest)
        missing = RemoteExecutionError("the engine returned no result")
        return [r if r is not None else missing for r in results]

    def _run(self, request: Request, job_id: str | None) -> Transcript:
        audio = self.fetch_audio(request)
        result = self.engine.transcribe(audio, request.options).with_changes(job_id=job_id)
        return self.store_results(request, result, job_id)

    def fetch_audio(self, request: Request) -> bytes:
        """The request's audio bytes: inline, or read from S3.

        Raises:
            StorageError: the S3 object is missing, denied, too large or unreachable.
        """
        if request.s3_uri is not None:
            data: bytes = self.store().get_bytes(parse_s3_uri(request.s3_uri))
            return data
        assert request.audio is not None  # a Request has exactly one of the two
        return request.audio

    def store_results(self, request: Request, result: Transcript, job_id: str | None) -> Transcript:
        """Write ``result`` under ``request.output`` when asked; returns it with the location."""
        if request.output is not None:
            location = write_results(
                self.store(),
                result,
                request.output,
                # the client's id, so a retried submit writes the same keys (idempotent)
                request.client_job_id or job_id or "result",
                request.formats,
            )
            result = result.with_changes(output_location=location)
        return result
