"""The training engine: one ``fit()`` for every method, run folders, checkpoints, resume and DDP.

See :mod:`rswb.engine.task` (how a method plugs in), :mod:`rswb.engine.loop` (``fit``), :mod:`rswb.engine.runs`
(run folders and the registry) and :mod:`rswb.engine.distributed` (torchrun).
"""

from rswb.config import TrainConfig
from rswb.data.splits import carve_validation, validation_indices
from rswb.engine.classification import ClassificationTask
from rswb.engine.device import autocast, resolve_precision, select_device, to_device
from rswb.engine.distributed import DistContext, EpochBatchSampler, init_distributed
from rswb.engine.experiments import load_run, profile_run, save_metrics, train_or_reuse
from rswb.engine.loop import FitResult, NonFiniteLossError, RunExistsError, fit
from rswb.engine.runs import RunFolder, compare, list_runs
from rswb.engine.schedule import LRSchedule, build_optimizer, build_scheduler
from rswb.engine.seed import seed_everything
from rswb.engine.task import EvalContext, Task, TaskBundle
from rswb.io import CheckpointError, atomic_save, load_checkpoint

__all__ = [
    "CheckpointError",
    "ClassificationTask",
    "DistContext",
    "EpochBatchSampler",
    "EvalContext",
    "FitResult",
    "LRSchedule",
    "NonFiniteLossError",
    "RunExistsError",
    "RunFolder",
    "Task",
    "TaskBundle",
    "TrainConfig",
    "atomic_save",
    "autocast",
    "build_optimizer",
    "build_scheduler",
    "carve_validation",
    "compare",
    "fit",
    "init_distributed",
    "list_runs",
    "load_checkpoint",
    "load_run",
    "profile_run",
    "resolve_precision",
    "save_metrics",
    "seed_everything",
    "select_device",
    "to_device",
    "train_or_reuse",
    "validation_indices",
]
