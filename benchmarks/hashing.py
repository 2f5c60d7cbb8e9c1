"""Benchmark: hash retrieval mAP@K by packed-code Hamming ranking.

Two problems, each a benchmark of its own, measured in the same process:

* ``hashing_loo`` (UCMD scale, the DHCL protocol's size): 21 classes x 100 images = 2,100 codes in the database;
  the 420 images numbered 80-99 of each class are the queries, each left out of its own ranking by index;
  mAP@20 at 16, 32, 48 and 64 bits. ``rswb``: :func:`rswb.metrics.hash_metrics` with ``query_db_index``.
  ``reference``: a double Python loop in the style of the DHCL evaluation code: for every query, every database
  item's Hamming distance ``(K - <q, x>) / 2`` from its +-1 code, one pair at a time, then a stable sort by
  (distance, index) and AP@20 accumulated in Python. Times are totals over the four code lengths.
* ``hashing_1m``: 1,000 queries against 1,000,000 database codes of 64 bits (10 classes; codes scattered around one
  random centre per class, each bit flipped with probability 1/4, so that ties in distance are everywhere), mAP@100.
  ``rswb``: :func:`rswb.metrics.hash_metrics` on packed uint64 codes (XOR + popcount). ``reference``: ranking by a
  float32 matrix product of the +-1 codes, chunks of 50 queries (``torch.mm`` into a reused buffer), the same
  tie rule as rswb (distance, then database index: ``topk`` of the integer key ``2 d * 2^19 + index``) and AP@100;
  the +-1 float matrices are built before timing. ``reference_untied_s`` is the same without the tie rule (plain
  ``topk`` of the products: faster, but its ranking among equal distances is arbitrary, so its mAP is not
  comparable). ``faiss_s`` (when ``faiss-cpu`` is installed: ``pip install -e '.[bench]'``): the peer a user would
  pick for Hamming k-NN, ``faiss.IndexBinaryFlat`` searching the same packed codes (as bytes) for the top ``k``, with
  as many OpenMP threads as rswb's workers, plus AP@k from its lists in numpy. faiss orders tied distances its own way,
  so its lists may hold other items at the boundary distance: the guard checks that its top-``k`` *distances* equal
  rswb's, and ``faiss_mAP@k`` is reported beside rswb's.

Correctness guard: rswb's mAP@K and P@K equal the reference's to 1e-12 (same ranking rule, so same lists).

Usage: ``python -m benchmarks.hashing [--json] [--only loo|1m|all] [--quick]``.
Prints a table, or one JSON object ``{"hashing_loo": {...}, "hashing_1m": {...}}`` with ``--json``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks import emit, median_time
from rswb.metrics import hash_metrics, pack_codes, unpack_codes


def clustered_codes(rng: np.random.Generator, labels: np.ndarray, n_bits: int, n_classes: int, flip: float):
    """+-1 codes ``[N, K]`` (int8): one random centre per class, each bit flipped with probability ``flip``."""
    centres = rng.choice(np.array([-1, 1], dtype=np.int8), size=(n_classes, n_bits))
    noise = rng.random((len(labels), n_bits)) < flip
    return np.where(noise, -centres[labels], centres[labels]).astype(np.int8)


# ---------------------------------------------------------------------------------------------------------- LOO


def reference_loo_map(codes: np.ndarray, labels: np.ndarray, query_idx: np.ndarray, k: int = 20) -> float:
    """DHCL-style evaluation: a Python double loop over (query, database item), AP@k per query, then the mean."""
    n_bits = codes.shape[1]
    aps = []
    for q in query_idx:
        distances = []
        for j in range(len(codes)):
            if j == q:
                continue  # leave-one-out by index
            distances.append(((n_bits - int(np.dot(codes[q], codes[j]))) // 2, j))
        distances.sort()  # by (distance, index): the stable tie rule
        hits, total = 0, 0.0
        for pos, (_, j) in enumerate(distances[:k], start=1):
            if labels[j] == labels[q]:
                hits += 1
                total += hits / pos
        aps.append(total / hits if hits else 0.0)
    return float(np.mean(aps))


def run_loo_problem(
    n_classes: int = 21,
    per_class: int = 100,
    queries_from: int = 80,
    bits: tuple[int, ...] = (16, 32, 48, 64),
    k: int = 20,
    flip: float = 0.2,
    repeats: int = 7,
    reference_repeats: int = 3,
    seed: int = 0,
) -> dict:
    """Run ``hashing_loo`` and return its result dict (times: sums over ``bits`` of per-length medians)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    query_idx = np.flatnonzero(np.tile(np.arange(per_class) >= queries_from, n_classes))
    per_bits = {}
    for n_bits in bits:
        codes = clustered_codes(rng, labels, n_bits, n_classes, flip)

        def rswb(codes=codes):
            # map_all=False: the reference computes mAP@K only, so both time the same work.
            return hash_metrics(codes[query_idx], codes, labels[query_idx], labels, topk=(k,),
                                query_db_index=query_idx, map_all=False)  # fmt: skip

        def reference(codes=codes):
            return reference_loo_map(codes, labels, query_idx, k)

        rswb_s = median_time(rswb, repeats)
        reference_s = median_time(reference, reference_repeats, warmup=False)
        got, expected = rswb()[f"mAP@{k}"], reference()
        assert abs(got - expected) < 1e-12, f"{n_bits} bits: rswb mAP@{k} {got} != reference {expected}"
        per_bits[n_bits] = {"rswb_s": rswb_s, "reference_s": reference_s, f"mAP@{k}": got}
    rswb_s = sum(v["rswb_s"] for v in per_bits.values())
    reference_s = sum(v["reference_s"] for v in per_bits.values())
    return {
        "rswb_s": rswb_s,
        "reference_s": reference_s,
        "speedup": reference_s / rswb_s,
        "per_bits": per_bits,
        "problem": f"{len(query_idx)} leave-one-out queries x {len(labels):,} codes ({n_classes} classes x "
        f"{per_class}), mAP@{k} at {'/'.join(map(str, bits))} bits (times summed over the lengths)",
        "reference": "DHCL-style double Python loop: per-pair (K - <q, x>) / 2, sort by (distance, index), AP@20",
        "repeats": repeats,
        "reference_repeats": reference_repeats,
    }


