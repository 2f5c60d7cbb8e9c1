"""Helpers of the result benchmarks (benchmarks/*.py) that compute reported numbers."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.dhcl_ucmd import tie_orders
from tests.metrics.test_hashing import clustered_codes, naive_evaluation


def test_tie_orders_match_the_naive_ranking_of_each_permuted_database():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 40)
    codes = clustered_codes(rng, 40, 8, labels, 3, flip=0.3)  # 8 bits: distances tie everywhere
    got = tie_orders(codes, labels, k=5, n_orders=4, seed=11)
    order_rng = np.random.default_rng(11)
    perms = [order_rng.permutation(40) for _ in range(4)]
    for i, perm in enumerate(perms):
        where = np.argsort(perm)  # query q sits at database position where[q]
        ref = naive_evaluation(codes, codes[perm], lambda a, b, p=perm: labels[a] == labels[p[b]], (5,), (),
                               self_index=where)  # fmt: skip
        assert got["mAP@5"][i] == pytest.approx(ref["AP_retrieved@5"], abs=1e-12)
        assert got["mAP@all"][i] == pytest.approx(ref["AP_all"], abs=1e-12)
    assert len(set(got["mAP@5"])) > 1  # the orders really differ where distances tie
