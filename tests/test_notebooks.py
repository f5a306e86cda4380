"""Every notebook runs headless (nbclient) against a tracking directory made by a
small real sweep (conftest's analysis_sweep), and is stored without outputs."""

import nbformat
import pytest
from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_the_four_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_batch_size.ipynb", "02_learning_rate.ipynb",
                                           "03_gradient_flow.ipynb", "04_explore.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_a_real_sweep(path, analysis_sweep, tmp_path):
    from nbclient import NotebookClient

    book = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") and not cell.get("execution_count")
               for cell in book.cells if cell.cell_type == "code"), "stored with outputs"
    first = book.cells[0]
    assert first.cell_type == "code" and first.source.startswith("RUNS = ")
    first.source = f"RUNS = {str(analysis_sweep)!r}\nFIGURES = {str(tmp_path)!r}"
    # Runs every cell; a cell that raises fails the test with its traceback.
    NotebookClient(book, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    figures = sorted(p.name for p in tmp_path.glob("*.png"))
    assert figures, "the notebook saved no figure"
    errors = [o for cell in book.cells if cell.cell_type == "code"
              for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
