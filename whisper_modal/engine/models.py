"""The model store: where checkpoints live, how they arrive, and the per-process model cache.

Layout of the cache directory (default ``~/.cache/whisper``, openai-whisper's own, so its
downloads are shared):

    <cache>/<official file>.pt          downloaded by openai-whisper (SHA-256 checked)
    <cache>/imported/<name>.pt          imported from a CTranslate2 / faster-whisper directory
    <cache>/imported/<name>.json        where it came from and the SHA-256 of the .pt

    <cache>/<official file>.pt.sha256   size, mtime and SHA-256 of the last verification
    <cache>/.locks/<name>.lock          held while one process checks or downloads a model

Imported checkpoints win over downloads of the same name, so an offline machine never
tries the network for a model it already has. Every checkpoint is loaded with
``torch.load(..., weights_only=True)``: a checkpoint is data, never code.

Downloads never use ``whisper._download``: it writes straight to the final name (a
container killed mid-download leaves half a checkpoint there, on a Modal Volume for every
later cold start), reads the whole file into memory to hash it, and on a mismatch after
downloading raises with the corrupt file left in place. Here a download streams to a
temporary name in the same directory while hashing, is checked against the SHA-256 in the
official URL, then ``os.replace``-d into place (atomic). A downloaded checkpoint is
verified before it is loaded: the sidecar ``.sha256`` file makes that a ``stat`` when size
and mtime are unchanged, else the file is hashed again; a mismatch is repaired by
downloading again. An ``flock`` serialises first downloads of one model between the
threads and processes sharing the directory; across Modal containers (which do not share
locks) the temporary name + verify + rename still leaves only whole, verified files.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import json
import os
import pickle
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from whisper_modal.engine.ct2_import import (
    Source,
    model_directories,
    read_ct2_model,
    to_whisper_checkpoint,
)
from whisper_modal.engine.turns import ModelTurns
from whisper_modal.errors import ConfigurationError
from whisper_modal.options import KNOWN_MODELS, is_known_model

if TYPE_CHECKING:
    import torch
    from whisper.model import Whisper

__all__ = [
    "LoadedModel",
    "ModelInfo",
    "ModelStore",
    "cpu_flags",
    "import_ct2_model",
    "load_model",
    "move_model",
    "require_local_extra",
    "resolve_device",
    "twin",
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


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (``/proc/cpuinfo``; empty where there is none)."""
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return frozenset()


