"""The model store: where checkpoints live, how they arrive, and the per-process model cache.

Layout of the cache directory (default ``~/.cache/whisper``, openai-whisper's own, so its
downloads are shared):

    <cache>/<official file>.pt          downloaded by openai-whisper (SHA-256 checked)
    <cache>/imported/<name>.pt          imported from a CTranslate2 / faster-whisper directory
    <cache>/imported/<name>.json        where it came from and the SHA-256 of the .pt

Imported checkpoints win over downloads of the same name, so an offline machine never
tries the network for a model it already has. Every checkpoint is loaded with
``torch.load(..., weights_only=True)``: a checkpoint is data, never code.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from whisper_modal.engine.ct2_import import read_ct2_model, to_whisper_checkpoint
from whisper_modal.errors import ConfigurationError
from whisper_modal.options import KNOWN_MODELS, is_known_model

if TYPE_CHECKING:
    import torch
    from whisper.model import Whisper

__all__ = [
    "LoadedModel",
    "ModelInfo",
    "ModelStore",
    "import_ct2_model",
    "load_model",
    "require_local_extra",
    "resolve_device",
]

# Official file names (the basename of openai-whisper's download URL) without importing it.
_OFFICIAL_FILES = {
    "large": "large-v3.pt",
    "turbo": "large-v3-turbo.pt",
}


def require_local_extra() -> None:
    """Raise a ConfigurationError naming the extra when the engine's dependencies are missing."""
    try:
        import torch  # noqa: F401
        import whisper  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            f"the local engine needs {exc.name}: pip install 'whisper-modal[local]'"
        ) from exc


