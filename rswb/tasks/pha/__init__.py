"""``rswb train pha``: few-shot MS+PAN classification with the PHA version ladder (``docs/methods.md``, PHA).

Two kinds of data, picked from what ``--data`` points at:

* **pixel mode** (the lab format: a folder with ``ms4.tif``, ``pan.tif``, ``train.npy``, ``test.npy``, the older
  label variants, or a ``.mat`` pair; default: the embedded synthetic scene). Per class, ``shots`` labelled pixels
  of the train map (a count, or a fraction such as 0.02) train and ``val_shots`` further ones select the epoch; the
  whole test map is the test set. Patches come from the vectorised :class:`~rswb.data.patches.PatchSampler`.
* **scene mode** (a scene-classification folder such as UC Merced): every image becomes an MS+PAN pair by the Wald
  protocol (:mod:`rswb.data.wald`), ``shots`` images per class of the training split (UC Merced: 00-79) train,
  ``val_shots`` more validate, the test split (80-99) tests, and the model classifies the whole image.
  With ``--encoder efficientnet_lite0`` (or lite1 / lite2) both branches stand on a frozen ImageNet backbone: MS
  (upsampled onto the PAN grid) and PAN (as a grey image) go through it once per image and dihedral view, its pooled
  stride-8, stride-16 and head features are cached, and the version's stages are trainable adapters on them
  (:class:`rswb.models.pha.FeatureBranch`). Training draws one cached view per item, the same for MS and PAN; gain
  jitter, which acts on images, does not apply.

Training (both modes): random flips / 90-degree rotations applied identically to MS and PAN (the PAN patch is the
ground footprint of the MS patch, so the pair stays co-registered); cross-entropy on the few shots; for the aligned
versions the InfoNCE terms also see ``unlabelled`` extra patches per step drawn from the scene outside the test map
(scene mode: training images outside the few shots, labels unused), since alignment needs no labels.
Evaluation of a large pixel set (the test map) runs the model densely over the whole scene
(:func:`rswb.models.pha.dense_predict`), which gives the same logits as per-patch inference in a fraction of the time.

Pre-training (``pha_v6``, or ``--pretrain within|cross`` on any two-branch version): before the few shots, both
branches train without labels on every unlabelled item (:mod:`rswb.tasks.pha.pretrain`); the weights are cached per
data, seed and recipe, so every shot count and version of a seed shares one pre-training.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, ClassVar

import torch

from rswb.config import option
from rswb.engine.task import BuildRequest, TaskBundle
from rswb.losses.pha import PHALoss
from rswb.models.pha import PHA_VERSIONS, PRETRAIN_OBJECTIVES, PHANet
from rswb.registry import create_model, register_task
from rswb.tasks.pha.data import ENCODER_TAPS, PHAData, prepare_data, pretrain_views
from rswb.tasks.pha.pretrain import PretrainRecipe, PretrainResult, pretrained
from rswb.tasks.pha.task import PHATask

__all__ = ["ENCODERS", "ENCODER_TAPS", "PHAConfig", "PHAData", "build_model", "pha_task", "prepare_data",
           "pretrain_recipe", "run_pretraining", "stage_widths"]


ENCODERS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
"""Pretrained backbones ``--encoder`` accepts (scene mode)."""



@dataclasses.dataclass
class PHAConfig:
    """Options of ``rswb train pha``."""

    OWN_VALIDATION: ClassVar[bool] = True  # val_shots items per class, drawn by the task

    data: str | None = option(None, "lab-format folder / .mat pair (pixel mode) or scene folder (scene mode); "
                                    "None: the embedded synthetic scene")
    version: str = option("pha_v5", "model version: " + " | ".join(PHA_VERSIONS))
    shots: float = option(10, "labelled items per class (a count) or a fraction per class (e.g. 0.02)", low=0,
                          low_open=True)
    val_shots: float = option(10, "validation items per class from the rest of the train map / split", low=0)
    split_seed: int = option(0, "seed of the few-shot draw")
    normalize: str = option("minmax", "per-band scaling of the scene: minmax | percentile",
                            choices=("minmax", "percentile"))
    ms_patch: int = option(16, "MS patch size (PAN patch = ratio x this)", low=1)
    unlabelled: int = option(64, "unlabelled patches / images per step for the alignment terms (0: none)", low=0)
    augment: bool = option(True, "random flips and 90-degree rotations, the same for MS and PAN")
    jitter: float = option(0.3, "random gain in [1 - jitter, 1 + jitter] per sample, drawn independently for MS "
                                "and PAN (0: none)", low=0, high=1, high_open=True)
    repeats: int = option(16, "passes over the few-shot set per epoch (few shots make very short epochs)", low=1)
    temperature: float = option(0.1, "InfoNCE temperature", low=0, low_open=True)
    align_weight: float = option(0.5, "weight of the alignment term", low=0)
    recon_weight: float = option(1.0, "weight of the dictionary reconstruction term (pha_v5)", low=0)
    decor_weight: float = option(0.5, "weight of the shared/specific decorrelation term (pha_v5)", low=0)
    sparse_weight: float = option(0.05, "weight of the code sparsity term (pha_v5)", low=0)
    progressive_width: float = option(0.5, "width (in stages) of the progressive schedule's bump", low=0,
                                     low_open=True)
    widths: str = option("16,32,64", "channels of the shallow, middle and deep stage")
    atoms: int = option(64, "dictionary atoms (pha_v5)", low=1)
    dropout: float = option(0.2, "dropout before the classifier", low=0, high=1, high_open=True)
    image_size: int = option(64, "scene mode: images are resized to this size (PAN; 64 = the CPU profile, 256 = full "
                                  "UC Merced resolution); MS is size / ratio", low=8)
    ratio: int = option(4, "scene mode: simulated PAN/MS ratio", low=2)
    mtf_gain: float = option(0.3, "scene mode: MTF gain at the MS Nyquist frequency (Wald protocol)",
                              low=0, high=1, low_open=True, high_open=True)
    unlabelled_pool: int = option(30, "scene mode: unlabelled training images kept per class", low=0)
    max_test: int | None = option(None, "use at most this many test items (seeded subsample; quick runs)", low=1)
    align_schedule: str | None = option(None, "ablation: override the version's alignment schedule "
                                              "(equal | deep | progressive; None: the version's own)",
                                      choices=("equal", "deep", "progressive"))
    stage_fusion: bool | None = option(None, "ablation: override the version's stage-wise fusion (None: its own)")
    encoder: str | None = option(None, "scene mode: a frozen ImageNet backbone under both branches (MS upsampled to "
                                       "the PAN grid, PAN as grey); the ladder trains adapters on its cached pooled "
                                       "stride-8, stride-16 and head features (None: convolutional branches from "
                                       "scratch on the images)", choices=ENCODERS)
    views: int = option(4, "encoder branches: dihedral views cached per image (training draws one per item)",
                        low=1, high=8)
    cache_dir: str | None = option(None, "feature cache folder (default $RSWB_CACHE_DIR or ~/.cache/rswb)",
                                   folder=True)
    pretrain: str | None = option(None, "self-supervised pre-training of both branches on the unlabelled items "
                                        "before the few shots: cross (two-view contrast within each modality + MS <-> "
                                        "PAN contrast + shared/specific decorrelation) | within (two-view contrast "
                                        "only: the control) | none; None: the version's own (pha_v6: cross, the "
                                        "others: none)", choices=PRETRAIN_OBJECTIVES)
    # The pre-training recipe is the task's, like its InfoNCE temperature: a profile sets it for the whole ladder and
    # the versions that pre-train (pha_v6, --pretrain) use it.
    pretrain_steps: int = option(300, "pre-training optimiser steps", low=1)
    pretrain_batch: int = option(256, "pre-training items per step (each in two views)", low=2)
    pretrain_lr: float = option(1e-3, "pre-training AdamW learning rate", low=0, low_open=True)
    pretrain_temperature: float = option(0.2, "pre-training InfoNCE temperature", low=0, low_open=True)
    orth_weight: float = option(1.0, "pre-training weight of the shared/specific decorrelation (cross)", low=0)
    pseudo_threshold: float = option(0.0, "ablation: self-training, unlabelled items predicted with at least this "
                                          "probability train as that class (0: off)", low=0, high=1, high_open=True)
    pseudo_weight: float = option(1.0, "weight of the self-training term", low=0)
    branch_lr_mult: float = option(1.0, "fine-tuning learning-rate multiplier of pre-trained branches (0: frozen)",
                                   low=0)

    def pretrain_objective(self) -> str:
        """What this run pre-trains with: ``--pretrain``, else the version's own (``pha_v6``: cross)."""
        if self.pretrain is not None:
            return self.pretrain
        return "cross" if self.version == "pha_v6" else "none"

    def check(self) -> None:
        """Cross-field and registry rules, run by :func:`rswb.config.validate` before any data is read."""
        if self.version not in PHA_VERSIONS:
            raise ValueError(f"task pha options: --version must be one of {', '.join(PHA_VERSIONS)}, "
                             f"got {self.version!r}")
        stage_widths(self.widths)
        objective = self.pretrain_objective()
        if objective == "cross" and self.version in ("ms_only", "pan_only"):
            raise ValueError(f"task pha options: --pretrain cross needs both modalities, got --version {self.version}")
        if objective == "none" and self.branch_lr_mult != 1.0:
            raise ValueError(f"task pha options: --branch-lr-mult scales pre-trained branches, but --version "
                             f"{self.version} pre-trains nothing (use pha_v6 or --pretrain within|cross)")
        for key in ("align_schedule", "stage_fusion"):
            if getattr(self, key) is not None and self.version in ("ms_only", "pan_only", "pha_v1"):
                raise ValueError(f"task pha options: --{key.replace('_', '-')} needs an aligned version (pha_v2 and "
                                 f"later), got --version {self.version}")


