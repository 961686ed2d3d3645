"""A webhook receiver for whisper_modal jobs, using only the standard library.

    python examples/webhook_receiver.py --port 8000 --secret "$WHISPER_MODAL_WEBHOOK_SECRET"

Then submit with ``wm.submit(audio, webhook_url="http://your-host:8000/hook")`` and the
same secret in ``WHISPER_MODAL_WEBHOOK_SECRET`` where the job runs.

Every POST is checked with ``whisper_modal.webhooks.verify`` (HMAC-SHA256 over
``"<timestamp>." + body``, constant-time compare, 5-minute replay window) before its
body is parsed. Unsigned, tampered or stale requests get 401; verified events are printed
and acknowledged with 200. A sender retries until it sees a 2xx, so the same event can
arrive twice: deduplicate by ``client_job_id`` (stable across a retried submit) and event.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from whisper_modal.webhooks import WebhookVerificationError, verify

MAX_BODY_BYTES = 10 * 1024 * 1024  # an inline transcript of a long file fits; refuse more


def make_handler(secret: str) -> type[BaseHTTPRequestHandler]:
    """Build a request handler class that verifies with ``secret``."""
    seen: set[tuple[str, str]] = set()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, text: str = "") -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            status, text = self._handle()
            self._reply(status, text)

        def _handle(self) -> tuple[int, str]:
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                return 411, "Content-Length required"
            if not 0 <= length <= MAX_BODY_BYTES:
                return 413, "body too large"
            body = self.rfile.read(length)
            try:
                verify(dict(self.headers), body, secret)  # before trusting a single byte
            except WebhookVerificationError as exc:
                return 401, str(exc)
            try:
                event = json.loads(body)
            except ValueError:
                return 400, "body is not JSON"
            key = (str(event.get("client_job_id") or event.get("job_id")), str(event.get("event")))
            with lock:
                duplicate = key in seen
                seen.add(key)
            if not duplicate:
                print(f"{event['event']}: job {event['job_id']} -> {event['status']} "
                      f"({event.get('duration_seconds')} s)", flush=True)  # fmt: skip
                if event.get("result_location"):
                    print(f"  result at {event['result_location']}", flush=True)
                if event.get("error"):
                    print(f"  error: {event['error']}", flush=True)
                if event.get("transcript"):
                    print(f"  text: {event['transcript'].get('text', '')[:200]}", flush=True)
            return 200, "ok"

        def log_message(self, format: str, *args: object) -> None:
            pass  # the events above are the log; the default line adds nothing

    return Handler


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and serve until interrupted."""
    parser = argparse.ArgumentParser(description="Receive signed whisper_modal webhooks.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--secret",
        default=os.environ.get("WHISPER_MODAL_WEBHOOK_SECRET"),
        help="shared secret (default: $WHISPER_MODAL_WEBHOOK_SECRET)",
    )
    args = parser.parse_args(argv)
    if not args.secret:
        parser.error("pass --secret or set WHISPER_MODAL_WEBHOOK_SECRET")
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args.secret))
    print(f"listening on http://{args.host}:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
