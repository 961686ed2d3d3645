"""The notebook display, rendered by a real Jupyter kernel (nbclient + ipykernel).

IPython, not our code, decides which ``_repr_*_`` a cell shows: these tests run a
notebook in a kernel of its own and read what the front end would receive.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.models_cache import tiny_en_cache

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

SAMPLE = Path(__file__).parents[1] / "examples" / "sample.flac"

CELLS = [
    f"""import whisper_modal as wm
client = wm.Client(backend="local", model="tiny.en", cache_dir={str(tiny_en_cache())!r}, device="cpu")
t = client.transcribe({str(SAMPLE)!r}, language="en")
t""",
    f"""job = client.submit({str(SAMPLE)!r}, language="en")
job.wait(timeout=300, poll_interval=0.2)
job""",
    """from whisper_modal.results import Segment
two = t.with_changes(
    segments=(
        Segment(id=0, start=0.0, end=0.4, text="One", speaker="SPEAKER_00"),
        Segment(id=1, start=8.1, end=8.5, text="two.", speaker="SPEAKER_00"),
        Segment(id=2, start=8.5, end=8.9, text="Three.", speaker="SPEAKER_01"),
    ),
    speakers=("SPEAKER_00", "SPEAKER_01"),
)
two""",
]


def _shown(cell: Any) -> dict[str, str]:
    """The mime bundle of the cell's result (what Jupyter renders under the cell)."""
    results = [o for o in cell.outputs if o.output_type in ("execute_result", "display_data")]
    errors = [o for o in cell.outputs if o.output_type == "error"]
    assert not errors, errors
    assert len(results) == 1, cell.outputs
    data: dict[str, str] = results[0].data
    return data


@pytest.fixture(scope="module")
def executed() -> Any:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3").execute()
    return notebook


def test_a_transcript_renders_as_a_left_aligned_table_in_a_kernel(executed: Any) -> None:
    shown = _shown(executed.cells[0])
    page = shown["text/html"]
    assert page.lstrip().startswith("<") and "<table" in page
    assert "weekly planning meeting" in page.lower()  # real speech through the real model
    assert "text-align:left" in page and "text-align:right" not in page.split("<td")[-1]
    assert "0:00." in page  # tenths of a second, not whole seconds
    assert shown["text/plain"].startswith("Transcript(")


def test_a_job_renders_its_status_in_a_kernel(executed: Any) -> None:
    page = _shown(executed.cells[1])["text/html"]
    assert "<b>Job</b>" in page and ">succeeded</b>" in page and "local-" in page, page


def test_a_speakers_turns_are_joined_and_coloured_in_a_kernel(executed: Any) -> None:
    page = _shown(executed.cells[2])["text/html"]
    assert page.count("<tr") == 3  # header + SPEAKER_00's joined turn + SPEAKER_01
    assert "One two." in page and page.count("color:#") >= 2, page
