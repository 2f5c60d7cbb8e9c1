"""Validation splits carved from the training split (model selection never looks at the test split)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

__all__ = ["carve_validation", "validation_indices"]


def validation_indices(
    n: int, fraction: float, seed: int = 0, labels: Sequence[int] | np.ndarray | torch.Tensor | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into ``(train_idx, val_idx)`` with its own seeded generator.

    With ``labels`` the split is stratified: each class gives ``round(fraction * n_c)`` items to validation, at least
    one when it has two or more, and always keeps at least one for training. Both index arrays are sorted.

    Raises:
        ValueError: ``fraction`` outside ``[0, 1)`` or ``labels`` of the wrong length.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    y = None
    if labels is not None:  # checked even when nothing is held out: mismatched labels mean the wrong data
        y = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if y.shape != (n,):
            raise ValueError(f"labels has shape {y.shape} but the dataset has {n} items")
    rng = np.random.default_rng([seed, 0x5EED])
    if fraction == 0.0 or n == 0:
        return np.arange(n), np.arange(0)
    if y is None:
        perm = rng.permutation(n)
        k = min(n - 1, max(1, round(fraction * n)))
        return np.sort(perm[k:]), np.sort(perm[:k])
    val = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        k = round(fraction * len(members))
        k = min(len(members) - 1, max(1 if len(members) >= 2 else 0, k))
        val.append(members[:k])
    val_idx = np.sort(np.concatenate(val)) if val else np.arange(0)
    train_mask = np.ones(n, dtype=bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask), val_idx


def carve_validation(dataset: Dataset, fraction: float, seed: int = 0,
                     labels: Sequence[int] | np.ndarray | torch.Tensor | None = None) -> tuple[Dataset, Dataset | None]:
    """``(train_subset, val_subset)`` of ``dataset``; stratified by ``labels`` (default: ``dataset.labels`` if any).

    Returns ``(dataset, None)`` when ``fraction`` is 0. Subsets keep batched ``__getitems__`` reads.
    """
    if labels is None:
        labels = getattr(dataset, "labels", None)
    train_idx, val_idx = validation_indices(len(dataset), fraction, seed, labels)
    if len(val_idx) == 0:
        return dataset, None
    return Subset(dataset, train_idx.tolist()), Subset(dataset, val_idx.tolist())
