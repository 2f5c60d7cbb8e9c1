"""``python -m benchmarks [NAME ...] [--json] [--quick]``: run the speed benchmarks (what ``rswb bench`` calls)."""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks import format_result, names, run


def main(argv: list[str] | None = None) -> int:
    """Run the named benchmarks (default: all), print a table per benchmark or one JSON object; the exit status."""
    ap = argparse.ArgumentParser(prog="rswb bench", description="rswb speed benchmarks (results next to references)")
    ap.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    ap.add_argument("--json", action="store_true", help="print one JSON object {name: result}")
    ap.add_argument("--quick", action="store_true", help="tiny problem sizes: checks the plumbing, not speed")
    args = ap.parse_args(argv)
    known = names()
    wanted = list(dict.fromkeys(args.names)) or known
    unknown = [n for n in wanted if n not in known]
    if unknown:
        print(f"rswb bench: error: unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(known)}",
              file=sys.stderr)
        return 2
    results = {}
    for name in wanted:
        print(f"rswb bench: running {name}{' (quick)' if args.quick else ''} ...", file=sys.stderr, flush=True)
        results[name] = run(name, quick=args.quick)
        if not args.json:
            print(format_result(name, results[name]) + "\n", flush=True)
    if args.json:
        print(json.dumps(results, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
