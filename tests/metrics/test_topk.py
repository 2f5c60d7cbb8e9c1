"""The ``"clip_benchmark"`` tie rule against clip_benchmark's own ``recall_at_k`` / ``batchify`` (clip-benchmark 1.6.2).

The reference is the installed package's code, called as its ``evaluate`` calls it: ``scores`` is texts x images
(``texts_emb @ images_emb.t()``, contiguous), text-to-image reads its rows, image-to-text its transpose. Its module
imports only torch and tqdm, so it loads without torchvision / open_clip (``make setup`` installs it with
``--no-deps`` for that reason); where it is missing those tests skip with the reason.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rswb.metrics import metrics_from_ranks, normalize_caption, retrieval_metrics, retrieval_metrics_from_embeddings
from rswb.metrics._topk import TopkRanks
from rswb.metrics.retrieval import _matrix_ranks, retrieval_ranks, retrieval_ranks_from_embeddings

try:
    from clip_benchmark.metrics.zeroshot_retrieval import batchify, recall_at_k
except ImportError as err:  # pragma: no cover - depends on the environment
    batchify = recall_at_k = None
    _WHY = f"clip_benchmark is not importable ({err}); `pip install --no-deps clip-benchmark==1.6.2` (make setup does)"
else:
    _WHY = ""
needs_clip_benchmark = pytest.mark.skipif(recall_at_k is None, reason=_WHY)

KS = (1, 5, 10, 40)  # 1 and 5 take torch.topk's partial-sort path at 200 items, 40 its selection path


def positive_mask(cap2img: np.ndarray, n_images: int, texts=None) -> np.ndarray:
    """``[N_i, N_c]``: caption j is a positive of image i (its own image, or, with texts, any owner of its text)."""
    own = cap2img[None, :] == np.arange(n_images)[:, None]
    if texts is None:
        return own
    _, group = np.unique([normalize_caption(t) for t in texts], return_inverse=True)
    group = group.reshape(-1)
    same_text = group[:, None] == group[None, :]  # [N_c, N_c]
    return (own.astype(np.int64) @ same_text.astype(np.int64)) > 0


def clip_benchmark_hits(sim: np.ndarray, positive: np.ndarray, k: int, batch_size: int):
    """Per-query hits ``(i2t [N_i], t2i [N_c])`` exactly as clip_benchmark's ``evaluate`` computes them."""
    scores = torch.from_numpy(np.ascontiguousarray(sim.T))  # texts x images, as texts_emb @ images_emb.t()
    pairs = torch.from_numpy(np.ascontiguousarray(positive.T))
    t2i = batchify(recall_at_k, scores, pairs, batch_size, "cpu", k=k) > 0
    i2t = batchify(recall_at_k, scores.T, pairs.T, batch_size, "cpu", k=k) > 0
    return i2t.numpy(), t2i.numpy()


def clip_benchmark_metrics(sim, positive, ks, batch_size) -> dict[str, float]:
    out, recalls = {}, []
    hits = {k: clip_benchmark_hits(sim, positive, k, batch_size) for k in ks}
    for d, name in enumerate(("i2t", "t2i")):
        for k in ks:
            out[f"{name}_R@{k}"] = float(100.0 * np.mean(hits[k][d]))
            recalls.append(out[f"{name}_R@{k}"])
    out["mR"] = float(np.mean(recalls))
    return out


def tied_problem(seed: int, levels: int, n_images: int = 40, per_image: int = 5, dtype=np.float32):
    """Integer-valued scores (``levels`` distinct values: many exact ties), ``per_image`` captions per image."""
    rng = np.random.default_rng(seed)
    cap2img = rng.permutation(np.repeat(np.arange(n_images), per_image))
    sim = rng.integers(0, levels, (n_images, cap2img.size)).astype(dtype)
    return sim, cap2img


