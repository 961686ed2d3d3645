"""Real servers on 127.0.0.1 for tests: an S3-compatible server (moto) and a webhook receiver."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from whisper_modal.webhooks import WebhookVerificationError, verify

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_SESSION_TOKEN": "testing",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Server:
    """moto's S3 on a loopback port that can be stopped and restarted (same port, same data)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: Any = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("moto server did not start")

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def requests(self, method: str | None = None) -> list[dict[str, Any]]:
        """Not available from moto's threaded server; tests count via their own means."""
        raise NotImplementedError


@contextmanager
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()


class WebhookReceiver:
    """A signature-verifying HTTP receiver on loopback.

    ``fail_first`` requests get 500, then 200; ``always`` forces one status. Every request is
    recorded with its arrival time, verification result and JSON body.
    """

    def __init__(self, secret: str, *, fail_first: int = 0, always: int | None = None) -> None:
        self.secret = secret
        self.fail_first = fail_first
        self.always = always
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    verify(dict(self.headers), body, receiver.secret)
                    verified = True
                except WebhookVerificationError:
                    verified = False
                with receiver._lock:
                    n = len(receiver.requests)
                    status = receiver.always or (500 if n < receiver.fail_first else 200)
                    if not verified:
                        status = 401
                    receiver.requests.append(
                        {"at": time.monotonic(), "verified": verified, "status": status,
                         "json": json.loads(body or b"null"), "headers": dict(self.headers)}
                    )  # fmt: skip
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
