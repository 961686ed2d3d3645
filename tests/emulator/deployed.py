"""The emulator with our app deployed, and what tests read from it.

``deploy()`` starts an ``Emulator``, creates the secret the app names and runs
``modal deploy -m whisper_modal.app`` through Modal's own CLI; ``Deployed.client`` runs
code in a fresh client process (unmodified ``modal`` pointed at the emulator). The
readers (``on_loop``, ``pieces_of``, ``busy_containers``) look at the emulator's state on
its own event loop, where it changes. ``tests/conftest.py`` serves ``deploy()`` as the
session fixture ``deployed``: one deployment for every test file that uses it.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from modal._serialization import deserialize
from modal_proto import api_pb2

from tests.emulator import Emulator
from tests.emulator.servicer import InputState
from tests.models_cache import tiny_model_cache
from whisper_modal.client import Client
from whisper_modal.config import Settings

__all__ = [
    "SECRET",
    "Deployed",
    "busy_containers",
    "deploy",
    "executions",
    "max_open_calls",
    "modal_cli",
    "on_loop",
    "outcomes",
    "pieces_of",
    "request_of",
    "requests_of",
    "wait_for",
]

ROOT = Path(__file__).parents[2]
SECRET = "whisper-modal-emulated"
T = TypeVar("T")


class Deployed:
    """The emulator with our app deployed through Modal's CLI."""

    def __init__(self, emulator: Emulator, env: dict[str, str]) -> None:
        self.emulator = emulator
        self.env = env
        self.apps: set[str] = set()  # other apps deployed (``deploy_app``)

    def use(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point this test process's ``modal`` at the emulator (undone after the test).

        Modal keeps one client per process (``Client.from_env``); it is made afresh here
        and dropped at the end, so no other test meets the emulator's."""
        import modal.client

        for key, value in self.emulator.env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(modal.client._Client, "_client_from_env", None)

    def settings(self, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Settings:
        """Settings of an SDK client in this process that talks to the emulator."""
        self.use(monkeypatch)
        base: dict[str, Any] = {"model": "tiny.en", "backend": "modal", "device": "cpu"}
        return Settings.resolve(**{**base, **overrides})

    def sdk(self, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Client:
        """A ``whisper_modal.Client`` in this process, on unmodified ``modal``, to the emulator."""
        return Client(self.settings(monkeypatch, **overrides))

    def deploy_app(self, module: str) -> None:
        """``modal deploy -m MODULE`` of another app into the same emulator (once)."""
        if module not in self.apps:
            modal_cli(self.env, "deploy", "-m", module)
            self.apps.add(module)

    def client(
        self, code: str, *, timeout: float = 240, env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Run ``code`` in a fresh client process; it prints one JSON line as its last."""
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            env={**self.env, **(env or {})},
            cwd=self.emulator.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, (
            f"client failed:\n{done.stdout}\n{done.stderr}\n{self.emulator.container_logs()}"
        )
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result


def modal_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m modal ARGS`` (Modal's own CLI) against the emulator."""
    done = subprocess.run(
        [sys.executable, "-m", "modal", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"modal {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


@contextlib.contextmanager
def deploy(
    secret: dict[str, str] | None = None, settings: dict[str, str] | None = None
) -> Iterator[Deployed]:
    """An emulator with a secret and ``modal deploy -m whisper_modal.app`` done, by Modal's CLI.

    ``secret``: more variables for the app's secret (every container's environment).
    ``settings``: ``WHISPER_MODAL_*`` variables in the deploying shell (deploy settings,
    baked into the app as ``whisper-modal deploy`` would)."""
    with Emulator() as emulator:
        env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("MODAL_", "WHISPER_MODAL_"))
            },
            **emulator.env(),
            "WHISPER_MODAL_SECRET_NAME": SECRET,
        }
        # the weights the container loads, and the CPU: what a real account's secret and
        # GPU would give it (IMAGE_ENV says cuda; a secret's variables override the image's)
        modal_cli(
            env,
            "secret",
            "create",
            SECRET,
            f"WHISPER_MODAL_CACHE_DIR={tiny_model_cache()}",
            "WHISPER_MODAL_DEVICE=cpu",
            *(f"{k}={v}" for k, v in (secret or {}).items()),
        )
        modal_cli({**env, **(settings or {})}, "deploy", "-m", "whisper_modal.app")
        yield Deployed(emulator, env)


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` (it reads the emulator's state) until true or ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def on_loop(deployed: Deployed, read: Callable[[], T]) -> T:
    """Run ``read`` on the emulator's loop: its state changes only there."""

    async def call() -> T:
        return read()

    return deployed.emulator.run(call())


def pieces_of(deployed: Deployed, job_id: str) -> list[InputState]:
    """The GPU inputs the orchestrator spawned for job ``job_id`` (its FunctionCall)."""
    servicer = deployed.emulator.servicer

    def read() -> list[InputState]:
        parents = {i.input_id for i in servicer.function_calls[job_id].inputs}
        return [
            copy.copy(i)
            for i in servicer.inputs.values()
            if servicer.function_calls[i.function_call_id].parent_input_id in parents
        ]

    return on_loop(deployed, read)


def busy_containers(deployed: Deployed) -> list[str]:
    """Containers with an input in hand."""
    pool = deployed.emulator.pool
    return on_loop(deployed, lambda: [t for t, c in pool.containers.items() if c.running])


def _requests(deployed: Deployed, cls: str, app: str) -> list[tuple[InputState, dict[str, Any]]]:
    """Every input of ``app``'s class ``cls`` with the request dict it carried (on the loop)."""
    servicer = deployed.emulator.servicer
    app_id = servicer.apps[app]
    wanted = {
        fid
        for fid, f in servicer.functions.items()
        if f.app_id == app_id and f.definition.function_name.split(".")[0] == cls
    }
    out = []
    for state in servicer.inputs.values():
        if servicer.function_calls[state.function_call_id].function_id not in wanted:
            continue
        out.append((state, request_of(servicer, state)))
    return out


def request_of(servicer: Any, state: InputState) -> dict[str, Any]:
    """The request dict an input carried (inline or as a blob); ``{}`` for other arguments."""
    item = state.item
    payload = (
        servicer.blobs.blobs[item.args_blob_id]
        if item.WhichOneof("args_oneof") == "args_blob_id"
        else item.args
    )
    args, _kwargs = deserialize(payload, None)
    return args[0] if args and isinstance(args[0], dict) else {}


def requests_of(
    deployed: Deployed, cls: str = "Transcriber", app: str = "whisper-modal"
) -> list[tuple[InputState, dict[str, Any]]]:
    """Every input of ``app``'s class ``cls`` with the request dict it carried, in order."""
    return on_loop(deployed, lambda: _requests(deployed, cls, app))


def executions(
    deployed: Deployed, cls: str = "Transcriber", app: str = "whisper-modal"
) -> collections.Counter[Any]:
    """How many times inputs of ``app``'s class ``cls`` reached a container (or a fault
    standing in for one), per ``client_job_id`` of their request: runs Modal started."""
    servicer = deployed.emulator.servicer

    def read() -> collections.Counter[Any]:
        delivered = collections.Counter(i for _, ids in servicer.deliveries for i in ids)
        counts: collections.Counter[Any] = collections.Counter()
        for state, request in _requests(deployed, cls, app):
            counts[request.get("client_job_id")] += delivered[state.input_id]
        return +counts

    return on_loop(deployed, read)


def outcomes(
    deployed: Deployed, cls: str = "Transcriber", app: str = "whisper-modal"
) -> dict[Any, collections.Counter[str]]:
    """Per ``client_job_id``: how its inputs ended. ``completed`` (transcribed),
    ``deduplicated`` (answered ``duplicate_of``: the claim was another's), ``terminated``
    (cancelled, running or not), ``failed``, or still ``open``."""
    servicer = deployed.emulator.servicer
    status = api_pb2.GenericResult

    def read() -> dict[Any, collections.Counter[str]]:
        out: dict[Any, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for state, request in _requests(deployed, cls, app):
            output = state.output
            if output is None:
                kind = "open"
            elif output.result.status == status.GENERIC_STATUS_SUCCESS:
                data = (
                    servicer.blobs.blobs[output.result.data_blob_id]
                    if output.result.WhichOneof("data_oneof") == "data_blob_id"
                    else output.result.data
                )
                value = deserialize(data, None)
                dup = isinstance(value, dict) and "duplicate_of" in value
                kind = "deduplicated" if dup else "completed"
            elif output.result.status == status.GENERIC_STATUS_TERMINATED:
                kind = "terminated"
            else:
                kind = "failed"
            out[request.get("client_job_id")][kind] += 1
        return dict(out)

    return on_loop(deployed, read)


def max_open_calls(
    deployed: Deployed, cls: str = "Transcriber", app: str = "whisper-modal", since: float = 0.0
) -> int:
    """The most inputs of ``app``'s class ``cls`` open at once (put in, no output yet),
    among those put in after ``since`` (``time.monotonic()``): the caller's concurrency."""

    def read() -> int:
        edges = []
        for state, _ in _requests(deployed, cls, app):
            if state.queued_at >= since:
                edges += [(state.queued_at, 1), (state.finished_at or float("inf"), -1)]
        most = open_now = 0
        for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
            open_now += step
            most = max(most, open_now)
        return most

    return on_loop(deployed, read)
