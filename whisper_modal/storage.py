"""S3 (and S3-compatible: R2, MinIO) inputs and outputs, read into memory.

* ``parse_s3_uri`` rejects malformed URIs before any network call. Keys are taken
  literally, as the AWS CLI does (``%20`` is three characters, not a space), so
  ``parse_s3_uri(obj.uri) == obj`` for every object.
* ``S3Store.get_bytes`` asks for the size first (``HeadObject``) so an object over the cap
  fails before a byte of it is downloaded, then streams the body chunk by chunk into one
  preallocated buffer that becomes the returned ``bytes`` without a copy. Peak memory is
  the object size plus one chunk (8 MiB by default), never two copies of the object.
* The read is pinned to the ETag the size came from (``If-Match``): an object replaced
  between the two requests fails as ``StorageTransient`` (retrying re-reads the size)
  instead of yielding a mix of two versions.
* ``S3Store`` makes one attempt per call (botocore's own retries are off) and maps every
  botocore error through ``errors.map_boto_error``: a transient fault is
  ``StorageTransient``, which the client's ``RetryPolicy`` retries where the whole call is
  retried (S3 inputs staged or read by the client); inside a container a read fails the
  job with that typed error.
* ``safe_name`` admits only names made of ``[A-Za-z0-9._-]``, so no caller-supplied id
  can climb out of a prefix (``delivery.result_keys`` builds output keys with it).

Writing results (S3 outputs, webhooks) is ``whisper_modal.delivery``.
"""

from __future__ import annotations

import io
import re
from typing import Any

import attrs

from whisper_modal.errors import (
    ConfigurationError,
    StorageTooLarge,
    StorageTransient,
    map_boto_error,
)

__all__ = [
    "CHUNK_BYTES",
    "S3Object",
    "S3Store",
    "is_s3_uri",
    "parse_s3_prefix",
    "parse_s3_uri",
    "safe_name",
]

CHUNK_BYTES = 8 * 1024 * 1024  # 8 MiB: big enough for throughput, small next to the object
MAX_OBJECT_BYTES = 2 * 1024**3  # 2 GiB: about 18 hours of 256 kbit/s mp3

# S3 bucket naming rules (general purpose buckets): 3-63 characters of lowercase letters,
# digits, '.' and '-', starting and ending with a letter or digit.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
_SAFE = re.compile(r"[A-Za-z0-9._\-]{1,200}")
_VERSION_MARK = "?versionId="
_MAX_KEY_BYTES = 1024  # S3's limit on a key, in UTF-8 bytes


def _check_bucket(bucket: str) -> None:
    if (
        not _BUCKET.fullmatch(bucket)
        or ".." in bucket
        or ".-" in bucket
        or "-." in bucket
        or _IPV4.fullmatch(bucket)
        or bucket.startswith(_RESERVED_PREFIXES)
        or bucket.endswith(_RESERVED_SUFFIXES)
    ):
        raise ConfigurationError(
            f"invalid S3 bucket name {bucket!r} (3-63 characters: a-z, 0-9, '.', '-')"
        )


def _has_control(text: str) -> bool:
    # C0, DEL and C1 controls: S3 stores them, but they break logs, XML listings and shells
    return any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text)


def _check_key(key: str) -> None:
    if not key or len(key.encode("utf-8", "surrogatepass")) > _MAX_KEY_BYTES or _has_control(key):
        raise ConfigurationError(
            f"invalid S3 key {key!r} (1-{_MAX_KEY_BYTES} bytes, no control characters)"
        )


def _check_version(version_id: str | None) -> None:
    if version_id is not None and (not version_id or _has_control(version_id)):
        raise ConfigurationError(f"invalid S3 version id {version_id!r}")


