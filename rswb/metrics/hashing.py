"""Hash retrieval metrics: packed codes, Hamming distances by popcount, mAP@K, P@K, radius precision/recall, PR curve.

Conventions (docs/methods.md, "Evaluation protocols"):

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
* **mAP@all**: AP over the whole ranking, ``(1 / R) * sum_{j: rel_j} P@j`` over every position ``j`` of the database
  (``R`` relevant items, 0 when ``R = 0``); the "mAP" of papers that rank the full database (DHCNN, DPSH re-runs).
  It needs each query's full ranking (a stable radix sort of its ``uint8``/``uint16`` distances, ~4 ms per million
  items), so :func:`hash_metrics` takes ``map_all=False`` to skip it at scale.
* ``P@K = #relevant in the top K / K`` (also when the database holds fewer than ``K`` items).
* Radius ``r``: the items with ``d <= r``. Precision = relevant ones / all of them, **0 when no item lies within r**;
  recall = relevant ones / ``R``, 0 when ``R = 0``. Both are averaged over all queries.
* **Leave-one-out** (query set = database): ``query_db_index[q]`` is the database index of query ``q`` (``-1`` when
  it is not in the database) and that item is removed from the query's ranking, radius counts and ``R`` by its
  index. It is never assumed to rank first: with several codes at distance 0 it need not.

Cost: distances come from XOR + popcount on packed 64-bit words (``np.bitwise_count``), computed for a chunk of
queries at a time so that memory stays within ``memory_budget_bytes`` for any database size. Chunks are shared out to
``torch.get_num_threads()`` threads (numpy's ufuncs release the GIL). For large databases :func:`hash_metrics` takes
only the counts it reports (within each radius, ``R``, the top-K threshold), each one comparison and popcount,
instead of full distance histograms. Everything runs on the CPU in numpy; torch inputs are moved there.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor
Relevance = Callable[[np.ndarray, np.ndarray], np.ndarray]
Normalize = Literal["retrieved", "min_rk"]

__all__ = [
    "binarize",
    "hamming_distance",
    "hamming_ranking",
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
# Below this many (query, item) pairs the whole evaluation takes about a millisecond: one thread, no pool.
_MIN_THREADED_PAIRS = 2**20
# From this database size on, hash_metrics takes threshold counts instead of full histograms (see _evaluate).
_PROBE_MIN_DB = 2**15


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


def _distance_block(
    qw: np.ndarray,
    dbw_t: np.ndarray,
    dist_dtype: type[np.integer],
    out: np.ndarray | None = None,
    scratch: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Distances ``[q, N]`` from query words ``[q, W]`` and transposed database words ``[W, N]``.

    ``out`` (``[q, N]`` of ``dist_dtype``) and ``scratch`` (from :func:`_distance_scratch`) are reused when given, so
    that a loop over chunks of queries does not fault in fresh pages for every chunk.
    """
    n_q, n_db = qw.shape[0], dbw_t.shape[1]
    dist = np.empty((n_q, n_db), dtype=dist_dtype) if out is None else out
    xor, count = _distance_scratch(n_q, n_db) if scratch is None else scratch
    cols = xor.shape[1]
    for c0 in range(0, n_db, cols):
        c1 = min(c0 + cols, n_db)
        x, cnt, o = xor[:n_q, : c1 - c0], count[:n_q, : c1 - c0], dist[:, c0:c1]
        # One word at a time over a contiguous row of the transposed database: no [q, N, W] temporary.
        for w in range(dbw_t.shape[0]):
            np.bitwise_xor(qw[:, w, None], dbw_t[w, None, c0:c1], out=x)
            if w == 0 and dist_dtype == np.uint8:
                _popcount(x, out=o)
            elif w == 0:
                o[...] = _popcount(x, out=cnt)
            else:
                o += _popcount(x, out=cnt)
    return dist


