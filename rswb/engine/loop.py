"""``fit()``: the one training loop of every rswb method.

One call trains a :class:`~rswb.engine.task.Task`, selects the best epoch on a validation split carved from the
training split, evaluates the test split once with the selected weights, and leaves a run folder
(:mod:`rswb.engine.runs`). The same call runs under ``torchrun`` for data-parallel training
(:mod:`rswb.engine.distributed`) and continues an interrupted run with ``resume=True``.

Resuming is exact: a checkpoint is written (atomically) at the end of every epoch with the model, optimiser,
scheduler and gradient-scaler states, every RNG state and the epoch history; the shuffling order of an epoch depends
only on ``(seed, epoch)``. A run killed at any point and resumed therefore repeats the unfinished epoch exactly as the
uninterrupted run did (bit for bit in deterministic mode on CPU).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import math
import platform
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from rswb.config import TrainConfig, from_dict, to_dict, validate
from rswb.data.splits import carve_validation
from rswb.engine.device import autocast, make_grad_scaler, resolve_precision, select_device, to_device
from rswb.engine.distributed import DistContext, EpochBatchSampler, current_context
from rswb.engine.runs import RunFolder, run_lock
from rswb.engine.schedule import build_optimizer, build_scheduler
from rswb.engine.seed import get_rng_state, seed_everything, set_rng_state
from rswb.engine.task import EvalContext, Task
from rswb.io import CheckpointError, DiskFullError, atomic_save, check_room, load_checkpoint

__all__ = ["FitResult", "NonFiniteLossError", "RunExistsError", "fit"]

CHECKPOINT_FORMAT = 1
# Settings that may change between an interrupted run and its resumption without changing the result.
_RESUMABLE_CHANGES = {"progress", "num_workers", "device"}


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch, the step and the loss terms."""


class RunExistsError(FileExistsError):
    """The run folder already holds a run and neither ``resume`` nor ``overwrite`` was asked for."""


@dataclass
class FitResult:
    """What :func:`fit` returns (the same numbers are in the run folder)."""

    task: Task
    run_dir: Path
    history: list[dict[str, Any]]
    best_epoch: int | None
    val: dict[str, float]
    test: dict[str, float]
    time_s: float
    stopped_early: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _lower_is_better(metric: str) -> bool:
    return metric.endswith("loss") or metric.endswith("medr") or metric.endswith("meanr")


