"""DHCL's legacy MAP@K against a per-query loop of its published definition."""

from __future__ import annotations

import numpy as np
import pytest

from rswb.metrics.legacy import dhcl_map_at_k


def legacy_loop(codes, labels, k):
    n = len(codes)
    total = 0.0
    for q in range(n):
        d = [(int(np.sum(codes[q] != codes[j])), j) for j in range(n)]
        ranked = [j for _, j in sorted(d)][1 : k + 1]  # drops the first item, whoever it is
        hits, ap = 0, 0.0
        for pos, j in enumerate(ranked, 1):
            if labels[j] == labels[q]:
                hits += 1
                ap += hits / pos
        total += ap / hits if hits else 0.0
    return total / n


@pytest.mark.parametrize("seed", range(4))
def test_matches_loop(seed):
    rng = np.random.default_rng(seed)
    codes = np.where(rng.random((60, 8)) < 0.5, -1, 1)  # 8 bits: many ties
    labels = rng.integers(0, 4, 60)
    assert dhcl_map_at_k(codes, labels, 10) == pytest.approx(legacy_loop(codes, labels, 10), abs=1e-12)


def test_self_exclusion_by_rank_can_drop_a_true_neighbour():
    # Items 0 and 1 share a code. For query 1 the first ranked item is 0 (lower index): the neighbour is dropped and
    # the query itself stays in its list, counted as a hit. Query 2 has no neighbour at all.
    codes = np.array([[1, 1], [1, 1], [-1, -1]])
    labels = np.array([0, 0, 1])
    assert dhcl_map_at_k(codes, labels, 1) == pytest.approx((1 + 1 + 0) / 3)
    codes = np.array([[1, 1], [-1, -1], [1, 1]])  # now query 2's list keeps item 2 (itself) instead of item 0
    labels = np.array([0, 1, 1])
    assert dhcl_map_at_k(codes, labels, 1) == pytest.approx((0 + 0 + 1) / 3)
