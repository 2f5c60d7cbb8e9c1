"""Shared papermill helpers of the notebook tests."""

from __future__ import annotations

from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
CELL_TIMEOUT_S = 300


def run_notebook(path: Path, out: Path, tmp_path: Path, **parameters) -> nbformat.NotebookNode:
    """Execute ``path`` with papermill into ``out`` and return the executed notebook.

    The "python3" kernelspec launches `python`, which jupyter_client replaces by sys.executable: the kernel runs in
    the interpreter that runs the tests. The kernel starts in tmp_path, so nothing lands in the checkout. A per-cell
    time limit turns a stuck kernel into a failure instead of a hung test run.
    """
    import papermill

    papermill.execute_notebook(str(path), str(out), parameters=parameters, kernel_name="python3",
                               cwd=str(tmp_path), progress_bar=False, execution_timeout=CELL_TIMEOUT_S)
    return nbformat.read(out, as_version=4)


def error_outputs(nb: nbformat.NotebookNode) -> list[str]:
    """``"Name: message"`` of every error output of an executed notebook."""
    return [f"{o.get('ename')}: {o.get('evalue')}" for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]
