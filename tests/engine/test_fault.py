"""Fault tests: runs killed with SIGKILL at random moments resume to the uninterrupted result.

The training process is a real `rswb train` subprocess. The model is made large (a ~30 MB checkpoint with the Adam
state) so that some kills land while a checkpoint is being written: the point is that checkpoint.pt is then still
the previous complete file, never a truncated one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rswb.engine import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
TASK = "tests.engine.fixtures:blobs"
COMMON = ["--epochs", "6", "--deterministic", "--no-progress", "--hidden", "200000", "--batch-size", "32"]

pytestmark = [pytest.mark.slow, pytest.mark.fault,
              pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")]


def train_cmd(root: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rswb.cli", "train", TASK, "--name", name, "--runs-root", str(root), *COMMON, *extra]


def run_to_end(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def kill_when(cmd: list[str], ready, delay: float) -> int:
    """Start `cmd`, wait until `ready()` is true, sleep `delay` s, SIGKILL it; returns its return code."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while not ready() and proc.poll() is None:
            assert time.monotonic() < deadline, "the training process never got going"
            time.sleep(0.005)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


def started(run: Path):
    """A readiness test: this launch has begun training (fit rewrites config.yaml each time it starts)."""
    t0 = time.time()
    cfg = run / "config.yaml"
    return lambda: cfg.exists() and cfg.stat().st_mtime >= t0


def epochs_logged(run: Path) -> int:
    p = run / "metrics.jsonl"
    return len(p.read_text().splitlines()) if p.exists() else 0


def assert_same_run(a: Path, b: Path) -> None:
    fa, fb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    for key in ("test", "val", "best_epoch", "epochs_run"):
        assert fa[key] == fb[key], key
    ha = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    hb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    strip = ("time_s",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in ha] == \
        [{k: v for k, v in r.items() if k not in strip} for r in hb]
    sa, sb = load_checkpoint(a / "checkpoint.pt")["task"], load_checkpoint(b / "checkpoint.pt")["task"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ba, bb = load_checkpoint(a / "best.pt")["task"], load_checkpoint(b / "best.pt")["task"]
    assert all(torch.equal(ba[k], bb[k]) for k in ba)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ref")
    run_to_end(train_cmd(root, "full"))
    return root / "full"


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, reference):
    run = tmp_path / "killed"
    # --delay slows each step so that "mid-epoch" is a wide window: kill half-way through epoch 3.
    rc = kill_when(train_cmd(tmp_path, "killed", "--delay", "0.03"), lambda: epochs_logged(run) >= 2, 0.1)
    assert rc == -signal.SIGKILL
    assert epochs_logged(run) == 2 and not (run / "metrics.json").exists()
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 2
    run_to_end(train_cmd(tmp_path, "killed", "--resume"))
    assert_same_run(reference, run)


def writing(run: Path, after):
    """A readiness test: a checkpoint is being written right now (its temporary file exists)."""
    return lambda: after() and any(run.glob(".*.pt.*.tmp"))


def epoch_wall_s(run: Path) -> float:
    """Wall time of one epoch of a finished run, checkpoint writes included (config.yaml is written as fit starts)."""
    return ((run / "metrics.json").stat().st_mtime - (run / "config.yaml").stat().st_mtime) / epochs_logged(run)


def test_repeated_random_kills_never_leave_a_truncated_checkpoint(tmp_path, reference):
    run = tmp_path / "chaos"
    rng = np.random.default_rng(0)
    # Random kills land within about one epoch of the start: a fixed window (it was 0-1.5 s) let a fast machine
    # finish all six epochs before the kill, and the test then counted a kill that never happened.
    epoch_s = epoch_wall_s(reference)
    kills = during_write = 0
    for attempt in range(16):
        if (run / "metrics.json").exists():
            break
        extra = ["--resume"] if attempt else []
        # Odd attempts kill at a random moment of training; even ones the instant a checkpoint write has begun.
        if attempt % 2:
            rc = kill_when(train_cmd(tmp_path, "chaos", *extra), started(run), float(rng.uniform(0.0, 1.5)) * epoch_s)
        else:
            rc = kill_when(train_cmd(tmp_path, "chaos", *extra), writing(run, started(run)), 0.0)
            during_write += rc == -signal.SIGKILL and bool(list(run.glob(".*.tmp")))
        kills += rc == -signal.SIGKILL  # only kills that happened count: a launch may finish first
        if (run / "checkpoint.pt").exists():
            ckpt = load_checkpoint(run / "checkpoint.pt")  # raises CheckpointError if truncated
            assert ckpt["epoch"] == len(ckpt["history"]) >= 1
    if not (run / "metrics.json").exists():
        run_to_end(train_cmd(tmp_path, "chaos", "--resume"))
    assert kills >= 4
    assert during_write >= 1, "no kill landed inside a checkpoint write, so the test proved nothing"
    assert_same_run(reference, run)
    assert not list(run.glob(".*.tmp")), "a resumed run cleans up temporary files of killed writes"
