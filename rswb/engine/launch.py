"""Run a registered task from options: what ``rswb train NAME [--option value ...]`` does.

Options come from three places, later ones winning: the task's preferred training settings
(:attr:`TaskBundle.train_defaults`), a YAML file (flat, or with ``train:`` and ``task:`` sections), and command-line
``--option value`` pairs. Each option goes to :class:`~rswb.config.TrainConfig` if it is one of its fields, else to
the task's own config dataclass (the type of the builder's single parameter); an option neither knows is an error
that lists both. Resuming (``--resume``) starts from the options saved in the run's ``config.yaml``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from rswb.config import (
    TrainConfig,
    check_option_names,
    check_used_options,
    drop_unused,
    field_help,
    from_dict,
    task_config_class,
    used_dict,
    validate,
)
from rswb.data.features import cache_root
from rswb.engine.device import select_device
from rswb.engine.distributed import init_distributed
from rswb.engine.loop import FitResult, RunExistsError, fit
from rswb.engine.runs import RunFolder, check_run_name, run_lock
from rswb.engine.seed import seed_everything
from rswb.engine.task import SPLITS, BuildRequest, Task, TaskBundle
from rswb.io import check_room, load_checkpoint, load_yaml
from rswb.registry import get
from rswb.utils import progress_bars

# Space a run needs before its task is built: the floor below which even a small run's checkpoints will not fit
# (fit() checks the real estimate from the model's size), and a floor for the frozen-feature cache entries.
MIN_RUN_BYTES = 64 * 2**20
MIN_CACHE_BYTES = 256 * 2**20

__all__ = ["LoadedRun", "call_builder", "describe_task", "load_run", "load_trained", "split_options",
           "task_config_class", "train_task"]


def renamed(task_cls: type | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """Saved options with renamed spellings translated (``RENAMED_OPTIONS`` of the task config), for old runs."""
    old_to_new = getattr(task_cls, "RENAMED_OPTIONS", {}) if task_cls else {}
    return {old_to_new.get(k, k): v for k, v in options.items()}  # a saved config holds one spelling, never both


def saved_task_options(task_cls: type | None, saved: Mapping[str, Any]) -> dict[str, Any]:
    """A saved run's task options as the task reads them today, so that an old run is rebuilt with its own splits.

    Renamed spellings are translated (:func:`renamed`), and options the run predates are set to what it ran with
    (``LEGACY_VALUES`` of the task config, e.g. the random validation share of runs made before ``val_rule``).
    """
    options = renamed(task_cls, saved)
    legacy = getattr(task_cls, "LEGACY_VALUES", {}) if task_cls else {}
    return {**{k: v for k, v in legacy.items() if k not in options}, **options}


def split_options(options: Mapping[str, Any], task_cls: type | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split flat options into ``(train options, task options)`` by field name.

    A deprecated spelling (``DEPRECATED_OPTIONS`` of the task config) is translated with a ``FutureWarning``.

    Raises:
        ValueError: an option that is neither a training nor a task option (both lists are shown), or a renamed
            task option given by its old spelling (the message names the new one).
    """
    deprecated = getattr(task_cls, "DEPRECATED_OPTIONS", {}) if task_cls else {}
    for old, new in deprecated.items():
        if old in options:
            if new in options:
                raise ValueError(f"--{old.replace('_', '-')} is the old name of --{new.replace('_', '-')}; give one")
            warnings.warn(f"--{old.replace('_', '-')} is deprecated; use --{new.replace('_', '-')}", FutureWarning,
                          stacklevel=3)
            options = {(new if k == old else k): v for k, v in options.items()}
    for old, new in (getattr(task_cls, "RENAMED_OPTIONS", {}) if task_cls else {}).items():
        if old in options and old not in field_help(TrainConfig):
            raise ValueError(f"--{old.replace('_', '-')} was renamed --{new.replace('_', '-')}")
    train_fields = set(field_help(TrainConfig))
    task_fields = set(field_help(task_cls)) if task_cls else set()
    train, task, unknown = {}, {}, []
    for k, v in options.items():
        if k in task_fields:
            task[k] = v
        elif k in train_fields:
            train[k] = v
        else:
            unknown.append(k)
    if unknown:
        def flags(names: Iterable[str]) -> str:
            return ", ".join("--" + n.replace("_", "-") for n in sorted(names)) or "(none)"

        raise ValueError(f"unknown option(s) {flags(unknown)}; training options: {flags(train_fields)}; "
                         f"task options: {flags(task_fields)}")
    return train, task


