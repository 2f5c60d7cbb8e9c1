"""``rswb train hash``: DHCL deep hashing on a scene folder (UC Merced / AID layouts, or the embedded scenes).

Protocol (``docs/methods.md``, DHCL): the layout's split rule gives train (UCMD: NN 00-79 of each class) and
query = database (UCMD: NN 80-99, evaluated leave-one-out, each query excluded by index); a validation share of the
training images (``val_share`` of each class; ``val_rule`` block: the first images of each class, UCMD NN 00-09)
selects the epoch; metrics are mAP@K (standard per-query AP), mAP over
the whole ranking (``mAP@all``, what DHCNN and DPSH re-runs report as "mAP"), P@K, precision/recall within Hamming
radius 2, with and without the semantic cue, plus DHCL's own "MAP@K" on the same codes
(:func:`rswb.metrics.legacy.dhcl_map_at_k`) so that the column is comparable with the published table.

Two profiles:

* ``freeze_backbone=True`` (default, the CPU profile): the ImageNet backbone is frozen; its pooled features are
  computed once per image and view (the dihedral flips/rotations used as augmentation, ``views``) and cached on
  disk, and only the hash layer, the classifier and the proxies train, in seconds per epoch. Why: fine-tuning
  EfficientNet-Lite0 at 224 px costs about a minute per UC Merced epoch on a 2-core CPU.
* ``train_from=STAGE`` (partial fine-tuning, the CPU's way to fine-tune): the backbone's pieces before ``STAGE`` stay
  frozen and run once per training image and view (``views`` dihedral views, each cached separately: convolutions
  are not rotation-equivariant), their output is cached on disk (float16), and the pieces from ``STAGE`` on train with
  the new layers, each epoch on one random cached view per image. Batch-norm statistics stay frozen everywhere (the
  paper's choice); the trained stages' batch-norm scale and shift train.
  Ingredients of the partial profile, each an option measured alone (``benchmarks/results/dhcl_ucmd_finetune.md``):
  ``tta_views`` (codes averaged over dihedral views of each query), ``crop_views`` (seeded random-resized crops
  cached beside the dihedral views), ``mixup`` (of the cached activations), ``teachers`` (distillation from finished
  runs of other backbones on the same split), ``label_smoothing``, a deeper ``train_from`` and ``image_size``.
* ``freeze_backbone=False`` (the GPU profile, the paper's schedule): the whole network fine-tunes on images with
  random dihedral augmentation, ``lr 1e-4``, step schedule (10 epochs, x0.5), batch 90, frozen batch-norm statistics.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from rswb.config import ImageTaskOptions, option
from rswb.data.features import CachedViews, FeatureSet, cache_root, cached_images, nbytes
from rswb.data.scenes import SceneFolder, check_images
from rswb.data.splits import first_per_class, validation_split
from rswb.data.transforms import CropView, RandomDihedral
from rswb.engine.task import BuildRequest, TaskBundle
from rswb.losses.hashing import DHCLLoss
from rswb.models.backbones import Backbone, backbone_names, check_backbone_choice
from rswb.registry import create_model, register_task
from rswb.tasks.hashing.task import HashTask

__all__ = ["HashConfig", "hash_task", "query_folder"]


@dataclasses.dataclass
class HashConfig(ImageTaskOptions):
    """Options of ``rswb train hash``."""

    # Spellings of saved run configs that were renamed (read back by load_run and --resume).
    RENAMED_OPTIONS: ClassVar[dict[str, str]] = {"val_fraction": "val_share", "cue_weight": "cue_repeats"}
    # Old spellings still accepted on the command line, with a warning naming the new one.
    DEPRECATED_OPTIONS: ClassVar[dict[str, str]] = {"cue_weight": "cue_repeats"}
    OWN_VALIDATION: ClassVar[bool] = True  # the task holds out its own validation images
    # Values of options a saved run config predates: what those runs ran with (read back by load_run and --resume).
    LEGACY_VALUES: ClassVar[dict[str, Any]] = {"val_rule": "random"}

    backbone: str = option("efficientnet_lite0", "image backbone: " + " | ".join(backbone_names(from_folder=False)))
    data: str | None = option(None, "scene folder (UC Merced or AID layout); None: the embedded synthetic scenes",
                              folder=True)
    val_share: float = option(0.125, "share of each class's training images held out for model selection (UCMD: "
                              "10 of 80)", low=0, low_open=True, high=1, high_open=True)
    val_rule: str = option("block", "how the validation images are held out: block (the first val_share of each "
                           "class by number, shaped like the query block) | random (a seeded random share, the rule of "
                           "runs made before) | none (train on every training image and keep the last epoch: a refit "
                           "for an epoch count selected before, e.g. by a block run)",
                           choices=("block", "random", "none"))
    layout: str = option("auto", "auto | ucmerced | aid (decides the split rule)", choices=("auto", "ucmerced", "aid"))
    bits: int = option(64, "hash code length K", low=1, high=4096)
    views: int = option(4, "dihedral views per training image in the cache (1-8; frozen and partial profiles)",
                        low=1, high=8)
    cue: bool = option(True, "append the semantic cue (predicted class in binary) to evaluation codes")
    cue_repeats: int | None = option(None, "repetitions of each cue bit (None: bits + 1, strict class-first ranking)",
                                     low=1)
    proxy_weight: float = option(1.0, "weight of the Proxy Anchor term", low=0)
    cls_weight: float = option(1.0, "weight of the classification cross-entropy", low=0)
    quant_weight: float = option(0.1, "weight of the quantisation term", low=0)
    alpha: float = option(32.0, "Proxy Anchor alpha", low=0, low_open=True)
    margin: float = option(0.1, "Proxy Anchor margin", low=0)
    proxy_lr_mult: float = option(100.0, "learning-rate multiplier of the proxies", low=0, low_open=True)
    label_smoothing: float = option(0.0, "label smoothing of the classification cross-entropy", low=0, high=1,
                                    high_open=True)
    tta_views: int = option(1, "test-time augmentation: codes and class scores averaged over this many dihedral "
                            "views of each query image (1: none; --train-from only, at most --views)", low=1, high=8)
    topk: int = option(20, "K of mAP@K and P@K", low=1)
    per_class: int | None = option(None, "use at most this many images per class in each split (quick runs)", low=1)
    train_from: str | None = option(None, "partial fine-tuning: train the backbone from this piece on (e.g. stage6, "
                                    "stage7, head) on cached outputs of the frozen pieces before it; overrides "
                                    "--freeze-backbone")
    crop_views: int = option(0, "partial fine-tuning: this many more cached views per training image, each a seeded "
                             "random-resized crop (0.35-1 of the area) in a seeded dihedral view, drawn with the "
                             "dihedral views (--train-from only)", low=0, high=16)
    mixup: float = option(0.0, "mixup of the network's input in a batch (cached features or cut activations: "
                          "feature-level): the Beta(a, a) parameter a (0: none); every loss term is mixed alike",
                          low=0)
    teachers: list[str] = option([], "distillation: run folders of hash runs (any backbone, --train-from) on the same "
                                 "training split; their mean softened class scores on every cached training view are "
                                 "the targets of an added KL term")
    distill_weight: float = option(1.0, "weight of the distillation term (--teachers only)", low=0)
    distill_temperature: float = option(4.0, "softmax temperature of the distillation (--teachers only)", low=0,
                                        low_open=True)


    def check(self) -> None:
        """Cross-field rules, run by :func:`rswb.config.validate` before any data is read.

        The backbone and the cut come from the registry and the backbone itself. A run that trains from a cut does
        not keep its backbone frozen: ``freeze_backbone`` is recorded as False, so the saved config says what ran.
        """
        try:
            check_backbone_choice(self.backbone, self.train_from, from_folder=False)
        except ValueError as err:
            raise ValueError(f"task hash options: {err}") from None
        if self.train_from is not None:
            self.freeze_backbone = False
        if self.tta_views > 1 and self.train_from is None:
            raise ValueError("task hash options: --tta-views needs --train-from (the query views are cached at the "
                             "cut)")
        if self.tta_views > self.views:
            raise ValueError(f"task hash options: --tta-views {self.tta_views} is more than --views {self.views}: "
                             "test views the model never trained on")
        if self.train_from is None:
            for name, on in (("--crop-views", self.crop_views > 0), ("--teachers", bool(self.teachers))):
                if on:
                    raise ValueError(f"task hash options: {name} needs --train-from (its views are cached at the cut)")
        if not self.teachers and (self.distill_weight != HashConfig.distill_weight
                                  or self.distill_temperature != HashConfig.distill_temperature):
            raise ValueError("task hash options: --distill-weight / --distill-temperature need --teachers")


def _cached_features(backbone: Backbone, folder: SceneFolder, views: int, cfg: HashConfig,
                     device: torch.device) -> torch.Tensor:
    """Pooled features of ``folder`` (``[N, views, F]``) from the data layer's cache (:mod:`rswb.data.features`)."""
    return cached_images(backbone, folder, [rec.path for rec in folder.records], output=f"{cfg.backbone}-pooled",
                         views=views, settings=cfg.image_size, split=folder.split, cache_dir=cfg.cache_dir,
                         device=device,
                         desc=f"{cfg.backbone} features ({len(folder)} images x {views})")["features"]


