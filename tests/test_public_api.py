"""The package's public contract: sorted __all__, every name importable and documented."""

from __future__ import annotations

import subprocess
import sys

import whisper_modal as wm


def test_all_is_sorted_and_complete() -> None:
    assert wm.__all__ == sorted(wm.__all__)
    for name in wm.__all__:
        assert hasattr(wm, name), name
    public = {n for n in vars(wm) if not n.startswith("_") and n[0].isupper()}
    assert public <= set(wm.__all__), public - set(wm.__all__)


def test_public_callables_have_docstrings() -> None:
    for name in wm.__all__:
        obj = getattr(wm, name)
        if callable(obj):
            assert obj.__doc__ and obj.__doc__.strip(), f"{name} has no docstring"


def test_import_is_light() -> None:
    # A backend that only calls Modal must not pay for torch/whisper/librosa/boto3 at import.
    code = (
        "import sys, whisper_modal; "
        "heavy = ('torch', 'whisper', 'librosa', 'boto3', 'soundfile'); "
        "heavy = [m for m in heavy if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
