"""The HTTP API: OpenAI-compatible transcription endpoints and a jobs API (ASGI).

    from whisper_modal.server import create_app
    app = create_app(wm.Client(backend="local", model="tiny.en"))   # serve with uvicorn

``whisper-modal serve`` runs it locally; the Modal app serves it as a CPU web function.
Needs the ``[server]`` extra (FastAPI, uvicorn, python-multipart). The implementation
lives in ``whisper_modal.http_api``, a package whose ``__init__`` imports nothing.
"""

from __future__ import annotations

from whisper_modal.http_api.serve import create_app, serve

__all__ = ["create_app", "serve"]
