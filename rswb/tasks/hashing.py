"""``rswb train hash``: DHCL deep hashing on a scene folder (UC Merced / AID layouts, or the embedded scenes).

Protocol (METHODS.md section 4): the layout's split rule gives train (UCMD: NN 00-79 of each class) and
query = database (UCMD: NN 80-99, evaluated leave-one-out, each query excluded by index); a validation share of the
training images (stratified, ``val_share``) selects the epoch; metrics are mAP@K (standard per-query AP), mAP over
the whole ranking (``mAP@all``, what DHCNN and DPSH re-runs report as "mAP"), P@K, precision/recall within Hamming
radius 2, with and without the semantic cue, plus DHCL's own "MAP@K" on the same codes
(:func:`rswb.metrics.legacy.dhcl_map_at_k`) so that the column is comparable with the published table.

Two profiles:

* ``freeze_backbone=True`` (default, the CPU profile): the ImageNet backbone is frozen; its pooled features are
  computed once per image and view (the dihedral flips/rotations used as augmentation, ``views``) and cached on
  disk, and only the hash layer, the classifier and the proxies train, in seconds per epoch. Why: fine-tuning
  EfficientNet-Lite0 at 224 px costs about a minute per UC Merced epoch on a 2-core CPU.
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
from torch.utils.data import Dataset

from rswb.config import option
from rswb.data.features import FeatureSet, cache_root, cached, digest, extract_images
from rswb.data.scenes import SceneFolder, check_images
from rswb.data.splits import first_per_class, validation_indices
from rswb.data.transforms import dihedral
from rswb.engine.device import frozen_encoder_device, select_device
from rswb.engine.task import Task, TaskBundle
from rswb.losses.hashing import DHCLLoss
from rswb.metrics.hashing import hash_metrics
from rswb.metrics.legacy import dhcl_map_at_k
from rswb.models.hashing import DHCL, dhcl
from rswb.registry import register_task

__all__ = ["HashConfig", "HashTask", "hash_task"]


@dataclasses.dataclass
class HashConfig:
    """Options of ``rswb train hash``."""

    # Spellings of saved run configs that were renamed (read back by load_trained and --resume).
    RENAMED_OPTIONS: ClassVar[dict[str, str]] = {"val_fraction": "val_share"}
    OWN_VALIDATION: ClassVar[bool] = True  # the task holds out its own validation images

    data: str | None = option(None, "scene folder (UC Merced or AID layout); None: the embedded synthetic scenes")
    layout: str = option("auto", "auto | ucmerced | aid (decides the split rule)", choices=("auto", "ucmerced", "aid"))
    bits: int = option(64, "hash code length K", low=1, high=4096)
    backbone: str = option("efficientnet_lite0", "registered backbone (efficientnet_lite0 | small_cnn)")
    pretrained: bool = option(True, "load the backbone's ImageNet weights")
    freeze_backbone: bool = option(True, "train only the new layers on cached backbone features (CPU profile)")
    image_size: int = option(224, "images are resized to this square size", low=8)
    views: int = option(4, "dihedral views per training image in the feature cache (1-8; frozen profile)", low=1,
                        high=8)
    cue: bool = option(True, "append the semantic cue (predicted class in binary) to evaluation codes")
    cue_weight: int | None = option(None, "repetitions of each cue bit (None: bits + 1, strict class-first ranking)",
                                    low=1)
    proxy_weight: float = option(1.0, "weight of the Proxy Anchor term", low=0)
    cls_weight: float = option(1.0, "weight of the classification cross-entropy", low=0)
    quant_weight: float = option(0.1, "weight of the quantisation term", low=0)
    alpha: float = option(32.0, "Proxy Anchor alpha", low=0, low_open=True)
    margin: float = option(0.1, "Proxy Anchor margin", low=0)
    proxy_lr_mult: float = option(100.0, "learning-rate multiplier of the proxies", low=0, low_open=True)
    topk: int = option(20, "K of mAP@K and P@K", low=1)
    val_share: float = option(0.1, "share of the training images held out for model selection (this task's own "
                              "split; the engine's --val-fraction is not used)", low=0, low_open=True, high=1,
                              high_open=True)
    split_seed: int = option(0, "seed of the validation split")
    per_class: int | None = option(None, "use at most this many images per class in each split (quick runs)", low=1)
    cache_dir: str | None = option(None, "feature cache folder (default: $RSWB_CACHE_DIR or ~/.cache/rswb)")


def _cached_features(backbone: torch.nn.Module, folder: SceneFolder, views: int, cfg: HashConfig) -> torch.Tensor:
    """Features of ``folder`` from the disk cache (:mod:`rswb.data.features`), computed and stored on a miss.

    The key covers the backbone (name and a digest of its actual weights, so a randomly initialised backbone of
    another seed is another entry), the image list (paths, sizes, modification times), the image size and the number
    of views, so a changed file or setting never returns stale features.
    """
    key = digest((cfg.backbone, cfg.image_size, views), [backbone], [rec.path for rec in folder.records])
    path = cache_root(cfg.cache_dir) / "features" / f"{cfg.backbone}-{key}.pt"
    desc = f"{cfg.backbone} features ({len(folder)} images x {views})"
    return cached(path, lambda: extract_images(backbone, folder, views=views, device=frozen_encoder_device(),
                                               desc=desc))["features"]


def _limit_per_class(folder: SceneFolder, per_class: int | None) -> SceneFolder:
    folder.records = [folder.records[i] for i in first_per_class([r.label for r in folder.records], per_class)]
    return folder


class _RandomDihedral:
    """Training augmentation of the fine-tuning profile: one random dihedral view per sample."""

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        view = int(torch.randint(0, 8, ()).item())
        return {**sample, "image": dihedral(sample["image"], view)}


class HashTask(Task):
    """DHCL training and leave-one-out evaluation (query set = database)."""

    monitor = "mAP@20"
    monitor_mode = "max"

    def __init__(self, model: DHCL, loss: DHCLLoss, weights: dict[str, float], proxy_lr_mult: float = 100.0,
                 topk: int = 20, info: dict[str, str] | None = None):
        super().__init__(model, weights, info)
        self.loss = loss
        self.proxy_lr_mult, self.topk = float(proxy_lr_mult), int(topk)
        self.monitor = f"mAP@{self.topk}"

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``proxy_loss``, ``cls_loss``, ``quant_loss`` and the training accuracy of the classifier."""
        out = self.model(batch)
        terms = self.loss(out["code"], out["logits"], batch["label"])
        with torch.no_grad():
            terms["acc"] = (out["logits"].argmax(1) == batch["label"]).float().mean()
        return terms

    def param_groups(self) -> list[dict[str, Any]]:
        """The network at the base lr, the proxies at ``proxy_lr_mult`` x (no weight decay on the proxies)."""
        net = [p for p in self.model.parameters() if p.requires_grad]
        return [{"params": net}, {"params": [self.loss.proxies], "lr_mult": self.proxy_lr_mult, "weight_decay": 0.0}]

    def predict(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Binary codes with and without the cue, the predicted class and the label."""
        enc = self.model.encode(batch, cue=True)
        return {"code": enc["code"], "bits": enc["bits"], "pred": enc["pred"], "label": batch["label"]}

    def metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        """mAP@K, P@K, mAP@all, P@r2, R@r2 of the codes, the same without cue, DHCL's MAP@K, class accuracy."""
        labels = outputs["label"].numpy()
        k = self.topk
        main = outputs["code"] if self.model.cue else outputs["bits"]
        res = hash_metrics(main.numpy(), main.numpy(), labels, labels, topk=(k,), radius=2, exclude_self=True)
        nocue = hash_metrics(outputs["bits"].numpy(), outputs["bits"].numpy(), labels, labels, topk=(k,),
                             radius=2, exclude_self=True)
        res.update({f"{key}_nocue": v for key, v in nocue.items()})
        res[f"dhcl_MAP@{k}"] = dhcl_map_at_k(main, labels, k)
        res["class_acc"] = float((outputs["pred"].numpy() == labels).mean())
        return res


def _scene_splits(cfg: HashConfig) -> tuple[SceneFolder, SceneFolder]:
    """The training images and the query (= database) images of the scene folder, limited per class."""
    from rswb.data.synthetic import ensure_embedded

    root = Path(cfg.data) if cfg.data else ensure_embedded("scenes")
    folder = SceneFolder(root, "train", layout=cfg.layout, image_size=cfg.image_size)
    return _limit_per_class(folder, cfg.per_class), _limit_per_class(folder.with_split("query"), cfg.per_class)


def _make_task(cfg: HashConfig, train_all: SceneFolder) -> HashTask:
    """The DHCL model, its loss and their weights, for the classes of ``train_all``."""
    num_classes = len(train_all.classes)
    model = dhcl(cfg.backbone, bits=cfg.bits, num_classes=num_classes, pretrained=cfg.pretrained, cue=cfg.cue,
                 cue_weight=cfg.cue_weight, frozen_backbone=cfg.freeze_backbone)
    loss = DHCLLoss(num_classes, cfg.bits, alpha=cfg.alpha, margin=cfg.margin)
    weights = {"proxy_loss": cfg.proxy_weight, "cls_loss": cfg.cls_weight, "quant_loss": cfg.quant_weight}
    root = train_all.root
    info = {"method": "dhcl", "version": f"{cfg.bits}bit{'' if cfg.cue else '-nocue'}",
            "data": f"{root.name} ({train_all.layout})"}
    return HashTask(model, loss, weights, cfg.proxy_lr_mult, cfg.topk, info)


def _test_split(cfg: HashConfig, model: DHCL, query: SceneFolder) -> Dataset:
    """The query (= database) split: cached frozen features, or the images themselves when fine-tuning."""
    if not cfg.freeze_backbone:
        return query
    return FeatureSet(_cached_features(model.backbone, query, 1, cfg), query.labels, np.arange(len(query)))


@register_task("hash")
def hash_task(cfg: HashConfig) -> TaskBundle:
    """DHCL deep hashing on a scene folder (UC Merced / AID / embedded), leave-one-out mAP@K.

    Training settings this task prefers (the training options below override them): frozen backbone: 40 epochs,
    batch 90, lr 1e-3, cosine, 1 warm-up epoch; fine-tuning: 30 epochs, batch 90, lr 1e-4, step schedule (x0.5
    every 10 epochs).
    """
    train_all, query = _scene_splits(cfg)
    check_images([r.path for r in train_all.records + query.records],
                 cache_dir=cache_root(cfg.cache_dir) / "image_checks")
    tr_idx, va_idx = validation_indices(len(train_all), cfg.val_share, cfg.split_seed, train_all.labels)
    task = _make_task(cfg, train_all)
    model = task.model

    if cfg.freeze_backbone:
        views = max(1, min(8, cfg.views))
        train_feats = _cached_features(model.backbone, train_all, views, cfg)
        labels = train_all.labels
        train = FeatureSet(train_feats[tr_idx], labels[tr_idx], tr_idx)
        val = FeatureSet(train_feats[va_idx, :1], labels[va_idx], va_idx)
        test = _test_split(cfg, model, query)
        defaults = {"epochs": 40, "batch_size": 90, "lr": 1e-3, "weight_decay": 1e-4, "schedule": "cosine",
                    "warmup_epochs": 1.0, "val_fraction": 0.0}
    else:
        model.backbone.freeze_bn()  # the paper trains with frozen batch-norm statistics
        train_aug = copy.copy(train_all)  # the same images, without scanning the folder again, plus augmentation
        train_aug.transforms = _RandomDihedral()
        train = torch.utils.data.Subset(train_aug, tr_idx.tolist())
        val = torch.utils.data.Subset(train_all, va_idx.tolist())
        test = _test_split(cfg, model, query)
        defaults = {"epochs": 30, "batch_size": 90, "lr": 1e-4, "weight_decay": 1e-4, "schedule": "step",
                    "step_epochs": 10, "step_gamma": 0.5, "val_fraction": 0.0}
    return TaskBundle(task, train, val=val if len(va_idx) else None, test=test, train_defaults=defaults)


# --- notebook 04: profiles, cached runs per code length, and the codes of a trained run ---------------------------

PROFILES: dict[str, dict[str, Any]] = {
    # Seconds per run on a 2-core CPU (the papermill test): a small random CNN on 64-px images, 30 images per class.
    # Its frozen pooled features are tiny (std ~0.006), so the hash layer needs a large lr to leave its initial,
    # nearly constant codes within a few epochs (at the default 1e-3 every image gets about the same code).
    "quick": {"backbone": "small_cnn", "pretrained": False, "image_size": 64, "views": 1, "per_class": 30,
              "lr": 0.1, "batch_size": 32},
    # The frozen ImageNet EfficientNet-Lite0 with cached features (HashConfig's defaults).
    "cpu": {},
    # The paper's schedule: the whole network fine-tunes (a GPU profile).
    "full": {"freeze_backbone": False},
}
"""Option overrides of ``rswb train hash`` for each profile of notebook 04 (see :func:`train_or_load`)."""


def hash_options(bits: int, profile: str, data_root: str | Path | None, epochs: int, seed: int,
                 cue: bool = True) -> dict[str, Any]:
    """The options of one run of notebook 04: the profile's overrides plus code length, data, epochs, seed, cue.

    Raises:
        KeyError: an unknown profile (the message lists :data:`PROFILES`).
    """
    if profile not in PROFILES:
        raise KeyError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
    data = str(Path(data_root).expanduser().resolve()) if data_root is not None else None
    return {**PROFILES[profile], "bits": int(bits), "data": data, "epochs": int(epochs), "seed": int(seed),
            "cue": bool(cue)}


def train_or_load(bits: int, profile: str, data_root: str | Path | None, epochs: int, seed: int,
                  output_dir: str | Path, cue: bool = True, device: str | None = None,
                  progress: bool = True) -> Path:
    """The run folder of one code length: reused when finished with the same options, else (re)trained.

    The run is ``output_dir/<profile>-<bits>bit`` (``-nocue`` appended without the cue). A finished run
    (``metrics.json`` written) whose saved options match :func:`hash_options` is returned as is; an unfinished one or
    one with other options is replaced by a new training run (:func:`rswb.engine.launch.train_task`). The device and
    the progress bars do not change the result, so they are not compared.

    Args:
        bits: code length K.
        profile: a key of :data:`PROFILES` (``"quick"``, ``"cpu"``, ``"full"``).
        data_root: scene folder (UC Merced / AID layout); None: the embedded synthetic scenes.
        epochs: training epochs.
        seed: training seed.
        output_dir: parent folder of the runs.
        cue: the model's ``cue`` option (its metrics report both ways either way).
        device: training device (None: the best available).
        progress: show progress bars while training.

    Returns:
        The run folder.
    """
    from rswb.engine.launch import train_or_reuse

    options = hash_options(bits, profile, data_root, epochs, seed, cue)
    name = f"{profile}-{int(bits)}bit{'' if cue else '-nocue'}"
    return train_or_reuse("hash", options, Path(output_dir) / name, device=device, progress=progress)


def load_codes(run_dir: str | Path, device: str | None = None) -> dict[str, Any]:
    """The test-split outputs of a trained hash run, with what the figures of notebook 04 need.

    Args:
        run_dir: a finished ``rswb train hash`` run.
        device: where to run the model (None: the best available).

    Returns:
        ``code`` ``[N, K + cue bits]`` and ``bits`` ``[N, K]`` (int8, ``{-1, +1}``; with and without the semantic
        cue), ``pred`` and ``label`` ``[N]`` (int64), ``paths`` (the image file of each item), ``class_names`` and
        ``metrics`` (the run's recorded test metrics), in the order of the query set (= database).
    """
    from rswb.config import from_dict
    from rswb.engine.launch import renamed
    from rswb.engine.runs import RunFolder
    from rswb.engine.task import EvalContext
    from rswb.io import load_checkpoint

    run = RunFolder(run_dir)
    if not run.best.exists():
        raise FileNotFoundError(f"{run.best}: weights file not found (is the run finished?)")
    cfg = from_dict(HashConfig, renamed(HashConfig, run.read_config().get("task_config", {})), source=str(run.config))
    # Only the test split is built: the training images' features (minutes on a cold cache) are not needed here.
    train_all, query = _scene_splits(cfg)
    check_images([r.path for r in query.records], cache_dir=cache_root(cfg.cache_dir) / "image_checks")
    task = _make_task(cfg, train_all)
    task.load_state_dict(load_checkpoint(run.best)["task"])
    task.eval()
    dev = select_device(device)
    out = task.to(dev).collect(_test_split(cfg, task.model, query), EvalContext(dev))
    labels = out["label"].numpy().astype(np.int64)
    if len(query) != len(labels) or not np.array_equal(query.labels, labels):
        raise RuntimeError(f"{run.path}: the query folder under {query.root} no longer matches the run's test split")
    return {"code": out["code"].numpy().astype(np.int8), "bits": out["bits"].numpy().astype(np.int8),
            "pred": out["pred"].numpy().astype(np.int64), "label": labels,
            "paths": [str(r.path) for r in query.records], "class_names": list(query.classes),
            "metrics": (run.read_final() or {}).get("test", {})}


__all__ += ["PROFILES", "hash_options", "load_codes", "train_or_load"]
