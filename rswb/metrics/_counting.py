"""The counting backends of the retrieval metrics: how many scores of each row and column beat a threshold.

The rank of a query's positive is one plus the number of its negatives scoring above the positive (``>``), or at or
above it (``>=``); :mod:`rswb.metrics.retrieval` turns these counts into ranks under each tie rule. Three backends
count the same numbers: numpy (bool rows summed as 64-bit words, in cache-sized blocks, threaded), torch (other
devices) and the compiled kernel (:mod:`rswb.metrics._native`). Private: the public API is in
:mod:`rswb.metrics.retrieval`.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

if TYPE_CHECKING:
    from rswb.metrics.retrieval import _Pairs

#: Counting backends: ``auto`` takes the compiled kernel on CPU where it builds (else numpy), torch on other devices.
BACKENDS: tuple[str, ...] = ("auto", "native", "numpy", "torch")
Backend = Literal["auto", "native", "numpy", "torch"]

# Row blocks of a precomputed similarity matrix stay this small so that the block (and its comparison result) is still
# in the core's cache when it is compared a second time and reduced. Tuned on 5,000 x 25,000 and 1,093 x 5,465 float32
# (AMD EPYC, 1 MiB L2 per core): see benchmarks/results/bench.md.
_CACHE_BLOCK_BYTES = 512 * 2**10
# Below this many similarity entries the counting pass takes well under a millisecond: one thread, no pool.
_MIN_THREADED_ENTRIES = 2**20
# Each thread sums its t2i column counts in uint16 and moves them into int64 before they could exceed this.
_PARTIAL_MAX = int(np.iinfo(np.uint16).max)
# Bool rows are summed as 64-bit words, 8 byte counters at a time; 255 words keep each counter below 256.
_LANE_GROUP = 255
_EVEN_BYTES = np.uint64(0x00FF00FF00FF00FF)
_ONES_16 = np.uint64(0x0001000100010001)
# Column counts are summed in byte counters over at most this many rows (so a block holds at most 255 rows).
_MAX_UINT8_ROWS = 255



def _bool_buffer(rows: int, n: int) -> np.ndarray:
    """Zeroed comparison buffer ``[rows, W]`` for ``n`` columns.

    ``W >= n`` bytes: a whole number of 64-bit words, in equal groups of at most ``_LANE_GROUP`` words, so that
    :func:`_row_counts` can sum it a word at a time (the padding, under 8 bytes per group, stays 0).
    """
    words = -(-max(1, n) // 8)
    groups = -(-words // _LANE_GROUP)
    return np.zeros((rows, groups * -(-words // groups) * 8), dtype=bool)


def _row_counts(buf: np.ndarray) -> np.ndarray:
    """True entries per row of a :func:`_bool_buffer` ``[R, W]`` (int64 ``[R]``).

    A True byte is ``0x01``, so adding rows of 64-bit words adds 8 byte counters at once; groups of at most
    ``_LANE_GROUP`` (255) words keep every byte counter below 256. Then the 8 bytes of each group sum are folded into
    one number. All ufuncs, which release the GIL; 1.7x faster than a popcount of the words, and than
    ``count_nonzero`` per row (measured).
    """
    n_rows, words = buf.shape[0], buf.shape[1] // 8
    groups = -(-words // _LANE_GROUP)
    lanes = np.add.reduce(buf.view(np.uint64).reshape(n_rows, groups, words // groups), axis=2)  # bytes <= 255
    pairs = (lanes & _EVEN_BYTES) + ((lanes >> np.uint64(8)) & _EVEN_BYTES)  # four 16-bit counters <= 510
    return ((pairs * _ONES_16) >> np.uint64(48)).sum(1, dtype=np.int64)  # their sum (<= 2040) in the top 16 bits


def _count_rows_numpy(block: np.ndarray, thr: np.ndarray, strict: bool, buf: np.ndarray) -> np.ndarray:
    """Per row of ``block`` ``[R, M]``: how many entries exceed (``strict``) or reach ``thr`` ``[R]``.

    ``buf`` comes from :func:`_bool_buffer` for ``M`` columns: the comparison fills its first ``M`` columns.
    """
    n_rows, n_cols = block.shape
    if buf.shape[1] != _bool_buffer(1, n_cols).shape[1]:
        raise ValueError(f"comparison buffer of width {buf.shape[1]} does not fit {n_cols} columns")
    (np.greater if strict else np.greater_equal)(block, thr[:, None], out=buf[:n_rows, :n_cols])
    return _row_counts(buf[:n_rows])


def _count_rows_torch(block: torch.Tensor, thr: torch.Tensor, strict: bool) -> torch.Tensor:
    return ((block > thr[:, None]) if strict else (block >= thr[:, None])).sum(1)


def _use_numpy(t: torch.Tensor, backend: str) -> bool:
    """Whether to count with numpy kernels: on CPU they beat torch's bool reductions several times (measured).

    ``"native"`` (the compiled kernel, which serves similarity matrices) counts the blocks of the embedding
    functions with numpy too: there the matrix product, not the count, takes the time.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if backend in ("numpy", "native") and t.device.type != "cpu":
        raise ValueError(f"backend={backend!r} needs CPU inputs")
    return backend in ("numpy", "native") or (backend == "auto" and t.device.type == "cpu")


