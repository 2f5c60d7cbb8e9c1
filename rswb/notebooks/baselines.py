"""Regression baselines of the notebook suite: each notebook's metrics with a tolerance per unit, and the comparison.

A profile's baselines file is ``notebooks/baselines/<profile>.yaml``: ``{notebook: {metric: {"value", "tol"}}}``,
written from finished report folders (:func:`write_baselines`; tolerances from a seed spread when several reports
are given) and read by ``rswb notebooks run --check``, the notebook tests and the report page.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rswb.io import atomic_write_text
from rswb.notebooks.layout import NOTEBOOKS, notebooks_dir

__all__ = ["BASELINES", "UNIT_BANDS", "baselines_path", "compare_to_baselines", "flatten_metrics", "load_baselines",
           "make_baselines", "metric_rows", "metric_unit", "spread_baselines", "tolerance", "write_baselines"]


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested ``metrics.json`` as ``{"a.b.c": value}`` (for tables and baselines)."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_metrics(v, key + "."))
        elif isinstance(v, bool):
            continue
        elif isinstance(v, (int, float)):
            out[key] = float(v)
    return out


def baselines_path(profile: str = "quick") -> Path:
    """The baselines file of a suite profile: ``notebooks/baselines/<profile>.yaml`` beside the notebooks."""
    return notebooks_dir() / "baselines" / f"{profile}.yaml"


BASELINES = baselines_path("quick")
"""The quick-profile metrics of every notebook on the embedded data, with tolerances (the notebook tests' reference)."""

_IGNORED = ("best_epoch", "time", "seconds")

# What a trained score may move by, per unit: wide enough for seeds, thread counts and floating-point details, far
# narrower than the drop of a broken model (chance level on the embedded data is 10 % OA, an mR of about 5, a mAP@20
# of about 0.1). A spread measured over seeds (spread_baselines) is clipped into [floor, band].
UNIT_BANDS: dict[str, tuple[float, float]] = {
    "percent": (0.5, 5.0),  # R@K and mR: 0-100
    "fraction": (0.005, 0.05),  # OA, AA, kappa, mAP, P@K, R@r (Hamming-radius recall), accuracies: 0-1
    "rank": (0.5, 5.0),  # median and mean rank
}
"""``unit: (floor, band)`` of trained scores: :func:`tolerance` gives the band, :func:`spread_baselines` clips."""

_PERCENT = re.compile(r"(^|_)(R@\d+|mR)$")  # i2t_R@1, published_t2i_R@10, mR, optimistic_mR
_FRACTION = re.compile(r"(^|_)(OA|AA|kappa)(_std)?$|mAP@|MAP@|(^|_)P@|(^|_)R@r|acc")


def metric_unit(key: str) -> str | None:
    """The unit of a trained score (``"percent"``, ``"fraction"``, ``"rank"``), ``None`` for anything else.

    The rules are tried in this order, so that the Hamming-radius recall ``R@r2`` (a fraction) is never read as a
    retrieval recall ``R@10`` (a percentage).
    """
    leaf = key.rsplit(".", 1)[-1]
    if "medr" in leaf or "meanr" in leaf:
        return "rank"
    if _PERCENT.search(leaf):
        return "percent"
    if _FRACTION.search(leaf):
        return "fraction"
    return None


def tolerance(key: str, value: float) -> float | None:
    """The default absolute tolerance of a metric in the baselines (``None``: not compared).

    Trained scores get their unit's band (:data:`UNIT_BANDS`: 5 points for percentages, 0.05 for fractions, 5 ranks),
    the widest a seed may move them and narrower than any broken model. Data facts (counts, sizes, rates) and echoed
    settings must match (1e-6 relative, 1e-3 for the registration correlation). Timings and the selected epoch are
    not compared.
    """
    leaf = key.rsplit(".", 1)[-1]
    if any(s in leaf for s in _IGNORED):
        return None
    if "correlation" in leaf:
        return 1e-3
    unit = metric_unit(key)
    if unit is not None:
        return UNIT_BANDS[unit][1]
    return 1e-6 * max(1.0, abs(value))


def make_baselines(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{notebook: {metric: {"value": v, "tol": t}}}`` from each notebook's ``metrics.json``.

    Tolerances come from :func:`tolerance`; metrics it does not compare are left out.
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, m in metrics.items():
        entries = {}
        for key, value in flatten_metrics(m).items():
            tol = tolerance(key, value)
            if tol is not None:
                entries[key] = {"value": round(value, 6), "tol": float(f"{tol:.3g}")}
        out[name] = entries
    return out


def spread_baselines(runs: Sequence[Mapping[str, Mapping[str, Any]]],
                     k: float = 3.0) -> dict[str, dict[str, dict[str, float]]]:
    """Baselines from suite runs that differ only in their seed: the first run's values, the spread's tolerances.

    Args:
        runs: ``{notebook: metrics.json}`` of each run; the first is the reference (the seed CI runs).
        k: how many sample standard deviations (over the runs, ``ddof=1``) a value may move.

    Returns:
        ``{notebook: {metric: {"value", "tol", "sd"}}}`` for every metric :func:`tolerance` compares. A trained score
        gets ``k * sd`` clipped into its unit's ``[floor, band]`` (:data:`UNIT_BANDS`): a score no seed moved still
        allows the last digits to differ between machines, and a noisy one never gets a band a broken model would
        stay inside; a data fact or an echoed setting keeps its :func:`tolerance` (near-exact), however it varies.

    Raises:
        ValueError: fewer than two runs (no spread to measure).
    """
    if len(runs) < 2:
        raise ValueError(f"a seed spread needs at least two runs, got {len(runs)}")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in runs[0]:
        flats = [flatten_metrics(r.get(name) or {}) for r in runs]
        entries = {}
        for key, value in flats[0].items():
            tol = tolerance(key, value)
            if tol is None:
                continue
            seen = [f[key] for f in flats if key in f]
            sd = statistics.stdev(seen) if len(seen) > 1 else 0.0
            unit = metric_unit(key)
            if unit is not None:  # a trained score: its seed spread, clipped into the unit's [floor, band]
                floor, band = UNIT_BANDS[unit]
                tol = min(max(k * sd, floor), band)
            entries[key] = {"value": round(value, 6), "tol": float(f"{tol:.3g}"), "sd": float(f"{sd:.3g}")}
        out[name] = entries
    return out


def load_baselines(path: str | Path = BASELINES) -> dict[str, dict[str, dict[str, float]]]:
    """The baselines file (empty when it does not exist)."""
    import yaml

    path = Path(path)
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def metric_rows(name: str, metrics: Mapping[str, Any],
                baselines: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[dict[str, Any]]:
    """Every metric of a notebook beside its baseline: ``metric, value, baseline, tol, status``.

    ``status`` is ``"pass"`` (within the tolerance), ``"drift"`` (outside it), ``"missing"`` (a baseline metric the
    run did not produce), ``"new"`` (no baseline yet) or ``"not compared"`` (no baseline by design: the selected
    epoch, timings; see :func:`tolerance`). Drifted and missing rows come first, then the rest in the notebook's
    order.
    """
    base = baselines.get(name) or {}
    flat = flatten_metrics(metrics)
    rows = []
    for key, value in flat.items():
        ref = base.get(key)
        if ref is None:
            status = "new" if tolerance(key, value) is not None else "not compared"
            rows.append({"metric": key, "value": value, "baseline": None, "tol": None, "status": status})
        else:
            ok = abs(value - ref["value"]) <= ref["tol"]
            rows.append({"metric": key, "value": value, "baseline": ref["value"], "tol": ref["tol"],
                         "status": "pass" if ok else "drift"})
    rows += [{"metric": key, "value": None, "baseline": ref["value"], "tol": ref["tol"], "status": "missing"}
             for key, ref in base.items() if key not in flat]
    order = {"drift": 0, "missing": 0, "pass": 1, "new": 1, "not compared": 1}
    return sorted(rows, key=lambda row: order[row["status"]])  # stable: the notebook's order within a group


def compare_to_baselines(name: str, metrics: Mapping[str, Any],
                         baselines: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None) -> list[str]:
    """Readable differences between a notebook's metrics and its baselines (empty: within tolerance).

    Each line names the metric, the baseline, the value now, the difference and the tolerance; a metric that
    disappeared is reported too (a new metric is not: it has no baseline yet).
    """
    base = baselines if baselines is not None else load_baselines()
    if name not in base:
        return [f"{name}: no baselines (write them with `rswb notebooks baseline --profile PROFILE REPORT`)"]
    rows = {row["metric"]: row for row in metric_rows(name, metrics, base)}
    problems = []
    for row in (rows[key] for key in base[name]):  # in the baselines' order
        if row["status"] == "missing":
            problems.append(f"{name}: {row['metric']} missing (baseline {row['baseline']:.6g})")
        elif row["status"] == "drift":
            diff = row["value"] - row["baseline"]
            problems.append(f"{name}: {row['metric']} = {row['value']:.6g}, baseline {row['baseline']:.6g} "
                            f"(difference {diff:+.4g}, tolerance {row['tol']:.4g})")
    return problems


def write_baselines(reports: str | Path | Sequence[str | Path], path: str | Path | None = None,
                    profile: str = "quick", k: float = 3.0) -> Path:
    """Write a profile's baselines file from finished report folders (every notebook must have written metrics).

    One report: tolerances from :func:`tolerance`. Several reports of the same profile that differ only in the seed
    (``--param SEED=1 --param "SEEDS=[1]"``): the first report's values with tolerances from their spread
    (:func:`spread_baselines`), the way ``notebooks/baselines/real.yaml`` is made.

    Args:
        reports: a report folder, or several.
        path: the baselines file; default :func:`baselines_path` of ``profile``.
        profile: the suite profile the reports ran (named in the file's header).
        k: standard deviations of the spread a value may move (several reports only).
    """
    import yaml

    folders = [Path(reports)] if isinstance(reports, (str, Path)) else [Path(r) for r in reports]
    runs = []
    for report in folders:
        metrics = {}
        for name in NOTEBOOKS:
            f = report / name / "metrics.json"
            if not f.exists():
                raise FileNotFoundError(f"{f}: missing; run `rswb notebooks run --profile {profile}` and pass its "
                                        "folder")
            metrics[name] = json.loads(f.read_text())
        runs.append(metrics)
    how = (f"tolerance = {k:g} x the sample sd over the {len(runs)} seed runs, clipped into the unit's [floor, band] "
           "of rswb.notebooks.UNIT_BANDS; sd is that spread"
           if len(runs) > 1 else "tolerances from rswb.notebooks.tolerance")
    header = (f"# {profile.capitalize()}-profile metrics of the notebooks, with tolerances ({how}).\n"
              "# `rswb notebooks run --profile PROFILE --check` and the quick notebook tests compare with them.\n"
              "# Update deliberately, after checking the new numbers, with:\n"
              f"#   rswb notebooks run --profile {profile} && rswb notebooks baseline --profile {profile} "
              "reports/<timestamp> [more seed reports]\n"
              f"# Written from {', '.join(r.name for r in folders)}.\n")
    table = spread_baselines(runs, k) if len(runs) > 1 else make_baselines(runs[0])
    path = Path(path) if path is not None else baselines_path(profile)
    atomic_write_text(header + yaml.safe_dump(table, sort_keys=False), path)
    return path
