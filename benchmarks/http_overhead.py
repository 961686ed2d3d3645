"""What the HTTP API costs on top of an in-process call, and its memory under 20 uploads.

    python benchmarks/http_overhead.py              # tiny.en on CPU, 8 rounds
    python benchmarks/http_overhead.py --rounds 20

Same audio, same warm engine, same process: ``Client.transcribe(bytes)`` against
``POST /v1/audio/transcriptions`` through uvicorn on 127.0.0.1, once with the official
``openai`` SDK and once with a bare ``http.client`` multipart POST. Rounds alternate, so
machine load hits both alike; medians are reported. The "no model" rows time a request
that fails in the decoder (junk audio: ``AudioError`` in-process, 400 over HTTP), i.e.
the HTTP stack alone. Last, 20 concurrent uploads and the process's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import http.client
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def vm_hwm_mib() -> float:
    """Peak resident memory of this process so far (Linux /proc), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def multipart(audio: bytes) -> tuple[bytes, str]:
    """A minimal OpenAI-shaped form: model + file."""
    b = "bench-boundary"
    body = (
        (
            f'--{b}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        ).encode()
        + audio
        + f"\r\n--{b}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={b}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()

    import openai

    import whisper_modal as wm
    from tests import speech
    from tests.api_server import ApiServer
    from tests.models_cache import tiny_en_cache
    from whisper_modal.server import create_app

    key = "sk-bench"
    audio = speech.wav_bytes(speech.synthesize(speech.SENTENCES[2]))
    junk = b"this is not audio " * 500
    client = wm.Client(
        backend="local", model="tiny.en", cache_dir=tiny_en_cache(), device="cpu",
        api_keys=key, jobs_db=ROOT / "benchmarks" / ".audio" / "bench-jobs.sqlite3",
    )  # fmt: skip
    client.transcribe(audio)  # load the model once: every row below is warm
    times: dict[str, list[float]] = {k: [] for k in ("inproc", "sdk", "raw", "inproc0", "raw0")}
    with ApiServer(create_app(client)) as server:
        sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=600)

        def raw(data: bytes) -> int:
            body, ctype = multipart(data)
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
            conn.request("POST", "/v1/audio/transcriptions", body=body,
                         headers={"Authorization": f"Bearer {key}", "Content-Type": ctype})  # fmt: skip
            response = conn.getresponse()
            response.read()
            conn.close()
            return response.status

        def timed(name: str, fn: object) -> None:
            started = time.perf_counter()
            fn()  # type: ignore[operator]
            times[name].append(time.perf_counter() - started)

        def inproc_junk() -> None:
            with contextlib.suppress(wm.AudioError):
                client.transcribe(junk)

        for _ in range(args.rounds):
            timed("inproc", lambda: client.transcribe(audio))
            timed(
                "sdk",
                lambda: sdk.audio.transcriptions.create(file=("a.wav", audio), model="whisper-1"),
            )
            timed("raw", lambda: raw(audio))
            timed("inproc0", inproc_junk)
            timed("raw0", lambda: raw(junk))

        hwm_before = vm_hwm_mib()
        started = time.perf_counter()
        with cf.ThreadPoolExecutor(20) as pool:
            texts = list(pool.map(lambda _: sdk.audio.transcriptions.create(
                file=("a.wav", audio), model="whisper-1", response_format="text"), range(20)))  # fmt: skip
        burst = time.perf_counter() - started
        hwm_after = vm_hwm_mib()

    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(f"audio: {len(audio)} bytes WAV ({len(audio) / 32000:.1f} s); rounds: {args.rounds}")
    print(f"{'path':44} {'median ms':>10}")
    print(f"{'in-process Client.transcribe':44} {med['inproc']:10.1f}")
    print(f"{'HTTP, openai SDK':44} {med['sdk']:10.1f}   (+{med['sdk'] - med['inproc']:.1f})")
    print(
        f"{'HTTP, http.client multipart':44} {med['raw']:10.1f}   (+{med['raw'] - med['inproc']:.1f})"
    )
    print(f"{'no model: in-process AudioError':44} {med['inproc0']:10.1f}")
    print(
        f"{'no model: HTTP 400 (http.client)':44} {med['raw0']:10.1f}   (+{med['raw0'] - med['inproc0']:.1f})"
    )
    print(
        f"20 concurrent uploads: {burst:.1f} s, {sum(bool(t.strip()) for t in texts)}/20 answered; "
        f"peak RSS {hwm_before:.0f} MiB before -> {hwm_after:.0f} MiB after"
    )


if __name__ == "__main__":
    main()
