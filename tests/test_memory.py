"""``engine.memory``: freed heap pages go back to the system (glibc on Linux).

Measured in a fresh process, so no other test's threads allocate in between.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from whisper_modal.engine.memory import _libc

ROOT = Path(__file__).parents[1]

PROBE = textwrap.dedent(
    """
    import ctypes, json
    from whisper_modal.engine.memory import release_memory, trim_heap

    def rss():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) // 1024 for l in f if l.startswith("VmRSS"))

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    out = {}
    for name, give_back in (("trim_heap", trim_heap), ("release_memory", release_memory)):
        start = rss()
        # 64 KiB blocks come from the heap (below glibc's mmap threshold); the last one
        # stays, so the freed ones sit below it and free() alone returns nothing
        blocks = [libc.malloc(64 * 1024) for _ in range(1000)]
        for p in blocks:
            ctypes.memset(p, 1, 64 * 1024)
        for p in blocks[:-1]:
            libc.free(p)
        held = rss() - start
        give_back()
        out[name] = {"held": held, "after": rss() - start}
        libc.free(blocks[-1])
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(_libc() is None, reason="needs glibc's malloc_trim")
def test_freed_heap_pages_go_back_to_the_system() -> None:
    import json

    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    for name, mb in out.items():
        assert mb["held"] >= 50, (name, mb)  # free() alone kept the ~62 MB
        assert mb["after"] <= mb["held"] - 40, (name, mb)  # the call gave it back
