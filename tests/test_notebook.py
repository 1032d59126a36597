"""examples/distil_classifier.ipynb runs in a real Jupyter kernel (nbclient): every code cell
gives output, the runs print their eval lines, the accuracies `distil` returned are printed, and
the returned student classifies through `pipeline` with the data's label names. A cell that
raises fails the test (CellExecutionError)."""

import os
import re

import nbformat
from nbclient import NotebookClient

from conftest import ROOT, SUBPROCESS_ENV


def _text(output) -> str:
    """What a cell printed (stdout) or returned; stderr holds the progress bars, whose pieces
    interleave with stdout's at random places."""
    if output.output_type == "stream":
        return output.text if output.name == "stdout" else ""
    return str(output.get("data", {}).get("text/plain", ""))


def test_the_example_notebook_runs_in_a_kernel(tmp_path, monkeypatch):
    for key in ("OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM"):  # the kernel inherits them
        monkeypatch.setenv(key, SUBPROCESS_ENV[key])
    nb = nbformat.read(os.path.join(ROOT, "examples", "distil_classifier.ipynb"), as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    outputs = ["".join(_text(o) for o in cell.outputs) for cell in cells]
    assert all(outputs[1:]), [cell.source[:40] for cell, out in zip(cells[1:], outputs[1:]) if not out]
    teacher_cell = next(out for out in outputs if "teacher accuracy" in out)
    student_cell = next(out for out in outputs if "student layers" in out)
    assert len(re.findall(r"^eval step \d+ \(epoch 4\.00\) \| student loss", teacher_cell, re.M)) == 1
    assert re.search(r"^eval step \d+ \(epoch 3\.00\) \| student .* \| teacher .* \| agreement", student_cell, re.M)
    assert float(re.search(r"teacher accuracy ([\d.]+)", teacher_cell).group(1)) >= 0.9
    accuracy, agreement = map(float, re.search(r"student layers \[0, 3\]: accuracy ([\d.]+), agreement with the teacher ([\d.]+)",
                                               student_cell).groups())
    assert accuracy >= 0.9 and agreement >= 0.9
    labels = re.findall(r"'label': '(\w+)'", outputs[-1])
    assert labels == ["positive", "negative"], outputs[-1]
    assert os.path.isdir(tmp_path / "runs" / "student" / "final")