def _default_workers() -> int:
    """Threads for the numpy counting pass: torch's intra-op thread count (numpy's ufuncs release the GIL)."""
    return max(1, torch.get_num_threads())


class _ColumnCounts:
    """Column sums of boolean comparison rows, added as 64-bit words (8 byte counters each).

    Rows go into byte counters ``hits`` for up to ``_MAX_UINT8_ROWS`` rows, then into uint16 ``partial`` (half the
    traffic of int64), then into int64 ``total``, each before it could overflow.
    """

    def __init__(self, words: int, n: int) -> None:
        self.block = np.empty(words, dtype=np.uint64)
        self.hits = np.zeros(words, dtype=np.uint64)
        self.hits_bytes = self.hits.view(np.uint8)[:n]
        self.partial = np.zeros(n, dtype=np.uint16)
        self.total = np.zeros(n, dtype=np.int64)
        self.in_hits = self.in_partial = 0

    def add(self, rows: np.ndarray) -> None:
        """Add the comparison rows ``rows`` (``[R, words]`` uint64 view of a :func:`_bool_buffer`)."""
        n = rows.shape[0]
        if self.in_hits + n > _MAX_UINT8_ROWS:
            if self.in_partial + self.in_hits > _PARTIAL_MAX:
                self.total += self.partial
                self.partial[:] = 0
                self.in_partial = 0
            np.add(self.partial, self.hits_bytes, out=self.partial)
            self.hits[:] = 0
            self.in_partial += self.in_hits
            self.in_hits = 0
        np.add.reduce(rows, axis=0, out=self.block)
        np.add(self.hits, self.block, out=self.hits)
        self.in_hits += n

    def result(self) -> np.ndarray:
        return self.total + self.partial + self.hits_bytes


Mode = bool | str  # True: ">", False: ">=", "tie": "==" on the negatives only


