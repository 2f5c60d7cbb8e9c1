"""Shared papermill helpers of the notebook tests."""

from __future__ import annotations

from pathlib import Path

import nbformat

from rswb.notebooks import error_outputs  # noqa: F401  (re-exported for the notebook tests)

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


def check_committed(path: Path) -> tuple[set[str], nbformat.NotebookNode]:
    """Assert the house rules of a committed notebook and return its parameter names and the notebook.

    One ``parameters`` cell of upper-case names, no outputs or execution counts, a markdown introduction first, and
    ``metrics.json`` written by the last code cell.
    """
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    names = {line.split("=")[0].strip() for line in tagged[0].source.splitlines() if "=" in line}
    assert all(n.isupper() for n in names)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert "save_metrics" in code[-1].source  # the last cell writes OUTPUT_DIR/metrics.json
    assert nb.cells[0].cell_type == "markdown"
    return names, nb


def assert_matches_baselines(name: str, metrics_file: Path) -> None:
    """Fail with a readable diff when a notebook's metrics drift from ``notebooks/baselines/quick.yaml``."""
    import json

    import pytest

    from rswb.notebooks import compare_to_baselines

    problems = compare_to_baselines(name, json.loads(metrics_file.read_text()))
    if problems:
        pytest.fail("metrics drifted from notebooks/baselines/quick.yaml (update it deliberately with "
                    "`rswb notebooks baseline REPORT`):\n  " + "\n  ".join(problems), pytrace=False)


def printed(nb: nbformat.NotebookNode) -> str:
    """Everything the executed notebook's cells printed (stream outputs), joined."""
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")
