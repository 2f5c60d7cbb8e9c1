"""Hash retrieval metrics: packed codes, Hamming distances by popcount, mAP@K, P@K, radius precision/recall, PR curve.

Conventions (METHODS.md, "Shared evaluation semantics"):

* A code is ``b`` in ``{-1, +1}^K``; :func:`binarize` maps real outputs to codes with ``sign`` and ``0 -> +1``.
* :func:`pack_codes` stores bit ``k`` of a code as 1 when ``b[k] = +1``, little-endian within each byte/word
  (``np.packbits(..., bitorder="little")``), padded with zero bits up to a whole byte (``[N, ceil(K/8)]`` uint8)
  or word (``[N, ceil(K/64)]`` uint64). Queries and database are padded the same way, so the padding never
  contributes to a distance.
* Hamming distance ``d = popcount(q XOR x) = (K - <b_q, b_x>) / 2``.
* **Ranking**: the database is sorted by ``(distance, database index)`` ascending: ties in distance are broken by
  the lower database index first (a stable sort). The top-K is found from per-query distance histograms (distances
  are integers ``0..K``), without sorting the database.
* **Relevance**: same label (``labels [N]``), or at least one shared label (multi-hot ``labels [N, C]``), or any
  ``relevance(query_labels_chunk, db_labels) -> bool [q, N]`` function.
* **AP@K** of a query with relevance ``rel_1 .. rel_K`` of its top-K list and ``P@j`` the precision of the first
  ``j`` items: ``AP@K = (1 / Z) * sum_{j <= K, rel_j} P@j``, with

  - ``normalize="retrieved"`` (default; the usual deep-hashing definition, e.g. the ``CalcTopMap`` of DPSH/HashNet
    code): ``Z = #relevant items in the top K``;
  - ``normalize="min_rk"``: ``Z = min(R, K)``, ``R`` = number of relevant items in the database (so missing
    relevant items are penalised).

  ``AP@K = 0`` when ``Z = 0``. ``mAP@K`` is the mean over **all** queries (a query with no relevant item scores 0).
* ``P@K = #relevant in the top K / K`` (also when the database holds fewer than ``K`` items).
* Radius ``r``: the items with ``d <= r``. Precision = relevant ones / all of them, **0 when no item lies within r**;
  recall = relevant ones / ``R``, 0 when ``R = 0``. Both are averaged over all queries.
* **Leave-one-out** (query set = database): ``query_db_index[q]`` is the database index of query ``q`` (``-1`` when
  it is not in the database) and that item is removed from the query's ranking, radius counts and ``R`` by its
  index. It is never assumed to rank first: with several codes at distance 0 it need not.

Cost: distances come from XOR + popcount on packed 64-bit words (``np.bitwise_count``), computed for a chunk of
queries at a time so that memory stays within ``memory_budget_bytes`` for any database size. Everything runs on the
CPU in numpy; torch inputs are moved there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor
Relevance = Callable[[np.ndarray, np.ndarray], np.ndarray]
Normalize = Literal["retrieved", "min_rk"]

__all__ = [
    "binarize",
    "hamming_distance",
    "hash_metrics",
    "pack_codes",
    "pr_curve",
    "unpack_codes",
]

# Bytes of temporaries per (query, database item) pair in one chunk: the distance (1-2), the relevance flag (1), the
# histogram key (1-2) and, in the worst case (every item tied within the top-K threshold), the selection's flat
# index, row and column (24).
_BYTES_PER_PAIR = 32
# XOR words computed before they are counted (1 MiB): a slice that stays in cache.
_CACHE_WORDS = 2**17


def _to_numpy(x: ArrayLike | Sequence, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype == object:
        raise ValueError(f"{name} must be a numeric array, got dtype object")
    return a


if hasattr(np, "bitwise_count"):  # numpy >= 2.0

    def _popcount(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return np.bitwise_count(x, out=out)

else:  # pragma: no cover - numpy < 2.0 only
    _BYTE_POPCOUNT = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(1).astype(np.uint8)

    def _popcount(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        counts = _BYTE_POPCOUNT[x.view(np.uint8).reshape(*x.shape, x.dtype.itemsize)].sum(-1, dtype=np.uint8)
        if out is None:
            return counts
        out[...] = counts
        return out


def binarize(x: ArrayLike) -> np.ndarray:
    """Hash codes from real-valued outputs: ``sign(x)`` with ``0 -> +1``.

    Args:
        x: relaxed codes ``[N, K]`` (numpy or tensor, any device).

    Returns:
        Codes in ``{-1, +1}`` ``[N, K]`` (int8 numpy array).
    """
    a = _to_numpy(x, "x")
    if a.dtype.kind == "f" and np.isnan(a).any():
        raise ValueError("x contains NaN; a NaN output has no sign")
    return np.where(a >= 0, 1, -1).astype(np.int8)


def pack_codes(codes: ArrayLike, dtype: type[np.uint8] | type[np.uint64] = np.uint8) -> np.ndarray:
    """Pack ``{-1, +1}`` codes into bits (1 for +1), zero-padded to whole bytes or 64-bit words.

    Args:
        codes: codes ``[N, K]`` with values in ``{-1, +1}`` (numpy or tensor).
        dtype: ``np.uint8`` (``[N, ceil(K/8)]``) or ``np.uint64`` (``[N, ceil(K/64)]``, little-endian words).

    Returns:
        Packed codes, C-contiguous.
    """
    b = _to_numpy(codes, "codes")
    if b.ndim != 2:
        raise ValueError(f"codes must be [N, K], got shape {b.shape}")
    if not np.isin(b, (-1, 1)).all():
        raise ValueError("codes must hold only -1 and +1 (use binarize() for real-valued outputs)")
    packed = np.packbits(b > 0, axis=1, bitorder="little")
    if np.dtype(dtype) == np.uint8:
        return np.ascontiguousarray(packed)
    if np.dtype(dtype) != np.uint64:
        raise ValueError(f"dtype must be np.uint8 or np.uint64, got {dtype}")
    return _bytes_to_words(packed)


def _bytes_to_words(packed: np.ndarray) -> np.ndarray:
    """uint8 ``[N, B]`` -> little-endian uint64 ``[N, ceil(B/8)]`` (the extra bytes are zero)."""
    n, nbytes = packed.shape
    padded = np.zeros((n, -(-nbytes // 8) * 8), dtype=np.uint8)
    padded[:, :nbytes] = packed
    return padded.view("<u8").astype(np.uint64, copy=False)


def unpack_codes(packed: np.ndarray, n_bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`.

    Args:
        packed: packed codes ``[N, B]`` (uint8) or ``[N, W]`` (uint64).
        n_bits: code length ``K``.

    Returns:
        Codes in ``{-1, +1}`` ``[N, K]`` (int8).
    """
    p = np.ascontiguousarray(packed)
    if p.dtype == np.uint64:
        p = p.astype("<u8", copy=False).view(np.uint8)
    elif p.dtype != np.uint8:
        raise ValueError(f"packed codes must be uint8 or uint64, got {p.dtype}")
    bits = np.unpackbits(p, axis=1, count=n_bits, bitorder="little")
    return (bits.astype(np.int8) * 2 - 1).astype(np.int8)


