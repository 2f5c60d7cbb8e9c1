"""rswb notebooks run: the suite runner, its report page and its failure handling (on notebook 01: seconds)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("papermill")
pytest.importorskip("nbconvert")

from rswb.cli import main  # noqa: E402
from rswb.notebooks import NOTEBOOKS, PROFILES, flatten_metrics, notebook_parameters, notebooks_dir, run_suite  # noqa: E402


def test_profiles_only_set_parameters_the_notebooks_declare():
    for profile in PROFILES.values():
        assert set(profile) == set(NOTEBOOKS)
        for name, values in profile.items():
            assert set(values) <= notebook_parameters(notebooks_dir() / f"{name}.ipynb"), name


def test_flatten_metrics():
    assert flatten_metrics({"a": {"b": 1, "c": {"d": 2.5}}, "e": "text", "f": True, "g": [1]}) == {
        "a.b": 1.0, "a.c.d": 2.5}


def test_run_writes_the_report(tmp_path, monkeypatch):
    monkeypatch.delenv("MPLBACKEND", raising=False)
    report, results = run_suite("quick", only=["01"], reports_root=tmp_path, progress=False)
    assert [r.name for r in results] == ["01_data_inspection"] and results[0].status == "ok"
    for f in ("01_data_inspection.ipynb", "01_data_inspection.html", "01_data_inspection/metrics.json", "index.html"):
        assert (report / f).exists(), f
    page = (report / "index.html").read_text()
    assert "01_data_inspection" in page and ">ok<" in page and "mspan.bands = 4" in page
    assert results[0].metrics == json.loads((report / "01_data_inspection" / "metrics.json").read_text())


def test_a_failing_notebook_fails_the_command_with_its_cell_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MPLBACKEND", raising=False)
    code = main(["notebooks", "run", "--only", "01", "--reports", str(tmp_path), "--param", "PER_CLASS=oops"])
    assert code == 1
    err = capsys.readouterr().err
    assert "01_data_inspection failed" in err and "cell" in err and "Error" in err
    page = next(tmp_path.glob("*/index.html")).read_text()
    assert "failed" in page
    with pytest.raises(KeyError, match="no notebook matches"):
        run_suite("quick", only=["99"], reports_root=tmp_path)
