"""The package's shape: no import cycles, light job handles, client lifecycle, typed input errors."""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import whisper_modal as wm
from whisper_modal.config import Settings
from whisper_modal.options import TranscribeOptions

PACKAGE = Path(wm.__file__).parent
ROOT = "whisper_modal"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere (function bodies included), except
    under ``if TYPE_CHECKING:``; ``from pkg import name`` counts as the submodule if it is one."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        skip: set[int] = set()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and _is_type_checking(node):
                skip.update(id(n) for child in node.body for n in ast.walk(child))
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names
                ]
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]  # whisper_modal.x.y -> whisper_modal.x
                if target and target != name:
                    graph[name].add(target)
    # Importing a.b.c runs a/b/__init__ first: an implied edge from every module to its
    # parent package. The root package is left out: its __init__ is the public facade,
    # which re-exports from its submodules by design.
    for name in files:
        parent = name.rpartition(".")[0]
        if parent and parent != ROOT:
            graph[name].add(parent)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycles_lazy_imports_included() -> None:
    graph = import_graph()
    assert "whisper_modal.client" in graph["whisper_modal._api"]  # the walker sees imports
    assert "whisper_modal.engine.batching" in graph["whisper_modal.engine.decoding"]  # lazy
    assert "whisper_modal.http_api" in graph["whisper_modal.http_api.app"]  # implied parent
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_creating_jobs_imports_no_engine_or_torch() -> None:
    code = (
        "import sys, whisper_modal as wm\n"
        "jobs = [wm.Job.from_id(i) for i in ('local-ab', 'fc-01XYZ')]\n"
        "print([j.backend for j in jobs])\n"
        "print(sorted(m for m in ('torch', 'whisper', 'whisper_modal.engine.transcriber')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.splitlines()
    assert out == ["['local', 'modal']", "[]"]


def test_a_closed_client_refuses_work_and_stops_its_threads() -> None:
    client = wm.Client(backend="local", model="tiny.en")
    with pytest.raises(wm.JobNotFound):  # runs on the client's loop thread: starts it
        wm.Job.from_id("local-missing", client=client).status()
    loop_threads = [t for t in threading.enumerate() if t.name == "whisper-modal-loop"]
    assert loop_threads
    with client:
        pass  # __exit__ closes
    assert not any(t.is_alive() for t in loop_threads if t is client._loop._thread)
    with pytest.raises(wm.ConfigurationError, match="closed"):
        client.transcribe(b"RIFF")
    with pytest.raises(wm.ConfigurationError, match="closed"):
        asyncio.run(client.atranscribe(b"RIFF"))
    client.close()  # idempotent


async def test_async_context_manager_closes() -> None:
    async with wm.Client(backend="local", model="tiny.en") as client:
        assert not client._closed
    assert client._closed
    with pytest.raises(wm.ConfigurationError):
        await client.asubmit(b"RIFF")


def test_sync_call_from_the_clients_own_loop_is_refused() -> None:
    client = wm.Client(backend="local", model="tiny.en")

    async def inside() -> None:
        client.transcribe(b"RIFF")  # would wait on itself forever

    with pytest.raises(wm.ConfigurationError, match="use await"):
        client._loop.run(inside())
    client.close()


def test_replace_with_unknown_names_is_a_configuration_error() -> None:
    with pytest.raises(wm.ConfigurationError, match="unknown setting"):
        Settings.resolve().replace(not_a_setting=1)
    with pytest.raises(wm.ConfigurationError, match="unknown option"):
        TranscribeOptions(model="tiny.en").replace(beam=5)
    with pytest.raises(wm.ConfigurationError, match="unknown argument"):
        wm.Client(backend="local").transcribe(b"RIFF", beams=5)  # type: ignore[call-arg]


def test_every_transcribe_option_is_a_keyword() -> None:
    from whisper_modal.inputs import prepare

    request = prepare(b"RIFF", default_model="tiny.en", max_bytes=None, beam_size=3, best_of=None)
    assert request.options.beam_size == 3 and request.options.model == "tiny.en"


def test_float_samples_out_of_range_are_an_audio_error_before_any_backend() -> None:
    client = wm.Client(backend="local", model="tiny.en")
    with pytest.raises(wm.AudioError, match="divide by 32768") as info:
        client.transcribe(np.full(16000, 3e4, dtype=np.float32), sample_rate=16000)
    assert info.value.reason == "out_of_range"
    client.close()


@pytest.mark.slow
@pytest.mark.emulator
def test_an_unknown_model_for_modal_fails_before_any_call(
    wire: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On unmodified ``modal`` against the emulator of Modal's API: no lookup, no call."""
    calls = wire.emulator.servicer.calls
    rpcs = ("ClassGet", "FunctionGet", "FunctionBindParams", "FunctionMap")
    before = {rpc: calls.count(rpc) for rpc in rpcs}
    client = wire.sdk(monkeypatch)
    for model in ("/does/not/exist.pt", "tiny-but-not-a-model"):
        with pytest.raises(wm.ConfigurationError, match="known Whisper models"):
            client.transcribe(b"RIFF", model=model)
    client.close()
    assert {rpc: calls.count(rpc) for rpc in rpcs} == before
    # the same client path does reach Modal with a known model (the check above could fail)
    client = wire.sdk(monkeypatch)
    assert client.health(backend="modal")["model"] == "tiny.en"
    client.close()
    assert calls.count("ClassGet") > before["ClassGet"]


def test_a_webhook_to_an_inner_address_is_refused_when_submitting() -> None:
    from whisper_modal.inputs import prepare

    for url in ("http://169.254.169.254/latest/meta-data", "http://127.0.0.1:9/hook"):
        with pytest.raises(wm.ConfigurationError, match="WEBHOOK_ALLOW_HOSTS"):
            prepare(b"RIFF", default_model="tiny.en", max_bytes=None, webhook_url=url)
    allowed = prepare(
        b"RIFF", default_model="tiny.en", max_bytes=None,
        webhook_url="http://127.0.0.1:9/hook", webhook_allow=("127.0.0.1",),
    )  # fmt: skip
    assert allowed.webhook_url == "http://127.0.0.1:9/hook"
    from whisper_modal.backends.registry import in_process_jobs

    client = wm.Client(backend="local", model="tiny.en")
    queued = len(in_process_jobs()._jobs)
    with pytest.raises(wm.ConfigurationError):  # refused before any job is queued
        client.submit(b"RIFF", webhook_url="http://10.1.2.3/hook")
    assert len(in_process_jobs()._jobs) == queued
    client.close()


async def test_polling_a_job_that_just_finished_returns_its_outcome() -> None:
    """A poll whose wait gives up as the job ends must read the job's outcome, not time out.

    ``timeout=0`` on a finished future is that race every time: ``wrap_future`` hands the
    result over a loop iteration later, so the wait expires with the job already done.
    """
    import concurrent.futures as cf

    from whisper_modal.backends.registry import InProcessJobs

    jobs = InProcessJobs()
    done: cf.Future[wm.Transcript] = cf.Future()
    done.set_result(wm.Transcript(text="ok", language="en", duration=1.0))
    jobs.add("local-done", done)
    assert (await jobs.aresult("local-done", timeout=0)).text == "ok"
    failed: cf.Future[wm.Transcript] = cf.Future()
    failed.set_exception(wm.AudioError("bad", reason="empty"))
    jobs.add("local-failed", failed)
    with pytest.raises(wm.AudioError):
        await jobs.aresult("local-failed", timeout=0)
    own: cf.Future[wm.Transcript] = cf.Future()
    own.set_exception(wm.JobTimeout("inner deadline", job_id="x"))
    jobs.add("local-own", own)
    with pytest.raises(wm.JobTimeout, match="inner deadline"):
        await jobs.aresult("local-own", timeout=0)
    running: cf.Future[wm.Transcript] = cf.Future()
    jobs.add("local-running", running)
    with pytest.raises(wm.JobTimeout, match="not finished"):
        await jobs.aresult("local-running", timeout=0)
