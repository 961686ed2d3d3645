"""The bundled Modal app: imports offline, carries the configured GPU/timeout/volume/secret,
and its real class runs in-process through Modal's ``.local()``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.models_cache import tiny_en_cache
from whisper_modal.options import TranscribeOptions
from whisper_modal.results import Transcript
from whisper_modal.wire import Request

ROOT = Path(__file__).parents[1]
SAMPLE = ROOT / "examples" / "sample.flac"

# What Modal itself compares when a container starts (modal/_runtime/user_code_imports.py
# and _container_entrypoint.py): each service function's ``_deps_(only_explicit_mounts=True)``
# against the object ids recorded at deploy time. Printed from a fresh interpreter, once
# with the deploying shell's environment and once with only what the image sets.
INSPECT = """
import json, warnings
warnings.simplefilter("ignore")
import whisper_modal.app as m
from whisper_modal.remote.deployment import fanout_deadline
from modal._partial_function import _find_partial_methods_for_user_cls, _PartialFunctionFlags

def shape(fn):
    info = fn.info()
    return {
        "deps": [repr(d) for d in fn._deps_(only_explicit_mounts=True)],
        "gpus": info.gpus, "timeout": info.timeout, "regions": info.regions,
        "volumes": {k: v.name for k, v in info.volumes.items()},
        "secrets": [getattr(s, "name", s) for s in info.secrets or []],
        "methods": sorted(info.method_names or []),
        "schedule": str(info.schedule) if info.schedule else None,
    }

classes = {n: getattr(m, n) for n in ("Transcriber", "PackedTranscriber")}
functions = {n: getattr(m, n) for n in ("prefetch", "warm_pool") if hasattr(m, n)}
print(json.dumps({
    "app": m.app.name,
    "image_env": m.IMAGE_ENV,
    "classes": {n: shape(c._get_class_service_function()) for n, c in classes.items()},
    "functions": {n: shape(f) for n, f in functions.items()},
    "snap_enter": {
        n: sorted(_find_partial_methods_for_user_cls(c._get_user_cls(),
                  _PartialFunctionFlags.ENTER_PRE_SNAPSHOT))
        for n, c in classes.items()
    },
    "options": {k: m._CLASS_OPTIONS[k] for k in (
        "enable_memory_snapshot", "experimental_options",
        "buffer_containers", "max_containers", "scaledown_window")},
    "warm_pools": m.WARM_POOLS,
    "fanout": {"cpu": m.fanout._spec_.cpu, "memory": m.fanout._spec_.memory,
               "retries": m.FANOUT_OPTIONS["retries"].max_retries,
               "deadline": fanout_deadline(m.FANOUT_OPTIONS["timeout"])},
}, default=str))
"""

CLEAN = {k: v for k, v in os.environ.items() if not k.startswith("WHISPER_MODAL_")}


def _run_inspect(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", INSPECT], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def inspect_app(**env: str) -> dict[str, Any]:
    """The app's shape as the deploying shell (``env`` = its WHISPER_MODAL_* variables) sees it."""
    shape = _run_inspect({**CLEAN, **env})
    transcriber = shape["classes"]["Transcriber"]
    return {"app": shape["app"], **transcriber, "raw": shape}


def inspect_container(image_env: dict[str, str]) -> dict[str, Any]:
    """The app's shape as a container sees it: the image's variables and nothing else
    from the deploying shell (a bare PATH, and PYTHONPATH standing in for
    ``add_local_python_source``)."""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "HOME": str(ROOT), **image_env}
    return _run_inspect(env)


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


DEPLOYS = {
    "defaults": {},
    "s3_and_webhooks": {"WHISPER_MODAL_SECRET_NAME": "stt-aws"},
    "everything": {
        "WHISPER_MODAL_APP_NAME": "stt-prod",
        "WHISPER_MODAL_GPU": "L40S,A10G",
        "WHISPER_MODAL_REMOTE_TIMEOUT": "900",
        "WHISPER_MODAL_VOLUME_NAME": "stt-weights",
        "WHISPER_MODAL_SECRET_NAME": "stt-aws",
        "WHISPER_MODAL_MIN_CONTAINERS": "1",
        "WHISPER_MODAL_BUFFER_CONTAINERS": "2",
        "WHISPER_MODAL_MAX_CONTAINERS": "7",
        "WHISPER_MODAL_SCALEDOWN_WINDOW": "120",
        "WHISPER_MODAL_REGION": "us-east",
        "WHISPER_MODAL_WARM_HOURS": "8-18",
        "WHISPER_MODAL_ENABLE_MEMORY_SNAPSHOT": "true",
    },
}