def _distance_scratch(n_q: int, n_db: int) -> tuple[np.ndarray, np.ndarray]:
    """XOR words and their counts for :func:`_distance_block`: slices of the database small enough to stay in cache."""
    cols = min(n_db, max(4096, _CACHE_WORDS // max(1, n_q)))
    return np.empty((n_q, cols), dtype=np.uint64), np.empty((n_q, cols), dtype=np.uint8)


def _relevance_block(
    q_labels: np.ndarray, db_labels: np.ndarray, relevance: Relevance | None, out: np.ndarray | None = None
) -> np.ndarray:
    """Relevance ``[q, N]`` (bool) of a chunk of queries (class labels are compared into ``out`` when given)."""
    if relevance is not None:
        rel = np.asarray(relevance(q_labels, db_labels))
        if rel.shape != (len(q_labels), len(db_labels)):
            raise ValueError(f"relevance returned shape {rel.shape}, expected {(len(q_labels), len(db_labels))}")
        return rel.astype(bool, copy=False)
    if db_labels.ndim == 1:
        return np.equal(q_labels[:, None], db_labels[None, :], out=out)
    # Multi-hot: relevant when at least one label is shared (float32 counts are exact far beyond any label count).
    shared = q_labels.astype(np.float32) @ db_labels.astype(np.float32).T
    return shared > 0


class _Evaluation:
    """Per-query results over the whole database.

    Always: ``top_rel`` ``[Q, top]`` (relevance of the ranked top list) and ``n_relevant`` ``[Q]`` (``R``); ``ap_all``
    ``[Q]`` (AP over the whole ranking) when :func:`_evaluate` is asked for it, zeros otherwise. Then
    either the full distance histograms ``hist_all`` / ``hist_rel`` ``[Q, K + 1]`` (items, relevant items at
    distance ``d``; for the PR curve), or only the counts within the requested radii ``within`` / ``rel_within``
    ``[Q, len(radii)]`` (what :func:`hash_metrics` reports).
    """

    def __init__(self, n_queries: int, n_bits: int, top: int, radii: tuple[int, ...] | None):
        self.top_rel = np.zeros((n_queries, top), dtype=bool)
        self.ap_all = np.zeros(n_queries, dtype=np.float64)  # AP over the whole ranking, when asked for
        self.n_relevant = np.zeros(n_queries, dtype=np.int64)
        if radii is None:
            self.hist_all = np.zeros((n_queries, n_bits + 1), dtype=np.int64)
            self.hist_rel = np.zeros((n_queries, n_bits + 1), dtype=np.int64)
        else:
            self.within = np.zeros((n_queries, len(radii)), dtype=np.int64)
            self.rel_within = np.zeros((n_queries, len(radii)), dtype=np.int64)


def _evaluate(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
    *,
    top: int,
    radii: Sequence[int] | None = None,
    query_db_index: ArrayLike | None,
    exclude_self: bool,
    relevance: Relevance | None,
    n_bits: int | None,
    memory_budget_bytes: int,
    map_all: bool = False,
) -> _Evaluation:
    """Rank the database for every query; ``radii=None`` keeps full histograms, else counts within ``radii``.

    ``map_all``: also the AP of every query over its whole (distance, index) ranking (``ev.ap_all``).

    Two ways to the same numbers, chosen by database size:

    * **histograms** (databases under ``_PROBE_MIN_DB`` items, and the PR curve): one ``np.bincount`` per query of
      the key ``2 * d + relevant``; every count is read off it.
    * **threshold counts** (large databases, :func:`hash_metrics`): only the counts that are reported are taken, each
      as one comparison of the distances with a threshold and a ``count_nonzero``: the items within each radius and
      the relevant ones among them, ``R``, and the top-K threshold distance, found by a few such counts around the
      previous query's threshold; the top list is then sorted out of the items within that threshold only.
      ``np.bincount`` costs ~1 ms per million items and holds the GIL; a comparison and a count cost ~0.08 ms.

    Chunks of queries are shared out to ``_default_workers()`` threads, each with its own buffers.
    """
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
    class_labels = relevance is None and db_labels.ndim == 1
    if class_labels:
        q_labels, db_labels = _compact_labels(q_labels, db_labels)
    radii_eff = None if radii is None else tuple(min(int(r), k) for r in radii)  # every item lies within radius K
    probe = radii is not None and n_db >= _PROBE_MIN_DB
    ev = _Evaluation(n_q, k, top, None if radii is None else tuple(radii))
    workers = _default_workers() if n_q * n_db >= _MIN_THREADED_PAIRS else 1
    step = max(1, memory_budget_bytes // max(1, _BYTES_PER_PAIR * n_db * workers))
    chunks = iter(range(0, n_q, step))
    workers = max(1, min(workers, -(-n_q // step)))
    lock = threading.Lock()

    def work() -> None:
        # Buffers reused from chunk to chunk: fresh [q, N] arrays would fault in new pages every time.
        rows = min(step, n_q)
        dist_buf = np.empty((rows, n_db), dtype=dist_dtype)
        rel_buf = np.empty((rows, n_db), dtype=bool)
        mask_buf = np.empty((rows, n_db), dtype=bool)
        key_buf = None if probe else np.empty((rows, n_db), dtype=key_dtype)
        scratch = _distance_scratch(rows, n_db)
        recent: list[int] = []  # the last top-K thresholds: their median is the first guess of the next one
        while True:
            with lock:
                q0 = next(chunks, None)
            if q0 is None:
                return
            q1 = min(q0 + step, n_q)
            n = q1 - q0
            dist = _distance_block(qw[q0:q1], dbw_t, dist_dtype, out=dist_buf[:n], scratch=scratch)
            rel = rel_buf[:n]
            if class_labels:
                np.equal(q_labels[q0:q1, None], db_labels[None, :], out=rel)
            else:
                np.copyto(rel, _relevance_block(q_labels[q0:q1], db_labels, relevance))
            own = self_index[q0:q1]
            has_own = own >= 0
            own_rows, own_cols = np.arange(n)[has_own], own[has_own]
            dist[own_rows, own_cols] = k + 1
            length = np.minimum(top, n_db - has_own)  # fewer items than ``top`` when the database is small
            if map_all:
                for j in range(n):
                    ev.ap_all[q0 + j] = _full_ranking_ap(dist[j], rel[j], bool(has_own[j]))

            if probe:
                # Per query: one comparison and one count_nonzero per count (1-D count_nonzero is the fastest count
                # of a bool row numpy has: ~0.04 ms per million).
                for j in range(n):
                    d_j, rel_j, mask = dist[j], rel[j], mask_buf[j]
                    ev.n_relevant[q0 + j] = np.count_nonzero(rel_j) - (rel_j[own[j]] if has_own[j] else 0)
                    count_within = functools.partial(_count_within, d_j, mask)
                    guess = sorted(recent)[len(recent) // 2] if recent else k // 4
                    thr = _smallest_threshold(count_within, int(length[j]), k, guess)
                    recent = [*recent[-14:], thr]
                    # The items within the threshold (ascending index): the top list is their stable sort by
                    # distance, and every radius up to the threshold is counted among them.
                    np.less_equal(d_j, thr, out=mask)
                    idx = np.flatnonzero(mask)
                    d_idx, rel_idx = d_j[idx], rel_j[idx]
                    ev.top_rel[q0 + j, : min(len(idx), length[j])] = rel_idx[
                        np.argsort(d_idx, kind="stable")[: length[j]]
                    ]
                    for i, r in enumerate(radii_eff):
                        if r <= thr:
                            within = d_idx <= r
                            ev.within[q0 + j, i] = np.count_nonzero(within)
                            ev.rel_within[q0 + j, i] = np.count_nonzero(within & rel_idx)
                        else:
                            np.less_equal(d_j, r, out=mask)
                            ev.within[q0 + j, i] = np.count_nonzero(mask)
                            np.logical_and(mask, rel_j, out=mask)
                            ev.rel_within[q0 + j, i] = np.count_nonzero(mask)
            else:
                # Joint histogram of (distance, relevant) per query from the key 2 * d + rel, in 1-2 bytes.
                key = key_buf[:n]
                np.left_shift(dist, 1, out=key, dtype=key_dtype)
                np.bitwise_or(key, rel, out=key)
                hist = _row_histograms(key, 2 * (k + 2)).reshape(n, k + 2, 2)
                hist_all, hist_rel = hist[:, : k + 1].sum(-1), hist[:, : k + 1, 1]
                ev.n_relevant[q0:q1] = hist_rel.sum(1)
                cum = np.cumsum(hist_all, axis=1)
                if radii is None:
                    ev.hist_all[q0:q1], ev.hist_rel[q0:q1] = hist_all, hist_rel
                else:
                    ev.within[q0:q1] = cum[:, radii_eff]
                    ev.rel_within[q0:q1] = np.cumsum(hist_rel, axis=1)[:, radii_eff]
                # Threshold distance: the smallest t with at least ``length`` items at distance <= t.
                thr = np.minimum((cum < length[:, None]).sum(1), k)
                ev.top_rel[q0:q1] = _top_relevance(dist, rel, thr, length, top, mask_buf[:n])

    if workers == 1:
        work()
    else:
        # numpy's ufuncs release the GIL, so chunks of queries run in parallel threads.
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rswb-hash") as pool:
            for f in [pool.submit(work) for _ in range(workers)]:
                f.result()
    return ev


def _full_ranking_ap(dist_row: np.ndarray, rel_row: np.ndarray, has_own: bool) -> float:
    """AP of one query over its whole ranking by (distance, index); the excluded item (distance K + 1) sorts last."""
    # kind="stable" is a radix sort for 8/16-bit integers (linear time) and keeps ascending index among ties.
    ranked_rel = rel_row[np.argsort(dist_row, kind="stable")]
    if has_own:
        ranked_rel = ranked_rel[:-1]
    pos = np.flatnonzero(ranked_rel)  # 0-based positions of the relevant items
    if len(pos) == 0:
        return 0.0
    return float(np.mean(np.arange(1, len(pos) + 1) / (pos + 1)))


def _count_within(dist_row: np.ndarray, mask: np.ndarray, t: int) -> int:
    """How many entries of ``dist_row`` ``[N]`` are ``<= t`` (``mask`` ``[N]``: a bool scratch row)."""
    np.less_equal(dist_row, t, out=mask)
    return int(np.count_nonzero(mask))


def _smallest_threshold(count_within: Callable[[int], int], length: int, k: int, guess: int) -> int:
    """The smallest ``t`` in ``[0, k]`` with ``count_within(t) >= length`` (``count_within`` grows with ``t``).

    Gallops from ``guess`` in the needed direction, then bisects: two calls when the guess is right, about
    ``2 log2(k)`` at worst. ``count_within(k)`` (every item) is always at least ``length``.
    """
    known: dict[int, bool] = {}

    def ok(t: int) -> bool:
        if t not in known:
            known[t] = count_within(t) >= length
        return known[t]

    t = min(max(guess, 0), k)
    step = 1
    if ok(t):
        hi = t
        while hi - step >= 0 and ok(hi - step):
            hi -= step
            step *= 2
        lo = max(hi - step, -1)  # infeasible, or -1 below every distance
    else:
        lo = t
        while lo + step < k and not ok(lo + step):
            lo += step
            step *= 2
        hi = min(lo + step, k)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _default_workers() -> int:
    """Threads for :func:`_evaluate`: torch's intra-op thread count."""
    return max(1, torch.get_num_threads())


def _compact_labels(q_labels: np.ndarray, db_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer class labels shifted to start at 0 and narrowed to 1-2 bytes when they fit (equality is unchanged).

    The relevance comparison reads the database labels once per query: 1 byte each instead of 8 makes it ~5x
    cheaper at a million codes.
    """
    if q_labels.ndim != 1 or db_labels.ndim != 1 or q_labels.size == 0 or db_labels.size == 0:
        return q_labels, db_labels
    if q_labels.dtype.kind not in "iu" or db_labels.dtype.kind not in "iu":
        return q_labels, db_labels
    lo = min(int(q_labels.min()), int(db_labels.min()))
    hi = max(int(q_labels.max()), int(db_labels.max()))
    span = hi - lo
    if span > np.iinfo(np.uint16).max or hi > np.iinfo(np.int64).max:
        return q_labels, db_labels
    dtype = np.uint8 if span <= np.iinfo(np.uint8).max else np.uint16
    # Python-int offset on int64 copies: no overflow whatever the signedness of the inputs.
    return (q_labels.astype(np.int64) - lo).astype(dtype), (db_labels.astype(np.int64) - lo).astype(dtype)


def _row_histograms(key: np.ndarray, n_bins: int) -> np.ndarray:
    """Per-row counts ``[q, n_bins]`` of small non-negative integer keys ``[q, N]``."""
    # Not torch.bincount: 0.5 ms per million keys on an idle 2-core VM, but 24 ms while other processes held the
    # cores (its OpenMP threads wait for each other); np.bincount: 1.1-1.3 ms either way. One bincount over the whole
    # chunk with per-row offsets was no faster.
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


def _top_relevance(
    dist: np.ndarray, rel: np.ndarray, thr: np.ndarray, length: np.ndarray, top: int, buf: np.ndarray
) -> np.ndarray:
    """Relevance ``[q, top]`` of each query's first ``length`` items in (distance, index) order (False after).

    ``thr`` ``[q]`` is a distance with at least ``length`` items within it (the smallest such, for speed); ``buf``
    ``[q, N]`` is a contiguous bool scratch for the selection mask.
    """
    n_q = dist.shape[0]
    # Every item within the threshold, in row-major order, so ascending database index inside each query.
    # flatnonzero + divmod: several times faster than a 2-D np.nonzero.
    np.less_equal(dist, thr[:, None].astype(dist.dtype), out=buf)
    r, c = np.divmod(np.flatnonzero(buf), dist.shape[1])
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
    map_all: bool = True,
) -> dict[str, float]:
    """mAP@K, P@K, mAP over the whole ranking (``mAP@all``) and precision/recall within Hamming radius ``r``.

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
        memory_budget_bytes: bound on the temporaries of the chunks of queries in flight (all threads).
        map_all: also report ``mAP@all`` (AP over every database position, see the module docstring); it sorts each
            query's whole distance row, which dominates the cost on databases of a million codes.

    Returns:
        ``mAP@K`` and ``P@K`` for every K in ``topk``, ``mAP@all`` (when ``map_all``) and ``P@r{r}``, ``R@r{r}`` for
        every radius, as fractions in ``[0, 1]`` (e.g. ``{"mAP@20", "P@20", "mAP@all", "P@r2", "R@r2"}`` by
        default). All follow the (distance, database index) ranking.
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
        radii=radii,
        query_db_index=query_db_index,
        exclude_self=exclude_self,
        relevance=relevance,
        n_bits=n_bits,
        memory_budget_bytes=memory_budget_bytes,
        map_all=map_all,
    )
    out: dict[str, float] = {}
    for k in ks:
        out[f"mAP@{k}"] = float(_average_precision(ev.top_rel, ev.n_relevant, k, normalize).mean())
        out[f"P@{k}"] = float((ev.top_rel[:, :k].sum(1) / k).mean())
    if map_all:
        out["mAP@all"] = float(ev.ap_all.mean())
    precision, recall = _precision_recall(ev.within, ev.rel_within, ev.n_relevant[:, None])
    for i, r in enumerate(radii):
        out[f"P@r{r}"] = float(precision[:, i].mean())
        out[f"R@r{r}"] = float(recall[:, i].mean())
    return out


def _precision_recall(
    within: np.ndarray, rel_within: np.ndarray, n_relevant: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of the items within some radii ``[Q, n_radii]`` (0 when nothing is within / R = 0)."""
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
        memory_budget_bytes: bound on the temporaries of the chunks of queries in flight (all threads).

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
    precision, recall = _precision_recall(
        np.cumsum(ev.hist_all, axis=1), np.cumsum(ev.hist_rel, axis=1), ev.n_relevant[:, None]
    )
    return {
        "radius": np.arange(precision.shape[1]),
        "precision": precision.mean(0),
        "recall": recall.mean(0),
        "retrieved": np.cumsum(ev.hist_all, axis=1).mean(0),
    }


def hamming_ranking(query_index: int, codes: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest items to item ``query_index`` of ``codes`` (leave-one-out).

    Sorted by Hamming distance, ties broken by the lower index; the query is excluded by its index (an identical
    code elsewhere still ranks).

    Args:
        query_index: index of the query among ``codes``.
        codes: codes ``[N, K]`` (the query set is the database; real values are binarised at 0).
        k: number of results (fewer when the database is smaller).

    Returns:
        ``(indices [k], distances [k])``.
    """
    c = np.asarray(codes.detach().cpu() if hasattr(codes, "detach") else codes)
    if c.ndim != 2:
        raise ValueError(f"codes must be [N, K], got shape {c.shape}")
    c = binarize(c)
    if not 0 <= query_index < len(c):
        raise IndexError(f"query_index {query_index} out of range for {len(c)} codes")
    packed = pack_codes(c)
    dist = hamming_distance(packed[query_index : query_index + 1], packed)[0]
    order = np.argsort(dist, kind="stable")  # stable: equal distances keep index order
    order = order[order != query_index][: max(0, int(k))]
    return order, dist[order]


def pair_distances(codes: Any, labels: Any, exclude_self: bool = True) -> dict[str, Any]:
    """The Hamming distance of every unordered pair of items, and whether the two share a class.

    Every pair ``i < j`` counts once (with ``exclude_self=False`` also ``i = j``, at distance 0).

    Args:
        codes: codes ``[N, K]`` (real values are binarised at 0).
        labels: class labels ``[N]``.
        exclude_self: leave out the pairs of an item with itself.

    Returns:
        ``distance`` ``[P]`` (int), ``same_class`` ``[P]`` (bool), ``bits`` (K: the largest possible distance).
    """
    c = np.asarray(codes.detach().cpu() if hasattr(codes, "detach") else codes)
    y = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels).reshape(-1)
    if c.ndim != 2:
        raise ValueError(f"codes must be [N, K], got shape {c.shape}")
    if len(y) != len(c):
        raise ValueError(f"{len(c)} codes but {len(y)} labels")
    packed = pack_codes(binarize(c))
    i, j = np.triu_indices(len(c), k=1 if exclude_self else 0)
    return {"distance": hamming_distance(packed, packed)[i, j], "same_class": y[i] == y[j], "bits": int(c.shape[1])}
