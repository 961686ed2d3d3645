"""Run ``ModalBackend`` with the REAL modal client against loopback, in a fresh process.

    python -m tests.modal_probe {nocreds|closed|hung} CONNECT_TIMEOUT CALL_TIMEOUT [--fallback]

Prints one JSON line: the error type, message, and seconds to the typed error. A fresh
process per case keeps modal's global client state (tokens, server URL) isolated.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import threading
import time


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _hung_listener() -> tuple[int, socket.socket]:
    # Accepts connections and never answers: what a wedged proxy looks like.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            conn, _ = server.accept()
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return int(server.getsockname()[1]), server


def main() -> None:
    mode, connect, call = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    fallback = "--fallback" in sys.argv
    home = tempfile.mkdtemp(prefix="wm-modal-home-")
    os.environ["HOME"] = home
    os.environ["MODAL_CONFIG_PATH"] = os.path.join(home, ".modal.toml")
    for key in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_PROFILE"):
        os.environ.pop(key, None)
    if mode != "nocreds":
        os.environ["MODAL_TOKEN_ID"] = "ak-fake"
        os.environ["MODAL_TOKEN_SECRET"] = "as-fake"
    port = _closed_port() if mode != "hung" else _hung_listener()[0]
    os.environ["MODAL_SERVER_URL"] = f"http://127.0.0.1:{port}"

    import whisper_modal as wm

    client = wm.Client(
        backend="auto" if fallback else "modal",
        allow_cpu_fallback=True,
        model="tiny.en",
        device="cpu",
        connect_timeout=connect,
        call_timeout=call,
    )
    audio = sys.stdin.buffer.read() if fallback else b"RIFF0000WAVE"
    started = time.monotonic()
    out: dict[str, object] = {"mode": mode}
    try:
        t = client.transcribe(audio, language="en")
        out.update(ok=True, backend=t.backend, fallback_reason=t.fallback_reason, text=t.text)
    except Exception as exc:
        out.update(
            ok=False, error=type(exc).__name__, message=str(exc), module=type(exc).__module__
        )
    out["seconds"] = round(time.monotonic() - started, 3)
    print(json.dumps(out))
    sys.stdout.flush()
    import shutil

    shutil.rmtree(home, ignore_errors=True)
    os._exit(0)  # do not wait for modal's background retries to wind down


if __name__ == "__main__":
    main()
