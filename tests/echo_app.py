"""A second app for the emulator: our GPU class's interface with an engine that answers at once.

``modal deploy -m tests.echo_app`` (``deployed.deploy_echo``) publishes
``whisper-modal-echo``: a ``Transcriber`` class with the real ``transcribe`` wire contract
(the request is read with ``Request.from_wire``, the job book's claim is the real
``run_once`` on the app's own ``modal.Dict``), whose "engine" returns ``"ok <client id>"``.

The audio bytes are the engine's script: ``b"echo sleep=6"`` makes every run of the
request take 6 s, ``b"echo sleep=6 runs=1"`` only its first run (runs are counted per
``client_job_id`` in the app's ``-runs`` Dict, so a retry on another container is quick),
``b"echo fail=ValueError"`` raises that builtin exception (or that ``whisper_modal.errors``
class: ``b"echo fail=AudioError reason=not_audio"``), ``b"echo name=x"`` answers ``"ok x"``;
any other audio answers at once.
A run still sleeping when its input is cancelled stops there (Modal's
``InputCancellation``), as a real transcription would.
The SDK looks it up with ``Settings(app_name="whisper-modal-echo")``. Throughput and
fault-pattern tests (1,000 submits, 64 concurrent callers) go through it: real
``modal`` clients, the emulator's RPCs and real containers, without a model per input.

The image is the web image's light package set, so the container imports what it would.
"""

# No "from __future__ import annotations": modal reads parameter annotations at runtime.

import builtins
import time
from typing import Any

import modal

from whisper_modal.config import Settings
from whisper_modal.remote import context
from whisper_modal.remote.deployment import web_image_packages

NAME = "whisper-modal-echo"

image = (
    modal.Image.debian_slim(python_version="3.12")
    .uv_pip_install(*web_image_packages(Settings()))
    .add_local_python_source("whisper_modal", "tests")
)

app = modal.App(NAME)
jobs = modal.Dict.from_name(f"{NAME}-jobs", create_if_missing=True)
runs = modal.Dict.from_name(f"{NAME}-runs", create_if_missing=True)


def script(audio: bytes | None) -> dict[str, str]:
    """``b"echo sleep=6 runs=1"`` -> ``{"sleep": "6", "runs": "1"}`` (else ``{}``)."""
    words = (audio or b"").decode("latin-1").split()
    if not words or words[0] != "echo":
        return {}
    return dict(w.split("=", 1) for w in words[1:] if "=" in w)


def answer(request: dict[str, Any], job_id: str | None) -> dict[str, Any]:
    """What the echo engine returns for one wire request."""
    import whisper_modal as wm
    from whisper_modal.wire import Request

    parsed = Request.from_wire(request)
    steps = script(parsed.audio)
    key = parsed.client_job_id or ""
    count = int(runs.get(key, 0)) + 1
    runs.put(key, count)
    if "fail" in steps:
        from whisper_modal import errors

        message = f"echo: scripted {steps['fail']}"
        if hasattr(errors, steps["fail"]):
            kind = getattr(errors, steps["fail"])
            raise kind(message, **({"reason": steps["reason"]} if "reason" in steps else {}))
        raise getattr(builtins, steps["fail"])(message)
    if "sleep" in steps and count <= int(steps.get("runs") or 10**9):  # no runs=: every run
        time.sleep(float(steps["sleep"]))
    return wm.Transcript(
        text=f"ok {steps.get('name', parsed.client_job_id)}", language="en", duration=1.0,
        model=parsed.options.model, backend="modal", job_id=job_id or parsed.client_job_id,
    ).to_dict()  # fmt: skip


@app.cls(image=image, max_containers=3)  # one input at a time, as the GPU class
class Transcriber:
    """The GPU class's wire contract, answered without a model."""

    model: str = modal.parameter(default="turbo")

    @modal.enter()
    def start(self) -> None:
        context.install(context.Platform(jobs=jobs, gpu_class=Transcriber))

    @modal.method()
    def transcribe(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request, at most once per ``client_job_id`` (the real claim)."""
        from whisper_modal.job_book import JobBook, run_once

        return run_once(
            JobBook(jobs), context.platform.call_id(), request, lambda job: answer(request, job)
        )
