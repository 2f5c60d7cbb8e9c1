"""Fault battery (issue 30), first part: one writer per run folder.

Another process holds a run folder's lock the way a live `rswb train` does (a subprocess that takes
:func:`rswb.engine.runs.run_lock` and waits); every attempt to write the same folder must be refused in seconds,
before any data is loaded, with a one-line error that names the holder, and must leave the holder's files alone.
When the holder is killed with SIGKILL the kernel frees the lock and the folder can be trained again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rswb.cli import main
from rswb.engine.launch import train_task
from rswb.engine.runs import LOCK_NAME, RunLockedError, run_lock

REPO = Path(__file__).resolve().parents[2]
TASK = "tests.engine.fixtures:blobs"
QUICK = ["--epochs", "1", "--no-progress", "--deterministic"]

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs flock and POSIX signals")

_HOLDER = """
import sys, time
from rswb.engine.runs import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """A live process holding the lock of ``tmp_path/runs/r``, with a temp file of its own in the folder."""
    folder = tmp_path / "runs" / "r"
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    assert proc.stdout.readline().strip() == "locked"
    (folder / ".config.yaml.abc123.tmp").write_text("being written")
    yield folder, proc
    proc.kill()
    proc.wait()


def _never_build(monkeypatch) -> None:
    """Make building the task (which loads its data) fail the test: what is refused must be refused before it."""
    import rswb.engine.launch as launch

    def no_build(*_a, **_k):
        raise AssertionError("the task was built (data loaded) before the run folder was checked")

    real_get = launch.get
    monkeypatch.setattr(launch, "get", lambda kind, name: no_build if kind == "task" and name == TASK
                        else real_get(kind, name))
    monkeypatch.setattr(launch, "task_config_class", lambda builder: None)


def test_a_second_writer_is_refused_before_any_data_is_loaded(holder, capsys, monkeypatch):
    folder, proc = holder
    _never_build(monkeypatch)
    t0 = time.perf_counter()
    code = main(["train", TASK, "--name", "r", "--runs-root", str(folder.parent), *QUICK])
    err = capsys.readouterr().err
    assert code == 2 and time.perf_counter() - t0 < 10
    assert f"pid {proc.pid}" in err and "another process is writing this run" in err and len(err.splitlines()) == 1
    # --overwrite of a run that another process trains is refused the same way: the first run is not lost.
    assert main(["train", TASK, "--name", "r", "--runs-root", str(folder.parent), "--overwrite", *QUICK]) == 2
    assert "another process is writing this run" in capsys.readouterr().err
    # Only the lock holder sweeps the folder's temp files: the live writer's file is still there.
    assert (folder / ".config.yaml.abc123.tmp").read_text() == "being written"
    assert not (folder / "config.yaml").exists()


def test_the_lock_dies_with_its_holder_and_is_reentrant_within_a_process(holder, tmp_path):
    folder, proc = holder
    with pytest.raises(RunLockedError, match=f"pid {proc.pid}"):
        with run_lock(folder):
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with run_lock(folder) as locked:  # the kernel released the killed process's lock
        with run_lock(folder):  # rswb train locks before loading data, fit() again: one process, one lock
            assert (locked / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} ")
    res = train_task(TASK, {"epochs": 1, "progress": False}, run_name="r", runs_root=folder.parent, overwrite=True)
    assert (res.run_dir / "metrics.json").exists()
    assert not (folder / ".config.yaml.abc123.tmp").exists()  # the new holder swept the dead writer's temp file


def test_an_existing_run_is_refused_before_the_task_is_built(tmp_path, monkeypatch, capsys):
    args = ["train", TASK, "--name", "r", "--runs-root", str(tmp_path), *QUICK]
    assert main(args) == 0
    _never_build(monkeypatch)
    assert main(args) == 2
    assert "a run already exists here" in capsys.readouterr().err


def test_a_run_that_fails_before_it_starts_leaves_no_folder(tmp_path, capsys):
    missing = tmp_path / "no_such_scene"
    code = main(["train", "pha", "--data", str(missing), "--epochs", "1", "--name", "x", "--runs-root",
                 str(tmp_path / "runs")])
    assert code == 2 and str(missing) in capsys.readouterr().err
    assert not (tmp_path / "runs" / "x").exists()  # the lock's folder went with the failed start