def _file_options(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    data = load_yaml(path)
    flat = {k: v for k, v in data.items() if k not in ("train", "task")}
    for section in ("train", "task"):
        if isinstance(data.get(section), Mapping):
            flat.update(data[section])
    return flat


def call_builder(builder: Any, task_cfg: Any, request: BuildRequest) -> TaskBundle:
    """Call a task builder with its config (if it takes one) and ``request`` (if it has a ``request`` parameter)."""
    args = [task_cfg] if task_cfg is not None else []
    kwargs = {"request": request} if "request" in inspect.signature(builder).parameters else {}
    bundle = builder(*args, **kwargs)
    bundle.config = task_cfg
    return bundle


def _check_effective(task_cls: type | None, train: TrainConfig, given: Mapping[str, Any]) -> None:
    """Refuse training options the user set that this task would silently ignore."""
    if "val_fraction" in given and getattr(task_cls, "OWN_VALIDATION", False):
        alt = " (its share: --val-share)" if "val_share" in field_help(task_cls) else ""
        raise ValueError(f"--val-fraction has no effect here: this task holds out its own validation items{alt}")
    if "momentum" in given and train.optimizer != "sgd":
        alt = "; KAMCL's EMA momentum is --ema-momentum" if task_cls and "ema_momentum" in field_help(task_cls) \
            else ""
        raise ValueError(f"--momentum is SGD's momentum and --optimizer {train.optimizer} ignores it{alt}")


def task_builder(name: str, allow_import: bool = True) -> Any:
    """The builder of task ``name`` (:func:`rswb.registry.get`), its options checked not to shadow training ones.

    Raises:
        KeyError: unknown task.
        TypeError: the task's config declares an option with the name of a training option.
    """
    builder = get("task", name, allow_import=allow_import)
    check_option_names(task_config_class(builder), f"task {name!r}")
    return builder


def profile_recipe(builder: Any, name: str, profile: str) -> dict[str, Any]:
    """The options of task ``name``'s recipe ``profile`` (its builder's ``profiles``), a copy.

    Raises:
        ValueError: the task has no profiles, or no such profile (the message lists them).
    """
    profiles = getattr(builder, "profiles", None) or {}
    if profile not in profiles:
        known = ", ".join(profiles) or "none"
        raise ValueError(f"--profile {profile}: task {name} has no such profile; its profiles: {known}")
    return dict(profiles[profile])


def describe_task(name: str) -> str:
    """Help text of a task: its docstring and the options of its config (for ``rswb train NAME --help``)."""
    builder = task_builder(name)
    doc = (inspect.getdoc(builder) or "").strip()
    # The whole docstring: builders state there the training settings they prefer over TrainConfig's defaults.
    lines = [f"task {name}: {doc}" if doc else f"task {name}"]
    profiles = getattr(builder, "profiles", None) or {}
    if profiles:
        lines.append("\nprofiles (--profile NAME; the options below override them):")
    for profile, recipe in profiles.items():
        shown = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in recipe.items()) or "(the defaults below)"
        lines.append(f"  {profile:<10} {shown}")
    cls = task_config_class(builder)

    def line(f: dataclasses.Field) -> str:
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        return f"  --{f.name.replace('_', '-'):<22} {f.metadata.get('help', '')} (default: {default!r})"

    if cls is not None:
        # Options every method uses first, then one group per set of methods (a method's own options together).
        groups: dict[tuple[str, ...] | None, list[str]] = {None: []}
        for f in dataclasses.fields(cls):
            groups.setdefault(f.metadata.get("methods"), []).append(line(f))
        selector = getattr(cls, "SELECTOR", "method")
        for methods, rows in groups.items():
            title = "task options" if methods is None else f"options of --{selector} {' | '.join(methods)} only"
            lines += [f"\n{title}:", *rows]
    lines.append("\ntraining options:")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "val_fraction" and getattr(cls, "OWN_VALIDATION", False):
            continue  # refused for this task (it holds out its own validation items): not offered either
        lines.append(line(f))
    return "\n".join(lines)


