"""The app's upkeep: fill the weights volume (``prefetch``), size the warm pools (cron)."""

from __future__ import annotations

import json
import time
from typing import Any

import modal

from whisper_modal.config import Settings
from whisper_modal.options import require_known_model
from whisper_modal.remote.deployment import warm_containers_at
from whisper_modal.remote.runtime import runtime_settings

__all__ = ["prefetch", "set_warm_pools"]


def prefetch(model: str, weights: Any) -> dict[str, Any]:
    """Download ``model`` into the weights volume, verify it and commit the volume.

    Returns:
        ``{"model", "path", "size_bytes", "sha256"}`` of the checkpoint on the volume.

    Raises:
        ConfigurationError: unknown model, or the download failed verification.
    """
    from whisper_modal.engine.models import ModelStore

    require_known_model(model)
    store = ModelStore(runtime_settings().cache_dir)
    path = store.ensure(model)
    if not modal.is_local():
        weights.commit()
    return {
        "model": model,
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "sha256": store.verified_sha256(path),
    }


def set_warm_pools(settings: Settings, pools: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Set each GPU class's ``min_containers`` for the current UTC hour; returns the counts.

    Args:
        settings: the deploy's settings (``app_name``, ``model``, ``warm_hours``).
        pools: class name -> (containers kept warm always, inside ``warm_hours``).
    """
    hour = time.gmtime().tm_hour
    warm = {
        name: warm_containers_at(hour, str(settings.warm_hours), inside, always)
        for name, (always, inside) in pools.items()
    }
    for name, n in warm.items():
        pool = modal.Cls.from_name(settings.app_name, name)(model=settings.model)
        pool.update_autoscaler(min_containers=n)
    print(json.dumps({"event": "whisper_modal.warm_pool", "hour": hour, "min_containers": warm}))
    return warm
