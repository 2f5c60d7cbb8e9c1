"""Notebook 02 (PHA version ladder) runs headless under papermill on the embedded scene in the quick profile."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

papermill = pytest.importorskip("papermill")
pytest.importorskip("ipykernel")

from rswb.notebooks import PROFILES  # noqa: E402
from tests.notebooks.helpers import assert_matches_baselines, error_outputs, printed, run_notebook  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "02_pha_versions.ipynb"


def test_committed_notebook_is_thin_and_stripped():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    names = {line.split("=")[0].strip() for line in tagged[0].source.splitlines() if "=" in line}
    assert names == {"DATA_ROOT", "VERSIONS", "SHOTS", "EPOCHS", "SEEDS", "PROFILE", "DEVICE", "OUTPUT_DIR"}
    namespace: dict = {}
    exec(tagged[0].source, namespace)  # literals only
    assert namespace["VERSIONS"] == ["ms_only", "pan_only", "pha_v1", "pha_v2", "pha_v3", "pha_v4", "pha_v5",
                                     "pha_v6"]
    assert namespace["DATA_ROOT"] is None and namespace["EPOCHS"] is None and namespace["PROFILE"] == "quick"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert "save_metrics" in code[-1].source
    assert nb.cells[0].cell_type == "markdown"
    assert max(len(c.source.splitlines()) for c in code[1:]) <= 12  # thin (after the imports): helpers live in rswb


def test_notebook_02_runs_on_the_embedded_scene(tmp_path, monkeypatch):
    # CI exports MPLBACKEND=Agg for the test process; the kernel must keep Jupyter's inline backend to show figures.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    output_dir = tmp_path / "runs"
    # Run All is the demo (issue 29): the quick suite passes nothing, the notebook's own defaults are what runs.
    assert PROFILES["quick"]["02_pha_versions"] == {}
    versions = ["ms_only", "pan_only", "pha_v1", "pha_v2", "pha_v3", "pha_v4", "pha_v5", "pha_v6"]
    # One run finished beforehand with the notebook's options: the notebook must reuse it, not train it again.
    import rswb.tasks  # noqa: F401  (registers the "pha" task)
    from rswb.engine.experiments import notebook_run

    reused = notebook_run("pha", "quick", output_dir, "10shot-pan_only-s0", progress=False, data=None, shots=10,
                          version="pan_only", seed=0) / "metrics.json"
    stamp = reused.stat().st_mtime_ns
    params = {"OUTPUT_DIR": str(output_dir)}
    nb = run_notebook(NOTEBOOK, tmp_path / "02_out.ipynb", tmp_path, **params)
    assert error_outputs(nb) == []
    assert_matches_baselines("02_pha_versions", output_dir / "metrics.json")
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["profile"] == "quick" and metrics["epochs"] is None and metrics["data"] == "embedded"
    assert list(metrics["versions"]) == versions
    for scores in metrics["versions"].values():
        assert 0.0 <= scores["OA"] <= 1.0 and 0.0 <= scores["AA"] <= 1.0 and -1.0 <= scores["kappa"] <= 1.0
    # The demo shows a trained ladder (issue 17): best fused version >= 85 % OA (measured 92.9; seeds 1, 2: 92.2, 90.6).
    assert max(s["OA"] for v, s in metrics["versions"].items() if v.startswith("pha_")) >= 0.85
    for v in versions:  # the table reports what each run recorded
        run_dir, = output_dir.glob(f"quick-10shot-{v}-s0-*")  # named by its options: one folder per version
        run = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["versions"][v]["OA"] == pytest.approx(run["test"]["OA"])
    # The sentences under the embedding and dictionary figures say what their own numbers say.
    import re

    text = printed(nb)
    m = re.search(r"Training (raised|lowered|left unchanged) the cosine of an item's own MS-PAN pair "
                  r"\((-?[\d.]+) -> (-?[\d.]+)\)", text)
    assert m, text
    before, after = float(m.group(2)), float(m.group(3))
    want = "left unchanged" if abs(after - before) < 0.015 else "raised" if after > before else "lowered"
    assert m.group(1) == want or abs(after - before) < 0.015
    assert "Same-class MS and PAN rows correlate" in text
    # The sentence under the pre-training agreement maps (issue 33) is computed from the numbers it quotes.
    m = re.search(r"the same place (-?[\d.]+) before and (-?[\d.]+) after pre-training; places 8 MS pixels apart "
                  r"(-?[\d.]+) and (-?[\d.]+)\. The gap went from (-?[\d.]+) to (-?[\d.]+): the pre-training (made|did "
                  r"not make)", text)
    assert m, text
    same0, same1, other0, other1, gap0, gap1 = (float(m.group(i)) for i in range(1, 7))
    assert gap0 == pytest.approx(same0 - other0, abs=0.011) and gap1 == pytest.approx(same1 - other1, abs=0.011)
    assert (m.group(7) == "made") == (gap1 > gap0 + 0.02) or abs(gap1 - gap0 - 0.02) < 0.011
    # Figures: scene, bars, confusion matrices (one when pha_v1 is the best), maps, alignment, pre-training curve and
    # agreement maps, embedding, dictionary.
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 9
    assert reused.stat().st_mtime_ns == stamp  # the finished run was reused
