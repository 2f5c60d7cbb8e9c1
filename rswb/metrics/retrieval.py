"""Image-text retrieval metrics: R@K in both directions, mR, median and mean rank.

Conventions (METHODS.md, "Shared evaluation semantics"):

* ``sim`` is the image x caption similarity ``[N_i, N_c]`` and ``caption_to_image`` ``[N_c]`` says which image
  each caption describes (any number of captions per image, at least one each; never ``j // 5``).
* **i2t**: the query is image ``i``; the items are all captions, sorted by ``sim[i, :]`` descending; the
  positives are the captions of image ``i``. **t2i**: the query is caption ``j``; the items are all images, sorted
  by ``sim[:, j]`` descending; the one positive is image ``caption_to_image[j]``.
* A query's **rank** is the 0-based position of its first positive in that sorted list. ``R@K`` = 100 x the share
  of queries with ``rank < K`` (a percentage); ``mR`` = the mean of all recalls reported (the six of
  ``ks=(1, 5, 10)``). ``medr`` / ``meanr`` are the median / mean of the **1-based** ranks (``rank + 1``, so a
  perfect retriever scores 1.0); the median of an even count is the midpoint (``np.median``), where published
  code often reports ``floor(median(0-based)) + 1``.

Tie rule (``ties``): when items score exactly the same, the sorted order is not defined by the scores. Let
``s*`` be the best score of any positive of the query. Then:

* ``"optimistic"`` (default): ties are broken in favour of the positives, ``rank = #{negatives with score > s*}``
  (= the number of items, of any kind, scoring strictly higher than ``s*``). For i2t this equals
  ``min over positives c of #{captions scoring strictly higher than c}``.
* ``"pessimistic"``: ties are broken against the positives, ``rank = #{negatives with score >= s*}``. Other
  positives never count against a query: two captions of image ``i`` tied at the top still give rank 0, because
  every ordering of that tie puts a positive first.

Both rules are the best and the worst position of the first positive over all orders consistent with the scores;
they agree whenever no negative ties with ``s*``. A per-query ``argsort`` (the way published code evaluates) falls
somewhere in between, depending on the sort algorithm.

Cost: no sort at all. The ground-truth scores are gathered once (``gt[j] = sim[caption_to_image[j], j]``, and the
per-image best ``s*`` is a segment max of ``gt``); each rank is then a count of scores above a threshold, so
:func:`retrieval_metrics` reads ``sim`` from memory once, in blocks of rows that stay in cache while they are
compared twice (with each row's ``s*`` for i2t, with each column's ``gt`` for t2i). On CPU the blocks are shared out
to ``torch.get_num_threads()`` threads (numpy's ufuncs release the GIL); at 5,000 x 25,000 this takes ~2-3x the time
of a plain ``sim.max()`` (``benchmarks/results/bench.md``).
:func:`retrieval_metrics_from_embeddings` computes ``sim`` block by block (image rows for i2t, caption rows for t2i)
and never holds more than ``memory_budget_bytes`` of it.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor
Ties = Literal["optimistic", "pessimistic"]

__all__ = [
    "metrics_from_ranks",
    "retrieval_metrics",
    "retrieval_metrics_from_embeddings",
    "retrieval_ranks",
    "retrieval_ranks_from_embeddings",
]

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
    if ties not in ("optimistic", "pessimistic"):
        raise ValueError(f"ties must be 'optimistic' or 'pessimistic', got {ties!r}")


def _check_index(caption_to_image: ArrayLike, n_images: int, n_captions: int, device: torch.device) -> torch.Tensor:
    """Validate the caption -> image map and return it as int64 on ``device``."""
    idx = _as_tensor(caption_to_image, "caption_to_image")
    if idx.is_floating_point():
        raise ValueError("caption_to_image must hold integer image indices")
    idx = idx.reshape(-1).to(device=device, dtype=torch.int64)
    if idx.numel() != n_captions:
        raise ValueError(f"caption_to_image has {idx.numel()} entries but there are {n_captions} captions")
    if n_captions == 0 or n_images == 0:
        raise ValueError(f"retrieval needs at least one image and one caption, got {n_images} x {n_captions}")
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= n_images:
        raise ValueError(f"caption_to_image values must lie in [0, {n_images}), got [{lo}, {hi}]")
    per_image = torch.bincount(idx, minlength=n_images)
    if bool((per_image == 0).any()):
        missing = torch.nonzero(per_image == 0).reshape(-1)
        raise ValueError(
            f"{missing.numel()} image(s) have no caption (first: {missing[:5].cpu().tolist()}); every image needs "
            "at least one, so drop those rows from the similarity matrix first"
        )
    return idx


def _best_positive(
    gt: torch.Tensor, caption_to_image: torch.Tensor, n_images: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: the best score of its captions ``[N_i]`` and how many of its captions reach it ``[N_i]``."""
    best = torch.full((n_images,), -torch.inf, dtype=gt.dtype, device=gt.device)
    best.scatter_reduce_(0, caption_to_image, gt, reduce="amax")
    at_best = torch.bincount(caption_to_image[gt == best[caption_to_image]], minlength=n_images)
    return best, at_best


