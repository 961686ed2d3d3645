"""The HTTP API on 127.0.0.1 for tests: in this process (a uvicorn thread) or as a subprocess.

* ``ApiServer(app)``: uvicorn serving ``app`` on an ephemeral loopback port in a thread
  (the socket is bound first, so ``url`` is known before the server starts).
* ``ServeProcess(env)``: ``python -m whisper_modal serve`` in its own process, for
  restarts; ``kill()`` is a SIGKILL, the way a crash or an OOM kill ends a server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.request import urlopen

from tests.servers import LOOPBACK, free_port

__all__ = ["ApiServer", "ServeProcess", "wait_healthy"]

ROOT = Path(__file__).parents[1]


def wait_healthy(url: str, timeout: float = 120.0) -> None:
    """Poll ``GET /health`` until it answers 200 (or fail after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not become healthy in {timeout} s")
        time.sleep(0.1)


class ApiServer:
    """uvicorn on an ephemeral 127.0.0.1 port in a background thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self._sock = socket.socket()
        self._sock.bind((LOOPBACK, 0))
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://{LOOPBACK}:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_keep_alive=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> ApiServer:
        self._thread.start()
        wait_healthy(self.url, timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()


class ServeProcess:
    """``python -m whisper_modal serve --backend local`` on a free loopback port."""

    def __init__(self, env: dict[str, str], port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServeProcess:
        """Start it and wait until ``/health`` answers."""
        cmd = [sys.executable, "-m", "whisper_modal", "serve", "--port", str(self.port),
               "--backend", "local"]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            wait_healthy(self.url)
        except TimeoutError:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def stop(self) -> None:
        """SIGTERM and wait (uvicorn shuts down cleanly)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.kill()
