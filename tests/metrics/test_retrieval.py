"""rswb.metrics.retrieval against a per-query argsort loop on seeded random inputs, plus a hand-computed case."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rswb.metrics import (
    metrics_from_ranks,
    retrieval_metrics,
    retrieval_metrics_from_embeddings,
    retrieval_ranks,
    retrieval_ranks_from_embeddings,
)
from tests.metrics.backends import NATIVE, NATIVE_IF_BUILT

KEYS = {
    "i2t_R@1",
    "i2t_R@5",
    "i2t_R@10",
    "t2i_R@1",
    "t2i_R@5",
    "t2i_R@10",
    "mR",
    "i2t_medr",
    "i2t_meanr",
    "t2i_medr",
    "t2i_meanr",
}


def reference_ranks(sim: np.ndarray, cap2img: np.ndarray, ties: str) -> tuple[np.ndarray, np.ndarray]:
    """Sort every row/column and find the first positive, ties broken for (optimistic) or against the positives."""
    n_i, n_c = sim.shape

    def first_positive(scores: np.ndarray, positive: np.ndarray) -> int:
        tie_key = ~positive if ties == "optimistic" else positive  # False sorts first
        order = np.lexsort((tie_key, -scores))  # primary key: score descending
        return int(np.flatnonzero(positive[order])[0])

    i2t = np.array([first_positive(sim[i], cap2img == i) for i in range(n_i)])
    t2i = np.array([first_positive(sim[:, j], np.arange(n_i) == cap2img[j]) for j in range(n_c)])
    return i2t, t2i


def reference_metrics(i2t: np.ndarray, t2i: np.ndarray) -> dict[str, float]:
    out = {}
    for name, r in (("i2t", i2t), ("t2i", t2i)):
        for k in (1, 5, 10):
            out[f"{name}_R@{k}"] = 100.0 * sum(int(x) < k for x in r) / len(r)
        out[f"{name}_medr"] = float(np.median([x + 1 for x in r]))
        out[f"{name}_meanr"] = sum(x + 1 for x in r) / len(r)
    out["mR"] = sum(out[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)) / 6
    return out


def random_problem(seed: int, tied: bool, max_caps: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Similarity [N_i, N_c] with 1..max_caps captions per image (shuffled), optionally full of exact ties."""
    rng = np.random.default_rng(seed)
    n_i = int(rng.integers(3, 40))
    per_image = rng.integers(1, max_caps + 1, n_i)
    cap2img = rng.permutation(np.repeat(np.arange(n_i), per_image))
    shape = (n_i, len(cap2img))
    sim = rng.integers(0, 4, shape).astype(np.float32) if tied else rng.standard_normal(shape).astype(np.float32)
    return sim, cap2img


