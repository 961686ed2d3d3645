"""The fake's calls and Dicts served on loopback, so a second Python process can reach them.

``FakeServer(fake)`` (in the test's process) answers ``multiprocessing.connection``
requests, authenticated with a random key; ``RemoteFake(address, key)`` (in another
process) gives ``ModalBackend`` the same lookup seams as ``FakeModal.seams()``, each
operation a round trip. Arguments and results cross Modal's serialiser both ways, as
they would between a real client and Modal. ``python -m tests.fakes.remote HOST PORT KEY
JOB_ID`` is the second process of the re-attach test: it finds the job by id alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
import threading
import time
from multiprocessing.connection import Client as Connect
from multiprocessing.connection import Connection, Listener
from typing import Any

from modal._serialization import deserialize, serialize

from tests.fakes.modal_fake import FakeModal, _Dual

__all__ = ["FakeServer", "RemoteFake"]


class FakeServer:
    """Serves ``fake``'s FunctionCalls and Dicts on 127.0.0.1 until ``close()``."""

    def __init__(self, fake: FakeModal) -> None:
        self.fake = fake
        self.key = secrets.token_hex(16)
        self._listener = Listener(("127.0.0.1", 0), authkey=self.key.encode())
        self.address: tuple[str, int] = self._listener.address  # type: ignore[assignment]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="fake-server").start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: Connection) -> None:
        with conn:
            try:
                kind, target, method, payload = conn.recv()
            except (EOFError, OSError):
                return
            args, kwargs = deserialize(payload, None)
            try:
                obj: Any = (
                    self.fake.call_lookup(target)
                    if kind == "call"
                    else self.fake.dict_lookup(target)
                )
                reply = ("ok", serialize(getattr(obj, method)(*args, **kwargs)))
            except BaseException as exc:
                reply = ("err", serialize(exc))
            with contextlib.suppress(OSError):  # the asker went away
                conn.send(reply)

    def close(self) -> None:
        self._closed = True
        self._listener.close()


class RemoteFake:
    """The lookup seams of a ``FakeModal`` that lives in another process."""

    def __init__(self, address: tuple[str, int], key: str) -> None:
        self.address = address
        self.key = key

    def ask(self, kind: str, target: str, method: str, *args: Any, **kwargs: Any) -> Any:
        with Connect(self.address, authkey=self.key.encode()) as conn:
            conn.send((kind, target, method, serialize((args, kwargs))))
            status, data = conn.recv()
        value = deserialize(data, None)
        if status == "err":
            raise value
        return value

    def call_lookup(self, call_id: str) -> _RemoteCall:
        return _RemoteCall(self, call_id)

    def dict_lookup(self, name: str, **_: Any) -> _RemoteDict:
        return _RemoteDict(self, name)

    def _no_lookup(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the second process only re-attaches: no class or function lookups")

    def seams(self) -> dict[str, Any]:
        return {
            "cls_lookup": self._no_lookup,
            "function_lookup": self._no_lookup,
            "call_lookup": self.call_lookup,
            "dict_lookup": self.dict_lookup,
        }


class _RemoteCall:
    def __init__(self, remote: RemoteFake, call_id: str) -> None:
        self.object_id = call_id
        for name in ("get", "cancel", "get_call_graph"):
            sync = self._op(remote, name)
            setattr(self, name, _Dual(sync, self._aio(sync)))

    def _op(self, remote: RemoteFake, name: str) -> Any:
        return lambda *a, **k: remote.ask("call", self.object_id, name, *a, **k)

    @staticmethod
    def _aio(sync: Any) -> Any:
        async def aio(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(sync, *args, **kwargs)

        return aio


class _RemoteDict:
    def __init__(self, remote: RemoteFake, name: str) -> None:
        self._remote = remote
        self._name = name

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        return bool(
            self._remote.ask("dict", self._name, "put", key, value, skip_if_exists=skip_if_exists)
        )

    def get(self, key: Any, default: Any | None = None) -> Any:
        return self._remote.ask("dict", self._name, "get", key, default)

    def pop(self, key: Any, default: Any = None) -> Any:
        return self._remote.ask("dict", self._name, "pop", key, default)

    def items(self) -> list[tuple[Any, Any]]:
        return list(self._remote.ask("dict", self._name, "items"))


def _reattach(host: str, port: int, key: str, job_id: str) -> dict[str, Any]:
    """The second process: find ``job_id`` by id alone, watch its progress, get its result."""
    import whisper_modal as wm
    from whisper_modal.backends.modal import ModalBackend

    settings = wm.Settings.resolve(env={}, model="tiny.en", backend="modal")
    backend = ModalBackend(settings, **RemoteFake((host, port), key).seams())
    with wm.Client(settings, modal_backend=backend) as client:
        job = wm.Job.from_id(job_id, client=client)
        seen: list[list[int]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            progress = job.progress()
            if progress is not None and (not seen or list(progress) != seen[-1]):
                seen.append(list(progress))
            if job.status().done:
                break
            time.sleep(0.05)
        transcript = job.result(timeout=120)
        final = job.progress()
        return {
            "progress": seen,
            "final_progress": None if final is None else list(final),
            "status": job.status().value,
            "text": transcript.text,
            "job_id": transcript.job_id,
            "duration": transcript.duration,
        }


if __name__ == "__main__":
    host, port, key, job = sys.argv[1:5]
    print(json.dumps(_reattach(host, int(port), key, job)))