@attrs.frozen
class S3Object:
    """An object in a bucket (optionally one version of it); validated on construction.

    Raises:
        ConfigurationError: invalid bucket name, empty/too long key, control characters.
    """

    bucket: str = attrs.field()
    key: str = attrs.field()
    #: pin one version of a versioned bucket; None reads the current version
    version_id: str | None = attrs.field(default=None)

    @bucket.validator
    def _bucket_ok(self, _: Any, value: str) -> None:
        _check_bucket(value)

    @key.validator
    def _key_ok(self, _: Any, value: str) -> None:
        _check_key(value)

    @version_id.validator
    def _version_ok(self, _: Any, value: str | None) -> None:
        _check_version(value)

    @property
    def uri(self) -> str:
        """``s3://bucket/key`` (with ``?versionId=`` when pinned)."""
        base = f"s3://{self.bucket}/{self.key}"
        return f"{base}{_VERSION_MARK}{self.version_id}" if self.version_id else base


def is_s3_uri(value: object) -> bool:
    """Return True for a string that starts with ``s3://`` (well-formed or not).

    Args:
        value: anything a caller passed as audio or output.

    Returns:
        Whether ``value`` is meant as an S3 URI; ``parse_s3_uri`` then validates it.
    """
    return isinstance(value, str) and value.startswith("s3://")


def parse_s3_uri(uri: str) -> S3Object:
    """Parse ``s3://bucket/key[?versionId=...]`` without any network call.

    The key is taken literally (no percent-decoding). Only a trailing ``?versionId=``
    is read as a query; any other ``?`` belongs to the key.

    Args:
        uri: the URI.

    Returns:
        The ``S3Object`` it names.

    Raises:
        ConfigurationError: wrong scheme, bad bucket name, empty or invalid key or version.
    """
    if not is_s3_uri(uri):
        raise ConfigurationError(f"not an s3:// URI: {uri!r}")
    rest = uri[len("s3://") :]
    version: str | None = None
    if _VERSION_MARK in rest:
        rest, _, version = rest.rpartition(_VERSION_MARK)
    bucket, slash, key = rest.partition("/")
    if not slash or not key:
        raise ConfigurationError(f"S3 URI {uri!r} names no object (use s3://bucket/key)")
    return S3Object(bucket, key, version)


def parse_s3_prefix(uri: str) -> tuple[str, str]:
    """Parse an output prefix ``s3://bucket[/prefix[/]]`` without any network call.

    Args:
        uri: the prefix URI; the bucket root (``s3://bucket/``) is allowed.

    Returns:
        ``(bucket, prefix)`` with the prefix's leading/trailing/doubled slashes removed.

    Raises:
        ConfigurationError: not s3://, bad bucket, a ``.``/``..`` segment, control characters.
    """
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
    """Check that ``name`` is safe as one key segment (a job id, a file stem).

    Args:
        name: 1-200 characters of ``[A-Za-z0-9._-]``, not starting with a dot.

    Returns:
        ``name`` unchanged.

    Raises:
        ConfigurationError: anything else (``..``, ``/``, ``\\``, spaces, control characters).
    """
    if not isinstance(name, str) or not _SAFE.fullmatch(name) or name.startswith("."):
        raise ConfigurationError(
            f"{name!r} is not a safe name (use 1-200 letters, digits, '.', '_', '-'; "
            "no leading '.')"
        )
    return name


