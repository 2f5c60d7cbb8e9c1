"""The notebook suite as one command: ``rswb notebooks run`` executes the numbered notebooks with papermill.

One idea per module:

* :mod:`rswb.notebooks.layout`: where the notebooks and the real data are;
* :mod:`rswb.notebooks.suite`: the profiles (:data:`SUITE`: parameter values of each notebook) and the runner;
* :mod:`rswb.notebooks.report`: the report folder's ``index.html``;
* :mod:`rswb.notebooks.baselines`: regression baselines, tolerances per unit, and the comparison.

``rswb notebooks run --check`` fails on any drift from ``notebooks/baselines/<profile>.yaml``.
"""

from rswb.notebooks.baselines import (
    BASELINES,
    UNIT_BANDS,
    baselines_path,
    compare_to_baselines,
    flatten_metrics,
    load_baselines,
    make_baselines,
    metric_rows,
    metric_unit,
    spread_baselines,
    tolerance,
    write_baselines,
)
from rswb.notebooks.layout import NOTEBOOKS, notebooks_dir, shared_data_root
from rswb.notebooks.report import NotebookResult, profile_note, write_index
from rswb.notebooks.suite import PROFILES, SUITE, error_outputs, notebook_parameters, resolve_parameters, run_suite

__all__ = ["BASELINES", "NOTEBOOKS", "PROFILES", "SUITE", "UNIT_BANDS", "NotebookResult", "baselines_path",
           "compare_to_baselines", "error_outputs", "flatten_metrics", "load_baselines", "make_baselines",
           "metric_rows", "metric_unit", "notebook_parameters", "notebooks_dir", "profile_note", "resolve_parameters",
           "run_suite", "shared_data_root", "spread_baselines", "tolerance", "write_baselines", "write_index"]
