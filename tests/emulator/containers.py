"""Containers for the emulator: real ``python -m modal._container_entrypoint`` processes.

Each container gets what a Modal worker gives it: the ``ContainerArguments`` that the
deployed definition makes (function definition, bound parameters, the app's layout), a
socket of its own to the API (Modal knows a task by its connection), and an environment
made of its image's ``ENV`` lines and its secrets, nothing from the test's shell. Its
packages are its image's: the interpreter runs with ``-S`` (no site-packages) and a path
made of the image's own site directory (links to ``modal`` and the distributions its
``pip``/``uv`` lines install, with their dependencies) and the files its mounts uploaded
(``add_local_python_source``, written out as ``/root`` would hold them). Code that needs a
package its image lacks fails here as it would on Modal, and the container runs the
uploaded source, not the test's checkout.

Not emulated: the image's Python version (the container runs this interpreter), GPUs
(``WHISPER_MODAL_DEVICE`` comes from the secret), memory limits, volume mount paths (a
volume's files are not materialised; the weights come through the secret's cache dir).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata as md
import os
import re
import shlex
import signal
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpclib.server
from modal_proto import api_pb2
from packaging.requirements import InvalidRequirement, Requirement

if TYPE_CHECKING:
    from tests.emulator.servicer import Servicer


@dataclass
class Container:
    """One running container (a task)."""

    task_id: str
    function_id: str
    process: asyncio.subprocess.Process
    server: grpclib.server.Server
    log_path: Path
    running: set[str] = field(default_factory=set)
    retiring: bool = False
    exit_code: int | None = None


class ContainerPool:
    """Starts containers on demand, watches them die, stops them at the end."""

    def __init__(self, servicer: Servicer, workdir: Path, *, max_per_function: int = 3) -> None:
        self.servicer = servicer
        self.workdir = workdir
        self.max_per_function = max_per_function
        self.containers: dict[str, Container] = {}
        self.exited: dict[str, Container] = {}
        self._lock = asyncio.Lock()
        self._watchers: set[asyncio.Task[None]] = set()
        #: extra variables for every container (the tests' own, e.g. coverage), never the shell's
        self.extra_env: dict[str, str] = {}

    def count(self, function_id: str) -> int:
        return sum(1 for c in self.containers.values() if c.function_id == function_id)

    def retiring(self, task_id: str) -> bool:
        c = self.containers.get(task_id)
        return c is None or c.retiring

    def started(self, task_id: str, input_ids: Iterable[str]) -> None:
        if task_id in self.containers:
            self.containers[task_id].running.update(input_ids)

    def finished(self, task_id: str, input_id: str) -> None:
        if task_id in self.containers:
            self.containers[task_id].running.discard(input_id)

    async def demand(self, function_id: str) -> None:
        """Inputs are queued for ``function_id``: start a container if none is free."""
        async with self._lock:
            state = self.servicer.functions[function_id]
            live = [c for c in self.containers.values() if c.function_id == function_id]
            capacity = max(1, state.definition.max_concurrent_inputs or 1)
            if state.definition.batch_max_size:
                capacity = state.definition.batch_max_size
            free = sum(max(0, capacity - len(c.running)) for c in live)
            pending = sum(1 for i in state.queue if i.status == "pending")
            if self.servicer.is_paused(function_id):
                pending = 0  # held back: no container starts for them
            limit = state.definition.autoscaler_settings.max_containers or self.max_per_function
            if pending > free and len(live) < min(limit, self.max_per_function):
                await self._start(function_id)

    async def _start(self, function_id: str) -> None:
        state = self.servicer.functions[function_id]
        task_id = self.servicer.new_id("ta")
        definition = state.definition
        args = api_pb2.ContainerArguments(
            task_id=task_id,
            function_id=function_id,
            app_id=state.app_id,
            function_def=definition,
            serialized_params=state.serialized_params,
            environment_name="main",
            app_layout=self.servicer.layout(state.app_id),
        )
        task_dir = self.workdir / task_id
        task_dir.mkdir(parents=True)
        args_path = task_dir / "container-args.bin"
        args_path.write_bytes(args.SerializeToString())
        socket_path = task_dir / "api.sock"
        server = grpclib.server.Server([self.servicer.for_task(task_id)])
        await server.start(path=str(socket_path))
        image_env, packages = image_contents(self.servicer, definition.image_id)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(task_dir),
            "TMPDIR": str(task_dir),
            "LANG": "C.UTF-8",
            **image_env,
            **self.secret_env(definition),
            **self.extra_env,
            "PYTHONPATH": os.pathsep.join(
                [*self.mount_roots(definition), str(self.image_site(definition.image_id, packages))]
            ),
            "MODAL_SERVER_URL": f"unix://{socket_path}",
            "MODAL_TASK_ID": task_id,
            "MODAL_IS_REMOTE": "1",
            "MODAL_CONTAINER_ARGUMENTS_PATH": str(args_path),
            "MODAL_TOKEN_ID": "ak-emulator-container",
            "MODAL_TOKEN_SECRET": "as-emulator-container",
        }
        log_path = task_dir / "output.log"
        log = log_path.open("wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-S",  # no site-packages: the image's own site directory is on PYTHONPATH
            "-m",
            "modal._container_entrypoint",
            cwd=str(task_dir),
            env=env,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        container = Container(task_id, function_id, process, server, log_path)
        self.containers[task_id] = container
        watcher = asyncio.get_running_loop().create_task(self._watch(container))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    def secret_env(self, definition: api_pb2.Function) -> dict[str, str]:
        env: dict[str, str] = {}
        for secret_id in definition.secret_ids:
            env.update(self.servicer.secret_env.get(secret_id, {}))
        return env

    def image_site(self, image_id: str, packages: list[str]) -> Path:
        """The image's site directory (made once per image)."""
        target = self.workdir.parent / "images" / image_id / "site-packages"
        if not target.exists():
            site_directory(target, packages)
        return target

    def mount_roots(self, definition: api_pb2.Function) -> list[str]:
        """The function's mounts written out as uploaded (``/root/...`` -> ``<mount>/...``).

        Modal puts ``add_local_python_source`` files under ``/root``, the container's working
        directory and first on its path: the container runs the uploaded files, not the
        test's checkout."""
        roots = []
        for mount_id in definition.mount_ids:
            root = self.workdir.parent / "mounts" / mount_id
            request = self.servicer.mounts.get(mount_id)
            if request is None:
                continue
            if not root.exists():
                for f in request.files:
                    relative = (
                        Path(f.filename).relative_to("/root")
                        if f.filename.startswith("/root/")
                        else None
                    )
                    if relative is None:
                        continue  # files outside /root are not ours to place
                    target = root / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(self.servicer.mount_files[f.sha256_hex])
                root.mkdir(parents=True, exist_ok=True)
            roots.append(str(root))
        return roots

    async def _watch(self, container: Container) -> None:
        code = await container.process.wait()
        container.exit_code = code
        container.server.close()
        self.containers.pop(container.task_id, None)
        self.exited[container.task_id] = container
        self.servicer.container_lost(container.task_id, f"container exited with code {code}")
        # its inputs may still be queued: someone else has to take them
        state = self.servicer.functions[container.function_id]
        if any(i.status == "pending" for i in state.queue) and not container.retiring:
            await self.demand(container.function_id)

    async def kill(self, task_id: str) -> None:
        """SIGKILL the container (an OOM, a lost worker, ``terminate_containers``)."""
        container = self.containers.get(task_id)
        if container is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(container.process.pid, signal.SIGKILL)

    async def stop_all(self, grace: float = 10.0) -> None:
        """Retire every container (a kill switch at its next input fetch), then SIGKILL."""
        for c in self.containers.values():
            c.retiring = True
        for state in self.servicer.functions.values():
            async with state.queued:
                state.queued.notify_all()
        waiting = [c.process.wait() for c in list(self.containers.values())]
        if waiting:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waiting), grace)
        for task_id in list(self.containers):
            await self.kill(task_id)
        if self._watchers:
            await asyncio.gather(*self._watchers, return_exceptions=True)

    def logs(self) -> str:
        """Every container's output, for a failing test's report."""
        out = []
        for c in [*self.exited.values(), *self.containers.values()]:
            text = c.log_path.read_text(errors="replace") if c.log_path.exists() else ""
            out.append(f"--- {c.task_id} ({c.function_id}, exit {c.exit_code})\n{text}")
        return "\n".join(out)