def _cached_cut(backbone: Backbone, folder: SceneFolder, views: int, cfg: HashConfig, device: torch.device,
                crop: int | None = None) -> dict:
    """The frozen trunk's output at ``cfg.train_from`` for every image and view ``[N, V, C, H, W]`` (float16), cached.

    The cache depends only on the frozen pieces' weights (``backbone.trunk(cut)``): the trained ones do not shape it.
    ``crop``: the crop view of that number instead (:class:`~rswb.data.transforms.CropView`), ``[N, 1, C, H, W]``.
    """
    cut = cfg.train_from
    what, output, settings = f"x {views} views", f"{cfg.backbone}-{cut}", cfg.image_size
    if crop is not None:
        folder = copy.copy(folder)  # the same images, each replaced by its seeded crop
        folder.transforms = view = CropView(crop)
        what, output = f"as crop {crop}", f"{output}-crop{crop}"
        settings = (settings, view.seed, view.scale, view.ratio)
    out = cached_images(backbone, folder, [rec.path for rec in folder.records], output=output,
                        fn=lambda b, x: {"cut": b.forward_until(x, cut)["cut"]}, views=views if crop is None else None,
                        settings=settings, weights=backbone.trunk(cut), split=folder.split,
                        cache_dir=cfg.cache_dir, device=device, dtype=torch.float16,
                        desc=f"{cfg.backbone} up to {cut} ({len(folder)} images {what})")
    print(f"cached {cut} activations: {len(folder)} images {what}, {nbytes(out) / 2**20:.0f} MiB")
    return out if crop is None else {k: v.unsqueeze(1) for k, v in out.items()}


