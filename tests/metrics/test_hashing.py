"""rswb.metrics.hashing against a naive double loop on float +-1 codes, plus a hand-computed case."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from rswb.metrics import binarize, hamming_distance, hash_metrics, pack_codes, pr_curve, unpack_codes


def naive_evaluation(q_codes, db_codes, relevant, topk, radii, self_index=None):
    """Plain-Python reference: distances (K - <q, x>) / 2, ranking sorted() by (distance, index), AP per query."""
    q_codes, db_codes = np.asarray(q_codes, dtype=np.float64), np.asarray(db_codes, dtype=np.float64)
    n_bits = q_codes.shape[1]
    per_query = []
    for qi in range(len(q_codes)):
        items = [j for j in range(len(db_codes)) if self_index is None or j != self_index[qi]]
        dist = {j: int(round((n_bits - float(np.dot(q_codes[qi], db_codes[j]))) / 2)) for j in items}
        ranking = sorted(items, key=lambda j, dist=dist: (dist[j], j))
        rel = [bool(relevant(qi, j)) for j in ranking]
        n_rel = sum(rel)
        res = {}
        for k in topk:
            hits, total = 0, 0.0
            for pos, r in enumerate(rel[:k], start=1):
                if r:
                    hits += 1
                    total += hits / pos
            res[f"AP_retrieved@{k}"] = total / hits if hits else 0.0
            res[f"AP_min_rk@{k}"] = total / min(n_rel, k) if min(n_rel, k) else 0.0
            res[f"P@{k}"] = hits / k
        hits, total = 0, 0.0
        for pos, r in enumerate(rel, start=1):
            if r:
                hits += 1
                total += hits / pos
        res["AP_all"] = total / n_rel if n_rel else 0.0
        for r in radii:
            within = [j for j in items if dist[j] <= r]
            rel_within = sum(bool(relevant(qi, j)) for j in within)
            res[f"P@r{r}"] = rel_within / len(within) if within else 0.0
            res[f"R@r{r}"] = rel_within / n_rel if n_rel else 0.0
        per_query.append(res)
    return {key: float(np.mean([r[key] for r in per_query])) for key in per_query[0]}


def expected_metrics(ref, topk, radii, normalize):
    out = {}
    for k in topk:
        out[f"mAP@{k}"] = ref[f"AP_{normalize}@{k}"]
        out[f"P@{k}"] = ref[f"P@{k}"]
    out["mAP@all"] = ref["AP_all"]
    for r in radii:
        out[f"P@r{r}"], out[f"R@r{r}"] = ref[f"P@r{r}"], ref[f"R@r{r}"]
    return out


def clustered_codes(rng, n, n_bits, labels, n_classes, flip=0.15):
    """+-1 codes near a random centre per class, so that rankings are informative and distances tie often."""
    centres = rng.choice(np.array([-1, 1], dtype=np.int8), size=(n_classes, n_bits))
    noise = rng.random((n, n_bits)) < flip
    return np.where(noise, -centres[labels], centres[labels]).astype(np.int8)


@pytest.mark.parametrize("n_bits", [16, 32, 48, 64, 128, 13])
def test_matches_naive_loop(n_bits):
    rng = np.random.default_rng(n_bits)
    n_db, n_q, n_classes = 150, 12, 4
    db_labels = rng.integers(0, n_classes, n_db)
    q_labels = rng.integers(0, n_classes, n_q)
    db = clustered_codes(rng, n_db, n_bits, db_labels, n_classes)
    q = clustered_codes(rng, n_q, n_bits, q_labels, n_classes)
    topk, radii = (1, 5, 20, 200), (0, 2, n_bits // 4)
    ref = naive_evaluation(q, db, lambda i, j: q_labels[i] == db_labels[j], topk, radii)
    for normalize in ("retrieved", "min_rk"):
        got = hash_metrics(q, db, q_labels, db_labels, topk=topk, radius=radii, normalize=normalize)
        assert got == pytest.approx(expected_metrics(ref, topk, radii, normalize), abs=1e-12), normalize
    # Tiny budget: one query per chunk, same answer.
    tiny = hash_metrics(q, db, q_labels, db_labels, topk=topk, radius=radii, memory_budget_bytes=1)
    assert tiny == hash_metrics(q, db, q_labels, db_labels, topk=topk, radius=radii)

    curve = pr_curve(q, db, q_labels, db_labels)
    np.testing.assert_array_equal(curve["radius"], np.arange(n_bits + 1))
    full = naive_evaluation(q, db, lambda i, j: q_labels[i] == db_labels[j], (1,), range(n_bits + 1))
    np.testing.assert_allclose(curve["precision"], [full[f"P@r{r}"] for r in range(n_bits + 1)], atol=1e-12)
    np.testing.assert_allclose(curve["recall"], [full[f"R@r{r}"] for r in range(n_bits + 1)], atol=1e-12)
    assert curve["recall"][-1] == pytest.approx(1.0)  # every item lies within radius K


def test_leave_one_out_excludes_by_index_among_duplicates():
    rng = np.random.default_rng(5)
    n_bits, n, n_classes = 16, 80, 3
    labels = rng.integers(0, n_classes, n)
    codes = clustered_codes(rng, n, n_bits, labels, n_classes, flip=0.05)
    # Groups of identical codes: the query is not necessarily the first item at distance 0 (lower indices tie).
    for group in (range(10, 16), range(40, 43)):
        codes[list(group)] = codes[group[0]]
    labels[41] = (labels[40] + 1) % n_classes  # a tied duplicate of another class
    query_idx = np.array([12, 15, 10, 41, 42, 0, 77])
    q, q_labels = codes[query_idx], labels[query_idx]
    topk, radii = (1, 3, 10), (0, 1, 3)
    ref = naive_evaluation(q, codes, lambda i, j: q_labels[i] == labels[j], topk, radii, self_index=query_idx)
    for normalize in ("retrieved", "min_rk"):
        got = hash_metrics(
            q, codes, q_labels, labels, topk=topk, radius=radii, query_db_index=query_idx, normalize=normalize
        )
        assert got == pytest.approx(expected_metrics(ref, topk, radii, normalize), abs=1e-12)
    # Dropping "the first-ranked item" instead would remove item 10 for query 12 and keep the query itself.
    wrong = naive_evaluation(q, codes, lambda i, j: q_labels[i] == labels[j], topk, radii)
    assert ref["P@r0"] != wrong["P@r0"]

    # exclude_self=True over the whole database equals query_db_index=arange(N); -1 leaves a query untouched.
    a = hash_metrics(codes, codes, labels, labels, exclude_self=True, topk=(5,))
    b = hash_metrics(codes, codes, labels, labels, query_db_index=np.arange(n), topk=(5,))
    assert a == b
    full = naive_evaluation(codes, codes, lambda i, j: labels[i] == labels[j], (5,), (2,), self_index=np.arange(n))
    assert a == pytest.approx(expected_metrics(full, (5,), (2,), "retrieved"), abs=1e-12)
    mixed = np.array([-1, 15])
    got = hash_metrics(codes[[3, 15]], codes, labels[[3, 15]], labels, query_db_index=mixed, topk=(4,), radius=1)
    ref = naive_evaluation(
        codes[[3, 15]], codes, lambda i, j: labels[[3, 15]][i] == labels[j], (4,), (1,), self_index=[-1, 15]
    )
    assert got == pytest.approx(expected_metrics(ref, (4,), (1,), "retrieved"), abs=1e-12)


def test_multi_label_and_custom_relevance():
    rng = np.random.default_rng(11)
    n_bits, n_db, n_q, n_tags = 32, 120, 9, 5
    db_tags = (rng.random((n_db, n_tags)) < 0.3).astype(np.int64)
    q_tags = (rng.random((n_q, n_tags)) < 0.3).astype(np.int64)
    db = binarize(rng.standard_normal((n_db, n_bits)))
    q = binarize(rng.standard_normal((n_q, n_bits)))
    topk, radii = (10, 50), (12, 14)
    ref = naive_evaluation(q, db, lambda i, j: (q_tags[i] & db_tags[j]).any(), topk, radii)
    for normalize in ("retrieved", "min_rk"):
        got = hash_metrics(q, db, q_tags, db_tags, topk=topk, radius=radii, normalize=normalize)
        assert got == pytest.approx(expected_metrics(ref, topk, radii, normalize), abs=1e-12)

    # A relevance function: same parity of a scalar label.
    db_lab, q_lab = rng.integers(0, 10, n_db), rng.integers(0, 10, n_q)
    ref = naive_evaluation(q, db, lambda i, j: q_lab[i] % 2 == db_lab[j] % 2, topk, radii)
    got = hash_metrics(
        q, db, q_lab, db_lab, topk=topk, radius=radii, relevance=lambda a, b: a[:, None] % 2 == b[None, :] % 2
    )
    assert got == pytest.approx(expected_metrics(ref, topk, radii, "retrieved"), abs=1e-12)


def test_hand_computed_case():
    # 4-bit codes. Query +1 +1 +1 +1 (label 0). Database (index: code, label, distance):
    #   0: - + + +  label 1  d=1
    #   1: + + + +  label 0  d=0
    #   2: + - + +  label 0  d=1
    #   3: - - - -  label 0  d=4
    #   4: + + - -  label 1  d=2
    # Ranking by (distance, index): 1, 0, 2, 4, 3 -> relevance 1, 0, 1, 0, 1; R = 3.
    q = np.array([[1, 1, 1, 1]])
    db = np.array([[-1, 1, 1, 1], [1, 1, 1, 1], [1, -1, 1, 1], [-1, -1, -1, -1], [1, 1, -1, -1]])
    db_labels = np.array([1, 0, 0, 0, 1])
    got = hash_metrics(q, db, [0], db_labels, topk=(1, 3, 5), radius=(0, 1, 2))
    # AP@3 (retrieved) = (1/1 + 2/3) / 2 = 5/6; AP@5 = (1 + 2/3 + 3/5) / 3 = 34/45; P@3 = 2/3; P@5 = 3/5.
    # Radius 1 holds items 1, 0, 2 (2 relevant): P = 2/3, R = 2/3; radius 2 adds item 4: P = 2/4, R = 2/3.
    assert got == pytest.approx(
        {
            "mAP@1": 1.0,
            "P@1": 1.0,
            "mAP@3": 5 / 6,
            "P@3": 2 / 3,
            "mAP@5": 34 / 45,
            "P@5": 3 / 5,
            "mAP@all": 34 / 45,  # the whole ranking is the top 5 here
            "P@r0": 1.0,
            "R@r0": 1 / 3,
            "P@r1": 2 / 3,
            "R@r1": 2 / 3,
            "P@r2": 1 / 2,
            "R@r2": 2 / 3,
        },
        abs=1e-15,
    )
    # min(R, K) normaliser: AP@3 = (1 + 2/3) / min(3, 3) = 5/9.
    assert hash_metrics(q, db, [0], db_labels, topk=(3,), normalize="min_rk")["mAP@3"] == pytest.approx(5 / 9)
    # Leave-one-out on item 1 (the exact match): ranking 0, 2, 4, 3 -> relevance 0, 1, 0, 1; AP@3 = (1/2) / 1,
    # AP over the whole ranking = (1/2 + 2/4) / R with R = 2.
    loo = hash_metrics(q, db, [0], db_labels, topk=(3,), radius=0, query_db_index=[1])
    assert loo == pytest.approx({"mAP@3": 0.5, "P@3": 1 / 3, "mAP@all": 0.5, "P@r0": 0.0, "R@r0": 0.0})
    # A query with no relevant item scores 0; map_all=False leaves the key out.
    assert hash_metrics(q, db, [7], db_labels, topk=(3,))["mAP@all"] == 0.0
    assert "mAP@all" not in hash_metrics(q, db, [0], db_labels, topk=(3,), map_all=False)


@pytest.mark.parametrize("n_bits", [1, 7, 8, 13, 64, 65, 128, 300])
def test_pack_unpack_and_distances(n_bits):
    rng = np.random.default_rng(n_bits)
    a = binarize(rng.standard_normal((17, n_bits)))
    b = binarize(rng.standard_normal((23, n_bits)))
    p8, p64 = pack_codes(a, np.uint8), pack_codes(a, np.uint64)
    assert p8.shape == (17, -(-n_bits // 8)) and p8.dtype == np.uint8
    assert p64.shape == (17, -(-n_bits // 64)) and p64.dtype == np.uint64
    np.testing.assert_array_equal(unpack_codes(p8, n_bits), a)
    np.testing.assert_array_equal(unpack_codes(p64, n_bits), a)
    expected = (n_bits - a.astype(np.int64) @ b.astype(np.int64).T) // 2
    d8 = hamming_distance(p8, pack_codes(b, np.uint8))
    d64 = hamming_distance(p64, pack_codes(b, np.uint64), memory_budget_bytes=1)
    np.testing.assert_array_equal(d8, expected)
    np.testing.assert_array_equal(d64, expected)
    # Packed inputs (with n_bits) give the same metrics as +-1 codes.
    la, lb = rng.integers(0, 3, 17), rng.integers(0, 3, 23)
    ref = hash_metrics(a, b, la, lb, topk=(5,), radius=n_bits // 3)
    assert hash_metrics(p8, pack_codes(b), la, lb, topk=(5,), radius=n_bits // 3, n_bits=n_bits) == ref
    t = hash_metrics(torch.from_numpy(a).float(), torch.from_numpy(b), torch.from_numpy(la), lb, topk=(5,),
                     radius=n_bits // 3)  # fmt: skip
    assert t == ref


def test_binarize_and_input_checks():
    np.testing.assert_array_equal(binarize(np.array([[-0.5, 0.0, 2.0, -0.0]])), [[-1, 1, 1, 1]])
    np.testing.assert_array_equal(binarize(torch.tensor([[0.0, -1e-9]])), [[1, -1]])
    with pytest.raises(ValueError, match="-1 and \\+1"):
        pack_codes(np.array([[0, 1]]))
    with pytest.raises(ValueError, match="n_bits"):
        hash_metrics(pack_codes(np.ones((2, 8))), pack_codes(np.ones((3, 8))), [0, 1], [0, 1, 2])
    with pytest.raises(ValueError, match="bits"):
        hash_metrics(np.ones((2, 8)), np.ones((3, 16)), [0, 1], [0, 1, 2])
    with pytest.raises(ValueError, match="query_db_index"):
        hash_metrics(np.ones((2, 8)), np.ones((3, 8)), [0, 1], [0, 1, 2], query_db_index=[0, 3])
    with pytest.raises(ValueError, match="exclude_self"):
        hash_metrics(np.ones((2, 8)), np.ones((3, 8)), [0, 1], [0, 1, 2], exclude_self=True)
    with pytest.raises(ValueError, match="not both"):
        hash_metrics(
            np.ones((3, 8)), np.ones((3, 8)), [0, 1, 2], [0, 1, 2], exclude_self=True, query_db_index=[0, 1, 2]
        )
    with pytest.raises(ValueError, match="normalize"):
        hash_metrics(np.ones((2, 8)), np.ones((3, 8)), [0, 1], [0, 1, 2], normalize="R")


@pytest.mark.slow
def test_million_code_database_matches_float_ranking():
    rng = np.random.default_rng(2024)
    n_db, n_q, n_bits, n_classes = 1_000_000, 10, 64, 10
    labels = rng.integers(0, n_classes, n_db)
    centres = rng.integers(0, 2**63, n_classes, dtype=np.uint64)
    # Each bit flips with probability 1/4 (AND of two random words): same-class distances ~16, others ~32.
    noise = rng.integers(0, 2**63, n_db, dtype=np.uint64) & rng.integers(0, 2**63, n_db, dtype=np.uint64)
    db = (centres[labels] ^ noise).reshape(-1, 1)
    query_idx = np.arange(0, 10 * 97_001, 97_001)[:n_q]
    db[query_idx[:3] + 5] = db[query_idx[:3]]  # exact duplicates of some queries, at higher indices
    db[query_idx[3:6] - 5] = db[query_idx[3:6]]  # and at lower indices
    q, q_labels = db[query_idx], labels[query_idx]

    tracemalloc.start()
    got = hash_metrics(
        q, db, q_labels, labels, topk=(20, 100), radius=(10, 16), query_db_index=query_idx, n_bits=n_bits,
        memory_budget_bytes=64 * 2**20,
    )  # fmt: skip
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 80 * 2**20, f"peak traced memory {peak / 2**20:.0f} MiB"

    # Reference: distances from a float32 matrix product of +-1 codes (in 100,000-row slices), stable argsort.
    qf = unpack_codes(q, n_bits).astype(np.float32)
    dist = np.empty((n_q, n_db), dtype=np.float32)
    for s in range(0, n_db, 100_000):
        dist[:, s : s + 100_000] = (n_bits - qf @ unpack_codes(db[s : s + 100_000], n_bits).astype(np.float32).T) / 2
    np.testing.assert_array_equal(hamming_distance(q, db[:100_000]), dist[:, :100_000])
    dist[np.arange(n_q), query_idx] = np.inf  # leave-one-out by index
    expected = {}
    aps, precisions = {20: [], 100: []}, {20: [], 100: []}
    p_r, r_r = {10: [], 16: []}, {10: [], 16: []}
    ap_all = []
    for i in range(n_q):
        full = np.argsort(dist[i], kind="stable")[:-1]  # the excluded query (inf) sorts last
        order = full[:100]
        rel = labels[order] == q_labels[i]
        n_rel = int((labels == q_labels[i]).sum()) - 1
        pos = np.flatnonzero(labels[full] == q_labels[i]) + 1
        ap_all.append(float(np.mean(np.arange(1, len(pos) + 1) / pos)))
        for k in (20, 100):
            hits = np.cumsum(rel[:k])
            aps[k].append(float((hits / np.arange(1, k + 1))[rel[:k]].sum() / max(hits[-1], 1)))
            precisions[k].append(hits[-1] / k)
        for r in (10, 16):
            within = dist[i] <= r
            n_rel_within = int((within & (labels == q_labels[i])).sum())
            p_r[r].append(n_rel_within / within.sum() if within.any() else 0.0)
            r_r[r].append(n_rel_within / n_rel)
    for k in (20, 100):
        expected[f"mAP@{k}"], expected[f"P@{k}"] = np.mean(aps[k]), np.mean(precisions[k])
    for r in (10, 16):
        expected[f"P@r{r}"], expected[f"R@r{r}"] = np.mean(p_r[r]), np.mean(r_r[r])
    expected["mAP@all"] = np.mean(ap_all)
    assert got == pytest.approx(expected, abs=1e-12)


@pytest.fixture
def force_probes_and_threads(monkeypatch):
    """Threshold counts instead of histograms, and several threads, even for the small test databases."""
    import rswb.metrics.hashing as H

    monkeypatch.setattr(H, "_PROBE_MIN_DB", 0)
    monkeypatch.setattr(H, "_MIN_THREADED_PAIRS", 0)
    monkeypatch.setattr(H, "_default_workers", lambda: 3)


@pytest.mark.parametrize("n_bits", [13, 64, 128])
def test_threshold_counts_and_threads_match_naive_loop(force_probes_and_threads, n_bits):
    rng = np.random.default_rng(700 + n_bits)
    n, n_classes = 160, 4
    labels = rng.integers(0, n_classes, n)
    codes = clustered_codes(rng, n, n_bits, labels, n_classes, flip=0.1)
    codes[20:26] = codes[20]  # exact duplicates: ties at distance 0 around a query
    query_idx = np.array([20, 23, 25, 0, 77, 159, 100, 101, 102, 5, 6])
    q, q_labels = codes[query_idx], labels[query_idx]
    topk, radii = (1, 7, 40, 500), (0, 2, n_bits // 4, 10 * n_bits)  # top-K beyond N, radius beyond K
    ref = naive_evaluation(q, codes, lambda i, j: q_labels[i] == labels[j], topk, radii, self_index=query_idx)
    for normalize in ("retrieved", "min_rk"):
        for budget in (1, 10**9):  # one query per chunk (11 chunks over 3 threads), or one chunk
            got = hash_metrics(q, codes, q_labels, labels, topk=topk, radius=radii, query_db_index=query_idx,
                               normalize=normalize, memory_budget_bytes=budget)  # fmt: skip
            assert got == pytest.approx(expected_metrics(ref, topk, radii, normalize), abs=1e-12)
    # Multi-hot labels and a relevance function take the same counting path.
    tags = (rng.random((n, 5)) < 0.3).astype(np.int64)
    ref = naive_evaluation(q, codes, lambda i, j: (tags[query_idx][i] & tags[j]).any(), topk, radii)
    got = hash_metrics(q, codes, tags[query_idx], tags, topk=topk, radius=radii, memory_budget_bytes=1)
    assert got == pytest.approx(expected_metrics(ref, topk, radii, "retrieved"), abs=1e-12)
    parity = lambda a, b: a[:, None] % 2 == b[None, :] % 2  # noqa: E731
    ref = naive_evaluation(q, codes, lambda i, j: q_labels[i] % 2 == labels[j] % 2, topk, radii)
    got = hash_metrics(q, codes, q_labels, labels, topk=topk, radius=radii, relevance=parity)
    assert got == pytest.approx(expected_metrics(ref, topk, radii, "retrieved"), abs=1e-12)
    # The PR curve always uses full histograms, threaded too.
    curve = pr_curve(q, codes, q_labels, labels, query_db_index=query_idx, memory_budget_bytes=1)
    full = naive_evaluation(q, codes, lambda i, j: q_labels[i] == labels[j], (1,), range(n_bits + 1),
                            self_index=query_idx)  # fmt: skip
    np.testing.assert_allclose(curve["precision"], [full[f"P@r{r}"] for r in range(n_bits + 1)], atol=1e-12)


def test_smallest_threshold_from_any_guess():
    from rswb.metrics.hashing import _smallest_threshold

    rng = np.random.default_rng(3)
    for _ in range(200):
        k = int(rng.integers(0, 70))
        counts = np.cumsum(rng.integers(0, 4, k + 1))  # count of items within t, non-decreasing
        length = int(rng.integers(0, counts[-1] + 1))
        expected = int(np.argmax(counts >= length))
        calls = []

        def count_within(t, counts=counts, calls=calls):
            calls.append(t)
            return int(counts[t])

        for guess in (0, k, int(rng.integers(-3, k + 4)), expected):
            calls.clear()
            assert _smallest_threshold(count_within, length, k, guess) == expected
            assert all(0 <= t <= k for t in calls)
        assert len(calls) <= 2  # a right guess costs two counts


def test_label_values_and_dtypes_do_not_matter():
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 5, 300)
    codes = clustered_codes(rng, 300, 32, labels, 5)
    q = np.arange(0, 300, 7)
    base = hash_metrics(codes[q], codes, labels[q], labels, topk=(10,), query_db_index=q)
    for mapped in (labels - 1000, labels * 70_000, labels.astype(np.uint64) + 2**63, labels.astype(np.float64) / 3):
        assert hash_metrics(codes[q], codes, mapped[q], mapped, topk=(10,), query_db_index=q) == base
