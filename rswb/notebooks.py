"""The notebook suite as one command: ``rswb notebooks run`` executes the numbered notebooks with papermill.

Each run writes ``reports/<timestamp>/``: the executed notebooks (``NN_name.ipynb``), their HTML exports
(``NN_name.html``), each notebook's own outputs (``NN_name/``, which holds its ``metrics.json``) and ``index.html``,
one page to read at a glance: per notebook its verdict, profile, data, time, a table of every metric beside its
baseline and tolerance (pass / drift, coloured) and thumbnails of its first figures linking to the full export.
A failing notebook does not stop the others; the command then fails with the failing cell's error.

A **profile** only chooses parameter values (:data:`PROFILES`): ``quick`` is ``make demo`` and the notebook tests on
the embedded data (about 2 minutes on 2 CPU cores), ``real`` the regression suite on the real data of
``../shared/data`` (``{shared}`` in a value is :func:`shared_data_root`; CPU profiles with cached features, run by
``.ci/run``), ``full`` the real schedules (meant for a GPU). ``--param KEY=VALUE`` overrides a parameter in every
notebook that declares it (values are YAML: ``--param "METHODS=[clip, fisvl]"``). Each profile has its baselines
file, ``notebooks/baselines/<profile>.yaml``; ``rswb notebooks run --check`` fails on any drift from it.
"""

from __future__ import annotations

import html
import json
import os
import re
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rswb.engine.experiments import SUITE
from rswb.io import atomic_write_text

__all__ = ["BASELINES", "NOTEBOOKS", "PROFILES", "PROFILE_NOTES", "NotebookResult", "baselines_path",
           "UNIT_BANDS", "compare_to_baselines", "error_outputs", "flatten_metrics", "load_baselines", "make_baselines",
           "metric_rows", "metric_unit", "notebook_parameters", "resolve_parameters", "run_suite", "shared_data_root",
           "spread_baselines", "tolerance", "write_index"]

NOTEBOOKS = ("01_data_inspection", "02_pha_versions", "03_retrieval_training", "04_hash_evaluation")

PROFILES = SUITE
"""The suite profiles (:data:`rswb.engine.experiments.SUITE`): parameter values of each notebook per profile."""


PROFILE_NOTES = {
    "quick": (
        "The quick profile (what make demo runs: each notebook's own defaults) on the embedded synthetic data. 02: "
        "the whole PHA ladder trained from scratch on 10 labelled pixels per class for 8 epochs, scored on 3,000 "
        "sampled test pixels. 03 and 04: the frozen ImageNet EfficientNet-Lite0 on 128-px images (and the frozen "
        "MiniLM for captions), features cached once, only the methods' heads train (8 epochs for 03, 40 for 04 at "
        "16/32/48/64 hash bits + 4 class bits). What the longer profiles reach: PHA's full profile "
        "(30 epochs, every test pixel, 5 seeds) scores 92.5 (pha_v1) to 95.9 % (pha_v2) OA on this scene "
        "(benchmarks/results/pha_embedded.md). On the real UC Merced data DHCL reaches mAP@20 93.1 at 32 + 5 bits "
        "with the cpu profile and 93.8 with finetune, 94.5 at 64 + 5 bits with full (one GPU run); on UCM-Captions "
        "the best "
        "retrieval mR is 50.6 (FISVL, cpu) and 53.6 (KAMCL, finetune), under the published evaluation "
        "(benchmarks/results/dhcl_ucmd*.md, retrieval_ucm*.md, gpu_h200.md)."),
    "real": (
        "The real profile: the notebooks on ../shared/data (the WorldView-2 pair, UC Merced, UCM-Captions) with the "
        "CPU profiles and cached features: 02 in scene mode on Wald-simulated UC Merced (frozen EfficientNet-Lite0 "
        "under both branches, 10 images per class), 03 on UCM-Captions (frozen encoders, 4 epochs per method), 04 "
        "on UC Merced (frozen encoder, every dihedral view). Tolerances come from a measured seed spread "
        "(notebooks/baselines/real.yaml)."),
}
"""A paragraph per suite profile for the report page: what the profile runs and what the longer profiles reach."""


