"""DDP: two torchrun processes on CPU (gloo) train to the same result as one process on the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from rswb.engine import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
# 216 training items after the 10 % validation carve: batches of 32 and a last one of 24, all split 2 ways evenly.
ARGS = ["tests.engine.fixtures:blobs", "--epochs", "3", "--batch-size", "32", "--deterministic", "--no-progress"]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo")]


def train(root: Path, name: str, nproc: int) -> Path:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd = [*(launcher if nproc > 1 else [sys.executable]), "-m", "rswb.cli", "train", *ARGS,
           "--name", name, "--runs-root", str(root)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return root / name


def test_two_gloo_processes_equal_one_process(tmp_path):
    single = train(tmp_path, "single", 1)
    ddp = train(tmp_path, "ddp", 2)
    fs, fd = (json.loads((d / "metrics.json").read_text()) for d in (single, ddp))
    assert fd["world_size"] == 2 and fs["world_size"] == 1
    assert fd["test"] == fs["test"] and fd["val"] == fs["val"] and fd["best_epoch"] == fs["best_epoch"]
    # Gradients are averaged in a different summation order: equal up to float rounding, not bit for bit.
    ws, wd = load_checkpoint(single / "checkpoint.pt")["task"], load_checkpoint(ddp / "checkpoint.pt")["task"]
    for k in ws:
        torch.testing.assert_close(wd[k], ws[k], rtol=1e-5, atol=1e-6)
    hs = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
    hd = [json.loads(x) for x in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in hd] == pytest.approx([r["train_loss"] for r in hs], rel=1e-5)
    # Only rank 0 wrote the folder: one line per epoch, no duplicates.
    assert [r["epoch"] for r in hd] == [1, 2, 3]
