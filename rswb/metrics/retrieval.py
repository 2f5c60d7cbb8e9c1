"""Image-text retrieval metrics: R@K in both directions, mR, median and mean rank, under an explicit tie rule.

Conventions (``docs/methods.md``, "Shared evaluation semantics"):

* ``sim`` is the image x caption similarity ``[N_i, N_c]`` and ``caption_to_image`` ``[N_c]`` says which image
  each caption describes (any number of captions per image, at least one each; never ``j // 5``).
* **i2t**: the query is image ``i``; the items are all captions, sorted by ``sim[i, :]`` descending; the
  positives are the captions of image ``i``. **t2i**: the query is caption ``j``; the items are all images, sorted
  by ``sim[:, j]`` descending; the positive is image ``caption_to_image[j]``.
* ``positives="text"`` (the de-duplicated view): a caption whose normalised text (:func:`normalize_caption`) equals
  the text of one of image ``i``'s captions is also a positive of image ``i``, and in t2i every image that owns
  the caption's text is a positive. On UCM-Captions 868 of the 1,050 test captions are word for word a caption of
  another image (template sentences), so the two views differ a lot there.
* A query's **rank** is the 0-based position of its first positive in that sorted list. ``R@K`` = 100 x the share
  of queries with ``rank < K`` (a percentage); ``mR`` = the mean of all recalls reported (the six of
  ``ks=(1, 5, 10)``). ``medr`` / ``meanr`` are the median / mean of the **1-based** ranks (``rank + 1``, so a
  perfect retriever scores 1.0); the median of an even count is the midpoint (``np.median``), where published
  code often reports ``floor(median(0-based)) + 1``.

Tie rule (``ties``): when items score exactly the same, the sorted order is not defined by the scores. Let ``s*``
be the best score of any positive of the query, ``a`` the number of negatives scoring strictly above ``s*``, ``n``
the number of negatives tied with ``s*`` and ``p >= 1`` the number of positives tied with it. Then:

* ``"expected"`` (default, the headline): the tied items are put in uniformly random order and every metric is its
  expectation over those orders, in closed form (no sampling). The number ``X`` of tied negatives before the first
  tied positive has ``P(X >= m) = C(n, m) / C(n + p, m)``, so ``P(rank < K) = 1 - P(X >= K - a)`` (0 when
  ``K <= a``), ``E[rank] = a + n / (p + 1)``; ``R@K`` and ``meanr`` are exact expectations. ``medr`` is the
  median of the pooled rank distribution (all queries, all tie orders): the midpoint of the smallest 1-based ``r``
  with ``E[share of ranks <= r] >= 1/2`` and the smallest with ``> 1/2``, which is ``np.median`` when no tie occurs.
* ``"optimistic"``: ties broken in favour of the positives, ``rank = a``; an upper bound on every recall.
* ``"pessimistic"``: ties broken against the positives, ``rank = a + n``; a lower bound. Other positives never count
  against a query: two captions of image ``i`` tied at the top still give rank 0.
* ``"published"``: the per-query loop of published remote-sensing retrieval evaluation code, reproduced exactly:
  for image ``i``, ``inds = np.argsort(sim[i])[::-1]`` (numpy's default, ascending, then reversed) and the best
  position of any positive; for caption ``j``, the same over ``sim[:, j]``. The order among ties is whatever
  numpy's sort leaves (it can differ between numpy builds and CPUs). Vectorised with ``np.argsort`` along an axis,
  which sorts every row with the same kernel as the 1-D call (tested against the literal loop). This is the number
  to set beside a paper's.
* ``"clip_benchmark"``: the recall of ``clip_benchmark.metrics.zeroshot_retrieval`` (clip-benchmark 1.6.2, the
  LAION CLIP benchmark), reproduced exactly: a query is a hit at ``K`` when any of the ``K`` indices of
  ``torch.topk(row, K)`` is a positive (i2t: the row ``sim[i, :]``; t2i: the column ``sim[:, j]``, which is where
  clip_benchmark's ``texts x images`` scores put it), so the order among ties is torch.topk's. That order is chosen
  per call: the tied items ``topk(row, 1)`` keeps need not head ``topk(row, 5)``, so every ``R@K`` is its own
  ``torch.topk(row, K)`` call (:mod:`rswb.metrics._topk`), and the ranks (:func:`retrieval_ranks`, ``medr``,
  ``meanr``) are positions in ``torch.topk(row, M)``, the whole order; where a tie straddles ``K``, ``R@K`` need
  not be the share of those ranks below ``K``. On CPU torch.topk orders each row from its own values alone, so the
  numbers do not depend on the batch size (clip_benchmark's ``batchify``, ``memory_budget_bytes`` here); on CUDA
  torch.topk is another algorithm and may order ties differently, so a GPU's numbers can differ from a CPU's (and,
  there, possibly with the batch size). A ``K`` at or above the number of items makes every query a hit
  (clip_benchmark's ``torch.topk`` raises there). :func:`retrieval_metrics_from_embeddings` scores blocks as
  clip_benchmark does (captions x images), which equals its single product wherever the products are exact; for
  its number to the bit, pass clip_benchmark's score matrix (transposed) to :func:`retrieval_metrics`.

All five agree when no negative ties with ``s*``; per query, the optimistic rank ``<=`` the expected, published and
clip_benchmark ranks ``<=`` the pessimistic rank, and each R@K hit of the clip_benchmark rule lies between the
pessimistic and the optimistic one.

Cost of the counting rules: no sort at all. The positive scores are gathered once, the best per query is a segment
max, and each count is a comparison of every score with a threshold: :func:`retrieval_metrics` reads ``sim`` from
memory once. On CPU a small compiled kernel (``rank_counts.c``, built on first use, see :mod:`rswb.metrics._native`)
makes all four decisions (``>`` and ``==`` against the row's ``s*`` for i2t and the column's ``s*`` for t2i) in that
one read, so every counting rule costs the same; without a C compiler numpy kernels do it in blocks of rows that
stay in cache while they are compared once per decision (``"expected"`` then costs about twice ``"optimistic"``).
Either way the blocks are shared out to ``torch.get_num_threads()`` threads (both release the GIL).
:func:`retrieval_metrics_from_embeddings` computes ``sim`` block by block (image rows for i2t, caption rows for t2i)
and never holds more than ``memory_budget_bytes`` of it. ``"published"`` argsorts every row and column (a few
seconds at 5,000 x 25,000). ``"clip_benchmark"`` calls torch.topk once per K (cheap for small K) and sorts, with
torch.topk, only the rows and columns whose best positive score a negative shares: the others' rank is a count.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.special import gammaln

from rswb.metrics._counting import (
    Backend,
    Mode,
    _bool_buffer,
    _count_native,
    _count_numpy,
    _count_rows_numpy,
    _count_rows_torch,
    _count_torch,
    _use_numpy,
)
from rswb.metrics._native import native_status, rank_counts_kernel
from rswb.metrics._topk import TopkRanks, topk_direction

ArrayLike = np.ndarray | torch.Tensor
Ties = Literal["expected", "optimistic", "pessimistic", "published", "clip_benchmark"]
Positives = Literal["image", "text"]
#: Every tie rule, the headline first.
TIE_RULES: tuple[str, ...] = ("expected", "optimistic", "pessimistic", "published", "clip_benchmark")
#: The rule every retrieval number in rswb is reported under unless it says otherwise.
DEFAULT_TIES = "expected"

__all__ = [
    "DEFAULT_TIES",
    "TIE_RULES",
    "RankCounts",
    "TieCounts",
    "metrics_from_counts",
    "metrics_from_ranks",
    "normalize_caption",
    "retrieval_metrics",
    "retrieval_metrics_from_embeddings",
    "retrieval_rank_counts",
    "retrieval_ranks",
    "retrieval_ranks_from_embeddings",
]

# The published rule argsorts blocks of rows: int64 order + int64 positions + the scores per entry.
_ARGSORT_BYTES_PER_ENTRY = 24


def _as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    """Wrap ``x`` as a tensor without copying (numpy arrays share memory; tensors keep their device)."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    with warnings.catch_warnings():
        # Read-only arrays (np.load(..., mmap_mode="r")) are fine: nothing here writes to the input, and copying a
        # large similarity matrix only to silence torch's warning would double its memory.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)