@dataclass
class NotebookResult:
    """The outcome of one notebook of a suite run."""

    name: str
    status: str  # "ok" | "failed"
    seconds: float
    parameters: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def notebooks_dir() -> Path:
    """The ``notebooks/`` folder of this checkout."""
    return Path(__file__).resolve().parents[1] / "notebooks"


def notebook_parameters(path: str | Path) -> set[str]:
    """The parameter names a notebook's ``parameters`` cell declares."""
    import papermill

    return set(papermill.inspect_notebook(str(path)))


def error_outputs(nb) -> list[str]:
    """``"cell N: Name: message"`` of every error output of an executed notebook (an ``nbformat`` node)."""
    return [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(nb.cells)
            if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]


def shared_data_root() -> Path:
    """The real-data folder: ``$RSWB_SHARED_DATA`` if set, else ``../shared/data`` beside this checkout."""
    env = os.environ.get("RSWB_SHARED_DATA")
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def resolve_parameters(values: Mapping[str, Any], where: str = "parameters") -> dict[str, Any]:
    """``values`` with ``{shared}`` in string values replaced by :func:`shared_data_root`.

    Raises:
        FileNotFoundError: a value named a path under the real-data folder that does not exist (the message names
            the parameter, the path and how to point ``RSWB_SHARED_DATA`` elsewhere); raised before anything runs.
    """
    root = shared_data_root()
    out = {}
    for key, value in values.items():
        if isinstance(value, str) and "{shared}" in value:
            value = value.replace("{shared}", str(root))
            if not Path(value).exists():
                raise FileNotFoundError(f"{where}: {key} = {value} does not exist; the real data is looked for in "
                                        f"$RSWB_SHARED_DATA or ../shared/data beside the checkout ({root})")
        out[key] = value
    return out


def _cell_error(path: Path) -> str:
    """The first error output of an executed notebook file."""
    import nbformat

    return next(iter(error_outputs(nbformat.read(path, as_version=4))), "unknown error")


def _export_html(ipynb: Path) -> None:
    """The HTML page of an executed notebook, readable offline.

    The widgets' saved state is left out, so each widget shows the static picture it carries
    (:func:`rswb.viz.common.picture_box`) instead of an empty box waiting for the widget library from a CDN.
    """
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(ipynb, as_version=4)
    nb.metadata.pop("widgets", None)
    body, _ = HTMLExporter().from_notebook_node(nb)
    atomic_write_text(body, ipynb.with_suffix(".html"))


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


def run_suite(profile: str = "quick", only: Sequence[str] | None = None, params: Mapping[str, Any] | None = None,
              reports_root: str | Path = "reports", progress: bool = True) -> tuple[Path, list[NotebookResult]]:
    """Execute the notebooks of a profile into ``reports_root/<timestamp>/`` and write its ``index.html``.

    Args:
        profile: a key of :data:`PROFILES`.
        only: notebook names or number prefixes to run (``["02", "04_hash_evaluation"]``; default: all).
        params: parameter overrides for every notebook that declares them.
        reports_root: parent folder of the report folders.
        progress: print one line per notebook as it starts and ends.

    Returns:
        The report folder and one :class:`NotebookResult` per notebook (failed ones included).

    Raises:
        KeyError: an unknown profile or notebook.
        FileNotFoundError: a ``{shared}`` data path of the profile is missing (before any notebook runs).
    """
    import papermill

    if profile not in PROFILES:
        raise KeyError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
    names = [n for n in NOTEBOOKS if not only or any(n == o or n.startswith(f"{o}_") or n[:2] == o for o in only)]
    if only and not names:
        raise KeyError(f"no notebook matches {list(only)}; notebooks: {', '.join(NOTEBOOKS)}")
    src = notebooks_dir()
    declared_by = {name: notebook_parameters(src / f"{name}.ipynb") for name in names}
    known = set().union(*declared_by.values())
    unknown = sorted(set(params or {}) - known)
    if unknown:  # a typo such as PER_CLAS=2 would otherwise be ignored and the suite would pass
        raise KeyError(f"--param {', '.join(unknown)}: no notebook of this run has such a parameter; they have "
                       f"{', '.join(sorted(known))}")
    plan = {}  # every notebook's parameters, resolved (and their data checked) before anything runs
    for name in names:
        declared = declared_by[name]
        values = {**PROFILES[profile].get(name, {}), **{k: v for k, v in (params or {}).items() if k in declared}}
        plan[name] = resolve_parameters(values, where=f"profile {profile}, {name}")
    report = Path(reports_root) / datetime.now().strftime("%Y%m%d-%H%M%S")
    report.mkdir(parents=True, exist_ok=False)
    results: list[NotebookResult] = []
    for i, name in enumerate(names, 1):
        values = plan[name]
        values["OUTPUT_DIR"] = str((report / name).resolve())
        out = report / f"{name}.ipynb"
        if progress:
            print(f"[{i}/{len(names)}] {name} ...", flush=True)
        t0 = time.perf_counter()
        status, error = "ok", None
        try:
            papermill.execute_notebook(str(src / f"{name}.ipynb"), str(out), parameters=values, cwd=str(src),
                                       kernel_name="python3", progress_bar=False)
        except papermill.PapermillExecutionError:
            status, error = "failed", _cell_error(out)
        seconds = time.perf_counter() - t0
        metrics_file = report / name / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if status == "ok" and metrics_file.exists() else {}
        if out.exists():
            _export_html(out)
        results.append(NotebookResult(name, status, seconds, values, metrics, error))
        if progress:
            print(f"      {status} in {seconds:.0f} s" + (f": {error}" if error else ""), flush=True)
    write_index(report, results, profile)
    return report, results


