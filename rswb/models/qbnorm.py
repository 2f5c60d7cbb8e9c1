"""Query-bank normalisation at inference: the Dynamic Inverted Softmax of QB-Norm.

Bogolin et al., "Cross Modal Retrieval with Querybank Normalisation", CVPR 2022. A gallery item that is the
nearest neighbour of many queries (a *hub*) wins searches it should not; QB-Norm rescales each gallery item's
scores by how strongly a bank of training queries, of the same modality as the test queries, is drawn to it.

For test queries ``Q`` against a gallery ``G`` with scores ``s`` ``[Q, G]`` and the bank's scores ``b`` ``[B, G]``
against the same gallery:

* the **activation set** is every gallery item that is the top-1 of at least one bank query
  (:func:`querybank_activation`; top-``k`` in the paper's generalisation);
* a test query whose own top-1 item lies in the activation set gets the **inverted softmax** scores
  ``exp(beta s[q, g]) / sum_b exp(beta b[b, g])``, normalised per gallery column over the bank; any other query
  keeps its scores (the "dynamic" part: queries far from every hub are left alone, where the plain inverted softmax
  hurts them).

Only the order of the items within each query matters to retrieval, so the normalised rows are returned as the
logarithm of the inverted softmax, ``beta s[q, g] - logsumexp_b(beta b[b, g])``: the same order, with no overflow
at any ``beta`` and no underflow of scores far below the hubs. Rows of the two kinds then live on different
scales, which is harmless because no metric compares scores across queries.

No learned weights: this is a pure function of score matrices, applied after a retrieval model is trained.
"""

from __future__ import annotations

import math
import numbers

import torch

__all__ = ["dynamic_inverted_softmax", "inverted_softmax", "querybank_activation"]

# Bank entries converted to float64 at a time by inverted_softmax (8 MiB per 2**20).
_BLOCK_ENTRIES = 4 * 2**20


def _check(scores: torch.Tensor, bank_scores: torch.Tensor, beta: float) -> float:
    """Validate the shapes and return ``beta`` as a float."""
    if scores.ndim != 2 or bank_scores.ndim != 2:
        raise ValueError(f"scores and bank_scores must be 2-D [Q, G] and [B, G], got {tuple(scores.shape)} and "
                         f"{tuple(bank_scores.shape)}")
    if scores.shape[1] != bank_scores.shape[1]:
        raise ValueError(f"scores has {scores.shape[1]} gallery columns but bank_scores has {bank_scores.shape[1]}: "
                         "the bank must be scored against the same gallery")
    if bank_scores.shape[0] == 0:
        raise ValueError("the query bank is empty")
    if not isinstance(beta, numbers.Real) or isinstance(beta, bool) or not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a positive finite number, got {beta!r}")
    return float(beta)


def _result_dtype(scores: torch.Tensor, bank_scores: torch.Tensor) -> torch.dtype:
    dtype = torch.promote_types(scores.dtype, bank_scores.dtype)
    return dtype if dtype.is_floating_point and dtype.itemsize >= 4 else torch.float32


def querybank_activation(bank_scores: torch.Tensor, k: int = 1) -> torch.Tensor:
    """The activation set: gallery items among the top ``k`` of at least one bank query.

    Args:
        bank_scores: scores of the bank queries against the gallery ``[B, G]`` (higher = more similar).
        k: how many of each bank query's best items count (the paper's default and ours: 1). Ties at the
            ``k``-th place are broken by ``torch.topk`` (for ``k = 1``: the first maximal item).

    Returns:
        ``[G]`` bool mask, on ``bank_scores``'s device.
    """
    if bank_scores.ndim != 2:
        raise ValueError(f"bank_scores must be [B, G], got shape {tuple(bank_scores.shape)}")
    if not 1 <= k <= bank_scores.shape[1]:
        raise ValueError(f"k must lie in [1, {bank_scores.shape[1]}] (the gallery size), got {k}")
    top = bank_scores.argmax(1, keepdim=True) if k == 1 else bank_scores.topk(k, dim=1).indices
    active = torch.zeros(bank_scores.shape[1], dtype=torch.bool, device=bank_scores.device)
    active[top.reshape(-1)] = True
    return active


def inverted_softmax(scores: torch.Tensor, bank_scores: torch.Tensor, beta: float) -> torch.Tensor:
    """Log inverted softmax of every query: ``beta s[q, g] - logsumexp_b(beta bank[b, g])``.

    The logarithm of ``exp(beta s) / sum_b exp(beta b)``, the bank sum taken per gallery column (column ``g`` of
    ``scores`` is divided by the bank's mass on the same item ``g``).

    Args:
        scores: test queries against the gallery ``[Q, G]``.
        bank_scores: bank queries against the same gallery ``[B, G]``.
        beta: inverse temperature (> 0).

    Returns:
        ``[Q, G]`` in the promoted floating dtype of the inputs (at least float32), on ``scores``'s device.
    """
    beta = _check(scores, bank_scores, beta)
    dtype = _result_dtype(scores, bank_scores)
    # The bank sum runs in float64 (tens of thousands of terms, and its log is subtracted from values of size
    # ~beta), over blocks of bank rows so that the float64 copy stays small whatever the bank's size.
    rows = max(1, _BLOCK_ENTRIES // max(1, bank_scores.shape[1]))
    log_mass = None
    for r0 in range(0, bank_scores.shape[0], rows):
        block = beta * bank_scores[r0 : r0 + rows].to(scores.device, torch.float64)
        part = torch.logsumexp(block, dim=0)  # [G]
        log_mass = part if log_mass is None else torch.logaddexp(log_mass, part)
    return (beta * scores.to(torch.float64) - log_mass).to(dtype)


def dynamic_inverted_softmax(scores: torch.Tensor, bank_scores: torch.Tensor, beta: float, *,
                             k: int = 1) -> torch.Tensor:
    """QB-Norm's Dynamic Inverted Softmax (module docstring) of test query scores, given a bank's scores.

    Args:
        scores: test queries against the gallery ``[Q, G]`` (e.g. caption queries x test images).
        bank_scores: the bank (training queries of the same modality) against the same gallery ``[B, G]``.
        beta: inverse temperature of the inverted softmax (> 0; the paper uses 20 and tunes it on validation).
        k: the activation set is every item among the top ``k`` of some bank query (default 1, the paper's).

    Returns:
        ``[Q, G]`` scores in the promoted floating dtype of the inputs (at least float32) on ``scores``'s device:
        row ``q`` is :func:`inverted_softmax` (the log of the paper's score, the same order) when the query's top-1
        item (first maximum) lies in the activation set, else ``scores[q]`` unchanged.
    """
    beta = _check(scores, bank_scores, beta)
    active = querybank_activation(bank_scores, k).to(scores.device)
    normalise = active[scores.argmax(1)]  # [Q]
    out = scores.to(_result_dtype(scores, bank_scores), copy=True)
    if normalise.any():
        out[normalise] = inverted_softmax(scores[normalise], bank_scores, beta)
    return out