def _train_views(backbone: Backbone, folder: SceneFolder, cfg: HashConfig, device: torch.device) -> dict:
    """The cut activations of every training view: the ``views`` dihedral views, then the ``crop_views`` crops."""
    cache = _cached_cut(backbone, folder, max(1, min(8, cfg.views)), cfg, device)
    crops = [_cached_cut(backbone, folder, 1, cfg, device, crop=c) for c in range(cfg.crop_views)]
    return {k: torch.cat([v] + [c[k] for c in crops], 1) for k, v in cache.items()} if crops else cache


# What a teacher must share with its student: the training split its targets are read on.
_SAME_SPLIT = ("layout", "val_rule", "val_share", "split_seed", "per_class")


def _load_teachers(cfg: HashConfig, train_all: SceneFolder, device: torch.device) -> list:
    """The ``--teachers`` runs, rebuilt without data (task and weights) and checked, before any cache is built.

    A teacher must be a finished ``--train-from`` hash run (any backbone) on the student's training split and
    classes: one trained on another split would leak the student's validation images into its targets.
    """
    from rswb.engine.launch import load_run  # tasks sit above the engine; imported here, only with teachers
    from rswb.engine.seed import get_rng_state, set_rng_state

    state = get_rng_state()  # rebuilding a teacher seeds the global RNG with its seed: the student keeps its own
    try:
        runs = []
        for path in cfg.teachers:
            if not (Path(path) / "config.yaml").is_file():
                raise FileNotFoundError(f"--teachers: {path} is not a run folder (no config.yaml)")
            run = load_run(path, splits=(), device=device)
            tcfg = run.task_config
            if not isinstance(tcfg, HashConfig) or tcfg.train_from is None:
                raise ValueError(f"--teachers: {path} is not a hash run with --train-from")
            same = [k for k in _SAME_SPLIT if getattr(tcfg, k) != getattr(cfg, k)]
            if Path(tcfg.data or "").resolve() != Path(cfg.data or "").resolve():
                same.insert(0, "data")
            if same or list(run.class_names or []) != list(train_all.classes):
                raise ValueError(f"--teachers: {path} was trained on another split or class list "
                                 f"({', '.join(same) or 'classes'} differ from this run's)")
            runs.append(run)
        return runs
    finally:
        set_rng_state(state)


