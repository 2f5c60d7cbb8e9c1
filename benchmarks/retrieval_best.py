r"""The best retrieval configuration, chosen on validation, written as ``retrieval_ucm_best.json`` (issue 32, item 5).

Reads ``benchmarks.retrieval_rescore`` result JSONs (one per method and recipe, each with its seeds' runs). Their
candidate configurations are: the single seeds (reported as the mean over seeds), the single seeds with QB-Norm
(mean over seeds), the seed ensemble, and the ensemble with QB-Norm. The best is the one with the highest
**validation** mR under ``ties="expected"`` (never the test split); its test mR under every tie rule is written as::

    {"method": ..., "recipe": ..., "seeds": [...], "configuration": ..., "selected_by": ..., "val_mR": ...,
     "mR": {"expected": ..., "published": ..., "clip_benchmark": ..., "optimistic": ..., "pessimistic": ...},
     "candidates": [...]}

Usage::

    python -m benchmarks.retrieval_best --rescore kamcl "finetune profile, 4 epochs" results/rescore_kamcl.json \\
        [--rescore ...] --out benchmarks/results/retrieval_ucm_best.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

SELECT_TIES = "expected"


def _seed(path: str) -> int | None:
    """The seed of a run folder named ``...-s<seed>`` (``benchmarks.retrieval_ucm``'s names), else ``None``."""
    m = re.search(r"-s(\d+)$", str(path).rstrip("/"))
    return int(m.group(1)) if m else None


def candidates(method: str, recipe: str, results: dict) -> list[dict]:
    """The four kinds of configuration of one rescore result, each with its validation and test mR per rule."""
    rules = results["tie_rules"]
    singles = [c for c in results["configs"] if len(c["runs"]) == 1]
    ensembles = [c for c in results["configs"] if len(c["runs"]) > 1]
    out = []
    for qb in (False, True):
        rows = [c for c in singles if (c["qbnorm_beta"] is not None) == qb]
        if rows:
            out.append({"method": method, "recipe": recipe, "configuration": "single seed" + (" + QB-Norm" * qb),
                        "seeds": [_seed(c["runs"][0]) for c in rows],
                        "val_mR": statistics.mean(c["val"][SELECT_TIES]["mR"] for c in rows),
                        "mR": {r: statistics.mean(c["test"][r]["mR"] for c in rows) for r in rules}})
    for c in ensembles:
        qb = c["qbnorm_beta"] is not None
        out.append({"method": method, "recipe": recipe,
                    "configuration": f"ensemble of {len(c['runs'])} seeds" + (" + QB-Norm" * qb),
                    "seeds": [_seed(p) for p in c["runs"]], "val_mR": c["val"][SELECT_TIES]["mR"],
                    "mR": {r: c["test"][r]["mR"] for r in rules}})
    return out


def best(items: list[tuple[str, str, dict]]) -> dict:
    """The candidate with the highest validation mR (the first of equals), with every candidate listed."""
    every = [c for method, recipe, results in items for c in candidates(method, recipe, results)]
    if not every:
        raise ValueError("no configuration in the rescore results")
    top = max(every, key=lambda c: c["val_mR"])
    return {**top, "selected_by": f"validation mR, ties={SELECT_TIES!r}",
            "note": "single-seed configurations report the mean over their seeds; test mR under each tie rule",
            "candidates": [{k: c[k] for k in ("method", "recipe", "configuration", "val_mR", "mR")} for c in every]}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rescore", nargs=3, action="append", required=True, metavar=("METHOD", "RECIPE", "FILE"))
    ap.add_argument("--out", default="benchmarks/results/retrieval_ucm_best.json")
    a = ap.parse_args(argv)
    chosen = best([(m, r, json.loads(Path(f).read_text())) for m, r, f in a.rescore])
    Path(a.out).write_text(json.dumps(chosen, indent=2) + "\n")
    print(json.dumps({k: chosen[k] for k in ("method", "recipe", "configuration", "seeds", "val_mR", "mR")},
                     indent=2))


if __name__ == "__main__":
    main()
