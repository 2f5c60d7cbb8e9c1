"""Summary of the PHA ladder with pre-training (issue 33): the best rung against ``pha_v1`` per shot count.

Reads the ladder JSONs that ``benchmarks.pha_ladder`` wrote (one per shot count, the same seeds for every row) and
writes ``benchmarks/results/pha_pretrain_summary.json``::

    {"seeds": 3, "shots": {"5": {"v1_OA": ..., "best_OA": ..., "best_version": ...}, "10": {...}}}

(test OA in percent, means over seeds). The best row is chosen among the fused rungs and the pre-training control rows
(so the control can win, and says so) by its mean *validation* OA, never the test OA; ``best_OA`` is that row's test
OA, ``best_val_OA`` the validation OA it was chosen by. Usage::

    python -m benchmarks.pha_pretrain_summary --ladder 5=pha_ucm_pretrain_5shot.json 10=pha_ucm_pretrain_10shot.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def summarize(ladders: dict[str, dict]) -> dict:
    """``{"seeds", "shots": {shots: {"v1_OA", "best_OA", "best_version", "best_val_OA"}}}`` from ladder results."""
    out: dict = {"seeds": None, "shots": {}}
    for shots, res in ladders.items():
        test: dict[str, list[float]] = {}
        val: dict[str, list[float]] = {}
        for r in res["runs"]:
            test.setdefault(r["version"], []).append(100 * r["test"]["OA"])
            val.setdefault(r["version"], []).append(100 * r["val"]["OA"])
        counts = {len(v) for v in test.values()}
        if len(counts) != 1:
            raise ValueError(f"{shots} shots: rows have different seed counts {sorted(counts)}")
        n = counts.pop()
        if out["seeds"] not in (None, n):
            raise ValueError(f"the shot counts have different seed counts ({out['seeds']} and {n})")
        out["seeds"] = n
        fused = [v for v in test if not v.startswith(("ms_only", "pan_only"))]
        best = max(fused, key=lambda v: statistics.mean(val[v]))  # selected on validation, first row on a tie
        out["shots"][shots] = {"v1_OA": round(statistics.mean(test["pha_v1"]), 2),
                               "best_OA": round(statistics.mean(test[best]), 2), "best_version": best,
                               "best_val_OA": round(statistics.mean(val[best]), 2)}
    return out


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ladder", nargs="+", required=True, help="SHOTS=FILE (a pha_ladder JSON under results/)")
    p.add_argument("--out", default=str(RESULTS / "pha_pretrain_summary.json"))
    a = p.parse_args(argv)
    ladders = {}
    for item in a.ladder:
        shots, _, name = item.partition("=")
        path = Path(name) if Path(name).exists() else RESULTS / name
        ladders[shots] = json.loads(path.read_text())
    summary = summarize(ladders)
    Path(a.out).write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
