"""The suite's report page: ``index.html`` of a report folder, each notebook's metrics beside its baselines."""

from __future__ import annotations

import html
import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rswb.io import atomic_write_text
from rswb.notebooks.baselines import baselines_path, load_baselines, metric_rows
from rswb.notebooks.layout import notebooks_dir

__all__ = ["NotebookResult", "profile_note", "write_index"]


@dataclass
class NotebookResult:
    """The outcome of one notebook of a suite run."""

    name: str
    status: str  # "ok" | "failed"
    seconds: float
    parameters: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def _results_dir() -> Path:
    return notebooks_dir().parent / "benchmarks" / "results"


def _best_mean(file: str, group: str, key: str, scale: float = 1.0, where: Mapping[str, Any] | None = None
               ) -> tuple[str, float] | None:
    """``(group value, mean of key over seeds)`` of the best group in a committed result file, or None if absent."""
    path = _results_dir() / file
    try:
        runs = json.loads(path.read_text())["runs"]
        by: dict[str, list[float]] = {}
        for r in runs:
            if all(r.get(k) == v for k, v in (where or {}).items()) and key in r.get("test", {}):
                by.setdefault(str(r[group]), []).append(float(r["test"][key]) * scale)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not by:
        return None
    best = max(by, key=lambda g: statistics.mean(by[g]))
    return best, statistics.mean(by[best])


def profile_note(profile: str) -> str:
    """A paragraph for the report page: what the profile runs, and what the longer profiles reached.

    The numbers are read from the committed result files of ``benchmarks/results`` (means over their seeds), never
    written here; in an installation without them the paragraph says where they would be.
    """
    if profile == "real":
        return ("The real profile: the notebooks on ../shared/data (the WorldView-2 pair, UC Merced, UCM-Captions) "
                "with the CPU profiles and cached features: 02 in scene mode on Wald-simulated UC Merced (frozen "
                "EfficientNet-Lite0 under both branches), 03 on UCM-Captions (frozen encoders), 04 on UC Merced "
                "(frozen encoder, every dihedral view). Tolerances come from a measured seed spread "
                "(notebooks/baselines/real.yaml).")
    if profile != "quick":
        return ""
    text = ("The quick profile (what make demo runs: each notebook's own defaults) on the embedded synthetic data: "
            "02 trains the PHA ladder from scratch on 10 labelled pixels per class; 03 and 04 train the methods' "
            "heads on the frozen ImageNet EfficientNet-Lite0 (and MiniLM) with features cached once.")
    found = []
    pha = _best_mean("pha_embedded.json", "version", "OA", 100)
    if pha:
        found.append(f"the PHA ladder's best rung on this scene with the full profile is {pha[0]} at {pha[1]:.1f} % "
                     "OA (pha_embedded.md)")
    for file, profile_name in (("dhcl_ucmd.json", "cpu"), ("dhcl_ucmd_finetune.json", "finetune")):
        dhcl = _best_mean(file, "bits", "mAP@20", 100)
        if dhcl:
            found.append(f"DHCL on UC Merced reaches mAP@20 {dhcl[1]:.1f} ({dhcl[0]} bits, {profile_name} profile, "
                         f"{file.replace('.json', '.md')})")
    for file, profile_name in (("retrieval_ucm.json", "cpu"), ("retrieval_ucm_finetune.json", "finetune")):
        best = _best_mean(file, "variant", "published_mR")
        if best:
            found.append(f"the best retrieval method on UCM-Captions is {best[0]} at mR {best[1]:.1f} under the "
                         f"published loop ({profile_name} profile, {file.replace('.json', '.md')})")
    if not found:
        return text + " The longer profiles' results are in benchmarks/results of a source checkout."
    return text + " Measured with the longer profiles (means over seeds, benchmarks/results): " + "; ".join(found) + "."


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
    paragraph = profile_note(profile)  # reads the committed result files: once per page
    note = f"<p>{html.escape(paragraph)}</p>" if paragraph else ""
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


