"""Every notebook in notebooks/ runs top to bottom in a fresh kernel (nbclient), on the zoo models, offline.

The notebooks are stored without outputs; a failing cell, an error output or a cell that runs past the time
limit fails the test. The kernel inherits the test's environment (offline hub, the tests' model cache).
"""

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
FIGURES = {"image/png", "application/vnd.plotly.v1+json"}  # a matplotlib or a Plotly figure
CELL_TIMEOUT = 120  # seconds; each notebook as a whole is meant to run in under two minutes


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    stale = [i for i, cell in enumerate(notebook.cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not stale, f"{path.name}: cells {stale} carry outputs; strip them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path):
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
              if o.output_type == "error"]
    assert not errors, errors
    assert any(set(o.get("data", {})) & FIGURES for cell in notebook.cells if cell.cell_type == "code"
               for o in cell.outputs), f"{path.name} draws no figure"
