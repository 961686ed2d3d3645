"""The HTTP API under mixed load: short requests behind a long one, cancel, memory, a pool.

    python benchmarks/http_concurrency.py                      # this tree
    python benchmarks/http_concurrency.py --baseline e95665c   # and an older commit, side by side

Each tree's ``whisper-modal serve`` (local backend, tiny.en, CPU) runs as its own process
on 127.0.0.1; the requests come from the official ``openai`` SDK and ``http.client``.
Rows, each the median of ``--rounds``:

* ``short alone``: an 11 s clip, nothing else running.
* ``short behind long``: the same clip sent 3 s after a 10-minute upload started.
* ``cancel -> next``: a 10-minute job is cancelled (``DELETE``) 3 s into its run and a
  short request sent at once; its latency minus ``short alone`` is the delay the
  cancelled work still caused.
* ``8 short at once``: wall time of 8 concurrent short requests over 8 sequential ones.
* ``RSS after long``: the server's resident memory (VmRSS) 2 s after the 10-minute
  request answered, against its RSS when warm.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from tests import speech  # noqa: E402
from tests.api_server import ServeProcess  # noqa: E402
from tests.models_cache import tiny_en_cache  # noqa: E402

KEY = "bench-key"
LONG_MINUTES = 10


def clips() -> tuple[bytes, bytes]:
    """(an 11 s WAV, a 10-minute WAV): espeak-ng speech, 16 kHz mono."""
    short, _ = speech.make_clip(speech.SENTENCES[:2], gap_seconds=0.5)
    minute, _ = speech.make_clip(speech.SENTENCES[:12], gap_seconds=0.6)
    reps = int(LONG_MINUTES * 60 * speech.SAMPLE_RATE / len(minute)) + 1
    long = np.tile(minute, reps)[: LONG_MINUTES * 60 * speech.SAMPLE_RATE]
    return speech.wav_bytes(short), speech.wav_bytes(long)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Api:
    """One ``whisper-modal serve`` of one source tree."""

    def __init__(self, tree: Path, db: Path) -> None:
        env = {
            "WHISPER_MODAL_MODEL": "tiny.en",
            "WHISPER_MODAL_CACHE_DIR": str(tiny_en_cache()),
            "WHISPER_MODAL_DEVICE": "cpu",
            "WHISPER_MODAL_API_KEYS": KEY,
            "WHISPER_MODAL_JOBS_DB": str(db),
        }
        self.proc = ServeProcess(env, root=tree).start()  # that tree's code, not this one's
        print(f"serving {tree}", file=sys.stderr)
        import openai

        self.url = self.proc.url
        self.sdk = openai.OpenAI(base_url=f"{self.url}/v1", api_key=KEY, max_retries=0,
                                 timeout=1800)  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid

    def transcribe(self, audio: bytes) -> float:
        """Seconds for one blocking transcription."""
        started = time.perf_counter()
        self.sdk.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", audio), response_format="text"
        )
        return time.perf_counter() - started

    def _call(self, method: str, path: str, body: bytes | None = None,
              content_type: str | None = None) -> dict[str, object]:  # fmt: skip
        req = urllib.request.Request(f"{self.url}{path}", data=body, method=method)
        req.add_header("Authorization", f"Bearer {KEY}")
        if content_type:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=60) as response:
            answer: dict[str, object] = json.loads(response.read())
            return answer

    def submit(self, audio: bytes) -> str:
        from tests.api_server import multipart

        body, content_type = multipart({"model": "whisper-1"}, audio)
        return str(self._call("POST", "/v1/jobs", body, content_type)["id"])

    def status(self, job_id: str) -> str:
        return str(self._call("GET", f"/v1/jobs/{job_id}")["status"])

    def cancel(self, job_id: str) -> None:
        self._call("DELETE", f"/v1/jobs/{job_id}")

    def stop(self) -> None:
        self.proc.stop()


def measure(api: Api, short: bytes, long: bytes, rounds: int) -> dict[str, float]:
    api.transcribe(short)  # warm: the model is loaded
    alone = statistics.median(api.transcribe(short) for _ in range(rounds))
    warm_rss = rss_mib(api.pid)

    behind: list[float] = []
    rss_after: list[float] = []
    long_seconds: list[float] = []
    for _ in range(rounds):
        with cf.ThreadPoolExecutor(1) as pool:
            started = time.perf_counter()
            running = pool.submit(api.transcribe, long)
            time.sleep(3)
            behind.append(api.transcribe(short))
            running.result()
            long_seconds.append(time.perf_counter() - started)
        time.sleep(2)
        rss_after.append(rss_mib(api.pid))

    after_cancel: list[float] = []
    for _ in range(rounds):
        job = api.submit(long)
        deadline = time.monotonic() + 120
        while api.status(job) != "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3)
        api.cancel(job)
        after_cancel.append(api.transcribe(short) - alone)
        while api.status(job) not in ("cancelled", "failed", "succeeded"):
            time.sleep(0.2)
        time.sleep(1)  # the cancelled run has stopped (or finished) before the next round

    sequential = sum(api.transcribe(short) for _ in range(8))
    started = time.perf_counter()
    threads = [threading.Thread(target=api.transcribe, args=(short,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    together = time.perf_counter() - started
    return {
        "short alone (s)": alone,
        "10-min request alone-ish (s)": statistics.median(long_seconds),
        "short behind long (s)": statistics.median(behind),
        "cancel -> next, extra wait (s)": statistics.median(after_cancel),
        "8 short at once / 8 sequential": together / sequential,
        "RSS warm (MiB)": warm_rss,
        "RSS after long (MiB)": statistics.median(rss_after),
    }


def checkout(rev: str) -> Path:
    """A worktree of ``rev`` under a temporary directory."""
    path = Path(tempfile.mkdtemp(prefix="wm-baseline-")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev],
                   check=True, capture_output=True)  # fmt: skip
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", help="a git revision to measure beside this tree")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    short, long = clips()
    trees = {"this tree": ROOT}
    if args.baseline:
        trees = {args.baseline: checkout(args.baseline), **trees}
    results: dict[str, dict[str, float]] = {}
    try:
        for name, tree in trees.items():
            with tempfile.TemporaryDirectory() as tmp:
                api = Api(tree, Path(tmp) / "jobs.sqlite3")
                try:
                    results[name] = measure(api, short, long, args.rounds)
                finally:
                    api.stop()
            print(f"measured {name}", file=sys.stderr)
    finally:
        if args.baseline:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(trees[args.baseline])], check=False)  # fmt: skip
    names = list(results)
    print(f"tiny.en, CPU ({os.cpu_count()} cores), {args.rounds} rounds, medians")
    print("| | " + " | ".join(names) + (" | ratio |" if len(names) == 2 else " |"))
    print("|---|" + "---:|" * (len(names) + (len(names) == 2)))
    for row in results[names[0]]:
        values = [results[n][row] for n in names]
        cells = " | ".join(f"{v:.2f}" for v in values)
        ratio = f" | {values[1] / values[0]:.2f}x" if len(values) == 2 and values[0] else ""
        print(f"| {row} | {cells}{ratio} |")


if __name__ == "__main__":
    main()
