"""A webhook receiver using only the standard library.

    WHISPER_MODAL_WEBHOOK_SECRET=... python examples/webhook_receiver.py --port 8000

Every POST is verified with ``whisper_modal.webhooks.verify`` (HMAC-SHA256 over
timestamp + body, constant-time compare, 5-minute replay window). Unsigned or stale
requests get 401; verified events are printed and acknowledged with 200. Deduplicate by
``client_job_id``: a retried submit may deliver twice for the same client job.
"""

from __future__ import annotations

import argparse
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from whisper_modal.webhooks import WebhookVerificationError, verify


def make_handler(secret: str) -> type[BaseHTTPRequestHandler]:
    seen: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                verify(dict(self.headers), body, secret)
            except WebhookVerificationError as exc:
                self.send_response(401)
                self.end_headers()
                self.wfile.write(str(exc).encode())
                return
            event = json.loads(body)
            key = event.get("client_job_id") or event.get("job_id")
            if key not in seen:
                seen.add(key)
                print(f"{event['event']}: job {event['job_id']} -> {event['status']}", flush=True)
                if event.get("result_location"):
                    print(f"  result at {event['result_location']}", flush=True)
                if event.get("error"):
                    print(f"  error: {event['error']}", flush=True)
            self.send_response(200)
            self.end_headers()

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--secret", default=os.environ.get("WHISPER_MODAL_WEBHOOK_SECRET"))
    args = parser.parse_args()
    if not args.secret:
        parser.error("pass --secret or set WHISPER_MODAL_WEBHOOK_SECRET")
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args.secret))
    print(f"listening on http://{args.host}:{args.port}/", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