class S3Store:
    """A thin, typed wrapper over a boto3 S3 client; every error is a ``StorageError``.

    Args:
        endpoint_url: an S3-compatible endpoint (MinIO, R2, moto); None for AWS.
        region: the region; None uses boto3's resolution (``AWS_DEFAULT_REGION``...).
        max_object_bytes: objects larger than this are refused before download.
        chunk_size: bytes per read while streaming a body (the only extra memory).
        connect_timeout: seconds to open a connection.
        read_timeout: seconds without a byte from the server before giving up.
        client: an existing boto3 S3 client to use instead of creating one.
    """

    def __init__(
        self,
        endpoint_url: str | None = None,
        region: str | None = None,
        *,
        max_object_bytes: int = MAX_OBJECT_BYTES,
        chunk_size: int = CHUNK_BYTES,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        client: Any | None = None,
    ) -> None:
        if max_object_bytes < 0 or chunk_size <= 0:
            raise ConfigurationError("max_object_bytes must be >= 0 and chunk_size > 0")
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ConfigurationError("S3 timeouts must be positive")
        self.endpoint_url = endpoint_url
        self.region = region
        self.max_object_bytes = max_object_bytes
        self.chunk_size = chunk_size
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._client = client

    @property
    def client(self) -> Any:
        """The boto3 client, created on first use.

        Raises:
            ConfigurationError: boto3 is not installed.
        """
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError as exc:
                raise ConfigurationError(
                    "S3 support needs boto3: pip install 'whisper-modal[s3]'"
                ) from exc
            config = Config(
                # One attempt: our RetryPolicy owns retries. botocore's "max_attempts" counts
                # retries *after* the first request (max_attempts=1 sends two requests);
                # "total_max_attempts" counts every request.
                retries={"mode": "standard", "total_max_attempts": 1},
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
            )
            self._client = boto3.client(
                "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config
            )
        return self._client

    @staticmethod
    def _version(obj: S3Object) -> dict[str, str]:
        return {"VersionId": obj.version_id} if obj.version_id else {}

    def _head(self, obj: S3Object) -> dict[str, Any]:
        try:
            head: dict[str, Any] = self.client.head_object(
                Bucket=obj.bucket, Key=obj.key, **self._version(obj)
            )
        except Exception as exc:
            raise map_boto_error(exc, uri=obj.uri) from exc
        return head

    def size(self, obj: S3Object) -> int:
        """Return the object's size in bytes (one ``HeadObject``).

        Raises:
            StorageNotFound, StorageAccessDenied, StorageTransient, StorageError.
        """
        return int(self._head(obj)["ContentLength"])

    def get_bytes(self, obj: S3Object) -> bytes:
        """Read the whole object into memory, checking the size cap first.

        Peak memory: the object's size plus one ``chunk_size`` read buffer. The body is
        streamed into a ``BytesIO`` preallocated to the object's size, whose buffer
        CPython hands over as the returned ``bytes`` without copying.

        Args:
            obj: the object.

        Returns:
            The object's bytes.

        Raises:
            StorageTooLarge: over ``max_object_bytes`` (no GetObject is sent).
            StorageNotFound, StorageAccessDenied: permanent.
            StorageTransient: throttling, 5xx, timeouts, a dropped connection or a short
                body, or the object changed while it was read.
            StorageError: any other store failure.
        """
        head = self._head(obj)
        size = int(head["ContentLength"])
        if size > self.max_object_bytes:
            raise StorageTooLarge(
                f"{obj.uri} is {size} bytes, over the limit of {self.max_object_bytes}"
            )
        pin = {"IfMatch": head["ETag"]} if head.get("ETag") else {}
        buffer = io.BytesIO()
        if size:
            buffer.seek(size - 1)
            buffer.write(b"\0")  # one allocation of exactly `size` bytes
        filled = 0
        try:
            response = self.client.get_object(
                Bucket=obj.bucket, Key=obj.key, **self._version(obj), **pin
            )
            body = response["Body"]
            try:
                with buffer.getbuffer() as view:
                    while filled < size:
                        n = body.readinto(view[filled : filled + self.chunk_size])
                        if not n:
                            break
                        filled += n
            finally:
                body.close()
        except Exception as exc:
            raise map_boto_error(exc, uri=obj.uri) from exc
        if filled != size:
            raise StorageTransient(f"{obj.uri}: connection closed after {filled} of {size} bytes")
        return buffer.getvalue()

    def put_bytes(
        self,
        obj: S3Object,
        data: bytes | bytearray | memoryview,
        content_type: str = "application/octet-stream",
    ) -> None:
        """Write an object (replacing any current version).

        Args:
            obj: where to write (``version_id`` is ignored: S3 assigns a new one).
            data: the body.
            content_type: the ``Content-Type`` stored with the object.

        Raises:
            StorageNotFound (no such bucket), StorageAccessDenied, StorageTransient,
            StorageError.
        """
        try:
            self.client.put_object(
                Bucket=obj.bucket, Key=obj.key, Body=bytes(data), ContentType=content_type
            )
        except Exception as exc:
            raise map_boto_error(exc, uri=obj.uri) from exc