def _teacher_targets(cfg: HashConfig, teachers: list, train_all: SceneFolder, device: torch.device) -> torch.Tensor:
    """The teachers' mean softened class scores on every training image and cached view ``[N, V + crops, C]``.

    Each teacher (from :func:`_load_teachers`) scores the student's views (the same dihedral views and seeded crops)
    through its own frozen trunk and cut cache, at its own image size; the scores are
    ``softmax(logits / distill_temperature)``, averaged over the teachers.
    """
    total = None
    for run in teachers:
        tcfg = dataclasses.replace(run.task_config, views=cfg.views, crop_views=cfg.crop_views)
        folder = _limit_per_class(SceneFolder(train_all.root, "train", layout=tcfg.layout, image_size=tcfg.image_size),
                                  tcfg.per_class)
        probs = _view_scores(run.task.model, _train_views(run.task.model.backbone, folder, tcfg, device),
                             cfg.distill_temperature)
        total = probs if total is None else total + probs
    return total / len(teachers)


@torch.no_grad()
def _view_scores(model: nn.Module, cache: dict[str, torch.Tensor], temperature: float,
                 batch: int = 512) -> torch.Tensor:
    """``softmax(logits / temperature)`` of ``model`` on every cached image and view ``[N, V, C]`` (float32)."""
    model.eval()
    cut = cache["cut"]
    n, v = cut.shape[:2]
    flat = cut.flatten(0, 1)
    taps = {k: m.flatten(0, 1) for k, m in cache.items() if k != "cut"}
    out = []
    for i in range(0, len(flat), batch):
        part = {"cut": flat[i:i + batch].float(), "taps": {k: m[i:i + batch].float() for k, m in taps.items()}}
        out.append(torch.softmax(model(part)["logits"].float() / temperature, 1))
    return torch.cat(out).view(n, v, -1)


def _limit_per_class(folder: SceneFolder, per_class: int | None) -> SceneFolder:
    folder.records = [folder.records[i] for i in first_per_class([r.label for r in folder.records], per_class)]
    return folder


def _scene_splits(cfg: HashConfig) -> tuple[SceneFolder, SceneFolder]:
    """The training images and the query (= database) images of the scene folder, limited per class."""
    from rswb.data.synthetic import ensure_embedded

    root = Path(cfg.data) if cfg.data else ensure_embedded("scenes")
    folder = SceneFolder(root, "train", layout=cfg.layout, image_size=cfg.image_size)
    return _limit_per_class(folder, cfg.per_class), _limit_per_class(folder.with_split("query"), cfg.per_class)