def train_task(name: str, options: Mapping[str, Any] | None = None, *, config_file: str | Path | None = None,
               run_name: str | None = None, runs_root: str | Path = "runs", resume: bool = False,
               overwrite: bool = False, profile: str | None = None, recipe_in_options: bool = False) -> FitResult:
    """Build the registered task ``name`` from options and train it with :func:`~rswb.engine.fit`.

    Args:
        name: registered task name, or ``"module:name"`` for a task registered by an importable module.
        options: flat ``{option: value}`` (training and task options mixed, as on the command line).
        config_file: YAML file of options (flat, or ``train:`` / ``task:`` sections).
        run_name: run folder name under ``runs_root`` (required with ``resume``).
        runs_root: parent folder of runs.
        resume: continue ``runs_root/run_name`` from its last checkpoint with its saved options.
        overwrite: replace an existing run of that name.
        profile: start from this recipe of the task (``rswb train TASK --profile NAME``: the ``PROFILES`` the
            notebooks and result tables name); the config file and ``options`` override it. A recipe shared by a
            task's methods drops what the selected method does not use.
        recipe_in_options: ``options`` already hold ``profile``'s recipe (what
            :func:`~rswb.engine.experiments.train_or_reuse` passes): the profile is recorded, not merged again.
    """
    builder = task_builder(name)
    task_cls = task_config_class(builder)
    merged: dict[str, Any] = {}
    recorded_profile = profile
    # The recipe first: a resumed run's saved options, the file and options override it.
    if profile is not None and not recipe_in_options:
        chosen = {**_file_options(config_file), **(options or {})}
        recipe = profile_recipe(builder, name, profile)
        merged.update(drop_unused(task_cls, {**recipe, **chosen}) if task_cls else recipe)
    if resume:
        if run_name is None:
            raise ValueError("--resume needs --name of the run to continue")
        run = RunFolder(Path(runs_root) / run_name)
        if run.config.exists():
            saved = run.read_config()
            recorded_profile = recorded_profile or saved.get("profile")  # a resumed run keeps its recipe's name
            merged.update(saved.get("train", {}))
            merged.update(saved_task_options(task_cls, saved.get("task_config", {})))
    merged.update(_file_options(config_file))
    merged.update(options or {})
    train_opts, task_opts = split_options(merged, task_cls)
    given = {**_file_options(config_file), **(options or {})}  # what the user set (not a resumed run's saved values)

    # Every option is checked before any data is touched: ranges, choices, and options that would do nothing.
    seed = validate(from_dict(TrainConfig, train_opts, source="training options"), source="training options")
    _check_effective(task_cls, seed, given)
    task_cfg = validate(from_dict(task_cls, task_opts, source=f"task {name} options"),
                        source=f"task {name} options") if task_cls else None
    if task_cfg is not None:  # an option the selected method does not use is an error, not ignored
        check_used_options(task_cfg, (k for k in renamed(task_cls, given) if k in task_opts))
    if run_name is not None:
        check_run_name(run_name)
    select_device(seed.device)  # a device that does not exist is refused here, not after the data is loaded
    dist = init_distributed()
    if dist.is_main:  # folders that cannot be written, or a full disk, are found in seconds, not after the data
        check_room(runs_root, MIN_RUN_BYTES, "the runs root (--runs-root)")
        if task_cfg is not None and "cache_dir" in field_help(type(task_cfg)):
            check_room(cache_root(task_cfg.cache_dir), MIN_CACHE_BYTES,
                       "the feature cache (--cache-dir, else $RSWB_CACHE_DIR or ~/.cache/rswb)")
    with contextlib.ExitStack() as stack:
        if run_name is not None and dist.is_main:
            # The folder's writer's lock and the "run exists" check come before any data is loaded: a second writer
            # (or --overwrite of a run another process trains) is refused in seconds, not after feature extraction.
            folder = stack.enter_context(run_lock(Path(runs_root) / run_name))
            if RunFolder(folder).exists() and not (resume or overwrite):
                raise RunExistsError(f"{folder}: a run already exists here; resume it (--resume), pass --overwrite, "
                                     "or choose another --name")
        seed_everything(seed.seed, seed.deterministic)  # before the builder, so initial weights are reproducible
        # Frozen encoders fill their caches on the run's device; --progress false silences the data layer's bars.
        with progress_bars(seed.progress):
            bundle = call_builder(builder, task_cfg, BuildRequest(select_device(seed.device)))
        train_cfg = validate(from_dict(TrainConfig, {**bundle.train_defaults, **train_opts},
                                       source="training options"), source="training options")
        return fit(bundle.task, bundle.train, val=bundle.val, test=bundle.test, config=train_cfg, name=run_name,
                   runs_root=runs_root, resume=resume, overwrite=overwrite,
                   task_config=used_dict(task_cfg) if task_cfg is not None else {}, task_name=name,
                   profile=recorded_profile, dist=dist, class_names=bundle.class_names)