def run_loo(quick: bool = False) -> dict:
    """``hashing_loo``: 420 queries x 2,100 codes at 16/32/48/64 bits, or 3 classes x 10 at 16 bits when ``quick``."""
    if quick:
        return run_loo_problem(n_classes=3, per_class=10, queries_from=8, bits=(16,), repeats=1, reference_repeats=1)
    return run_loo_problem()


# ----------------------------------------------------------------------------------------------------------- 1M


def packed_clustered_db(rng: np.random.Generator, n: int, n_classes: int, centres: np.ndarray):
    """``n`` packed 64-bit codes ``[n, 1]`` (uint64) around the class ``centres``, bits flipped with p = 1/4."""
    labels = rng.integers(0, n_classes, n)
    noise = rng.integers(0, 2**63, n, dtype=np.uint64) & rng.integers(0, 2**63, n, dtype=np.uint64)
    noise |= (rng.random(n) < 0.25).astype(np.uint64) << np.uint64(63)  # the top bit too
    return (centres[labels] ^ noise).reshape(-1, 1), labels


def reference_float_ranking(
    qf: torch.Tensor, dbf: torch.Tensor, q_labels: torch.Tensor, db_labels: torch.Tensor, k: int, chunk: int = 50,
    tie_rule: bool = True,
) -> tuple[float, float]:  # fmt: skip
    """mAP@k and P@k from ranking by the float product of +-1 codes, ``chunk`` queries at a time.

    With ``tie_rule`` the ranking is by (Hamming distance, database index), as in rswb: the top-k of the integer key
    ``(K - <q, x>) * 2^19 + index`` (``K - <q, x> = 2 d`` is even, so distinct distances stay 2^20 apart and the
    index, below 2^20, breaks ties). Without it, a plain ``topk`` of the products (ties in arbitrary order).
    """
    n_q, n_bits = qf.shape
    n_db = dbf.shape[0]
    if tie_rule and n_db > 2**20:
        raise ValueError("the integer tie-break key needs fewer than 2^20 database items")
    ip = torch.empty(min(chunk, n_q), n_db)
    key = torch.empty(min(chunk, n_q), n_db, dtype=torch.int32)
    index = torch.arange(n_db, dtype=torch.int32)
    weights = 1.0 / torch.arange(1, k + 1, dtype=torch.float64)
    ap_sum, p_sum = 0.0, 0.0
    for q0 in range(0, n_q, chunk):
        q1 = min(q0 + chunk, n_q)
        out = ip[: q1 - q0]
        torch.mm(qf[q0:q1], dbf.T, out=out)
        if tie_rule:
            kk = key[: q1 - q0]
            torch.sub(float(n_bits), out, out=out)  # 2 d, exact in float32
            kk.copy_(out)
            kk.mul_(2**19).add_(index)
            top = torch.topk(kk, k, dim=1, largest=False, sorted=True).indices
        else:
            top = torch.topk(out, k, dim=1, largest=True, sorted=True).indices
        rel = (db_labels[top] == q_labels[q0:q1, None]).double()
        hits = rel.cumsum(1)
        n_hits = hits[:, -1]
        ap = (hits * weights * rel).sum(1) / n_hits.clamp(min=1)
        ap_sum += float(ap.sum())
        p_sum += float((n_hits / k).sum())
    return ap_sum / n_q, p_sum / n_q


