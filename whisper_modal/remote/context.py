"""What container code asks of Modal at run time, and the environment it reads.

``whisper_modal.app`` installs the real ``Platform`` once its classes exist; another app
built from the same container code (the test suite's echo app) installs its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import modal

__all__ = ["Platform", "environ", "install", "platform"]


class Platform:
    """The run-time answers of Modal: the input's call id, the job book, the GPU class.

    Args:
        jobs: the job book's ``modal.Dict``.
        gpu_class: the GPU class (a ``modal.Cls``) the orchestrator spawns pieces on.
    """

    def __init__(self, jobs: Any = None, gpu_class: Any = None) -> None:
        self._jobs = jobs
        self._gpu_class = gpu_class

    def call_id(self) -> str | None:
        """The FunctionCall id of the input being run (the job id)."""
        return modal.current_function_call_id()

    def job_store(self) -> Any:
        """The job book's Dict."""
        return self._jobs

    def chunk_method(self, model: str) -> Any:
        """The GPU class's ``transcribe`` for ``model`` (the orchestrator spawns pieces on it)."""
        return self._gpu_class(model=model).transcribe

    def function_call(self, call_id: str) -> Any:
        """``modal.FunctionCall.from_id``."""
        return modal.FunctionCall.from_id(call_id)


#: the installed platform (``install``); read at call time, so a swap takes effect at once
platform: Platform = Platform()

#: what the container sees as its environment. A real container: ``os.environ``.
environ: Mapping[str, str] = os.environ


def install(new: Platform) -> Platform:
    """Make ``new`` the platform container code uses; returns the one it replaces."""
    global platform
    old, platform = platform, new
    return old
