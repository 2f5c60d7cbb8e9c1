"""The experiments API that notebooks and the suite runner call: profiles, train-or-reuse, load a run, save metrics.

* :data:`PROFILES`: per task, the option overrides of each named recipe (``quick``: seconds on a 2-core CPU, what
  ``make demo`` and the papermill tests run; ``cpu``: the frozen-encoder profile with cached features;
  ``finetune``: partial fine-tuning from a cached cut point, the CPU's way to fine-tune; ``full``: every weight
  trains, a GPU recipe); each task keeps its own (``rswb.tasks.<task>.PROFILES``), this is a view of them.
* :func:`train_or_reuse`: the one reuse rule. A run folder is reused when it holds a finished run of the same task
  whose saved options include every option asked for; otherwise it is trained again (replacing it).
* :func:`profile_run`: a task's profile plus the caller's options, through that rule; :func:`notebook_run` names
  the folder after the options (:func:`run_name`), so runs with other settings never replace each other.
* :func:`load_run` (from :mod:`rswb.engine.launch`, the one way to rebuild a run): its task with the selected
  weights, its splits, config and metrics.
* :func:`save_metrics`: a notebook's ``metrics.json``, written atomically; :func:`run_history`: a run's epoch records.
* :func:`tie_table`: retrieval runs' headline numbers next to every other tie rule; :func:`compare`: runs side by
  side (from :mod:`rswb.engine.runs`).
* :func:`task_config`: a task's validated config for a profile and options, for notebooks that build its data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from rswb.config import drop_unused, from_dict, task_config_class, validate
from rswb.engine.launch import LoadedRun, load_run, profile_recipe, saved_task_options, split_options, train_task
from rswb.engine.runs import RunFolder, compare
from rswb.io import atomic_write_json, atomic_write_text
from rswb.registry import get, list_names

__all__ = ["PROFILES", "LoadedRun", "compare", "finished_with", "load_run", "notebook_run", "profile_options",
           "profile_run", "run_history", "run_name", "save_metrics", "task_config", "tie_table", "train_or_reuse"]

class _TaskProfiles(Mapping):
    """``{task: {profile: options}}``, read from each registered task's own ``PROFILES``.

    A task package (``rswb/tasks/<task>/``) attaches them to its builder as ``profiles``: the engine holds no
    method's recipe.
    """

    def __getitem__(self, task: str) -> dict[str, dict[str, Any]]:
        profiles = getattr(get("task", task), "profiles", None)
        if profiles is None:
            raise KeyError(task)
        return profiles

    def __iter__(self) -> Iterator[str]:
        return iter([n for n in list_names("task") if getattr(get("task", n), "profiles", None) is not None])

    def __len__(self) -> int:
        return len(list(iter(self)))


PROFILES: Mapping[str, dict[str, dict[str, Any]]] = _TaskProfiles()
"""Option overrides of ``rswb train TASK`` for each profile of each task (each task module's ``PROFILES``)."""

_PATH_OPTIONS = ("data", "images", "image_map")


def profile_options(task: str, profile: str) -> dict[str, Any]:
    """The option overrides of ``task``'s ``profile`` (a copy): :func:`~rswb.engine.launch.profile_recipe` by name.

    Raises:
        KeyError: an unknown task or profile (the message lists the known ones).
    """
    if task not in PROFILES:
        raise KeyError(f"no profiles for task {task!r}; tasks with profiles: {', '.join(PROFILES)}")
    try:
        return profile_recipe(get("task", task), task, profile)
    except ValueError:  # the notebooks' error names no --profile flag and is a KeyError, as PROFILES[task][profile]
        raise KeyError(f"unknown profile {profile!r} of task {task}; use one of {', '.join(PROFILES[task])}") from None


def task_config(task: str, profile: str, **options: Any) -> Any:
    """The validated config dataclass of ``task`` for ``profile`` plus ``options`` (training options are dropped).

    What a notebook builds a task's data from (e.g. ``rswb.tasks.pha.prepare_data(task_config("pha", "quick"))``)
    with the same options its runs are trained with.
    """
    cls = task_config_class(get("task", task))
    task_options = split_options({**profile_options(task, profile), **options}, cls)[1]
    return validate(from_dict(cls, task_options, source=f"task {task} options"), source=f"task {task} options")


def finished_with(run_dir: str | Path, task_name: str, options: Mapping[str, Any]) -> bool:
    """Whether ``run_dir`` holds a finished run of ``task_name`` whose saved options include ``options``."""
    run = RunFolder(run_dir)
    if not (run.final.exists() and run.config.exists()):
        return False
    saved = run.read_config()
    cls = task_config_class(get("task", task_name)) if saved.get("task_name") == task_name else None
    resolved = {**saved.get("train", {}), **saved_task_options(cls, saved.get("task_config", {}))}
    # An option the run predates (LEGACY_VALUES) must also match today's default: a run with the old random
    # validation share is not what a notebook asking for the defaults would train now.
    defaults = {f.name: f.default for f in dataclasses.fields(cls)} if cls is not None else {}
    wanted = {**{k: defaults[k] for k in getattr(cls, "LEGACY_VALUES", {}) if k in defaults}, **options}
    return saved.get("task_name") == task_name and all(k in resolved and resolved[k] == v for k, v in wanted.items())


def train_or_reuse(task_name: str, options: Mapping[str, Any], run_dir: str | Path, device: str | None = None,
                   progress: bool = True, profile: str | None = None) -> Path:
    """The run folder ``run_dir``: reused when it holds a finished run with the same options, else (re)trained.

    Notebooks call this so that re-running them only trains what is missing. ``device`` and ``progress`` do not
    change a run's result, so they are not compared; ``profile`` (the recipe ``options`` come from: they already
    hold it, as :func:`profile_run` and :func:`notebook_run` pass them) is recorded in the run's ``config.yaml``.
    """
    run_dir = Path(run_dir)
    if finished_with(run_dir, task_name, options):
        return run_dir
    result = train_task(task_name, {**options, "device": device, "progress": progress}, run_name=run_dir.name,
                        runs_root=run_dir.parent, overwrite=True, profile=profile, recipe_in_options=True)
    return Path(result.run_dir)


def profile_run(task: str, profile: str, run_dir: str | Path, *, device: str | None = None, progress: bool = True,
                **options: Any) -> Path:
    """Train (or reuse, see :func:`train_or_reuse`) one run of ``task`` with ``profile``'s options plus ``options``.

    Paths among the options (``data``, ``images``, ``image_map``) are made absolute first, so a run started from a
    notebook's folder is recognised from anywhere.

    Returns:
        The run folder.
    """
    return train_or_reuse(task, _profile_options_resolved(task, profile, options), run_dir, device=device,
                          progress=progress, profile=profile)


def _profile_options_resolved(task: str, profile: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``profile``'s options plus ``options``, with path options made absolute.

    A profile is a recipe for every method of its task: its options that the selected method does not use are left
    out (``options`` themselves are not, and an unused one is refused when the run starts).
    """
    cls = task_config_class(get("task", task))
    opts = {**drop_unused(cls, {**profile_options(task, profile), **options}), **options}
    for key in _PATH_OPTIONS:
        if opts.get(key) is not None:
            opts[key] = str(Path(opts[key]).expanduser().resolve())
    return opts


def run_name(label: str, options: Mapping[str, Any]) -> str:
    """``label`` and a short digest of ``options``: runs with different settings get different folder names.

    The digest is the first 6 hex digits of the SHA-256 of the options as sorted JSON, so the same settings always
    name the same folder (and a notebook re-run reuses it) while any other setting names another one.
    """
    import hashlib

    blob = json.dumps(dict(options), sort_keys=True, default=str).encode()
    return f"{label}-{hashlib.sha256(blob).hexdigest()[:6]}"


def notebook_run(task: str, profile: str, output_dir: str | Path, label: str, *, device: str | None = None,
                 progress: bool = True, quiet: bool = True, **options: Any) -> Path:
    """:func:`profile_run` in ``output_dir/<label>-<digest of the options>`` (:func:`run_name`).

    What notebooks call: a run with other settings (epochs, data, seed, ...) lands in a folder of its own instead of
    replacing the earlier one, and the same settings reuse the finished run. With ``quiet`` what training prints
    (the cache lines, the final table) and warns (e.g. a validation split too small to select on, also in the run's
    ``metrics.json``) goes to the run's ``train.log`` instead of the notebook, which shows one short table of all its
    runs; if training fails, the captured lines are printed before the error.
    """
    opts = _profile_options_resolved(task, profile, options)
    folder = Path(output_dir, run_name(f"{profile}-{label}", {"task": task, **opts}))
    if not quiet:
        return train_or_reuse(task, opts, folder, device=device, progress=progress, profile=profile)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            path = train_or_reuse(task, opts, folder, device=device, progress=progress, profile=profile)
    except BaseException:
        sys.stdout.write(buf.getvalue())
        raise
    text = buf.getvalue() + "".join(f"warning: {w.message}\n" for w in caught)
    if text:  # a reused run printed nothing and keeps its log
        atomic_write_text(text, path / "train.log")
    return path


def run_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """A run's epoch records (``metrics.jsonl``), read without rebuilding the run."""
    return RunFolder(run_dir).read_history()


def save_metrics(metrics: Mapping[str, Any], output_dir: str | Path) -> Path:
    """Write a notebook's ``output_dir/metrics.json`` atomically (the suite runner and the baselines read it)."""
    return atomic_write_json(dict(metrics), Path(output_dir) / "metrics.json")


def tie_table(runs: dict[str, str | Path] | Sequence[str | Path], keys: Sequence[str] = ("mR", "i2t_R@1"),
              split: str = "test") -> pd.DataFrame:
    """Each retrieval run's numbers under every tie rule: the headline rule, ``published`` and the range.

    Args:
        runs: run folders (a dict's keys name the rows, e.g. ``{"fisvl": path}``).
        keys: metric names (without rule prefix) to show.
        split: ``"test"`` or ``"val"``.

    Returns:
        One row per run: ``ties`` (the run's headline rule), then for every key the headline value, ``published``,
        ``pessimistic`` and ``optimistic`` (columns ``"{key} {rule}"``).

    Raises:
        KeyError: a run has no numbers under some rule (trained before tie rules were recorded: re-score it with
            ``rswb eval RUN --ties RULE``).
    """
    named = runs if isinstance(runs, dict) else {Path(r).name: r for r in runs}
    rows = {}
    for name, path in named.items():
        final = json.loads((Path(path) / "metrics.json").read_text())
        rule, metrics = final.get("ties", "optimistic"), final.get(split) or {}
        row: dict[str, Any] = {"ties": rule}
        for key in keys:
            for r in (rule, *(r for r in ("published", "pessimistic", "optimistic") if r != rule)):
                name_in_run = key if r == rule else f"{r}_{key}"
                if name_in_run not in metrics:
                    raise KeyError(f"{path}: no {split} {name_in_run!r} "
                                   f"(an older run: rswb eval {path} --ties RULE scores it)")
                row[f"{key} {r}"] = metrics[name_in_run]
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")
