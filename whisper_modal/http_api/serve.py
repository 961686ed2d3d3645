"""``whisper-modal serve``: the HTTP API under uvicorn, and the import guard for the extra."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from whisper_modal.errors import ConfigurationError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from whisper_modal.client import Client

__all__ = ["create_app", "serve"]

_EXTRA = "pip install 'whisper-modal[server]'"


def _require_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            f"the HTTP API needs FastAPI and python-multipart: {_EXTRA}"
        ) from exc


def create_app(client: Client, **kwargs: Any) -> FastAPI:
    """Build the ASGI app; see ``whisper_modal.http_api.app.create_app`` for the arguments.

    Raises:
        ConfigurationError: the ``[server]`` extra is not installed, or a bad argument.
    """
    _require_extra()
    from whisper_modal.http_api.app import create_app as build

    return build(client, **kwargs)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    backend: str | None = None,
    client: Client | None = None,
    log_level: str = "info",
) -> None:
    """Run the HTTP API with uvicorn until interrupted.

    Args:
        host: interface to bind; anything but loopback needs API keys.
        port: TCP port.
        backend: ``local`` (the engine in this process), ``modal`` (a gateway to the
            deployed app) or ``auto``; default from settings.
        client: use this client instead of building one.
        log_level: uvicorn's log level.

    Raises:
        ConfigurationError: the extra is missing, or a non-loopback host without keys.
    """
    _require_extra()
    try:
        import uvicorn
    except ImportError as exc:
        raise ConfigurationError(f"whisper-modal serve needs uvicorn: {_EXTRA}") from exc
    from whisper_modal.client import Client
    from whisper_modal.config import split_list
    from whisper_modal.metrics import log_to_stderr

    client = client or Client(backend=backend)
    if not _is_loopback(host) and not split_list(client.settings.api_keys):
        raise ConfigurationError(
            f"refusing to serve on {host} without API keys: set WHISPER_MODAL_API_KEYS "
            "(or bind 127.0.0.1)"
        )
    app = create_app(client)
    log_to_stderr()  # the package's own warnings beside uvicorn's log
    uvicorn.run(app, host=host, port=port, log_level=log_level)
