"""Client overhead per call: our ``Client`` against ``modal``'s own call, both at the wire.

    python benchmarks/client_overhead.py [--calls 200]

Both go through the emulator of Modal's API on loopback (``tests/emulator``) to the echo
app (``tests/echo_app.py``: the GPU class's wire contract and job-book claim, no model),
so the engine's ~1 s per call and its jitter stay out of the difference. The peer is
unmodified ``modal``: ``Cls.from_name(...)(model=...).transcribe.remote(wire)``. What is
left is the SDK's own cost per call: reading the input, building the request, the
loop-thread hop, the chain (metrics, retry, breaker), the lookup cache, deadlines and the
typed result. Calls are interleaved, so machine load hits both alike. It also prints the
RPCs each sends (on a real account every one is a round trip to Modal's servers).
Target (issue #6): under 5 ms per call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1]))

from tests.echo_app import NAME as ECHO
from tests.emulator.deployed import deploy
from whisper_modal import Client, Settings
from whisper_modal.options import TranscribeOptions
from whisper_modal.wire import Request

SAMPLE = Path(__file__).parents[1] / "examples" / "sample.flac"


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def report(calls: int = 200) -> None:
    """Print the overhead table and ``transcribe_many``'s efficiency (see the module doc)."""
    with deploy() as deployed:
        deployed.deploy_app("tests.echo_app")
        os.environ.update(deployed.emulator.env())
        import modal

        settings = Settings.resolve(model="tiny.en", backend="modal", app_name=ECHO)
        audio = SAMPLE.read_bytes()
        method = modal.Cls.from_name(ECHO, "Transcriber")(model="tiny.en").transcribe

        def raw() -> Any:  # a fresh client id each call: the job book claims each once
            return method.remote(
                Request(options=TranscribeOptions(model="tiny.en"), audio=audio).to_wire()
            )

        with Client(settings) as client:
            client.transcribe(audio)  # warm: lookup done, a container up
            raw()
            rpcs = deployed.emulator.servicer.client_calls
            mark = len(rpcs)
            raw()
            raw_rpcs = rpcs[mark:]
            mark = len(rpcs)
            client.transcribe(audio)
            sdk_rpcs = rpcs[mark:]
            direct, sync, aio = [], [], []
            for _ in range(calls):
                direct.append(timed(raw))
                sync.append(timed(lambda: client.transcribe(audio)))
                aio.append(timed(lambda: asyncio.run(client.atranscribe(audio))))
            # transcribe_many against its ideal: n runs of `latency` s over 3 containers
            n, latency, width = 30, 0.2, 3
            wall = timed(
                lambda: client.transcribe_many(
                    [f"echo sleep={latency}".encode()] * n, concurrency=width, progress=False
                )
            )
    base = statistics.median(direct)
    print(f"# client overhead per call over modal's own .remote, median of {calls} (ms)")
    print("| path | call | modal .remote | overhead | ratio |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"\nRPCs per call: modal .remote {len(raw_rpcs)} ({', '.join(raw_rpcs)}); "
        f"Client.transcribe {len(sdk_rpcs)} ({', '.join(sdk_rpcs)})\n"
    )
    for name, samples in (("Client.transcribe (sync)", sync), ("Client.atranscribe", aio)):
        median = statistics.median(samples)
        print(
            f"| {name} | {median * 1e3:.2f} | {base * 1e3:.2f} | {(median - base) * 1e3:.2f} "
            f"| {median / base:.2f}x |"
        )

    ideal = n / width * latency
    print(
        f"\ntranscribe_many: {n} runs of {latency * 1000:.0f} ms at concurrency {width}: "
        f"{wall:.2f} s against an ideal {ideal:.2f} s ({wall / ideal:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    report(parser.parse_args().calls)


if __name__ == "__main__":
    main()