def _improved(value: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if mode == "max" else value < best


def _batch_len(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        for v in batch.values():
            if isinstance(v, torch.Tensor) and v.ndim > 0:
                return int(v.shape[0])
            if isinstance(v, (list, tuple)):
                return len(v)
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_len(batch[0])
    return 1


def _check_finite(loss: torch.Tensor, report: Mapping[str, torch.Tensor], epoch: int, step: int, steps: int,
                  global_step: int, checkpoint: Path) -> None:
    if bool(torch.isfinite(loss)):
        return
    bad = [f"{k}={float(v):.4g}" for k, v in report.items() if k != "loss" and not bool(torch.isfinite(v).all())]
    terms = ", ".join(bad) if bad else "no single term is non-finite (their weighted sum overflowed)"
    raise NonFiniteLossError(
        f"non-finite loss ({float(loss.detach())}) at epoch {epoch + 1}, step {step + 1}/{steps} (global step "
        f"{global_step + 1}); non-finite terms: {terms}. Lower the lr, enable grad_clip, or check the inputs; "
        f"the last good state is {checkpoint if checkpoint.exists() else '(no checkpoint yet)'}"
    )


def _environment(device: torch.device, precision: str, dist: DistContext) -> dict[str, Any]:
    env = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "device": str(device), "precision": precision, "world_size": dist.world_size}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _resolve_config(config: TrainConfig | Mapping[str, Any] | None) -> TrainConfig:
    if config is None:
        return TrainConfig()
    if isinstance(config, TrainConfig):
        return validate(config, source="train config")
    return validate(from_dict(TrainConfig, config, source="train config"), source="train config")


def _default_name(task: Task) -> str:
    info = task.describe()
    stem = "-".join(s for s in (info["method"], info["version"]) if s) or "run"
    return f"{stem}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}".replace("/", "_").replace(" ", "_")


def _check_resumable(saved: Mapping[str, Any], cfg: TrainConfig, run: RunFolder) -> None:
    now = to_dict(cfg)
    diffs = [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in now
             if k not in _RESUMABLE_CHANGES and saved.get(k) != now[k]]
    if diffs:
        raise ValueError(f"{run.config}: cannot resume with a different training config ({'; '.join(diffs)}); "
                         "start a new run instead")


def fit(
    task: Task,
    train: Dataset,
    *,
    val: Dataset | None = None,
    test: Dataset | None = None,
    config: TrainConfig | Mapping[str, Any] | None = None,
    name: str | None = None,
    runs_root: str | Path = "runs",
    run_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    task_config: Mapping[str, Any] | None = None,
    task_name: str | None = None,
    profile: str | None = None,
    callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
    dist: DistContext | None = None,
    class_names: Sequence[str] | None = None,
) -> FitResult:
    """Train ``task`` on ``train``, select the best epoch on validation, evaluate ``test`` once, write a run folder.

    Args:
        task: the method (model + losses + evaluation), built on any device (it is moved to the chosen one).
            Seed before building it (:func:`rswb.engine.seed_everything`) for reproducible initialisation.
        train: training split (map-style dataset of dict samples).
        val: validation split; ``None`` carves ``config.val_fraction`` of ``train`` (stratified by
            ``train.labels`` when the dataset has them). With no validation split the last epoch is selected.
        test: test split, evaluated once at the end with the selected weights (``None``: skipped).
        config: :class:`~rswb.config.TrainConfig` or a mapping of its fields.
        name: run name; the folder is ``runs_root/name`` (default: ``<method>-<version>-<timestamp>``).
        runs_root: parent folder of runs.
        run_dir: explicit run folder (overrides ``name`` and ``runs_root``).
        resume: continue the run in the folder from its last checkpoint (starts from scratch if none was written).
        overwrite: replace an existing run in the folder.
        task_config: the task's own config, saved in ``config.yaml`` under ``task_config``.
        task_name: the registered task name (saved, so that ``rswb eval`` can rebuild the run).
        profile: the task's recipe the options started from (``rswb train TASK --profile NAME``), saved beside them.
        callbacks: functions called on rank 0 with each epoch's record (the ``metrics.jsonl`` line).
        dist: process context (default: the initialised ``torch.distributed`` group, else one process).
        class_names: name of each 0-based class, saved in ``metrics.json`` and shown beside ``acc_k`` in the table.

    Returns:
        A :class:`FitResult` with the history, the selected epoch, its validation metrics and the test metrics.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (names the epoch, step and terms).
        RunExistsError: the folder holds a run and neither ``resume`` nor ``overwrite`` is set.
        RunLockedError: another process is writing the folder (:func:`rswb.engine.runs.run_lock`).
        ValueError: ``resume`` with a changed training config, or a training split smaller than one batch.
    """
    cfg = _resolve_config(config)
    dist = dist or current_context()
    seed_everything(cfg.seed, cfg.deterministic)
    device = select_device(cfg.device)
    if device.type == "cuda" and dist.enabled and cfg.device is None:
        device = torch.device("cuda", dist.local_rank)
    precision = resolve_precision(cfg.precision, device)
    show = cfg.progress and dist.is_main
    folder = Path(run_dir) if run_dir is not None else Path(runs_root) / (name or _default_name(task))
    # One writer per run folder: rank 0 holds the folder's lock from before anything is cleared or swept until the
    # final metrics are written (re-entrant: rswb train already took it before loading data).
    with run_lock(folder) if dist.is_main else contextlib.nullcontext():
        try:
            return _fit_locked(task, train, val, test, _RunSettings(cfg, dist, device, precision, show, folder, resume,
                                                                    overwrite, task_config, task_name,
                                                                    tuple(callbacks), class_names, profile))
        except DiskFullError as err:  # one line saying what survived and what to do, not torch's traceback
            raise DiskFullError(err.path, _intact_after_disk_full(RunFolder(folder))) from None


def checkpoint_bytes(task: Task) -> int:
    """Space a run's files need at their peak, estimated from the task's size, in bytes.

    The peak is ``checkpoint.pt`` being replaced while the previous one and ``best.pt`` are still on disk. A
    checkpoint holds every tensor of the task plus two Adam moments per trained parameter; ``best.pt`` the tensors.
    """
    weights = sum(t.numel() * t.element_size() for t in task.state_dict().values())
    trained = sum(p.numel() * p.element_size() for p in task.parameters() if p.requires_grad)
    return 2 * (weights + 2 * trained) + weights + 2**20


def _intact_after_disk_full(run: RunFolder) -> str:
    """What a user can rely on after a full disk stopped a run: the last checkpoint's epoch, verified."""
    if not run.checkpoint.exists():
        return "no checkpoint was written yet: free space and run again with --resume"
    try:
        epoch = load_checkpoint(run.checkpoint)["epoch"]
    except CheckpointError as err:
        return f"the last checkpoint cannot be read ({err}): free space and run again with --overwrite"
    return f"the last checkpoint, epoch {epoch}, is intact: free space and run with --resume"


@dataclass(frozen=True)
class _RunSettings:
    """What :func:`fit` resolved before taking the folder's lock: the settings of this run, fixed from then on."""

    cfg: TrainConfig
    dist: DistContext
    device: torch.device
    precision: str
    show: bool  # progress bars (rank 0 only)
    folder: Path
    resume: bool
    overwrite: bool
    task_config: Mapping[str, Any] | None
    task_name: str | None
    callbacks: tuple[Callable[[dict[str, Any]], None], ...]
    class_names: Sequence[str] | None
    profile: str | None = None


def _fit_locked(task: Task, train: Dataset, val: Dataset | None, test: Dataset | None,
                settings: _RunSettings) -> FitResult:
    """:func:`fit`'s work once the folder's lock is held."""
    s = settings
    cfg, dist, device, precision, show = s.cfg, s.dist, s.device, s.precision, s.show
    resume, task_config, task_name, callbacks, class_names = (s.resume, s.task_config, s.task_name, s.callbacks,
                                                              s.class_names)
    run = _prepare_folder(RunFolder(s.folder), resume, s.overwrite, dist)

    task.to(device)
    train_set, val_set = (train, val) if val is not None else carve_validation(train, cfg.val_fraction, cfg.seed)
    sampler, loader = _training_loader(task, train_set, cfg, device, dist)
    trainer = task
    if dist.enabled:
        ids = [device.index] if device.type == "cuda" else None
        trainer = DistributedDataParallel(task, device_ids=ids,
                                          find_unused_parameters=getattr(task, "ddp_find_unused_parameters", False))
    st = _Training(trainer, task, loader, sampler, build_optimizer(task.param_groups(), cfg), cfg, device,
                   precision, dist, run, show)
    st.scheduler = build_scheduler(st.optimizer, cfg, len(sampler))
    st.scaler = make_grad_scaler(device, precision)
    st.monitor = cfg.monitor or task.monitor
    st.mode = task.monitor_mode if cfg.monitor is None else ("min" if _lower_is_better(st.monitor) else "max")
    if resume and run.checkpoint.exists():
        _resume(st)
    if dist.is_main:
        check_room(run.path, checkpoint_bytes(task), "the run's checkpoints")
        _write_config(st, task_name, task_config, len(train_set), val_set, test, s.profile)
        run.write_history(st.history)

    eval_ctx = EvalContext(device, precision, cfg.eval_batch_size or 2 * cfg.batch_size, dist, cfg.num_workers,
                           progress=show)
    epochs_bar = tqdm(range(st.start_epoch, cfg.epochs), initial=st.start_epoch, total=cfg.epochs,
                      desc=run.path.name, disable=not show, unit="epoch")
    for epoch in epochs_bar:
        t0 = time.perf_counter()
        record = _train_epoch(st, epoch)
        improved = _validate(st, epoch, val_set, eval_ctx, record)
        record["time_s"] = time.perf_counter() - t0
        st.history.append(record)
        if dist.is_main:
            _save_epoch(st, epoch, improved, record, callbacks)
        dist.barrier()
        if show:
            shown = {"loss": f"{record['train_loss']:.4f}"}
            if st.best["value"] is not None:
                shown[f"best {st.monitor}"] = f"{st.best['value']:.4g}"
            epochs_bar.set_postfix(shown)
        if cfg.early_stop_patience is not None and st.bad_evals >= cfg.early_stop_patience:
            st.stopped_early = True
            break
    epochs_bar.close()
    return _finish(st, val_set, test, eval_ctx, class_names)


@dataclass
class _Training:
    """Everything one :func:`fit` call works with, and the state that changes as it trains."""

    trainer: Any  # the task, or its DDP wrapper
    task: Task
    loader: DataLoader
    sampler: EpochBatchSampler
    optimizer: torch.optim.Optimizer
    cfg: TrainConfig
    device: torch.device
    precision: str
    dist: DistContext
    run: RunFolder
    show: bool
    scheduler: Any = None
    scaler: Any = None
    monitor: str = ""
    mode: str = "max"
    start_epoch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": None, "value": None, "metrics": {}})
    best_state: dict[str, torch.Tensor] | None = None
    bad_evals: int = 0
    stopped_early: bool = False


def _prepare_folder(run: RunFolder, resume: bool, overwrite: bool, dist: DistContext) -> RunFolder:
    """Refuse to overwrite a run by accident, clear a replaced one, and remove temp files a killed process left."""
    if dist.is_main and run.exists() and not resume:
        if not overwrite:
            raise RunExistsError(f"{run.path}: a run already exists here; resume it (resume=True / --resume), "
                                 "pass overwrite=True, or choose another name")
        for p in (run.checkpoint, run.best, run.history, run.final, run.config):
            p.unlink(missing_ok=True)
    if dist.is_main and run.path.is_dir():
        for stale in run.path.glob(".*.tmp"):  # left by a process killed while writing; the target is intact
            stale.unlink(missing_ok=True)
    dist.barrier()
    return run


def _training_loader(task: Task, train_set: Dataset, cfg: TrainConfig, device: torch.device,
                     dist: DistContext) -> tuple[EpochBatchSampler, DataLoader]:
    """The epoch-seeded batch sampler (this process's shard) and the DataLoader over it."""
    sampler = EpochBatchSampler(len(train_set), cfg.batch_size, seed=cfg.seed, shuffle=True,
                                drop_last=cfg.drop_last, rank=dist.rank, world_size=dist.world_size)
    if len(sampler) == 0:
        raise ValueError(f"the training split has {len(train_set)} items, fewer than one batch of {cfg.batch_size} "
                         "with drop_last; lower batch_size")
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.num_workers, collate_fn=task.collate,
                        pin_memory=device.type == "cuda", persistent_workers=cfg.num_workers > 0)
    return sampler, loader