@pytest.mark.parametrize("ties", ["optimistic", "pessimistic"])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_ranks_match_argsort_reference(seed, tied, ties):
    sim, cap2img = random_problem(seed, tied)
    ref_i2t, ref_t2i = reference_ranks(sim, cap2img, ties)
    for budget in (1, 10**9):  # one row per block, and everything at once
        for backend in (*NATIVE_IF_BUILT, "numpy", "torch"):
            i2t, t2i = retrieval_ranks(sim, cap2img, ties=ties, memory_budget_bytes=budget, backend=backend)
            np.testing.assert_array_equal(i2t, ref_i2t)
            np.testing.assert_array_equal(t2i, ref_t2i)
    got = retrieval_metrics(torch.from_numpy(sim), torch.from_numpy(cap2img), ties=ties)
    assert got.keys() == KEYS
    assert got == pytest.approx(reference_metrics(ref_i2t, ref_t2i), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_no_ties_agrees_with_plain_argsort_and_both_rules(seed):
    sim, cap2img = random_problem(50 + seed, tied=False)
    plain_i2t = [int(np.flatnonzero(cap2img[np.argsort(-sim[i])] == i)[0]) for i in range(sim.shape[0])]
    plain_t2i = [int(np.flatnonzero(np.argsort(-sim[:, j]) == cap2img[j])[0]) for j in range(sim.shape[1])]
    for ties in ("optimistic", "pessimistic"):
        i2t, t2i = retrieval_ranks(sim, cap2img, ties=ties)
        np.testing.assert_array_equal(i2t, plain_i2t)
        np.testing.assert_array_equal(t2i, plain_t2i)


@pytest.mark.parametrize("seed", range(4))
def test_optimistic_i2t_is_min_over_positives(seed):
    # min over positives c of #(S[i,:] > S[i,c]) == #(S[i,:] > max_c S[i,c]): the identity the fast path relies on.
    sim, cap2img = random_problem(200 + seed, tied=bool(seed % 2))
    i2t, _ = retrieval_ranks(sim, cap2img, ties="optimistic")
    for i in range(sim.shape[0]):
        per_caption = [int((sim[i] > sim[i, c]).sum()) for c in np.flatnonzero(cap2img == i)]
        assert i2t[i] == min(per_caption)


def test_hand_computed_three_images_five_captions():
    # Image 0 has captions 0, 1; image 1 has caption 2; image 2 has captions 3, 4.
    cap2img = np.array([0, 0, 1, 2, 2])
    sim = np.array(
        [
            [0.9, 0.1, 0.9, 0.3, 0.2],  # best positive 0.9 (caption 0) ties with caption 2 (negative)
            [0.5, 0.6, 0.4, 0.7, 0.1],  # positive 0.4; 0.5, 0.6, 0.7 are higher
            [0.2, 0.8, 0.1, 0.8, 0.8],  # best positive 0.8 (captions 3, 4) ties with caption 1 (negative)
        ]
    )
    # i2t optimistic: image 0 -> 0, image 1 -> 3, image 2 -> 0.
    # i2t pessimistic: image 0 -> 1 (caption 2 ties), image 1 -> 3, image 2 -> 1 (only caption 1 counts, not the
    # other positive), so the ranks are [1, 3, 1].
    # t2i (columns): caption 0 (image 0, 0.9): none higher -> 0 / 0; caption 1 (image 0, 0.1): 0.6, 0.8 higher -> 2;
    # caption 2 (image 1, 0.4): 0.9 higher -> 1; caption 3 (image 2, 0.8): none -> 0; caption 4 (image 2, 0.8): 0.
    i2t, t2i = retrieval_ranks(sim, cap2img, ties="optimistic")
    np.testing.assert_array_equal(i2t, [0, 3, 0])
    np.testing.assert_array_equal(t2i, [0, 2, 1, 0, 0])
    i2t_p, t2i_p = retrieval_ranks(sim, cap2img, ties="pessimistic")
    np.testing.assert_array_equal(i2t_p, [1, 3, 1])
    np.testing.assert_array_equal(t2i_p, [0, 2, 1, 0, 0])

    got = retrieval_metrics(sim, cap2img, ties="optimistic")
    # i2t: R@1 = 2/3, R@5 = R@10 = 1; 1-based ranks 1, 4, 1 -> median 1, mean 2.
    # t2i: R@1 = 3/5, R@5 = R@10 = 1; 1-based ranks 1, 3, 2, 1, 1 -> median 1, mean 8/5.
    expected = {
        "i2t_R@1": 200 / 3,
        "i2t_R@5": 100.0,
        "i2t_R@10": 100.0,
        "t2i_R@1": 60.0,
        "t2i_R@5": 100.0,
        "t2i_R@10": 100.0,
        "mR": (200 / 3 + 60 + 400) / 6,
        "i2t_medr": 1.0,
        "i2t_meanr": 2.0,
        "t2i_medr": 1.0,
        "t2i_meanr": 1.6,
    }
    assert got == pytest.approx(expected, abs=1e-12)
    pess = retrieval_metrics(sim, cap2img, ties="pessimistic")
    assert pess["i2t_R@1"] == pytest.approx(0.0) and pess["i2t_medr"] == 2.0


@pytest.mark.parametrize("ties", ["optimistic", "pessimistic", "expected", "published"])
@pytest.mark.parametrize("seed", range(4))
def test_embeddings_path_equals_full_matrix(seed, ties):
    rng = np.random.default_rng(300 + seed)
    n_i, d = int(rng.integers(5, 30)), 6
    per_image = rng.integers(1, 8, n_i)
    cap2img = rng.permutation(np.repeat(np.arange(n_i), per_image))
    if seed % 2:
        # Small integer embeddings: exact products, so many exact ties that every block must break the same way.
        img = rng.integers(-1, 2, (n_i, d)).astype(np.float32)
        txt = rng.integers(-1, 2, (len(cap2img), d)).astype(np.float32)
    else:
        img, txt = rng.standard_normal((n_i, d)), rng.standard_normal((len(cap2img), d))
    full = retrieval_ranks(img @ txt.T, cap2img, ties=ties)
    if ties in ("optimistic", "pessimistic"):
        ref = reference_ranks(img @ txt.T, cap2img, ties)
        np.testing.assert_array_equal(full[0], ref[0])
        np.testing.assert_array_equal(full[1], ref[1])
    item = img.dtype.itemsize + 1
    # 1 byte -> one row per block; the others force blocks of a few rows (several chunks in both directions).
    for budget in (1, 3 * len(cap2img) * item, 7 * n_i * item, 10**9):
        for backend in ("numpy", "torch"):
            got = retrieval_ranks_from_embeddings(
                img, txt, cap2img, ties=ties, memory_budget_bytes=budget, backend=backend
            )
            np.testing.assert_array_equal(got[0], full[0])
            np.testing.assert_array_equal(got[1], full[1])
    a = retrieval_metrics_from_embeddings(torch.from_numpy(img), torch.from_numpy(txt), cap2img, ties=ties)
    assert a == retrieval_metrics(img @ txt.T, cap2img, ties=ties)


def test_one_and_ten_captions_per_image():
    rng = np.random.default_rng(9)
    cap2img = np.array([0] + [1] * 10 + [2] * 3)
    sim = rng.standard_normal((3, len(cap2img)))
    for ties in ("optimistic", "pessimistic"):
        ref = reference_ranks(sim, cap2img, ties)
        got = retrieval_ranks(sim, cap2img, ties=ties)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])