def image_contents(servicer: Servicer, image_id: str) -> tuple[dict[str, str], list[str]]:
    """An image's ``ENV`` variables and pip requirements, its base images' first."""
    env: dict[str, str] = {}
    packages: list[str] = []
    chain = []
    seen = set()
    while image_id and image_id not in seen:
        seen.add(image_id)
        image = servicer.images.get(image_id)
        if image is None:
            break
        chain.append(image)
        image_id = image.base_images[0].image_id if image.base_images else ""
    for image in reversed(chain):
        for command in image.dockerfile_commands:
            if command.startswith("ENV "):
                for token in shlex.split(command[4:]):
                    key, _, value = token.partition("=")
                    env[key] = value
            elif command.startswith("RUN ") and "pip install" in command:
                packages += _requirements(shlex.split(command[4:]))
    return env, packages


def _requirements(tokens: list[str]) -> list[str]:
    out = []
    after_install = False
    for token in tokens:
        if token == "install":
            after_install = True
        elif after_install and not token.startswith("-") and re.match(r"^[A-Za-z0-9]", token):
            out.append(token)
    return out


def site_directory(target: Path, requirements: Iterable[str]) -> Path:
    """A site directory holding what an image with these requirements installs.

    Every top-level entry of each distribution in the closure of ``modal`` and the
    requirements (packages, extension modules, ``.libs``, ``.dist-info``) is linked from
    this interpreter's installation."""
    target.mkdir(parents=True, exist_ok=True)
    for name in sorted(_closure(["modal", *requirements])):
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        for entry in {f.parts[0] for f in dist.files or [] if f.parts and f.parts[0] != ".."}:
            source = Path(str(dist.locate_file(entry)))
            link = target / entry
            if source.exists() and not link.exists():
                link.symlink_to(source.resolve())
    return target


def _closure(requirements: Iterable[str]) -> set[str]:
    todo = list(requirements)
    seen: set[str] = set()
    while todo:
        try:
            req = Requirement(todo.pop())
        except InvalidRequirement:
            continue
        name = _norm(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            needs = md.requires(req.name) or []
        except md.PackageNotFoundError:
            continue
        for need in needs:
            try:
                sub = Requirement(need)
            except InvalidRequirement:
                continue
            if sub.marker is None or sub.marker.evaluate({"extra": ""}):
                todo.append(need)
            for extra in req.extras:  # what the image asked for with [extra]
                if sub.marker is not None and sub.marker.evaluate({"extra": extra}):
                    todo.append(need)
    return seen


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="modal-emulator-"))