def _resume(st: _Training) -> None:
    """Load the last checkpoint's full training state into ``st`` (the config must be the saved one)."""
    run = st.run
    if run.config.exists():
        _check_resumable(run.read_config().get("train", {}), st.cfg, run)
    ckpt = load_checkpoint(run.checkpoint, map_location=st.device)
    st.task.load_state_dict(ckpt["task"])
    st.optimizer.load_state_dict(ckpt["optimizer"])
    st.scheduler.load_state_dict(ckpt["scheduler"])
    st.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    st.start_epoch, st.global_step, st.history = ckpt["epoch"], ckpt["global_step"], list(ckpt["history"])
    st.best, st.bad_evals = dict(ckpt["best"]), ckpt["bad_evals"]
    st.best_state = _restore_best(run, ckpt, st.best, st.dist)


def _write_config(st: _Training, task_name: str | None, task_config: Mapping[str, Any] | None, n_train: int,
                  val_set: Dataset | None, test: Dataset | None, profile: str | None = None) -> None:
    """``config.yaml``: every resolved option, their recipe, what the task is, the split sizes and the environment."""
    st.run.write_config({
        "name": st.run.path.name, "task_name": task_name, "profile": profile, "task": st.task.describe(),
        "train": to_dict(st.cfg),
        "task_config": dict(task_config or {}), "monitor": {"metric": st.monitor, "mode": st.mode},
        "splits": {"train": n_train, "val": len(val_set) if val_set is not None else 0,
                   "test": len(test) if test is not None else 0},
        "environment": _environment(st.device, st.precision, st.dist),
    })


