"""rswb.engine.splits: seeded, (stratified) validation splits carved from the training split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, Subset

from rswb.data.splits import VAL_RULES, carve_validation, held_out_block, validation_indices, validation_split


def _check_partition(train, val, n):
    assert train.dtype.kind == "i" and val.dtype.kind == "i"
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)  # sorted, no duplicates
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(n))


def _expected_val_count(n_c, fraction):
    """The documented rule, written out: round, then at least one when n_c >= 2, and never all of the class."""
    k = round(fraction * n_c)
    if n_c >= 2 and k < 1:
        k = 1
    if k > n_c - 1:
        k = n_c - 1
    return max(k, 0)


@pytest.mark.parametrize("seed", range(6))
def test_unstratified_partition(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    fraction = float(rng.uniform(0.01, 0.95))
    train, val = validation_indices(n, fraction, seed=seed)
    _check_partition(train, val, n)
    assert len(val) == min(n - 1, max(1, round(fraction * n)))
    # Deterministic per seed, and independent of the global RNG state.
    np.random.seed(seed + 99)
    torch.manual_seed(seed + 99)
    train2, val2 = validation_indices(n, fraction, seed=seed)
    np.testing.assert_array_equal(train, train2)
    np.testing.assert_array_equal(val, val2)


def test_different_seeds_differ():
    vals = {tuple(validation_indices(200, 0.2, seed=s)[1]) for s in range(5)}
    assert len(vals) == 5
    labels = np.arange(200) % 4
    vals = {tuple(validation_indices(200, 0.2, seed=s, labels=labels)[1]) for s in range(5)}
    assert len(vals) == 5


@pytest.mark.parametrize("seed", range(8))
def test_stratified_counts(seed):
    rng = np.random.default_rng(100 + seed)
    n_classes = int(rng.integers(1, 8))
    sizes = rng.integers(1, 40, n_classes)
    sizes[0] = 1  # a singleton class: stays in training
    if n_classes > 1:
        sizes[1] = 2  # two items: one goes to validation, one stays
    labels = rng.permutation(np.repeat(np.arange(n_classes) * 3 + 5, sizes))  # non-contiguous class ids
    n = len(labels)
    fraction = float(rng.choice([0.05, 0.1, 0.25, 0.5, 0.8]))
    train, val = validation_indices(n, fraction, seed=seed, labels=labels)
    _check_partition(train, val, n)
    for c, n_c in zip(np.arange(n_classes) * 3 + 5, sizes):
        in_val = int(np.sum(labels[val] == c))
        in_train = int(np.sum(labels[train] == c))
        assert in_val == _expected_val_count(int(n_c), fraction), (c, n_c, fraction)
        assert in_train >= 1
        assert in_val + in_train == n_c


def test_stratified_hand_computed():
    # Class 0: 10 items -> round(0.3 * 10) = 3; class 1: 2 items -> round(0.6) = 1; class 2: 1 item -> 0;
    # class 3: 4 items -> round(1.2) = 1.
    labels = [0] * 10 + [1] * 2 + [2] + [3] * 4
    train, val = validation_indices(len(labels), 0.3, seed=5, labels=labels)
    y = np.asarray(labels)
    assert [int(np.sum(y[val] == c)) for c in range(4)] == [3, 1, 0, 1]
    assert 12 in train  # the singleton


def test_stratified_accepts_tensors_lists_and_strings():
    y = np.arange(60) % 3
    ref = validation_indices(60, 0.2, seed=1, labels=y)
    for labels in (torch.from_numpy(y), y.tolist(), np.array(["a", "b", "c"])[y]):
        got = validation_indices(60, 0.2, seed=1, labels=labels)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])


def test_fraction_zero_and_tiny_inputs():
    train, val = validation_indices(10, 0.0, seed=3)
    np.testing.assert_array_equal(train, np.arange(10))
    assert val.size == 0
    train, val = validation_indices(10, 0.0, labels=np.zeros(10))
    assert len(train) == 10 and val.size == 0
    train, val = validation_indices(0, 0.5)
    assert train.size == 0 and val.size == 0
    train, val = validation_indices(1, 0.5)  # one item: it stays in training
    np.testing.assert_array_equal(train, [0])
    assert val.size == 0
    train, val = validation_indices(2, 0.01)  # at least one validation item
    assert len(train) == 1 and len(val) == 1
    train, val = validation_indices(5, 0.99)  # at least one training item
    assert len(train) == 1 and len(val) == 4
    train, val = validation_indices(4, 0.5, labels=[0, 1, 2, 3])  # all singletons: nothing to hold out
    assert len(train) == 4 and val.size == 0


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan")])
def test_invalid_fraction(fraction):
    with pytest.raises(ValueError, match="val_fraction must be in"):
        validation_indices(10, fraction)


@pytest.mark.parametrize("fraction", [0.2, 0.0])
def test_labels_of_wrong_length(fraction):
    with pytest.raises(ValueError, match=r"labels has shape \(9,\) but the dataset has 10 items"):
        validation_indices(10, fraction, labels=np.zeros(9))
    with pytest.raises(ValueError, match="labels has shape"):
        validation_indices(10, fraction, labels=np.zeros((10, 2)))


class Items(Dataset):
    def __init__(self, n, labels=None):
        self.n = n
        if labels is not None:
            self.labels = labels

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def test_carve_validation_uses_dataset_labels():
    labels = np.array([0] * 18 + [1] * 2)
    ds = Items(20, labels)
    train, val = carve_validation(ds, 0.25, seed=2)
    assert isinstance(train, Subset) and isinstance(val, Subset)
    ref_train, ref_val = validation_indices(20, 0.25, seed=2, labels=labels)
    assert train.indices == ref_train.tolist() and val.indices == ref_val.tolist()
    assert [val[i] for i in range(len(val))] == ref_val.tolist()  # items come from the dataset
    # Stratified: the two-item class gives exactly one item to validation.
    assert int(np.sum(labels[val.indices] == 1)) == 1
    # Explicit labels win over dataset.labels.
    other = np.arange(20) % 2
    _, val_other = carve_validation(ds, 0.25, seed=2, labels=other)
    assert val_other.indices == validation_indices(20, 0.25, seed=2, labels=other)[1].tolist()


def test_carve_validation_without_labels_and_fraction_zero():
    ds = Items(30)
    train, val = carve_validation(ds, 0.1, seed=4)
    assert val.indices == validation_indices(30, 0.1, seed=4)[1].tolist()
    assert sorted(train.indices + val.indices) == list(range(30))
    same, none = carve_validation(ds, 0.0)
    assert same is ds and none is None
    single, none = carve_validation(Items(1), 0.3)
    assert none is None and len(single) == 1


def test_one_seeding_rule_gives_the_draws_of_the_former_helpers():
    from rswb.data.splits import carve_items, first_per_class, split_rng, stratified_subsample

    assert np.array_equal(split_rng(7).permutation(50), np.random.default_rng(7).permutation(50))
    assert np.array_equal(split_rng(7, 3, 0x7E57).random(4), np.random.default_rng([7, 3, 0x7E57]).random(4))
    # carve_items: the first round(share * n) of default_rng(seed).permutation(n) (the caption sets' val images)
    order = np.random.default_rng(5).permutation(40)
    kept, carved = carve_items(40, 0.1, 5)
    assert np.array_equal(carved, np.sort(order[:4])) and np.array_equal(kept, np.sort(order[4:]))
    assert carve_items(3, 0.01, 0)[1].size == 1  # at least one item
    # stratified_subsample: the same share of every class, each class drawn from its own stream
    labels = np.repeat([0, 1, 2], [10, 20, 30])
    keep = stratified_subsample(labels, 12, 1)
    assert np.bincount(labels[keep]).tolist() == [2, 4, 6]
    expected = np.random.default_rng([1, 1, 0x7E57]).choice(np.arange(10, 30), 4, replace=False)
    assert np.array_equal(keep[(keep >= 10) & (keep < 30)], np.sort(expected))
    assert np.array_equal(stratified_subsample(labels, None, 0), np.arange(60))
    assert first_per_class([2, 0, 2, 2, 0, 1], 2).tolist() == [0, 1, 2, 4, 5]
    assert first_per_class([2, 0], None).tolist() == [0, 1]


def test_held_out_block_is_the_first_share_of_each_class_in_order():
    # UC Merced's training split: NN 00-79 of each class, class after class; 0.125 holds out NN 00-09 of each.
    labels = np.repeat(np.arange(3), 80)
    train, val = held_out_block(len(labels), 0.125, labels)
    assert val.tolist() == [c * 80 + nn for c in range(3) for nn in range(10)]
    assert sorted(train.tolist() + val.tolist()) == list(range(240))
    # Interleaved classes: the first items of each class in the split's order, whatever their positions.
    mixed = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    assert held_out_block(8, 0.5, mixed)[1].tolist() == [0, 1, 2, 3]


def test_held_out_block_keeps_one_per_class_and_has_no_seed():
    labels = np.array([0, 0, 1])  # class 1 has one item: it stays in training
    train, val = held_out_block(3, 0.4, labels)
    assert val.tolist() == [0] and train.tolist() == [1, 2]
    assert held_out_block(10, 0.3)[1].tolist() == [0, 1, 2]  # no labels: one block of the whole split
    with pytest.raises(ValueError, match="val_share"):
        held_out_block(10, 1.0)
    with pytest.raises(ValueError, match="shape"):
        held_out_block(10, 0.2, np.zeros(9))


def test_validation_split_rules():
    labels = np.repeat(np.arange(4), 20)
    block = validation_split(80, 0.25, seed=3, labels=labels, rule="block")
    random = validation_split(80, 0.25, seed=3, labels=labels, rule="random")
    assert [a.tolist() for a in random] == [a.tolist() for a in validation_indices(80, 0.25, 3, labels)]
    assert block[1].tolist() == [c * 20 + i for c in range(4) for i in range(5)]
    assert block[1].tolist() != random[1].tolist()  # the two rules do differ on this split
    assert set(VAL_RULES) == {"block", "random"}
    with pytest.raises(ValueError, match="val_rule"):
        validation_split(80, 0.25, rule="last")
