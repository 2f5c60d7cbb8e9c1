"""Optimisers over parameter groups and warm-up + cosine / linear / step learning-rate schedules (stepped per batch)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from rswb.config import TrainConfig

__all__ = ["LRSchedule", "build_optimizer", "build_scheduler"]

SCHEDULES = ("cosine", "linear", "step", "constant")


class LRSchedule:
    """The lr multiplier at a given optimiser step: linear warm-up, then the chosen decay.

    ``factor(step)`` for ``step`` counted from 0:

    * warm-up (``step < warmup_steps``): ``(step + 1) / warmup_steps``;
    * then with ``p = (step - warmup_steps) / (total_steps - warmup_steps)`` in ``[0, 1]``:
      cosine ``m + (1 - m) (1 + cos(pi p)) / 2``; linear ``1 - (1 - m) p``; constant ``1``;
      step ``gamma ** (epoch // step_epochs)`` with ``epoch = step // steps_per_epoch``;
      where ``m = min_lr_ratio``.

    A plain object with only numbers in ``__dict__``, so ``LambdaLR.state_dict()`` stays loadable with
    ``weights_only=True``.
    """

    def __init__(self, kind: str, total_steps: int, steps_per_epoch: int, warmup_steps: int = 0,
                 min_lr_ratio: float = 0.0, step_epochs: int = 30, step_gamma: float = 0.1):
        if kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")
        if warmup_steps < 0 or total_steps < 1 or steps_per_epoch < 1:
            raise ValueError("need total_steps >= 1, steps_per_epoch >= 1 and warmup_steps >= 0")
        self.kind, self.total_steps, self.steps_per_epoch = kind, int(total_steps), int(steps_per_epoch)
        self.warmup_steps, self.min_lr_ratio = int(warmup_steps), float(min_lr_ratio)
        self.step_epochs, self.step_gamma = max(1, int(step_epochs)), float(step_gamma)

    def __call__(self, step: int) -> float:
        """The multiplier of the base lr for optimiser step ``step``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        if self.kind == "step":
            return self.step_gamma ** ((step // self.steps_per_epoch) // self.step_epochs)
        span = max(1, self.total_steps - self.warmup_steps)
        p = min(1.0, (step - self.warmup_steps) / span)
        m = self.min_lr_ratio
        if self.kind == "cosine":
            return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * p))
        return 1.0 - (1.0 - m) * p


def build_optimizer(param_groups: Iterable[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser of ``cfg`` over parameter groups; a group's ``lr_mult`` scales the base lr (e.g. proxies x100).

    Each group may also set its own ``weight_decay``; groups without trainable parameters are dropped. A plain
    iterable of parameters is one group.
    """
    param_groups = list(param_groups)
    if param_groups and isinstance(param_groups[0], torch.Tensor):  # plain parameters, like torch.optim accepts
        param_groups = [{"params": param_groups}]
    groups = []
    for g in param_groups:
        g = dict(g)
        params = g.pop("params")
        params = [params] if isinstance(params, torch.Tensor) else list(params)  # not the rows of one tensor
        params = [p for p in params if p.requires_grad]
        if not params:
            continue
        mult = float(g.pop("lr_mult", 1.0))
        groups.append({"params": params, "lr": cfg.lr * mult, "lr_mult": mult, **g})
    if not groups:
        raise ValueError("the task has no trainable parameters")
    name = cfg.optimizer.lower()
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer must be adamw, adam or sgd, got {cfg.optimizer!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` following :class:`LRSchedule` for ``cfg.epochs`` epochs of ``steps_per_epoch``."""
    schedule = LRSchedule(cfg.schedule, total_steps=cfg.epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch,
                          warmup_steps=round(cfg.warmup_epochs * steps_per_epoch), min_lr_ratio=cfg.min_lr_ratio,
                          step_epochs=cfg.step_epochs, step_gamma=cfg.step_gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