def _make_task(cfg: HashConfig, train_all: SceneFolder) -> HashTask:
    """The DHCL model, its loss and their weights, for the classes of ``train_all``."""
    num_classes = len(train_all.classes)
    model = create_model("dhcl", backbone=cfg.backbone, bits=cfg.bits, num_classes=num_classes,
                         pretrained=cfg.pretrained, cue=cfg.cue, cue_repeats=cfg.cue_repeats,
                         frozen_backbone=cfg.freeze_backbone and cfg.train_from is None, train_from=cfg.train_from)
    loss = DHCLLoss(num_classes, cfg.bits, alpha=cfg.alpha, margin=cfg.margin, label_smoothing=cfg.label_smoothing,
                    distill_temperature=cfg.distill_temperature)
    weights = {"proxy_loss": cfg.proxy_weight, "cls_loss": cfg.cls_weight, "quant_loss": cfg.quant_weight,
               "distill_loss": cfg.distill_weight}
    root = train_all.root
    info = {"method": "dhcl", "version": f"{cfg.bits}bit{'' if cfg.cue else '-nocue'}",
            "data": f"{root.name} ({train_all.layout})"}
    return HashTask(model, loss, weights, cfg.proxy_lr_mult, cfg.topk, info, mixup=cfg.mixup)


def _test_split(cfg: HashConfig, model: nn.Module, query: SceneFolder, device: torch.device) -> Dataset:
    """The query (= database) split: cached frozen features or cut activations, or the images themselves."""
    if cfg.train_from is not None:
        # With test-time augmentation every item carries its tta_views views; the model averages over them.
        return CachedViews(_cached_cut(model.backbone, query, cfg.tta_views, cfg, device), query.labels,
                           np.arange(len(query)), all_views=cfg.tta_views > 1)
    if not cfg.freeze_backbone:
        return query
    return FeatureSet(_cached_features(model.backbone, query, 1, cfg, device), query.labels, np.arange(len(query)))


# The task's recipes by profile (the notebooks' PROFILE, rswb.engine.experiments.profile_options): option overrides.
PROFILES: dict[str, dict[str, Any]] = {
    # Seconds per run on 2 CPU cores: the frozen ImageNet EfficientNet-Lite0 on 128-px images, features cached
    # once (one view, 30 images per class), so an epoch is a fraction of a second and a few dozen of them train
    # the hash layer and the classifier well (lr 3e-3: the default 1e-3 needs about three times the epochs).
    "quick": {"image_size": 128, "views": 1, "per_class": 30, "lr": 3e-3, "epochs": 40},
    # The frozen ImageNet EfficientNet-Lite0 with cached features (the task's defaults).
    "cpu": {},
    # Partial fine-tuning on a CPU: stage 7 and the last 1x1 convolution train with the hash layer on cached stage-7
    # inputs of all 8 dihedral views and 4 seeded crops of every training image, and each query is coded as the mean
    # over its 8 dihedral views. Of every ingredient and combination measured (3 seeds, 64 bits, block validation;
    # benchmarks/results/dhcl_ucmd_finetune.md) this one has the best validation mAP@20 (97.38), which is how it was
    # chosen; its test mAP@20 (95.43 +- 2.25) is below that of the same views at the head cut (96.55, validation
    # 96.32), which the validation could not see.
    "finetune": {"train_from": "stage7", "views": 8, "tta_views": 8, "crop_views": 4},
    # The paper's schedule: the whole network fine-tunes (a GPU profile).
    "full": {"freeze_backbone": False},
}