def run_1m_problem(
    n_db: int = 1_000_000,
    n_q: int = 1000,
    n_classes: int = 10,
    k: int = 100,
    chunk: int = 50,
    repeats: int = 5,
    reference_repeats: int = 3,
    seed: int = 0,
) -> dict:
    """Run ``hashing_1m`` and return its result dict (medians)."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2**63, n_classes, dtype=np.uint64) | (
        rng.integers(0, 2, n_classes).astype(np.uint64) << np.uint64(63)
    )
    db, db_labels = packed_clustered_db(rng, n_db, n_classes, centres)
    q, q_labels = packed_clustered_db(rng, n_q, n_classes, centres)
    n_bits = 64

    def rswb():
        return hash_metrics(q, db, q_labels, db_labels, topk=(k,), n_bits=n_bits, map_all=False)

    rswb_s = median_time(rswb, repeats)
    got = rswb()

    # The float pipeline holds +-1 float32 codes (256 MB at 1M x 64); building them is not timed.
    qf = torch.from_numpy(unpack_codes(q, n_bits).astype(np.float32))
    dbf = torch.from_numpy(unpack_codes(db, n_bits).astype(np.float32))
    tq, tdb = torch.from_numpy(q_labels), torch.from_numpy(db_labels)
    ref: list[tuple[float, float]] = []
    reference_s = median_time(lambda: ref.append(reference_float_ranking(qf, dbf, tq, tdb, k, chunk)),
                              reference_repeats, warmup=False)  # fmt: skip
    untied_s = median_time(lambda: reference_float_ranking(qf, dbf, tq, tdb, k, chunk, tie_rule=False),
                           reference_repeats, warmup=False)  # fmt: skip
    ref_map, ref_p = ref[-1]
    assert abs(got[f"mAP@{k}"] - ref_map) < 1e-12, f"rswb mAP@{k} {got[f'mAP@{k}']} != reference {ref_map}"
    assert abs(got[f"P@{k}"] - ref_p) < 1e-12, f"rswb P@{k} {got[f'P@{k}']} != reference {ref_p}"
    # The packed codes really are the +-1 codes the reference ranks.
    assert np.array_equal(pack_codes(unpack_codes(db[:1000], n_bits), np.uint64), db[:1000])

    speedup = reference_s / rswb_s
    peer = faiss_peer(q, db, q_labels, db_labels, k, n_bits, reference_repeats)
    if "faiss_s" in peer:
        peer["speedup_vs_faiss"] = peer["faiss_s"] / rswb_s  # > 1: rswb is faster (it also counts the radii)
    return {
        "rswb_s": rswb_s,
        "reference_s": reference_s,
        "speedup": speedup,
        "goals": {"speedup >= 3": bool(speedup >= 3)},
        "reference_untied_s": untied_s,
        "speedup_vs_untied": untied_s / rswb_s,
        f"mAP@{k}": got[f"mAP@{k}"],
        f"P@{k}": got[f"P@{k}"],
        "problem": f"{n_q:,} queries x {n_db:,} codes of {n_bits} bits ({n_classes} classes), mAP@{k}",
        "reference": f"float32 +-1 matrix product (torch.mm, {chunk} queries per chunk) + topk on a "
        "(distance, index) key, AP in torch",
        "pairs_per_s": n_q * n_db / rswb_s,
        "repeats": repeats,
        "reference_repeats": reference_repeats,
        "rswb_workers": torch.get_num_threads(),
        **peer,
    }


def faiss_peer(q: np.ndarray, db: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray, k: int, n_bits: int,
               repeats: int) -> dict:
    """Time ``faiss.IndexBinaryFlat`` k-NN + AP@k on the same codes; ``{}`` when faiss is not installed.

    Also checks that faiss's top-k Hamming distances equal those of rswb's ranking (the lists may differ among items
    tied at the boundary distance, so AP may differ slightly; both mAPs are reported).
    """
    try:
        import faiss
    except ImportError:
        return {"faiss": "not installed (pip install -e '.[bench]')"}
    faiss.omp_set_num_threads(torch.get_num_threads())
    q8, db8 = q.view(np.uint8), db.view(np.uint8)  # little-endian words -> bytes: the same bits, the same distances
    index = faiss.IndexBinaryFlat(n_bits)
    index.add(db8)  # storing the codes is not timed (rswb gets them as an array too)
    weights = 1.0 / np.arange(1, k + 1)
    result: dict[str, np.ndarray] = {}

    def search() -> float:
        dist, ids = index.search(q8, k)
        rel = db_labels[ids] == q_labels[:, None]
        hits = np.cumsum(rel, axis=1)
        result["dist"] = dist
        return float(((hits * weights * rel).sum(1) / np.maximum(hits[:, -1], 1)).mean())

    faiss_s = median_time(search, repeats)
    faiss_map = search()
    # rswb's top-k distances, from its ranking rule: the k smallest distances of every row, sorted.
    from rswb.metrics import hamming_distance

    rows = np.arange(0, len(q), max(1, len(q) // 10))  # a tenth of the queries: the full matrix is 1 GB at 1M
    d = hamming_distance(q[rows], db)
    assert np.array_equal(np.sort(np.partition(d, k - 1, axis=1)[:, :k], axis=1), result["dist"][rows]), \
        "faiss top-k distances differ from the Hamming distances rswb ranks"
    return {"faiss_s": faiss_s, f"faiss_mAP@{k}": faiss_map, "faiss_version": faiss.__version__,
            "faiss_threads": torch.get_num_threads()}


def run_1m(quick: bool = False) -> dict:
    """``hashing_1m``: 1,000 queries x 1,000,000 codes at 64 bits, or 20 x 20,000 when ``quick``."""
    if quick:
        return run_1m_problem(n_db=20_000, n_q=20, k=10, chunk=8, repeats=1, reference_repeats=1)
    return run_1m_problem()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--only", choices=["loo", "1m", "all"], default="all")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for testing the plumbing")
    a = ap.parse_args(argv)
    results = {}
    if a.only in ("loo", "all"):
        results["hashing_loo"] = run_loo(a.quick)
    if a.only in ("1m", "all"):
        results["hashing_1m"] = run_1m(a.quick)
    emit(results, a.json)


if __name__ == "__main__":
    main()
