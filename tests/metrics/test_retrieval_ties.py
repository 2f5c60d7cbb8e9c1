"""The expected, published and text-positive rules of rswb.metrics.retrieval against slow, obviously-correct references.

* ``expected``: brute force over every ordering of the tied items on hand-built cases, and a Monte-Carlo mean over
  random permutations on seeded 50 x 250 cases.
* ``published``: the literal per-query ``np.argsort(row)[::-1]`` loop of published RS retrieval evaluation code.
* ``positives="text"``: a loop that builds each query's positive set from the normalised caption texts.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from rswb.metrics import (
    metrics_from_ranks,
    retrieval_metrics,
    retrieval_metrics_from_embeddings,
    retrieval_rank_counts,
    retrieval_ranks,
)
from rswb.metrics.retrieval import TIE_RULES, normalize_caption
from tests.metrics.backends import NATIVE

KS = (1, 5, 10)


def positive_sets(cap2img: np.ndarray, texts=None):
    """Per image its positive captions, per caption its positive images (by image, or by normalised text)."""
    n_i, n_c = int(cap2img.max()) + 1, len(cap2img)
    if texts is None:
        i2t = [set(np.flatnonzero(cap2img == i).tolist()) for i in range(n_i)]
    else:
        norm = [normalize_caption(t) for t in texts]
        owned = [{norm[o] for o in np.flatnonzero(cap2img == i)} for i in range(n_i)]
        i2t = [{c for c in range(n_c) if norm[c] in owned[i]} for i in range(n_i)]
    t2i = [{i for i in range(n_i) if c in i2t[i]} for c in range(n_c)]
    return i2t, t2i


def first_positive(order, positives) -> int:
    return next(k for k, item in enumerate(order) if item in positives)


def random_order_rank(scores: np.ndarray, positives: set, rng: np.random.Generator) -> int:
    """Rank of the first positive after a uniformly random order of the tied items (shuffle, then stable sort)."""
    perm = rng.permutation(len(scores))
    order = perm[np.argsort(-scores[perm], kind="stable")]
    return first_positive(order.tolist(), positives)


def all_order_ranks(scores: np.ndarray, positives: set) -> list[int]:
    """The rank of the first positive in every ordering consistent with the scores (each equally likely)."""
    ranks = []
    for perm in itertools.permutations(range(len(scores))):
        perm = np.array(perm)
        if np.all(np.diff(scores[perm]) <= 0):  # a descending order: one of the orders a sort may return
            ranks.append(first_positive(perm.tolist(), positives))
    return ranks


def pooled_metrics(i2t_samples: list[np.ndarray], t2i_samples: list[np.ndarray]) -> dict[str, float]:
    """R@K and mean rank averaged over samples of the ranks; the median of all sampled ranks pooled."""
    per = [metrics_from_ranks(a, b) for a, b in zip(i2t_samples, t2i_samples)]
    out = {k: float(np.mean([m[k] for m in per])) for k in per[0]}
    out["i2t_medr"] = float(np.median(np.concatenate(i2t_samples) + 1))
    out["t2i_medr"] = float(np.median(np.concatenate(t2i_samples) + 1))
    return out


def test_two_images_sharing_one_identical_caption_by_brute_force():
    # Images 0 and 1 each have 2 captions; caption 1 (image 0) and caption 3 (image 1) are the same sentence, so
    # their embeddings, and so their columns, are identical: each image's best caption ties with the other's copy.
    cap2img = np.array([0, 0, 1, 1])
    sim = np.array([[0.2, 0.8, 0.1, 0.8], [0.3, 0.7, 0.5, 0.7]])
    i2t_sets, t2i_sets = positive_sets(cap2img)
    counts = retrieval_rank_counts(sim, cap2img)
    for i in range(2):
        ranks = all_order_ranks(sim[i], i2t_sets[i])
        assert len(ranks) == 2  # the two orders of the tied pair
        assert counts.i2t.ranks("expected")[i] == pytest.approx(np.mean(ranks))
        for k in (1, 2):
            assert counts.i2t.prob_within(k)[i] == pytest.approx(np.mean(np.array(ranks) < k))
    for j in range(4):
        ranks = all_order_ranks(sim[:, j], t2i_sets[j])
        assert counts.t2i.ranks("expected")[j] == pytest.approx(np.mean(ranks))
    got = retrieval_metrics(sim, cap2img)
    # Image 0: rank 0 or 1; image 1: best 0.7 (caption 3) ties with caption 1 -> 0 or 1. R@1 = 50.
    assert got["i2t_R@1"] == pytest.approx(50.0)
    assert retrieval_metrics(sim, cap2img, ties="optimistic")["i2t_R@1"] == 100.0
    assert retrieval_metrics(sim, cap2img, ties="pessimistic")["i2t_R@1"] == 0.0


def test_three_positives_in_one_tie_group_by_brute_force():
    # Image 0 owns captions 0, 1, 2, all scoring 0.5 with it, tied with negatives 3, 4 (0.5) and below negative 5.
    cap2img = np.array([0, 0, 0, 1, 1, 1])
    sim = np.array([[0.5, 0.5, 0.5, 0.5, 0.5, 0.9], [0.1, 0.2, 0.3, 0.4, 0.6, 0.0]])
    i2t_sets, _ = positive_sets(cap2img)
    ranks = np.array(all_order_ranks(sim[0], i2t_sets[0]))
    counts = retrieval_rank_counts(sim, cap2img)
    assert (counts.i2t.above[0], counts.i2t.tied_neg[0], counts.i2t.tied_pos[0]) == (1, 2, 3)
    # a = 1 above; X negatives before the first of 3 positives among 5 tied: E[X] = 2 / 4.
    assert counts.i2t.ranks("expected")[0] == pytest.approx(ranks.mean()) == pytest.approx(1.5)
    for k in range(1, 6):
        assert counts.i2t.prob_within(k)[0] == pytest.approx(np.mean(ranks < k))
    assert counts.i2t.prob_within(1)[0] == 0.0 and counts.i2t.prob_within(4)[0] == 1.0


def test_hand_computed_expected_metrics():
    # The case of test_retrieval.py's hand-computed test: image 0 ties (1 positive, 1 negative), image 2 ties
    # (2 positives, 1 negative). P(image 0 first) = 1/2, P(image 2 first) = 2/3.
    cap2img = np.array([0, 0, 1, 2, 2])
    sim = np.array([[0.9, 0.1, 0.9, 0.3, 0.2], [0.5, 0.6, 0.4, 0.7, 0.1], [0.2, 0.8, 0.1, 0.8, 0.8]])
    got = retrieval_metrics(sim, cap2img)
    assert got["i2t_R@1"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 3)
    assert got["i2t_meanr"] == pytest.approx((1.5 + 4 + 4 / 3) / 3)
    # Pooled 1-based ranks: F(1) = (1/2 + 2/3) / 3 < 1/2, F(2) = 2/3 -> median 2.
    assert got["i2t_medr"] == 2.0
    assert got["t2i_R@1"] == 60.0  # no negative ties with any caption's image


@pytest.mark.parametrize("seed", range(4))
def test_expected_matches_monte_carlo_over_random_tie_orders(seed):
    rng = np.random.default_rng(1000 + seed)
    n_i, n_c = 50, 250
    cap2img = rng.permutation(np.repeat(np.arange(n_i), 5))
    # Few distinct values: ties everywhere, also between positives and negatives.
    sim = rng.integers(0, 6, (n_i, n_c)).astype(np.float32)
    sim[cap2img, np.arange(n_c)] += rng.integers(0, 3, n_c)
    i2t_sets, t2i_sets = positive_sets(cap2img)
    samples_i, samples_t = [], []
    for _ in range(400):
        samples_i.append(np.array([random_order_rank(sim[i], i2t_sets[i], rng) for i in range(n_i)]))
        samples_t.append(np.array([random_order_rank(sim[:, j], t2i_sets[j], rng) for j in range(n_c)]))
    mc = pooled_metrics(samples_i, samples_t)
    got = retrieval_metrics(sim, cap2img)
    for key in got:
        tol = 1.0 if key.endswith("medr") else (1.5 if "R@" in key or key == "mR" else 0.25)
        assert got[key] == pytest.approx(mc[key], abs=tol), key
    opt, pes = (retrieval_metrics(sim, cap2img, ties=t) for t in ("optimistic", "pessimistic"))
    for key in got:
        if "R@" in key or key == "mR":
            assert pes[key] - 1e-9 <= got[key] <= opt[key] + 1e-9
    # The expected rank is exactly the mean over all orders: the Monte-Carlo mean of the ranks, to sampling error.
    e_i2t, e_t2i = retrieval_ranks(sim, cap2img)
    np.testing.assert_allclose(e_i2t, np.mean(samples_i, axis=0), atol=3.0)
    assert abs(np.mean(e_t2i) - np.mean(samples_t)) < 0.5


@pytest.mark.parametrize("seed", range(3))
def test_no_ties_all_rules_agree(seed):
    rng = np.random.default_rng(2000 + seed)
    cap2img = rng.permutation(np.repeat(np.arange(20), rng.integers(1, 6, 20)))
    sim = rng.standard_normal((20, len(cap2img)))
    opt = retrieval_metrics(sim, cap2img, ties="optimistic")
    for ties in TIE_RULES:
        assert retrieval_metrics(sim, cap2img, ties=ties) == pytest.approx(opt, abs=1e-12), ties


def published_loop(sim: np.ndarray, cap2img: np.ndarray, texts=None) -> tuple[np.ndarray, np.ndarray]:
    """The evaluation loop of published RS retrieval code, literally (with the explicit caption -> image map)."""
    i2t_sets, t2i_sets = positive_sets(cap2img, texts)
    i2t = np.zeros(sim.shape[0], dtype=np.int64)
    for i in range(sim.shape[0]):
        inds = np.argsort(sim[i])[::-1]
        rank = 1e20
        for c in i2t_sets[i]:
            tmp = np.where(inds == c)[0][0]
            if tmp < rank:
                rank = tmp
        i2t[i] = rank
    d = sim.T
    t2i = np.zeros(sim.shape[1], dtype=np.int64)
    for j in range(sim.shape[1]):
        inds = np.argsort(d[j])[::-1]
        t2i[j] = min(np.where(inds == i)[0][0] for i in t2i_sets[j])
    return i2t, t2i


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(4))
def test_published_rule_equals_the_literal_loop_ties_included(seed, dtype):
    rng = np.random.default_rng(3000 + seed)
    n_i = int(rng.integers(5, 60))
    cap2img = rng.permutation(np.repeat(np.arange(n_i), rng.integers(1, 7, n_i)))
    n_c = len(cap2img)
    # Seeds 0, 2: heavy ties (a few distinct values); 1, 3: continuous scores. Sizes above and below the 16 items
    # where numpy switches from insertion sort to its partitioning sort.
    sim = (rng.integers(0, 4, (n_i, n_c)) if seed % 2 == 0 else rng.standard_normal((n_i, n_c))).astype(dtype)
    ref = published_loop(sim, cap2img)
    for budget in (1, 10**9):
        got = retrieval_ranks(sim, cap2img, ties="published", memory_budget_bytes=budget)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])
    counts = retrieval_rank_counts(sim, cap2img)
    assert (counts.i2t.ranks("optimistic") <= ref[0]).all() and (ref[0] <= counts.i2t.ranks("pessimistic")).all()
    assert (counts.t2i.ranks("optimistic") <= ref[1]).all() and (ref[1] <= counts.t2i.ranks("pessimistic")).all()
    assert retrieval_metrics(torch.from_numpy(sim), cap2img, ties="published") == metrics_from_ranks(*ref)


def test_published_rule_from_embeddings_equals_the_loop():
    rng = np.random.default_rng(5)
    cap2img = rng.permutation(np.repeat(np.arange(30), 5))
    img = rng.integers(-1, 2, (30, 4)).astype(np.float32)  # exact products, ties everywhere
    txt = rng.integers(-1, 2, (150, 4)).astype(np.float32)
    ref = metrics_from_ranks(*published_loop(img @ txt.T, cap2img))
    for budget in (1, 500, 10**9):
        assert retrieval_metrics_from_embeddings(img, txt, cap2img, ties="published", memory_budget_bytes=budget) == ref


def text_problem(seed: int):
    """Captions drawn from a small pool of template sentences (with case and punctuation variants)."""
    rng = np.random.default_rng(seed)
    pool = ["there are many cars", "a river runs through the forest", "two tennis courts", "many buildings", "a beach"]
    n_i = int(rng.integers(4, 25))
    cap2img = rng.permutation(np.repeat(np.arange(n_i), rng.integers(1, 6, n_i)))
    texts = []
    for _ in cap2img:
        t = pool[rng.integers(len(pool))] if rng.random() < 0.6 else f"unique caption {rng.integers(10**6)}"
        texts.append(t.upper() + " ." if rng.random() < 0.3 else t)
    return cap2img, texts, rng


@pytest.mark.parametrize("seed", range(5))
def test_text_positives_match_a_loop(seed):
    cap2img, texts, rng = text_problem(4000 + seed)
    n_i, n_c = int(cap2img.max()) + 1, len(cap2img)
    sim = rng.integers(0, 5, (n_i, n_c)).astype(np.float64) if seed % 2 else rng.standard_normal((n_i, n_c))
    i2t_sets, t2i_sets = positive_sets(cap2img, texts)

    def loop(ties):  # best positive score, then count the negatives above / tied with it
        def rank(scores, positives):
            best = max(scores[list(positives)])
            neg = np.array([k not in positives for k in range(len(scores))])
            above, tied = int((scores[neg] > best).sum()), int((scores[neg] == best).sum())
            return above if ties == "optimistic" else above + tied

        i2t = np.array([rank(sim[i], i2t_sets[i]) for i in range(n_i)])
        t2i = np.array([rank(sim[:, j], t2i_sets[j]) for j in range(n_c)])
        return i2t, t2i

    for ties in ("optimistic", "pessimistic"):
        got = retrieval_ranks(sim, cap2img, ties=ties, positives="text", texts=texts)
        ref = loop(ties)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])
    got = retrieval_ranks(sim, cap2img, ties="published", positives="text", texts=texts)
    ref = published_loop(sim, cap2img, texts)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])
    # Text positives only add positives: every rank can only improve.
    for ties in ("optimistic", "expected"):
        by_text = retrieval_metrics(sim, cap2img, ties=ties, positives="text", texts=texts)
        by_image = retrieval_metrics(sim, cap2img, ties=ties)
        assert by_text["mR"] >= by_image["mR"] - 1e-9
    # The embeddings path agrees.
    img, txt = rng.standard_normal((n_i, 3)), rng.standard_normal((n_c, 3))
    for ties in TIE_RULES:
        a = retrieval_metrics_from_embeddings(img, txt, cap2img, ties=ties, positives="text", texts=texts)
        assert a == pytest.approx(retrieval_metrics(img @ txt.T, cap2img, ties=ties, positives="text", texts=texts))


def test_normalize_caption_and_bad_arguments():
    assert normalize_caption("There are  many CARS .") == "there are many cars"
    cap2img = np.array([0, 1])
    with pytest.raises(ValueError, match="texts"):
        retrieval_metrics(np.zeros((2, 2)), cap2img, positives="text")
    with pytest.raises(ValueError, match="positives"):
        retrieval_metrics(np.zeros((2, 2)), cap2img, positives="caption")
    with pytest.raises(ValueError, match="ties must be one of"):
        retrieval_metrics(np.zeros((2, 2)), cap2img, ties="random")
    with pytest.raises(ValueError, match="integer ranks"):
        metrics_from_ranks(np.array([0.5]), np.array([0]))


@pytest.mark.parametrize("backend", ["numpy", NATIVE])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_threaded_tie_counts_equal_single_thread(monkeypatch, workers, backend):
    import rswb.metrics._counting as C

    rng = np.random.default_rng(500 + workers)
    cap2img = rng.permutation(np.repeat(np.arange(40), rng.integers(1, 6, 40)))
    sim = rng.integers(0, 4, (40, len(cap2img))).astype(np.float32)
    expected = retrieval_rank_counts(sim, cap2img, backend="torch")
    monkeypatch.setattr(C, "_MIN_THREADED_ENTRIES", 0)
    monkeypatch.setattr(C, "_CACHE_BLOCK_BYTES", 3 * len(cap2img))
    monkeypatch.setattr(C, "_MAX_UINT8_ROWS", 4)
    monkeypatch.setattr(C, "_PARTIAL_MAX", 5)
    monkeypatch.setattr(C, "_default_workers", lambda: workers)
    monkeypatch.setattr(C, "_native_chunk_rows", lambda n_i, w: 6)
    got = retrieval_rank_counts(sim, cap2img, backend=backend)
    for d in ("i2t", "t2i"):
        for f in ("above", "tied_neg", "tied_pos"):
            np.testing.assert_array_equal(getattr(getattr(got, d), f), getattr(getattr(expected, d), f))