def test_metrics_from_ranks_custom_ks_and_even_median():
    got = metrics_from_ranks(np.array([0, 3]), np.array([0, 1, 2, 9]), ks=(1, 3))
    recalls = {f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 3)}
    assert set(got) == recalls | {"mR", "i2t_medr", "i2t_meanr", "t2i_medr", "t2i_meanr"}
    assert got["i2t_R@3"] == 50.0 and got["t2i_R@3"] == 75.0
    assert got["i2t_medr"] == 2.5 and got["t2i_medr"] == 2.5  # midpoint of the 1-based ranks
    assert got["mR"] == pytest.approx((50 + 50 + 25 + 75) / 4)


def test_integer_similarities_and_invalid_inputs():
    cap2img = np.array([0, 1, 1])
    sim_int = np.array([[3, 1, 3], [2, 2, 0]])
    np.testing.assert_array_equal(retrieval_ranks(sim_int, cap2img, ties="optimistic")[0], [0, 0])
    with pytest.raises(ValueError, match="no caption"):
        retrieval_metrics(np.zeros((3, 3)), cap2img)
    with pytest.raises(ValueError, match="lie in"):
        retrieval_metrics(np.zeros((2, 3)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="entries"):
        retrieval_metrics(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.array([[np.nan, 0, 0], [0, 0, 0]]), cap2img)
    with pytest.raises(ValueError, match="ties"):
        retrieval_metrics(np.zeros((2, 3)), cap2img, ties="average")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs_match_cpu():
    sim, cap2img = random_problem(77, tied=True)
    for ties in ("optimistic", "pessimistic"):
        cpu = retrieval_metrics(sim, cap2img, ties=ties)
        assert (
            retrieval_metrics(torch.from_numpy(sim).to("cuda"), torch.from_numpy(cap2img).to("cuda"), ties=ties) == cpu
        )
        img = torch.randint(-1, 2, (sim.shape[0], 5), dtype=torch.float32)
        txt = torch.randint(-1, 2, (sim.shape[1], 5), dtype=torch.float32)
        expected = retrieval_metrics((img @ txt.T).numpy(), cap2img, ties=ties)
        got = retrieval_metrics_from_embeddings(
            img.to("cuda"), txt.to("cuda"), cap2img, ties=ties, memory_budget_bytes=64
        )
        assert got == expected


@pytest.mark.parametrize("backend", ["numpy", NATIVE])
@pytest.mark.parametrize("ties", ["optimistic", "pessimistic"])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_threaded_counting_equals_single_thread(monkeypatch, workers, ties, backend):
    import rswb.metrics._counting as C
    import rswb.metrics.retrieval as R

    # 40 images in blocks of 3 rows (14 blocks shared out to the threads), scores full of exact ties.
    rng = np.random.default_rng(400 + workers)
    n_i = 40
    cap2img_big = rng.permutation(np.repeat(np.arange(n_i), rng.integers(1, 6, n_i)))
    sim = rng.integers(0, 4, (n_i, len(cap2img_big))).astype(np.float32)
    expected = reference_ranks(sim, cap2img_big, ties)
    monkeypatch.setattr(C, "_MIN_THREADED_ENTRIES", 0)
    monkeypatch.setattr(C, "_CACHE_BLOCK_BYTES", 3 * len(cap2img_big))  # blocks of 3 rows
    monkeypatch.setattr(C, "_MAX_UINT8_ROWS", 4)  # byte counters moved into uint16 after every block
    monkeypatch.setattr(C, "_PARTIAL_MAX", 5)  # uint16 counters moved into int64 every other block
    monkeypatch.setattr(C, "_default_workers", lambda: workers)
    monkeypatch.setattr(C, "_native_chunk_rows", lambda n_i, w: 6)  # 4-row tiles plus a remainder of 2 per task
    got = retrieval_ranks(sim, cap2img_big, ties=ties, backend=backend)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    # The explicit worker count of the private pass, against one thread, on a float32 matrix with a tied gt.
    gt = sim[cap2img_big, np.arange(len(cap2img_big))]
    best = np.full(n_i, -np.inf, dtype=np.float32)
    np.maximum.at(best, cap2img_big, gt)
    modes = (ties == "optimistic",)
    one = R._count_numpy(sim, best, gt, modes, 10**9, workers=1)[modes[0]]
    many = R._count_numpy(sim, best, gt, modes, 10**9, workers=workers)[modes[0]]
    np.testing.assert_array_equal(one[0], many[0])
    np.testing.assert_array_equal(one[1], many[1])


@pytest.mark.parametrize("n_cols", [1, 7, 8, 9, 65, 2039, 2041, 2048, 2049, 5000, 25000])
def test_row_counts_by_word_lanes_any_width(n_cols):
    from rswb.metrics._counting import _bool_buffer, _count_rows_numpy, _row_counts

    rng = np.random.default_rng(n_cols)
    block = rng.integers(0, 5, (13, n_cols)).astype(np.float64)
    thr = rng.integers(0, 5, 13).astype(np.float64)
    buf = _bool_buffer(13, n_cols)
    for strict in (True, False):
        expected = (block > thr[:, None]).sum(1) if strict else (block >= thr[:, None]).sum(1)
        np.testing.assert_array_equal(_count_rows_numpy(block, thr, strict, buf), expected)
        np.testing.assert_array_equal(_count_rows_numpy(block[:4], thr[:4], strict, buf), expected[:4])
    # All True: every byte counter of a 255-word group reaches 255, the most it may hold.
    full = _bool_buffer(2, n_cols)
    full[:, :n_cols] = True
    np.testing.assert_array_equal(_row_counts(full), [n_cols, n_cols])
    assert buf.shape[1] - n_cols < 8 * (1 + n_cols // 2040)  # under 8 bytes of padding per group of 255 words
    with pytest.raises(ValueError, match="does not fit"):
        _count_rows_numpy(block, thr, True, _bool_buffer(13, n_cols + 2048))
