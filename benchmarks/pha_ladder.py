"""The PHA version ladder: test OA / AA / kappa of every version, mean +- std over seeds, and training time.

Each (version, seed) is one ``rswb train pha`` run with ``seed = split_seed = s`` (so the seeds vary both the
initialisation and the few-shot draw); finished runs are reused. Writes ``benchmarks/results/pha_<tag>.json`` and
``pha_<tag>.md`` (the table; ``pha.md`` collects the tables with their reading).

Usage::

    python -m benchmarks.pha_ladder --tag embedded --shots 10            # the embedded synthetic scene
    python -m benchmarks.pha_ladder --tag ucm_5shot --data ../shared/data/UCMerced_LandUse --shots 5
    python -m benchmarks.pha_ladder --tag hohhot --data /path/to/Hohhot --shots 0.02 --extra val_shots=0.01

A version may carry options of its own after ``@`` (comma-separated ``key=value``), which makes it a row of its own,
e.g. the pre-training control ``pha_v1@pretrain=within`` beside ``pha_v1`` and ``pha_v6``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks import machine_info, parse_value

VERSIONS = ("ms_only", "pan_only", "pha_v1", "pha_v2", "pha_v3", "pha_v4", "pha_v5", "pha_v6")
RESULTS = Path(__file__).parent / "results"


def run(tag: str, data: str | None, versions: list[str], seeds: list[int], shots: float, epochs: int | None,
        runs_root: str, extra: dict) -> dict:
    """Train every (version, seed) run and return their test metrics and times."""
    import rswb.tasks  # noqa: F401  (registers "pha")
    from rswb.engine.launch import train_task

    results: dict = {"tag": tag, "data": data or "embedded", "shots": shots, "epochs": epochs, "options": extra,
                     "runs": []}
    for v in versions:
        version, own = version_options(v)
        for s in seeds:
            name = f"{tag}-{v.replace('@', '-').replace('=', '').replace(',', '-')}-s{s}"
            final = Path(runs_root) / name / "metrics.json"
            t0 = time.perf_counter()
            if not final.exists():
                opts = {"data": data, "version": version, "shots": shots, "seed": s, "split_seed": s,
                        "progress": False, **({"epochs": epochs} if epochs else {}), **extra, **own}
                train_task("pha", opts, run_name=name, runs_root=runs_root, overwrite=True)
            metrics = json.loads(final.read_text())
            results["runs"].append({"version": v, "seed": s, "test": metrics["test"], "val": metrics["val"],
                                    "train_time_s": metrics["time_s"], "wall_s": time.perf_counter() - t0,
                                    "best_epoch": metrics["best_epoch"], "epochs_run": metrics["epochs_run"],
                                    "device": metrics["device"]})
            print(f"{name}: OA {100 * metrics['test']['OA']:.2f}  ({metrics['time_s']:.0f} s)", flush=True)
    results["machine"] = machine_info()
    return results


def version_options(spec: str) -> tuple[str, dict]:
    """``"pha_v1@pretrain=within,pretrain_steps=100"`` -> ``("pha_v1", {"pretrain": "within", ...})``."""
    version, _, rest = spec.partition("@")
    return version, {k: parse_value(v) for k, v in (kv.split("=", 1) for kv in rest.split(",") if kv)}


def summary(results: dict) -> dict[str, dict[str, tuple[float, float]]]:
    """``{version: {metric: (mean, std)}}`` in percent, over seeds."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for v in dict.fromkeys(r["version"] for r in results["runs"]):
        rows = [r for r in results["runs"] if r["version"] == v]
        out[v] = {}
        for key in ("OA", "AA", "kappa"):
            vals = [100 * r["test"][key] for r in rows]
            out[v][key] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
        val = [100 * r["val"]["OA"] for r in rows if r.get("val")]
        out[v]["val_OA"] = (statistics.mean(val) if val else float("nan"), 0.0)
        out[v]["time"] = (statistics.median(r["train_time_s"] for r in rows), 0.0)
        out[v]["n"] = (len(rows), 0.0)
    return out


def table(results: dict) -> str:
    """Markdown: one row per version, mean +- std over seeds, the OA change against the previous rung."""
    s = summary(results)
    lines = ["| version | OA | AA | Kappa | OA change vs previous rung | validation OA | seeds | train time / run |",
             "|---|---|---|---|---|---|---|---|"]
    prev = None
    for v, m in s.items():
        delta = f"{m['OA'][0] - s[prev]['OA'][0]:+.2f}" if prev and v.startswith("pha_v") and prev.startswith(
            "pha_v") and "@" not in v + prev else ""
        lines.append(f"| {v} | {m['OA'][0]:.2f} +- {m['OA'][1]:.2f} | {m['AA'][0]:.2f} +- {m['AA'][1]:.2f} | "
                     f"{m['kappa'][0]:.2f} +- {m['kappa'][1]:.2f} | {delta} | {m['val_OA'][0]:.2f} | "
                     f"{int(m['n'][0])} | {m['time'][0]:.0f} s |")
        prev = v
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tag", required=True, help="name of this experiment (runs and result files)")
    p.add_argument("--data", default=None, help="lab folder, .mat pair or scene folder (default: embedded scene)")
    p.add_argument("--versions", nargs="+", default=list(VERSIONS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--shots", type=float, default=10)
    p.add_argument("--epochs", type=int, default=None, help="default: the task's (30)")
    p.add_argument("--runs-root", default="runs/pha_ladder")
    p.add_argument("--extra", nargs="*", default=[], help="more options as key=value (e.g. image_size=128)")
    a = p.parse_args(argv)
    extra = dict(kv.split("=", 1) for kv in a.extra)
    extra = {k: parse_value(v) for k, v in extra.items()}
    shots = int(a.shots) if a.shots >= 1 else a.shots
    results = run(a.tag, a.data, a.versions, a.seeds, shots, a.epochs, a.runs_root, extra)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"pha_{a.tag}.json").write_text(json.dumps(results, indent=1))
    cmd = "python -m benchmarks.pha_ladder " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    text = f"Command: `{cmd}`\n\n" + table(results) + "\n"
    (RESULTS / f"pha_{a.tag}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
