"""Give memory back to the system after long audio.

After a long transcription the process keeps what its allocator holds: CPython frees the
arrays, but glibc keeps the freed heap pages of each thread's arena for reuse, so the
server's RSS stayed ~480 MiB above warm after one 10-minute request
(``benchmarks/http_concurrency.py``). ``release_memory`` collects cycles, trims every
glibc arena (``malloc_trim(0)``) and, on CUDA, returns the caching allocator's free
blocks. It costs a garbage collection (tens of ms), so callers use it after long audio
only (``RELEASE_AFTER_SECONDS``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import sys
from typing import Any

__all__ = ["RELEASE_AFTER_SECONDS", "release_memory", "trim_heap"]

#: audio at least this long (seconds) is followed by ``release_memory``
RELEASE_AFTER_SECONDS = 120.0


@functools.cache
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None  # musl has none
    except OSError:
        return None


def trim_heap() -> None:
    """Return glibc's free heap pages to the system (``malloc_trim(0)``); no-op elsewhere.

    A few milliseconds, no garbage collection: the batched loop calls it after each CPU
    step, where a step's freed activations (tens of MB, in sizes that vary from step to
    step) otherwise stay in the arenas and the next step's land beside them. On the
    30-minute benchmark clip (tiny.en) that kept RSS after the run at ~740 MB instead of
    ~1,100 MB, and took 0.13-0.3 s over the whole run.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def release_memory() -> None:
    """Collect garbage and return free heap pages (and CUDA cache blocks) to the system."""
    gc.collect()
    trim_heap()
    torch = sys.modules.get("torch")  # never imported just for this
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