def stage_widths(widths: str) -> tuple[int, int, int]:
    """The three stage widths of ``--widths`` (``"16,32,64"``).

    Raises:
        ValueError: not three comma-separated positive integers.
    """
    try:
        out = tuple(int(w) for w in str(widths).split(","))
    except ValueError:
        out = ()
    if len(out) != 3 or min(out) < 1:
        raise ValueError(f"task pha options: --widths must be three comma-separated positive integers, got {widths!r}")
    return out


def build_model(cfg: PHAConfig, data: PHAData) -> PHANet:
    """The registered version ``cfg.version`` for ``data``'s classes, bands and ratio."""
    cfg.check()  # the same rules as before training, for callers that build a model directly
    kw: dict[str, Any] = {"widths": stage_widths(cfg.widths), "dropout": cfg.dropout, "patch": cfg.ms_patch,
                          "feature_dims": data.feature_dims}
    if cfg.version in ("pha_v5", "pha_v6"):
        kw["atoms"] = cfg.atoms
    if cfg.pseudo_threshold:
        kw["pseudo_threshold"] = cfg.pseudo_threshold
    kw["pretrain"] = cfg.pretrain_objective()
    for key in ("align_schedule", "stage_fusion"):
        if getattr(cfg, key) is not None:
            kw[key] = getattr(cfg, key)
    return create_model(cfg.version, num_classes=data.num_classes, bands=data.bands, ratio=data.ratio, **kw)


