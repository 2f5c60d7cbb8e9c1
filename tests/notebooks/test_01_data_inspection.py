"""Notebook 01 (data inspection) runs headless on the embedded data, on the real data, and with sections skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

papermill = pytest.importorskip("papermill")
pytest.importorskip("ipykernel")

from rswb.notebooks import PROFILES  # noqa: E402
from tests.notebooks.helpers import (  # noqa: E402
    assert_matches_baselines,
    check_committed,
    error_outputs,
    run_notebook,
)

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "01_data_inspection.ipynb"


def images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_committed_notebook_is_thin_and_stripped():
    names, _ = check_committed(NOTEBOOK)
    assert {"MSPAN_ROOT", "SCENES_ROOT", "CAPTIONS_ROOT", "IMAGE_ROOT", "OUTPUT_DIR"} <= names


def test_notebook_01_on_the_embedded_data(tmp_path, monkeypatch):
    monkeypatch.delenv("MPLBACKEND", raising=False)
    params = {**PROFILES["quick"]["01_data_inspection"], "OUTPUT_DIR": str(tmp_path / "out")}
    nb = run_notebook(NOTEBOOK, tmp_path / "01.ipynb", tmp_path, **params)
    assert error_outputs(nb) == []
    assert_matches_baselines("01_data_inspection", tmp_path / "out" / "metrics.json")
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["mspan"]["bands"] == 4 and m["mspan"]["pan_ms_correlation"] > 0.5
    assert m["scenes"]["classes"] >= 10 and m["captions"]["captions"] == 5 * m["captions"]["images"]
    # overview, histograms, registration, scene grid, class balance, caption statistics, captioned images
    assert images(nb) >= 7


def test_notebook_01_skips_missing_inputs_and_says_why(tmp_path, monkeypatch):
    monkeypatch.delenv("MPLBACKEND", raising=False)
    params = {"MSPAN_ROOT": str(tmp_path / "nowhere"), "SCENES_ROOT": "", "CAPTIONS_ROOT": "",
              "OUTPUT_DIR": str(tmp_path / "out")}
    nb = run_notebook(NOTEBOOK, tmp_path / "01.ipynb", tmp_path, **params)
    assert error_outputs(nb) == []
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "cannot read" in text and "nowhere" in text and "skipped" in text
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == {}


def test_notebook_01_on_the_real_data(tmp_path, monkeypatch, shared_data):
    monkeypatch.delenv("MPLBACKEND", raising=False)
    params = {"MSPAN_ROOT": str(shared_data("mspan_pairs", "worldview2.mat")),
              "SCENES_ROOT": str(shared_data("UCMerced_LandUse")), "CAPTIONS_ROOT": str(shared_data("rsicd_captions")),
              "OUTPUT_DIR": str(tmp_path / "out")}
    nb = run_notebook(NOTEBOOK, tmp_path / "01.ipynb", tmp_path, **params)
    assert error_outputs(nb) == []
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["mspan"]["bands"] == 8 and m["mspan"]["ratio"] == 4 and m["mspan"]["pan_ms_correlation"] > 0.9
    assert m["scenes"] == {"images": 2100, "classes": 21, "train": 1680, "query": 420}
    assert m["captions"]["images"] == 9828 and m["captions"]["captions"] == 49140
