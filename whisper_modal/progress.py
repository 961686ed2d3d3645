"""Progress bars that appear on a terminal or in a notebook and stay silent otherwise.

Backend services and CI logs must not fill with bar redraws, so ``enabled=None`` means
"only when a person is watching": stderr is a TTY, or the code runs in a Jupyter kernel.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Bar", "interactive", "progress_bar", "status_bar"]


def interactive() -> bool:
    """True on a terminal or inside a Jupyter/IPython kernel."""
    try:
        shell = sys.modules["IPython"].get_ipython()
        if shell is not None and "IPKernelApp" in getattr(shell, "config", {}):
            return True
    except (KeyError, AttributeError):
        pass
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class Bar:
    """A thin wrapper over tqdm (or nothing when disabled)."""

    def __init__(self, bar: Any | None, desc: str = "") -> None:
        self._bar = bar
        self._desc = desc

    @property
    def enabled(self) -> bool:
        """True when a bar is shown (worth computing what it would display)."""
        return self._bar is not None

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` items."""
        if self._bar is not None:
            self._bar.update(n)

    def set_status(self, text: str) -> None:
        """Show a short status after the bar's label (``job wm-1: running 3/8 pieces``)."""
        if self._bar is not None:
            # the description, not tqdm's postfix: a postfix is drawn with a leading ", "
            self._bar.set_description_str(f"{self._desc}: {text}", refresh=True)


@contextmanager
def progress_bar(total: int, desc: str, *, enabled: bool | None = None) -> Iterator[Bar]:
    """A counting bar over ``total`` items."""
    if not (interactive() if enabled is None else enabled):
        yield Bar(None)
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="file", leave=True)
    try:
        yield Bar(bar)
    finally:
        bar.close()


@contextmanager
def status_bar(desc: str, *, enabled: bool | None = None) -> Iterator[Bar]:
    """An indeterminate bar that only shows a status text (job waiting)."""
    if not (interactive() if enabled is None else enabled):
        yield Bar(None)
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=None, desc=desc, bar_format="{desc} [{elapsed}]")
    try:
        yield Bar(bar, desc)
    finally:
        bar.close()
