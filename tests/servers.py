"""Real servers on 127.0.0.1 for tests: moto's S3, a faulty S3 and a webhook receiver.

* ``S3Server`` / ``moto_server()``: moto's S3 over real HTTP, with a server-side request
  log (so a test can prove a GetObject was never sent), ``stop()``/``restart()`` on the
  same port (moto's state survives: it lives in the process), and ``enforce_auth()`` to
  turn on moto's IAM checks (real AccessDenied / InvalidAccessKeyId answers).
* ``FaultyS3Server``: answers HeadObject honestly, then breaks GetObject the way real
  networks do (a body cut short, a stalled body, a 503 SlowDown).
* ``WebhookReceiver``: verifies every POST with ``webhooks.verify`` and records it with
  its arrival time; can answer 500 for the first N requests, or one fixed status.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.request import Request, urlopen

from whisper_modal.webhooks import WebhookVerificationError, verify

__all__ = [
    "FAKE_AWS_ENV",
    "FaultyS3Server",
    "S3Server",
    "WebhookReceiver",
    "aws_env",
    "free_port",
    "moto_server",
    "s3_server",
]

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_SESSION_TOKEN": "testing",
}
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port nobody listens on right now (for "connection refused" cases)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@contextmanager
def aws_env() -> Iterator[None]:
    """Fake AWS credentials in the environment, restored afterwards."""
    saved = {k: os.environ.get(k) for k in FAKE_AWS_ENV}
    os.environ.update(FAKE_AWS_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class S3Server:
    """moto's S3 on a loopback port, with a log of every request it received.

    Built from the same parts as ``moto.server.ThreadedMotoServer`` (werkzeug's threaded
    server around moto's WSGI app), plus a small WSGI wrapper that records
    ``(method, path)``: ThreadedMotoServer has no hook for that.
    """

    def __init__(self) -> None:
        self.port = 0
        self.endpoint = ""
        #: (method, raw path) of every request, in arrival order
        self.log: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def _app(self) -> Callable[..., Any]:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        moto_app = DomainDispatcherApplication(create_backend_app)

        def recording_app(environ: dict[str, Any], start_response: Any) -> Any:
            with self._lock:
                self.log.append((environ["REQUEST_METHOD"], environ.get("RAW_URI", "")))
            return moto_app(environ, start_response)

        return recording_app

    def start(self) -> None:
        """Start serving (on the previous port after a ``stop()``)."""
        from moto.moto_server.werkzeug_app import MotoRequestHandler
        from werkzeug.serving import make_server

        class QuietHandler(MotoRequestHandler):
            def log_request(self, *args: Any) -> None:
                pass  # werkzeug prints every request to stderr otherwise

        self._server = make_server(
            LOOPBACK, self.port, self._app(), threaded=True, request_handler=QuietHandler
        )
        self.port = int(self._server.server_address[1])
        self.endpoint = f"http://{LOOPBACK}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket: new connections are refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def restart(self) -> None:
        """Stop, then start again on the same port; buckets and objects are kept."""
        self.stop()
        self.start()

    def client(self, **kwargs: Any) -> Any:
        """A plain boto3 S3 client for arranging test data (fake credentials by default)."""
        import boto3

        options: dict[str, Any] = {
            "aws_access_key_id": FAKE_AWS_ENV["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": FAKE_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        }
        options.update(kwargs)
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", **options)

    def sdk_environment(self) -> dict[str, str]:
        """What a process (a container's secret, a subprocess) needs to reach this store
        with the SDK's own settings: fake AWS credentials and the endpoint."""
        return {**FAKE_AWS_ENV, "WHISPER_MODAL_S3_ENDPOINT_URL": self.endpoint}

    def requests_for(self, path: str) -> list[str]:
        """The methods of every logged request whose path (without query) is ``path``."""
        with self._lock:
            return [m for m, p in self.log if p.split("?", 1)[0] == path]

    def enforce_auth(self, enabled: bool) -> None:
        """Turn moto's IAM authentication/authorisation on or off (process-wide).

        With it on, S3 requests are authorised under the IAM action AWS checks for them
        (``_authorize_like_aws``), so a policy that works on AWS works here.
        """
        _authorize_like_aws()
        count = b"0" if enabled else b"inf"
        url = f"{self.endpoint}/moto-api/reset-auth"
        # text/plain: urllib's default form content type makes moto read an empty body
        request = Request(url, data=count, method="POST", headers={"Content-Type": "text/plain"})
        with urlopen(request, timeout=5) as response:
            assert response.status == 200


# AWS authorises a few S3 operations under another operation's IAM action: HeadObject
# needs s3:GetObject (there is no s3:HeadObject action; see the "Permissions" section of
# https://docs.aws.amazon.com/AmazonS3/latest/API/API_HeadObject.html) and HeadBucket needs
# s3:ListBucket. moto 5.2.5 did the same; moto 5.2.6 checks the operation's own name, so it
# refuses HeadObject under a policy that AWS accepts (a difference from AWS, not a stricter
# AWS). Mapping the names back keeps the IAM test meaningful on both versions (a no-op on
# 5.2.5, which already passes s3:GetObject for a HEAD).
_AWS_IAM_ACTION = {"HeadObject": "GetObject", "HeadBucket": "ListBucket"}
_aws_authorization = threading.Lock()


def _authorize_like_aws() -> None:
    from moto.iam import access_control

    with _aws_authorization:
        request_class: Any = access_control.S3IAMRequest
        if getattr(request_class, "_whisper_modal_aws_actions", False):
            return
        original = request_class.__init__

        def init(self: Any, *args: Any, action: str, **kwargs: Any) -> None:
            original(self, *args, action=_AWS_IAM_ACTION.get(action, action), **kwargs)

        request_class.__init__ = init
        request_class._whisper_modal_aws_actions = True


@contextmanager
def moto_server() -> Iterator[S3Server]:
    """A running ``S3Server`` with fake AWS credentials in the environment."""
    with aws_env():
        server = S3Server()
        server.start()
        try:
            yield server
        finally:
            server.stop()


s3_server = moto_server  # the older name


class FaultyS3Server:
    """An S3 look-alike whose GetObject fails; HeadObject tells the true size.

    Modes: ``"truncate"`` sends half the body and closes the connection; ``"stall"``
    sends half and then waits ``stall_seconds``; ``"slowdown"`` answers 503 SlowDown.
    ``gets`` counts the GetObject requests that arrived.
    """

    def __init__(self, mode: str, body: bytes, *, stall_seconds: float = 5.0) -> None:
        self.mode, self.body, self.gets = mode, body, 0
        etag = '"' + hashlib.md5(body, usedforsecurity=False).hexdigest() + '"'
        server = self
        stop = threading.Event()
        self._stop = stop

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _headers(self, status: int, length: int, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(length))
                self.send_header("Content-Type", content_type)
                self.send_header("ETag", etag)
                self.end_headers()

            def do_HEAD(self) -> None:
                self._headers(200, len(server.body), "application/octet-stream")

            def do_GET(self) -> None:
                server.gets += 1
                if server.mode == "slowdown":
                    xml = (
                        b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                        b"<Message>Please reduce your request rate.</Message></Error>"
                    )
                    self._headers(503, len(xml), "application/xml")
                    self.wfile.write(xml)
                    return
                self._headers(200, len(server.body), "application/octet-stream")
                self.wfile.write(server.body[: len(server.body) // 2])
                self.wfile.flush()
                if server.mode == "stall":
                    stop.wait(stall_seconds)
                self.close_connection = True  # "truncate": the rest never comes

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://{LOOPBACK}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultyS3Server:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()


class WebhookReceiver:
    """A signature-verifying HTTP receiver on loopback.

    The first ``fail_first`` requests get 500, later ones 200; ``always`` forces one
    status; a request that fails verification gets 401. Every request is recorded in
    ``requests`` with its monotonic arrival time (``at``), ``verified``, the ``status``
    sent back, the parsed ``json`` body and the ``headers``.
    """

    def __init__(
        self,
        secret: str,
        *,
        fail_first: int = 0,
        always: int | None = None,
        tolerance: float = 300.0,
    ) -> None:
        self.secret = secret
        self.fail_first = fail_first
        self.always = always
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                at = time.monotonic()
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    verify(dict(self.headers), body, receiver.secret, tolerance=tolerance)
                    verified = True
                except WebhookVerificationError:
                    verified = False
                with receiver._lock:
                    n = len(receiver.requests)
                    status = receiver.always or (500 if n < receiver.fail_first else 200)
                    if not verified:
                        status = 401
                    receiver.requests.append(
                        {"at": at, "verified": verified, "status": status, "path": self.path,
                         "json": json.loads(body or b"null"), "headers": dict(self.headers)}
                    )  # fmt: skip
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until ``count`` requests arrived (or ``timeout`` passed); return them all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.requests) >= count:
                    break
            time.sleep(0.01)
        with self._lock:
            return list(self.requests)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