# The task's recipes by profile (the notebooks' PROFILE, rswb.engine.experiments.profile_options): option overrides.
PROFILES: dict[str, dict[str, Any]] = {
    # Seconds per version on 2 CPU cores: fewer epochs and passes, a seeded subsample of the test pixels, and a
    # short pre-training for pha_v6 (60 steps of 128 pixel patches, about 20 s).
    "quick": {"epochs": 8, "repeats": 8, "max_test": 3000, "pretrain_steps": 60, "pretrain_batch": 128},
    # Scene mode on a CPU: both branches stand on the frozen ImageNet EfficientNet-Lite0, its pooled stride-8 /
    # stride-16 / head features cached once per image (one view), so each run trains adapters in seconds
    # (benchmarks/results/pha.md, "Pretrained branches").
    "cpu": {"encoder": "efficientnet_lite0", "image_size": 224, "widths": "64,128,256", "views": 1,
            "val_shots": 5},
    "full": {},
}


def pretrain_recipe(cfg: PHAConfig) -> PretrainRecipe:
    """The pre-training recipe of ``cfg`` (its objective must not be ``"none"``)."""
    return PretrainRecipe(objective=cfg.pretrain_objective(), steps=cfg.pretrain_steps, batch_size=cfg.pretrain_batch,
                          lr=cfg.pretrain_lr, temperature=cfg.pretrain_temperature, orth_weight=cfg.orth_weight,
                          jitter=cfg.jitter)


