"""DHCL on UC Merced: mAP@20 at 16/32/48/64 bits, with and without the semantic cue, mean +- std over seeds.

Runs ``rswb train hash`` (the CPU profile: frozen ImageNet EfficientNet-Lite0, cached pooled features of 4 dihedral
views, hash layer + classifier + proxies trained) for every code length and seed, and writes
``benchmarks/results/dhcl_ucmd.md`` and ``dhcl_ucmd.json``.

Usage: ``python -m benchmarks.dhcl_ucmd --data ../shared/data/UCMerced_LandUse [--seeds 0 1 2] [--bits 16 32 48 64]
[--epochs 40] [--runs-root runs/dhcl_ucmd] [--extra --freeze-backbone false ...]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks import machine_info

PUBLISHED = {16: 98.97, 32: 99.34, 48: 99.54, 64: 99.60}
COLUMNS = (("mAP@20", "mAP@20 (cue)"), ("mAP@20_nocue", "mAP@20 (no cue)"), ("dhcl_MAP@20", "DHCL's MAP@20 (cue)"),
           ("P@20", "P@20 (cue)"), ("class_acc", "class accuracy"))


def run(data: str, bits: list[int], seeds: list[int], epochs: int, runs_root: str, extra: dict) -> dict:
    """Train every (bits, seed) run (finished runs are reused) and return their test metrics and times."""
    import rswb.tasks  # noqa: F401  (registers "hash")
    from rswb.engine.launch import train_task

    results: dict = {"runs": [], "data": data, "epochs": epochs, "options": extra}
    for b in bits:
        for s in seeds:
            name = f"ucmd-{b}bit-s{s}"
            final = Path(runs_root) / name / "metrics.json"
            t0 = time.perf_counter()
            if not final.exists():
                opts = {"data": data, "bits": b, "seed": s, "epochs": epochs, "progress": False, **extra}
                train_task("hash", opts, run_name=name, runs_root=runs_root, overwrite=True)
            wall = time.perf_counter() - t0
            metrics = json.loads(final.read_text())
            results["runs"].append({"bits": b, "seed": s, "test": metrics["test"], "train_time_s": metrics["time_s"],
                                    "wall_s": wall, "best_epoch": metrics["best_epoch"]})
    results["machine"] = machine_info()
    return results


def table(results: dict) -> str:
    """The markdown table: mean +- std over seeds per code length, next to the published numbers."""
    lines = ["| bits | " + " | ".join(label for _, label in COLUMNS) + " | DHCL published MAP@20 | train time / run |",
             "|---|" + "---|" * (len(COLUMNS) + 2)]
    for b in sorted({r["bits"] for r in results["runs"]}):
        rows = [r for r in results["runs"] if r["bits"] == b]
        cells = []
        for key, _ in COLUMNS:
            vals = [100 * r["test"][key] for r in rows]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.2f} +- {sd:.2f}")
        t = statistics.median(r["train_time_s"] for r in rows)
        lines.append(f"| {b} | " + " | ".join(cells) + f" | {PUBLISHED.get(b, float('nan')):.2f} | {t:.0f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    from rswb.config import parse_cli_overrides

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--bits", type=int, nargs="+", default=[16, 32, 48, 64])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--runs-root", default="runs/dhcl_ucmd")
    ap.add_argument("--out", default="benchmarks/results/dhcl_ucmd.json")
    a, rest = ap.parse_known_args(argv)
    results = run(a.data, a.bits, a.seeds, a.epochs, a.runs_root, parse_cli_overrides(rest))
    Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