def resolve_device(device: str = "auto") -> str:
    """Return "cuda" when asked for or available (for "auto"), else "cpu".

    Raises:
        ConfigurationError: "cuda" was asked for but no CUDA device is visible.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(
            "device='cuda' but torch sees no CUDA device (no GPU attached, or its driver "
            f"does not match torch {torch.__version__}'s CUDA build); set "
            "WHISPER_MODAL_DEVICE=cpu to run on CPU on purpose"
        )
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
    """A model in memory, with the turns that serialise inference on it.

    openai-whisper installs kv-cache hooks on the module for each decode, so two threads
    must never decode with the same model object at once; ``turns`` (``engine.turns``)
    hands it from request to request between windows.
    """

    name: str
    device: str
    model: Whisper
    load_seconds: float
    turns: ModelTurns = attrs.field(factory=ModelTurns, eq=False)

    @property
    def is_multilingual(self) -> bool:
        """True when the model can detect languages and translate."""
        return bool(self.model.is_multilingual)


#: seconds without a byte before a download gives up (the whole download has no limit)
DOWNLOAD_STALL_SECONDS = 60.0


class ModelStore:
    """Checkpoints on disk under one cache directory.

    Args:
        cache_dir: the directory (a Modal Volume's mount point in the container).
        urls: model name -> download URL whose second-to-last path part is the file's
            SHA-256, as in openai-whisper's table (the default); tests serve a copy.
    """

    def __init__(
        self, cache_dir: str | os.PathLike[str], *, urls: Mapping[str, str] | None = None
    ) -> None:
        self.cache_dir = Path(cache_dir).expanduser()
        self._urls = urls

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
        if info is not None and info.source == "imported":
            self._check_imported(info.path)
            return info.path
        if not is_known_model(name):
            raise ConfigurationError(
                f"unknown model {name!r}; known: {', '.join(KNOWN_MODELS)} "
                "(or import one: whisper-modal models import DIR --name NAME)"
            )
        if info is not None and self._is_verified(info.path, name):
            return info.path  # the common case: no lock, no hashing (sidecar matches)
        with self._locked(name):
            info = self.find(name)  # another process may have finished it meanwhile
            if info is not None:
                if self._is_verified(info.path, name):
                    return info.path
                if not allow_download:
                    raise ConfigurationError(
                        f"checkpoint {info.path} does not match its SHA-256 (a partial "
                        "download?) and downloads are disabled; delete it or allow downloads"
                    )
                info.path.unlink(missing_ok=True)  # repair: fetch a whole copy below
            elif not allow_download:
                raise ConfigurationError(self._missing_message(name, "downloads are disabled"))
            return self._download(name)

    def url(self, name: str) -> str:
        """The download URL of an official model (its path holds the SHA-256)."""
        if self._urls is not None:
            return self._urls[name]
        require_local_extra()
        import whisper

        return str(whisper._MODELS[name])

    def expected_sha256(self, name: str) -> str:
        """The SHA-256 an official checkpoint must have (from its URL)."""
        return self.url(name).rstrip("/").split("/")[-2]

    def verified_sha256(self, path: Path) -> str | None:
        """The SHA-256 recorded by the last successful verification of ``path``, if current."""
        record = _read_record(path)
        return record.get("sha256") if record and _record_matches(record, path) else None

    def _is_verified(self, path: Path, name: str) -> bool:
        expected = self.expected_sha256(name)
        if self.verified_sha256(path) == expected:
            return True  # size and mtime unchanged since a hash matched
        if _sha256(path) != expected:
            return False
        _write_record(path, expected)
        return True

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        """Hold ``<cache>/.locks/<name>.lock`` (threads and processes of one machine)."""
        try:
            import fcntl
        except ImportError:  # Windows: no flock; rename-into-place still keeps files whole
            yield
            return
        lock_dir = self.cache_dir / ".locks"
        try:
            lock_dir.mkdir(parents=True, exist_ok=True)
            handle = (lock_dir / f"{name}.lock").open("a")
        except OSError:  # a read-only cache: nothing can be downloaded into it anyway
            yield
            return
        with handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _download(self, name: str) -> Path:
        url, expected = self.url(name), self.expected_sha256(name)
        target = self.official_path(name)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # same directory: os.replace is atomic only within one file system
        partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")
        try:
            digest = hashlib.sha256()
            with (
                urllib.request.urlopen(url, timeout=DOWNLOAD_STALL_SECONDS) as source,
                partial.open("wb") as out,
            ):
                for block in iter(lambda: source.read(1 << 20), b""):
                    out.write(block)
                    digest.update(block)
                out.flush()
                os.fsync(out.fileno())  # the bytes are on disk before the name is
            if digest.hexdigest() != expected:
                raise ConfigurationError(
                    self._missing_message(
                        name, f"the download's SHA-256 {digest.hexdigest()} is not {expected}"
                    )
                )
            os.replace(partial, target)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # urllib errors are OSErrors; a cut connection is http.client.IncompleteRead
            raise ConfigurationError(
                self._missing_message(name, f"download failed: {exc}")
            ) from exc
        finally:
            partial.unlink(missing_ok=True)
        _write_record(target, expected)
        return target

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

    def import_ct2(self, directory: Source | Sequence[Source], name: str) -> ModelInfo:
        """Import a CTranslate2 Whisper directory (or its parts' directories) as ``name``."""
        return import_ct2_model(directory, name, self.cache_dir)


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(_record_path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _record_matches(record: dict[str, Any], path: Path) -> bool:
    try:
        stat = path.stat()
    except OSError:
        return False
    return record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns


def _write_record(path: Path, sha256: str) -> None:
    stat = path.stat()
    record = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    with contextlib.suppress(OSError):  # a read-only cache just hashes again next time
        _record_path(path).write_text(json.dumps(record))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_SAFE_NAME = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")


def import_ct2_model(
    directory: Source | Sequence[Source], name: str, cache_dir: str | os.PathLike[str]
) -> ModelInfo:
    """Convert a CTranslate2 / faster-whisper model directory into the store.

    Args:
        directory: the CTranslate2 model directory (``model.bin``, ``config.json``), or
            several directories holding its ``model.bin.partN`` files; each may be an
            installed package's name (``ct2_import.model_directories``).
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
    roots = model_directories(directory)
    checkpoint = to_whisper_checkpoint(read_ct2_model(roots))
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
        "source": ", ".join(str(r.resolve()) for r in roots),
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
            return attrs.evolve(cached, load_seconds=0.0, turns=cached.turns)
        started = time.perf_counter()
        model = _load_checkpoint(path, name, resolved_device)
        loaded = LoadedModel(name, resolved_device, model, time.perf_counter() - started)
        _CACHE[key] = loaded
        return loaded


# (kind, id of the fp32 model) -> (that model, kept alive so the id is never reused; twin)
_TWINS: dict[tuple[str, int], tuple[Whisper, LoadedModel]] = {}


def twin(loaded: LoadedModel, kind: str, make: Callable[[Whisper], Whisper]) -> LoadedModel:
    """``loaded`` in another format (``kind``: "int8", "bf16"), made by ``make`` once per
    process and model. The twin keeps the name, device and turns: it is the same model."""
    key = (kind, id(loaded.model))
    with _CACHE_LOCK:
        entry = _TWINS.get(key)
        if entry is None:
            entry = (loaded.model, attrs.evolve(loaded, model=make(loaded.model)))
            _TWINS[key] = entry
    return entry[1]


def move_model(
    name: str, *, store: ModelStore, device: str, allow_paths: bool = False
) -> LoadedModel:
    """Move a model loaded on CPU (e.g. before a memory snapshot) to ``device``.

    Args:
        name: the name it was loaded by (``load_model``), with the same store and
            ``allow_paths``.
        store: its store.
        device: "cuda" (or "cpu", a no-op for a CPU model).

    Returns:
        The model on ``device``; later ``load_model(name, device=device)`` calls get it.

    Raises:
        ConfigurationError: the model was never loaded, or the device is not usable.
    """
    target = resolve_device(device)
    with _CACHE_LOCK:
        path = _RESOLVED.get((str(store.cache_dir), name, allow_paths))
        moved = _CACHE.get((str(path), target)) if path is not None else None
        if moved is not None:
            return moved
        loaded = _CACHE.get((str(path), "cpu")) if path is not None else None
        if path is None or loaded is None:
            raise ConfigurationError(f"model {name!r} is not loaded on CPU; nothing to move")
        started = time.perf_counter()
        loaded.model.to(target)  # in place: the CPU entry would now lie, so it goes
        del _CACHE[(str(path), "cpu")]
        moved = attrs.evolve(
            loaded, device=target, load_seconds=time.perf_counter() - started, turns=loaded.turns
        )
        _CACHE[(str(path), target)] = moved
        return moved


def _checkpoint_path(
    name: str, store: ModelStore, *, allow_paths: bool, allow_download: bool
) -> Path:
    if is_known_model(name) or store.find(name) is not None:
        return store.ensure(name, allow_download=allow_download)
    candidate = Path(name).expanduser()
    if allow_paths and candidate.is_file():
        return candidate
    looks_like_path = os.sep in name or name.endswith(".pt")
    if allow_paths and looks_like_path:
        why = "is a directory" if candidate.is_dir() else "does not exist"
        raise ConfigurationError(
            f"model {name!r} looks like a checkpoint path, but {candidate} {why}: give a "
            f"checkpoint file (.pt), a known name ({', '.join(KNOWN_MODELS)}) or an "
            "imported one (whisper-modal models list)"
        )
    if not allow_paths and looks_like_path:
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