def _as_words(codes: ArrayLike, n_bits: int | None, name: str) -> tuple[np.ndarray, int]:
    """Codes (``{-1, +1}`` or packed) -> uint64 words ``[N, W]`` and the code length."""
    a = _to_numpy(codes, name)
    if a.ndim != 2:
        raise ValueError(f"{name} must be [N, K] codes or [N, words] packed codes, got shape {a.shape}")
    if a.dtype in (np.uint8, np.uint64):
        if n_bits is None:
            raise ValueError(f"{name} looks packed ({a.dtype}); pass n_bits (or pass {{-1, +1}} codes)")
        capacity = a.shape[1] * a.dtype.itemsize * 8
        if not 0 < n_bits <= capacity:
            raise ValueError(f"n_bits={n_bits} does not fit {name} with {capacity} bits per row")
        words = _bytes_to_words(a) if a.dtype == np.uint8 else np.ascontiguousarray(a)
        return words, n_bits
    if n_bits is not None and n_bits != a.shape[1]:
        raise ValueError(f"{name} has {a.shape[1]} bits per code but n_bits={n_bits}")
    return pack_codes(a, np.uint64), a.shape[1]


def hamming_distance(
    query_packed: np.ndarray,
    db_packed: np.ndarray,
    *,
    dtype: type[np.integer] = np.int32,
    memory_budget_bytes: int = 256 * 2**20,
) -> np.ndarray:
    """Hamming distances between packed codes by XOR + popcount, computed a chunk of queries at a time.

    Args:
        query_packed: packed query codes ``[Q, B]`` (from :func:`pack_codes`).
        db_packed: packed database codes ``[N, B]``, same packing dtype.
        dtype: integer dtype of the result.
        memory_budget_bytes: bound on the temporaries of one chunk of queries.

    Returns:
        Distances ``[Q, N]``.
    """
    q, db = np.asarray(query_packed), np.asarray(db_packed)
    if q.dtype != db.dtype or q.dtype not in (np.uint8, np.uint64) or q.ndim != 2 or q.shape[1] != db.shape[1]:
        raise ValueError(
            f"query_packed and db_packed must be packed alike (uint8 or uint64, same width), "
            f"got {q.dtype} {q.shape} and {db.dtype} {db.shape}"
        )
    qw = _bytes_to_words(q) if q.dtype == np.uint8 else q
    dbw_t = np.ascontiguousarray((_bytes_to_words(db) if db.dtype == np.uint8 else db).T)
    out = np.empty((q.shape[0], db.shape[0]), dtype=dtype)
    step = max(1, memory_budget_bytes // max(1, 2 * db.shape[0]))  # the uint16 distances
    for q0 in range(0, q.shape[0], step):
        out[q0 : q0 + step] = _distance_block(qw[q0 : q0 + step], dbw_t, np.uint16)
    return out


def _distance_block(qw: np.ndarray, dbw_t: np.ndarray, dist_dtype: type[np.integer]) -> np.ndarray:
    """Distances ``[q, N]`` from query words ``[q, W]`` and transposed database words ``[W, N]``."""
    n_q, n_db = qw.shape[0], dbw_t.shape[1]
    dist = np.empty((n_q, n_db), dtype=dist_dtype)
    # Slices of the database small enough that the 8-byte XOR words stay in cache until they are counted.
    cols = min(n_db, max(4096, _CACHE_WORDS // n_q))
    xor = np.empty((n_q, cols), dtype=np.uint64)
    count = np.empty((n_q, cols), dtype=np.uint8)
    for c0 in range(0, n_db, cols):
        c1 = min(c0 + cols, n_db)
        x, cnt, out = xor[:, : c1 - c0], count[:, : c1 - c0], dist[:, c0:c1]
        # One word at a time over a contiguous row of the transposed database: no [q, N, W] temporary.
        for w in range(dbw_t.shape[0]):
            np.bitwise_xor(qw[:, w, None], dbw_t[w, None, c0:c1], out=x)
            if w == 0 and dist_dtype == np.uint8:
                _popcount(x, out=out)
            elif w == 0:
                out[...] = _popcount(x, out=cnt)
            else:
                out += _popcount(x, out=cnt)
    return dist


def _relevance_block(q_labels: np.ndarray, db_labels: np.ndarray, relevance: Relevance | None) -> np.ndarray:
    """Relevance ``[q, N]`` (bool) of a chunk of queries."""
    if relevance is not None:
        rel = np.asarray(relevance(q_labels, db_labels))
        if rel.shape != (len(q_labels), len(db_labels)):
            raise ValueError(f"relevance returned shape {rel.shape}, expected {(len(q_labels), len(db_labels))}")
        return rel.astype(bool, copy=False)
    if db_labels.ndim == 1:
        return q_labels[:, None] == db_labels[None, :]
    # Multi-hot: relevant when at least one label is shared (float32 counts are exact far beyond any label count).
    shared = q_labels.astype(np.float32) @ db_labels.astype(np.float32).T
    return shared > 0


class _Evaluation:
    """Per-query results over the whole database: distance histograms and the relevance of the top-K list."""

    def __init__(self, n_queries: int, n_bits: int, top: int):
        self.hist_all = np.zeros((n_queries, n_bits + 1), dtype=np.int64)  # items at distance d
        self.hist_rel = np.zeros((n_queries, n_bits + 1), dtype=np.int64)  # relevant items at distance d
        self.top_rel = np.zeros((n_queries, top), dtype=bool)  # relevance of the ranked top list


def _evaluate(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
    *,
    top: int,
    query_db_index: ArrayLike | None,
    exclude_self: bool,
    relevance: Relevance | None,
    n_bits: int | None,
    memory_budget_bytes: int,
) -> _Evaluation:
    qw, k_q = _as_words(query_codes, n_bits, "query_codes")
    dbw, k_db = _as_words(db_codes, n_bits, "db_codes")
    if k_q != k_db or qw.shape[1] != dbw.shape[1]:
        raise ValueError(f"query codes have {k_q} bits but database codes have {k_db}")
    k = k_q
    n_q, n_db = qw.shape[0], dbw.shape[0]
    q_labels, db_labels = _to_numpy(query_labels, "query_labels"), _to_numpy(db_labels, "db_labels")
    if len(q_labels) != n_q or len(db_labels) != n_db:
        raise ValueError(
            f"labels must have one row per code: {len(q_labels)} query labels for {n_q} codes, "
            f"{len(db_labels)} database labels for {n_db} codes"
        )
    if relevance is None and (q_labels.ndim != db_labels.ndim or q_labels.ndim not in (1, 2)):
        raise ValueError("labels must be [N] class indices or [N, C] multi-hot for both queries and database")
    self_index = _self_index(query_db_index, exclude_self, n_q, n_db)

    # Distances fit uint8 up to 254 bits; K + 1 marks the excluded item (farther than any real distance).
    dist_dtype = np.uint8 if k + 1 <= np.iinfo(np.uint8).max else np.uint16
    key_dtype = np.uint8 if 2 * (k + 1) + 1 <= np.iinfo(np.uint8).max else np.uint16
    if 2 * (k + 1) + 1 > np.iinfo(np.uint16).max:
        raise ValueError(f"codes of {k} bits are longer than supported (at most 32766)")
    dbw_t = np.ascontiguousarray(dbw.T)
    n_bins = k + 2
    ev = _Evaluation(n_q, k, top)
    step = max(1, memory_budget_bytes // max(1, _BYTES_PER_PAIR * n_db))
    for q0 in range(0, n_q, step):
        q1 = min(q0 + step, n_q)
        rows = np.arange(q1 - q0)
        dist = _distance_block(qw[q0:q1], dbw_t, dist_dtype)
        rel = _relevance_block(q_labels[q0:q1], db_labels, relevance)
        own = self_index[q0:q1]
        has_own = own >= 0
        dist[rows[has_own], own[has_own]] = k + 1

        # Joint histogram of (distance, relevant) per query from the key 2 * d + rel, kept in 1-2 bytes.
        key = np.left_shift(dist.astype(key_dtype), 1)
        np.bitwise_or(key, rel, out=key)
        hist = _row_histograms(key, 2 * n_bins).reshape(q1 - q0, n_bins, 2)
        del key
        ev.hist_all[q0:q1] = hist[:, : k + 1].sum(-1)
        ev.hist_rel[q0:q1] = hist[:, : k + 1, 1]
        ev.top_rel[q0:q1] = _top_relevance(dist, rel, ev.hist_all[q0:q1], top)
    return ev


def _row_histograms(key: np.ndarray, n_bins: int) -> np.ndarray:
    """Per-row counts ``[q, n_bins]`` of small non-negative integer keys ``[q, N]``."""
    if key.dtype == np.uint8:
        # torch counts uint8 directly; np.bincount first widens every key to 8 bytes (3x slower, measured).
        return torch.stack([torch.bincount(torch.from_numpy(row), minlength=n_bins) for row in key]).numpy()
    return np.stack([np.bincount(row, minlength=n_bins) for row in key])


def _self_index(query_db_index: ArrayLike | None, exclude_self: bool, n_q: int, n_db: int) -> np.ndarray:
    """Database index of every query to exclude (``-1``: none)."""
    if query_db_index is not None and exclude_self:
        raise ValueError("pass either query_db_index or exclude_self=True, not both")
    if query_db_index is None:
        if not exclude_self:
            return np.full(n_q, -1, dtype=np.intp)
        if n_q != n_db:
            raise ValueError(
                f"exclude_self=True needs the query set to be the database ({n_q} queries, {n_db} items); "
                "pass query_db_index otherwise"
            )
        return np.arange(n_q, dtype=np.intp)
    idx = _to_numpy(query_db_index, "query_db_index").reshape(-1)
    if idx.dtype.kind not in "iu" or len(idx) != n_q:
        raise ValueError(f"query_db_index must hold {n_q} integers (-1 = not in the database)")
    if idx.size and (idx.min() < -1 or idx.max() >= n_db):
        raise ValueError(f"query_db_index values must lie in [-1, {n_db})")
    return idx.astype(np.intp)


def _top_relevance(dist: np.ndarray, rel: np.ndarray, hist_all: np.ndarray, top: int) -> np.ndarray:
    """Relevance ``[q, top]`` of each query's first ``top`` items in (distance, index) order (False past the end)."""
    n_q = dist.shape[0]
    cum = np.cumsum(hist_all, axis=1)
    length = np.minimum(top, cum[:, -1])  # fewer items than ``top`` when the database is small
    # Threshold distance: the smallest t with at least ``length`` items at distance <= t.
    thr = (cum < length[:, None]).sum(1)
    thr = np.minimum(thr, hist_all.shape[1] - 1)
    # Every item within the threshold, in row-major order, so ascending database index inside each query.
    # flatnonzero + divmod: several times faster than a 2-D np.nonzero.
    flat = np.flatnonzero(dist <= thr[:, None].astype(dist.dtype))
    r, c = np.divmod(flat, dist.shape[1])
    d = dist[r, c]
    # Stable sort by (query, distance): equal distances keep the ascending index order.
    order = np.lexsort((d, r))
    r, c = r[order], c[order]
    counts = np.bincount(r, minlength=n_q)
    start = np.concatenate(([0], np.cumsum(counts)[:-1]))
    pos = np.arange(len(r)) - start[r]
    keep = pos < length[r]
    out = np.zeros((n_q, top), dtype=bool)
    out[r[keep], pos[keep]] = rel[r[keep], c[keep]]
    return out


def _average_precision(top_rel: np.ndarray, n_relevant: np.ndarray, k: int, normalize: Normalize) -> np.ndarray:
    """AP@k per query from the relevance of the ranked list ``[Q, >= k]``."""
    r = top_rel[:, :k]
    hits = np.cumsum(r, axis=1)
    precision = hits / np.arange(1, k + 1)
    total = (precision * r).sum(1)
    z = hits[:, -1] if normalize == "retrieved" else np.minimum(n_relevant, k)
    return np.divide(total, z, out=np.zeros(len(total)), where=z > 0)


def hash_metrics(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
    *,
    topk: Sequence[int] = (20,),
    radius: int | Sequence[int] = 2,
    query_db_index: ArrayLike | None = None,
    exclude_self: bool = False,
    normalize: Normalize = "retrieved",
    relevance: Relevance | None = None,
    n_bits: int | None = None,
    memory_budget_bytes: int = 256 * 2**20,
) -> dict[str, float]:
    """mAP@K, P@K and precision/recall within Hamming radius ``r``.

    Args:
        query_codes: query codes ``[Q, K]`` in ``{-1, +1}``, or packed codes (uint8/uint64, then ``n_bits``).
        db_codes: database codes ``[N, K]``, same form.
        query_labels: ``[Q]`` class indices or ``[Q, C]`` multi-hot labels.
        db_labels: ``[N]`` or ``[N, C]``, same form.
        topk: the cut-offs ``K`` of mAP@K and P@K.
        radius: the Hamming radius (or radii) of ``P@r`` / ``R@r``.
        query_db_index: database index of every query ``[Q]`` (``-1``: not in it), excluded from that query's
            results (leave-one-out).
        exclude_self: shorthand for ``query_db_index = arange(Q)`` when the queries are the database.
        normalize: ``"retrieved"`` (default) or ``"min_rk"`` normaliser of AP@K (see the module docstring).
        relevance: optional ``f(query_labels[q0:q1], db_labels) -> bool [q, N]`` replacing label equality.
        n_bits: code length, required for packed codes.
        memory_budget_bytes: bound on the temporaries of one chunk of queries.

    Returns:
        ``mAP@K`` and ``P@K`` for every K in ``topk`` and ``P@r{r}``, ``R@r{r}`` for every radius, as fractions in
        ``[0, 1]`` (e.g. ``{"mAP@20", "P@20", "P@r2", "R@r2"}`` by default).
    """
    if normalize not in ("retrieved", "min_rk"):
        raise ValueError(f"normalize must be 'retrieved' or 'min_rk', got {normalize!r}")
    ks = tuple(int(k) for k in topk)
    if not ks or min(ks) < 1:
        raise ValueError(f"topk must hold positive integers, got {topk}")
    radii = tuple(int(r) for r in ((radius,) if isinstance(radius, int | np.integer) else radius))
    if min(radii, default=0) < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    ev = _evaluate(
        query_codes,
        db_codes,
        query_labels,
        db_labels,
        top=max(ks),
        query_db_index=query_db_index,
        exclude_self=exclude_self,
        relevance=relevance,
        n_bits=n_bits,
        memory_budget_bytes=memory_budget_bytes,
    )
    n_relevant = ev.hist_rel.sum(1)
    out: dict[str, float] = {}
    for k in ks:
        out[f"mAP@{k}"] = float(_average_precision(ev.top_rel, n_relevant, k, normalize).mean())
        out[f"P@{k}"] = float((ev.top_rel[:, :k].sum(1) / k).mean())
    precision, recall = _radius_scores(ev)
    for r in radii:
        r_eff = min(r, precision.shape[1] - 1)  # every item lies within radius K
        out[f"P@r{r}"] = float(precision[:, r_eff].mean())
        out[f"R@r{r}"] = float(recall[:, r_eff].mean())
    return out


def _radius_scores(ev: _Evaluation) -> tuple[np.ndarray, np.ndarray]:
    """Per query and radius ``0..K``: precision and recall of the items within that radius ``[Q, K + 1]``."""
    within = np.cumsum(ev.hist_all, axis=1)
    rel_within = np.cumsum(ev.hist_rel, axis=1)
    n_relevant = rel_within[:, -1:]
    precision = np.divide(rel_within, within, out=np.zeros(within.shape), where=within > 0)
    recall = np.divide(rel_within, n_relevant, out=np.zeros(within.shape), where=n_relevant > 0)
    return precision, recall


def pr_curve(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
    *,
    query_db_index: ArrayLike | None = None,
    exclude_self: bool = False,
    relevance: Relevance | None = None,
    n_bits: int | None = None,
    memory_budget_bytes: int = 256 * 2**20,
) -> dict[str, np.ndarray]:
    """Precision-recall curve over Hamming radii ``0..K`` (mean over queries at each radius).

    Args:
        query_codes: query codes ``[Q, K]`` in ``{-1, +1}``, or packed (then ``n_bits``).
        db_codes: database codes ``[N, K]``, same form.
        query_labels: ``[Q]`` or ``[Q, C]`` labels.
        db_labels: ``[N]`` or ``[N, C]`` labels.
        query_db_index: database index of every query to exclude (``-1``: none).
        exclude_self: shorthand for ``query_db_index = arange(Q)``.
        relevance: optional relevance function (see :func:`hash_metrics`).
        n_bits: code length, required for packed codes.
        memory_budget_bytes: bound on the temporaries of one chunk of queries.

    Returns:
        ``radius`` ``[K + 1]`` (0..K), ``precision`` and ``recall`` ``[K + 1]`` (precision 0 for a query with no
        item within the radius), and ``retrieved`` ``[K + 1]`` (mean number of items within the radius).
    """
    ev = _evaluate(
        query_codes,
        db_codes,
        query_labels,
        db_labels,
        top=1,
        query_db_index=query_db_index,
        exclude_self=exclude_self,
        relevance=relevance,
        n_bits=n_bits,
        memory_budget_bytes=memory_budget_bytes,
    )
    precision, recall = _radius_scores(ev)
    return {
        "radius": np.arange(precision.shape[1]),
        "precision": precision.mean(0),
        "recall": recall.mean(0),
        "retrieved": np.cumsum(ev.hist_all, axis=1).mean(0),
    }
