"""Same seeds, same numbers: a refactor's behaviour check, run in two revisions and compared number by number.

Each revision is checked out into its own git worktree and runs, with its own code, the runs issue 31 named:
DHCL on UC Merced at 64 bits seed 0 (frozen, 15 epochs; ``--train-from head``, 30 epochs),
``benchmarks.retrieval_ucm`` for clip, fisvl and kamcl at seed 0, and ``benchmarks.pha_ladder --tag same --seeds 0``
on the embedded scene. Every numeric test and validation metric of every run is then compared exactly.

Usage (from the repository root, with ``../shared/data`` beside it; minutes per revision with warm caches, about half
an hour cold)::

    python -m benchmarks.same_numbers run REV OUT        # one revision's runs into OUT
    python -m benchmarks.same_numbers compare BEFORE AFTER --out benchmarks/results/NAME

``compare`` writes ``NAME.json`` (every run, its number count and every difference) and ``NAME.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import machine_info

REPO = Path(__file__).resolve().parents[1]
UCM = "../shared/data/UCMerced_LandUse"
CAPTIONS = "../shared/data/ucm_captions"


def commands(out: Path) -> dict[str, list[str]]:
    """The runs of the check, each a command run in the revision's worktree (its code on ``PYTHONPATH``)."""
    cli = [sys.executable, "-c", "import sys; from rswb.cli import main; sys.exit(main())"]
    hash_opts = ["train", "hash", "--data", UCM, "--bits", "64", "--seed", "0", "--runs-root", str(out / "runs")]
    return {
        "hash frozen": [*cli, *hash_opts, "--epochs", "15", "--name", "h64"],
        "hash --train-from head": [*cli, *hash_opts, "--epochs", "30", "--train-from", "head", "--name", "h64ft"],
        "retrieval clip fisvl kamcl": [sys.executable, "-m", "benchmarks.retrieval_ucm", "--tag", "ucm", "--data",
                                       CAPTIONS, "--images", UCM, "--runs-root", str(out / "runs" / "retrieval"),
                                       "--variants", "clip", "fisvl", "kamcl", "--seeds", "0",
                                       "--out", str(out / "retrieval")],
        "pha ladder (embedded)": [sys.executable, "-m", "benchmarks.pha_ladder", "--tag", "same", "--seeds", "0",
                                  "--runs-root", str(out / "runs" / "pha")],
    }


def run(rev: str, out: Path) -> None:
    """Run every command of the check with revision ``rev``'s code, in a worktree of its own."""
    out = out.resolve()
    tree = out / "tree"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=REPO, check=True)
    times = {}
    for name, cmd in commands(out).items():
        t0 = time.perf_counter()
        with open(out / f"{name.split()[0]}.log", "a") as log:
            # ../shared/data is resolved from the tree's parent's parent in a worktree: run from the main checkout's
            # root so the relative data paths mean what they mean there, with the revision's code first on the path.
            rc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(tree)}, stdout=log,
                                stderr=subprocess.STDOUT).returncode
        times[name] = round(time.perf_counter() - t0)
        print(f"{name}: rc {rc}, {times[name]} s", flush=True)
        if rc:
            raise SystemExit(f"{name} failed (rc {rc}); see {out}")
    (out / "times.json").write_text(json.dumps({"rev": rev, "seconds": times}, indent=1))


def numbers(root: Path) -> dict[str, dict[str, float]]:
    """Every numeric test / validation metric of every finished run under ``root/runs``: ``{run: {split/key: v}}``."""
    out = {}
    for path in sorted(root.glob("runs/**/metrics.json")):
        final = json.loads(path.read_text())
        out[str(path.parent.relative_to(root / "runs"))] = {
            f"{split}/{k}": v for split in ("test", "val") for k, v in (final.get(split) or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return out


def compare(before: Path, after: Path) -> dict:
    """Each run's numbers in both revisions: how many were compared and every one that differs."""
    b, a = numbers(before), numbers(after)
    runs = {}
    for name in sorted(set(b) | set(a)):
        if name not in b or name not in a:
            runs[name] = {"missing_in": "after" if name in b else "before"}
            continue
        keys = sorted(set(b[name]) | set(a[name]))
        diff = {k: {"before": b[name].get(k), "after": a[name].get(k)} for k in keys
                if b[name].get(k) != a[name].get(k)}
        runs[name] = {"compared": len(keys), "differ": diff,
                      "test": {k.split("/", 1)[1]: a[name][k] for k in keys if k.startswith("test/")}}
    return {"runs": runs, "all_equal": all(r.get("compared") and not r["differ"] for r in runs.values())}


def markdown(result: dict, before: str, after: str, out: str) -> str:
    """The comparison as a table, with the commands that reproduce it."""
    head = ("mAP@20", "mR", "OA", "kappa")
    lines = [f"# Same seeds, same numbers: {before} against {after}", "",
             "Commands (from the repository root, `../shared/data` beside it):", "", "```bash",
             f"python -m benchmarks.same_numbers run {before} /tmp/same/before",
             f"python -m benchmarks.same_numbers run {after} /tmp/same/after",
             f"python -m benchmarks.same_numbers compare /tmp/same/before /tmp/same/after --out {out}", "```", "",
             "| run | numbers compared (test + validation) | numbers that differ | headline test number |",
             "|---|---|---|---|"]
    for name, r in result["runs"].items():
        if "missing_in" in r:
            lines.append(f"| {name} | missing in {r['missing_in']} | | |")
            continue
        shown = next((f"{k} {r['test'][k]:.4f}" for k in head if k in r["test"]), "")
        lines.append(f"| {name} | {r['compared']} | {len(r['differ'])} | {shown} |")
    total = sum(r.get("compared", 0) for r in result["runs"].values())
    differ = sum(len(r.get("differ", {})) for r in result["runs"].values())
    verdict = ("every number is identical to the last digit" if result["all_equal"] else
               f"{differ} numbers differ (listed in the JSON)")
    lines += ["", f"{len(result['runs'])} runs, {total} numbers: {verdict}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="one revision's runs")
    r.add_argument("rev")
    r.add_argument("out", type=Path)
    c = sub.add_parser("compare", help="compare two revisions' runs")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    c.add_argument("--out", required=True, help="result file stem, e.g. benchmarks/results/same_numbers")
    c.add_argument("--labels", nargs=2, default=None, help="names of the two revisions in the page")
    a = p.parse_args()
    if a.cmd == "run":
        run(a.rev, a.out)
        return
    result = compare(a.before, a.after)
    labels = a.labels or [a.before.name, a.after.name]
    result.update(before=labels[0], after=labels[1], machine=machine_info())
    Path(f"{a.out}.json").write_text(json.dumps(result, indent=1))
    Path(f"{a.out}.md").write_text(markdown(result, labels[0], labels[1], a.out))
    print(Path(f"{a.out}.md").read_text())


if __name__ == "__main__":
    main()
