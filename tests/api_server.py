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

__all__ = ["ApiServer", "ModalWebProxy", "ServeProcess", "wait_healthy"]

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

        self.app = app
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

    def __init__(self, env: dict[str, str], port: int | None = None, root: Path = ROOT) -> None:
        self.root = root  # the source tree it serves (a benchmark's baseline checkout)
        self.port = port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.env = {**os.environ, "PYTHONPATH": str(root), **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServeProcess:
        """Start it and wait until ``/health`` answers."""
        cmd = [sys.executable, "-m", "whisper_modal", "serve", "--port", str(self.port),
               "--backend", "local"]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, env=self.env, cwd=self.root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
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


class ModalWebProxy:
    """Modal's web proxy in front of ``upstream``, with its request cut made short.

    Modal answers a web request that runs past 150 s with ``303 See Other`` to the same
    URL plus ``__modal_function_call_id``: the *result URL*, which blocks until the
    function's answer is there (docs: "Request timeouts"). Here the first answer comes
    within ``first_within`` seconds (0: always the 303) and the result URL waits up to
    ``result_within``. ``upstream_requests`` counts what reached the app: a client that
    follows the 303 must not send the transcription twice.
    """

    def __init__(self, upstream: str, *, first_within: float, result_within: float) -> None:
        import http.server
        import urllib.parse
        import uuid

        proxy = self
        self.upstream = upstream
        self.redirects = 0
        self.upstream_requests = 0
        self._results: dict[str, tuple[threading.Event, list[Any]]] = {}
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _answer(self, ticket: str, within: float) -> None:
                done, slot = proxy._results[ticket]
                # 0 means always the 303: a fast answer must not win a race with the cut
                if within <= 0 or not done.wait(within):
                    with proxy._lock:
                        proxy.redirects += 1
                    path = urllib.parse.urlsplit(self.path).path
                    self.send_response(303)
                    self.send_header("Location", f"{path}?__modal_function_call_id={ticket}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status, headers, body = slot[0]
                self.send_response(status)
                for name, value in headers:
                    if name.lower() in ("content-type", "x-request-id"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self, method: str) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                ticket = (query.get("__modal_function_call_id") or [""])[0]
                if ticket in proxy._results:  # the result URL: the same answer, no new run
                    self._answer(ticket, result_within)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                ticket = "fc-web-" + uuid.uuid4().hex[:8]
                proxy._results[ticket] = (threading.Event(), [])
                keep = {k: v for k, v in self.headers.items()
                        if k.lower() in ("authorization", "content-type")}  # fmt: skip
                worker = threading.Thread(
                    target=proxy._call, args=(ticket, method, self.path, keep, body), daemon=True
                )
                proxy._workers.append(worker)
                worker.start()
                self._answer(ticket, first_within)

            def do_GET(self) -> None:
                self._forward("GET")

            def do_POST(self) -> None:
                self._forward("POST")

        self._server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _call(
        self, ticket: str, method: str, path: str, headers: dict[str, str], body: bytes | None
    ) -> None:
        from urllib.error import HTTPError
        from urllib.request import Request

        with self._lock:
            self.upstream_requests += 1
        request = Request(f"{self.upstream}{path}", data=body, method=method, headers=headers)
        try:
            with urlopen(request, timeout=300) as response:
                answer = (response.status, list(response.headers.items()), response.read())
        except HTTPError as exc:
            answer = (exc.code, list(exc.headers.items()), exc.read())
        done, slot = self._results[ticket]
        slot.append(answer)
        done.set()

    def __enter__(self) -> ModalWebProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self._workers:
            worker.join(timeout=300)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=30)


def multipart(
    fields: dict[str, str],
    audio: bytes,
    *,
    name: str = "file",
    filename: str = "a.wav",
    kind: str | None = "audio/wav",
    boundary: str = "wm-test-boundary",
) -> tuple[bytes, str]:
    """A multipart/form-data body: ``fields``, then ``audio`` as the part ``name``
    (``kind`` None: that part has no Content-Type). Returns (body, Content-Type)."""
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    )
    content_type = "" if kind is None else f"Content-Type: {kind}\r\n"
    body += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
        f'filename="{filename}"\r\n{content_type}\r\n'
    ).encode()
    body += audio + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"
