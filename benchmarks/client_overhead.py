"""Client overhead per call: a Client through the Modal fake vs the handler called directly.

    python benchmarks/client_overhead.py [--calls 200]

The fake runs a scripted handler (wire validation and result building, no model), so the
engine's ~1 s per call and its jitter stay out of the difference; what is left is the SDK's
own cost per call: reading the input, building the request, the loop-thread hop, the chain
(metrics, retry, breaker), the lookup cache, deadlines, the wire round trip and the typed
result. Calls are interleaved with direct handler calls, so machine load hits both alike.
Target (issue #6): under 5 ms per call.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1]))

from tests.fakes.modal_fake import FakeModal
from whisper_modal import Client, Settings, Transcript
from whisper_modal.backends.modal import ModalBackend
from whisper_modal.options import TranscribeOptions
from whisper_modal.wire import Request

SAMPLE = Path(__file__).parents[1] / "examples" / "sample.flac"


def handler(wire: dict[str, Any]) -> dict[str, Any]:
    request = Request.from_wire(wire)
    return Transcript(
        text="ok", language="en", duration=1.0, model=request.options.model, backend="modal"
    ).to_dict()


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    fake = FakeModal(handler=handler)
    settings = Settings.resolve(model="tiny.en", backend="modal")
    backend = ModalBackend(settings, cls_lookup=fake.cls_lookup, call_lookup=fake.call_lookup)
    audio = SAMPLE.read_bytes()
    wire = Request(options=TranscribeOptions(model="tiny.en"), audio=audio).to_wire()
    with Client(settings, modal_backend=backend) as client:
        client.transcribe(audio)  # warm: lookup done
        direct, sync, aio = [], [], []
        for _ in range(args.calls):
            direct.append(timed(lambda: handler(wire)))
            sync.append(timed(lambda: client.transcribe(audio)))
            aio.append(timed(lambda: asyncio.run(client.atranscribe(audio))))
    fake.close()
    base = statistics.median(direct)
    print(f"# client overhead per call, median of {args.calls} (ms)")
    print("| path | call | handler alone | overhead |")
    print("|---|---:|---:|---:|")
    for name, samples in (("Client.transcribe (sync)", sync), ("Client.atranscribe", aio)):
        median = statistics.median(samples)
        print(f"| {name} | {median * 1e3:.2f} | {base * 1e3:.2f} | {(median - base) * 1e3:.2f} |")


if __name__ == "__main__":
    main()
