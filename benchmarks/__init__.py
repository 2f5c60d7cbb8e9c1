"""rswb speed benchmarks: a registry of named benchmarks, shared timing helpers and the machine description.

Every benchmark runs rswb and a slow reference in the same process on the same data and returns one flat result
dict with at least ``rswb_s``, ``reference_s`` and ``speedup`` (``reference_s / rswb_s``), plus ``floor_s`` and
``vs_floor`` (``rswb_s / floor_s``) where a memory-bandwidth floor is measured, and ``machine`` (see
:func:`machine_info`). ``rswb bench`` runs them by name; each module also runs alone (``python -m benchmarks.NAME``).

``quick=True`` shrinks every problem to a few milliseconds of work: for testing the plumbing, never for numbers.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

# name -> (module, function); the function takes ``quick: bool`` and returns the result dict.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "retrieval_rsicd": ("benchmarks.retrieval", "run_rsicd"),
    "retrieval_5k": ("benchmarks.retrieval", "run_5k"),
    "hashing_loo": ("benchmarks.hashing", "run_loo"),
    "hashing_1m": ("benchmarks.hashing", "run_1m"),
    "patch_sampler": ("benchmarks.patch_sampler", "run_benchmark"),
    "pha_dense": ("benchmarks.pha_dense", "run_benchmark"),
}


def parse_value(text: str):
    """A command-line ``key=value`` value as int, float, bool, None or the string itself."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def names() -> list[str]:
    """The registered benchmark names, in the order ``rswb bench`` runs them."""
    return list(BENCHMARKS)


def get(name: str) -> Callable[[bool], dict]:
    """The run function of benchmark ``name``.

    Args:
        name: a registered name (see :func:`names`).

    Returns:
        A callable ``run(quick: bool) -> dict``.

    Raises:
        KeyError: for an unknown name (the message lists the known ones).
    """
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    module, func = BENCHMARKS[name]
    return getattr(importlib.import_module(module), func)


def run(name: str, quick: bool = False) -> dict:
    """Run benchmark ``name`` and return its result dict (with ``machine`` and ``wall_s`` added).

    Args:
        name: a registered name.
        quick: shrink the problem to a smoke-test size.

    Returns:
        The benchmark's result dict.
    """
    fn = get(name)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    res = fn(quick)
    res["wall_s"] = time.perf_counter() - t0
    res["quick"] = quick
    if quick:
        res.pop("goals", None)  # tiny problems say nothing about speed
    res["machine"] = machine_info()
    res["machine"]["loadavg_1m_before"] = None if load_before is None else round(load_before, 2)
    return res


def median_time(fn: Callable[[], object], repeats: int, warmup: bool = True) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls (after one untimed warm-up call)."""
    if warmup:
        fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int, settle_s: float = 0.05
) -> dict[str, float]:
    """Median times of several functions measured in alternating rounds (one warm-up round first).

    On a shared machine the available memory bandwidth and CPU drift over seconds; timing the candidates round by
    round, rather than one after the other, exposes each to the same conditions, so their ratio is more stable.
    Each call starts ``settle_s`` after the previous one ended: after a torch op, torch's OpenMP threads keep
    spinning for a few milliseconds and would slow down whatever runs next (measured: +20% for a 30 ms numpy pass).
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(max(1, repeats)):
        for k, fn in fns.items():
            time.sleep(settle_s)
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_info() -> dict:
    """What the numbers were measured on: CPU model and cores, RAM, library versions, torch threads, GPU."""
    import numpy as np
    import torch

    cuda = torch.cuda.is_available()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu (no GPU)",
        # Other processes on a shared machine change every time; the 1-minute load average says how busy it was.
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def format_result(name: str, res: dict) -> str:
    """A short human-readable table of one result dict."""
    lines = [f"{name}: {res.get('problem', '')}".rstrip(": ")]
    rows = [("rswb", "rswb_s"), ("reference", "reference_s"), ("floor", "floor_s")]
    for label, key in rows:
        if res.get(key) is not None:
            extra = ""
            if key == "reference_s" and res.get("reference_extrapolated_from"):
                extra = f"  (extrapolated from {res['reference_extrapolated_from']})"
            if key == "floor_s" and res.get("floor_method"):
                extra = f"  ({res['floor_method']})"
            lines.append(f"  {label:<10} {res[key]:10.4f} s{extra}")
    summary = f"  speedup {res['speedup']:.1f}x vs the reference"
    if res.get("vs_floor") is not None:
        summary += f"; rswb / floor = {res['vs_floor']:.2f}"
    lines.append(summary)
    for goal, met in (res.get("goals") or {}).items():
        lines.append(f"  goal {goal}: {'met' if met else 'NOT met'}")
    if res.get("reference"):
        lines.append(f"  reference: {res['reference']}")
    return "\n".join(lines)


def emit(results: dict[str, dict], as_json: bool) -> None:
    """Attach the machine to every result and print them: one JSON object, or a readable block per benchmark."""
    for res in results.values():
        res["machine"] = machine_info()
    if as_json:
        print(json.dumps(results, indent=2))
        return
    for name, res in results.items():
        print(format_result(name, res))


def markdown_table(results: dict[str, dict]) -> str:
    """A Markdown table of ``{name: result}`` (as ``rswb bench --json`` prints): times, ratios and goals."""

    def num(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    lines = [
        "| benchmark | problem | rswb_s | reference_s | floor_s | speedup | vs_floor | goals |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        goals = "; ".join(f"{g}: {'met' if ok else '**not met**'}" for g, ok in (res.get("goals") or {}).items())
        ref = num(res.get("reference_s"), ".3f") + (" (extrapolated)" if res.get("reference_extrapolated_from") else "")
        lines.append(
            f"| {name} | {res.get('problem', '')} | {num(res.get('rswb_s'), '.4f')} | {ref} | "
            f"{num(res.get('floor_s'), '.4f')} | {num(res.get('speedup'), '.1f')}x | "
            f"{num(res.get('vs_floor'), '.2f')} | {goals or '-'} |"
        )
    return "\n".join(lines)