@pytest.mark.parametrize("deploy", sorted(DEPLOYS))
def test_container_resolves_the_deploy_time_app(deploy: str) -> None:
    """Fault 1: with only the image's environment the container must build the same app
    (same object dependencies, GPU, timeouts, volume, secret, snapshot hooks)."""
    deploy_side = inspect_app(**DEPLOYS[deploy])["raw"]
    container_side = inspect_container(deploy_side["image_env"])
    assert container_side == deploy_side
    if "WHISPER_MODAL_SECRET_NAME" in DEPLOYS[deploy]:  # the case that broke every S3 deploy
        deps = container_side["classes"]["Transcriber"]["deps"]
        assert len(deps) == 3 and "modal.Secret.from_name('stt-aws')" in deps


def test_everything_deploy_reaches_modal() -> None:
    raw = inspect_app(**DEPLOYS["everything"])["raw"]
    t = raw["classes"]["Transcriber"]
    assert t["gpus"] == [["L40S", 1], ["A10G", 1]] and t["regions"] == ["us-east"]
    assert raw["warm_pools"] == {"Transcriber": [1, 1], "PackedTranscriber": [0, 0]}
    assert raw["options"]["buffer_containers"] == 2
    assert raw["options"]["enable_memory_snapshot"] is True
    assert raw["snap_enter"] == {"PackedTranscriber": ["load"], "Transcriber": ["load"]}
    assert raw["functions"]["warm_pool"]["schedule"] is not None
    assert raw["functions"]["prefetch"]["gpus"] == []  # downloading needs no GPU


def test_bad_gpu_name_fails_before_deploying() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import whisper_modal.app"],
        cwd=ROOT, env={**CLEAN, "WHISPER_MODAL_GPU": "A100-90GB"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "unknown Modal GPU 'A100-90GB'" in done.stderr and "A100-80GB" in done.stderr


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
    from whisper_modal.config import Settings
    from whisper_modal.deployer import deploy_command

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


WARM_POOL_RUN = """
import json, time
import modal
import whisper_modal.app as m

calls = {}
class Pool:
    def __init__(self, name): self.name = name
    def __call__(self, **params): return self
    def update_autoscaler(self, **kw): calls[self.name] = kw["min_containers"]
modal.Cls.from_name = lambda app, name, **kw: Pool(name)
hours = {}
for hour in (7, 9):
    time.gmtime = lambda *a, h=hour: time.struct_time((2026, 12, 5, h, 0, 0, 5, 339, 0))
    m.warm_pool.local()
    hours[hour] = dict(calls)
print(json.dumps(hours))
"""


@pytest.mark.parametrize(
    ("packed", "expected"),
    [
        ({}, {"7": {"Transcriber": 1, "PackedTranscriber": 0},
              "9": {"Transcriber": 2, "PackedTranscriber": 0}}),
        ({"WHISPER_MODAL_PACKED_MIN_CONTAINERS": "1", "WHISPER_MODAL_PACKED_WARM_CONTAINERS": "3"},
         {"7": {"Transcriber": 1, "PackedTranscriber": 1},
          "9": {"Transcriber": 2, "PackedTranscriber": 3}}),
    ],
)  # fmt: skip
def test_warm_hours_warm_each_class_by_its_own_settings(
    packed: dict[str, str], expected: dict[str, dict[str, int]]
) -> None:
    """MIN_CONTAINERS / WARM_CONTAINERS are the plain class's: the packed class, a GPU pool
    of its own, stays cold unless its own settings ask (both used to get the same count,
    so MIN_CONTAINERS=1 billed two GPUs around the clock)."""
    env = {**CLEAN, "WHISPER_MODAL_WARM_HOURS": "8-18", "WHISPER_MODAL_WARM_CONTAINERS": "2",
           "WHISPER_MODAL_MIN_CONTAINERS": "1", **packed}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", WARM_POOL_RUN], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected


def test_the_orchestrator_reserves_what_it_holds_and_is_retried_once() -> None:
    """Modal's default reservation (0.125 core, 128 MiB) is under one hour of float32
    audio; a dead orchestrator without retries left its pieces and record behind."""
    default = inspect_app()["raw"]["fanout"]
    assert default == {"cpu": 1.0, "memory": 4096, "retries": 1, "deadline": 3540.0}
    sized = inspect_app(
        WHISPER_MODAL_FANOUT_CPU="2", WHISPER_MODAL_FANOUT_MEMORY_MIB="8192",
        WHISPER_MODAL_REMOTE_TIMEOUT="300",
    )["raw"]["fanout"]  # fmt: skip
    assert sized == {"cpu": 2.0, "memory": 8192, "retries": 1, "deadline": 270.0}
