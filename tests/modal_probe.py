"""Run ``ModalBackend`` with the REAL modal client against loopback, in a fresh process.

    python -m tests.modal_probe {nocreds|closed|hung} CONNECT_TIMEOUT CALL_TIMEOUT [--fallback]

Prints one JSON line: the error type, message, and seconds to the typed error. A fresh
process per case keeps modal's global client state (tokens, server URL) isolated.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time


def isolate(mode: str) -> None:
    """Point the real modal client at a loopback address, with fake or no credentials.

    ``mode``: "nocreds" (no token at all), "closed" (a port nothing listens on) or "hung"
    (a listener that accepts connections and never answers, like a wedged proxy).
    """
    home = tempfile.mkdtemp(prefix="wm-modal-home-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.environ["HOME"] = home
    os.environ["MODAL_CONFIG_PATH"] = os.path.join(home, ".modal.toml")
    for key in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_PROFILE", "MODAL_ENVIRONMENT"):
        os.environ.pop(key, None)
    if mode != "nocreds":
        os.environ["MODAL_TOKEN_ID"] = "ak-fake"
        os.environ["MODAL_TOKEN_SECRET"] = "as-fake"
    if mode == "hung":
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        _HELD.append(server)

        def accept() -> None:
            while True:
                _HELD.append(server.accept()[0])

        threading.Thread(target=accept, daemon=True).start()
        port = int(server.getsockname()[1])
    else:
        with socket.socket() as s:  # bound then closed: nothing listens there
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
    os.environ["MODAL_SERVER_URL"] = f"http://127.0.0.1:{port}"


_HELD: list[socket.socket] = []


def main() -> None:
    mode, connect, call = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    fallback = "--fallback" in sys.argv
    isolate(mode)

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
    shutil.rmtree(os.environ["HOME"], ignore_errors=True)  # os._exit skips atexit
    os._exit(0)  # do not wait for modal's background retries to wind down


if __name__ == "__main__":
    main()
