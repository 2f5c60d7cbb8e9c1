"""Every seeded split and subsample of rswb, with one seeding rule.

The rule: a draw's generator is ``np.random.default_rng([seed, *stream])`` (:func:`split_rng`), where ``stream`` names
what is drawn (a constant per kind of draw, plus the class for per-class draws). So a split never touches the
global random state, two kinds of draw with one seed are independent, and a class's draw does not depend on the
other classes. (``default_rng(s)`` and ``default_rng([s])`` are the same generator, so a draw with no stream key is
``default_rng(seed)``.)

* :func:`validation_split`: the validation share of a numbered training split under a rule (:data:`VAL_RULES`):
  :func:`held_out_block` (a block of consecutive items per class, the shape of a block test split) or
  :func:`validation_indices` (a seeded random share);
* :func:`validation_indices` / :func:`carve_validation`: a (stratified) random validation share of a training split;
* :func:`few_shot_split`: N items (or a fraction) per class for training, a validation share from the rest
  (labelled pixels of an MS+PAN scene, or the images of a scene folder's training split; the test items always come
  from a separate split, so they never overlap the few-shot or validation items);
* :func:`carve_items`: a seeded share of items (e.g. the validation images of a caption set without a val split);
* :func:`stratified_subsample`: at most N items, the same share of every class (quick runs on a test set);
* :func:`first_per_class`: the first N items of every class, in order (quick runs; no randomness).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

__all__ = [
    "VAL_RULES", "FewShotSplit", "carve_items", "carve_validation", "check_val_rule", "count_per_class",
    "few_shot_split", "first_per_class", "held_out_block", "split_rng", "stratified_subsample", "validation_indices",
    "validation_split",
]

#: How a numbered training split gives its validation items: ``"block"`` (:func:`held_out_block`, the default) or
#: ``"random"`` (:func:`validation_indices`, the rule of runs made before the block existed).
VAL_RULES: tuple[str, ...] = ("block", "random")

#: Stream keys of the kinds of draw (see the module docstring).
STREAM_VALIDATION = 0x5EED
STREAM_FEW_SHOT = 0xFE75
STREAM_SUBSAMPLE = 0x7E57


def split_rng(seed: int, *stream: int) -> np.random.Generator:
    """The generator of one draw: ``np.random.default_rng([seed, *stream])`` (the module's one seeding rule)."""
    return np.random.default_rng([int(seed), *(int(s) for s in stream)])


def count_per_class(shots: int | float, available: int) -> int:
    """How many items a class of ``available`` items gives for ``shots``.

    An integer (or a float >= 1) is a count per class, capped at what the class has; a float in (0, 1) is a
    fraction of the class, rounded, at least 1 (a class is never dropped from a few-shot split).

    Raises:
        ValueError: ``shots`` is not positive.
    """
    if shots <= 0:
        raise ValueError(f"shots must be a positive count or a fraction in (0, 1), got {shots}")
    if shots < 1:
        return min(available, max(1, round(shots * available)))
    return min(available, int(shots))


@dataclass(frozen=True)
class FewShotSplit:
    """Indices into the candidate items: ``train`` (the few shots), ``val`` (model selection), ``rest`` (unused).

    The three index arrays are disjoint and sorted; ``labels`` are the 0-based classes of all candidates.
    """

    train: np.ndarray
    val: np.ndarray
    rest: np.ndarray
    labels: np.ndarray

    def counts(self, part: str = "train") -> dict[int, int]:
        """Items per class (0-based) in ``train``, ``val`` or ``rest``."""
        values, n = np.unique(self.labels[getattr(self, part)], return_counts=True)
        return {int(v): int(c) for v, c in zip(values, n)}


def few_shot_split(labels: np.ndarray, shots: int | float, val: int | float = 0, seed: int = 0,
                   num_classes: int | None = None) -> FewShotSplit:
    """Draw a seeded few-shot training set and a validation set per class.

    Each class's items are shuffled by a generator seeded with ``(seed, class)``, so a class's draw does not depend
    on the other classes (adding a class does not change the pixels of the others). The first
    :func:`count_per_class` ``(shots)`` items train, the next ``count_per_class(val)`` of the remainder validate.

    Args:
        labels: 0-based class of every candidate item ``[N]``.
        shots: items per class (int) or fraction per class (float in (0, 1), e.g. 0.02 for 2 %).
        val: validation items per class taken from the rest, same convention (0: none).
        seed: the draw's seed.
        num_classes: expected number of classes; a class with no candidate item raises.

    Raises:
        ValueError: a class has no item. (A class with too few items for both parts keeps its items for
            training and gives fewer, possibly zero, validation items.)
    """
    y = np.asarray(labels).astype(np.int64).ravel()
    classes = np.arange(num_classes) if num_classes is not None else np.unique(y)
    train, valid, rest = [], [], []
    for c in classes:
        idx = np.flatnonzero(y == c)
        if idx.size == 0:
            raise ValueError(f"class {int(c)} has no labelled item to draw few-shot samples from")
        idx = idx[split_rng(seed, int(c), STREAM_FEW_SHOT).permutation(idx.size)]
        k = count_per_class(shots, idx.size)
        left = idx[k:]
        m = count_per_class(val, left.size) if val and left.size else 0
        train.append(idx[:k])
        valid.append(left[:m])
        rest.append(left[m:])
    cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)  # noqa: E731
    return FewShotSplit(cat(train), cat(valid), cat(rest), y)


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
    rng = split_rng(seed, STREAM_VALIDATION)
    if fraction == 0.0 or n == 0:
        return np.arange(n), np.arange(0)
    if y is None:
        perm = rng.permutation(n)
        k = min(n - 1, max(1, round(fraction * n)))
        return np.sort(perm[k:]), np.sort(perm[:k])
    val = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
    return _held_out_per_class(n, val, fraction)


