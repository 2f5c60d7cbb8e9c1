"""Seeded few-shot splits: counts per class, determinism, disjointness, per-class independence, errors."""

from __future__ import annotations

import numpy as np
import pytest

from rswb.data.splits import FewShotSplit, count_per_class, few_shot_split


def labels_with_sizes(sizes: dict[int, int], seed: int = 0) -> np.ndarray:
    """Shuffled labels with ``sizes[c]`` items of class ``c``."""
    y = np.concatenate([np.full(n, c) for c, n in sizes.items()])
    return np.random.default_rng(seed).permutation(y)


def test_count_per_class_int_fraction_and_capping():
    assert count_per_class(5, 100) == 5
    assert count_per_class(5, 3) == 3  # capped at what the class has
    assert count_per_class(5.0, 100) == 5 and count_per_class(2.7, 100) == 2  # a float >= 1 is a count
    assert count_per_class(0.02, 1000) == 20
    assert count_per_class(0.02, 1234) == round(0.02 * 1234) == 25
    assert count_per_class(0.02, 10) == 1  # rounds to 0, but a class is never dropped
    assert count_per_class(0.5, 1) == 1
    assert count_per_class(0.3, 0) == 0  # nothing available: nothing drawn
    for bad in (0, -1, 0.0, -0.5):
        with pytest.raises(ValueError, match="positive"):
            count_per_class(bad, 10)


def test_split_counts_per_class():
    sizes = {0: 50, 1: 7, 2: 200}
    y = labels_with_sizes(sizes)
    s = few_shot_split(y, 5, val=3, seed=1)
    assert isinstance(s, FewShotSplit)
    assert s.counts("train") == {0: 5, 1: 5, 2: 5}
    assert s.counts("val") == {0: 3, 1: 2, 2: 3}  # class 1: 7 - 5 = 2 left for validation
    assert s.counts("rest") == {0: 42, 2: 192}
    f = few_shot_split(y, 0.02, val=0.1, seed=1)
    assert f.counts("train") == {0: 1, 1: 1, 2: 4}  # 1.0 -> 1, 0.14 -> 1 (minimum), 4.0 -> 4
    # Validation is a fraction of what is left after the shots: round(0.1 * 49) = 5, round(0.1 * 6) = 1, 0.1 * 196.
    assert f.counts("val") == {0: 5, 1: 1, 2: 20}
    capped = few_shot_split(y, 100, val=100, seed=0)
    assert capped.counts("train") == {0: 50, 1: 7, 2: 100}
    assert capped.counts("val") == {2: 100} and capped.rest.size == 0
    no_val = few_shot_split(y, 3, seed=0)
    assert no_val.val.size == 0 and no_val.counts("train") == {0: 3, 1: 3, 2: 3}


def test_split_is_deterministic_in_the_seed():
    y = labels_with_sizes({0: 40, 1: 40, 2: 40, 3: 40})
    a, b = few_shot_split(y, 4, 4, seed=7), few_shot_split(y, 4, 4, seed=7)
    for part in ("train", "val", "rest"):
        assert np.array_equal(getattr(a, part), getattr(b, part))
    c = few_shot_split(y, 4, 4, seed=8)
    assert not np.array_equal(a.train, c.train)
    assert not np.array_equal(a.val, c.val)


@pytest.mark.parametrize("shots,val", [(5, 3), (0.1, 0.2), (1, 0), (30, 30)])
def test_parts_are_disjoint_sorted_and_cover_everything(shots, val):
    y = labels_with_sizes({0: 30, 1: 11, 2: 64, 3: 2}, seed=3)
    s = few_shot_split(y, shots, val, seed=2)
    parts = [s.train, s.val, s.rest]
    for p in parts:
        assert np.array_equal(p, np.sort(p)) and p.dtype.kind == "i"
    assert sum(p.size for p in parts) == y.size
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(y.size))
    assert not set(s.train) & set(s.val) and not set(s.train) & set(s.rest) and not set(s.val) & set(s.rest)
    assert np.array_equal(s.labels, y)


def test_a_class_draw_does_not_depend_on_other_classes():
    base = labels_with_sizes({0: 30, 1: 30}, seed=0)
    # Same items for classes 0 and 1 (same positions), plus a new class 2 appended after them.
    extended = np.concatenate([base, np.full(25, 2)])
    a = few_shot_split(base, 4, 3, seed=5)
    b = few_shot_split(extended, 4, 3, seed=5)
    for part in ("train", "val"):
        pa, pb = getattr(a, part), getattr(b, part)
        assert np.array_equal(pa, pb[pb < base.size])
    # Relabelling class 1 as class 3 leaves class 0's draw unchanged.
    relabelled = np.where(base == 1, 3, base)
    c = few_shot_split(relabelled, 4, 3, seed=5)
    assert np.array_equal(a.train[base[a.train] == 0], c.train[relabelled[c.train] == 0])


def test_errors_and_num_classes():
    y = labels_with_sizes({0: 10, 2: 10})
    with pytest.raises(ValueError, match="class 1 has no labelled item"):
        few_shot_split(y, 2, num_classes=3)
    with pytest.raises(ValueError, match="class 2 has no labelled item"):
        few_shot_split(labels_with_sizes({0: 5, 1: 5}), 2, num_classes=3)
    for bad in (0, -2, 0.0):
        with pytest.raises(ValueError, match="positive"):
            few_shot_split(y, bad)
    with pytest.raises(ValueError, match="positive"):
        few_shot_split(y, 2, val=-1)
    ok = few_shot_split(labels_with_sizes({0: 10, 1: 10}), 2, num_classes=2)
    assert ok.counts() == {0: 2, 1: 2}
