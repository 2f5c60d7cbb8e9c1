r"""Validation vs test: how far the split that selects the epoch is from the split that reports, per validation rule.

Reads result JSONs of ``benchmarks.dhcl_ucmd`` (runs keyed by ``bits``, metrics as fractions) and
``benchmarks.retrieval_ucm`` (runs keyed by ``variant``, recalls in percent), which record each run's validation
metrics at the selected epoch beside its test metrics, and writes one table: per item (a method under a validation
rule), the mean validation score, the mean test score, the gap (validation - test) and the per-seed gaps, all in
points. The issue's goal is ``|gap| <= 3`` points.

Usage::

    python -m benchmarks.validation_gap \\
        --item "DHCL 64 bits, head" random mAP@20 /path/dhcl_random.json 64 \\
        --item "DHCL 64 bits, head" block mAP@20 /path/dhcl_block.json 64 \\
        --item "KAMCL, frozen" random mR benchmarks/results/retrieval_ucm_randomval.json kamcl \\
        --out validation_gap

Each ``--item`` is ``LABEL RULE METRIC FILE SELECT`` (SELECT: the code length of a DHCL JSON, the variant of a
retrieval JSON). Writes ``benchmarks/results/<out>.json`` and ``<out>_table.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def gap_rows(label: str, rule: str, metric: str, path: str | Path, select: str) -> dict:
    """One item: the selected runs' validation and test ``metric`` in points, and their gaps.

    Raises:
        ValueError: no run of ``path`` matches ``select``, or a run lacks the metric on either split.
    """
    data = json.loads(Path(path).read_text())
    runs = [r for r in data["runs"] if str(r.get("variant", r.get("bits"))) == str(select)]
    if not runs:
        raise ValueError(f"{path}: no run with variant/bits {select!r}")
    scale = 100.0 if "bits" in runs[0] else 1.0  # the hash task records fractions, retrieval percents
    val, test = [], []
    for r in runs:
        if metric not in r.get("val", {}) or metric not in r.get("test", {}):
            raise ValueError(f"{path}: run seed {r.get('seed')} has no {metric} on both splits (no 'val' record?)")
        val.append(scale * r["val"][metric])
        test.append(scale * r["test"][metric])
    gaps = [v - t for v, t in zip(val, test)]
    sd = statistics.stdev(test) if len(test) > 1 else 0.0
    return {"label": label, "rule": rule, "metric": metric, "file": str(path), "select": str(select),
            "seeds": [r.get("seed") for r in runs], "val": statistics.mean(val), "test": statistics.mean(test),
            "test_sd": sd, "gap": statistics.mean(gaps), "gaps": gaps}


def table(rows: list[dict]) -> str:
    """The markdown table of :func:`gap_rows` results, in the order given."""
    lines = ["| item | validation rule | metric | validation | test (mean +- sd) | gap (val - test) | gap per seed | "
             "within 3 points |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        seeds = " / ".join(f"{g:+.2f}" for g in r["gaps"])
        lines.append(f"| {r['label']} | {r['rule']} | {r['metric']} | {r['val']:.2f} | {r['test']:.2f} +- "
                     f"{r['test_sd']:.2f} | {r['gap']:+.2f} | {seeds} | {'yes' if abs(r['gap']) <= 3 else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--item", nargs=5, action="append", required=True,
                    metavar=("LABEL", "RULE", "METRIC", "FILE", "SELECT"))
    ap.add_argument("--out", default="validation_gap")
    ap.add_argument("--results", default=str(RESULTS))
    a = ap.parse_args(argv)
    rows = [gap_rows(*item) for item in a.item]
    out = Path(a.results)
    (out / f"{a.out}.json").write_text(json.dumps({"items": rows}, indent=2) + "\n")
    text = table(rows) + "\n"
    (out / f"{a.out}_table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
