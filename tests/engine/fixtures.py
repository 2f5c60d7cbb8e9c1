"""A small, fully deterministic classification task for engine tests (also runnable via `rswb train`)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
from torch import nn

from rswb.config import option
from rswb.engine import ClassificationTask, TaskBundle
from rswb.registry import register_task


class Blobs(torch.utils.data.Dataset):
    """Gaussian blobs: `n` points (drawn with `seed`) in `dim` dimensions around `classes` fixed centres."""

    def __init__(self, n: int = 240, dim: int = 8, classes: int = 4, seed: int = 0, spread: float = 1.5):
        centres = np.random.default_rng(1234).normal(0, 2.0, (classes, dim))
        rng = np.random.default_rng(seed)
        self.labels = np.arange(n) % classes
        self.x = torch.from_numpy((centres[self.labels] + spread * rng.normal(size=(n, dim))).astype(np.float32))

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"x": self.x[i], "label": int(self.labels[i])}


class MLP(nn.Module):
    def __init__(self, dim: int = 8, hidden: int = 32, classes: int = 4, delay: float = 0.0, nan_at: int = -1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, classes))
        self.delay, self.nan_at, self.calls = delay, nan_at, 0

    def forward(self, batch):
        if self.training:
            self.calls += 1
            if self.delay:
                time.sleep(self.delay)
        logits = self.net(batch["x"])
        if self.training and self.calls == self.nan_at:
            logits = logits * float("nan")
        return {"logits": logits}


@dataclasses.dataclass
class BlobsConfig:
    n_train: int = option(240, "training points")
    n_test: int = option(120, "test points")
    hidden: int = option(32, "hidden units")
    delay: float = option(0.0, "seconds of sleep per training step (to kill runs mid-epoch in tests)")
    data_seed: int = option(0, "seed of the blobs")


@register_task("blobs")
def blobs(cfg: BlobsConfig) -> TaskBundle:
    """Gaussian-blob classification with an MLP (engine tests)."""
    model = MLP(hidden=cfg.hidden, delay=cfg.delay)
    task = ClassificationTask(model, num_classes=4, info={"method": "mlp", "version": "v0", "data": "blobs"})
    return TaskBundle(task, Blobs(cfg.n_train, seed=cfg.data_seed), test=Blobs(cfg.n_test, seed=cfg.data_seed + 1),
                      train_defaults={"batch_size": 32, "lr": 0.01, "epochs": 4, "progress": False})