def test_a_run_folder_never_makes_rswb_import_code(tmp_path, monkeypatch, capsys):
    """A run received from someone names `planted:blobs` as its task and ships planted.py: nothing is imported."""
    import yaml

    assert main(["train", TASK, "--name", "r", "--runs-root", str(tmp_path), *QUICK]) == 0
    marker = tmp_path / "ran"
    (tmp_path / "planted.py").write_text(f"open({str(marker)!r}, 'w').write('code from a run folder ran')\n")
    config = tmp_path / "r" / "config.yaml"
    saved = yaml.safe_load(config.read_text())
    saved["task_name"] = "planted:not_registered"
    config.write_text(yaml.safe_dump(saved))
    monkeypatch.chdir(tmp_path)  # the working directory holds planted.py
    for args in (["eval", "r", "--runs-root", str(tmp_path)], ["report", "r", "--runs-root", str(tmp_path)]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "never make rswb import code" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()
    import sys

    assert "planted" not in sys.modules and str(tmp_path) not in sys.path


@pytest.mark.parametrize("option, value", [("--lr", "nan"), ("--lr", "inf"), ("--weight-decay", "nan"),
                                           ("--warmup-epochs", "inf"), ("--delay", "nan")])
def test_non_finite_options_are_refused_naming_the_option(option, value, tmp_path, capsys, monkeypatch):
    """Training options and a task's own float options alike (NaN used to pass every range check)."""
    if option != "--delay":  # a task option: the patched builder would not know its config
        _never_build(monkeypatch)
    code = main(["train", TASK, "--name", "r", "--runs-root", str(tmp_path), *QUICK, option, value])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert option in err and ("finite" in err or "must be" in err)
    assert not (tmp_path / "r").exists()  # nothing started


def test_a_learning_rate_far_outside_sane_bounds_is_warned(tmp_path):
    from rswb.config import TrainConfig, validate

    with pytest.warns(UserWarning, match="--lr 1e\\+30 is far above"):
        validate(TrainConfig(lr=1e30))


@pytest.mark.parametrize("name", ["../../x", "a/b", ".."])
def test_a_run_name_is_one_folder_name(name, tmp_path, capsys, monkeypatch):
    _never_build(monkeypatch)
    root = tmp_path / "deep" / "runs"
    assert main(["train", TASK, "--name", name, "--runs-root", str(root), *QUICK]) == 2
    assert "--name must be one folder name" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not root.exists()


@pytest.mark.parametrize("device", ["foo", "cuda:7"])
def test_a_device_that_is_not_here_is_refused_in_one_line(device, tmp_path, capsys, monkeypatch):
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that GPU")
    _never_build(monkeypatch)
    assert main(["train", TASK, "--name", "r", "--runs-root", str(tmp_path), *QUICK, "--device", device]) == 2
    err = capsys.readouterr().err
    assert "device" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_one_damaged_run_does_not_hide_the_others(tmp_path, capsys):
    for name in ("good", "bad_final", "bad_config", "cut_history"):
        assert main(["train", TASK, "--name", name, "--runs-root", str(tmp_path), *QUICK]) == 0
    (tmp_path / "bad_final" / "metrics.json").write_text('{"test": {"OA": 0.9')  # cut short
    (tmp_path / "bad_config" / "config.yaml").write_text("train: [unclosed\n")
    with open(tmp_path / "cut_history" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_lo')  # an append cut short by a killed process: no newline
    capsys.readouterr()
    assert main(["runs", "list", "--runs-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "good" in out and "cut_history" in out and "finished" in out
    assert "damaged:" in out and "metrics.json: not valid JSON" in out and "config.yaml: not valid YAML" in out
    assert main(["runs", "compare", "good", "bad_final", "cut_history", "--runs-root", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "damaged: " in table and table.count("finished") == 2
    from rswb.engine.runs import RunFolder

    assert len(RunFolder(tmp_path / "cut_history").read_history()) == 1  # the cut line is left out


def test_damaged_weights_and_cache_entries_are_never_used_silently(tmp_path, capsys):
    assert main(["train", TASK, "--name", "r", "--runs-root", str(tmp_path), *QUICK]) == 0
    best = tmp_path / "r" / "best.pt"
    data = bytearray(best.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 256):
        data[i] ^= 0xFF
    best.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["eval", "r", "--runs-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "best.pt: its bytes do not match the SHA-256" in err and len(err.strip().splitlines()) == 1
    # A damaged feature-cache entry is recomputed, with a warning, never used.
    from rswb.data.features import cached

    entry = tmp_path / "cache" / "entry.pt"
    first = cached(entry, lambda: {"x": __import__("torch").arange(1000.0)})
    raw = bytearray(entry.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    entry.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="recomputing a cache entry: .*entry.pt: its bytes do not match"):
        again = cached(entry, lambda: {"x": __import__("torch").arange(1000.0)})
    assert again["x"].equal(first["x"])


def test_a_validation_split_too_small_to_select_on_is_said():
    from rswb.engine.loop import selection_warnings

    class Val:
        labels = [0, 0, 1, 2, 2]  # one item of class 1

    notes = selection_warnings(Val(), [{"val_OA": 0.5}, {"val_OA": 0.7}], "OA")
    assert len(notes) == 1 and "1 item(s) of its smallest class (5 items in all)" in notes[0]
    flat = selection_warnings(None, [{"val_mAP@20": 0.0}, {"val_mAP@20": 0.0}, {"val_mAP@20": 0.0}], "mAP@20")
    assert flat == ["validation mAP@20 was 0 at every epoch: it could not select an epoch"]
    assert selection_warnings(None, [{"val_OA": 0.5}], "OA") == []  # one epoch: nothing to select among
