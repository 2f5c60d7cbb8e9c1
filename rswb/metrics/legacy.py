"""Metrics as computed by published code, kept only so that our columns can be compared with published tables.

Never use these for model selection: each differs from the standard definition in :mod:`rswb.metrics` in a way
documented below (`docs/methods.md` lists them among the bugs of the public code).
"""

from __future__ import annotations

import numpy as np
import torch

from rswb.metrics.hashing import binarize, hamming_distance, pack_codes

__all__ = ["dhcl_map_at_k"]


def dhcl_map_at_k(codes: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, k: int = 20) -> float:
    """DHCL's "MAP@K" of a leave-one-out set, as its evaluation code computes it.

    Each query ranks the whole set (including itself) by Hamming distance, takes the first ``K + 1`` items and
    drops the **first one** assuming it is the query itself (self-exclusion by rank: with ties at distance 0 this
    may drop a true neighbour and keep the query). AP is normalised by the number of relevant items retrieved in
    those ``K`` (the "retrieved" normaliser); queries retrieving none contribute 0. Ties are broken by index.

    Args:
        codes: +-1 codes ``[N, B]`` (queries = database).
        labels: class indices ``[N]``.
        k: the cut-off.

    Returns:
        The mean over queries, a fraction in ``[0, 1]``.
    """
    c = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    packed = pack_codes(binarize(c))
    dist = hamming_distance(packed, packed)
    order = np.argsort(dist, axis=1, kind="stable")[:, 1 : k + 1]
    rel = (y[order] == y[:, None]).astype(np.float64)
    hits = np.cumsum(rel, axis=1)
    precision = hits / np.arange(1, rel.shape[1] + 1)
    n_rel = rel.sum(1)
    ap = np.divide((precision * rel).sum(1), n_rel, out=np.zeros_like(n_rel), where=n_rel > 0)
    return float(ap.mean())
