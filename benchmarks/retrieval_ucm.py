"""Image-text retrieval on a caption set: VSE++, CLIP-style, FISVL, KAMCL and the ablation of each component.

Every (variant, seed) is one ``rswb train retrieval`` run with the same backbone, text encoder, epochs and batch
size (the task's defaults unless ``--extra`` changes them); finished runs are reused. A variant is a method plus
option overrides (``VARIANTS``). Writes ``benchmarks/results/<out>.json`` and ``<out>_table.md`` (``--out``,
default ``retrieval_<tag>``): the test table, mean +- std over seeds, and the median training time of a run.

Usage::

    python -m benchmarks.retrieval_ucm --tag ucm --data ../shared/data/ucm_captions
        --images ../shared/data/UCMerced_LandUse                       # (one line) all variants, seeds 0 1 2
    python -m benchmarks.retrieval_ucm --tag ucm --variants clip fisvl --seeds 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks import machine_info, parse_value

RESULTS = Path(__file__).parent / "results"

# name -> task options; "METHOD-no-X" is the full method without component X.
VARIANTS: dict[str, dict] = {
    "vsepp": {"method": "vsepp"},
    "clip": {"method": "clip"},
    "fisvl": {"method": "fisvl"},
    "kamcl": {"method": "kamcl"},
    "fisvl-no-local": {"method": "fisvl", "local_branch": False},
    "fisvl-no-fgis": {"method": "fisvl", "fgis_steps": 0},
    "fisvl-no-affil": {"method": "fisvl", "affil_weight": 0.0},
    "fisvl-no-hard": {"method": "fisvl", "hard_weight": 0.0},
    "fisvl-no-value": {"method": "fisvl", "value_stage": 1.0},
    "kamcl-dup": {"method": "kamcl", "duplicate_captions": True},
    "kamcl-no-ha": {"method": "kamcl", "hierarchical": False},
    "kamcl-no-knowledge": {"method": "kamcl", "num_tags": 0},
    "kamcl-no-queue": {"method": "kamcl", "queue_size": 0},
    "kamcl-no-moco": {"method": "kamcl", "moco_weight": 0.0},
}
KEYS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "mR")


def run(tag: str, data: str | None, images: str | None, variants: list[str], seeds: list[int], runs_root: str,
        extra: dict) -> dict:
    """Train every (variant, seed) run (reusing finished ones) and return their test metrics and times."""
    import rswb.tasks  # noqa: F401  (registers "retrieval")
    from rswb.engine.launch import train_task

    results: dict = {"tag": tag, "data": data or "embedded", "images": images, "options": extra, "runs": []}
    for v in variants:
        for s in seeds:
            name = f"{tag}-{v}-s{s}"
            final = Path(runs_root) / name / "metrics.json"
            t0 = time.perf_counter()
            # A run scored under another tie rule (or before runs recorded one) selected its epoch by that rule:
            # train it again rather than mix protocols in one table.
            if not final.exists() or json.loads(final.read_text()).get("ties") != extra.get("ties", "expected"):
                opts = {"data": data, "images": images, "seed": s, "split_seed": 0, "progress": False,
                        **VARIANTS[v], **extra}
                train_task("retrieval", opts, run_name=name, runs_root=runs_root, overwrite=True)
            metrics = json.loads(final.read_text())
            results["runs"].append({"variant": v, "seed": s, "test": metrics["test"], "val": metrics["val"],
                                    "train_time_s": metrics["time_s"], "wall_s": time.perf_counter() - t0,
                                    "best_epoch": metrics["best_epoch"], "device": metrics["device"],
                                    "ties": metrics["ties"]})
            print(f"{name}: test mR {metrics['test']['mR']:.2f}  ({metrics['time_s']:.0f} s)", flush=True)
    results["machine"] = machine_info()
    return results


def _mean_sd(rows: list[dict], key: str) -> tuple[float, float]:
    vals = [r["test"][key] for r in rows]
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _groups(results: dict) -> dict[str, list[dict]]:
    return {v: [r for r in results["runs"] if r["variant"] == v] for v in dict.fromkeys(r["variant"] for r in
                                                                                          results["runs"])}


def table(results: dict, rule: str = "") -> str:
    """Markdown: one row per variant, mean +- std over seeds of every test metric, median training time.

    Args:
        results: what :func:`run` returns.
        rule: ``""`` for the runs' headline rule (``expected`` by default), or ``"optimistic"``,
            ``"pessimistic"``, ``"published"`` for the numbers the task reports beside it (``{rule}_{key}``).
    """
    prefix = f"{rule}_" if rule else ""
    head = "| variant | " + " | ".join(k.replace("_", " ") for k in KEYS) + " | seeds | train time / run |"
    lines = [head, "|---" * (len(KEYS) + 3) + "|"]
    for v, rows in _groups(results).items():
        cells = ["{:.2f} +- {:.2f}".format(*_mean_sd(rows, prefix + k)) for k in KEYS]
        t = statistics.median(r["train_time_s"] for r in rows)
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {len(rows)} | {t:.0f} s |")
    return "\n".join(lines)


def range_table(results: dict) -> str:
    """Markdown: per variant, mR and i2t R@1 under every tie rule (means over seeds), bounds as a range.

    ``mR clip_benchmark`` is clip_benchmark's recall (``torch.topk``'s order among ties); ``n/a`` for runs scored
    before rswb had that rule.
    """
    lines = ["| variant | mR expected | mR pessimistic - optimistic | mR published | mR clip_benchmark | "
             "i2t R@1 expected | i2t R@1 pessimistic - optimistic | i2t R@1 published |", "|---" * 8 + "|"]
    for v, rows in _groups(results).items():
        cells = []
        for k in ("mR", "i2t_R@1"):
            m = {r: _mean_sd(rows, f"{r}_{k}" if r else k)[0] for r in ("", "pessimistic", "optimistic", "published")}
            cells += [f"{m['']:.2f}", f"{m['pessimistic']:.2f} - {m['optimistic']:.2f}", f"{m['published']:.2f}"]
            if k == "mR":
                # The headline key where a run's own rule is clip_benchmark, else the key the task reports beside it.
                clip = [r["test"].get("mR" if r.get("ties") == "clip_benchmark" else "clip_benchmark_mR") for r in rows]
                cells.append(f"{statistics.mean(clip):.2f}" if None not in clip else "n/a")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(results: dict, cmd: str) -> str:
    """The ``_table.md`` text: headline (expected ties), published-protocol and tie-range tables."""
    rules = sorted({r.get("ties", "?") for r in results["runs"]})
    return (f"Command: `{cmd}`\n\nHeadline tie rule (also the rule validation selects by): {', '.join(rules)}\n\n"
            + table(results) + "\n\nPublished evaluation loop (`ties='published'`, per-query "
            "`np.argsort(...)[::-1]`), same runs and epochs:\n\n" + table(results, "published")
            + "\n\nThe range every order of tied items allows:\n\n" + range_table(results) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tag", required=True, help="name of this experiment (runs and result files)")
    p.add_argument("--data", default=None, help="caption folder or JSON (default: the embedded captions)")
    p.add_argument("--images", default=None, help="image root (UCM-Captions: the UC Merced folder)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--runs-root", default="runs/retrieval")
    p.add_argument("--extra", nargs="*", default=[], help="more options as key=value (e.g. epochs=20)")
    p.add_argument("--out", default=None, help="result file stem (default: retrieval_<tag>)")
    a = p.parse_args(argv)
    extra = {k: parse_value(v) for k, v in (kv.split("=", 1) for kv in a.extra)}
    results = run(a.tag, a.data, a.images, a.variants, a.seeds, a.runs_root, extra)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = a.out or f"retrieval_{a.tag}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=1))
    cmd = "python -m benchmarks.retrieval_ucm " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(results, cmd)
    (RESULTS / f"{stem}_table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