def topk_order_ranks(sim: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each query's first positive in ``torch.topk(row, M)``, one row at a time."""

    def first(scores: np.ndarray, pos: np.ndarray) -> int:
        order = torch.topk(torch.from_numpy(np.ascontiguousarray(scores)), scores.size).indices.numpy()
        return int(np.flatnonzero(pos[order])[0])

    i2t = np.array([first(sim[i], positive[i]) for i in range(sim.shape[0])])
    t2i = np.array([first(sim[:, j], positive[:, j]) for j in range(sim.shape[1])])
    return i2t, t2i


# ------------------------------------------------------------------ against clip_benchmark


@needs_clip_benchmark
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("levels", [2, 4, 1000])
def test_recalls_equal_clip_benchmark_at_every_batch_size(seed, levels):
    sim, cap2img = tied_problem(seed, levels)
    positive = positive_mask(cap2img, sim.shape[0])
    refs = {b: {k: clip_benchmark_hits(sim, positive, k, b) for k in KS} for b in (1, 7, 64, sim.shape[1])}
    for b, ref in refs.items():  # clip_benchmark's own batch size changes nothing on CPU
        for k in KS:
            np.testing.assert_array_equal(ref[k][0], refs[1][k][0], err_msg=f"i2t K={k} batch {b}")
            np.testing.assert_array_equal(ref[k][1], refs[1][k][1], err_msg=f"t2i K={k} batch {b}")
    ref, want = refs[1], clip_benchmark_metrics(sim, positive, KS, 7)
    for budget in (1, 4096, 64 * 2**20):  # one row per block, a few rows, everything at once
        out = _matrix_ranks(sim, cap2img, "clip_benchmark", "image", None, budget, "auto", KS)
        assert isinstance(out, TopkRanks)
        for i, k in enumerate(KS):
            np.testing.assert_array_equal(out.i2t_hits[i], ref[k][0], err_msg=f"i2t K={k} budget {budget}")
            np.testing.assert_array_equal(out.t2i_hits[i], ref[k][1], err_msg=f"t2i K={k} budget {budget}")
        got = retrieval_metrics(sim, cap2img, ks=KS, ties="clip_benchmark", memory_budget_bytes=budget)
        assert {key: got[key] for key in want} == want
    # A tensor input (and a float64 copy: the same order of values) gives the same numbers.
    got = retrieval_metrics(torch.from_numpy(sim.astype(np.float64)), cap2img, ks=KS, ties="clip_benchmark")
    assert {key: got[key] for key in want} == want


@needs_clip_benchmark
@pytest.mark.parametrize("seed", range(3))
def test_duplicate_positives_equal_clip_benchmark(seed):
    # positives="text": a caption whose text another image also has is a positive of both, so t2i queries have
    # several positive images and i2t queries more positive captions than their own five.
    sim, cap2img = tied_problem(100 + seed, levels=3)
    rng = np.random.default_rng(seed)
    vocabulary = [f"there are {w} near the river" for w in ("trees", "cars", "houses", "boats", "roads", "fields")]
    # Half the captions come from six template sentences (shared across images), the rest are unique.
    texts = [vocabulary[v] if v < len(vocabulary) else f"caption {j}"
             for j, v in enumerate(rng.integers(0, 2 * len(vocabulary), cap2img.size))]
    positive = positive_mask(cap2img, sim.shape[0], texts)
    assert positive.sum(axis=0).max() > 1 and positive.sum(axis=1).max() > 5  # the case under test
    want = clip_benchmark_metrics(sim, positive, KS, 16)
    for budget in (1, 64 * 2**20):
        got = retrieval_metrics(sim, cap2img, ks=KS, ties="clip_benchmark", positives="text", texts=texts,
                                memory_budget_bytes=budget)
        assert {key: got[key] for key in want} == want
    i2t, t2i = retrieval_ranks(sim, cap2img, ties="clip_benchmark", positives="text", texts=texts)
    ref_i2t, ref_t2i = topk_order_ranks(sim, positive)
    np.testing.assert_array_equal(i2t, ref_i2t)
    np.testing.assert_array_equal(t2i, ref_t2i)


@needs_clip_benchmark
@pytest.mark.parametrize("seed", range(2))
def test_from_embeddings_equals_clip_benchmark(seed):
    # Small integer embeddings: every product is exact, so blocked products equal clip_benchmark's single one.
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(-1, 2, (40, 4), generator=g).to(torch.float64)
    txt = torch.randint(-1, 2, (200, 4), generator=g).to(torch.float64)
    cap2img = np.random.default_rng(seed).permutation(np.repeat(np.arange(40), 5))
    sim = (txt @ img.T).T.numpy()  # clip_benchmark's scores, transposed to images x captions
    want = clip_benchmark_metrics(sim, positive_mask(cap2img, 40), KS, 32)
    for budget in (1, 10_000, 256 * 2**20):
        got = retrieval_metrics_from_embeddings(img, txt, cap2img, ks=KS, ties="clip_benchmark",
                                                memory_budget_bytes=budget)
        assert {key: got[key] for key in want} == want
        assert got == retrieval_metrics(sim, cap2img, ks=KS, ties="clip_benchmark")
        ranks = retrieval_ranks_from_embeddings(img, txt, cap2img, ties="clip_benchmark", memory_budget_bytes=budget)
        for a, b in zip(ranks, retrieval_ranks(sim, cap2img, ties="clip_benchmark")):
            np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ ranks, bounds, hand cases


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("levels", [4, 50, 1000])
def test_ranks_are_positions_in_torch_topk_whole_order(seed, levels):
    # Rows whose best positive ties a negative are sorted, the others counted: many levels mix both kinds.
    sim, cap2img = tied_problem(200 + seed, levels=levels)
    positive = positive_mask(cap2img, sim.shape[0])
    sim[(np.random.default_rng(seed).random(sim.shape) < 0.01) & ~positive] = np.nan  # torch.topk puts NaN first
    ref = topk_order_ranks(sim, positive)
    for budget in (1, 64 * 2**20):
        got = retrieval_ranks(sim, cap2img, ties="clip_benchmark", memory_budget_bytes=budget)
        for a, b in zip(got, ref):
            assert a.dtype == np.int64
            np.testing.assert_array_equal(a, b)
    # medr and meanr are those of the ranks, as under every other rule with integer ranks.
    got = retrieval_metrics(sim, cap2img, ties="clip_benchmark")
    plain = metrics_from_ranks(*ref)
    assert {k: got[k] for k in plain if "_R@" not in k and k != "mR"} == {
        k: v for k, v in plain.items() if "_R@" not in k and k != "mR"}


@pytest.mark.parametrize("seed", range(3))
def test_between_the_pessimistic_and_optimistic_bounds(seed):
    sim, cap2img = tied_problem(300 + seed, levels=3)
    opt, pes, clip = (retrieval_metrics(sim, cap2img, ks=KS, ties=t) for t in ("optimistic", "pessimistic",
                                                                               "clip_benchmark"))
    for key in opt:
        lo, hi = sorted((opt[key], pes[key]))
        assert lo <= clip[key] <= hi, key
    (o_i2t, o_t2i), (p_i2t, p_t2i), (c_i2t, c_t2i) = (retrieval_ranks(sim, cap2img, ties=t) for t in (
        "optimistic", "pessimistic", "clip_benchmark"))
    assert (o_i2t <= c_i2t).all() and (c_i2t <= p_i2t).all() and (o_t2i <= c_t2i).all() and (c_t2i <= p_t2i).all()


def test_hand_case_whatever_the_order_among_ties():
    cap2img = np.array([0, 0, 1, 1, 2])
    sim = np.array(
        [
            [0.9, 0.9, 0.5, 0.5, 0.1],  # image 0: its two captions tie at the top -> rank 0 in any order
            [0.7, 0.7, 0.3, 0.2, 0.1],  # image 1: two negatives tie above its best positive (0.3) -> rank 2
            [0.8, 0.6, 0.6, 0.6, 0.6],  # image 2: caption 4 ties with three negatives just below 0.8 -> rank 1..4
        ]
    )
    i2t, t2i = retrieval_ranks(sim, cap2img, ties="clip_benchmark")
    assert i2t[:2].tolist() == [0, 2] and 1 <= i2t[2] <= 4
    # t2i columns: no tie touches a positive (caption 4's column ties two negatives below its image).
    assert t2i.tolist() == [0, 0, 2, 2, 0]
    got = retrieval_metrics(sim, cap2img, ties="clip_benchmark")
    # i2t R@1: image 0 only; R@5: image 2's whole tied group lies within the top 5; K=10 > 5 items: all hits.
    # t2i over 3 images: R@1 3 of 5; K=5 and K=10 are at least the number of images: all hits.
    want = {"i2t_R@1": 100 / 3, "i2t_R@5": 100.0, "i2t_R@10": 100.0, "t2i_R@1": 60.0, "t2i_R@5": 100.0,
            "t2i_R@10": 100.0}
    assert {k: got[k] for k in want} == pytest.approx(want)
    assert got["mR"] == pytest.approx(sum(want.values()) / 6)
    assert got["t2i_medr"] == 1.0 and got["t2i_meanr"] == pytest.approx(1 + 4 / 5)


def test_differs_from_expected_and_published_on_a_tie():
    # Image 0's five captions all tie; caption 4's column ties images 0 and 1. torch.topk(k=1) on CPU keeps
    # image 0 for [1, 1], so caption 4 is a miss; np.argsort(...)[::-1] puts image 1 first (a hit), and the expected
    # rule gives it 1/2. Whatever topk keeps, a 0/1 hit per query cannot give the expected 30 or 60.
    sim = np.array([[1.0, 1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    cap2img = np.array([0, 1, 1, 1, 1])
    got = {t: retrieval_metrics(sim, cap2img, ks=(1,), ties=t) for t in ("expected", "published", "clip_benchmark")}
    assert got["expected"]["t2i_R@1"] == pytest.approx(30.0) and got["expected"]["i2t_R@1"] == pytest.approx(60.0)
    assert got["clip_benchmark"]["i2t_R@1"] in (50.0, 100.0)
    assert got["clip_benchmark"]["t2i_R@1"] in (20.0, 40.0)
    assert torch.topk(torch.tensor([1.0, 1.0]), 1).indices.item() == 0  # the CPU tie choice this case relies on
    assert got["clip_benchmark"]["t2i_R@1"] == 20.0 and got["published"]["t2i_R@1"] == 40.0
    assert got["clip_benchmark"]["mR"] != got["expected"]["mR"] and got["clip_benchmark"]["mR"] != got[
        "published"]["mR"]


def test_k_beyond_the_items_counts_every_query():
    sim, cap2img = tied_problem(7, levels=2, n_images=4, per_image=2)
    got = retrieval_metrics(sim, cap2img, ks=(4, 8, 50), ties="clip_benchmark")
    assert got["t2i_R@4"] == got["t2i_R@8"] == got["i2t_R@8"] == got["i2t_R@50"] == 100.0


def test_nan_ground_truth_is_an_error():
    sim, cap2img = tied_problem(8, levels=3, n_images=4, per_image=2)
    sim[cap2img[0], 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(sim, cap2img, ties="clip_benchmark")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs_lie_within_the_bounds():
    # CUDA's torch.topk may keep other tied items than the CPU's: only the bounds (and tie-free numbers) must agree.
    sim, cap2img = tied_problem(9, levels=3)
    got = retrieval_metrics(torch.from_numpy(sim).to("cuda"), cap2img, ks=KS, ties="clip_benchmark")
    opt, pes = (retrieval_metrics(sim, cap2img, ks=KS, ties=t) for t in ("optimistic", "pessimistic"))
    for key in opt:
        lo, hi = sorted((opt[key], pes[key]))
        assert lo <= got[key] <= hi, key
    free = np.random.default_rng(9).standard_normal(sim.shape).astype(np.float32)
    assert retrieval_metrics(torch.from_numpy(free).to("cuda"), cap2img, ties="clip_benchmark") == retrieval_metrics(
        free, cap2img, ties="optimistic")
