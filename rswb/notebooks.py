"""The notebook suite as one command: ``rswb notebooks run`` executes the numbered notebooks with papermill.

Each run writes ``reports/<timestamp>/``: the executed notebooks (``NN_name.ipynb``), their HTML exports
(``NN_name.html``), each notebook's own outputs (``NN_name/``, which holds its ``metrics.json``) and ``index.html``,
one page with every notebook's status, run time, metrics and links. A failing notebook does not stop the others;
the command then fails with the failing cell's error.

A **profile** only chooses parameter values (:data:`PROFILES`): ``quick`` is the CI suite on the embedded data
(minutes on 2 CPU cores), ``full`` the real schedules (meant for a GPU). ``--param KEY=VALUE`` overrides a parameter
in every notebook that declares it (values are YAML: ``--param "METHODS=[clip, fisvl]"``).
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rswb.config import atomic_write_text

__all__ = ["NOTEBOOKS", "PROFILES", "NotebookResult", "flatten_metrics", "notebook_parameters", "run_suite",
           "write_index"]

NOTEBOOKS = ("01_data_inspection", "02_pha_versions", "03_retrieval_training", "04_hash_evaluation")

PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        "01_data_inspection": {},
        "02_pha_versions": {"PROFILE": "quick", "VERSIONS": ["pan_only", "pha_v1", "pha_v5"], "EPOCHS": 3},
        "03_retrieval_training": {"PROFILE": "quick", "METHODS": ["vsepp", "clip", "fisvl", "kamcl"], "EPOCHS": 3},
        "04_hash_evaluation": {"PROFILE": "quick", "BITS": [16, 32, 64], "EPOCHS": 5},
    },
    "full": {
        "01_data_inspection": {},
        "02_pha_versions": {"PROFILE": "full", "SEEDS": [0, 1, 2]},
        "03_retrieval_training": {"PROFILE": "full", "EPOCHS": 20},
        "04_hash_evaluation": {"PROFILE": "full", "EPOCHS": 30},
    },
}
"""Parameter values of each notebook per profile (``OUTPUT_DIR`` is always set to the notebook's report folder)."""


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


def _cell_error(path: Path) -> str:
    """``"cell N: Name: message"`` of the first error output of an executed notebook."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") == "error":
                return f"cell {i}: {out.get('ename')}: {out.get('evalue')}"
    return "unknown error"


def _export_html(ipynb: Path) -> None:
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(ipynb, as_version=4))
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
    """
    import papermill

    if profile not in PROFILES:
        raise KeyError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
    names = [n for n in NOTEBOOKS if not only or any(n == o or n.startswith(f"{o}_") or n[:2] == o for o in only)]
    if only and not names:
        raise KeyError(f"no notebook matches {list(only)}; notebooks: {', '.join(NOTEBOOKS)}")
    report = Path(reports_root) / datetime.now().strftime("%Y%m%d-%H%M%S")
    report.mkdir(parents=True, exist_ok=False)
    src = notebooks_dir()
    results: list[NotebookResult] = []
    for i, name in enumerate(names, 1):
        declared = notebook_parameters(src / f"{name}.ipynb")
        values = {**PROFILES[profile].get(name, {}), **{k: v for k, v in (params or {}).items() if k in declared}}
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


def write_index(report: Path, results: Sequence[NotebookResult], profile: str) -> Path:
    """``report/index.html``: one row per notebook with its status, time, metrics and links."""
    rows = []
    for r in results:
        flat = flatten_metrics(r.metrics)
        shown = "<br>".join(f"{html.escape(k)} = {v:.4g}" for k, v in list(flat.items())[:40])
        more = f"<br>... {len(flat) - 40} more in metrics.json" if len(flat) > 40 else ""
        colour = "#1a7f37" if r.status == "ok" else "#cf222e"
        error = f"<br><code>{html.escape(r.error)}</code>" if r.error else ""
        links = (f'<a href="{r.name}.html">HTML</a> · <a href="{r.name}.ipynb">notebook</a>'
                 + (f' · <a href="{r.name}/metrics.json">metrics.json</a>' if r.metrics else ""))
        rows.append(f"<tr><td>{html.escape(r.name)}</td><td style='color:{colour};font-weight:bold'>{r.status}"
                    f"{error}</td><td>{r.seconds:.0f} s</td><td class='m'>{shown}{more}</td><td>{links}</td></tr>")
    ok = sum(r.status == "ok" for r in results)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>rswb notebooks: {report.name}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:6px 10px;vertical-align:top}}td.m{{font-family:monospace;font-size:12px}}</style>
</head><body>
<h1>rswb notebook suite</h1>
<p>Profile <b>{html.escape(profile)}</b>, report {html.escape(report.name)}: {ok} of {len(results)} notebooks ran
without error, in {sum(r.seconds for r in results):.0f} s.</p>
<table><tr><th>notebook</th><th>status</th><th>time</th><th>metrics</th><th>files</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""
    path = report / "index.html"
    atomic_write_text(page, path)
    return path
