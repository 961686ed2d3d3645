"""An emulator of Modal's API on loopback, for running unmodified ``modal`` against our app.

``Emulator()`` starts, on a thread of its own: the gRPC servicer (``servicer.Servicer``)
on a TCP port for clients, Modal's blob storage (``blobs.BlobStore``) over HTTP, and a
pool of real container processes (``containers.ContainerPool``), each with its own socket,
and Modal's web proxy (``proxy.WebProxy``): each web function's ``web_url`` is a loopback
port whose HTTP requests become the function's inputs.
``env()`` is what a client process needs (``MODAL_SERVER_URL``, a token, an empty config),
so ``modal deploy``, ``modal.Cls.from_name(...)`` and our SDK run exactly as they would
against Modal's servers.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import grpclib.server
from aiohttp import web

from tests.emulator.blobs import BlobStore
from tests.emulator.containers import ContainerPool, workdir
from tests.emulator.proxy import WebProxy
from tests.emulator.servicer import Servicer

T = TypeVar("T")

__all__ = ["Emulator"]


class Emulator:
    """Modal on loopback: ``with Emulator() as emu: ... emu.env() ...``."""

    def __init__(
        self, *, max_containers_per_function: int = 3, web_cut_seconds: float = 150.0
    ) -> None:
        self.workdir = workdir()
        self.blobs = BlobStore()
        self.servicer = Servicer(self.blobs)
        self.web = WebProxy(self.servicer, cut_seconds=web_cut_seconds)
        self.servicer.web = self.web
        self.pool = ContainerPool(
            self.servicer, self.workdir / "tasks", max_per_function=max_containers_per_function
        )
        self.servicer.pool = self.pool
        self.client_url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="modal-emulator", daemon=True
        )
        self._server: grpclib.server.Server | None = None
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> Emulator:
        self._thread.start()
        self.run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60.0) -> T:
        """Run ``coro`` on the emulator's loop (to read or change its state safely)."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    async def _start(self) -> None:
        app = web.Application(client_max_size=1024**3)
        app.add_routes(self.blobs.routes())
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.blobs.base_url = f"http://127.0.0.1:{port}"
        self._server = grpclib.server.Server([self.servicer])
        await self._server.start("127.0.0.1", 0)
        sockets = self._server._server.sockets if self._server._server else []
        self.client_url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"

    def env(self) -> dict[str, str]:
        """What a client process sets to use the emulator instead of Modal's servers."""
        config = self.workdir / "modal.toml"
        config.touch()
        return {
            "MODAL_SERVER_URL": self.client_url,
            "MODAL_TOKEN_ID": "ak-emulator",
            "MODAL_TOKEN_SECRET": "as-emulator",
            "MODAL_CONFIG_PATH": str(config),
        }

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self.run(self._stop(), timeout=60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def _stop(self) -> None:
        await self.pool.stop_all()
        await self.web.stop()
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def container_logs(self) -> str:
        return self.pool.logs()

    @property
    def root(self) -> Path:
        return self.workdir
