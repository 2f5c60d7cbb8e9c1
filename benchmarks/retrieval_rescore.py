"""Trained retrieval runs rescored at inference: each seed, the seed ensemble, each with and without QB-Norm.

Takes finished ``rswb train retrieval`` runs of the same caption set and split (one per seed, e.g. from
``benchmarks.retrieval_ucm``) and scores the test split of:

* each run alone, and with query-bank normalisation (QB-Norm's Dynamic Inverted Softmax, Bogolin et al., CVPR 2022;
  the bank is the training split: training images for image queries, training captions for caption queries);
* the ensemble of all runs (the mean of the runs' cosine-similarity matrices), and the ensemble with QB-Norm.

QB-Norm's ``beta`` is chosen on the **validation** split, never the test split: for each configuration and each
direction separately, the value of ``--betas`` (default 5 10 20 40) with the largest sum of that direction's
R@1 + R@5 + R@10 under the headline tie rule (the smallest such ``beta`` when several tie). The test split is then
scored once per configuration under every rule of ``rswb.metrics.retrieval.TIE_RULES`` (read when the benchmark runs),
with the validation mR and the validation-test gap beside it. The runs are encoded once (train, val and test
splits); every rescoring reuses those embeddings.

Usage::

    python -m benchmarks.retrieval_rescore --runs runs/retrieval/ucm-clip-s0 runs/retrieval/ucm-clip-s1
        runs/retrieval/ucm-clip-s2 --out retrieval_rescore_ucm_clip                     # (one line)

Writes ``benchmarks/results/<out>.json`` and ``<out>.md`` (``--results`` changes the folder).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks import machine_info

RESULTS = Path(__file__).parent / "results"
KEYS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "mR")
BETAS = (5.0, 10.0, 20.0, 40.0)


def select_beta(encoded: list, betas: tuple[float, ...], ties: str) -> dict:
    """Per direction, the ``beta`` with the best validation recall sum (module docstring), and every candidate's sums.

    Args:
        encoded: the runs' embeddings (:func:`rswb.infer.encode_run` with the train and val splits).
        betas: the candidates.
        ties: the tie rule the recalls are computed under.

    Returns:
        ``{"i2t": beta, "t2i": beta, "candidates": {beta: {"i2t": sum, "t2i": sum}}}``.
    """
    from rswb.infer import rescored_metrics, two_way_scores

    sums = {}
    for beta in betas:
        m = rescored_metrics(two_way_scores(encoded, "val", beta), ties=ties)
        sums[beta] = {d: sum(v for k, v in m.items() if k.startswith(f"{d}_R@")) for d in ("i2t", "t2i")}
    # max() keeps the first of equal sums: the smallest beta, since the candidates are sorted. Sums are rounded
    # first: the same recalls added in another order can differ in the last bit and must still count as equal.
    chosen = {d: max(sorted(betas), key=lambda b, d=d: round(sums[b][d], 6)) for d in ("i2t", "t2i")}
    return {**chosen, "candidates": {str(b): s for b, s in sums.items()}}


def score(name: str, encoded: list, betas: tuple[float, ...] | None, rules: tuple[str, ...], select_ties: str,
          paths: list[str]) -> dict:
    """One configuration: validation and test metrics under every rule (QB-Norm with the validation ``beta``)."""
    from rswb.infer import rescored_metrics, two_way_scores

    row: dict = {"name": name, "runs": paths, "qbnorm_beta": None}
    if betas:
        selection = select_beta(encoded, betas, select_ties)
        row["qbnorm_beta"] = {d: selection[d] for d in ("i2t", "t2i")}
        row["val_selection"] = selection["candidates"]
    for split in ("val", "test"):
        scores = two_way_scores(encoded, split, row["qbnorm_beta"])
        row[split] = {rule: rescored_metrics(scores, ties=rule) for rule in rules}
    return row


def run(run_dirs: list[str], betas: tuple[float, ...] = BETAS, device: str | None = None) -> dict:
    """Encode every run once, then score each seed, each seed + QB-Norm, the ensemble and the ensemble + QB-Norm."""
    import rswb.tasks  # noqa: F401  (registers "retrieval")
    from rswb.infer import encode_run
    from rswb.metrics.retrieval import DEFAULT_TIES, TIE_RULES

    rules = tuple(TIE_RULES)  # read now: the rules rswb has at run time, headline first
    names = [Path(r).name for r in run_dirs]
    if len(set(names)) < len(names):
        names = [f"{i}:{n}" for i, n in enumerate(names)]
    t0 = time.perf_counter()
    encoded = [encode_run(r, ("train", "val", "test"), device=device) for r in run_dirs]
    encode_s = time.perf_counter() - t0
    configs = []
    for name, path, enc in zip(names, run_dirs, encoded):
        configs.append(score(name, [enc], None, rules, DEFAULT_TIES, [str(path)]))
        configs.append(score(f"{name} + QB-Norm", [enc], betas, rules, DEFAULT_TIES, [str(path)]))
        print(f"{name}: test mR {configs[-2]['test'][DEFAULT_TIES]['mR']:.2f}, + QB-Norm "
              f"{configs[-1]['test'][DEFAULT_TIES]['mR']:.2f}", flush=True)
    if len(encoded) > 1:
        label = f"ensemble of {len(encoded)}"
        configs.append(score(label, encoded, None, rules, DEFAULT_TIES, [str(r) for r in run_dirs]))
        configs.append(score(f"{label} + QB-Norm", encoded, betas, rules, DEFAULT_TIES, [str(r) for r in run_dirs]))
    return {"runs": [str(r) for r in run_dirs], "betas": list(betas), "tie_rules": list(rules),
            "select_ties": DEFAULT_TIES, "select_split": "val", "bank_split": "train", "configs": configs,
            "encode_s": encode_s, "time_s": time.perf_counter() - t0, "machine": machine_info()}


def _seed_mean(rows: list[dict], rule: str, split: str, key: str) -> str:
    vals = [r[split][rule][key] for r in rows]
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.2f} +- {sd:.2f}"


def table(results: dict, rule: str) -> str:
    """Markdown: one row per configuration (plus the mean over seeds), the test metrics under ``rule``."""
    head = ("| configuration | " + " | ".join(k.replace("_", " ") for k in KEYS)
            + " | val mR | val - test mR | beta i2t / t2i |")
    lines = [head, "|---" * (len(KEYS) + 4) + "|"]
    for c in results["configs"]:
        test, val = c["test"][rule], c["val"][rule]
        beta = "-" if c["qbnorm_beta"] is None else f"{c['qbnorm_beta']['i2t']:g} / {c['qbnorm_beta']['t2i']:g}"
        lines.append(f"| {c['name']} | " + " | ".join(f"{test[k]:.2f}" for k in KEYS)
                     + f" | {val['mR']:.2f} | {val['mR'] - test['mR']:+.2f} | {beta} |")
    singles = [c for c in results["configs"] if len(c["runs"]) == 1]
    if len(singles) > 2:  # a mean over seeds says something only with several seeds
        for qb in (False, True):
            rows = [c for c in singles if (c["qbnorm_beta"] is not None) == qb]
            lines.append(f"| seeds, mean +- sd{' + QB-Norm' if qb else ''} | "
                         + " | ".join(_seed_mean(rows, rule, "test", k) for k in KEYS)
                         + f" | {_seed_mean(rows, rule, 'val', 'mR')} | | |")
    return "\n".join(lines)


def report(results: dict, cmd: str) -> str:
    """The ``.md`` text: one table per tie rule, the headline rule first."""
    parts = [f"Command: `{cmd}`", "",
             f"QB-Norm bank: the `{results['bank_split']}` split; beta chosen per configuration and direction on the "
             f"`{results['select_split']}` split from {results['betas']} by the direction's R@1 + R@5 + R@10 under "
             f"`ties='{results['select_ties']}'`. Encoding the runs took {results['encode_s']:.0f} s.", ""]
    for rule in results["tie_rules"]:
        parts += [f"Test split, `ties='{rule}'`:", "", table(results, rule), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True, help="finished retrieval run folders, one per seed")
    p.add_argument("--betas", nargs="+", type=float, default=list(BETAS), help="QB-Norm beta candidates")
    p.add_argument("--device", default=None, help="where the encoders run (default: the best available)")
    p.add_argument("--out", default="retrieval_rescore", help="result file stem")
    p.add_argument("--results", default=str(RESULTS), help="folder of the result files")
    a = p.parse_args(argv)
    missing = [r for r in a.runs if not (Path(r) / "metrics.json").exists()]
    if missing:
        p.error(f"not finished run folders (no metrics.json): {', '.join(missing)}")
    results = run(a.runs, tuple(sorted(set(a.betas))), a.device)
    out = Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{a.out}.json").write_text(json.dumps(results, indent=1))
    text = report(results, "python -m benchmarks.retrieval_rescore " + " ".join(argv if argv is not None
                                                                                 else sys.argv[1:]))
    (out / f"{a.out}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