_STATUS_COLOURS = {"pass": "#1a7f37", "drift": "#cf222e", "missing": "#cf222e", "new": "#57606a",
                   "not compared": "#8c959f"}
_MAX_THUMBNAILS = 4


def _fmt(v: float | None) -> str:
    if v is None:
        return ""
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else format(v, ".4g")


_HEADLINE = {"OA", "AA", "kappa", "mR", "i2t_R@1", "t2i_R@1", "mAP@20", "mAP@20_nocue", "class_acc", "code_bits"}


def _metric_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """An HTML table of metric rows (metric, value, baseline, tolerance, status in colour); empty without rows."""
    body = []
    for row in rows:
        c = _STATUS_COLOURS[row["status"]]
        body.append(f"<tr><td class='m'>{html.escape(row['metric'])}</td><td>{_fmt(row['value'])}</td>"
                    f"<td>{_fmt(row['baseline'])}</td><td>{_fmt(row['tol'])}</td>"
                    f"<td style='color:{c};font-weight:bold'>{row['status']}</td></tr>")
    return ("<table><tr><th>metric</th><th>value</th><th>baseline</th><th>tolerance</th><th>status</th></tr>"
            + "".join(body) + "</table>") if body else ""


def _thumbnails(report: Path, name: str, limit: int = _MAX_THUMBNAILS) -> list[str]:
    """The first ``limit`` figures of an executed notebook, written as ``name/figures/fig_K.png``; their paths."""
    import base64

    import nbformat

    ipynb = report / f"{name}.ipynb"
    if not ipynb.exists():
        return []
    nb = nbformat.read(ipynb, as_version=4)
    out_dir = report / name / "figures"
    paths = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png") if output.get("output_type") in (
                "display_data", "execute_result") else None
            if png and len(paths) < limit:
                out_dir.mkdir(parents=True, exist_ok=True)
                path = out_dir / f"fig_{len(paths) + 1}.png"
                path.write_bytes(base64.b64decode(png))
                paths.append(path.relative_to(report).as_posix())
    return paths


def _data_of(parameters: Mapping[str, Any]) -> str:
    """The data parameters a notebook ran with (``DATA_ROOT``, ``IMAGE_ROOT``, ...), or the embedded data."""
    paths = [f"{k} = {v}" for k, v in parameters.items() if k.endswith("_ROOT") and v is not None]
    return ", ".join(paths) or "embedded data"


