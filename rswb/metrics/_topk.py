"""The ``"clip_benchmark"`` tie rule of :mod:`rswb.metrics.retrieval`: hits and ranks in ``torch.topk``'s order.

clip_benchmark (``clip_benchmark.metrics.zeroshot_retrieval``, version 1.6.2) calls ``torch.topk(scores, K, dim=1)``
on every query row and counts a query as a hit at ``K`` when any of the ``K`` indices is a positive. Among tied
scores torch.topk keeps whichever items its selection algorithm leaves in front, and that choice depends on ``K``
(``topk(row, 1)`` is often not the head of ``topk(row, 5)`` when the top scores tie). So no single rank per query
gives every R@K of clip_benchmark: each ``K`` here is its own ``torch.topk(row, K)`` call, like there, and the rank
(for ``medr``, ``meanr`` and ``retrieval_ranks``) is the position of the first positive in ``torch.topk(row, M)``,
the whole order. That order starts with the items above the best positive score in any case, so only rows where a
negative ties that score are sorted; the others' rank is the count above it.

On CPU torch.topk orders each row from that row's values alone (not its neighbours, not its strides), so the
result does not depend on how the rows are blocked; on CUDA it is another algorithm and may break ties otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

# Bytes per score of a block in flight: the scores (up to float64), the positive mask, the masked copy and the
# comparison masks of the rank count, or, for rows with a tie, the values and int64 indices of the whole torch.topk
# (the per-K calls are smaller).
_BYTES_PER_ENTRY = 32


@dataclass(frozen=True)
class TopkRanks:
    """Both directions under the ``"clip_benchmark"`` rule.

    Attributes:
        ks: the cut-offs the hits were computed for (may be empty: ranks only).
        i2t: 0-based position of each image query's first positive in ``torch.topk(row, N_c)`` ``[N_i]`` (int64).
        t2i: the same for each caption query over ``torch.topk(column, N_i)`` ``[N_c]``.
        i2t_hits: whether ``torch.topk(row, K)`` holds a positive ``[len(ks), N_i]`` (bool), per K of ``ks``.
        t2i_hits: the same for the caption queries ``[len(ks), N_c]``.
    """

    ks: tuple[int, ...]
    i2t: np.ndarray
    t2i: np.ndarray
    i2t_hits: np.ndarray
    t2i_hits: np.ndarray


def topk_block(
    block: torch.Tensor, rows: np.ndarray, cols: np.ndarray, ks: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Ranks and per-K hits of a block of queries in ``torch.topk``'s order.

    Args:
        block: scores of ``R`` queries against all ``M`` items ``[R, M]`` (any device; higher first).
        rows: block row of every positive pair ``[P]`` (int64; every row has at least one).
        cols: item of every positive pair ``[P]``.
        ks: the cut-offs ``K``.

    Returns:
        ``(rank [R] int64, hits [len(ks), R] bool)``: ``rank`` is the position of the row's first positive in
        ``torch.topk(block, M, dim=1)``; ``hits[i]`` says whether ``torch.topk(block, min(ks[i], M), dim=1)``
        returns a positive (``K >= M`` returns every item, where clip_benchmark's own call would raise).
    """
    n_rows, n_items = block.shape
    dev = block.device
    r, c = torch.from_numpy(rows).to(dev), torch.from_numpy(cols).to(dev)
    if torch.isnan(block[r, c]).any():
        # torch.topk puts NaN first: a NaN ground-truth score would silently count as retrieved.
        raise ValueError("the similarity of some ground-truth pairs is NaN")
    positive = torch.zeros(n_rows, n_items, dtype=torch.bool, device=dev)
    positive[r, c] = True
    hits = np.empty((len(ks), n_rows), dtype=bool)
    for i, k in enumerate(ks):
        # The call clip_benchmark makes (sorted=True, the default); the kept set is what matters, not its order.
        idx = torch.topk(block, min(k, n_items), dim=1).indices
        hits[i] = positive.gather(1, idx).any(dim=1).cpu().numpy()
    # Whatever the order among ties, the whole order starts with the items above the best positive score s* (NaN
    # counts as above: torch.topk puts it first), so a row whose s* no negative shares has that count as its rank;
    # only the other rows need the whole torch.topk (a sort, the cost of this rule), and torch.topk orders each row
    # from its own values, so sorting just those rows gives their order in the whole block.
    best = block.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)
    rank = ((block > best) | torch.isnan(block)).sum(dim=1)
    tied = torch.nonzero(((block == best) & ~positive).any(dim=1)).flatten()
    if tied.numel():
        in_order = positive[tied].gather(1, torch.topk(block[tied], n_items, dim=1).indices)
        # argmax returns the first maximum, i.e. the first positive (every row has one).
        rank[tied] = in_order.to(torch.uint8).argmax(dim=1)
    return rank.cpu().numpy().astype(np.int64), hits


def topk_direction(
    block_of: Callable[[int, int], torch.Tensor],
    n_queries: int,
    n_items: int,
    query_of_pair: np.ndarray,
    item_of_pair: np.ndarray,
    starts: np.ndarray,
    ks: tuple[int, ...],
    budget: int,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`topk_block` over all queries of one direction, in blocks of rows that fit ``budget`` bytes.

    Args:
        block_of: ``block_of(q0, q1)`` gives the scores of queries ``q0:q1`` against every item ``[q1 - q0, M]``.
        n_queries: number of queries ``Q``.
        n_items: number of items ``M``.
        query_of_pair: query of every positive pair, sorted by query ``[P]``.
        item_of_pair: item of every positive pair ``[P]``.
        starts: where each query's run of pairs starts ``[Q + 1]``.
        ks: the cut-offs ``K``.
        budget: bound on the bytes of one block and its temporaries (at least one row is always used).

    Returns:
        ``(rank [Q] int64, hits [len(ks), Q] bool)`` as :func:`topk_block`.
    """
    rows = max(1, budget // (n_items * _BYTES_PER_ENTRY))
    rank = np.empty(n_queries, dtype=np.int64)
    hits = np.empty((len(ks), n_queries), dtype=bool)
    for q0 in range(0, n_queries, rows):
        q1 = min(q0 + rows, n_queries)
        lo, hi = starts[q0], starts[q1]
        rank[q0:q1], hits[:, q0:q1] = topk_block(block_of(q0, q1), query_of_pair[lo:hi] - q0, item_of_pair[lo:hi], ks)
    return rank, hits