def _held_out_per_class(n: int, members: list[np.ndarray], fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, val_idx)``: the first ``round(fraction * n_c)`` of each class's ``members`` validate.

    At least one item of a class with two or more validates, and each class keeps at least one for training.
    """
    val = [m[:min(len(m) - 1, max(1 if len(m) >= 2 else 0, round(fraction * len(m))))] for m in members]
    val_idx = np.sort(np.concatenate(val)) if val else np.arange(0)
    train_mask = np.ones(n, dtype=bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask), val_idx


def held_out_block(n: int, fraction: float, labels: Sequence[int] | np.ndarray | torch.Tensor | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into ``(train_idx, val_idx)``: the FIRST ``fraction`` of every class's items, in order.

    Scene sets are numbered, and their test split is a block of numbers per class (UC Merced NN 80-99, AID the
    second half per class), while neighbouring numbers often come from one source tile. A random share of the
    training items keeps near-copies of each validation image in training, which a test block does not have: it
    flattered the validation score (retrieval on UCM-Captions: validation mR about 67, test about 52). A block held
    out whole has no near-copy left in training, as the test split does not. The block is the first items of each
    class (UC Merced with ``fraction=0.125`` of NN 00-79: NN 00-09), so the training items keep their order and the
    held-out block never touches the test block. Each class gives ``round(fraction * n_c)`` items, at least one
    when it has two or more, and keeps at least one for training; without labels the whole split is one class.
    Deterministic: there is no seed.

    Raises:
        ValueError: ``fraction`` outside ``[0, 1)`` or ``labels`` of the wrong length.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_share must be in [0, 1), got {fraction}")
    y = np.zeros(n, np.int64) if labels is None else (
        labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels))
    if y.shape != (n,):
        raise ValueError(f"labels has shape {y.shape} but the dataset has {n} items")
    if fraction == 0.0 or n == 0:
        return np.arange(n), np.arange(0)
    # Each class in the split's order: the order of the items' numbers.
    return _held_out_per_class(n, [np.flatnonzero(y == c) for c in np.unique(y)], fraction)


def check_val_rule(rule: str) -> None:
    """Raise ``ValueError`` unless ``rule`` is one of :data:`VAL_RULES`."""
    if rule not in VAL_RULES:
        raise ValueError(f"val_rule must be one of {', '.join(map(repr, VAL_RULES))}; got {rule!r}")


def validation_split(n: int, fraction: float, seed: int = 0,
                     labels: Sequence[int] | np.ndarray | torch.Tensor | None = None, rule: str = "block"
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, val_idx)`` of ``range(n)`` under ``rule`` (:data:`VAL_RULES`); ``seed`` is used by ``"random"``.

    Raises:
        ValueError: an unknown rule, ``fraction`` outside ``[0, 1)`` or ``labels`` of the wrong length.
    """
    check_val_rule(rule)
    if rule == "block":
        return held_out_block(n, fraction, labels)
    return validation_indices(n, fraction, seed, labels)


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


def carve_items(n: int, share: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, carved)``: a seeded share of ``range(n)`` (at least one item), both sorted.

    The first ``max(1, round(share * n))`` items of ``split_rng(seed).permutation(n)`` are carved.
    """
    n_carved = max(1, int(round(share * n)))
    order = split_rng(seed).permutation(n)
    return np.sort(order[n_carved:]), np.sort(order[:n_carved])


def stratified_subsample(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of at most about ``limit`` items with these labels, the same share of every class.

    Each class keeps ``max(1, round(limit / N * n_c))`` of its items, drawn by ``split_rng(seed, class,
    STREAM_SUBSAMPLE)``; ``limit=None`` (or at least ``N``) keeps everything.
    """
    labels = np.asarray(labels)
    if limit is None or len(labels) <= limit:
        return np.arange(len(labels))
    keep = []
    frac = limit / len(labels)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = max(1, round(frac * len(members)))
        keep.append(split_rng(seed, int(c), STREAM_SUBSAMPLE).choice(members, k, replace=False))
    return np.sort(np.concatenate(keep))


def first_per_class(labels: Sequence[int] | np.ndarray, limit: int | None) -> np.ndarray:
    """Indices of the first ``limit`` items of every class, in their order (``None``: all)."""
    labels = np.asarray(labels)
    if limit is None:
        return np.arange(len(labels))
    seen: dict[int, int] = {}
    keep = []
    for i, y in enumerate(labels.tolist()):
        if seen.get(y, 0) < limit:
            keep.append(i)
            seen[y] = seen.get(y, 0) + 1
    return np.asarray(keep, dtype=np.int64)
