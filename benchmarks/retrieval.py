"""Benchmark: image-text retrieval metrics (R@K both ways, mR, ranks) from a precomputed similarity matrix.

Two scales, each a benchmark of its own: ``retrieval_rsicd`` (the RSICD test split, 1,093 images x 5,465 captions)
and ``retrieval_5k`` (5,000 images x 25,000 captions). Five captions per image, in shuffled order with the explicit
``caption_to_image`` map; the similarity is random float32 with a signal on the matching pairs, quantised to steps
of 2^-16 so that exact ties (also between a positive and negatives) occur as in real cosine scores. Measured in the
same process:

* ``rswb``: :func:`rswb.metrics.retrieval_metrics` under its default tie rule, ``expected`` (the mean over random
  orders of tied items, in closed form) and its default backend (the compiled kernel where it builds, which makes
  every comparison in one read; ``native`` says how it was built); ``rswb_optimistic`` the same call with
  ``ties="optimistic"``; ``numpy_optimistic`` / ``numpy_expected`` both rules on the numpy kernels
  (``backend="numpy"``, what every rule ran on before the compiled kernel): ``numpy_optimistic`` is the speed
  reference of the default (goal: ``rswb`` within 1.5x of it); ``rswb_published`` with ``ties="published"``
  (the reference loop's exact order, vectorised: one ``np.argsort`` per row and per column block);
* ``reference``: a per-query Python loop of the kind published retrieval code uses: for every image, ``argsort`` its
  row, reverse it and take the first position of any of its captions; for every caption, ``argsort`` its column and
  take the position of its image; then the recalls and rank statistics. At 5,000 x 25,000 a full loop takes
  ~20 s, so it runs on an evenly spaced subset of the queries and its time is scaled linearly to all of them
  (``reference_extrapolated_from`` says how many);
* ``floor``: one plain read pass over the same matrix, its maximum, with torch (all threads) and numpy (one
  thread); ``floor_s`` is the faster of the two medians (``floor_method`` says which): the memory-bandwidth floor of
  any pass over the matrix on this machine.

Correctness guard: on every query whose optimistic and pessimistic ranks agree the reference's rank equals them, and
on the others it lies between them (an ``argsort`` breaks ties somehow; the two rules bound every way of doing it);
the expected ranks lie between the bounds; ``ties="published"`` gives exactly the reference loop's ranks.

Usage: ``python -m benchmarks.retrieval [--json] [--scale rsicd|5k|all] [--repeats 7] [--quick]``.
Prints a table, or one JSON object ``{"retrieval_rsicd": {...}, "retrieval_5k": {...}}`` with ``--json``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks import emit, interleaved_medians, median_time
from rswb.metrics import metrics_from_ranks, retrieval_metrics, retrieval_ranks
from rswb.metrics._native import native_status

SCALES = {"rsicd": (1093, 5), "5k": (5000, 5)}
# Above this many argsorted items the full loop would dominate the 5-minute budget of `rswb bench`.
_REFERENCE_ITEM_BUDGET = 40_000_000


def make_problem(n_images: int, captions_per_image: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random similarity ``[N_i, N_c]`` (float32, with ties) and the shuffled caption -> image map ``[N_c]``."""
    rng = np.random.default_rng(seed)
    caption_to_image = rng.permutation(np.repeat(np.arange(n_images), captions_per_image))
    sim = rng.random((n_images, len(caption_to_image)), dtype=np.float32)
    # A weak signal on the matching pairs, so that ranks spread from 0 to the end as with a trained model.
    cols = np.arange(len(caption_to_image))
    sim[caption_to_image, cols] += np.float32(0.5) * rng.random(len(cols), dtype=np.float32)
    # Quantise to 2^-16 so that some negatives tie with a positive score: at 5,000 x 25,000 the two tie rules give
    # different ranks for 7% of the image and 5% of the caption queries (RSICD size: 2% and 1%).
    np.multiply(sim, 65536, out=sim)
    np.floor(sim, out=sim)
    np.multiply(sim, np.float32(1 / 65536), out=sim)
    return sim, caption_to_image


