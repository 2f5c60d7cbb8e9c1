"""One trained retrieval run's test embeddings scored under every tie rule, with a Monte-Carlo check of ``expected``.

Reproduces the tie-rule table (UCM-Captions, CLIP-style heads, cpu profile, seed 0): the same similarity matrix
scored with ties counted as wins (``optimistic``), as losses (``pessimistic``), by the published per-query
``np.argsort(row)[::-1]`` loop (``published``), and by rswb's default, the closed-form expectation over uniformly
random orders of tied items (``expected``). The expectation is checked against the mean of ``--trials`` random tie
orders: every similarity is replaced by an integer code (equal scores share one) and ties are broken by a random
permutation of all entries, which orders every tie group of every row and every column uniformly at random; the
resulting matrix has no ties, so each trial's recalls are exact. Also reports how many test captions are word for
word another image's caption (the cause of the ties) and the de-duplicated ``positives="text"`` view.

Usage (trains the run first when it does not exist, with the same options as ``benchmarks.retrieval_ucm``)::

    python -m benchmarks.retrieval_ties --data ../shared/data/ucm_captions --images ../shared/data/UCMerced_LandUse

Writes ``benchmarks/results/retrieval_ties.json`` and ``retrieval_ties.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks import machine_info

RESULTS = Path(__file__).parent / "results"
KEYS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "mR")
RULES = ("optimistic", "pessimistic", "published", "expected")


def test_similarity(run_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The test split's similarity ``[N_i, N_c]`` (float32, as the task scores it), caption -> image map, captions."""
    import torch

    import rswb.tasks  # noqa: F401  (registers "retrieval")
    from rswb.engine import EvalContext
    from rswb.engine.launch import load_run

    bundle = load_run(run_dir, splits=("test",))
    emb = bundle.task.embeddings(bundle.test, EvalContext(torch.device("cpu"), progress=False))
    sim = (emb["image"] @ emb["text"].t()).numpy()
    return sim, np.asarray(bundle.test.caption_to_image), list(bundle.test.captions)


def monte_carlo(sim: np.ndarray, caption_to_image: np.ndarray, trials: int, seed: int = 0) -> dict[str, list[float]]:
    """Recalls of ``trials`` uniformly random tie orders (see the module docstring): ``{key: [value per trial]}``."""
    from rswb.metrics import retrieval_metrics

    codes = np.unique(sim, return_inverse=True)[1].reshape(sim.shape).astype(np.int64)
    rng = np.random.default_rng(seed)
    n = sim.size
    out: dict[str, list[float]] = {k: [] for k in KEYS}
    for _ in range(trials):
        # code * n + a random permutation: the order of distinct scores is kept, equal scores are shuffled; every
        # value stays below 2^53, so float64 holds it exactly and the matrix has no ties left.
        broken = (codes * n + rng.permutation(n).reshape(sim.shape)).astype(np.float64)
        m = retrieval_metrics(broken, caption_to_image, ties="optimistic")
        for k in KEYS:
            out[k].append(m[k])
    return out


def duplicate_stats(sim: np.ndarray, caption_to_image: np.ndarray, captions: list[str]) -> dict:
    """How many captions another image shares word for word, and how many image rows hold a tie with a positive."""
    from rswb.metrics import normalize_caption

    norm = [normalize_caption(c) for c in captions]
    owners: dict[str, set[int]] = {}
    for t, i in zip(norm, caption_to_image.tolist()):
        owners.setdefault(t, set()).add(i)
    shared = sum(len(owners[t]) > 1 for t in norm)
    rows_tied = 0
    for i in range(sim.shape[0]):
        pos = sim[i, caption_to_image == i]
        neg = sim[i, caption_to_image != i]
        rows_tied += bool(np.isin(pos, neg).any())
    return {"captions": len(captions), "images": int(sim.shape[0]), "shared_with_another_image": int(shared),
            "distinct_texts": len(owners), "most_common": Counter(norm).most_common(3),
            "image_rows_with_positive_negative_tie": int(rows_tied)}


