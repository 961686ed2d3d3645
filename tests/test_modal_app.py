"""The bundled Modal app: imports offline, carries the configured GPU/timeout/volume/secret,
and its real class runs in-process through Modal's ``.local()``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.models_cache import tiny_en_cache
from whisper_modal.backends.base import Request
from whisper_modal.options import TranscribeOptions
from whisper_modal.results import Transcript

ROOT = Path(__file__).parents[1]
SAMPLE = ROOT / "examples" / "sample.flac"

INSPECT = """
import json, warnings
warnings.simplefilter("ignore")
from whisper_modal.app import app, Transcriber
fn = list(app.registered_functions.values())[0]
info = fn.info()
print(json.dumps({
    "app": app.name, "gpus": info.gpus, "timeout": info.timeout,
    "volumes": {k: v.name for k, v in info.volumes.items()},
    "secrets": [getattr(s, "name", s) for s in info.secrets or []],
    "methods": sorted(info.method_names),
}))
"""


def inspect_app(**env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WHISPER_MODAL_")}
    done = subprocess.run(
        [sys.executable, "-c", INSPECT],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_app_imports_offline_with_defaults() -> None:
    info = inspect_app()
    assert info["app"] == "whisper-modal"
    assert info["gpus"] == [["A10G", 1]]
    assert info["timeout"] == 3600
    assert info["volumes"] == {"/weights": "whisper-modal-weights"}
    assert info["secrets"] == []
    assert info["methods"] == ["health", "transcribe"]


def test_app_reads_its_settings_at_deploy_time() -> None:
    info = inspect_app(
        WHISPER_MODAL_APP_NAME="stt-prod",
        WHISPER_MODAL_GPU="L4",
        WHISPER_MODAL_REMOTE_TIMEOUT="900",
        WHISPER_MODAL_VOLUME_NAME="stt-weights",
        WHISPER_MODAL_SECRET_NAME="stt-aws",
    )
    assert info["app"] == "stt-prod" and info["gpus"] == [["L4", 1]] and info["timeout"] == 900
    assert info["volumes"] == {"/weights": "stt-weights"}
    assert info["secrets"] == ["modal.Secret.from_name('stt-aws')"]


def test_autoscaler_settings_reach_modal() -> None:
    # Modal validates scaledown_window (2..3600 s) when the class is declared: an out-of-range
    # value failing the import proves the setting is passed through.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WHISPER_MODAL_")}
    done = subprocess.run(
        [sys.executable, "-c", "import whisper_modal.app"],
        cwd=ROOT, env={**clean, "WHISPER_MODAL_SCALEDOWN_WINDOW": "5000"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0 and "scaledown_window" in done.stderr


def test_import_is_cheap() -> None:
    code = "import sys, whisper_modal.app; print('torch' in sys.modules, 'whisper' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], cwd=ROOT, capture_output=True, text=True
    )
    assert out.stdout.split() == ["False", "False"], out.stderr


@pytest.mark.slow
def test_real_class_runs_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHISPER_MODAL_CACHE_DIR", str(tiny_en_cache()))
    monkeypatch.setenv("WHISPER_MODAL_DEVICE", "cpu")
    from whisper_modal.app import Transcriber

    obj = Transcriber(model="tiny.en")
    wire = Request(
        options=TranscribeOptions(model="tiny.en", language="en"), audio=SAMPLE.read_bytes()
    ).to_wire()
    result = obj.transcribe.local(wire)
    t = Transcript.from_dict(result)
    assert t.backend == "modal" and "weekly planning meeting" in t.text.lower()
    report = obj.health.local()
    assert report["model_loaded"] is True and report["model"] == "tiny.en"
    assert report["cold_starts"] >= 1 and report["load_seconds"] > 0
    assert report["device"] == "cpu" and report["torch"] and "gpu" in report
    bad = dict(wire, options={**wire["options"], "model": "/etc/passwd"})
    with pytest.raises(Exception, match="only known Whisper models"):
        obj.transcribe.local(bad)


@pytest.mark.slow
def test_unknown_model_is_refused_at_enter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHISPER_MODAL_CACHE_DIR", str(tiny_en_cache()))
    from whisper_modal.app import Transcriber
    from whisper_modal.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="only known Whisper models"):
        Transcriber(model="../../evil").health.local()


def test_deploy_command_passes_the_settings_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from whisper_modal.app import deploy_command
    from whisper_modal.config import Settings

    monkeypatch.delenv("WHISPER_MODAL_SECRET_NAME", raising=False)
    config = Settings.resolve(
        env={}, app_name="stt-prod", gpu="L4", remote_timeout=900, environment_name="staging"
    )
    cmd, env = deploy_command(config)
    assert cmd[1:] == ["-m", "modal", "deploy", "-m", "whisper_modal.app", "--env", "staging"]
    assert env["WHISPER_MODAL_APP_NAME"] == "stt-prod" and env["WHISPER_MODAL_GPU"] == "L4"
    assert env["WHISPER_MODAL_REMOTE_TIMEOUT"] == "900"
    assert "WHISPER_MODAL_SECRET_NAME" not in env  # None is not passed as the text "None"
    # the environment it builds really configures the app the way the settings say
    info = inspect_app(**{k: v for k, v in env.items() if k.startswith("WHISPER_MODAL_")})
    assert info["app"] == "stt-prod" and info["gpus"] == [["L4", 1]] and info["timeout"] == 900


def test_memory_snapshot_is_off_by_default() -> None:
    # GPU state cannot be snapshotted by default; a snapshot would hold only the imports
    import whisper_modal.app as app_module

    assert app_module._CLASS_OPTIONS["enable_memory_snapshot"] is False


def test_deploy_without_credentials_is_a_typed_one_line_error(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("WHISPER_MODAL_", "MODAL_"))}
    env = {**clean, "HOME": str(tmp_path), "MODAL_CONFIG_PATH": str(tmp_path / ".modal.toml")}
    done = subprocess.run(
        [sys.executable, "-m", "whisper_modal", "deploy"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("whisper-modal: failed: BackendUnavailable") and "modal token new" in last
    )