def _train_epoch(st: _Training, epoch: int) -> dict[str, Any]:
    """One pass over the training split; the epoch's record (mean of every loss term, the lr, the tie rule...)."""
    cfg, task = st.cfg, st.task
    task.train()
    task.on_epoch_start(epoch, cfg.epochs)
    st.sampler.set_epoch(epoch)
    steps = len(st.sampler)
    sums: dict[str, float] = {}
    seen = 0
    bar = tqdm(st.loader, total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not st.show)
    for step, batch in enumerate(bar):
        batch = to_device(batch, st.device)
        with autocast(st.device, st.precision):
            loss, report = st.trainer(batch)
        _check_finite(loss, report, epoch, step, steps, st.global_step, st.run.checkpoint)
        st.optimizer.zero_grad(set_to_none=True)
        st.scaler.scale(loss).backward()
        if cfg.grad_clip is not None:
            st.scaler.unscale_(st.optimizer)
            torch.nn.utils.clip_grad_norm_(task.parameters(), cfg.grad_clip)
        st.scaler.step(st.optimizer)
        st.scaler.update()
        st.scheduler.step()
        st.global_step += 1
        n = _batch_len(batch)
        seen += n
        for k, v in report.items():
            sums[k] = sums.get(k, 0.0) + float(v) * n
        if st.show:
            bar.set_postfix(loss=f"{float(report['loss']):.4f}", lr=f"{st.optimizer.param_groups[0]['lr']:.2e}")
    keys = sorted(sums)
    totals = st.dist.all_reduce_sum([sums[k] for k in keys] + [float(seen)])
    record: dict[str, Any] = {"epoch": epoch + 1, "step": st.global_step, **task.protocol()}
    record.update({f"train_{k}": totals[i] / max(totals[-1], 1.0) for i, k in enumerate(keys)})
    record["lr"] = st.optimizer.param_groups[0]["lr"]
    return record


