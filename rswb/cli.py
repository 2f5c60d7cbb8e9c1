"""The ``rswb`` command: the same library, run headless.

Exit codes: 0 success; 2 bad input (data, options, a run folder, a damaged file, a full disk), printed as one line
naming the file or option; 1 a bug of rswb's (the traceback, then the versions to report with it); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from rswb.data.synthetic import synth_all

    paths = synth_all(Path(args.out) if args.out else None, seed=args.seed, force=args.force, progress=True)
    for kind, p in paths.items():
        print(f"{kind:<9} {p}")
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from rswb.data.check import format_summary, summarize

    summary = summarize(args.path, image_root=args.images, image_map=args.image_map)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_summary(summary))
    return 0


_TRAIN_USAGE = """rswb train TASK [--profile NAME] [--config FILE.yaml] [--name NAME] [--runs-root DIR] [--resume]
                  [--overwrite] [--OPTION VALUE ...]

Train a registered task (or "package.module:name" for your own) with the rswb engine. Every other --option
sets a training option (epochs, lr, batch-size, ...) or an option of the task; `rswb train TASK --help` lists
both and the task's profiles, `rswb train --list` the tasks. --profile starts from one of the task's recipes (the
ones the notebooks and result tables name: quick, cpu, finetune, full); the config file and --options override it.
Under torchrun (torchrun --nproc-per-node N -m rswb.cli train ...) the same command trains data-parallel."""


def _cmd_train(args: argparse.Namespace) -> int:
    from rswb.config import parse_cli_overrides
    from rswb.registry import list_names

    if args.list:
        import rswb.tasks  # noqa: F401  (registers the built-in tasks)

        print("\n".join(list_names("task")) or "(no tasks registered)")
        return 0
    if args.show_help or args.task is None:
        print(_TRAIN_USAGE)
        return 0
    rest = list(args.rest)
    if "-h" in rest or "--help" in rest:
        import rswb.tasks  # noqa: F401
        from rswb.engine.launch import describe_task

        print(_TRAIN_USAGE.split("\n\n")[0] + "\n\n" + describe_task(args.task))
        return 0
    opts = parse_cli_overrides(rest)
    run_opts = {k: opts.pop(k) for k in ("config", "name", "runs_root", "resume", "overwrite", "profile") if k in opts}
    import rswb.tasks  # noqa: F401
    from rswb.engine.launch import train_task

    result = train_task(args.task, opts, config_file=run_opts.get("config"), run_name=run_opts.get("name"),
                        runs_root=run_opts.get("runs_root", "runs"), resume=bool(run_opts.get("resume", False)),
                        overwrite=bool(run_opts.get("overwrite", False)), profile=run_opts.get("profile"))
    print(f"run folder: {result.run_dir}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import rswb.tasks  # noqa: F401
    from rswb.engine import EvalContext, select_device
    from rswb.engine.launch import load_run
    from rswb.engine.runs import RunFolder, resolve_run

    run = resolve_run(args.run, args.root)
    device = select_device(args.device)
    folder = RunFolder(run)
    unfinished = folder.config.exists() and not folder.final.exists()
    if unfinished:  # its best.pt is the best epoch so far, not the run's selected weights
        history = folder.read_history()
        print(f"note: {run} has not finished ({len(history)} epoch(s) recorded, no metrics.json): these are the "
              f"{args.weights} weights so far", file=sys.stderr)
    wanted = ["test", "val"] if args.split == "both" else [args.split]
    bundle = load_run(run, weights=args.weights, overrides={"ties": args.ties} if args.ties else None,
                      splits=wanted, device=device)
    bundle.task.to(device)
    splits = {"test": bundle.test, "val": bundle.val}
    results = {}
    for split in wanted:
        if splits[split] is None:
            raise ValueError(f"{run}: the task has no {split} split")
        ctx = EvalContext(device, batch_size=args.batch_size, progress=not args.json, desc=split)
        results[split] = bundle.task.evaluate(splits[split], ctx)
    if args.json:
        print(json.dumps({**results, **bundle.task.protocol(), "finished": not unfinished}, indent=2))
    else:
        keys = sorted({k for r in results.values() for k in r})
        rules = ", ".join(f"{k} {v}" for k, v in bundle.task.protocol().items())
        print(f"{run} ({args.weights} weights{'; ' + rules if rules else ''})")
        print(f"  {'metric':<16}" + "".join(f"{s:>10}" for s in results))
        for k in keys:
            print(f"  {k:<16}" + "".join(f"{results[s].get(k, float('nan')):>10.4f}" for s in results))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    import rswb.tasks  # noqa: F401  (registers the tasks)
    from rswb.engine.runs import resolve_run
    from rswb.report import run_report

    if args.items < 1:
        raise ValueError(f"--items must be at least 1, got {args.items}")
    path = run_report(resolve_run(args.run, args.root), args.out, device=args.device, items=args.items)
    print(f"report written: {path}")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    import rswb.tasks  # noqa: F401
    from rswb.data.image_text import RetrievalSplit
    from rswb.engine import select_device
    from rswb.engine.launch import load_run
    from rswb.engine.runs import resolve_run
    from rswb.infer import search_text, split_embeddings

    run = resolve_run(args.run, args.root)
    bundle = load_run(run, splits=(args.split,), device=args.device)
    split = bundle.test if args.split == "test" else bundle.val
    if not isinstance(split, RetrievalSplit):
        raise ValueError(f"{run}: not a retrieval run (rswb train retrieval)")
    emb = split_embeddings(bundle.task, split, select_device(args.device))
    hits = search_text(bundle.task, split, args.query, k=args.k, embeddings=emb)
    if args.json:
        print(json.dumps(hits, indent=2))
        return 0
    print(f"top {len(hits)} of {split.num_images} {args.split} images for {args.query!r} ({run.name}):")
    for h in hits:
        print(f"  {h['rank']:>2}. {h['score']:.3f}  {h['path']}")
        print(f"      {h['captions'][0] if h['captions'] else ''}")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from rswb.io import atomic_write_text
    from rswb.tasks.pha import stage_widths
    from rswb.tasks.pha.pair import pair_alignment
    from rswb.tasks.pha.pretrain import PretrainRecipe

    widths = stage_widths(args.widths)
    recipe = PretrainRecipe(steps=args.steps, batch_size=args.batch_size, lr=args.lr, temperature=args.temperature)
    out = pair_alignment(args.data, recipe, seed=args.seed, grid=args.grid, widths=widths, ms_patch=args.ms_patch,
                         cache_dir=args.cache_dir, device=args.device or "cpu", progress=not args.no_progress)
    text = json.dumps(out, indent=1)
    if args.out:
        atomic_write_text(text + "\n", Path(args.out))
    if args.json:
        print(text)
        return 0
    print(f"{out['source']}: MS {out['scene']['ms']}, ratio {out['scene']['ratio']}; {out['train_pixels']} training "
          f"pixels outside {out['tiles']['held_out']} held-out tiles of {out['tiles']['grid']}x{out['tiles']['grid']}, "
          f"{out['eval_patches']} held-out patch pairs (chance R@1 {out['untrained']['chance_R@1']:.2f} %)")
    print(f"  {'branches':<34}{'R@1 MS->PAN':>12}{'R@1 PAN->MS':>12}{'R@5 MS->PAN':>12}{'R@5 PAN->MS':>12}")
    names = {"untrained": "untrained", "within": "pre-trained, within-modality only",
             "cross": "pre-trained, + cross-modal (pha_v6)"}
    for key, name in names.items():
        if key in out:
            m = out[key]
            print(f"  {name:<34}{m['R@1_ms2pan']:>12.2f}{m['R@1_pan2ms']:>12.2f}{m['R@5_ms2pan']:>12.2f}"
                  f"{m['R@5_pan2ms']:>12.2f}")
    return 0


def _cmd_notebooks_run(args: argparse.Namespace) -> int:
    import yaml

    from rswb.notebooks import run_suite

    params = {}
    for item in args.param:
        if "=" not in item:
            raise ValueError(f"--param {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        params[key] = yaml.safe_load(value)
    from rswb.notebooks import baselines_path, compare_to_baselines, load_baselines

    path = baselines_path(args.profile)
    if args.check and not path.exists():  # before any notebook runs
        raise FileNotFoundError(f"--check: no baselines file {path} for profile {args.profile}")
    report, results = run_suite(args.profile, args.only, params, args.reports)
    print(f"report: {report / 'index.html'}")
    failed = [r for r in results if r.status != "ok"]
    for r in failed:
        print(f"rswb notebooks: {r.name} failed: {r.error}", file=sys.stderr)
    drifted = []
    if args.check:
        base = load_baselines(path)
        drifted = [line for r in results if r.status == "ok" for line in compare_to_baselines(r.name, r.metrics, base)]
        for line in drifted:
            print(f"rswb notebooks: drift: {line}", file=sys.stderr)
        print(f"check against {path}: " + (f"{len(drifted)} metric(s) drifted" if drifted else "no drift"))
    return 1 if failed or drifted else 0


def _cmd_notebooks_baseline(args: argparse.Namespace) -> int:
    from rswb.notebooks import write_baselines

    path = write_baselines(args.reports, args.out, profile=args.profile, k=args.k)
    print(f"baselines written: {path}")
    return 0


def _cmd_runs_list(args: argparse.Namespace) -> int:
    from rswb.engine.runs import format_table, list_runs

    df = list_runs(args.root)
    if not df.empty:
        keep = [c for c in df.columns if c != "path" and (args.all or not c.startswith("val_"))]
        df = df[keep].set_index("run")
    print(format_table(df))
    return 0


def _cmd_runs_compare(args: argparse.Namespace) -> int:
    from rswb.engine.runs import compare, format_table

    choice = args.metrics.strip()
    metrics = None if choice == "all" else choice if choice == "headline" else [m.strip() for m in choice.split(",")]
    print(format_table(compare(args.runs, root=args.root, metrics=metrics, split=args.split)))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import subprocess

    import rswb

    # The benchmarks are a folder of the source checkout, next to the rswb package (they are not installed with it,
    # and the package never imports them): run them as `python -m benchmarks` in the checkout.
    root = Path(rswb.__file__).resolve().parents[1]
    if not (root / "benchmarks" / "__main__.py").is_file():
        print(
            f"rswb bench: error: no benchmarks/ folder at {root / 'benchmarks'}; the benchmarks come with the source "
            "checkout (git clone), not with an installed package",
            file=sys.stderr,
        )
        return 2
    cmd = [sys.executable, "-m", "benchmarks", *args.names, *(["--json"] if args.json else []),
           *(["--quick"] if args.quick else [])]
    sys.stdout.flush()
    return subprocess.run(cmd, cwd=root).returncode


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``rswb`` command (sub-commands ``data synth`` and ``data check``)."""
    parser = argparse.ArgumentParser(prog="rswb", description="rswb: remote-sensing research workbench")
    parser.add_argument("--version", action="store_true",
                        help="print rswb's version, torch's version and the device training would use, then exit")
    # Not required: ``rswb`` alone prints this help (main), the convention of command-line tools.
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    data = sub.add_parser("data", help="generate, inspect and validate datasets")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    synth = data_sub.add_parser("synth", help="write the embedded synthetic datasets (deterministic, seeded)")
    synth.add_argument("--out", help="output folder (default: $RSWB_DATA_DIR, else data/embedded in a checkout)")
    synth.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    synth.add_argument("--force", action="store_true", help="regenerate even if the data is already there")
    synth.set_defaults(func=_cmd_data_synth)

    check = data_sub.add_parser("check", help="detect a dataset's format, validate it and print a summary")
    check.add_argument("path", help="MS+PAN folder or .mat, scene folder, caption folder or Karpathy JSON")
    check.add_argument("--images", help="image root for a caption set (e.g. the UC Merced folder for UCM-Captions)")
    check.add_argument("--image-map", help="CSV of caption-file name,image path rows: an explicit caption-image join")
    check.add_argument("--json", action="store_true", help="print the summary as JSON")
    check.set_defaults(func=_cmd_data_check)

    train = sub.add_parser("train", help="train a registered task (rswb train --list; rswb train TASK --help)",
                           add_help=False, usage=_TRAIN_USAGE.split("\n\n")[0])
    train.add_argument("--list", action="store_true", help="list the registered tasks")
    train.add_argument("-h", "--help", action="store_true", dest="show_help", help="show this help")
    train.add_argument("task", nargs="?", help="task name")
    train.add_argument("rest", nargs=argparse.REMAINDER, help="--option value pairs")
    train.set_defaults(func=_cmd_train)

    ev = sub.add_parser("eval", help="re-score a finished run from its folder (rebuilds the task, loads best.pt)")
    ev.add_argument("run", help="run name (under --root) or run folder")
    ev.add_argument("--runs-root", "--root", dest="root", default="runs",
                    help="folder of runs (default: runs; --root is the old spelling)")
    ev.add_argument("--split", default="test", choices=["test", "val", "both"], help="which split to score")
    ev.add_argument("--weights", default="best", choices=["best", "last"], help="best.pt or checkpoint.pt")
    ev.add_argument("--device", default=None, help="cuda | mps | cpu (default: the best available)")
    ev.add_argument("--batch-size", type=int, default=128, help="evaluation batch size")
    # The tie rules of rswb.metrics.retrieval.TIE_RULES, written out so that `rswb --help` starts without importing
    # torch; tests/test_cli.py keeps the two equal.
    ev.add_argument("--ties", default=None,
                    choices=["expected", "optimistic", "pessimistic", "published", "clip_benchmark"],
                    help="retrieval runs: the tie rule of the headline numbers (default: the run's own); "
                         "re-scores without retraining")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.set_defaults(func=_cmd_eval)

    se = sub.add_parser("search", help="the images of a retrieval run's test split that best match a text query")
    se.add_argument("run", help="run name (under --root) or run folder of rswb train retrieval")
    se.add_argument("query", help="the text to search for, e.g. \"a river next to a forest\"")
    se.add_argument("--k", type=int, default=5, help="how many images (default 5)")
    se.add_argument("--split", default="test", choices=["test", "val"], help="the gallery")
    se.add_argument("--runs-root", "--root", dest="root", default="runs",
                    help="folder of runs (default: runs; --root is the old spelling)")
    se.add_argument("--device", default=None, help="cuda | mps | cpu (default: the best available)")
    se.add_argument("--json", action="store_true", help="print the hits as JSON")
    se.set_defaults(func=_cmd_search)

    pt = sub.add_parser("pretrain", help="pre-train PHA branches on an unlabelled MS/PAN pair and score how well MS "
                                         "and PAN patches of held-out tiles find each other")
    pt.add_argument("data", help="an MS/PAN pair (.mat pair or lab-format folder); labels are not needed")
    pt.add_argument("--steps", type=int, default=300, help="pre-training steps (default 300)")
    pt.add_argument("--batch-size", type=int, default=256, help="patches per step, each in two views (default 256)")
    pt.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    pt.add_argument("--temperature", type=float, default=0.2, help="InfoNCE temperature (default 0.2)")
    pt.add_argument("--grid", type=int, default=4, help="tiles per side; a quarter of them is held out (default 4)")
    pt.add_argument("--widths", default="16,32,64", help="stage widths of the branches (default 16,32,64)")
    pt.add_argument("--ms-patch", type=int, default=16, help="MS patch side (default 16)")
    pt.add_argument("--seed", type=int, default=0, help="seed of the weights and the pre-training (default 0)")
    pt.add_argument("--cache-dir", default=None, help="where pre-trained weights are cached")
    pt.add_argument("--device", default=None, help="cuda | mps | cpu (default: cpu)")
    pt.add_argument("--out", default=None, help="also write the result as JSON here")
    pt.add_argument("--json", action="store_true", help="print the result as JSON")
    pt.add_argument("--no-progress", action="store_true", help="no progress bars")
    pt.set_defaults(func=_cmd_pretrain)

    rp = sub.add_parser("report", help="one HTML page for a finished run: metrics with class names, training "
                                       "curves, confusion matrix, attention maps")
    rp.add_argument("run", help="run name (under --runs-root) or run folder")
    rp.add_argument("--out", default=None, help="the page (default: RUN/report.html)")
    rp.add_argument("--items", type=int, default=4, help="test items shown with their attention maps (default 4)")
    rp.add_argument("--runs-root", "--root", dest="root", default="runs", help="folder of runs (default: runs)")
    rp.add_argument("--device", default=None, help="cuda | mps | cpu (default: the best available)")
    rp.set_defaults(func=_cmd_report)

    nbs = sub.add_parser("notebooks", help="run the notebook suite headless into an HTML report")
    nbs_sub = nbs.add_subparsers(dest="notebooks_command", metavar="ACTION", required=True)
    nr = nbs_sub.add_parser("run", help="execute the notebooks with papermill into reports/<timestamp>/")
    nr.add_argument("--profile", default="quick",
                    help="quick (make demo, embedded data) | real (../shared/data, CPU) | full (real schedules, GPU)")
    nr.add_argument("--check", action="store_true",
                    help="compare every notebook's metrics with notebooks/baselines/PROFILE.yaml; exit 1 on drift")
    nr.add_argument("--only", nargs="+", default=None, metavar="NB", help="notebooks to run, e.g. 02 04")
    nr.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override a parameter in every notebook that has it (YAML value; repeatable)")
    nr.add_argument("--reports", default="reports", help="parent folder of the report folders (default: reports)")
    nr.set_defaults(func=_cmd_notebooks_run)
    nb_base = nbs_sub.add_parser("baseline", help="write notebooks/baselines/PROFILE.yaml from report folders")
    nb_base.add_argument("reports", nargs="+", metavar="REPORT",
                         help="report folder(s) of `rswb notebooks run --profile PROFILE`; several (seed runs): "
                              "tolerances from their spread")
    nb_base.add_argument("--profile", default="quick", help="the profile the reports ran (default: quick)")
    nb_base.add_argument("--k", type=float, default=3.0, help="standard deviations of the seed spread (default 3)")
    nb_base.add_argument("--out", default=None, help="baselines file (default: notebooks/baselines/PROFILE.yaml)")
    nb_base.set_defaults(func=_cmd_notebooks_baseline)

    runs = sub.add_parser("runs", help="list and compare run folders")
    runs_sub = runs.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    rl = runs_sub.add_parser("list", help="one line per run under --root")
    rl.add_argument("--runs-root", "--root", dest="root", default="runs",
                    help="folder of runs (default: runs; --root is the old spelling)")
    rl.add_argument("--all", action="store_true", help="also show validation metrics")
    rl.set_defaults(func=_cmd_runs_list)
    rc = runs_sub.add_parser("compare", help="runs side by side: method, version, data, metrics, time")
    rc.add_argument("runs", nargs="+", help="run names (under --root) or run folders")
    rc.add_argument("--runs-root", "--root", dest="root", default="runs",
                    help="folder of runs (default: runs; --root is the old spelling)")
    rc.add_argument("--metrics", default="headline",
                    help="comma-separated metric names, 'headline' (default: the numbers each task is judged by, "
                         "e.g. OA / AA / kappa for pha) or 'all'")
    rc.add_argument("--split", default="test", choices=["test", "val"], help="which metrics to show")
    rc.set_defaults(func=_cmd_runs_compare)

    bench = sub.add_parser("bench", help="speed benchmarks: rswb vs a slow reference (source checkout only)")
    bench.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    bench.add_argument("--json", action="store_true", help="print one JSON object {name: result}")
    bench.add_argument("--quick", action="store_true", help="tiny problem sizes: checks the plumbing, not speed")
    bench.set_defaults(func=_cmd_bench)
    return parser


