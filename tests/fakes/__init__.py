"""Test doubles: the in-process Modal fake (``modal_fake``)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes.modal_fake import FakeModal
from tests.models_cache import tiny_en_cache
from whisper_modal.backends.modal import ModalBackend
from whisper_modal.client import Client
from whisper_modal.config import Settings


def fake_client(fake: FakeModal, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Client:
    """A Client whose Modal backend talks to ``fake`` (the container sees the tiny.en cache)."""
    monkeypatch.setenv("WHISPER_MODAL_CACHE_DIR", str(tiny_en_cache()))
    monkeypatch.setenv("WHISPER_MODAL_DEVICE", "cpu")
    defaults: dict[str, Any] = {"model": "tiny.en", "backend": "modal", "device": "cpu"}
    settings = Settings.resolve(**{**defaults, **overrides})
    backend = ModalBackend(settings, cls_lookup=fake.cls_lookup, call_lookup=fake.call_lookup)
    return Client(settings, modal_backend=backend)
