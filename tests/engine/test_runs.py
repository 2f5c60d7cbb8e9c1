"""Run registry (list_runs, compare) and the `rswb train` / `rswb runs` commands."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from rswb.cli import main
from rswb.engine import compare, list_runs
from rswb.engine.runs import format_table, run_summary

TASK = "tests.engine.fixtures:blobs"


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, hidden in (("small", 8), ("large", 64)):
        assert main(["train", TASK, "--name", name, "--runs-root", str(root), "--epochs", "2", "--hidden",
                     str(hidden), "--no-progress", "--deterministic"]) == 0
    return root


def test_train_cli_writes_a_run_with_task_options(runs_root):
    cfg = yaml.safe_load((runs_root / "small" / "config.yaml").read_text())
    assert cfg["task_config"]["hidden"] == 8 and cfg["train"]["epochs"] == 2
    assert cfg["train"]["batch_size"] == 32  # the task's preferred default, not TrainConfig's 64
    final = json.loads((runs_root / "small" / "metrics.json").read_text())
    assert set(final["test"]) == {"OA", "AA", "kappa"}


def test_no_progress_still_prints_the_results_table(tmp_path, capsys):
    assert main(["train", TASK, "--name", "quiet", "--runs-root", str(tmp_path), "--epochs", "1", "--progress",
                 "false", "--deterministic"]) == 0
    out = capsys.readouterr().out
    assert "best epoch 1 by val" in out
    final = json.loads((tmp_path / "quiet" / "metrics.json").read_text())
    oa_row = next(line for line in out.splitlines() if line.split()[:1] == ["OA"])
    assert oa_row.split()[-1] == f"{final['test']['OA']:.4g}"


def test_list_runs(runs_root):
    df = list_runs(runs_root)
    assert list(df["run"]) == ["small", "large"]
    assert (df["status"] == "finished").all() and (df["method"] == "mlp").all()
    assert {"test_OA", "test_AA", "test_kappa", "val_OA", "time_s", "best_epoch"} <= set(df.columns)
    assert list_runs(runs_root / "nothing-here").empty


def test_compare_returns_the_metrics_of_each_run(runs_root):
    df = compare(["small", "large"], root=runs_root, metrics=["OA", "kappa"])
    assert isinstance(df, pd.DataFrame) and list(df.index) == ["small", "large"]
    assert list(df.columns) == ["method", "version", "data", "status", "OA", "kappa", "epochs", "best_epoch", "time_s"]
    for name in ("small", "large"):
        final = json.loads((runs_root / name / "metrics.json").read_text())
        assert df.loc[name, "OA"] == final["test"]["OA"] and df.loc[name, "kappa"] == final["test"]["kappa"]
    val = compare([runs_root / "small"], split="val")  # a path works too
    assert val.loc["small", "OA"] == json.loads((runs_root / "small" / "metrics.json").read_text())["val"]["OA"]
    with pytest.raises(KeyError, match="no run has test_mAP@20"):
        compare(["small"], root=runs_root, metrics=["mAP@20"])
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        compare(["missing"], root=runs_root)


def test_unfinished_run_shows_its_last_epoch(runs_root, tmp_path):
    import shutil

    shutil.copytree(runs_root / "small", tmp_path / "half")
    (tmp_path / "half" / "metrics.json").unlink()
    row = run_summary(tmp_path / "half")
    assert row["status"] == "running/stopped" and row["epochs"] == 2 and "val_OA" in row and "test_OA" not in row


def test_runs_cli(runs_root, capsys):
    assert main(["runs", "list", "--root", str(runs_root)]) == 0
    out = capsys.readouterr().out
    assert "small" in out and "large" in out and "test_OA" in out and "finished" in out
    assert main(["runs", "compare", "small", "large", "--root", str(runs_root), "--metrics", "OA,AA"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["method", "version", "data", "status", "OA", "AA", "epochs", "best_epoch", "time_s"]
    assert main(["runs", "compare", "nope", "--root", str(runs_root)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_runs_compare_shows_each_tasks_headline_metrics_by_default(runs_root, capsys, monkeypatch):
    from rswb.engine import runs as runs_mod

    monkeypatch.setitem(runs_mod.HEADLINE_METRICS, TASK, ("kappa", "OA"))
    assert main(["runs", "compare", "small", "large", "--root", str(runs_root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["method", "version", "data", "status", "kappa", "OA", "epochs", "best_epoch", "time_s"]
    assert max(map(len, out)) < 120  # fits a terminal
    assert main(["runs", "compare", "small", "--root", str(runs_root), "--metrics", "all"]) == 0
    assert "AA" in capsys.readouterr().out.splitlines()[0].split()


def test_train_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", TASK, "--runs-root", str(tmp_path), "--bogus", "1"]) == 2
    err = capsys.readouterr().err
    assert "unknown option(s) --bogus" in err and "--epochs" in err and "--hidden" in err
    assert main(["train", "no_such_task"]) == 2
    assert "unknown task 'no_such_task'" in capsys.readouterr().err
    assert main(["train", TASK, "--runs-root", str(tmp_path), "--epochs", "many"]) == 2
    assert "epochs must be an integer" in capsys.readouterr().err
    args = ["train", TASK, "--runs-root", str(tmp_path), "--name", "x", "--epochs", "1", "--no-progress"]
    assert main(args) == 0
    assert main(args) == 2  # the folder holds a run: neither --resume nor --overwrite
    assert "resume" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_train_cli_help_lists_task_and_training_options(capsys):
    assert main(["train", TASK, "--help"]) == 0
    out = capsys.readouterr().out
    assert "--hidden" in out and "--warmup-epochs" in out and "Gaussian-blob" in out
    assert main(["train", "--list"]) == 0


def test_resume_reuses_saved_options(tmp_path):
    root = str(tmp_path)
    assert main(["train", TASK, "--runs-root", root, "--name", "r", "--epochs", "2", "--hidden", "16",
                 "--no-progress", "--lr", "0.02"]) == 0
    (tmp_path / "r" / "metrics.json").unlink()
    # Nothing but the name: lr, hidden and epochs come from the run's config.yaml.
    assert main(["train", TASK, "--runs-root", root, "--name", "r", "--resume"]) == 0
    cfg = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert cfg["task_config"]["hidden"] == 16 and cfg["train"]["lr"] == 0.02


def test_format_table():
    assert format_table(pd.DataFrame()) == "(no runs)"
    text = format_table(pd.DataFrame({"a": [0.123456, float("nan")], "b": ["x", None]}))
    assert "0.1235" in text and "nan" not in text.lower()
