"""Fault battery (issue 30): a hostile or unlucky user's runs, each case asserting the outcome the user is promised.

Every test here is marked ``fault``; the session ends with the line "fault battery: N faults, N handled".

One writer per run folder: another process holds a run folder's lock the way a live `rswb train` does (a subprocess
that takes :func:`rswb.engine.runs.run_lock` and waits); every attempt to write the same folder must be refused in
seconds, before any data is loaded, with a one-line error that names the holder, and must leave the holder's files
alone. When the holder is killed with SIGKILL the kernel frees the lock and the folder can be trained again.
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

pytestmark = [pytest.mark.fault, pytest.mark.skipif(os.name != "posix", reason="needs flock and POSIX signals")]

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
    monkeypatch.setattr(launch, "get", lambda kind, name, **kw: no_build if kind == "task" and name == TASK
                        else real_get(kind, name, **kw))
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


def test_a_full_disk_stops_a_run_in_one_line_and_resume_finishes_it(tmp_path, monkeypatch, capsys):
    """ENOSPC while the second epoch's checkpoint is written: exit 2, one line naming the file, its file system and
    the intact checkpoint; no temp file left; --resume then finishes with the metrics of an uninterrupted run."""
    import errno

    from rswb.engine.runs import RunFolder
    from rswb.io import load_checkpoint

    args = ["train", TASK, "--runs-root", str(tmp_path), "--epochs", "3", "--no-progress", "--deterministic"]
    assert main([*args, "--name", "whole"]) == 0
    writes = {"n": 0}
    real_fsync = os.fsync

    def full_disk_fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}").split("/")[-1]
        if name.startswith(".checkpoint.pt.") and ".sha256." not in name:  # the checkpoint, not its digest
            writes["n"] += 1
            if writes["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk_fsync)
    capsys.readouterr()
    assert main([*args, "--name", "r"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"no space left on {_mount_of(tmp_path)}" in err
    assert f"while writing {(tmp_path / 'r' / 'checkpoint.pt').resolve()}" in err
    assert "the last checkpoint, epoch 1, is intact: free space and run with --resume" in err
    folder = tmp_path / "r"
    assert not list(folder.glob(".*.tmp")) and load_checkpoint(folder / "checkpoint.pt")["epoch"] == 1
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert main([*args, "--name", "r", "--resume"]) == 0
    assert RunFolder(folder).read_final()["test"] == RunFolder(tmp_path / "whole").read_final()["test"]


def _mount_of(path) -> str:
    p = Path(path).resolve()
    while not os.path.ismount(p):
        p = p.parent
    return str(p)


def test_a_folder_that_cannot_be_written_or_is_full_is_refused_before_any_data_is_loaded(tmp_path, monkeypatch,
                                                                                         capsys):
    _never_build(monkeypatch)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["train", TASK, "--name", "r", "--runs-root", str(blocker / "runs"), *QUICK]) == 2
    err = capsys.readouterr().err
    assert "the runs root (--runs-root) cannot be written here" in err and len(err.strip().splitlines()) == 1
    import shutil

    import rswb.io

    free = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(rswb.io.shutil, "disk_usage", lambda _p: free._replace(free=10 * 2**20))
    assert main(["train", TASK, "--name", "r", "--runs-root", str(tmp_path / "runs"), *QUICK]) == 2
    err = capsys.readouterr().err
    assert "the runs root (--runs-root) needs about 64 MiB" in err and "has 10 MiB free" in err
    assert not (tmp_path / "runs" / "r").exists()


@pytest.mark.skipif(os.name == "posix" and os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_a_read_only_runs_root_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    _never_build(monkeypatch)
    root = tmp_path / "ro"
    root.mkdir(mode=0o500)
    try:
        assert main(["train", TASK, "--name", "r", "--runs-root", str(root), *QUICK]) == 2
        assert "cannot be written here (Permission denied)" in capsys.readouterr().err
    finally:
        root.chmod(0o700)


def test_data_that_is_a_file_where_a_folder_is_needed_is_refused_in_one_line(tmp_path, capsys):
    scene = tmp_path / "scene.tif"
    scene.write_bytes(b"not a folder")
    code = main(["train", "hash", "--data", str(scene), "--name", "x", "--runs-root", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"--data {scene} is a file; it must be a folder (scene folder" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_cache_entry_asked_for_other_items_is_refused_and_recomputed(tmp_path):
    """Two entries swapped with their digest files (the SHA-256 still matches): each records what it holds, so
    neither is used for the other; asking an entry for other items than it records is refused the same way."""
    import torch

    from rswb.data.features import cached

    train, test = tmp_path / "train-k1.pt", tmp_path / "test-k2.pt"
    cached(train, lambda: {"x": torch.zeros(3)}, {"split": "train", "items": ["a/1.tif", "a/2.tif", "b/3.tif"]})
    cached(test, lambda: {"x": torch.ones(2)}, {"split": "test", "items": ["a/9.tif", "b/8.tif"]})
    for suffix in ("", ".sha256"):
        a, b = Path(str(train) + suffix), Path(str(test) + suffix)
        tmp = a.with_name("swap")
        a.rename(tmp)
        b.rename(a)
        tmp.rename(b)
    with pytest.warns(UserWarning, match=r"train-k1.pt: holds entry test-k2.pt, split test, 2 items .*; asked for "
                                         r"entry train-k1.pt, split train, 3 items"):
        again = cached(train, lambda: {"x": torch.zeros(3)},
                       {"split": "train", "items": ["a/1.tif", "a/2.tif", "b/3.tif"]})
    assert again["x"].equal(torch.zeros(3))
    with pytest.warns(UserWarning, match="asked for entry train-k1.pt, split train, 2 items"):
        cached(train, lambda: {"x": torch.zeros(2)}, {"split": "train", "items": ["a/1.tif", "a/2.tif"]})


def test_a_full_disk_while_caching_keeps_the_features(tmp_path, monkeypatch):
    import errno

    import torch

    import rswb.io
    from rswb.data.features import cached

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rswb.io.os, "fsync", no_space)
    with pytest.warns(UserWarning, match=r"no space left on .* while writing .*entry.pt(.sha256)?; the features are "
                                         "used from memory"):
        value = cached(tmp_path / "entry.pt", lambda: {"x": torch.arange(4)})
    assert value["x"].tolist() == [0, 1, 2, 3] and not list(tmp_path.glob("*entry.pt*tmp"))
    assert not (tmp_path / "entry.pt").exists()


def test_a_model_name_in_a_config_never_imports_a_module(tmp_path, monkeypatch):
    """A `version: planted:pha_v1` in a received run's config: even where planted.py is importable, it is not
    imported (model and loss names never import), and the message says what to do."""
    import sys

    from rswb.registry import create_model

    marker = tmp_path / "ran"
    (tmp_path / "planted_model.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(KeyError, match="never make rswb import code"):
        create_model("planted_model:evil", num_classes=4)
    # A name rswb registered resolves to rswb's own builder, still without importing the module named.
    assert type(create_model("planted_model:pha_v1", num_classes=4, bands=4)).__module__ == "rswb.models.pha"
    assert not marker.exists() and "planted_model" not in sys.modules


def test_a_bug_is_a_traceback_with_the_versions_to_report(monkeypatch, capsys):
    import rswb.cli

    def broken(_args):
        raise RuntimeError("an internal invariant failed")

    monkeypatch.setattr(rswb.cli, "_cmd_train", broken)
    parser = rswb.cli.build_parser()
    monkeypatch.setattr(rswb.cli, "build_parser", lambda: _with_func(parser, broken))
    assert main(["train", TASK]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: an internal invariant failed" in err
    assert "this is a bug in rswb, not in your input" in err and "torch " in err.splitlines()[-1]


def _with_func(parser, func):
    parser.set_defaults(func=func)
    for action in parser._subparsers._group_actions:
        for sub in action.choices.values():
            sub.set_defaults(func=func)
    return parser


@pytest.mark.slow
def test_two_trainings_filling_one_cold_feature_cache_agree(tmp_path):
    """Two `rswb train hash` processes started together on one empty feature cache (each extracts and writes the same
    entries): both finish, with identical metrics, and the entries they leave verify."""
    from rswb.data.features import HOLDS_KEY
    from rswb.engine.runs import RunFolder
    from rswb.io import load_checkpoint

    cache = tmp_path / "cache"
    common = ["train", "hash", "--epochs", "2", "--bits", "16", "--image-size", "64", "--cache-dir", str(cache),
              "--runs-root", str(tmp_path / "runs"), "--no-progress", "--deterministic"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "rswb.cli", *common, "--name", name], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for name in ("a", "b")]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    finals = [RunFolder(tmp_path / "runs" / n).read_final() for n in ("a", "b")]
    assert finals[0]["test"] == finals[1]["test"] and finals[0]["val"] == finals[1]["val"]
    entries = sorted(cache.rglob("*.pt"))
    assert entries and all(HOLDS_KEY in load_checkpoint(e) for e in entries)  # each verifies and records its items
    assert not list(cache.rglob("*.tmp"))
