"""DHCL on UC Merced: mAP@20 and mAP@all at 16/32/48/64 bits, with and without the semantic cue, over seeds.

Runs ``rswb train hash`` (the CPU profile: frozen ImageNet EfficientNet-Lite0, cached pooled features of 4 dihedral
views, hash layer + classifier + proxies trained) for every code length and seed, and writes
``benchmarks/results/dhcl_ucmd_table.md`` and ``dhcl_ucmd.json``.

Tie orders: Hamming distances are integers, so many database items tie; rswb ranks ties by database index. For every
run the test codes are re-scored with the database in ``--tie-orders`` random orders (each query still excluded by
index), which puts tied items in random order; the spread of mAP@20 over those orders is the size of the tie effect.

Usage: ``python -m benchmarks.dhcl_ucmd --data ../shared/data/UCMerced_LandUse [--seeds 0 1 2] [--bits 16 32 48 64]
[--epochs 40] [--runs-root runs/dhcl_ucmd] [--refit] [--freeze-backbone false ...]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks import machine_info

PUBLISHED = {16: 98.97, 32: 99.34, 48: 99.54, 64: 99.60}
COLUMNS = (("mAP@20", "mAP@20 (cue)"), ("mAP@20_nocue", "mAP@20 (no cue: K bits)"), ("mAP@all", "mAP@all (cue)"),
           ("mAP@all_nocue", "mAP@all (no cue: K bits)"), ("dhcl_MAP@20", "DHCL's MAP@20 (cue)"),
           ("P@20", "P@20 (cue)"), ("class_acc", "class accuracy"))


def tie_orders(codes: np.ndarray, labels: np.ndarray, k: int, n_orders: int, seed: int = 0) -> dict[str, list[float]]:
    """mAP@k and mAP@all of leave-one-out Hamming retrieval with the database in ``n_orders`` random orders.

    Args:
        codes: ``{-1, +1}`` codes ``[N, bits]`` of the query set, which is also the database.
        labels: class labels ``[N]``.
        k: the cut-off of mAP@k.
        n_orders: how many random database orders.
        seed: seed of the orders.

    Returns:
        ``mAP@{k}`` and ``mAP@all``: one value per order (fractions).
    """
    from rswb.metrics import hash_metrics

    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {f"mAP@{k}": [], "mAP@all": []}
    for _ in range(n_orders):
        perm = rng.permutation(len(labels))  # database position p holds item perm[p]
        where = np.empty_like(perm)
        where[perm] = np.arange(len(perm))  # the position of every query in the permuted database
        m = hash_metrics(codes, codes[perm], labels, labels[perm], topk=(k,), query_db_index=where)
        for key in out:
            out[key].append(m[key])
    return out


def run(data: str, bits: list[int], seeds: list[int], epochs: int, runs_root: str, extra: dict,
        n_orders: int = 20, refit: bool = False) -> dict:
    """Train every (bits, seed) run (finished runs are reused); return test metrics, tie-order spreads and times.

    With ``refit`` each run is followed by a refit (``<name>-refit``): the same options on every training image
    (``val_rule="none"``) for the number of epochs the run selected on its validation split; its test metrics are
    recorded under ``"refit"`` (the selection never saw the test split, and the refit never saw a validation score).
    """
    import rswb.tasks  # noqa: F401  (registers "hash")
    from rswb.engine.launch import train_task
    from rswb.infer import load_codes

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
            codes = load_codes(Path(runs_root) / name, device="cpu")
            orders = tie_orders(codes["code"], codes["label"], 20, n_orders, seed=s)  # the runs' topk default
            if refit:
                metrics["refit"] = _refit(data, b, s, metrics["best_epoch"], runs_root, name, extra)
            results["runs"].append({"bits": b, "seed": s, "test": metrics["test"], "val": metrics.get("val") or {},
                                    **({"refit": metrics["refit"]} if refit else {}),
                                    "train_time_s": metrics["time_s"],
                                    "wall_s": wall, "best_epoch": metrics["best_epoch"], "tie_orders": orders})
    results["machine"] = machine_info()
    return results


def _refit(data: str, bits: int, seed: int, epochs: int, runs_root: str, name: str, extra: dict) -> dict:
    """Train (or reuse) the refit of run ``name``: every training image, ``epochs`` epochs; its test metrics."""
    from rswb.engine.launch import train_task

    final = Path(runs_root) / f"{name}-refit" / "metrics.json"
    if not final.exists():
        opts = {"data": data, "bits": bits, "seed": seed, "progress": False, **extra, "epochs": epochs,
                "val_rule": "none"}
        train_task("hash", opts, run_name=f"{name}-refit", runs_root=runs_root, overwrite=True)
    metrics = json.loads(final.read_text())
    return {**metrics["test"], "epochs": epochs, "train_time_s": metrics["time_s"]}


def code_length(results: dict, bits: int) -> str:
    """``"K + c"``: the hash bits and the class bits of the cue, what a code with the cue stores.

    Runs record ``cue_bits`` (since issue 29); older results JSONs get it from the data folder's classes.
    """
    recorded = [r["test"]["cue_bits"] for r in results["runs"] if r["bits"] == bits and "cue_bits" in r["test"]]
    if recorded:
        return f"{bits} + {int(recorded[0])}"
    from rswb.data.scenes import SceneFolder
    from rswb.models.hashing import cue_bits

    return f"{bits} + {cue_bits(len(SceneFolder(results['data']).classes))}"


def table(results: dict) -> str:
    """The markdown table: mean +- std over seeds per code length (K + c bits), next to the published numbers."""
    lines = ["| code: K + c bits | " + " | ".join(label for _, label in COLUMNS)
             + " | validation mAP@20 (gap to test) | DHCL published MAP@20 | train time / run |",
             "|---|" + "---|" * (len(COLUMNS) + 3)]
    for b in sorted({r["bits"] for r in results["runs"]}):
        rows = [r for r in results["runs"] if r["bits"] == b]
        cells = []
        for key, _ in COLUMNS:
            vals = [100 * r["test"][key] for r in rows]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.2f} +- {sd:.2f}")
        # The selecting split's score beside the test's: how much the validation flatters (or not) the model.
        val = [100 * r["val"]["mAP@20"] for r in rows if "mAP@20" in r.get("val", {})]
        test = [100 * r["test"]["mAP@20"] for r in rows if "mAP@20" in r.get("val", {})]
        gap = f"{statistics.mean(val):.2f} ({statistics.mean(val) - statistics.mean(test):+.2f})" if val else "-"
        t = statistics.median(r["train_time_s"] for r in rows)
        lines.append(f"| {code_length(results, b)} | " + " | ".join(cells)
                     + f" | {gap} | {PUBLISHED.get(b, float('nan')):.2f} | {t:.0f} s |")
        refits = [r["refit"] for r in rows if "refit" in r]
        if refits:  # the same code length refit on every training image for the selected epoch count
            cells = []
            for key, _ in COLUMNS:
                vals = [100 * r[key] for r in refits]
                cells.append(f"{statistics.mean(vals):.2f} +- {statistics.stdev(vals) if len(vals) > 1 else 0:.2f}")
            t = statistics.median(r["train_time_s"] for r in refits)
            lines.append(f"| {code_length(results, b)}, refit | " + " | ".join(cells) + f" | - | "
                         f"{PUBLISHED.get(b, float('nan')):.2f} | {t:.0f} s |")
    return "\n".join(lines)


def tie_table(results: dict) -> str:
    """Markdown: per code length, mAP@20 / mAP@all as ranked (ties by index) and over random database orders.

    The spread is the standard deviation over the orders of one run, then its median over seeds; the range is the
    widest min-max over orders among the seeds, in points.
    """
    n = len(results["runs"][0]["tie_orders"]["mAP@all"])
    lines = [f"| code: K + c bits | mAP@20 by index | mean over {n} orders | sd over orders | max - min | "
             f"mAP@all by index | sd over orders |", "|---" * 7 + "|"]
    for b in sorted({r["bits"] for r in results["runs"]}):
        rows = [r for r in results["runs"] if r["bits"] == b]
        cells = []
        for key in ("mAP@20", "mAP@all"):
            vals = [100 * np.array(r["tie_orders"][key]) for r in rows]
            cells.append(f"{statistics.mean(100 * r['test'][key] for r in rows):.2f}")
            sd = statistics.median(float(v.std(ddof=1)) for v in vals)
            if key == "mAP@20":
                cells += [f"{statistics.mean(float(v.mean()) for v in vals):.2f}", f"{sd:.3f}",
                          f"{max(float(v.max() - v.min()) for v in vals):.3f}"]
            else:
                cells.append(f"{sd:.3f}")
        lines.append(f"| {code_length(results, b)} | " + " | ".join(cells) + " |")
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
    ap.add_argument("--tie-orders", type=int, default=20, help="random database orders per run")
    ap.add_argument("--out", default="benchmarks/results/dhcl_ucmd.json")
    ap.add_argument("--refit", action="store_true", help="also refit every run on all training images for the "
                    "epoch count it selected (rows 'refit')")
    a, rest = ap.parse_known_args(argv)
    results = run(a.data, a.bits, a.seeds, a.epochs, a.runs_root, parse_cli_overrides(rest), a.tie_orders,
                  a.refit)
    Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    text = table(results) + "\n\nTie orders (the database permuted at random, queries still left out by index):\n\n" \
        + tie_table(results) + "\n"
    Path(a.out).with_name(Path(a.out).stem + "_table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
