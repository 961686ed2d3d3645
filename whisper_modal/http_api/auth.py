"""Bearer API keys: ``Authorization: Bearer <key>``, compared in constant time, with owners.

Keys come from ``WHISPER_MODAL_API_KEYS``, comma-separated; on Modal, from the app's
``modal.Secret``. An entry is ``owner:key`` or a bare ``key``. Each job belongs to the owner
of the key that submitted it, and only that owner's keys can read or cancel it (another
owner gets 404, as for a job that does not exist). Keys of one owner share its jobs, so a
key is rotated by serving ``alice:old,alice:new`` for a while. A bare key is its own owner.
Jobs record a hash of the owner, never a key; neither the keys nor the presented header
are ever logged or echoed in an error.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from whisper_modal.http_api.errors import ApiError

__all__ = ["ApiKeys", "owner_hash"]


def owner_hash(owner: str) -> str:
    """The stored identity of an owner: 32 hex digits, from which no key can be read back."""
    return hashlib.sha256(b"whisper-modal owner\0" + owner.encode()).hexdigest()[:32]


def _parse(entry: str) -> tuple[bytes, str]:
    """``owner:key`` -> (key, owner hash); a bare key is its own owner."""
    owner, sep, key = entry.partition(":")
    if not sep:
        key, owner = entry, "key\0" + entry
    return key.strip().encode(), owner_hash(owner.strip())


class ApiKeys:
    """The accepted keys; ``check(header)`` returns the caller's owner or raises a 401.

    Args:
        keys: entries ``owner:key`` or ``key`` (empty with ``required=False``: no
            authentication, and every caller is the same anonymous owner).
        required: refuse every request when no key is configured (a deployment that must
            not be open by accident); the 401 then says what to configure.
    """

    def __init__(self, keys: Iterable[str], *, required: bool = False) -> None:
        parsed = [_parse(k.strip()) for k in keys if k.strip()]
        self._keys = tuple((key, owner) for key, owner in parsed if key)
        self.required = required

    def __repr__(self) -> str:
        return f"ApiKeys(<{len(self._keys)} keys>)"  # never the keys themselves

    @property
    def enabled(self) -> bool:
        """True when requests must carry a key."""
        return bool(self._keys) or self.required

    def check(self, authorization: str | None) -> str | None:
        """Accept or refuse one request's ``Authorization`` header.

        Returns:
            The owner hash of the matching key (None when authentication is off).

        Raises:
            ApiError: 401 with OpenAI's ``invalid_api_key`` code.
        """
        if not self.enabled:
            return None
        if not self._keys:
            raise _unauthorized("this server has no API keys configured (WHISPER_MODAL_API_KEYS)")
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise _unauthorized(
                "missing API key: send 'Authorization: Bearer <key>' (OpenAI SDK: api_key=)"
            )
        candidate = presented.strip().encode()
        owner: str | None = None
        for key, key_owner in self._keys:  # every key is compared: no early exit, no timing hint
            if hmac.compare_digest(candidate, key):
                owner = key_owner
        if owner is None:
            raise _unauthorized("incorrect API key provided")
        return owner


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