def _count_numpy(
    s: np.ndarray,
    row_thr: np.ndarray,
    col_thr: np.ndarray,
    modes: tuple[Mode, ...],
    budget: int,
    workers: int | None = None,
    pairs: _Pairs | None = None,
) -> dict[Mode, tuple[np.ndarray, np.ndarray]]:
    """One pass over row blocks of ``s``: per mode, row counts against ``row_thr``, column counts against ``col_thr``.

    A mode is ``True`` for ``>``, ``False`` for ``>=`` and ``"tie"`` for ``==`` over the negatives only (``pairs``
    says which entries are positives); ``row_thr`` [N_i] serves i2t, ``col_thr`` [N_c] t2i.

    The row blocks are shared out to ``workers`` threads (default :func:`_default_workers`) that take the next
    block as they finish one, so a thread slowed down by another process on its core takes fewer blocks. Each thread
    keeps its own comparison buffer and column sums; ``budget`` bounds the buffers of all threads together.
    """
    n_i, n_c = s.shape
    workers = _default_workers() if workers is None else max(1, int(workers))
    if n_i * n_c < _MIN_THREADED_ENTRIES:
        workers = 1  # starting threads costs more than the pass itself
    rows = max(1, min(_MAX_UINT8_ROWS, _CACHE_BLOCK_BYTES // n_c, budget // (n_c * workers)))
    n_blocks = -(-n_i // rows)
    workers = min(workers, n_blocks)
    row_counts = {m: np.zeros(n_i, dtype=np.int64) for m in modes}
    next_block = iter(range(n_blocks))
    lock = threading.Lock()
    compare = {True: np.greater, False: np.greater_equal, "tie": np.equal}

    def work() -> dict[Mode, np.ndarray]:
        buf = _bool_buffer(rows, n_c)
        words = buf.view(np.uint64)
        cols = {m: _ColumnCounts(words.shape[1], n_c) for m in modes}
        while True:
            with lock:
                k = next(next_block, None)
            if k is None:
                return {m: c.result() for m, c in cols.items()}
            r0 = k * rows
            block = s[r0 : r0 + rows]
            n = block.shape[0]
            if "tie" in modes:
                lo, hi = pairs.img_starts[r0], pairs.img_starts[r0 + n]
                pos_rows, pos_cols = pairs.img[lo:hi] - r0, pairs.cap[lo:hi]
            for m in modes:
                # i2t first: its scalar-threshold comparison is the lightest pass, so it is the one that waits on
                # memory; the t2i comparisons then read the block again from cache.
                if m != "tie":
                    row_counts[m][r0 : r0 + n] = _count_rows_numpy(block, row_thr[r0 : r0 + n], m, buf)
                    continue
                # Exact ties with a negative are rare in most data: compare, clear the positives, and count
                # only when anything is left (any() costs a fraction of the count).
                np.equal(block, row_thr[r0 : r0 + n, None], out=buf[:n, :n_c])
                buf[pos_rows, pos_cols] = False
                if buf[:n].any():
                    row_counts[m][r0 : r0 + n] = _row_counts(buf[:n])
            for m in modes:
                compare[m](block, col_thr, out=buf[:n, :n_c])
                if m == "tie":
                    buf[pos_rows, pos_cols] = False
                    if not buf[:n].any():
                        continue
                cols[m].add(words[:n])

    if workers == 1:
        col_counts = work()
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rswb-ranks") as pool:
            partials = [f.result() for f in [pool.submit(work) for _ in range(workers)]]
        col_counts = {m: np.sum([p[m] for p in partials], axis=0) for m in modes}
    return {m: (row_counts[m], col_counts[m]) for m in modes}


def _count_torch(
    s: torch.Tensor, row_thr: torch.Tensor, col_thr: torch.Tensor, modes: tuple[bool, ...], budget: int
) -> dict[Mode, tuple[np.ndarray, np.ndarray]]:
    n_i, n_c = s.shape
    rows = max(1, budget // max(1, n_c))
    out = {}
    for m in modes:
        i2t = torch.empty(n_i, dtype=torch.int64, device=s.device)
        t2i = torch.zeros(n_c, dtype=torch.int64, device=s.device)
        for r0 in range(0, n_i, rows):
            block = s[r0 : r0 + rows]
            t2i += ((block > col_thr) if m else (block >= col_thr)).sum(0)
            i2t[r0 : r0 + block.shape[0]] = _count_rows_torch(block, row_thr[r0 : r0 + rows], m)
        out[m] = (i2t.cpu().numpy(), t2i.cpu().numpy())
    return out


def _native_chunk_rows(n_i: int, workers: int) -> int:
    """Rows per task of the compiled kernel: several tasks per thread (balance), a multiple of its 4-row tile."""
    rows = -(-n_i // (workers * 8))
    return max(4, min(256, -(-rows // 4) * 4))


def _count_native(
    s: np.ndarray, row_thr: np.ndarray, col_thr: np.ndarray, kernel, workers: int | None = None
) -> dict[Mode, tuple[np.ndarray, np.ndarray]]:
    """``>`` and ``>=`` counts of every row and column from one read of ``s`` with the compiled kernel.

    ``s`` [N_i, N_c] has unit column stride; ``row_thr`` [N_i] and ``col_thr`` [N_c] have its dtype. Row blocks
    are shared out to ``workers`` threads (ctypes releases the GIL), each with its own int32 column counters.
    """
    n_i, n_c = s.shape
    workers = _default_workers() if workers is None else max(1, int(workers))
    if n_i * n_c < _MIN_THREADED_ENTRIES:
        workers = 1
    row_thr = np.ascontiguousarray(row_thr, dtype=s.dtype)
    col_thr = np.ascontiguousarray(col_thr, dtype=s.dtype)
    row_gt, row_eq = np.zeros(n_i, np.int64), np.zeros(n_i, np.int64)
    chunk = _native_chunk_rows(n_i, workers)
    next_chunk = iter(range(0, n_i, chunk))
    lock = threading.Lock()
    stride = s.strides[0] // s.itemsize
    item = s.itemsize

    def work() -> tuple[np.ndarray, np.ndarray]:
        col_gt, col_eq = np.zeros(n_c, np.int32), np.zeros(n_c, np.int32)
        while True:
            with lock:
                r0 = next(next_chunk, None)
            if r0 is None:
                return col_gt, col_eq
            n = min(chunk, n_i - r0)
            kernel(s.ctypes.data + r0 * s.strides[0], n, n_c, stride, row_thr.ctypes.data + r0 * item,
                   col_thr.ctypes.data, row_gt.ctypes.data + r0 * 8, row_eq.ctypes.data + r0 * 8,
                   col_gt.ctypes.data, col_eq.ctypes.data)

    if workers == 1:
        partials = [work()]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rswb-ranks") as pool:
            partials = [f.result() for f in [pool.submit(work) for _ in range(workers)]]
    col_gt = np.sum([p[0] for p in partials], axis=0, dtype=np.int64)
    col_eq = np.sum([p[1] for p in partials], axis=0, dtype=np.int64)
    return {True: (row_gt, col_gt), False: (row_gt + row_eq, col_gt + col_eq)}


