"""S3 (and S3-compatible: R2, MinIO) inputs and outputs, read into memory.

* ``parse_s3_uri`` rejects malformed URIs before any network call.
* ``S3Store.get_bytes`` asks for the size first (``HeadObject``) so an object over the cap
  fails before a byte is downloaded, then streams the body into one preallocated buffer:
  peak memory is the object size plus one chunk, never two copies.
* ``S3Store`` leaves retries to our ``RetryPolicy`` (botocore: one attempt) and maps every
  botocore error through ``errors.map_boto_error``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, unquote

import attrs

from whisper_modal.errors import (
    ConfigurationError,
    StorageTooLarge,
    StorageTransient,
    map_boto_error,
)

__all__ = [
    "S3Object",
    "S3Store",
    "is_s3_uri",
    "parse_s3_uri",
    "result_keys",
    "safe_name",
    "write_results",
]

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_SAFE = re.compile(r"^[A-Za-z0-9._\-]{1,200}$")
CHUNK_BYTES = 8 * 1024 * 1024  # 8 MiB: big enough for throughput, small next to the object


def _check_bucket(bucket: str) -> None:
    if not _BUCKET.match(bucket) or ".." in bucket or re.match(r"^\d+\.\d+\.\d+\.\d+$", bucket):
        raise ConfigurationError(f"invalid S3 bucket name {bucket!r}")


def _check_key(key: str) -> None:
    if not key or len(key.encode()) > 1024 or any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise ConfigurationError(f"invalid S3 key {key!r}")


@attrs.frozen
class S3Object:
    """An object in a bucket (optionally one version of it)."""

    bucket: str = attrs.field()
    key: str = attrs.field()
    version_id: str | None = None

    @bucket.validator
    def _bucket_ok(self, _: Any, value: str) -> None:
        _check_bucket(value)

    @key.validator
    def _key_ok(self, _: Any, value: str) -> None:
        _check_key(value)

    @property
    def uri(self) -> str:
        """``s3://bucket/key`` (with ``?versionId=`` when pinned)."""
        base = f"s3://{self.bucket}/{self.key}"
        return f"{base}?versionId={self.version_id}" if self.version_id else base


def is_s3_uri(value: object) -> bool:
    """True for a string that starts with ``s3://``."""
    return isinstance(value, str) and value.startswith("s3://")


def parse_s3_uri(uri: str) -> S3Object:
    """Parse ``s3://bucket/key[?versionId=...]`` without any network call.

    Raises:
        ConfigurationError: wrong scheme, bad bucket name, empty or invalid key.
    """
    if not is_s3_uri(uri):
        raise ConfigurationError(f"not an s3:// URI: {uri!r}")
    rest = uri[len("s3://") :]
    rest, _, query = rest.partition("?")
    bucket, _, key = rest.partition("/")
    version = parse_qs(query).get("versionId", [None])[0] if query else None
    return S3Object(bucket, unquote(key), version)


def parse_prefix(uri: str) -> tuple[str, str]:
    """Parse an output prefix ``s3://bucket[/prefix/]`` into (bucket, prefix without slashes)."""
    if not is_s3_uri(uri):
        raise ConfigurationError(f"output must be an s3:// prefix, not {uri!r}")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    _check_bucket(bucket)
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ConfigurationError(f"output prefix {uri!r} may not contain '.' or '..'")
    if parts:
        _check_key("/".join(parts))
    return bucket, "/".join(parts)


def safe_name(name: str) -> str:
    """Return ``name`` if it is safe as one key segment, else raise ConfigurationError."""
    if not _SAFE.match(name) or name in (".", "..") or name.startswith("."):
        raise ConfigurationError(
            f"{name!r} is not a safe name (use letters, digits, '.', '_', '-')"
        )
    return name


_EXTENSIONS = {"json": "json", "srt": "srt", "vtt": "vtt", "txt": "txt", "tsv": "tsv", "md": "md"}


def result_keys(prefix_uri: str, job_id: str, formats: Sequence[str]) -> dict[str, S3Object]:
    """Keys ``<prefix>/<job_id>/transcript.<ext>`` for JSON plus each requested format."""
    bucket, prefix = parse_prefix(prefix_uri)
    folder = "/".join(p for p in (prefix, safe_name(job_id)) if p)
    keys = {}
    for fmt in ("json", *formats):
        if fmt not in _EXTENSIONS:
            raise ConfigurationError(f"unknown output format {fmt!r}")
        keys[fmt] = S3Object(bucket, f"{folder}/transcript.{_EXTENSIONS[fmt]}")
    return keys