def _check_finite_gt(gt: torch.Tensor) -> None:
    # A NaN ground-truth score would compare False with everything and silently rank first.
    if bool(torch.isnan(gt).any()):
        raise ValueError("the similarity of some ground-truth pairs is NaN")


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
    """Whether to count with numpy kernels: on CPU they beat torch's bool reductions several times (measured)."""
    if backend not in ("auto", "numpy", "torch"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'torch', got {backend!r}")
    if backend == "numpy" and t.device.type != "cpu":
        raise ValueError("backend='numpy' needs CPU inputs")
    return backend == "numpy" or (backend == "auto" and t.device.type == "cpu")


def retrieval_ranks(
    sim: ArrayLike,
    caption_to_image: ArrayLike,
    *,
    ties: Ties = "optimistic",
    memory_budget_bytes: int = 64 * 2**20,
    backend: Literal["auto", "numpy", "torch"] = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks of every query in both directions, from a precomputed similarity matrix.

    Args:
        sim: similarity ``[N_i, N_c]`` (numpy array or tensor on any device; higher = more similar; no NaN).
        caption_to_image: image index of every caption ``[N_c]``; every image needs at least one caption.
        ties: ``"optimistic"`` or ``"pessimistic"`` (see the module docstring).
        memory_budget_bytes: bound on the temporaries of the blocks in flight (the comparison results of all
            threads); a floating-point ``sim`` is read in place, never copied (integer scores are converted to
            float64 first).
        backend: ``"auto"`` (numpy kernels on CPU, torch elsewhere), ``"numpy"`` or ``"torch"``.

    Returns:
        ``(i2t_ranks [N_i], t2i_ranks [N_c])`` as int64 numpy arrays.
    """
    _check_ties(ties)
    s = _as_tensor(sim, "sim")
    if s.ndim != 2:
        raise ValueError(f"sim must be [N_i, N_c], got shape {tuple(s.shape)}")
    if not s.is_floating_point():
        s = s.to(torch.float64)  # integer or boolean scores: exact in float64, and -inf is needed for the segment max
    n_i, n_c = s.shape
    idx = _check_index(caption_to_image, n_i, n_c, s.device)
    strict = ties == "optimistic"

    if _use_numpy(s, backend):
        # The gathers and the segment max in numpy too: a torch op here would leave torch's OpenMP threads
        # spin-waiting on the cores that the counting threads are about to use (measured: 1.5x slower at RSICD size).
        a, ix = s.numpy(), idx.numpy()
        gt_np = a[ix, np.arange(n_c)]
        if np.isnan(gt_np).any():
            raise ValueError("the similarity of some ground-truth pairs is NaN")
        best_np = np.full(n_i, -np.inf, dtype=a.dtype)
        np.maximum.at(best_np, ix, gt_np)
        i2t, t2i = _ranks_numpy(a, gt_np, best_np, strict, memory_budget_bytes)
        if not strict:
            # ">=" also counted the positives themselves: the captions of image i at its best score, and the
            # caption's own image.
            i2t -= np.bincount(ix[gt_np == best_np[ix]], minlength=n_i)
            t2i -= 1
        return i2t, t2i

    gt = s[idx, torch.arange(n_c, device=s.device)]
    _check_finite_gt(gt)
    best, at_best = _best_positive(gt, idx, n_i)
    i2t, t2i = _ranks_torch(s, gt, best, strict, memory_budget_bytes)
    i2t, t2i = i2t.cpu(), t2i.cpu()
    if not strict:
        i2t = i2t - at_best.cpu()
        t2i = t2i - 1
    return i2t.numpy().astype(np.int64), t2i.numpy().astype(np.int64)


def _default_workers() -> int:
    """Threads for the numpy counting pass: torch's intra-op thread count (numpy's ufuncs release the GIL)."""
    return max(1, torch.get_num_threads())


def _ranks_numpy(
    s: np.ndarray, gt: np.ndarray, best: np.ndarray, strict: bool, budget: int, workers: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Both directions in one pass over row blocks of ``s``: rows give i2t, column sums give t2i.

    The row blocks are shared out to ``workers`` threads (default :func:`_default_workers`) that take the next
    block as they finish one, so a thread slowed down by another process on its core takes fewer blocks. Each thread
    keeps its own comparison buffer and t2i partial sums; ``budget`` bounds the buffers of all threads together.
    """
    n_i, n_c = s.shape
    workers = _default_workers() if workers is None else max(1, int(workers))
    if n_i * n_c < _MIN_THREADED_ENTRIES:
        workers = 1  # starting threads costs more than the pass itself
    rows = max(1, min(_MAX_UINT8_ROWS, _CACHE_BLOCK_BYTES // n_c, budget // (n_c * workers)))
    n_blocks = -(-n_i // rows)
    workers = min(workers, n_blocks)
    cmp = np.greater if strict else np.greater_equal
    i2t = np.empty(n_i, dtype=np.int64)
    next_block = iter(range(n_blocks))
    lock = threading.Lock()

    def work() -> np.ndarray:
        buf = _bool_buffer(rows, n_c)
        words = buf.view(np.uint64)
        # Column counts: the comparison rows are added as 64-bit words (8 byte counters each), into ``column_hits``
        # for up to 255 rows, then into uint16 ``partial`` (half the traffic of int64), then into int64 ``t2i``.
        block_hits = np.empty(words.shape[1], dtype=np.uint64)
        column_hits = np.zeros(words.shape[1], dtype=np.uint64)
        hits_bytes = column_hits.view(np.uint8)[:n_c]
        partial = np.zeros(n_c, dtype=np.uint16)
        t2i = np.zeros(n_c, dtype=np.int64)
        in_hits = in_partial = 0
        while True:
            with lock:
                k = next(next_block, None)
            if k is None:
                t2i += partial
                t2i += hits_bytes
                return t2i
            r0 = k * rows
            block = s[r0 : r0 + rows]
            n = block.shape[0]
            # i2t first: its scalar-threshold comparison is the lightest pass, so it is the one that waits on memory;
            # the t2i comparison then reads the block again from cache.
            i2t[r0 : r0 + n] = _count_rows_numpy(block, best[r0 : r0 + n], strict, buf)
            cmp(block, gt, out=buf[:n, :n_c])
            if in_hits + n > _MAX_UINT8_ROWS:
                if in_partial + in_hits > _PARTIAL_MAX:
                    t2i += partial
                    partial[:] = 0
                    in_partial = 0
                np.add(partial, hits_bytes, out=partial)
                column_hits[:] = 0
                in_partial += in_hits
                in_hits = 0
            np.add.reduce(words[:n], axis=0, out=block_hits)
            np.add(column_hits, block_hits, out=column_hits)
            in_hits += n

    if workers == 1:
        return i2t, work()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rswb-ranks") as pool:
        partials = [f.result() for f in [pool.submit(work) for _ in range(workers)]]
    return i2t, np.sum(partials, axis=0)


def _ranks_torch(
    s: torch.Tensor, gt: torch.Tensor, best: torch.Tensor, strict: bool, budget: int
) -> tuple[torch.Tensor, torch.Tensor]:
    n_i, n_c = s.shape
    rows = max(1, budget // max(1, n_c))
    i2t = torch.empty(n_i, dtype=torch.int64, device=s.device)
    t2i = torch.zeros(n_c, dtype=torch.int64, device=s.device)
    for r0 in range(0, n_i, rows):
        block = s[r0 : r0 + rows]
        t2i += ((block > gt) if strict else (block >= gt)).sum(0)
        i2t[r0 : r0 + block.shape[0]] = _count_rows_torch(block, best[r0 : r0 + rows], strict)
    return i2t, t2i


def retrieval_ranks_from_embeddings(
    image_emb: ArrayLike,
    text_emb: ArrayLike,
    caption_to_image: ArrayLike,
    *,
    ties: Ties = "optimistic",
    memory_budget_bytes: int = 256 * 2**20,
    backend: Literal["auto", "numpy", "torch"] = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks in both directions with ``sim = image_emb @ text_emb.T`` computed block by block.

    i2t reads blocks of image rows ``[R, N_c]``, t2i blocks of caption rows ``[R, N_i]``; each query's ground-truth
    score is taken from the same block it is compared against, so a pair is never scored by two different matrix
    products (which may differ in the last bit and break ties inconsistently).

    Args:
        image_emb: image embeddings ``[N_i, D]`` (numpy or tensor; the similarity is the plain dot product, so
            L2-normalise first for cosine similarity).
        text_emb: caption embeddings ``[N_c, D]``, same dtype family and device as ``image_emb``.
        caption_to_image: image index of every caption ``[N_c]``.
        ties: ``"optimistic"`` or ``"pessimistic"`` (see the module docstring).
        memory_budget_bytes: bound on one similarity block plus its comparison result (at least one row is
            always used).
        backend: ``"auto"`` (numpy kernels on CPU, torch elsewhere), ``"numpy"`` or ``"torch"``.

    Returns:
        ``(i2t_ranks [N_i], t2i_ranks [N_c])`` as int64 numpy arrays.
    """
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
    idx = _check_index(caption_to_image, n_i, n_c, img.device)
    strict = ties == "optimistic"
    numpy_counts = _use_numpy(img, backend)
    item = img.element_size() + 1  # one similarity plus one comparison byte per entry

    # i2t: blocks of image rows; each image's captions are a contiguous run of the caption order sorted by image.
    caption_order = torch.argsort(idx, stable=True)
    starts = torch.searchsorted(idx[caption_order], torch.arange(n_i + 1, device=idx.device)).cpu().tolist()
    rows = max(1, memory_budget_bytes // (n_c * item))
    buf = _bool_buffer(min(rows, n_i), n_c) if numpy_counts else None
    i2t = torch.empty(n_i, dtype=torch.int64)
    for r0 in range(0, n_i, rows):
        r1 = min(r0 + rows, n_i)
        block = img[r0:r1] @ txt.T
        caps = caption_order[starts[r0] : starts[r1]]
        owner = idx[caps] - r0
        gt = block[owner, caps]
        _check_finite_gt(gt)
        best, at_best = _best_positive(gt, owner, r1 - r0)
        counts = _count_block(block, best, strict, numpy_counts, buf)
        i2t[r0:r1] = (counts if strict else counts - at_best).cpu()

    # t2i: blocks of caption rows; the only positive of caption j is image idx[j].
    rows = max(1, memory_budget_bytes // (n_i * item))
    buf = _bool_buffer(min(rows, n_c), n_i) if numpy_counts else None
    t2i = torch.empty(n_c, dtype=torch.int64)
    for c0 in range(0, n_c, rows):
        c1 = min(c0 + rows, n_c)
        block = txt[c0:c1] @ img.T
        gt = block[torch.arange(c1 - c0, device=block.device), idx[c0:c1]]
        _check_finite_gt(gt)
        counts = _count_block(block, gt, strict, numpy_counts, buf)
        t2i[c0:c1] = (counts if strict else counts - 1).cpu()
    return i2t.numpy(), t2i.numpy()


def _count_block(
    block: torch.Tensor, thr: torch.Tensor, strict: bool, numpy_counts: bool, buf: np.ndarray | None
) -> torch.Tensor:
    if numpy_counts:
        return torch.from_numpy(_count_rows_numpy(block.numpy(), thr.numpy(), strict, buf))
    return _count_rows_torch(block, thr, strict)


def metrics_from_ranks(i2t_ranks: ArrayLike, t2i_ranks: ArrayLike, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recalls, mR and rank statistics from 0-based ranks.

    Args:
        i2t_ranks: 0-based rank of every image query ``[N_i]``.
        t2i_ranks: 0-based rank of every caption query ``[N_c]``.
        ks: the cut-offs ``K`` of ``R@K``.

    Returns:
        ``i2t_R@K`` and ``t2i_R@K`` for every K (percentages), ``mR`` (their mean), ``i2t_medr``, ``i2t_meanr``,
        ``t2i_medr``, ``t2i_meanr`` (1-based ranks), all floats.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
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
    return a.reshape(-1).astype(np.int64)


def retrieval_metrics(
    sim: ArrayLike,
    caption_to_image: ArrayLike,
    *,
    ks: Sequence[int] = (1, 5, 10),
    ties: Ties = "optimistic",
    memory_budget_bytes: int = 64 * 2**20,
) -> dict[str, float]:
    """Image-to-text and text-to-image retrieval scores of a precomputed similarity matrix.

    Args:
        sim: similarity ``[N_i, N_c]`` (numpy array or tensor on any device; no NaN).
        caption_to_image: image index of every caption ``[N_c]`` (any number of captions per image, at least one).
        ks: the cut-offs ``K`` of ``R@K``.
        ties: ``"optimistic"`` (default) or ``"pessimistic"`` (see the module docstring).
        memory_budget_bytes: bound on the temporaries of one block.

    Returns:
        ``{"i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "mR", "i2t_medr", "i2t_meanr",
        "t2i_medr", "t2i_meanr"}`` for the default ``ks`` (see :func:`metrics_from_ranks`).
    """
    i2t, t2i = retrieval_ranks(sim, caption_to_image, ties=ties, memory_budget_bytes=memory_budget_bytes)
    return metrics_from_ranks(i2t, t2i, ks)


def retrieval_metrics_from_embeddings(
    image_emb: ArrayLike,
    text_emb: ArrayLike,
    caption_to_image: ArrayLike,
    *,
    ks: Sequence[int] = (1, 5, 10),
    ties: Ties = "optimistic",
    memory_budget_bytes: int = 256 * 2**20,
) -> dict[str, float]:
    """Retrieval scores of ``sim = image_emb @ text_emb.T`` without ever holding the whole matrix.

    Args:
        image_emb: image embeddings ``[N_i, D]`` (L2-normalise first for cosine similarity).
        text_emb: caption embeddings ``[N_c, D]``.
        caption_to_image: image index of every caption ``[N_c]``.
        ks: the cut-offs ``K`` of ``R@K``.
        ties: ``"optimistic"`` (default) or ``"pessimistic"`` (see the module docstring).
        memory_budget_bytes: bound on one similarity block plus its comparison result (default 256 MiB).

    Returns:
        The same keys as :func:`retrieval_metrics`.
    """
    i2t, t2i = retrieval_ranks_from_embeddings(
        image_emb, text_emb, caption_to_image, ties=ties, memory_budget_bytes=memory_budget_bytes
    )
    return metrics_from_ranks(i2t, t2i, ks)