def write_index(report: Path, results: Sequence[NotebookResult], profile: str,
                baselines: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None) -> Path:
    """``report/index.html``: per notebook its status, profile, data, time, metrics against the baselines, figures.

    Each notebook gets a table of metric, value, baseline, tolerance and pass / drift (coloured), the drifted and
    missing ones first, and thumbnails of its first figures linking to the full HTML export.

    Args:
        report: the report folder (holds the executed notebooks and their outputs).
        results: one :class:`NotebookResult` per notebook.
        profile: the suite profile of the run (named on the page; its baselines file is the default reference).
        baselines: ``{notebook: {metric: {"value", "tol"}}}``; default: :func:`baselines_path` of ``profile`` when
            that file exists (otherwise no baselines: every metric shows as new).
    """
    if baselines is None:
        baselines = load_baselines(baselines_path(profile))
    sections, summary = [], []
    for r in results:
        rows = metric_rows(r.name, r.metrics, baselines) if r.status == "ok" else []
        counts = {k: sum(row["status"] == k for row in rows) for k in _STATUS_COLOURS}
        bad = counts["drift"] + counts["missing"]
        verdict = ("failed" if r.status != "ok" else "drift" if bad else "pass" if counts["pass"] else "no baseline")
        colour = {"failed": "#cf222e", "drift": "#cf222e", "pass": "#1a7f37"}.get(verdict, "#57606a")
        summary.append(f"<tr><td><a href='#{r.name}'>{html.escape(r.name)}</a></td><td style='color:{colour};"
                       f"font-weight:bold'>{verdict}</td><td>{counts['pass']} pass, {counts['drift']} drift, "
                       f"{counts['missing']} missing, {counts['new']} new</td><td>{r.seconds:.0f} s</td></tr>")
        # Drifted and missing metrics and the headline ones first; the rest (tie-rule variants, per-class and
        # radius metrics: over a hundred rows for 03) folded away, so the page reads at a glance.
        first = [row for row in rows if row["status"] in ("drift", "missing")
                 or row["metric"].rsplit(".", 1)[-1] in _HEADLINE]
        rest = [row for row in rows if row not in first]
        table = _metric_table(first)
        if rest:
            table += (f"<details><summary>{len(rest)} more metrics (tie rules, per class, ...): "
                      f"{sum(row['status'] == 'pass' for row in rest)} pass</summary>{_metric_table(rest)}</details>")
        error = f"<p><code>{html.escape(r.error)}</code></p>" if r.error else ""
        thumbs = "".join(f"<a href='{r.name}.html'><img src='{t}' alt='figure {k + 1} of {html.escape(r.name)}'>"
                         f"</a>" for k, t in enumerate(_thumbnails(report, r.name)))
        links = (f'<a href="{r.name}.html">HTML</a> · <a href="{r.name}.ipynb">notebook</a>'
                 + (f' · <a href="{r.name}/metrics.json">metrics.json</a>' if r.metrics else ""))
        sections.append(f"<h2 id='{r.name}'>{html.escape(r.name)} <span style='color:{colour}'>{verdict}</span></h2>"
                        f"<p>profile <b>{html.escape(profile)}</b> · data: {html.escape(_data_of(r.parameters))} · "
                        f"{r.seconds:.0f} s · {links}</p>{error}<div class='thumbs'>{thumbs}</div>{table}")
    ok = sum(r.status == "ok" for r in results)
    note = f"<p>{html.escape(PROFILE_NOTES[profile])}</p>" if profile in PROFILE_NOTES else ""
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>rswb notebooks: {report.name}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:0.5em 0 1.5em}}
td,th{{border:1px solid #ccc;padding:4px 10px;vertical-align:top;text-align:left}}td.m{{font-family:monospace}}
.thumbs img{{height:140px;margin:0 8px 8px 0;border:1px solid #ccc}}</style>
</head><body>
<h1>rswb notebook suite</h1>
<p>Profile <b>{html.escape(profile)}</b>, report {html.escape(report.name)}: {ok} of {len(results)} notebooks ran
without error, in {sum(r.seconds for r in results):.0f} s. Metrics are compared with the profile's baselines
(<code>notebooks/baselines/{html.escape(profile)}.yaml</code>): <b>drift</b> is outside the tolerance,
<b>new</b> has no baseline yet, <b>not compared</b> never has one (the selected epoch, timings).</p>
{note}
<table><tr><th>notebook</th><th>verdict</th><th>metrics</th><th>time</th></tr>
{chr(10).join(summary)}
</table>
{chr(10).join(sections)}
</body></html>
"""
    path = report / "index.html"
    atomic_write_text(page, path)
    return path


# --- regression baselines ------------------------------------------------------------------------------------------

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


__all__ += ["write_baselines"]