class S3Store:
    """A thin, typed wrapper over a boto3 S3 client."""

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_object_bytes: int = 2 * 1024**3,
        chunk_size: int = CHUNK_BYTES,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        client: Any | None = None,
    ) -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self.max_object_bytes = max_object_bytes
        self.chunk_size = chunk_size
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._client = client

    @property
    def client(self) -> Any:
        """The boto3 client, created on first use."""
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError as exc:
                raise ConfigurationError(
                    "S3 support needs boto3: pip install 'whisper-modal[s3]'"
                ) from exc
            config = Config(
                retries={"mode": "standard", "max_attempts": 1},  # our RetryPolicy owns retries
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
            )
            self._client = boto3.client(
                "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config
            )
        return self._client

    def _extra(self, obj: S3Object) -> dict[str, str]:
        return {"VersionId": obj.version_id} if obj.version_id else {}

    def size(self, obj: S3Object) -> int:
        """The object's size in bytes (one HeadObject)."""
        try:
            head = self.client.head_object(Bucket=obj.bucket, Key=obj.key, **self._extra(obj))
        except Exception as exc:
            raise map_boto_error(exc, uri=obj.uri) from exc
        return int(head["ContentLength"])

    def get_bytes(self, obj: S3Object) -> bytearray:
        """Read the whole object into memory (checking the size cap first).

        Raises:
            StorageTooLarge: over ``max_object_bytes`` (nothing downloaded).
            StorageNotFound / StorageAccessDenied / StorageTransient / StorageError.
        """
        size = self.size(obj)
        if size > self.max_object_bytes:
            raise StorageTooLarge(
                f"{obj.uri} is {size} bytes, over the limit of {self.max_object_bytes}"
            )
        buffer = bytearray(size)
        view = memoryview(buffer)
        filled = 0
        try:
            response = self.client.get_object(Bucket=obj.bucket, Key=obj.key, **self._extra(obj))
            body = response["Body"]
            raw = getattr(body, "_raw_stream", None)
            while filled < size:
                if raw is not None and hasattr(raw, "readinto"):
                    n = raw.readinto(view[filled : filled + self.chunk_size])
                else:
                    chunk = body.read(min(self.chunk_size, size - filled))
                    n = len(chunk)
                    view[filled : filled + n] = chunk
                if not n:
                    break
                filled += n
            body.close()
        except Exception as exc:
            raise map_boto_error(exc, uri=obj.uri) from exc
        finally:
            view.release()
        if filled != size:
            raise StorageTransient(f"{obj.uri}: connection closed after {filled} of {size} bytes")
        # bytes(buffer) would copy it; the decoder reads any buffer, so hand the bytearray on.
        return buffer

    def put_bytes(
        self, obj: S3Object, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        """Write an object."""
        try:
            self.client.put_object(
                Bucket=obj.bucket, Key=obj.key, Body=data, ContentType=content_type
            )
        except Exception as exc:
            raise map_boto_error(exc, uri=obj.uri) from exc


_CONTENT_TYPES = {
    "json": "application/json",
    "srt": "application/x-subrip",
    "vtt": "text/vtt",
    "txt": "text/plain; charset=utf-8",
    "tsv": "text/tab-separated-values",
    "md": "text/markdown; charset=utf-8",
}


def write_results(
    store: S3Store, transcript: dict[str, Any], prefix_uri: str, job_id: str, formats: Sequence[str]
) -> str:
    """Store the transcript as JSON plus ``formats`` under ``<prefix>/<job_id>/``.

    Returns:
        The folder URI (``s3://bucket/prefix/job_id/``).
    """
    from whisper_modal.formats import write
    from whisper_modal.results import Transcript

    keys = result_keys(prefix_uri, job_id, formats)
    folder = keys["json"].key.rsplit("/", 1)[0]
    location = f"s3://{keys['json'].bucket}/{folder}/"
    document = dict(transcript, output_location=location)
    parsed = Transcript.from_dict(document)
    for fmt, obj in keys.items():
        body = (
            json.dumps(document, ensure_ascii=False, indent=2)
            if fmt == "json"
            else write(parsed, fmt)
        )
        store.put_bytes(obj, body.encode("utf-8"), _CONTENT_TYPES[fmt])
    return location
