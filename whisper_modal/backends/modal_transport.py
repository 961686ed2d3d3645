"""How bytes reach Modal: upload deadlines, staging of large audio, fail-fast reachability,
and whether a request is long enough for the app's fan-out (``audio_seconds_hint``).

Three facts about the ``modal`` client (1.6, read from its source) shape this module:

- Call arguments over ``MAX_OBJECT_SIZE_BYTES`` (2 MiB; 8 KiB for ``.spawn``) are uploaded
  to Modal's blob store *inside* ``.remote``/``.spawn`` (``modal/_utils/blob_utils.py``),
  so a fixed deadline that fits a 1 MB clip cuts off a 500 MB file mid-upload, every try.
  Deadlines here grow with the payload: ``upload_seconds`` assumes a slow 1 MiB/s uplink.
- Above ``Settings.max_upload_bytes`` (256 MiB by default) an inline upload is a poor
  bet (no progress, redone in full on each retry): the audio is put under
  ``Settings.s3_staging_prefix`` and the container reads it from there, or, without a
  staging prefix, the request is refused with a ``ConfigurationError`` naming both fixes.
- Modal's client retries a refused connection for about a minute and never says why
  meanwhile. A refused TCP connect or a failed DNS lookup is known in milliseconds, so
  ``fail_fast`` first tries a plain TCP connect to every configured server URL
  (``server_url`` may be a comma-separated fail-over list, ``modal/_utils/grpc_utils.py``),
  and gives up at once only when *every* URL is refused or unresolvable; the lookup starts
  once one answers (or after a short head start, beside the probe). A server that
  accepts and then hangs still gets the whole lookup deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar
from urllib.parse import urlparse

import attrs

from whisper_modal.audio_header import known_seconds
from whisper_modal.config import Settings
from whisper_modal.errors import BackendUnavailable, ConfigurationError
from whisper_modal.wire import Request

__all__ = [
    "MIN_UPLOAD_BYTES_PER_SECOND",
    "SPAWN_SECONDS",
    "audio_seconds_hint",
    "fail_fast",
    "server_urls",
    "spawn_deadline",
    "stage_large_audio",
    "unreachable_reason",
    "upload_seconds",
]

T = TypeVar("T")

#: how long the reachability probe runs before the lookup starts beside it (seconds)
PROBE_HEAD_START = 2.0

#: seconds for Modal to accept a job once its input is uploaded
SPAWN_SECONDS = 60.0
#: the slowest uplink deadlines are sized for: 1 MiB/s (8 Mbit/s). A deadline, not an
#: estimate: too short fails a good upload, too long only delays a real failure's report.
MIN_UPLOAD_BYTES_PER_SECOND = 1024**2
#: errors of a TCP connect that mean "nothing there" (no need to wait to know)
_DEFINITE_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH})


def upload_seconds(nbytes: int) -> float:
    """Seconds allowed for uploading ``nbytes`` of call arguments at the slowest uplink."""
    return nbytes / MIN_UPLOAD_BYTES_PER_SECOND


def spawn_deadline(nbytes: int, settings: Settings) -> float:
    """The deadline for ``.spawn`` of ``nbytes`` of audio: lookup + upload + acceptance."""
    return SPAWN_SECONDS + settings.connect_timeout + upload_seconds(nbytes)


async def stage_large_audio(request: Request, settings: Settings) -> Request:
    """Return ``request`` itself, or (audio over ``max_upload_bytes``) one reading S3.

    The object is written to ``<s3_staging_prefix>/staging/<uuid>.audio``; the app's
    secret must let the container read it. Nothing deletes it: give the prefix a
    lifecycle rule (a day is plenty).

    Raises:
        ConfigurationError: too large and no staging prefix is configured.
        StorageError: the upload to S3 failed.
    """
    if request.size_bytes <= settings.max_upload_bytes:
        return request
    if not settings.s3_staging_prefix:
        raise ConfigurationError(
            f"{_size(request.size_bytes)} of audio is over the {_size(settings.max_upload_bytes)}"
            " Modal upload limit (max_upload_bytes); set WHISPER_MODAL_S3_STAGING_PREFIX="
            "s3://bucket/prefix to stage it through S3, or pass an s3:// URI yourself"
        )
    from whisper_modal.storage import S3Object, S3Store, parse_s3_prefix

    bucket, prefix = parse_s3_prefix(settings.s3_staging_prefix)
    key = "/".join(p for p in (prefix, "staging", f"{uuid.uuid4().hex}.audio") if p)
    target = S3Object(bucket=bucket, key=key)
    store = S3Store(settings.s3_endpoint_url, settings.s3_region)
    await asyncio.to_thread(store.put_bytes, target, request.audio or b"")
    return attrs.evolve(request, audio=None, s3_uri=target.uri)


def _size(nbytes: int) -> str:
    return f"{nbytes / 1024**2:.0f} MiB" if nbytes >= 1024**2 else f"{nbytes} bytes"


def server_urls() -> list[str]:
    """The Modal server URLs worth probing (``MODAL_SERVER_URL`` / the profile's).

    Empty without credentials: then Modal's own lookup fails at once with the better
    message ("modal token new"), and a probe could only race it with a vaguer one.
    """
    import modal
    from modal.config import config

    configured = any(config.get(key) for key in ("token_id", "token_secret", "oauth_refresh_token"))
    if not configured and modal.is_local():  # a container authenticates as itself
        return []
    return [u.strip() for u in str(config.get("server_url") or "").split(",") if u.strip()]


async def _why_unreachable(url: str, timeout: float) -> str | None:
    parsed = urlparse(url)
    host = parsed.hostname
    if not host:
        return None
    port = parsed.port or (443 if parsed.scheme in ("https", "grpcs") else 80)
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return None  # slow, not absent: the caller's deadline decides
    except socket.gaierror as exc:
        return f"cannot resolve {host} ({exc.strerror or exc})"
    except OSError as exc:
        if exc.errno in _DEFINITE_ERRNOS or isinstance(exc, ConnectionRefusedError):
            return f"{host}:{port} refused the connection ({exc.strerror or exc})"
        return None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None  # something listens there


async def unreachable_reason(urls: Sequence[str], timeout: float) -> str | None:
    """Why none of ``urls`` can be reached, or None if any may be (or it is unclear).

    Args:
        urls: server URLs (``https://host[:port]``).
        timeout: seconds allowed per TCP connect.
    """
    if not urls:
        return None
    reasons = await asyncio.gather(*(_why_unreachable(u, timeout) for u in urls))
    if any(r is None for r in reasons):
        return None
    return "; ".join(r for r in reasons if r)


async def fail_fast(lookup: Callable[[], Awaitable[T]], urls: Sequence[str], timeout: float) -> T:
    """Run ``lookup()``, unless every server URL first proves unreachable.

    The probe gets a head start (``PROBE_HEAD_START`` seconds, a refused port or a failed
    DNS lookup answers in milliseconds): a lookup started and then abandoned leaves
    modal's ``_Object.hydrate`` coroutine never awaited, which Python reports at exit as a
    ``RuntimeWarning`` the user sees. A probe still undecided after the head start runs on
    beside the lookup, as before.

    Args:
        lookup: makes the Modal lookup (``lambda: cls.hydrate.aio()``); called at most once.
        urls: the server URLs to probe (``server_urls()``).
        timeout: the most a probe may take (the lookup's own deadline is the caller's).

    Raises:
        BackendUnavailable: every URL refused the connection or failed DNS.
    """
    probe = asyncio.ensure_future(unreachable_reason(urls, timeout))
    task: asyncio.Future[T] | None = None
    try:
        await asyncio.wait({probe}, timeout=min(PROBE_HEAD_START, timeout))
        if not probe.done():
            task = asyncio.ensure_future(lookup())
            await asyncio.wait({task, probe}, return_when=asyncio.FIRST_COMPLETED)
        if task is None or not task.done():
            reason = probe.result() if probe.done() else None
            if reason is not None:
                raise BackendUnavailable(
                    f"Modal's server cannot be reached: {reason}",
                    fix="check the network / MODAL_SERVER_URL, or use backend='local'",
                )
        if task is None:  # every URL answered, so the lookup can go
            task = asyncio.ensure_future(lookup())
        return await task  # the lookup's own answer wins whenever it is there
    finally:
        losers = [t for t in (task, probe) if t is not None and not t.done()]
        for loser in losers:
            loser.cancel()
        if losers:  # let them unwind (bounded: a DNS lookup in a thread may lag)
            await asyncio.wait(losers, timeout=1.0)


# ~16 kB/s is a generous upper bound for compressed speech: a file smaller than this many
# bytes per second of the fan-out threshold is too short to split, without decoding it
_MIN_BYTES_PER_SECOND = 2_000


def audio_seconds_hint(request: Request, settings: Settings) -> float:
    """The audio's length from its header, for deciding whether to fan out (no decoding).

    Returns ``0.0`` for a request that must not be split whatever its length: S3 input
    (its length is unknown here), or options that need the whole recording
    (``TranscribeOptions.splittable``: diarization, ``multichannel``). WAV and FLAC
    headers are read without any decoder installed; other formats need soundfile.
    Without a length (raw MP3, m4a, no soundfile) the size decides: ``inf`` when the
    bytes could hold more than ``fanout_seconds``, else ``0.0``.
    """
    if request.audio is None or not request.options.splittable:
        return 0.0
    seconds = known_seconds(request.audio)
    if seconds is not None:
        return seconds
    if len(request.audio) < settings.fanout_seconds * _MIN_BYTES_PER_SECOND:
        return 0.0
    return float("inf")
