"""The Task: a model plus its named loss terms and its evaluation, the one thing :func:`rswb.engine.fit` trains.

A method plugs into the engine by subclassing :class:`Task` and implementing three methods:

* :meth:`Task.losses` ``(batch) -> {"cls_loss": ..., "align_loss": ..., "sim_pos": ...}``: named terms; the ones
  ending in ``_loss`` are summed with ``loss_weights`` (default 1) into the training loss, the rest are only logged.
  Dropping a term is a config change (weight 0), not a code change.
* :meth:`Task.predict` ``(batch) -> {"logits": [B, C], "label": [B]}``: per-item evaluation outputs.
* :meth:`Task.metrics` ``(outputs) -> {"OA": ..., ...}``: metrics over the outputs of a whole split, computed with
  :mod:`rswb.metrics`.

Tasks whose evaluation is not "predict every item, then score" (retrieval encodes images and captions separately)
override :meth:`Task.evaluate`. A task builder registered with :func:`rswb.registry.register_task` takes one config
dataclass and returns a :class:`TaskBundle`, which is what ``rswb train NAME`` runs. A builder that also takes a
parameter named ``request`` is given a :class:`BuildRequest`: the device its frozen encoders fill caches on, and the
splits wanted (a run being rebuilt to score its test split need not cache the training images).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data._utils.collate import default_collate
from tqdm.auto import tqdm

from rswb.engine.device import autocast, select_device, to_device
from rswb.engine.distributed import DistContext, gather_outputs, shard_indices
from rswb.utils import eval_mode

__all__ = ["SPLITS", "BuildRequest", "EvalContext", "Task", "TaskBundle"]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class BuildRequest:
    """What the launcher asks of a task builder beyond its options (given to a builder with a ``request`` parameter).

    Attributes:
        device: where frozen encoders run to fill the feature caches (the run's ``--device``), so extraction happens
            where training does.
        splits: the splits wanted; a builder may leave the others out (``None``): :func:`rswb.engine.launch.load_run`
            drops any it builds anyway. Empty: the task and its weights alone (e.g. a distillation teacher).
    """

    device: torch.device = field(default_factory=lambda: select_device(None))
    splits: tuple[str, ...] = SPLITS

    def __post_init__(self) -> None:
        unknown = [s for s in self.splits if s not in SPLITS]
        if unknown:
            raise ValueError(f"splits must be some of {', '.join(SPLITS)}, got {list(self.splits)}")

    def wants(self, *splits: str) -> bool:
        """Whether any of ``splits`` is wanted."""
        return any(s in self.splits for s in splits)


@dataclass
class EvalContext:
    """What :meth:`Task.evaluate` needs from the engine: device, precision, batch size and the process group."""

    device: torch.device
    precision: str = "fp32"
    batch_size: int = 128
    dist: DistContext = field(default_factory=DistContext)
    num_workers: int = 0
    progress: bool = False
    desc: str = "eval"

    def loader(self, dataset: Dataset, collate_fn: Callable | None = None) -> DataLoader:
        """A DataLoader over this process's shard of ``dataset`` in dataset order (see :func:`shard_indices`)."""
        idx = shard_indices(len(dataset), self.dist.rank, self.dist.world_size)
        data = dataset if not self.dist.enabled else Subset(dataset, idx)
        return DataLoader(data, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          collate_fn=collate_fn or default_collate, pin_memory=self.device.type == "cuda")

    def gather(self, outputs: dict[str, Any], n: int) -> dict[str, Any]:
        """All processes' outputs in dataset order (see :func:`gather_outputs`)."""
        return gather_outputs(outputs, self.dist, n)


@dataclass
class TaskBundle:
    """What a registered task builder returns: the task and its splits (``val=None``: carved from ``train``)."""

    task: Task
    train: Dataset | None  # None only when the builder was asked for other splits (BuildRequest.splits)
    val: Dataset | None = None
    test: Dataset | None = None
    train_defaults: dict[str, Any] = field(default_factory=dict)  # TrainConfig values this method prefers
    class_names: list[str] | None = None  # name of each 0-based class, for tables and figures (None: not a classifier)
    config: Any = None  # the validated task config dataclass the bundle was built from (set by the launcher)


class Task(nn.Module):
    """Base class of every trainable method (see the module docstring).

    Args:
        model: the network; its parameters are the task's (plus any loss parameters such as proxies).
        loss_weights: weight of each ``*_loss`` term (missing terms weigh 1).
        info: what the run registry shows: ``method``, ``version``, ``data`` (free-form strings).

    Attributes:
        monitor: the validation metric that selects ``best.pt`` by default.
        monitor_mode: ``"max"`` or ``"min"``.
    """

    monitor: str = "OA"
    monitor_mode: str = "max"

    def __init__(self, model: nn.Module, loss_weights: dict[str, float] | None = None,
                 info: dict[str, str] | None = None):
        super().__init__()
        self.model = model
        self.loss_weights = dict(loss_weights or {})
        self.info = dict(info or {})

    # --- training -------------------------------------------------------------------------------------------
    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Named terms for one batch; ``*_loss`` terms must be means over the batch's samples."""
        raise NotImplementedError(f"{type(self).__name__} must implement losses(batch)")

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, report)``: the weighted sum of the ``*_loss`` terms and every term, detached, for logging.

        Training goes through ``forward`` so that a DDP wrapper around the task sees each step.
        """
        terms = self.losses(batch)
        loss_terms = {k: v for k, v in terms.items() if k.endswith("_loss")}
        if not loss_terms:
            raise ValueError(f"{type(self).__name__}.losses() returned no '*_loss' term (got {sorted(terms)})")
        loss = sum(self.loss_weights.get(k, 1.0) * v for k, v in loss_terms.items())
        report = {k: v.detach().float() for k, v in terms.items()}
        report["loss"] = loss.detach().float()
        return loss, report

    def param_groups(self) -> list[dict[str, Any]]:
        """Parameter groups for the optimiser; a group may set ``lr_mult`` (and ``weight_decay``)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Hook called before each training epoch (0-based), e.g. for progressive loss schedules."""

    def collate(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Samples -> batch (default: stack tensors, keep other values in lists)."""
        return default_collate(list(samples))

    # --- evaluation -----------------------------------------------------------------------------------------
    def predict(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per-item outputs of one batch (item dimension first), e.g. ``{"logits": ..., "label": ...}``."""
        raise NotImplementedError(f"{type(self).__name__} must implement predict(batch)")

    def metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        """Metrics over the concatenated outputs of a whole split (pure :mod:`rswb.metrics` calls)."""
        raise NotImplementedError(f"{type(self).__name__} must implement metrics(outputs)")

    def evaluate(self, dataset: Dataset, ctx: EvalContext) -> dict[str, float]:
        """Predict every item of ``dataset`` (sharded across processes), gather, and score with :meth:`metrics`."""
        return {k: float(v) for k, v in self.metrics(self.collect(dataset, ctx)).items()}

    @torch.no_grad()
    def collect(self, dataset: Dataset, ctx: EvalContext | None = None) -> dict[str, torch.Tensor]:
        """The :meth:`predict` outputs of every item of ``dataset``, concatenated in dataset order (CPU tensors).

        Notebooks use this to look at what a model outputs (codes, logits, embeddings) beyond the metrics.
        """
        if ctx is None:
            ctx = EvalContext(next(self.parameters()).device)
        chunks: dict[str, list[torch.Tensor]] = {}
        loader = ctx.loader(dataset, self.collate)
        with eval_mode(self):
            for batch in tqdm(loader, desc=ctx.desc, leave=False, disable=not (ctx.progress and ctx.dist.is_main)):
                with autocast(ctx.device, ctx.precision):
                    out = self.predict(to_device(batch, ctx.device))
                for k, v in out.items():
                    chunks.setdefault(k, []).append(v.detach().float().cpu() if v.is_floating_point() else v.cpu())
        outputs = {k: torch.cat(v) for k, v in chunks.items()}
        return ctx.gather(outputs, len(dataset))

    def describe(self) -> dict[str, str]:
        """``method``, ``version`` and ``data`` for the run registry (from ``info``, else the class name)."""
        return {"method": self.info.get("method", type(self).__name__), "version": self.info.get("version", ""),
                "data": self.info.get("data", "")}

    def protocol(self) -> dict[str, str]:
        """The evaluation choices behind this task's numbers (e.g. ``{"ties": "expected"}``), none by default.

        The training loop writes them into every ``metrics.jsonl`` line and into ``metrics.json``, so a number is
        never read without the rule that produced it.
        """
        return {}
