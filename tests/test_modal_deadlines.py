"""SDK deadlines against the REAL modal client: no credentials, closed port, hung server.

Modal's own client retries an unreachable server for ~60 s and waits ~160 s on a hung
one; the SDK must answer with a typed error within its own deadline instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
CONNECT, CALL = 2.0, 3.0
MARGIN = 2.0  # process-internal slack on a loaded 2-core machine


def probe(mode: str, *, fallback: bool = False, audio: bytes = b"") -> dict[str, object]:
    args = [sys.executable, "-m", "tests.modal_probe", mode, str(CONNECT), str(CALL)]
    if fallback:
        args.append("--fallback")
    done = subprocess.run(args, cwd=ROOT, input=audio, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return dict(json.loads(done.stdout.decode().strip().splitlines()[-1]))


def test_no_credentials_is_immediate_and_says_how_to_fix() -> None:
    out = probe("nocreds")
    assert out["error"] == "BackendUnavailable" and "modal token new" in str(out["message"])
    assert float(out["seconds"]) < 1.0 + MARGIN  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["closed", "hung"])
def test_unreachable_server_hits_the_connect_deadline(mode: str) -> None:
    out = probe(mode)
    assert out["error"] == "BackendUnavailable", out
    assert str(out["module"]).startswith("whisper_modal")
    assert CONNECT - 0.1 <= float(out["seconds"]) <= CONNECT + MARGIN, out  # type: ignore[arg-type]


@pytest.mark.slow
def test_unreachable_modal_falls_back_to_the_local_engine() -> None:
    import os

    from tests.models_cache import tiny_en_cache

    os.environ["WHISPER_MODAL_CACHE_DIR"] = str(tiny_en_cache())
    try:
        out = probe("closed", fallback=True, audio=(ROOT / "examples" / "sample.flac").read_bytes())
    finally:
        del os.environ["WHISPER_MODAL_CACHE_DIR"]
    assert out["ok"] is True and out["backend"] == "local", out
    assert "BackendUnavailable" in str(out["fallback_reason"])
    assert "weekly planning meeting" in str(out["text"]).lower()
