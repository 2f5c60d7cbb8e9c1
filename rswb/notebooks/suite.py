"""Running the suite: ``rswb notebooks run`` executes the numbered notebooks with papermill into a report folder.

Each run writes ``reports/<timestamp>/``: the executed notebooks (``NN_name.ipynb``), their HTML exports, each
notebook's own outputs (``NN_name/``, which holds its ``metrics.json``) and ``index.html``
(:func:`rswb.notebooks.report.write_index`). A failing notebook does not stop the others.

A **profile** only chooses parameter values (:data:`SUITE`): ``quick`` is ``make demo`` and the notebook tests on
the embedded data, ``real`` the regression suite on ``../shared/data`` (``{shared}`` in a value is
:func:`~rswb.notebooks.layout.shared_data_root`), ``full`` the real schedules (meant for a GPU). ``--param
KEY=VALUE`` overrides a parameter in every notebook that declares it (values are YAML).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from rswb.io import atomic_write_text
from rswb.notebooks.layout import NOTEBOOKS, notebooks_dir, shared_data_root
from rswb.notebooks.report import NotebookResult, write_index

__all__ = ["PROFILES", "SUITE", "error_outputs", "notebook_parameters", "resolve_parameters", "run_suite"]

SUITE: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        # `make demo` passes nothing: each notebook's own defaults are the demo, so Run All in JupyterLab gives what
        # the demo gives (the quick task profiles: their epochs, cached frozen features for 03 and 04).
        "01_data_inspection": {},
        "02_pha_versions": {},
        "03_retrieval_training": {},
        "04_hash_evaluation": {},
    },
    # The real data of ../shared/data (or $RSWB_SHARED_DATA): "{shared}" in a value is that folder. Run by .ci/run
    # when the data is there and compared with notebooks/baselines/real.yaml (tolerances from a seed spread).
    "real": {
        "01_data_inspection": {"MSPAN_ROOT": "{shared}/mspan_pairs/worldview2.mat",
                               "SCENES_ROOT": "{shared}/UCMerced_LandUse", "CAPTIONS_ROOT": "{shared}/ucm_captions",
                               "IMAGE_ROOT": "{shared}/UCMerced_LandUse"},
        "02_pha_versions": {"PROFILE": "cpu", "DATA_ROOT": "{shared}/UCMerced_LandUse", "EPOCHS": 30,
                            "VERSIONS": ["pan_only", "pha_v1", "pha_v5"]},
        "03_retrieval_training": {"PROFILE": "cpu", "DATA_ROOT": "{shared}/ucm_captions",
                                  "IMAGE_ROOT": "{shared}/UCMerced_LandUse", "EPOCHS": 4},
        "04_hash_evaluation": {"PROFILE": "cpu", "DATA_ROOT": "{shared}/UCMerced_LandUse", "BITS": [16, 32, 64],
                               "EPOCHS": 30, "TOP_K": 8},
    },
    "full": {
        "01_data_inspection": {},
        "02_pha_versions": {"PROFILE": "full", "SEEDS": [0, 1, 2]},
        "03_retrieval_training": {"PROFILE": "full", "EPOCHS": 20},
        "04_hash_evaluation": {"PROFILE": "full", "EPOCHS": 30},
    },
}
"""Parameter values of each notebook per profile of ``rswb notebooks run`` (``OUTPUT_DIR`` is always set)."""

PROFILES = SUITE
"""The suite profiles by another name (``rswb notebooks run --profile``)."""


def notebook_parameters(path: str | Path) -> set[str]:
    """The parameter names a notebook's ``parameters`` cell declares."""
    import papermill

    return set(papermill.inspect_notebook(str(path)))


def error_outputs(nb) -> list[str]:
    """``"cell N: Name: message"`` of every error output of an executed notebook (an ``nbformat`` node)."""
    return [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(nb.cells)
            if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]


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