@register_task("hash")
def hash_task(cfg: HashConfig, request: BuildRequest | None = None) -> TaskBundle:
    """DHCL deep hashing on a scene folder (UC Merced / AID / embedded), leave-one-out mAP@K.

    Training settings this task prefers (the training options below override them): frozen backbone: 40 epochs,
    batch 90, lr 1e-3, cosine, 1 warm-up epoch; partial fine-tuning (``--train-from``): 30 epochs, batch 90, lr 1e-3,
    cosine, 1 warm-up epoch; fine-tuning: 30 epochs, batch 90, lr 1e-4, step schedule (x0.5 every 10 epochs).
    """
    request = request or BuildRequest()
    train_all, query = _scene_splits(cfg)
    fit_splits = request.wants("train", "val")  # a run rebuilt to score it: no training image checked or cached
    teachers = _load_teachers(cfg, train_all, request.device) if cfg.teachers and fit_splits else []
    check_images([r.path for r in (train_all.records if fit_splits else []) + query.records],
                 cache_dir=cache_root(cfg.cache_dir) / "image_checks")
    task = _make_task(cfg, train_all)
    model = task.model  # fine-tuning (whole or from a cut) keeps the pretrained batch-norm statistics (DHCL)
    test = _test_split(cfg, model, query, request.device) if request.wants("test") else None
    if not fit_splits:
        return TaskBundle(task, None, test=test, class_names=list(query.classes))

    if cfg.val_rule == "none":  # a refit: every training image trains, the last epoch is kept
        tr_idx, va_idx = np.arange(len(train_all)), np.arange(0)
    else:
        tr_idx, va_idx = validation_split(len(train_all), cfg.val_share, cfg.split_seed, train_all.labels,
                                          cfg.val_rule)
    views = max(1, min(8, cfg.views))
    labels = train_all.labels
    if cfg.train_from is not None:
        cache = _train_views(model.backbone, train_all, cfg, request.device)
        targets = {"soft_target": _teacher_targets(cfg, teachers, train_all, request.device)[tr_idx]} if teachers \
            else None
        train = CachedViews({k: v[tr_idx] for k, v in cache.items()}, labels[tr_idx], tr_idx, random_view=True,
                            targets=targets)
        # Validation scores the model as the test split will: with test-time views, its first tta_views views.
        val = CachedViews({k: v[va_idx, :cfg.tta_views] for k, v in cache.items()}, labels[va_idx], va_idx,
                          all_views=cfg.tta_views > 1)
        defaults = {"epochs": 30, "batch_size": 90, "lr": 1e-3, "weight_decay": 1e-4, "schedule": "cosine",
                    "warmup_epochs": 1.0, "val_fraction": 0.0}
    elif cfg.freeze_backbone:
        train_feats = _cached_features(model.backbone, train_all, views, cfg, request.device)
        train = FeatureSet(train_feats[tr_idx], labels[tr_idx], tr_idx)
        val = FeatureSet(train_feats[va_idx, :1], labels[va_idx], va_idx) if len(va_idx) else None
        defaults = {"epochs": 40, "batch_size": 90, "lr": 1e-3, "weight_decay": 1e-4, "schedule": "cosine",
                    "warmup_epochs": 1.0, "val_fraction": 0.0}
    else:
        train_aug = copy.copy(train_all)  # the same images, without scanning the folder again, plus augmentation
        train_aug.transforms = RandomDihedral()
        train = torch.utils.data.Subset(train_aug, tr_idx.tolist())
        val = torch.utils.data.Subset(train_all, va_idx.tolist())
        defaults = {"epochs": 30, "batch_size": 90, "lr": 1e-4, "weight_decay": 1e-4, "schedule": "step",
                    "step_epochs": 10, "step_gamma": 0.5, "val_fraction": 0.0}
    return TaskBundle(task, train, val=val if len(va_idx) else None, test=test, train_defaults=defaults,
                      class_names=list(query.classes))


def query_folder(cfg: HashConfig) -> SceneFolder:
    """The query (= database) images of a hash run's config, limited per class as the run's test split is."""
    return _scene_splits(cfg)[1]


hash_task.profiles = PROFILES  # how the engine's experiments find them (no recipe lives there)
