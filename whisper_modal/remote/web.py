"""The web function's ASGI app: the HTTP API over the deployed GPU classes."""

from __future__ import annotations

from typing import Any

__all__ = ["web_app"]


def web_app() -> Any:
    """``create_app`` for the web container: a Modal-backed client, stateless jobs.

    Without Modal's proxy auth the app must not be open by accident: with no API keys
    configured every ``/v1`` call is answered 401.
    """
    from whisper_modal.client import Client
    from whisper_modal.config import Settings
    from whisper_modal.server import create_app

    settings = Settings.resolve()  # the image's variables and the secret's keys
    return create_app(
        Client(settings, backend="modal"), jobs="direct", require_auth=not settings.web_proxy_auth
    )
