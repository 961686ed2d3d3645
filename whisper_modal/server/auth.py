"""Bearer API keys: ``Authorization: Bearer <key>``, compared in constant time.

Keys come from ``WHISPER_MODAL_API_KEYS`` (comma-separated, so a key can be rotated by
serving the old and the new one for a while); on Modal, from the app's ``modal.Secret``.
Neither the keys nor the presented header are ever logged or echoed in an error.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from whisper_modal.server.errors import ApiError

__all__ = ["ApiKeys"]


class ApiKeys:
    """The accepted keys; ``check(header)`` raises a 401 ``ApiError`` unless one matches.

    Args:
        keys: the accepted keys (empty with ``required=False``: no authentication).
        required: refuse every request when no key is configured (a deployment that must
            not be open by accident); the 401 then says what to configure.
    """

    def __init__(self, keys: Iterable[str], *, required: bool = False) -> None:
        self._keys = tuple(k.encode() for k in keys if k)
        self.required = required

    def __repr__(self) -> str:
        return f"ApiKeys(<{len(self._keys)} keys>)"  # never the keys themselves

    @property
    def enabled(self) -> bool:
        """True when requests must carry a key."""
        return bool(self._keys) or self.required

    def check(self, authorization: str | None) -> None:
        """Accept or refuse one request's ``Authorization`` header.

        Raises:
            ApiError: 401 with OpenAI's ``invalid_api_key`` code.
        """
        if not self.enabled:
            return
        if not self._keys:
            raise _unauthorized("this server has no API keys configured (WHISPER_MODAL_API_KEYS)")
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise _unauthorized(
                "missing API key: send 'Authorization: Bearer <key>' (OpenAI SDK: api_key=)"
            )
        candidate = presented.strip().encode()
        matched = False
        for key in self._keys:  # every key is compared: no early exit, no timing hint
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise _unauthorized("incorrect API key provided")


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
