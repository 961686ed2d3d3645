"""A second app for the emulator: our GPU class's interface with an engine that answers at once.

``modal deploy -m tests.echo_app`` (``deployed.deploy_echo``) publishes
``whisper-modal-echo``: a ``Transcriber`` class with the real ``transcribe`` wire contract
(the request is read with ``Request.from_wire``, the job book's claim is the real
``run_once`` on the app's own ``modal.Dict``), whose "engine" returns ``"ok <client id>"``.
The SDK looks it up with ``Settings(app_name="whisper-modal-echo")``. Throughput and
fault-pattern tests (1,000 submits, 64 concurrent callers) go through it: real
``modal`` clients, the emulator's RPCs and real containers, without a model per input.

The image is the web image's light package set, so the container imports what it would.
"""

# No "from __future__ import annotations": modal reads parameter annotations at runtime.

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


def answer(request: dict[str, Any], job_id: str | None) -> dict[str, Any]:
    """What the echo engine returns for one wire request."""
    import whisper_modal as wm
    from whisper_modal.wire import Request

    parsed = Request.from_wire(request)
    return wm.Transcript(
        text=f"ok {parsed.client_job_id}", language="en", duration=1.0,
        model=parsed.options.model, backend="modal", job_id=job_id or parsed.client_job_id,
    ).to_dict()  # fmt: skip


@app.cls(image=image, max_containers=3)
@modal.concurrent(max_inputs=16)
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
