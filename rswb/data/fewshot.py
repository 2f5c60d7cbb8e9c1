"""Seeded few-shot splits: N items (or a fraction) per class for training, a validation share from the rest.

Used for labelled pixels of an MS+PAN scene (the items are the pixels of the train map) and for scene images
(the items are the images of the training split); the test items always come from a separate split (the test map,
or images 80-99 of each UC Merced class), so they never overlap the few-shot or validation items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FewShotSplit", "count_per_class", "few_shot_split"]


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
        idx = idx[np.random.default_rng([int(seed), int(c), 0xFE75]).permutation(idx.size)]
        k = count_per_class(shots, idx.size)
        left = idx[k:]
        m = count_per_class(val, left.size) if val and left.size else 0
        train.append(idx[:k])
        valid.append(left[:m])
        rest.append(left[m:])
    cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)  # noqa: E731
    return FewShotSplit(cat(train), cat(valid), cat(rest), y)
