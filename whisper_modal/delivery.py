"""Result delivery, once per job: S3 outputs and the signed webhook.

The container and the local backend both deliver through ``Service``, which calls these
after the engine: ``write_results`` stores the transcript (and the requested formats) under
``<prefix>/<job_id>/``, other formats first and ``transcript.json`` last, so a reader that
finds the JSON knows every file is there; ``notify`` sends the webhook, on success and on
failure. Both are idempotent per ``client_job_id`` (same keys, same id in the payload), so
a retried job never leaves two different results.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

from whisper_modal.config import Settings, split_list
from whisper_modal.errors import ConfigurationError, WhisperModalError
from whisper_modal.formats import FORMATS, format_from_path, write
from whisper_modal.metrics import log_event
from whisper_modal.results import Transcript
from whisper_modal.storage import S3Object, S3Store, parse_s3_prefix, safe_name
from whisper_modal.webhooks import WebhookSender, build_payload, check_destination
from whisper_modal.wire import Request

__all__ = ["WebhookQueue", "notify", "result_keys", "write_results"]

log = logging.getLogger("whisper_modal.delivery")


def _canonical_format(fmt: str) -> str:
    canonical = format_from_path("transcript." + str(fmt).lower().removeprefix("."))
    if canonical is None:
        raise ConfigurationError(f"unknown output format {fmt!r}; use one of {', '.join(FORMATS)}")
    return canonical


def result_keys(
    prefix: S3Object | str, job_id: str, formats: Sequence[str] = ()
) -> dict[str, S3Object]:
    """The keys ``<prefix>/<job_id>/transcript.<ext>``: JSON plus each requested format.

    Args:
        prefix: ``s3://bucket/prefix/`` (or an ``S3Object`` whose key is the prefix).
        job_id: the job's id; must pass ``safe_name``.
        formats: names from ``formats.FORMATS`` (``markdown`` and a leading dot allowed).

    Returns:
        Canonical format name -> object, ``"json"`` first; duplicates collapse.

    Raises:
        ConfigurationError: bad prefix, unsafe job id, unknown format.
    """
    if isinstance(prefix, S3Object):
        bucket, folder = parse_s3_prefix(f"s3://{prefix.bucket}/{prefix.key}")
    else:
        bucket, folder = parse_s3_prefix(prefix)
    folder = "/".join(p for p in (folder, safe_name(job_id)) if p)
    keys: dict[str, S3Object] = {}
    for fmt in ("json", *formats):
        canonical = _canonical_format(fmt)
        keys[canonical] = S3Object(bucket, f"{folder}/transcript.{canonical}")
    return keys


_CONTENT_TYPES = {
    "json": "application/json",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "txt": "text/plain; charset=utf-8",
    "tsv": "text/tab-separated-values; charset=utf-8",
    "md": "text/markdown; charset=utf-8",
}


def write_results(
    store: S3Store,
    transcript: Transcript,
    prefix_uri: str,
    job_id: str,
    formats: Sequence[str] = (),
) -> str:
    """Store a transcript as ``transcript.json`` plus ``formats`` under ``<prefix>/<job_id>/``.

    The other formats are written first and ``transcript.json`` last, so a reader that
    finds the JSON knows every requested file is there. Writing again with the same
    ``job_id`` overwrites the same keys (a retried job is idempotent).

    Args:
        store: the store to write with.
        transcript: the result to store.
        prefix_uri: ``s3://bucket/prefix/``.
        job_id: the folder name; must pass ``safe_name``.
        formats: extra formats (``srt``, ``vtt``, ``txt``, ``tsv``, ``md``).

    Returns:
        The folder URI, ``s3://bucket/prefix/job_id/``; the stored documents carry it as
        ``output_location``.

    Raises:
        ConfigurationError: bad prefix, unsafe job id, unknown format.
        StorageError: the store refused a write (see ``S3Store.put_bytes``).
    """
    keys = result_keys(prefix_uri, job_id, formats)
    json_obj = keys.pop("json")
    location = f"s3://{json_obj.bucket}/{json_obj.key.rsplit('/', 1)[0]}/"
    stored = transcript.with_changes(output_location=location)
    for fmt, obj in keys.items():
        store.put_bytes(obj, write(stored, fmt).encode("utf-8"), _CONTENT_TYPES[fmt])
    body = json.dumps(stored.to_dict(), ensure_ascii=False, indent=2) + "\n"
    store.put_bytes(json_obj, body.encode("utf-8"), _CONTENT_TYPES["json"])
    return location


def notify(
    settings: Settings,
    request: Request,
    job_id: str | None,
    started: float,
    *,
    result: Transcript | None = None,
    error: WhisperModalError | None = None,
) -> None:
    """Send the request's webhook (if it has one) for a finished job.

    Args:
        settings: holds the signing secret (no secret: the webhook is skipped, with a warning)
            and the webhook allow-list: a URL resolving to a loopback, private, link-local
            or metadata address is refused (logged, not sent) unless it is listed.
        request: the job's request (``webhook_url``, ``output``, ``client_job_id``).
        job_id: the backend's id for the job; the payload names it by
            ``request.public_job_id`` instead when that is set (a server's own id).
        started: ``time.perf_counter()`` when the job started (for ``duration_seconds``).
        result: the transcript, on success. error: the typed error, on failure.
    """
    if request.webhook_url is None:
        return
    job_id = request.public_job_id or job_id
    if result is not None and job_id:
        result = result.with_changes(job_id=job_id)
    secret = settings.webhook_secret
    if not secret:
        log.warning("webhook skipped: no WHISPER_MODAL_WEBHOOK_SECRET to sign it with")
        return
    try:  # the SSRF guard again at delivery: the caller may be untrusted, and DNS may change
        check_destination(request.webhook_url, allow=split_list(settings.webhook_allow_hosts))
    except ConfigurationError as exc:
        log_event(log, "webhook_refused", level=logging.WARNING, job_id=job_id, reason=str(exc))
        return
    payload = build_payload(
        job_id or "",
        "succeeded" if error is None else "failed",
        duration_seconds=time.perf_counter() - started,
        result_location=None if result is None else result.output_location,
        error=None if error is None else f"{type(error).__name__}: {error}",
        # the transcript rides along unless it was stored in S3 (then the location does)
        transcript=result.to_dict() if result is not None and request.output is None else None,
        client_job_id=request.client_job_id,
    )
    delivery = WebhookSender(secret).send(request.webhook_url, payload)
    log_event(log, "webhook", job_id=job_id, ok=delivery.ok, attempts=delivery.attempts)


class WebhookQueue:
    """Webhook deliveries on their own bounded queue and worker threads.

    A receiver that hangs costs a worker up to the sender's retries (5 attempts of 10 s
    plus backoff, about a minute), never a job thread. ``put`` blocks while ``max_pending``
    deliveries wait (backpressure on the jobs that finish, no webhook dropped).

    Args:
        workers: deliveries in flight at once.
        max_pending: deliveries waiting beyond those.
    """

    def __init__(self, *, workers: int = 4, max_pending: int = 256) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(max_pending)
        self._threads = [
            threading.Thread(target=self._work, name=f"whisper-modal-webhook-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def put(self, deliver: Callable[[], None]) -> None:
        """Queue one delivery (a callable that sends and logs; it must not raise)."""
        self._queue.put(deliver)

    def _work(self) -> None:
        while (deliver := self._queue.get()) is not None:
            try:
                deliver()
            except Exception:  # one bad delivery must not end the worker
                log.exception("webhook delivery failed", extra={"event": "webhook_error"})

    def close(self) -> None:
        """Let the workers finish what is queued, then end (does not wait for them)."""
        for _ in self._threads:
            self._queue.put(None)
