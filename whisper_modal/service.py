"""Handle one request end to end: fetch audio, transcribe, deliver, notify.

The Modal container (``app.py``) and the local backend both call ``Service.handle`` with
the request's wire dict, so S3 inputs, result delivery and webhooks behave the same on
both. Only the engine and the credentials differ.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from whisper_modal.backends.base import Request
from whisper_modal.config import Settings
from whisper_modal.engine.transcriber import Engine
from whisper_modal.errors import WhisperModalError, map_engine_error

__all__ = ["Service"]

log = logging.getLogger("whisper_modal.service")


class Service:
    """Runs requests on one engine with one set of settings (credentials, secrets)."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self._store: Any = None

    def store(self) -> Any:
        """The S3 store, created on first use (boto3 is optional)."""
        if self._store is None:
            from whisper_modal.storage import S3Store

            self._store = S3Store(
                endpoint_url=self.settings.s3_endpoint_url,
                region=self.settings.s3_region,
                max_object_bytes=self.settings.max_object_bytes,
            )
        return self._store

    def handle(
        self, wire: dict[str, Any] | Request, *, job_id: str | None = None
    ) -> dict[str, Any]:
        """Run one request and return the transcript dict.

        A webhook (when asked for) is sent on success and on failure; the original error
        is re-raised after a failure notification.

        Raises:
            WhisperModalError: any typed failure (audio, storage, configuration, engine).
        """
        request = wire if isinstance(wire, Request) else Request.from_wire(wire)
        job_id = job_id or request.client_job_id
        started = time.perf_counter()
        try:
            result = self._run(request, job_id)
        except Exception as exc:
            error = map_engine_error(exc)
            self._notify(request, job_id, started, error=error)
            if error is exc:
                raise
            raise error from exc
        self._notify(request, job_id, started, result=result)
        return result

    def handle_batch(self, wires: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run many requests, packing short plain ones into shared batched passes.

        Requests with S3 input, result delivery or a webhook run one by one through
        ``handle``. Returns one dict per request, in order: a transcript dict, or
        ``{"error": error_to_dict(exc)}`` for a request that failed (the others still run).
        """
        from whisper_modal.errors import error_to_dict

        results: list[dict[str, Any] | None] = [None] * len(wires)
        groups: dict[str, list[tuple[int, Request]]] = {}
        for i, wire in enumerate(wires):
            try:
                request = Request.from_wire(wire)
            except Exception as exc:
                results[i] = {"error": error_to_dict(map_engine_error(exc))}
                continue
            plain = request.audio is not None and not (request.output or request.webhook_url)
            if not plain:
                try:
                    results[i] = self.handle(request)
                except Exception as exc:
                    results[i] = {"error": error_to_dict(map_engine_error(exc))}
                continue
            key = repr(sorted(request.options.to_dict().items()))
            groups.setdefault(key, []).append((i, request))
        for members in groups.values():
            audios = [r.audio for _, r in members]
            packed = self.engine.transcribe_packed(audios, members[0][1].options)  # type: ignore[arg-type]
            for (i, request), outcome in zip(members, packed, strict=True):
                if isinstance(outcome, BaseException):
                    results[i] = {"error": error_to_dict(map_engine_error(outcome))}
                else:
                    results[i] = dict(outcome, job_id=request.client_job_id)
        return [
            r if r is not None else {"error": {"type": "RemoteExecutionError", "message": "lost"}}
            for r in results
        ]

    def _run(self, request: Request, job_id: str | None) -> dict[str, Any]:
        audio = request.audio
        if request.s3_uri is not None:
            from whisper_modal.storage import parse_s3_uri

            audio = self.store().get_bytes(parse_s3_uri(request.s3_uri))
        assert audio is not None
        result = self.engine.transcribe(audio, request.options)
        result["job_id"] = job_id
        if request.output is not None:
            from whisper_modal.storage import write_results

            result["output_location"] = write_results(
                self.store(),
                result,
                request.output,
                # the client's id, so a retried submit writes the same keys (idempotent)
                request.client_job_id or job_id or "result",
                request.formats,
            )
        return result

    def _notify(
        self,
        request: Request,
        job_id: str | None,
        started: float,
        *,
        result: dict[str, Any] | None = None,
        error: WhisperModalError | None = None,
    ) -> None:
        if request.webhook_url is None:
            return
        from whisper_modal.webhooks import WebhookSender, build_payload

        secret = self.settings.webhook_secret
        if not secret:
            log.warning("webhook skipped: no WHISPER_MODAL_WEBHOOK_SECRET to sign it with")
            return
        payload = build_payload(
            job_id or "",
            "succeeded" if error is None else "failed",
            duration_seconds=time.perf_counter() - started,
            result_location=(result or {}).get("output_location"),
            error=None if error is None else f"{type(error).__name__}: {error}",
            transcript=result if result is not None and request.output is None else None,
            client_job_id=request.client_job_id,
        )
        delivery = WebhookSender(secret).send(request.webhook_url, payload)
        log.info(
            "webhook delivered" if delivery.ok else "webhook failed",
            extra={"event": "webhook", "job_id": job_id, "attempts": delivery.attempts},
        )