def reference_ranks(
    sim: np.ndarray, caption_to_image: np.ndarray, images: np.ndarray, captions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-query argsort loop: 0-based ranks of the image queries ``images`` and the caption queries ``captions``."""
    captions_of = [[] for _ in range(sim.shape[0])]
    for j, i in enumerate(caption_to_image.tolist()):
        captions_of[i].append(j)
    i2t = np.empty(len(images), dtype=np.int64)
    for n, i in enumerate(images):
        order = np.argsort(sim[i])[::-1]
        i2t[n] = min(int(np.where(order == c)[0][0]) for c in captions_of[i])
    sim_t = sim.T
    t2i = np.empty(len(captions), dtype=np.int64)
    for n, j in enumerate(captions):
        order = np.argsort(sim_t[j])[::-1]
        t2i[n] = int(np.where(order == caption_to_image[j])[0][0])
    return i2t, t2i


def _check(ref: np.ndarray, optimistic: np.ndarray, pessimistic: np.ndarray, what: str) -> int:
    """Assert the reference ranks lie between the two tie rules (equal where they agree); return #queries tied."""
    agree = optimistic == pessimistic
    assert np.array_equal(ref[agree], optimistic[agree]), f"{what}: reference differs where no tie is involved"
    assert ((optimistic <= ref) & (ref <= pessimistic)).all(), f"{what}: reference outside the tie bounds"
    return int((~agree).sum())


def run(
    n_images: int = 1093,
    captions_per_image: int = 5,
    repeats: int = 7,
    reference_repeats: int = 3,
    reference_fraction: float | None = None,
    seed: int = 0,
) -> dict:
    """Run the benchmark at one scale and return its result dict.

    Args:
        n_images: number of images ``N_i``.
        captions_per_image: captions per image (``N_c = N_i * captions_per_image``).
        repeats: timed rounds of rswb and the floor (medians; interleaved round by round).
        reference_repeats: timed runs of the reference loop (median).
        reference_fraction: share of the queries the reference loop runs on (``None``: all of them while the loop
            stays within a fixed budget of argsorted items, else the largest share that fits); its time is
            scaled linearly to all queries.
        seed: data seed.

    Returns:
        The result dict (times in seconds, medians).
    """
    sim, c2i = make_problem(n_images, captions_per_image, seed)
    n_i, n_c = sim.shape
    tsim = torch.from_numpy(sim)

    times = interleaved_medians(
        {
            "rswb": lambda: retrieval_metrics(sim, c2i),
            "rswb_optimistic": lambda: retrieval_metrics(sim, c2i, ties="optimistic"),
            "numpy_optimistic": lambda: retrieval_metrics(sim, c2i, ties="optimistic", backend="numpy"),
            "numpy_expected": lambda: retrieval_metrics(sim, c2i, backend="numpy"),
            "floor_torch": lambda: tsim.max(),
            "floor_numpy": lambda: sim.max(),
        },
        repeats,
    )
    floor_method = (
        f"torch.Tensor.max, {torch.get_num_threads()} threads"
        if times["floor_torch"] <= times["floor_numpy"]
        else "numpy.ndarray.max, 1 thread"
    )
    floor_s = min(times["floor_torch"], times["floor_numpy"])

    # Reference on all queries, or on an evenly spaced subset, scaled linearly to all of them.
    if reference_fraction is None:
        reference_fraction = min(1.0, _REFERENCE_ITEM_BUDGET / (2 * n_i * n_c))
    images = np.unique(np.linspace(0, n_i - 1, max(1, round(reference_fraction * n_i))).astype(np.int64))
    captions = np.unique(np.linspace(0, n_c - 1, max(1, round(reference_fraction * n_c))).astype(np.int64))
    full = len(images) == n_i and len(captions) == n_c
    # Each direction is timed on its own and scaled by its own factor: the loop is linear in its queries.
    no_images, no_captions = images[:0], captions[:0]
    i2t_s = median_time(lambda: reference_ranks(sim, c2i, images, no_captions), reference_repeats, warmup=False)
    t2i_s = median_time(lambda: reference_ranks(sim, c2i, no_images, captions), reference_repeats, warmup=False)
    reference_s = i2t_s * n_i / len(images) + t2i_s * n_c / len(captions)
    ref_i2t, _ = reference_ranks(sim, c2i, images, no_captions)
    _, ref_t2i = reference_ranks(sim, c2i, no_images, captions)

    # Correctness: rswb's two tie rules bound the reference's ranks, and the metrics match where they can.
    opt_i2t, opt_t2i = retrieval_ranks(sim, c2i, ties="optimistic")
    pes_i2t, pes_t2i = retrieval_ranks(sim, c2i, ties="pessimistic")
    tied = _check(ref_i2t, opt_i2t[images], pes_i2t[images], "i2t")
    tied += _check(ref_t2i, opt_t2i[captions], pes_t2i[captions], "t2i")
    pub_i2t, pub_t2i = retrieval_ranks(sim, c2i, ties="published")
    assert np.array_equal(pub_i2t[images], ref_i2t) and np.array_equal(pub_t2i[captions], ref_t2i), \
        "ties='published' differs from the reference loop"
    exp_i2t, exp_t2i = retrieval_ranks(sim, c2i)
    assert ((opt_i2t <= exp_i2t) & (exp_i2t <= pes_i2t)).all() and ((opt_t2i <= exp_t2i) & (exp_t2i <= pes_t2i)).all()
    rswb_metrics = retrieval_metrics(sim, c2i)
    if full:
        assert metrics_from_ranks(ref_i2t, ref_t2i) == retrieval_metrics(sim, c2i, ties="published")
    # The vectorised published rule sorts every row and column: timed on its own, fewer rounds.
    published_s = median_time(lambda: retrieval_metrics(sim, c2i, ties="published"), reference_repeats)

    speedup = reference_s / times["rswb"]
    vs_floor = times["rswb"] / floor_s
    vs_optimistic = times["rswb"] / times["numpy_optimistic"]
    goals = {"speedup >= 10": bool(speedup >= 10)}
    if (n_i, n_c) == (5000, 25000):
        goals["vs_floor <= 3"] = bool(vs_floor <= 3)
        goals["expected_vs_numpy_optimistic <= 1.5"] = bool(vs_optimistic <= 1.5)
    assert retrieval_metrics(sim, c2i, backend="numpy") == rswb_metrics, "the backends disagree"
    return {
        "rswb_s": times["rswb"],
        "rswb_ties": "expected",
        "native": native_status(),
        "rswb_optimistic_s": times["rswb_optimistic"],
        "numpy_optimistic_s": times["numpy_optimistic"],
        "numpy_expected_s": times["numpy_expected"],
        "expected_vs_numpy_optimistic": vs_optimistic,
        "expected_vs_optimistic_same_backend": times["rswb"] / times["rswb_optimistic"],
        "numpy_expected_vs_numpy_optimistic": times["numpy_expected"] / times["numpy_optimistic"],
        "rswb_published_s": published_s,
        "published_speedup": reference_s / published_s,
        "reference_s": reference_s,
        "floor_s": floor_s,
        "speedup": speedup,
        "vs_floor": vs_floor,
        "goals": goals,
        "floor_method": floor_method,
        "floor_torch_s": times["floor_torch"],
        "floor_numpy_s": times["floor_numpy"],
        "reference_i2t_measured_s": i2t_s,
        "reference_t2i_measured_s": t2i_s,
        "reference_extrapolated_from": None if full else (
            f"{len(images)} of {n_i} image queries and {len(captions)} of {n_c} caption queries, scaled linearly"
        ),
        "queries_with_ties": tied,
        "problem": f"{n_i:,} images x {n_c:,} captions, float32 similarity ({sim.nbytes / 2**20:.0f} MiB), "
        f"{captions_per_image} captions per image",
        "reference": "per-query np.argsort loop (i2t rows, t2i columns), as in published evaluation code",
        "metrics": rswb_metrics,
        "repeats": repeats,
        "reference_repeats": reference_repeats,
        "rswb_workers": torch.get_num_threads(),
    }


def run_rsicd(quick: bool = False) -> dict:
    """``retrieval_rsicd``: 1,093 images x 5,465 captions (the RSICD test split), or 60 x 300 when ``quick``."""
    if quick:
        return run(60, 5, repeats=1, reference_repeats=1)
    return run(*SCALES["rsicd"])


def run_5k(quick: bool = False) -> dict:
    """``retrieval_5k``: 5,000 images x 25,000 captions, or 100 x 500 when ``quick``."""
    if quick:
        return run(100, 5, repeats=1, reference_repeats=1, reference_fraction=0.5)
    return run(*SCALES["5k"])


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--scale", choices=["rsicd", "5k", "all"], default="all")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for testing the plumbing")
    a = ap.parse_args(argv)
    results = {}
    for scale in ("rsicd", "5k"):
        if a.scale in (scale, "all"):
            name = f"retrieval_{scale}"
            if a.quick:
                results[name] = run_rsicd(True) if scale == "rsicd" else run_5k(True)
            else:
                results[name] = run(*SCALES[scale], repeats=a.repeats)
    emit(results, a.json)


if __name__ == "__main__":
    main()