def resolve_device(device: str = "auto") -> str:
    """Return "cuda" when asked for or available (for "auto"), else "cpu".

    Raises:
        ConfigurationError: "cuda" was asked for but no CUDA device is visible.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError("device='cuda' but torch sees no CUDA device")
    if device not in ("cuda", "cpu"):
        raise ConfigurationError(f"device must be 'auto', 'cuda' or 'cpu', not {device!r}")
    return device


@attrs.frozen
class ModelInfo:
    """A checkpoint in the store."""

    name: str
    path: Path
    source: str  # "imported" or "download"
    size_bytes: int


@attrs.frozen
class LoadedModel:
    """A model in memory, with the lock that serialises inference on it.

    openai-whisper installs kv-cache hooks on the module for each decode, so two threads
    must never decode with the same model object at once.
    """

    name: str
    device: str
    model: Whisper
    load_seconds: float
    lock: threading.Lock = attrs.field(factory=threading.Lock, eq=False)

    @property
    def is_multilingual(self) -> bool:
        """True when the model can detect languages and translate."""
        return bool(self.model.is_multilingual)


class ModelStore:
    """Checkpoints on disk under one cache directory."""

    def __init__(self, cache_dir: str | os.PathLike[str]) -> None:
        self.cache_dir = Path(cache_dir).expanduser()

    @property
    def imported_dir(self) -> Path:
        """Directory of imported checkpoints."""
        return self.cache_dir / "imported"

    def official_path(self, name: str) -> Path:
        """Where openai-whisper keeps (or would download) the official checkpoint."""
        return self.cache_dir / _OFFICIAL_FILES.get(name, f"{name}.pt")

    def find(self, name: str) -> ModelInfo | None:
        """Return the checkpoint for ``name`` if it is on disk (imported first)."""
        imported = self.imported_dir / f"{name}.pt"
        if imported.is_file():
            return ModelInfo(name, imported, "imported", imported.stat().st_size)
        official = self.official_path(name)
        if is_known_model(name) and official.is_file():
            return ModelInfo(name, official, "download", official.stat().st_size)
        return None

    def list(self) -> list[ModelInfo]:
        """Every checkpoint on disk, imported and downloaded."""
        found = [self.find(name) for name in KNOWN_MODELS]
        names = {i.name for i in found if i}
        if self.imported_dir.is_dir():
            extra = (p.stem for p in self.imported_dir.glob("*.pt") if p.stem not in names)
            found.extend(self.find(n) for n in extra)
        return sorted((i for i in found if i), key=lambda i: i.name)

    def ensure(self, name: str, *, allow_download: bool = True) -> Path:
        """Return the checkpoint path for a known model name, downloading it if needed.

        Raises:
            ConfigurationError: unknown name, or missing and not downloadable (offline);
                the message names the cache path and the import command.
        """
        info = self.find(name)
        if info is not None:
            if info.source == "imported":
                self._check_imported(info.path)
            return info.path
        if not is_known_model(name):
            raise ConfigurationError(
                f"unknown model {name!r}; known: {', '.join(KNOWN_MODELS)} "
                "(or import one: whisper-modal models import DIR --name NAME)"
            )
        if not allow_download:
            raise ConfigurationError(self._missing_message(name, "downloads are disabled"))
        return self._download(name)

    def _download(self, name: str) -> Path:
        require_local_extra()
        import whisper

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            # whisper._download verifies the SHA-256 embedded in the URL and retries a
            # corrupt file once; it writes only to download_root.
            path = whisper._download(whisper._MODELS[name], str(self.cache_dir), False)
        except (OSError, RuntimeError) as exc:  # urllib errors are OSErrors
            raise ConfigurationError(
                self._missing_message(name, f"download failed: {exc}")
            ) from exc
        return Path(str(path))

    def _missing_message(self, name: str, why: str) -> str:
        return (
            f"model {name!r} is not in the cache {self.cache_dir} and {why}; copy "
            f"{self.official_path(name).name} there, set WHISPER_MODAL_CACHE_DIR, or import a "
            f"faster-whisper directory: whisper-modal models import DIR --name {name}"
        )

    def _check_imported(self, path: Path) -> None:
        meta_path = path.with_suffix(".json")
        if not meta_path.is_file():
            return
        expected = json.loads(meta_path.read_text()).get("sha256")
        if expected and _sha256(path) != expected:
            raise ConfigurationError(
                f"imported checkpoint {path} does not match its recorded SHA-256; re-import it"
            )

    def import_ct2(self, directory: str | os.PathLike[str], name: str) -> ModelInfo:
        """Import a CTranslate2 Whisper directory as ``name`` (see ``ct2_import``)."""
        return import_ct2_model(directory, name, self.cache_dir)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_SAFE_NAME = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")


def import_ct2_model(
    directory: str | os.PathLike[str], name: str, cache_dir: str | os.PathLike[str]
) -> ModelInfo:
    """Convert a CTranslate2 / faster-whisper model directory into the store.

    Args:
        directory: the CTranslate2 model directory (``model.bin``, ``config.json``).
        name: the name to load it by, e.g. "tiny.en".
        cache_dir: the store's cache directory.

    Returns:
        The imported checkpoint.

    Raises:
        ConfigurationError: bad name, or not a readable CTranslate2 Whisper model.
    """
    require_local_extra()
    import torch

    if not name or not set(name) <= _SAFE_NAME or name.startswith("."):
        raise ConfigurationError(f"model name {name!r} may use only letters, digits, '.', '-', '_'")
    checkpoint = to_whisper_checkpoint(read_ct2_model(Path(directory)))
    checkpoint["model_state_dict"] = {
        k: torch.from_numpy(v.copy()) for k, v in checkpoint["model_state_dict"].items()
    }
    target_dir = Path(cache_dir).expanduser() / "imported"
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{name}.pt"
    partial = target.with_suffix(".pt.partial")
    torch.save(checkpoint, partial)
    os.replace(partial, target)  # atomic: a reader never sees half a checkpoint
    meta = {
        "name": name,
        "source": str(Path(directory).expanduser().resolve()),
        "format": "ctranslate2",
        "sha256": _sha256(target),
        "imported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    target.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return ModelInfo(name, target, "imported", target.stat().st_size)


# ------------------------------------------------------------------ per-process cache

_CACHE: dict[tuple[str, str], LoadedModel] = {}
_RESOLVED: dict[tuple[str, str, bool], Path] = {}
_CACHE_LOCK = threading.Lock()


def load_model(
    name: str,
    *,
    store: ModelStore,
    device: str = "auto",
    allow_paths: bool = True,
    allow_download: bool = True,
) -> LoadedModel:
    """Load a model once per (checkpoint, device) and return the cached instance after that.

    Args:
        name: a known model name, or (when ``allow_paths``) a path to a checkpoint file.
        store: where checkpoints live.
        device: "auto", "cuda" or "cpu".
        allow_paths: accept a checkpoint path (the Modal container passes False: it loads
            only known names).
        allow_download: fetch a missing official checkpoint.

    Raises:
        ConfigurationError: unknown name, path not allowed/missing, unreadable checkpoint.
    """
    require_local_extra()
    resolved_device = resolve_device(device)
    # Resolving a name verifies the checkpoint's SHA-256 (~50 ms for tiny, seconds for
    # large): do it once per process, not on every call.
    where = (str(store.cache_dir), name, allow_paths)
    with _CACHE_LOCK:
        path = _RESOLVED.get(where)
    if path is None:
        path = _checkpoint_path(name, store, allow_paths=allow_paths, allow_download=allow_download)
        with _CACHE_LOCK:
            _RESOLVED[where] = path
    key = (str(path), resolved_device)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return attrs.evolve(cached, load_seconds=0.0, lock=cached.lock)
        started = time.perf_counter()
        model = _load_checkpoint(path, name, resolved_device)
        loaded = LoadedModel(name, resolved_device, model, time.perf_counter() - started)
        _CACHE[key] = loaded
        return loaded


def clear_model_cache() -> None:
    """Forget every loaded model (tests and long-lived processes switching models)."""
    with _CACHE_LOCK:
        _CACHE.clear()
        _RESOLVED.clear()


def _checkpoint_path(
    name: str, store: ModelStore, *, allow_paths: bool, allow_download: bool
) -> Path:
    if is_known_model(name) or store.find(name) is not None:
        return store.ensure(name, allow_download=allow_download)
    candidate = Path(name).expanduser()
    if allow_paths and candidate.is_file():
        return candidate
    if not allow_paths and (os.sep in name or name.endswith(".pt")):
        raise ConfigurationError(
            f"checkpoint paths are not accepted here; use one of {KNOWN_MODELS}"
        )
    return store.ensure(name, allow_download=allow_download)  # raises with the known names


def _load_checkpoint(path: Path, name: str, device: str) -> Whisper:
    import torch
    import whisper
    from whisper.model import ModelDimensions, Whisper

    try:
        with path.open("rb") as fh:
            checkpoint: dict[str, Any] = torch.load(fh, map_location="cpu", weights_only=True)
        dims = ModelDimensions(**checkpoint["dims"])
        model = Whisper(dims)
        model.load_state_dict(checkpoint["model_state_dict"])
    except (
        OSError,
        EOFError,
        RuntimeError,
        KeyError,
        TypeError,
        ValueError,
        pickle.UnpicklingError,
    ) as exc:
        # weights_only=True refuses any pickle that would build an object (UnpicklingError)
        raise ConfigurationError(f"cannot load checkpoint {path}: {exc}") from exc
    heads = checkpoint.get("alignment_heads")
    if isinstance(heads, list) and heads:
        model.register_buffer("alignment_heads", _heads_mask(heads, dims), persistent=False)
    elif name in whisper._ALIGNMENT_HEADS:
        model.set_alignment_heads(whisper._ALIGNMENT_HEADS[name])
    model.eval()
    return model.to(device)


def _heads_mask(heads: list[list[int]], dims: Any) -> torch.Tensor:
    import torch

    mask = torch.zeros(dims.n_text_layer, dims.n_text_head, dtype=torch.bool)
    for layer, head in heads:
        mask[layer, head] = True
    return mask.to_sparse()
