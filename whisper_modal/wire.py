"""The wire contract: the one request type that crosses from a client to a backend.

A ``Request`` is what the client builds (``Client.build_request``) and every backend
takes; ``Request.to_wire()`` is the plain dict the Modal container receives (bytes, str,
numbers, lists, dicts only) and ``Request.from_wire`` validates it again on the other
side, refusing a newer major ``WIRE_VERSION``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from whisper_modal.errors import ConfigurationError
from whisper_modal.options import TranscribeOptions

__all__ = ["WIRE_VERSION", "Request"]

#: version of the request dict; the container refuses newer major versions
WIRE_VERSION = 1


def _formats(value: Sequence[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class Request:
    """One transcription request: audio (bytes or an S3 URI), options, delivery.

    Exactly one of ``audio`` and ``s3_uri`` is set. ``output`` is an ``s3://`` prefix for
    result delivery; ``webhook_url`` gets a signed POST when the job ends; ``formats`` are
    extra writers (besides JSON) stored next to the result.
    """

    options: TranscribeOptions
    audio: bytes | None = attrs.field(
        default=None, repr=lambda b: f"<{len(b)} bytes>" if b else "None"
    )
    s3_uri: str | None = None
    output: str | None = None
    webhook_url: str | None = attrs.field(default=None, repr=False)  # may hold tokens
    formats: tuple[str, ...] = attrs.field(default=(), converter=_formats)
    client_job_id: str | None = None  # id the client chose (local jobs, idempotent delivery)
    # the id the caller reads the job by when it is not the backend's (the HTTP API's
    # job_...): the webhook's job_id and its transcript's name the job by it
    public_job_id: str | None = None

    def __attrs_post_init__(self) -> None:
        if (self.audio is None) == (self.s3_uri is None):
            raise ConfigurationError("a request needs exactly one of audio bytes or an s3:// URI")
        if self.webhook_url is not None and not self.webhook_url.startswith(
            ("http://", "https://")
        ):
            raise ConfigurationError("webhook_url must be an http:// or https:// URL")

    @property
    def size_bytes(self) -> int:
        """Bytes of audio carried inline (0 for S3 inputs)."""
        return len(self.audio) if self.audio is not None else 0

    def to_wire(self) -> dict[str, Any]:
        """Return the plain dict sent to the container."""
        return {
            "wire_version": WIRE_VERSION,
            "options": self.options.to_dict(),
            "audio": self.audio,
            "s3_uri": self.s3_uri,
            "output": self.output,
            "webhook_url": self.webhook_url,
            "formats": list(self.formats),
            "client_job_id": self.client_job_id,
            # only when set: the plain wire stays what an app deployed before it reads
            **({"public_job_id": self.public_job_id} if self.public_job_id else {}),
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Request:
        """Validate and rebuild a request from ``to_wire`` output.

        Raises:
            ConfigurationError: newer wire version, missing or invalid fields.
        """
        if not isinstance(data, Mapping):
            raise ConfigurationError("a request must be a dict")
        version = int(data.get("wire_version", WIRE_VERSION))
        if version > WIRE_VERSION:
            raise ConfigurationError(
                f"request wire version {version} is newer than this app ({WIRE_VERSION}); "
                "redeploy: whisper-modal deploy"
            )
        audio = data.get("audio")
        if audio is not None and not isinstance(audio, bytes | bytearray | memoryview):
            raise ConfigurationError("request audio must be bytes")
        return cls(
            options=TranscribeOptions.from_dict(data.get("options") or {}),
            audio=bytes(audio) if audio is not None else None,
            s3_uri=data.get("s3_uri"),
            output=data.get("output"),
            webhook_url=data.get("webhook_url"),
            formats=tuple(data.get("formats") or ()),
            client_job_id=data.get("client_job_id"),
            public_job_id=data.get("public_job_id"),
        )
