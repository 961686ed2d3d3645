"""Deploying the bundled Modal app from the client side (``whisper-modal deploy``).

The deploy runs Modal's own CLI (``modal deploy -m whisper_modal.app``) with the settings
as ``WHISPER_MODAL_*`` variables; this module does not import the app module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from whisper_modal.config import Settings
from whisper_modal.remote.deployment import DEPLOY_SETTINGS

__all__ = ["deploy", "deploy_command", "smoke_test"]


def deploy_command(config: Settings | None = None) -> tuple[list[str], dict[str, str]]:
    """Return the ``modal deploy`` command line and environment for ``config``.

    Args:
        config: the settings to deploy with (default: ``Settings.resolve()``).

    Returns:
        ``(argv, env)``: the command and the full environment to run it with.
    """
    config = config or Settings.resolve()
    env = dict(os.environ)
    for name in DEPLOY_SETTINGS:
        value = getattr(config, name, None)
        if value is not None:  # None (no secret) must not become the string "None"
            env[f"WHISPER_MODAL_{name.upper()}"] = str(value)
    cmd = [sys.executable, "-m", "modal", "deploy", "-m", "whisper_modal.app"]
    if config.environment_name:
        cmd += ["--env", config.environment_name]
    return cmd, env


def deploy(config: Settings | None = None) -> None:
    """Deploy the bundled app with the ``modal`` CLI (``whisper-modal deploy``).

    Settings reach the deploy as ``WHISPER_MODAL_*`` environment variables.

    Args:
        config: the settings to deploy with (default: ``Settings.resolve()``).

    Raises:
        BackendUnavailable: the ``modal deploy`` command failed (its output is shown).
    """
    from whisper_modal.errors import BackendUnavailable

    cmd, env = deploy_command(config)
    done = subprocess.run(cmd, env=env, check=False)
    if done.returncode != 0:
        raise BackendUnavailable(
            f"modal deploy failed with exit code {done.returncode}",
            fix="modal token new, then run whisper-modal deploy again",
        )


def smoke_test(gpu_class: Any, path: str, model: str, language: str | None) -> str:
    """The app's ``modal run`` entrypoint: print a container's health, then transcribe ``path``.

    Returns:
        The transcript's text (also printed).
    """
    from whisper_modal.options import TranscribeOptions
    from whisper_modal.wire import Request

    options = TranscribeOptions(model=model, language=language)
    wire = Request(options=options, audio=Path(path).read_bytes()).to_wire()
    obj = gpu_class(model=model)
    print(json.dumps(obj.health.remote(), indent=2, default=str))
    text = str(obj.transcribe.remote(wire)["text"])
    print(text)
    return text