@dataclass
class LoadedRun:
    """A finished run, rebuilt: its task (selected weights loaded, eval mode), splits, config and metrics.

    ``config`` is the saved ``config.yaml`` (a dict); ``task_config`` the task's config dataclass built from it, which
    the task's own functions take (``rswb.tasks.pha.prepare_data(run.task_config)``); ``class_names`` names the
    classes of a classifying task (PHA, hashing) for tables and figures. A split not asked for is ``None``.
    """

    path: Path
    task: Task
    train: Dataset | None
    val: Dataset | None
    test: Dataset | None
    config: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    task_config: Any = None  # the task's validated config dataclass (what rswb.tasks.<task>.prepare_data takes)
    class_names: list[str] | None = None  # name of each 0-based class (None: the task does not classify)


def load_run(run_dir: str | Path, weights: str = "best", overrides: Mapping[str, Any] | None = None, *,
             splits: Sequence[str] = SPLITS, device: str | torch.device | None = None) -> LoadedRun:
    """Rebuild a run from its folder: how ``rswb eval`` / ``search`` / ``report``, infer and notebooks get a run.

    The task is built from the saved ``config.yaml`` by its registered builder (the seed set first, so a random
    initialisation is the run's), then the selected weights are loaded and the task is put in eval mode.

    Args:
        run_dir: a run folder written by ``rswb train`` (or :func:`train_task`).
        weights: ``"best"`` (the selected epoch) or ``"last"``.
        overrides: task options replaced before the rebuild, for choices that do not change the weights (e.g.
            ``{"ties": "published"}`` to re-score a retrieval run under another tie rule). An option the task does
            not have is an error.
        splits: the splits to build (e.g. ``("test",)``: a hashing run then caches no training images); the others
            are ``None``.
        device: where frozen encoders run if a cache must be filled (None: the best available). The task stays on
            the CPU; move it with ``run.task.to(device)``.

    Raises:
        FileNotFoundError: not a run folder, or the weights file is missing.
        ValueError: the run was not made from a registered task (no ``task_name`` in its config), ``weights`` or
            ``splits`` is not one of the choices.
    """
    if weights not in ("best", "last"):
        raise ValueError(f"weights must be 'best' or 'last', got {weights!r}")
    request = BuildRequest(select_device(device), tuple(dict.fromkeys(splits)))
    run = RunFolder(run_dir)
    if not run.config.exists():
        raise FileNotFoundError(f"{run.path}: not a run folder (no config.yaml)")
    saved = run.read_config()
    name = saved.get("task_name")
    if not name:
        raise ValueError(f"{run.config}: no task_name; only runs started from a registered task can be rebuilt")
    path = run.best if weights == "best" else run.checkpoint
    if not path.exists():  # before the rebuild, which may fill caches for minutes
        raise FileNotFoundError(f"{path}: weights file not found (is the run finished?)")
    builder = task_builder(name, allow_import=False)  # a run folder is data: it never makes rswb import code
    seed_everything(saved.get("train", {}).get("seed", 0))
    task_cls = task_config_class(builder)
    task_opts = {**saved_task_options(task_cls, saved.get("task_config", {})), **dict(overrides or {})}
    source = f"{run.config} + {dict(overrides)}" if overrides else str(run.config)
    task_cfg = validate(from_dict(task_cls, task_opts, source=source), source=source) if task_cls else None
    bundle = call_builder(builder, task_cfg, request)
    bundle.task.load_state_dict(load_checkpoint(path)["task"])
    bundle.task.eval()
    kept = {s: getattr(bundle, s) if s in request.splits else None for s in SPLITS}
    return LoadedRun(Path(run_dir), bundle.task, kept["train"], kept["val"], kept["test"], saved,
                     run.read_final() or {}, run.read_history(), task_cfg, bundle.class_names)


def load_trained(run_dir: str | Path, weights: str = "best", overrides: Mapping[str, Any] | None = None) -> LoadedRun:
    """Deprecated: :func:`load_run` (the same rebuild, with the run's records)."""
    warnings.warn("rswb.engine.launch.load_trained is deprecated; use rswb.engine.load_run", FutureWarning,
                  stacklevel=2)
    return load_run(run_dir, weights, overrides)