def run_pretraining(cfg: PHAConfig, data: PHAData, model: PHANet, seed: int, device: Any = "cpu",
                    progress: bool = True) -> PretrainResult:
    """Pre-train ``model``'s branches for ``cfg`` on ``data``'s unlabelled items (cached; loaded into ``model``).

    ``model`` must be freshly built (its initial weights are part of the cache key). Notebooks call this to show the
    loss curve of a run's pre-training: with the run's seed and options it is read back from the cache.
    """
    views, data_key = pretrain_views(cfg, data)
    return pretrained(model, views, pretrain_recipe(cfg), data_key, seed, cfg.cache_dir, device, progress)


@register_task("pha")
def pha_task(cfg: PHAConfig, request: BuildRequest | None = None) -> TaskBundle:
    """Few-shot MS+PAN classification with a PHA version (pixel mode on lab-format scenes, scene mode via Wald).

    Training settings this task prefers (the training options below override them): 30 epochs, batch 64, AdamW,
    lr 2e-3, weight decay 1e-4, cosine schedule with 1 warm-up epoch.
    """
    request = request or BuildRequest()
    data = prepare_data(cfg, request.device)
    model = build_model(cfg, data)
    pre = None
    if model.pretrain != "none" and request.wants("train"):
        # The engine seeded torch with the run's seed just before building: the pre-training is keyed by it.
        pre = run_pretraining(cfg, data, model, torch.initial_seed(), request.device, progress=sys.stderr.isatty())
    weights = {"align_loss": cfg.align_weight, "recon_loss": cfg.recon_weight, "decor_loss": cfg.decor_weight,
               "sparse_loss": cfg.sparse_weight, "pseudo_loss": cfg.pseudo_weight}
    loss = PHALoss.for_model(model, cfg.temperature, cfg.progressive_width)
    images = data.feature_dims is None  # on cached encoder features the dataset draws the views; gains need images
    info = {"method": "pha", "version": cfg.version, "data": data.source}
    if not images:
        info["encoder"] = cfg.encoder
    if pre is not None:
        info.update(pretrain=f"{model.pretrain}, {cfg.pretrain_steps} steps, key {pre.key}",
                    pretrain_final_loss=f"{pre.curve['loss'][-1]:.4f}")
    task = PHATask(model, loss, data.num_classes, unlabelled=data.unlabelled, n_unlabelled=cfg.unlabelled,
                   augment=cfg.augment and images, jitter=cfg.jitter if images else 0.0, scene=data.scene,
                   loss_weights=weights, info=info,
                   branch_lr_mult=cfg.branch_lr_mult)
    defaults = {"epochs": 30, "batch_size": 64, "optimizer": "adamw", "lr": 2e-3, "weight_decay": 1e-4,
                "warmup_epochs": 1, "schedule": "cosine"}
    names = data.class_names or [f"class {c + 1}" for c in range(data.num_classes)]
    return TaskBundle(task, data.train, data.val, data.test, train_defaults=defaults, class_names=list(names))


pha_task.profiles = PROFILES  # how the engine's experiments find them (no recipe lives there)
