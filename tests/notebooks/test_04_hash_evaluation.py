"""Notebook 04 (hash evaluation) runs headless under papermill on the embedded scenes in the quick profile."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest

papermill = pytest.importorskip("papermill")
pytest.importorskip("ipykernel")

from rswb.notebooks import PROFILES  # noqa: E402
from tests.notebooks.helpers import (  # noqa: E402
    assert_matches_baselines,
    check_committed,
    error_outputs,
    printed,
    run_notebook,
)

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "04_hash_evaluation.ipynb"


def test_notebook_kernel_is_the_test_interpreter(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys\nprint(sys.executable)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "probe.ipynb")
    ran = run_notebook(tmp_path / "probe.ipynb", tmp_path / "probe_out.ipynb", tmp_path)
    printed = "".join(o.get("text", "") for o in ran.cells[0].outputs).strip()
    assert Path(printed).resolve() == Path(sys.executable).resolve()


def test_committed_notebook_is_thin_and_stripped():
    names, nb = check_committed(NOTEBOOK)
    assert {"DATA_ROOT", "BITS", "EPOCHS", "PROFILE", "DEVICE", "SEED", "OUTPUT_DIR", "TOP_K"} <= names


def test_notebook_04_runs_on_embedded_scenes(tmp_path, monkeypatch):
    monkeypatch.setenv("RSWB_CACHE_DIR", str(tmp_path / "cache"))  # inherited by the kernel
    # CI exports MPLBACKEND=Agg for the test process; the kernel must keep Jupyter's inline backend to show figures.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    output_dir = tmp_path / "runs"
    assert PROFILES["quick"]["04_hash_evaluation"] == {}  # Run All is the demo: the suite passes nothing
    params = {"OUTPUT_DIR": str(output_dir)}
    nb = run_notebook(NOTEBOOK, tmp_path / "04_out.ipynb", tmp_path, **params)
    assert error_outputs(nb) == []
    assert_matches_baselines("04_hash_evaluation", output_dir / "metrics.json")
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["profile"] == "quick" and set(metrics["bits"]) == {"16", "32", "48", "64"}
    for per_bits in metrics["bits"].values():
        assert {"mAP@20", "mAP@20_nocue", "P@20", "P@r2", "R@r2", "class_acc"} <= set(per_bits)
        assert all(0.0 <= v <= 1.0 for k, v in per_bits.items() if not k.endswith("_bits"))
        assert per_bits["code_bits"] == per_bits["hash_bits"] + per_bits["cue_bits"] and per_bits["cue_bits"] == 4
    assert len(list(output_dir.glob("quick-16bit-s0-*/metrics.json"))) == 1
    # The demo's codes have learned (issues 17, 29): class accuracy and mAP@20 >= 0.8 at every code length.
    for per_bits in metrics["bits"].values():
        assert per_bits["class_acc"] >= 0.8 and per_bits["mAP@20"] >= 0.8
    # The sentence under the mAP plot is computed from the numbers in the table: its verb follows their sign.
    gain = sum(b["mAP@20"] - b["mAP@20_nocue"] for b in metrics["bits"].values()) / len(metrics["bits"])
    sentence = next(line for line in printed(nb).splitlines() if line.startswith("mAP@20: "))
    verdict = "adds" if gain > 0 else "costs" if gain < 0 else "changes nothing"
    assert f"On average the cue {verdict} {abs(gain):.3f}" in sentence
    for bits, b in metrics["bits"].items():
        assert f"{bits} + 4 bits: {b['mAP@20']:.3f} with the cue, {b['mAP@20_nocue']:.3f} without" in sentence
    # Figures were drawn: at least the mAP plot, PR curves, histograms, embedding and gallery.
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 5
