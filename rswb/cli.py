"""The ``rswb`` command: the same library, run headless.

Exit codes: 0 success, 2 bad input data (a :class:`rswb.data.DataError`, printed as one clear line), 1 other errors.
"""

from __future__ import annotations

import argparse
import json
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

    summary = summarize(args.path, image_root=args.images)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_summary(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``rswb`` command (sub-commands ``data synth`` and ``data check``)."""
    parser = argparse.ArgumentParser(prog="rswb", description="rswb: remote-sensing research workbench")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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
    check.add_argument("--json", action="store_true", help="print the summary as JSON")
    check.set_defaults(func=_cmd_data_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    from rswb.data.errors import DataError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DataError as err:
        print(f"rswb: data error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