def _validate(st: _Training, epoch: int, val_set: Dataset | None, eval_ctx: EvalContext,
              record: dict[str, Any]) -> bool:
    """Score the validation split when due, add it to ``record``, keep the best weights; whether they improved."""
    cfg = st.cfg
    last = epoch + 1 == cfg.epochs
    if val_set is not None and ((epoch + 1) % cfg.eval_every == 0 or last):
        eval_ctx.desc = "validate"
        val_metrics = st.task.evaluate(val_set, eval_ctx)
        record.update({f"val_{k}": v for k, v in val_metrics.items()})
        if st.monitor not in val_metrics:
            raise KeyError(f"monitor metric {st.monitor!r} is not among the validation metrics "
                           f"{sorted(val_metrics)}; set monitor= to one of them")
        if _improved(val_metrics[st.monitor], st.best["value"], st.mode):
            st.best = {"epoch": epoch + 1, "value": val_metrics[st.monitor], "metrics": val_metrics}
            st.best_state = {k: v.detach().clone() for k, v in st.task.state_dict().items()}
            st.bad_evals = 0
            return True
        st.bad_evals += 1
    elif val_set is None:
        st.best = {"epoch": epoch + 1, "value": None, "metrics": {}}
    return False


def _save_epoch(st: _Training, epoch: int, improved: bool, record: dict[str, Any],
                callbacks: Sequence[Callable[[dict[str, Any]], None]]) -> None:
    """Rank 0: the full training state to ``checkpoint.pt``, improved weights to ``best.pt``, the epoch's line."""
    atomic_save({
        "format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "global_step": st.global_step,
        "task": st.task.state_dict(), "optimizer": st.optimizer.state_dict(), "scheduler": st.scheduler.state_dict(),
        "scaler": st.scaler.state_dict(), "rng": get_rng_state(), "history": st.history, "best": st.best,
        "bad_evals": st.bad_evals, "train_config": to_dict(st.cfg),
    }, st.run.checkpoint)
    # best.pt after checkpoint.pt: if a kill falls between the two, the checkpoint's epoch is the best one
    # and resuming rebuilds best.pt from it (see _restore_best).
    if improved:
        atomic_save({"epoch": epoch + 1, "task": st.best_state, "metrics": st.best["metrics"]}, st.run.best)
    st.run.append_history(record)
    for cb in callbacks:
        cb(record)