def _check_ties(ties: str) -> None:
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {', '.join(map(repr, TIE_RULES))}; got {ties!r}")


def _check_index(caption_to_image: ArrayLike, n_images: int, n_captions: int) -> np.ndarray:
    """Validate the caption -> image map and return it as an int64 numpy array."""
    idx = _as_tensor(caption_to_image, "caption_to_image")
    if idx.is_floating_point():
        raise ValueError("caption_to_image must hold integer image indices")
    idx = idx.reshape(-1).cpu().numpy().astype(np.int64)
    if idx.size != n_captions:
        raise ValueError(f"caption_to_image has {idx.size} entries but there are {n_captions} captions")
    if n_captions == 0 or n_images == 0:
        raise ValueError(f"retrieval needs at least one image and one caption, got {n_images} x {n_captions}")
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= n_images:
        raise ValueError(f"caption_to_image values must lie in [0, {n_images}), got [{lo}, {hi}]")
    per_image = np.bincount(idx, minlength=n_images)
    if (per_image == 0).any():
        missing = np.flatnonzero(per_image == 0)
        raise ValueError(
            f"{missing.size} image(s) have no caption (first: {missing[:5].tolist()}); every image needs "
            "at least one, so drop those rows from the similarity matrix first"
        )
    return idx


def normalize_caption(text: str) -> str:
    """The form two captions are compared in for ``positives="text"``: lower case, words only, single spaces.

    ``"There are  many cars ."`` and ``"there are many cars"`` are the same caption.
    """
    return " ".join(re.findall(r"\w+", str(text).lower()))


