"""rswb report RUN: one HTML page for a finished run of every task (tiny runs on the embedded data)."""

from __future__ import annotations

import json
import re

import pytest

from rswb.cli import main
from rswb.engine.launch import train_task

RUNS = {
    "hash": {"backbone": "small_cnn", "pretrained": False, "image_size": 32, "bits": 8, "epochs": 2, "views": 1,
             "per_class": 10},
    "pha": {"version": "pha_v2", "epochs": 1, "repeats": 1, "max_test": 300, "widths": "4,8,8", "batch_size": 32,
            "shots": 5, "val_shots": 2},
    "retrieval": {"method": "clip", "backbone": "small_cnn", "pretrained": False, "image_size": 64, "epochs": 1,
                  "batch_size": 64},
}


@pytest.mark.parametrize("task", sorted(RUNS))
def test_report_of_a_finished_run_of_every_task(task, tmp_path, monkeypatch, capsys):
    import rswb.tasks  # noqa: F401  (registers the tasks)

    monkeypatch.setenv("RSWB_CACHE_DIR", str(tmp_path / "cache"))
    train_task(task, {**RUNS[task], "progress": False}, run_name="r", runs_root=tmp_path)
    capsys.readouterr()
    assert main(["report", "r", "--runs-root", str(tmp_path), "--items", "2", "--device", "cpu"]) == 0
    page = (tmp_path / "r" / "report.html").read_text()
    assert "report written" in capsys.readouterr().out
    final = json.loads((tmp_path / "r" / "metrics.json").read_text())
    for heading in ("Settings and protocol", "Metrics", "Training curves", "Where the model looks"):
        assert f"<h2>{heading}" in page, heading
    images = re.findall(r"<img src='data:image/png;base64,", page)
    if task == "retrieval":
        assert "Confusion matrix" not in page and len(images) == 2  # curves, maps
        assert f"<td class='m'>mR</td><td>{final['val']['mR']:.2f}</td>" in page  # a percentage: 2 decimals
    else:
        assert "<h2>Confusion matrix" in page and len(images) == 3  # curves, confusion, maps
        names = final["class_names"]
        assert names and f"acc_1 ({names[0]})" in page if task == "pha" else "code_bits" in page


def test_report_of_an_unfinished_run_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import rswb.tasks  # noqa: F401

    monkeypatch.setenv("RSWB_CACHE_DIR", str(tmp_path / "cache"))
    train_task("hash", {**RUNS["hash"], "progress": False}, run_name="r", runs_root=tmp_path)
    (tmp_path / "r" / "best.pt").unlink()
    assert main(["report", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "best.pt" in err and len(err.strip().splitlines()) == 1
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "not a run folder" in capsys.readouterr().err
