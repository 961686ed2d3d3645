"""The weights cache the Modal container shares through a Volume (fault 2 of issue 10).

A local directory stands in for the Volume and a loopback HTTP server for openai-whisper's
CDN (unreachable here), serving the real tiny.en checkpoint under a URL of the same shape
(``.../<sha256>/tiny.en.pt``).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.models_cache import MODEL, tiny_en_cache
from whisper_modal.engine.models import ModelStore
from whisper_modal.errors import ConfigurationError


class WeightsServer:
    """Serves one file on 127.0.0.1; counts GETs; can cut the body short or stall first."""

    def __init__(self, payload: bytes, name: str = f"{MODEL}.pt") -> None:
        self.payload = payload
        self.sha256 = hashlib.sha256(payload).hexdigest()
        self.gets = 0
        self.cut_at: int | None = None  # send only this many bytes, then close
        self.delay = 0.0  # seconds before answering (widens the race of first starts)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.gets += 1
                time.sleep(server.delay)
                body = server.payload
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if server.cut_at is None else body[: server.cut_at])

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/models/{self.sha256}/{name}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def checkpoint() -> bytes:
    """The real tiny.en checkpoint (~75 MB), as openai-whisper would download it."""
    return (tiny_en_cache() / "imported" / f"{MODEL}.pt").read_bytes()


@pytest.fixture
def server(checkpoint: bytes) -> Iterator[WeightsServer]:
    srv = WeightsServer(checkpoint)
    yield srv
    srv.close()


def store_for(cache: Path, server: WeightsServer) -> ModelStore:
    return ModelStore(cache, urls={MODEL: server.url})


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.endswith(".part"))


def test_download_is_verified_and_renamed_into_place(tmp_path: Path, server: WeightsServer) -> None:
    store = store_for(tmp_path, server)
    path = store.ensure(MODEL)
    assert path == tmp_path / f"{MODEL}.pt"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == server.sha256
    assert store.verified_sha256(path) == server.sha256  # the sidecar records it
    assert leftovers(tmp_path) == []
    assert store.ensure(MODEL) == path and server.gets == 1  # the second start only reads


def test_half_written_checkpoint_is_repaired(tmp_path: Path, server: WeightsServer) -> None:
    # what whisper._download leaves when a container dies mid-download
    target = tmp_path / f"{MODEL}.pt"
    target.write_bytes(server.payload[: len(server.payload) // 3])
    store = store_for(tmp_path, server)
    with pytest.raises(ConfigurationError, match="does not match its SHA-256"):
        store.ensure(MODEL, allow_download=False)
    path = store.ensure(MODEL)
    assert path.read_bytes() == server.payload and server.gets == 1


def test_same_size_corruption_is_caught_after_verification(
    tmp_path: Path, server: WeightsServer
) -> None:
    store = store_for(tmp_path, server)
    path = store.ensure(MODEL)
    before = path.stat().st_mtime_ns
    with path.open("r+b") as fh:  # flip bytes in place: same size
        fh.seek(1000)
        fh.write(b"\x00" * 64)
    os.utime(path, ns=(before + 10**9, before + 10**9))  # coarse clocks: force a new mtime
    assert store.verified_sha256(path) is None  # the sidecar no longer vouches for it
    assert store.ensure(MODEL).read_bytes() == server.payload
    assert server.gets == 2


def test_interrupted_download_leaves_nothing_behind(tmp_path: Path, server: WeightsServer) -> None:
    store = store_for(tmp_path, server)
    server.cut_at = len(server.payload) // 2
    with pytest.raises(ConfigurationError, match="download failed"):
        store.ensure(MODEL)
    assert not (tmp_path / f"{MODEL}.pt").exists() and leftovers(tmp_path) == []
    server.cut_at = None
    assert store.ensure(MODEL).read_bytes() == server.payload


def test_wrong_bytes_are_refused(tmp_path: Path, checkpoint: bytes) -> None:
    other = WeightsServer(b"not a checkpoint" * 100)
    try:
        url = other.url.replace(other.sha256, hashlib.sha256(checkpoint).hexdigest())
        store = ModelStore(tmp_path, urls={MODEL: url})
        with pytest.raises(ConfigurationError, match="SHA-256"):
            store.ensure(MODEL)
        assert not (tmp_path / f"{MODEL}.pt").exists() and leftovers(tmp_path) == []
    finally:
        other.close()


def test_concurrent_first_starts_download_once(tmp_path: Path, server: WeightsServer) -> None:
    server.delay = 0.3  # every starter arrives while the first download is in flight
    store = store_for(tmp_path, server)
    results: list[Path | BaseException] = []

    def start() -> None:
        try:
            results.append(ModelStore(tmp_path, urls={MODEL: server.url}).ensure(MODEL))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == [tmp_path / f"{MODEL}.pt"] * 6
    assert server.gets == 1
    assert store.verified_sha256(tmp_path / f"{MODEL}.pt") == server.sha256


def test_whisper_download_leaves_a_corrupt_file_in_place(tmp_path: Path) -> None:
    """Pins why ModelStore does not use ``whisper._download``: after a mismatching
    download it raises but keeps the bad bytes at the final name, where every later cold
    start finds them."""
    whisper = pytest.importorskip("whisper")
    bad = WeightsServer(b"x" * 4096)
    try:
        url = bad.url.replace(bad.sha256, "0" * 64)
        with warnings.catch_warnings(), pytest.raises(RuntimeError, match="SHA256"):
            warnings.simplefilter("ignore")
            whisper._download(url, str(tmp_path), False)
        assert (tmp_path / f"{MODEL}.pt").read_bytes() == b"x" * 4096
    finally:
        bad.close()
    # and it writes to the final name while downloading (no temporary name in its source)
    import inspect

    source = inspect.getsource(whisper._download)
    assert 'open(download_target, "wb")' in source


def test_loopback_url_has_the_official_shape() -> None:
    whisper = pytest.importorskip("whisper")
    official = whisper._MODELS[MODEL]
    assert official.split("/")[-1] == f"{MODEL}.pt" and len(official.split("/")[-2]) == 64
    assert ModelStore(Path("/nonexistent")).expected_sha256(MODEL) == official.split("/")[-2]