def _own_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rswb")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def version_text() -> str:
    """``rswb X.Y.Z (torch A.B.C, device D)``: what ``rswb --version`` prints (the device that training would pick)."""
    import torch

    from rswb.engine.device import select_device

    return f"rswb {_own_version()} (torch {torch.__version__}, device {select_device()})"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    from rswb.data.errors import DataError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(version_text())
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    as_json = bool(getattr(args, "json", False))
    try:
        code = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not as a traceback at exit
        return code
    except BrokenPipeError:
        # The reader went away (``rswb data check ... | head``): not an error of ours; silence the flush at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except DataError as err:
        _report_error("data error", err, as_json, path=err.path)
        return 2
    except (KeyError, ValueError, OSError, FloatingPointError) as err:
        # Bad options, unknown tasks or runs, a locked or existing run folder, a damaged checkpoint, a full disk, a
        # folder that cannot be written, a diverged run: one clear line naming the file or option, not a traceback.
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        _report_error(f"{args.command} error", msg, as_json)
        return 2
    except KeyboardInterrupt:
        print("rswb: interrupted (a run stopped this way resumes with --resume)", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - anything else is a bug of ours: the traceback, and who to tell
        import traceback

        traceback.print_exc()
        print(f"rswb: this is a bug in rswb, not in your input; please report it with the traceback above and this "
              f"line: {_version_line()}", file=sys.stderr)
        return 1


def _version_line() -> str:
    """``rswb X.Y.Z, torch A.B.C, Python P``, without touching the device (a bug report must not fail itself)."""
    import torch

    return f"rswb {_own_version()}, torch {torch.__version__}, Python {sys.version.split()[0]}, {sys.platform}"


def _report_error(kind: str, err: object, as_json: bool, path: object = None) -> None:
    """One line on stderr; with ``--json`` also a JSON error object on stdout (so that scripts always get JSON)."""
    print(f"rswb: {kind}: {err}", file=sys.stderr)
    if as_json:
        print(json.dumps({"error": {"kind": kind, "message": str(err),
                                    "path": None if path is None else str(path)}}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