@dataclass(frozen=True)
class _Pairs:
    """The positive (image, caption) pairs of a problem.

    ``img``/``cap`` are sorted by image (then caption); ``by_caption`` sorts them by caption (then image);
    ``img_starts`` [N_i + 1] / ``cap_starts`` [N_c + 1] delimit each query's run in those orders (every image and
    every caption has at least one positive: its own captions / its own image).
    """

    img: np.ndarray
    cap: np.ndarray
    by_caption: np.ndarray
    img_starts: np.ndarray
    cap_starts: np.ndarray

    @classmethod
    def build(cls, idx: np.ndarray, n_images: int, positives: str, texts: Sequence[str] | None) -> _Pairs:
        n_c = idx.size
        if positives == "image":
            cap = np.argsort(idx, kind="stable")
            img = idx[cap]
            # One positive per caption: sorting by caption is the inverse permutation, and every run has length 1.
            by_caption = np.empty_like(cap)
            by_caption[cap] = np.arange(n_c)
            return cls(img, cap, by_caption, np.searchsorted(img, np.arange(n_images + 1)), np.arange(n_c + 1))
        elif positives == "text":
            if texts is None or len(texts) != n_c:
                got = "none" if texts is None else len(texts)
                raise ValueError(f"positives='text' needs texts=, the text of every caption ({n_c}); got {got}")
            _, group = np.unique([normalize_caption(t) for t in texts], return_inverse=True)
            group = group.reshape(-1).astype(np.int64)
            # Every (image, text group) it owns, then every caption of that group: the image's positives.
            owned = np.unique(idx * (group.max() + 1) + group)
            own_img, own_group = owned // (group.max() + 1), owned % (group.max() + 1)
            caps_by_group = np.argsort(group, kind="stable")
            group_starts = np.searchsorted(group[caps_by_group], np.arange(group.max() + 2))
            sizes = group_starts[own_group + 1] - group_starts[own_group]
            img = np.repeat(own_img, sizes)
            first = np.repeat(group_starts[own_group], sizes)
            offset = np.arange(img.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
            cap = caps_by_group[first + offset]
            order = np.lexsort((cap, img))
            img, cap = img[order], cap[order]
        else:
            raise ValueError(f"positives must be 'image' or 'text', got {positives!r}")
        by_caption = np.lexsort((img, cap))
        img_starts = np.searchsorted(img, np.arange(n_images + 1))
        cap_starts = np.searchsorted(cap[by_caption], np.arange(n_c + 1))
        return cls(img, cap, by_caption, img_starts, cap_starts)


def _segment_best(scores: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per segment of ``scores`` (delimited by ``starts``, none empty): the maximum and how many reach it."""
    heads = starts[:-1]
    best = np.maximum.reduceat(scores, heads)
    at_best = np.add.reduceat((scores == np.repeat(best, np.diff(starts))).astype(np.int64), heads)
    return best, at_best


def _positive_scores(s: torch.Tensor, pairs: _Pairs) -> np.ndarray:
    if s.device.type == "cpu":
        # numpy, not torch indexing: a torch op just before the counting pass leaves torch's OpenMP threads
        # spin-waiting on the cores that the counting threads are about to use (measured: 1.5x slower at RSICD size).
        ps = s.numpy()[pairs.img, pairs.cap]
    else:
        ps = s[torch.from_numpy(pairs.img).to(s.device), torch.from_numpy(pairs.cap).to(s.device)].cpu().numpy()
    if np.isnan(ps).any():
        # A NaN ground-truth score would compare False with everything and silently rank first.
        raise ValueError("the similarity of some ground-truth pairs is NaN")
    return ps


def _native_kernel_for(s: np.ndarray):
    """The compiled kernel for ``s``, or ``None`` (other dtype, columns not contiguous, no compiler)."""
    if s.ndim != 2 or s.shape[0] >= 2**31 or s.strides[1] != s.itemsize or s.strides[0] % s.itemsize:
        return None
    return rank_counts_kernel(s.dtype)


def _modes(ties: str) -> tuple[bool, ...]:
    """The comparisons a counting rule needs: ``>`` (above ``s*``), ``>=`` (above or tied), or both."""
    return {"optimistic": (True,), "pessimistic": (False,), "expected": (True, False)}[ties]


def _tie_counts(ties: str, counts: dict[Mode, tuple[np.ndarray, np.ndarray]], tied_pos: tuple) -> tuple | RankCounts:
    """Ranks of a bound rule, or the :class:`RankCounts` of the expected rule, from the counts of its modes.

    ``tied_pos`` holds the positives tied at the best score, per direction: ``>=`` counted them too (other positives
    never count against a query). The tied negatives come from the ``"tie"`` mode or as ``>=`` minus ``>``.
    """
    if ties == "optimistic":
        return counts[True]
    at_or_above = counts.get(False)
    if ties == "pessimistic":
        return tuple(ge - tp for ge, tp in zip(at_or_above, tied_pos))
    above = counts[True]
    neg = counts["tie"] if "tie" in counts else tuple(ge - gt - tp for ge, gt, tp in zip(at_or_above, above, tied_pos))
    return RankCounts(
        *(TieCounts(a.astype(np.int64), n.astype(np.int64), tp) for a, n, tp in zip(above, neg, tied_pos))
    )


# ------------------------------------------------------------------ rank counts and the expected rule


@dataclass(frozen=True)
class TieCounts:
    """What the rank of every query of one direction depends on, tie rule aside.

    Attributes:
        above: negatives scoring strictly above the query's best positive score ``s*`` ``[Q]`` (int64).
        tied_neg: negatives scoring exactly ``s*`` ``[Q]``.
        tied_pos: positives scoring exactly ``s*`` ``[Q]`` (at least 1).
    """

    above: np.ndarray
    tied_neg: np.ndarray
    tied_pos: np.ndarray

    def ranks(self, ties: str) -> np.ndarray:
        """0-based ranks: ``above`` (optimistic), ``above + tied_neg`` (pessimistic) or the expected rank (float)."""
        if ties == "optimistic":
            return self.above
        if ties == "pessimistic":
            return self.above + self.tied_neg
        if ties == "expected":
            return self.above + self.tied_neg / (self.tied_pos + 1.0)
        raise ValueError(f"TieCounts gives the optimistic, pessimistic or expected ranks, not {ties!r}")

    def prob_within(self, k: int) -> np.ndarray:
        """``P(rank < k)`` of every query ``[Q]`` when the tied items are in uniformly random order."""
        m = k - self.above  # tied negatives that may precede the first positive and still leave rank < k
        out = (m > self.tied_neg).astype(np.float64)
        inside = np.flatnonzero((m >= 1) & (m <= self.tied_neg))
        if inside.size:
            n, p, mm = (x[inside].astype(np.float64) for x in (self.tied_neg, self.tied_pos, m))
            # P(X >= m) = C(n, m) / C(n + p, m): the first m of the tied items are all negatives.
            log_tail = gammaln(n + 1) - gammaln(n - mm + 1) - gammaln(n + p + 1) + gammaln(n + p - mm + 1)
            out[inside] = 1.0 - np.exp(log_tail)
        return out

    def median_rank(self) -> float:
        """Median of the pooled 1-based rank distribution (see the module docstring)."""
        # Queries without a tied negative have one rank; only the others spread over several, so the pooled CDF
        # F(r) = E[share of 1-based ranks <= r] is a sorted-array count plus a sum over the tied queries.
        tied = self.tied_neg > 0
        fixed = np.sort(self.above[~tied] + 1)
        spread = TieCounts(self.above[tied], self.tied_neg[tied], self.tied_pos[tied])
        n = self.above.size

        def cdf(r: int) -> float:
            return (np.searchsorted(fixed, r, side="right") + spread.prob_within(r).sum()) / n

        def first(strictly: bool) -> int:
            a, b = 1, int((self.above + self.tied_neg).max()) + 1  # F(b) = 1
            while a < b:
                mid = (a + b) // 2
                f = cdf(mid)
                if f > 0.5 or (not strictly and f >= 0.5):
                    b = mid
                else:
                    a = mid + 1
            return a

        return (first(False) + first(True)) / 2


@dataclass(frozen=True)
class RankCounts:
    """:class:`TieCounts` of both directions (from :func:`retrieval_rank_counts`)."""

    i2t: TieCounts
    t2i: TieCounts

    def ranks(self, ties: str) -> tuple[np.ndarray, np.ndarray]:
        """``(i2t, t2i)`` 0-based ranks under a counting rule (:meth:`TieCounts.ranks`)."""
        return self.i2t.ranks(ties), self.t2i.ranks(ties)


def metrics_from_counts(counts: RankCounts, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Expected recalls, mR and rank statistics when tied items are in uniformly random order.

    Args:
        counts: the per-query counts of both directions (:func:`retrieval_rank_counts`).
        ks: the cut-offs ``K`` of ``R@K``.

    Returns:
        The keys of :func:`metrics_from_ranks`; with no exact tie the values equal it on the optimistic ranks.
    """
    ks = _check_ks(ks)
    out: dict[str, float] = {}
    recalls = []
    for direction, c in (("i2t", counts.i2t), ("t2i", counts.t2i)):
        for k in ks:
            out[f"{direction}_R@{k}"] = float(100.0 * np.mean(c.prob_within(k)))
            recalls.append(out[f"{direction}_R@{k}"])
    out["mR"] = float(np.mean(recalls))
    for direction, c in (("i2t", counts.i2t), ("t2i", counts.t2i)):
        out[f"{direction}_medr"] = float(c.median_rank())
        out[f"{direction}_meanr"] = float(np.mean(c.ranks("expected") + 1))
    return out


# ------------------------------------------------------------------ from a similarity matrix


def _prepare(sim: ArrayLike, caption_to_image: ArrayLike, positives: str, texts: Sequence[str] | None):
    s = _as_tensor(sim, "sim")
    if s.ndim != 2:
        raise ValueError(f"sim must be [N_i, N_c], got shape {tuple(s.shape)}")
    if not s.is_floating_point():
        s = s.to(torch.float64)  # integer or boolean scores: exact in float64
    idx = _check_index(caption_to_image, *s.shape)
    return s, _Pairs.build(idx, s.shape[0], positives, texts)


def _matrix_counts(s: torch.Tensor, pairs: _Pairs, ties: str, budget: int, backend: str) -> tuple | RankCounts:
    """A counting rule's ranks (or :class:`RankCounts`) from one pass over the whole matrix."""
    ps = _positive_scores(s, pairs)
    row_best, row_tied = _segment_best(ps, pairs.img_starts)
    col_best, col_tied = _segment_best(ps[pairs.by_caption], pairs.cap_starts)
    modes = _modes(ties)
    kernel = None
    if backend in ("auto", "native") and s.device.type == "cpu" and s.dtype in (torch.float32, torch.float64):
        kernel = _native_kernel_for(s.numpy())
    if backend == "native" and kernel is None:
        raise RuntimeError(f"backend='native' is not available here: {native_status()}")
    if kernel is not None:
        counts = _count_native(s.numpy(), row_best, col_best, kernel)
    elif _use_numpy(s, backend):
        # The numpy kernel counts the tied negatives directly (cheaper than a second full count, see _count_numpy).
        modes = tuple("tie" if m is False and ties == "expected" else m for m in modes)
        counts = _count_numpy(s.numpy(), row_best, col_best, modes, budget, pairs=pairs)
    else:
        dev = s.device
        counts = _count_torch(s, torch.from_numpy(row_best).to(dev), torch.from_numpy(col_best).to(dev), modes, budget)
    return _tie_counts(ties, counts, (row_tied, col_tied))


def _positions(order: np.ndarray) -> np.ndarray:
    """Inverse of row-wise permutations ``[R, M]``: ``pos[r, order[r, k]] = k``."""
    pos = np.empty_like(order)
    np.put_along_axis(pos, order, np.broadcast_to(np.arange(order.shape[1]), order.shape), axis=1)
    return pos


def _published_rows(block: np.ndarray) -> np.ndarray:
    """Positions of every item in each row's ``np.argsort(row)[::-1]`` ``[R, M]``."""
    return _positions(np.argsort(block, axis=1)[:, ::-1])


def _first_positive(pos: np.ndarray, rows: np.ndarray, cols: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per query (segments of ``starts``, relative to the block): the best position of any of its positives."""
    return np.minimum.reduceat(pos[rows, cols], starts[:-1] - starts[0])


def _published_matrix(s: np.ndarray, pairs: _Pairs, budget: int) -> tuple[np.ndarray, np.ndarray]:
    n_i, n_c = s.shape
    i2t = np.empty(n_i, dtype=np.int64)
    rows = max(1, budget // (n_c * _ARGSORT_BYTES_PER_ENTRY))
    for r0 in range(0, n_i, rows):
        r1 = min(r0 + rows, n_i)
        lo, hi = pairs.img_starts[r0], pairs.img_starts[r1]
        pos = _published_rows(s[r0:r1])
        i2t[r0:r1] = _first_positive(pos, pairs.img[lo:hi] - r0, pairs.cap[lo:hi], pairs.img_starts[r0 : r1 + 1])
    t2i = np.empty(n_c, dtype=np.int64)
    cols = max(1, budget // (n_i * _ARGSORT_BYTES_PER_ENTRY))
    img_c, cap_c = pairs.img[pairs.by_caption], pairs.cap[pairs.by_caption]
    for c0 in range(0, n_c, cols):
        c1 = min(c0 + cols, n_c)
        lo, hi = pairs.cap_starts[c0], pairs.cap_starts[c1]
        # The column copied into a row: numpy's argsort of a strided 1-D column copies it the same way.
        pos = _published_rows(np.ascontiguousarray(s[:, c0:c1].T))
        t2i[c0:c1] = _first_positive(pos, cap_c[lo:hi] - c0, img_c[lo:hi], pairs.cap_starts[c0 : c1 + 1])
    return i2t, t2i


def _topk_matrix(s: torch.Tensor, pairs: _Pairs, ks: tuple[int, ...], budget: int) -> TopkRanks:
    """The clip_benchmark rule over the whole matrix: image rows, then caption columns (read in place)."""
    n_i, n_c = s.shape
    i2t = topk_direction(lambda r0, r1: s[r0:r1], n_i, n_c, pairs.img, pairs.cap, pairs.img_starts, ks, budget)
    img_c, cap_c = pairs.img[pairs.by_caption], pairs.cap[pairs.by_caption]
    t2i = topk_direction(lambda c0, c1: s[:, c0:c1].T, n_c, n_i, cap_c, img_c, pairs.cap_starts, ks, budget)
    return TopkRanks(ks, i2t[0], t2i[0], i2t[1], t2i[1])


def _matrix_ranks(
    sim: ArrayLike,
    caption_to_image: ArrayLike,
    ties: str,
    positives: str,
    texts: Sequence[str] | None,
    budget: int,
    backend: str,
    ks: Sequence[int] = (),
) -> tuple[np.ndarray, np.ndarray] | RankCounts | TopkRanks:
    _check_ties(ties)
    s, pairs = _prepare(sim, caption_to_image, positives, texts)
    if ties == "clip_benchmark":
        # Its recalls need the cut-offs up front (one torch.topk call per K); ranks alone need none.
        return _topk_matrix(s, pairs, _check_ks(ks) if ks else (), budget)
    if ties == "published":
        _positive_scores(s, pairs)  # the NaN check
        return _published_matrix(s.cpu().numpy(), pairs, budget)
    return _matrix_counts(s, pairs, ties, budget, backend)


def retrieval_ranks(
    sim: ArrayLike,
    caption_to_image: ArrayLike,
    *,
    ties: Ties = DEFAULT_TIES,
    positives: Positives = "image",
    texts: Sequence[str] | None = None,
    memory_budget_bytes: int = 64 * 2**20,
    backend: Backend = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks of every query in both directions, from a precomputed similarity matrix.

    Args:
        sim: similarity ``[N_i, N_c]`` (numpy array or tensor on any device; higher = more similar; no NaN).
        caption_to_image: image index of every caption ``[N_c]``; every image needs at least one caption.
        ties: ``"expected"``, ``"optimistic"``, ``"pessimistic"``, ``"published"`` or ``"clip_benchmark"`` (module
            docstring).
        positives: ``"image"`` (a caption matches its own image) or ``"text"`` (also every image owning the same
            normalised text); ``"text"`` needs ``texts``.
        texts: the caption texts ``[N_c]``, for ``positives="text"``.
        memory_budget_bytes: bound on the temporaries of the blocks in flight; a floating-point ``sim`` is read
            in place, never copied (integer scores are converted to float64 first).
        backend: ``"auto"`` (on CPU the compiled kernel where it builds, else numpy; torch elsewhere), ``"native"``
            (the compiled kernel, an error where it is unavailable), ``"numpy"`` or ``"torch"``; the counting
            rules only (``"published"`` argsorts with numpy, ``"clip_benchmark"`` calls torch.topk on ``sim``'s
            device).

    Returns:
        ``(i2t_ranks [N_i], t2i_ranks [N_c])`` as numpy arrays: int64, except under ``"expected"``, where they are
        the expected ranks (float64; for R@K use :func:`retrieval_metrics`, which takes the whole distribution).
        Under ``"clip_benchmark"`` they are positions in ``torch.topk``'s whole order; its R@K come from one
        torch.topk call per K (:func:`retrieval_metrics`).
    """
    out = _matrix_ranks(sim, caption_to_image, ties, positives, texts, memory_budget_bytes, backend)
    return _plain_ranks(out)


def retrieval_rank_counts(
    sim: ArrayLike,
    caption_to_image: ArrayLike,
    *,
    positives: Positives = "image",
    texts: Sequence[str] | None = None,
    memory_budget_bytes: int = 64 * 2**20,
    backend: Backend = "auto",
) -> RankCounts:
    """Per query of both directions: negatives above the best positive, negatives and positives tied with it.

    Every counting rule follows from these (:meth:`RankCounts.ranks`, :func:`metrics_from_counts`). Arguments as
    :func:`retrieval_ranks`.
    """
    return _matrix_ranks(sim, caption_to_image, "expected", positives, texts, memory_budget_bytes, backend)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


def metrics_from_ranks(i2t_ranks: ArrayLike, t2i_ranks: ArrayLike, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recalls, mR and rank statistics from 0-based integer ranks (one fixed order; see :func:`metrics_from_counts`).

    Args:
        i2t_ranks: 0-based rank of every image query ``[N_i]``.
        t2i_ranks: 0-based rank of every caption query ``[N_c]``.
        ks: the cut-offs ``K`` of ``R@K``.

    Returns:
        ``i2t_R@K`` and ``t2i_R@K`` for every K (percentages), ``mR`` (their mean), ``i2t_medr``, ``i2t_meanr``,
        ``t2i_medr``, ``t2i_meanr`` (1-based ranks), all floats.
    """
    ks = _check_ks(ks)
    out: dict[str, float] = {}
    recalls = []
    ranks = {"i2t": _as_numpy_ranks(i2t_ranks), "t2i": _as_numpy_ranks(t2i_ranks)}
    for direction, r in ranks.items():
        for k in ks:
            out[f"{direction}_R@{k}"] = float(100.0 * np.mean(r < k))
            recalls.append(out[f"{direction}_R@{k}"])
    out["mR"] = float(np.mean(recalls))
    for direction, r in ranks.items():
        out[f"{direction}_medr"] = float(np.median(r + 1))
        out[f"{direction}_meanr"] = float(np.mean(r + 1))
    return out


def _as_numpy_ranks(r: ArrayLike) -> np.ndarray:
    a = r.detach().cpu().numpy() if isinstance(r, torch.Tensor) else np.asarray(r)
    if a.size == 0:
        raise ValueError("no ranks given")
    if a.dtype.kind == "f" and not np.array_equal(a, np.round(a)):
        raise ValueError("metrics_from_ranks needs integer ranks; expected ranks go through metrics_from_counts")
    return a.reshape(-1).astype(np.int64)


def _plain_ranks(out: tuple[np.ndarray, np.ndarray] | RankCounts | TopkRanks) -> tuple[np.ndarray, np.ndarray]:
    """``(i2t, t2i)`` ranks of any rule's result (the expected ranks of :class:`RankCounts`)."""
    if isinstance(out, RankCounts):
        return out.ranks("expected")
    if isinstance(out, TopkRanks):
        return out.i2t, out.t2i
    return out


def _topk_metrics(out: TopkRanks, ks: Sequence[int]) -> dict[str, float]:
    """:func:`metrics_from_ranks` of the whole-order ranks, with each R@K (and so mR) from its own torch.topk call."""
    metrics = metrics_from_ranks(out.i2t, out.t2i, ks)
    recalls = []
    # The same keys, order and mean as metrics_from_ranks: only where a tie straddles K do the values differ.
    for direction, hits in (("i2t", out.i2t_hits), ("t2i", out.t2i_hits)):
        for k, hit in zip(out.ks, hits):
            metrics[f"{direction}_R@{k}"] = float(100.0 * np.mean(hit))
            recalls.append(metrics[f"{direction}_R@{k}"])
    metrics["mR"] = float(np.mean(recalls))
    return metrics


def _metrics(out: tuple[np.ndarray, np.ndarray] | RankCounts | TopkRanks, ks: Sequence[int]) -> dict[str, float]:
    if isinstance(out, TopkRanks):
        return _topk_metrics(out, ks)
    return metrics_from_counts(out, ks) if isinstance(out, RankCounts) else metrics_from_ranks(*out, ks)


def retrieval_metrics(
    sim: ArrayLike,
    caption_to_image: ArrayLike,
    *,
    ks: Sequence[int] = (1, 5, 10),
    ties: Ties = DEFAULT_TIES,
    positives: Positives = "image",
    texts: Sequence[str] | None = None,
    memory_budget_bytes: int = 64 * 2**20,
    backend: Backend = "auto",
) -> dict[str, float]:
    """Image-to-text and text-to-image retrieval scores of a precomputed similarity matrix.

    Args:
        sim: similarity ``[N_i, N_c]`` (numpy array or tensor on any device; no NaN).
        caption_to_image: image index of every caption ``[N_c]`` (any number of captions per image, at least one).
        ks: the cut-offs ``K`` of ``R@K``.
        ties: ``"expected"`` (default), ``"optimistic"``, ``"pessimistic"``, ``"published"`` or ``"clip_benchmark"``
            (module docstring).
        positives: ``"image"`` (default) or ``"text"`` (with ``texts``; see the module docstring).
        texts: the caption texts ``[N_c]``, for ``positives="text"``.
        memory_budget_bytes: bound on the temporaries of one block.
        backend: the counting kernels, as in :func:`retrieval_ranks` (the same numbers from each).

    Returns:
        ``{"i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "mR", "i2t_medr", "i2t_meanr",
        "t2i_medr", "t2i_meanr"}`` for the default ``ks`` (see :func:`metrics_from_ranks`).
    """
    out = _matrix_ranks(sim, caption_to_image, ties, positives, texts, memory_budget_bytes, backend, ks)
    return _metrics(out, ks)


# ------------------------------------------------------------------ from embeddings, block by block


def _embedding_ranks(
    image_emb: ArrayLike,
    text_emb: ArrayLike,
    caption_to_image: ArrayLike,
    ties: str,
    positives: str,
    texts: Sequence[str] | None,
    budget: int,
    backend: str,
    ks: Sequence[int] = (),
) -> tuple[np.ndarray, np.ndarray] | RankCounts | TopkRanks:
    _check_ties(ties)
    img, txt = _as_tensor(image_emb, "image_emb"), _as_tensor(text_emb, "text_emb")
    if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
        raise ValueError(f"embeddings must be [N_i, D] and [N_c, D], got {tuple(img.shape)} and {tuple(txt.shape)}")
    if img.device != txt.device:
        raise ValueError(f"image_emb is on {img.device} but text_emb is on {txt.device}")
    dtype = torch.promote_types(img.dtype, txt.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    img, txt = img.to(dtype), txt.to(dtype)
    n_i, n_c = img.shape[0], txt.shape[0]
    pairs = _Pairs.build(_check_index(caption_to_image, n_i, n_c), n_i, positives, texts)
    if ties == "clip_benchmark":
        ks = _check_ks(ks) if ks else ()
        cap_c, img_c = pairs.cap[pairs.by_caption], pairs.img[pairs.by_caption]
        # clip_benchmark multiplies texts @ images.T and reads image queries from its transpose: the same operand
        # order in both directions keeps the rounding of each product, and so its ties, as close to its as blocked
        # products can (equal wherever the products are exact).
        i2t = topk_direction(lambda r0, r1: (txt @ img[r0:r1].T).T, n_i, n_c, pairs.img, pairs.cap,
                             pairs.img_starts, ks, budget)
        t2i = topk_direction(lambda r0, r1: txt[r0:r1] @ img.T, n_c, n_i, cap_c, img_c, pairs.cap_starts, ks, budget)
        return TopkRanks(ks, i2t[0], t2i[0], i2t[1], t2i[1])
    published = ties == "published"
    modes = () if published else _modes(ties)
    numpy_counts = _use_numpy(img, backend)
    item = _ARGSORT_BYTES_PER_ENTRY if published else img.element_size() + 1  # score + comparison byte per entry

    def direction(queries: torch.Tensor, items: torch.Tensor, q_of_pair, item_of_pair, starts):
        """Blocks of query rows ``[R, M]``; each query's positives are a contiguous run of the pairs."""
        n_q, n_items = queries.shape[0], items.shape[0]
        rows = max(1, budget // (n_items * item))
        buf = _bool_buffer(min(rows, n_q), n_items) if numpy_counts and not published else None
        out = {m: np.empty(n_q, dtype=np.int64) for m in modes} if not published else np.empty(n_q, np.int64)
        tied = np.empty(n_q, dtype=np.int64)
        for r0 in range(0, n_q, rows):
            r1 = min(r0 + rows, n_q)
            lo, hi = starts[r0], starts[r1]
            block = queries[r0:r1] @ items.T
            # Each pair is scored from the block it is compared against, so a pair is never scored by two matrix
            # products (which may differ in the last bit and break ties inconsistently).
            q, it = q_of_pair[lo:hi] - r0, item_of_pair[lo:hi]
            ps = block[torch.from_numpy(q).to(block.device), torch.from_numpy(it).to(block.device)].cpu().numpy()
            if np.isnan(ps).any():
                raise ValueError("the similarity of some ground-truth pairs is NaN")
            if published:
                out[r0:r1] = _first_positive(_published_rows(block.cpu().numpy()), q, it, starts[r0 : r1 + 1])
                continue
            best, tied[r0:r1] = _segment_best(ps, starts[r0 : r1 + 1] - lo)
            for m in modes:
                if numpy_counts:
                    out[m][r0:r1] = _count_rows_numpy(block.numpy(), best, m, buf)
                else:
                    thr = torch.from_numpy(best).to(block.device)
                    out[m][r0:r1] = _count_rows_torch(block, thr, m).cpu().numpy()
        return out, tied

    i2t, i2t_tied = direction(img, txt, pairs.img, pairs.cap, pairs.img_starts)
    cap_c, img_c = pairs.cap[pairs.by_caption], pairs.img[pairs.by_caption]
    t2i, t2i_tied = direction(txt, img, cap_c, img_c, pairs.cap_starts)
    if published:
        return i2t, t2i
    return _tie_counts(ties, {m: (i2t[m], t2i[m]) for m in modes}, (i2t_tied, t2i_tied))


def retrieval_ranks_from_embeddings(
    image_emb: ArrayLike,
    text_emb: ArrayLike,
    caption_to_image: ArrayLike,
    *,
    ties: Ties = DEFAULT_TIES,
    positives: Positives = "image",
    texts: Sequence[str] | None = None,
    memory_budget_bytes: int = 256 * 2**20,
    backend: Backend = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks in both directions with ``sim = image_emb @ text_emb.T`` computed block by block.

    i2t reads blocks of image rows ``[R, N_c]``, t2i blocks of caption rows ``[R, N_i]``; each query's positive
    scores are taken from the same block they are compared against.

    Args:
        image_emb: image embeddings ``[N_i, D]`` (numpy or tensor; the similarity is the plain dot product, so
            L2-normalise first for cosine similarity).
        text_emb: caption embeddings ``[N_c, D]``, same dtype family and device as ``image_emb``.
        caption_to_image: image index of every caption ``[N_c]``.
        ties: the tie rule (as :func:`retrieval_ranks`).
        positives: ``"image"`` or ``"text"`` (with ``texts``).
        texts: the caption texts ``[N_c]``, for ``positives="text"``.
        memory_budget_bytes: bound on one similarity block plus its temporaries (at least one row is always used).
        backend: ``"auto"`` (on CPU the compiled kernel where it builds, else numpy; torch elsewhere), ``"native"``
            (the compiled kernel, an error where it is unavailable), ``"numpy"`` or ``"torch"``.

    Returns:
        ``(i2t_ranks [N_i], t2i_ranks [N_c])`` as in :func:`retrieval_ranks`.
    """
    out = _embedding_ranks(image_emb, text_emb, caption_to_image, ties, positives, texts, memory_budget_bytes, backend)
    return _plain_ranks(out)


def retrieval_metrics_from_embeddings(
    image_emb: ArrayLike,
    text_emb: ArrayLike,
    caption_to_image: ArrayLike,
    *,
    ks: Sequence[int] = (1, 5, 10),
    ties: Ties = DEFAULT_TIES,
    positives: Positives = "image",
    texts: Sequence[str] | None = None,
    memory_budget_bytes: int = 256 * 2**20,
) -> dict[str, float]:
    """Retrieval scores of ``sim = image_emb @ text_emb.T`` without ever holding the whole matrix.

    Args:
        image_emb: image embeddings ``[N_i, D]`` (L2-normalise first for cosine similarity).
        text_emb: caption embeddings ``[N_c, D]``.
        caption_to_image: image index of every caption ``[N_c]``.
        ks: the cut-offs ``K`` of ``R@K``.
        ties: the tie rule, ``"expected"`` by default (module docstring).
        positives: ``"image"`` or ``"text"`` (with ``texts``).
        texts: the caption texts ``[N_c]``, for ``positives="text"``.
        memory_budget_bytes: bound on one similarity block plus its temporaries (default 256 MiB).

    Returns:
        The same keys as :func:`retrieval_metrics`.
    """
    budget = memory_budget_bytes
    out = _embedding_ranks(image_emb, text_emb, caption_to_image, ties, positives, texts, budget, "auto", ks)
    return _metrics(out, ks)