def _finish(st: _Training, val_set: Dataset | None, test: Dataset | None, eval_ctx: EvalContext,
            class_names: Sequence[str] | None = None) -> FitResult:
    """Load the selected weights, score the test split once, write ``metrics.json`` and print the summary."""
    task, run, dist = st.task, st.run, st.dist
    if val_set is None:
        st.best_state = None
        if dist.is_main:
            atomic_save({"epoch": len(st.history), "task": task.state_dict(), "metrics": {}}, run.best)
    elif st.best_state is not None:
        task.load_state_dict(st.best_state)
    test_metrics: dict[str, float] = {}
    if test is not None:
        eval_ctx.desc = "test"
        test_metrics = task.evaluate(test, eval_ctx)
    total_time = sum(r.get("time_s", 0.0) for r in st.history)
    final = {
        "name": run.path.name, **task.describe(), **task.protocol(), "protocol": task.protocol(),
        "epochs_run": len(st.history),
        "best_epoch": st.best["epoch"], "monitor": st.monitor, "val": st.best["metrics"], "test": test_metrics,
        "time_s": total_time, "stopped_early": st.stopped_early, "device": str(st.device), "precision": st.precision,
        "world_size": dist.world_size, "finished": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    if class_names is not None:
        final["class_names"] = list(class_names)  # acc_k is the accuracy of class_names[k - 1]
    notes = selection_warnings(val_set, st.history, st.monitor)
    if notes:
        final["warnings"] = notes  # in metrics.json and in the table printed below
        for note in notes:
            warnings.warn(f"{run.path.name}: {note}", stacklevel=2)
    if dist.is_main:
        run.write_final(final)
        # The table is the run's result, not progress: --progress false hides the bars, never the numbers.
        (tqdm.write if st.show else print)(_summary(final))
    dist.barrier()
    return FitResult(task=task, run_dir=run.path, history=copy.deepcopy(st.history), best_epoch=st.best["epoch"],
                     val=dict(st.best["metrics"]), test=test_metrics, time_s=total_time,
                     stopped_early=st.stopped_early)


def _restore_best(run: RunFolder, ckpt: Mapping[str, Any], best: Mapping[str, Any],
                  dist: DistContext) -> dict[str, torch.Tensor] | None:
    """The selected weights when resuming, consistent with the checkpoint's record of the best epoch."""
    if best["epoch"] is None or not best["metrics"]:
        return None
    if run.best.exists():
        saved = load_checkpoint(run.best)
        if saved["epoch"] == best["epoch"]:
            return saved["task"]
    if best["epoch"] == ckpt["epoch"]:
        # Killed after checkpoint.pt was written and before best.pt: the checkpoint's weights are the best ones.
        if dist.is_main:
            atomic_save({"epoch": ckpt["epoch"], "task": ckpt["task"], "metrics": best["metrics"]}, run.best)
        return {k: v.clone() for k, v in ckpt["task"].items()}
    raise RuntimeError(f"{run.best}: does not hold epoch {best['epoch']}, the best epoch recorded in "
                       f"{run.checkpoint}; the run folder was modified by hand")


def selection_warnings(val_set: Dataset | None, history: Sequence[Mapping[str, Any]], monitor: str) -> list[str]:
    """Why the validation split could not really select an epoch: too few items per class, or a flat monitor.

    A class with fewer than 2 validation items makes the selected epoch a coin toss for it; a monitored metric that
    has the same value at every epoch selects the first epoch whatever the training did.
    """
    notes = []
    labels = getattr(val_set, "labels", None)
    if labels is not None and len(labels):
        counts = np.bincount(np.asarray(labels, dtype=np.int64))
        present = counts[counts > 0]
        if present.min() < 2 or len(present) < len(counts):
            notes.append(f"the validation split has {int(counts.min())} item(s) of its smallest class "
                         f"({len(labels)} items in all): too few to select an epoch on")
    values = [r.get(f"val_{monitor}") for r in history if r.get(f"val_{monitor}") is not None]
    if len(values) > 1 and len(set(values)) == 1:
        notes.append(f"validation {monitor} was {values[0]:.4g} at every epoch: it could not select an epoch")
    return notes


def metric_label(key: str, class_names: Sequence[str] | None) -> str:
    """A metric key for people: ``acc_3`` becomes ``acc_3 (forest)`` when the class names are known."""
    if class_names and key.startswith("acc_") and key[4:].isdigit() and 0 < int(key[4:]) <= len(class_names):
        return f"{key} ({class_names[int(key[4:]) - 1]})"
    return key


def _summary(final: Mapping[str, Any]) -> str:
    """The short table printed at the end of a run (per-class accuracies named by their class)."""
    lines = [f"run {final['name']}: {final['epochs_run']} epochs in {final['time_s']:.1f} s, "
             f"best epoch {final['best_epoch']} by val {final['monitor']}"]
    keys = sorted(set(final["val"]) | set(final["test"]))
    names = final.get("class_names")
    if keys:
        labels = {k: metric_label(k, names) for k in keys}
        width = max(12, *map(len, labels.values()))
        lines.append(f"  {'metric':<{width}} {'val':>10} {'test':>10}")
        for k in keys:
            v, t = final["val"].get(k), final["test"].get(k)
            lines.append(f"  {labels[k]:<{width}} {'' if v is None else f'{v:.4g}':>10} "
                         f"{'' if t is None else f'{t:.4g}':>10}")
    lines += [f"  warning: {note}" for note in final.get("warnings", [])]
    return "\n".join(lines)