def run(run_dir: Path, trials: int) -> dict:
    """Score ``run_dir``'s test split under every rule plus the Monte-Carlo mean; check the bounds and the 0.2 goal."""
    from rswb.metrics import retrieval_metrics

    sim, c2i, captions = test_similarity(run_dir)
    rules = {r: retrieval_metrics(sim, c2i, ties=r) for r in RULES}
    rules["expected, positives='text'"] = retrieval_metrics(sim, c2i, positives="text", texts=captions)
    mc = monte_carlo(sim, c2i, trials)
    mc_mean = {k: statistics.mean(v) for k, v in mc.items()}
    mc_se = {k: statistics.stdev(v) / len(v) ** 0.5 for k, v in mc.items()}
    gap = {k: abs(mc_mean[k] - rules["expected"][k]) for k in KEYS}
    within = {k: rules["pessimistic"][k] <= rules["expected"][k] <= rules["optimistic"][k] for k in KEYS}
    return {"run": str(run_dir), "rules": rules, "monte_carlo": {"trials": trials, "mean": mc_mean, "stderr": mc_se},
            "expected_minus_mc_abs": gap, "duplicates": duplicate_stats(sim, c2i, captions),
            "goals": {"expected within [pessimistic, optimistic]": all(within.values()),
                      "|expected - Monte-Carlo| <= 0.2 on every key": max(gap.values()) <= 0.2},
            "machine": machine_info()}


def report(res: dict, cmd: str) -> str:
    """Markdown of :func:`run`'s result."""
    d = res["duplicates"]
    lines = [f"Command: `{cmd}`", "", f"Run: `{res['run']}` (test split, {d['images']} images x {d['captions']} "
             "captions).", "", "| tie rule | " + " | ".join(k.replace("_", " ") for k in KEYS) + " |",
             "|---" * (len(KEYS) + 1) + "|"]
    for r, m in res["rules"].items():
        lines.append(f"| `{r}` | " + " | ".join(f"{m[k]:.2f}" for k in KEYS) + " |")
    mc = res["monte_carlo"]
    lines.append(f"| Monte-Carlo mean of {mc['trials']} random tie orders | "
                 + " | ".join(f"{mc['mean'][k]:.2f} +- {mc['stderr'][k]:.2f}" for k in KEYS) + " |")
    lines += ["", f"Largest |expected - Monte-Carlo| over the seven numbers: "
              f"{max(res['expected_minus_mc_abs'].values()):.3f} (goal <= 0.2; +- is the Monte-Carlo standard error).",
              "", f"Duplicates: {d['shared_with_another_image']} of {d['captions']} test captions are word for word a "
              f"caption of another image ({d['distinct_texts']} distinct texts); "
              f"{d['image_rows_with_positive_negative_tie']} of {d['images']} image rows hold an exact tie between a "
              "true caption and another image's caption.",
              "", "Goals: " + "; ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in res["goals"].items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/retrieval/ucm-clip-s0", help="finished retrieval run folder")
    p.add_argument("--data", default=None, help="caption set, to train the run when it is missing")
    p.add_argument("--images", default=None, help="image root, to train the run when it is missing")
    p.add_argument("--trials", type=int, default=1000, help="random tie orders of the Monte-Carlo check")
    p.add_argument("--out", default="retrieval_ties", help="result file stem under benchmarks/results")
    a = p.parse_args(argv)
    run_dir = Path(a.run)
    if not (run_dir / "metrics.json").exists():
        from benchmarks.retrieval_ucm import run as train_runs

        tag, variant, seed = run_dir.name.rsplit("-", 2)
        train_runs(tag, a.data, a.images, [variant], [int(seed.lstrip("s"))], str(run_dir.parent), {})
    res = run(run_dir, a.trials)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{a.out}.json").write_text(json.dumps(res, indent=1))
    text = report(res, "python -m benchmarks.retrieval_ties " + " ".join(argv if argv is not None else sys.argv[1:]))
    (RESULTS / f"{a.out}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
