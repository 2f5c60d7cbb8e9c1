"""``rswb train pha``: few-shot MS+PAN classification with the PHA version ladder (METHODS.md section 1).

Two kinds of data, picked from what ``--data`` points at:

* **pixel mode** (the lab format: a folder with ``ms4.tif``, ``pan.tif``, ``train.npy``, ``test.npy``, the older
  label variants, or a ``.mat`` pair; default: the embedded synthetic scene). Per class, ``shots`` labelled pixels
  of the train map (a count, or a fraction such as 0.02) train and ``val_shots`` further ones select the epoch; the
  whole test map is the test set. Patches come from the vectorised :class:`~rswb.data.mspan.PatchSampler`.
* **scene mode** (a scene-classification folder such as UC Merced): every image becomes an MS+PAN pair by the Wald
  protocol (:mod:`rswb.data.wald`), ``shots`` images per class of the training split (UC Merced: 00-79) train,
  ``val_shots`` more validate, the test split (80-99) tests, and the model classifies the whole image.

Training (both modes): random flips / 90-degree rotations applied identically to MS and PAN (the PAN patch is the
ground footprint of the MS patch, so the pair stays co-registered); cross-entropy on the few shots; for the aligned
versions the InfoNCE terms also see ``unlabelled`` extra patches per step drawn from the scene outside the test map
(scene mode: training images outside the few shots, labels unused), since alignment needs no labels.
Evaluation of a large pixel set (the test map) runs the model densely over the whole scene
(:func:`dense_predict`), which gives the same logits as per-patch inference in a fraction of the time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate
from tqdm.auto import tqdm

from rswb.config import option
from rswb.data.errors import DataFormatError, DatasetNotFoundError
from rswb.data.mspan import MSPANScene, PatchSampler, PixelSet, is_mspan_source, load_mspan, patch_padding
from rswb.data.splits import FewShotSplit, few_shot_split, stratified_subsample
from rswb.data.transforms import dihedral
from rswb.engine.task import EvalContext, Task, TaskBundle
from rswb.losses.pha import (
    cross_modal_info_nce,
    decorrelation_loss,
    linear_cka,
    progressive_weights,
    reconstruction_loss,
    sparsity_loss,
)
from rswb.metrics.classification import confusion_matrix, report_from_confusion, scores_from_confusion
from rswb.models.pha import PHA_VERSIONS, STAGE_NAMES, PHANet
from rswb.registry import create_model, register_task

__all__ = [
    "PHAConfig", "PHAData", "PHATask", "PixelPatches", "SceneImages", "augment_pairs", "dense_predict", "jitter_gains",
    "patch_predict", "pha_task", "prepare_data", "scores",
]


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

    def check(self) -> None:
        """Cross-field and registry rules, run by :func:`rswb.config.validate` before any data is read."""
        if self.version not in PHA_VERSIONS:
            raise ValueError(f"task pha options: --version must be one of {', '.join(PHA_VERSIONS)}, "
                             f"got {self.version!r}")
        stage_widths(self.widths)
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


# ---------------------------------------------------------------------------------------------------- datasets


class PixelPatches(Dataset):
    """Labelled pixels of a scene as patch pairs; ``__getitems__`` returns a whole batch dict at once.

    The same pixels are visited every epoch, so a :class:`~rswb.data.mspan.PixelSet` extracts their patches once
    on first use when they fit in ``cache_bytes`` (a few-shot split always does); larger pixel sets are gathered from
    the scene on the fly.

    Args:
        sampler: the scene's patch sampler (shared by every split).
        rows, cols, labels: the pixels and their 0-based classes.
        repeats: the dataset is this many passes over the pixels (index ``i`` is pixel ``i % n``).
        cache_bytes: largest patch cache to build (0 disables it).
    """

    def __init__(self, sampler: PatchSampler, rows: np.ndarray, cols: np.ndarray, labels: np.ndarray,
                 repeats: int = 1, cache_bytes: int = 512 << 20):
        self.sampler, self.repeats = sampler, max(1, int(repeats))
        self.rows, self.cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        self.pixel_labels = np.asarray(labels, np.int64)
        self.pixels = PixelSet(sampler, self.rows, self.cols, cache_bytes)

    @property
    def labels(self) -> np.ndarray:
        """0-based class of every item (repeated ``repeats`` times)."""
        return np.tile(self.pixel_labels, self.repeats)

    def __len__(self) -> int:
        return len(self.rows) * self.repeats

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices, np.int64) % len(self.rows)
        batch = self.pixels.gather(idx)
        batch["ms"] = batch["ms"].contiguous()
        batch["label"] = torch.as_tensor(self.pixel_labels[idx])
        batch["row"], batch["col"] = torch.as_tensor(self.rows[idx]), torch.as_tensor(self.cols[idx])
        batch["id"] = batch["row"] * self.sampler.width + batch["col"]  # pixel identity (duplicates in a batch)
        return batch

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}


class SceneImages(Dataset):
    """A subset of a Wald-simulated scene set repeated ``repeats`` times (scene mode's few-shot splits).

    Args:
        base: the simulated images.
        indices: positions in ``base`` of this subset's images.
        repeats: passes over the subset per epoch.
        ids: identity of each image of ``base`` (default: its position), returned as ``"id"`` so that the
            alignment loss can recognise the same image drawn twice in a batch.
    """

    def __init__(self, base: Dataset, indices: np.ndarray, repeats: int = 1, ids: np.ndarray | None = None):
        self.base, self.indices, self.repeats = base, np.asarray(indices, np.int64), max(1, int(repeats))
        self.ids = np.arange(len(base)) if ids is None else np.asarray(ids, np.int64)

    @property
    def labels(self) -> np.ndarray:
        """0-based class of every item."""
        return np.tile(np.asarray(self.base.labels)[self.indices], self.repeats)

    def __len__(self) -> int:
        return len(self.indices) * self.repeats

    def __getitem__(self, index: int) -> dict[str, Any]:
        j = int(self.indices[index % len(self.indices)])
        return {**self.base[j], "id": int(self.ids[j])}


def _collate(samples: Any) -> dict[str, Any]:
    if isinstance(samples, dict):  # PixelPatches already returns a batch
        return samples
    return default_collate(list(samples))


# ---------------------------------------------------------------------------------------------------- augmentation


def augment_pairs(batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Apply one random dihedral view (flip / 90-degree rotation, 8 in all) per sample, the same to MS and PAN.

    The PAN patch covers exactly the ground of the MS patch, so transforming both about their centres keeps the
    pair co-registered. Samples are grouped by view, so there are at most 8 tensor operations per batch.
    """
    ms, pan = batch.get("ms"), batch.get("pan")
    ref = ms if ms is not None else pan
    views = torch.randint(0, 8, (ref.shape[0],), generator=generator).to(ref.device)
    out = dict(batch)
    for key, x in (("ms", ms), ("pan", pan)):
        if x is None:
            continue
        y = x.clone()
        for v in range(1, 8):
            sel = (views == v).nonzero().flatten()
            if sel.numel():
                y[sel] = dihedral(x[sel], v)
        out[key] = y
    return out


def jitter_gains(batch: dict[str, torch.Tensor], amount: float,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Multiply each sample's MS and its PAN by independent random gains in ``[1 - amount, 1 + amount]``.

    Why: illumination (sun, haze, slope) scales both modalities of a pixel alike. Without this, the cheapest way for
    cross-modal InfoNCE to find a pixel's partner is to match brightness, a nuisance the alignment then writes into
    the features; independent gains take that shortcut away and make the classifier robust to brightness as well.
    """
    out = dict(batch)
    for key in ("ms", "pan"):
        x = batch.get(key)
        if x is None:
            continue
        g = 1.0 + amount * (2.0 * torch.rand((x.shape[0], 1, 1, 1), generator=generator) - 1.0)
        out[key] = x * g.to(x.device, x.dtype)
    return out


# ---------------------------------------------------------------------------------------------------- inference


@torch.no_grad()
def dense_predict(model: PHANet, scene: MSPANScene, tile: int = 256, device: str | torch.device | None = None,
                  progress: bool = False, return_logits: bool = False) -> np.ndarray:
    """Classify every pixel of a (normalised) scene by running the model densely over tiles.

    Each output tile of ``tile x tile`` pixels reads its input tile plus the patch padding (reflect, the same as the
    patch sampler's), so the result equals per-patch inference pixel for pixel; tiles only bound memory.

    Returns:
        ``[H, W]`` int64 0-based predicted classes (or ``[C, H, W]`` float32 logits with ``return_logits``).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    r, p = scene.ratio, model.patch
    (mb, ma), (pb, pa) = patch_padding(p, r * p, r)
    ms = torch.as_tensor(np.pad(scene.ms, ((0, 0), (mb, ma), (mb, ma)), mode="reflect"))
    pan = torch.as_tensor(np.pad(scene.pan, ((0, 0), (pb, pa), (pb, pa)), mode="reflect"))
    h, w = scene.shape
    was_training = model.training
    model.eval()
    out = torch.empty((model.num_classes, h, w)) if return_logits else torch.empty((h, w), dtype=torch.long)
    tiles = [(y, x) for y in range(0, h, tile) for x in range(0, w, tile)]
    for y, x in tqdm(tiles, desc="dense", leave=False, disable=not progress):
        th, tw = min(tile, h - y), min(tile, w - x)
        ms_t = ms[None, :, y:y + th + p - 1, x:x + tw + p - 1].to(device)
        pan_t = pan[None, :, r * y:r * (y + th + p - 1), r * x:r * (x + tw + p - 1)].to(device)
        logits = model.dense(ms_t if "ms" in model.branches else None,
                             pan_t if "pan" in model.branches else None)[0].float().cpu()
        out[..., y:y + th, x:x + tw] = logits if return_logits else logits.argmax(0)
    model.train(was_training)
    return out.numpy()


@torch.no_grad()
def patch_predict(model: PHANet, sampler: PatchSampler, rows: np.ndarray, cols: np.ndarray, batch_size: int = 1024,
                  progress: bool = False, return_logits: bool = False) -> np.ndarray:
    """Classify pixels one patch each, in batches (the reference :func:`dense_predict` is measured against)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in tqdm(range(0, len(rows), batch_size), desc="patches", leave=False, disable=not progress):
        b = sampler.gather(rows[start:start + batch_size], cols[start:start + batch_size])
        logits = model({k: v.to(device) for k, v in b.items()})["logits"].float().cpu()
        out.append(logits if return_logits else logits.argmax(1))
    model.train(was_training)
    return torch.cat(out).numpy()


# ---------------------------------------------------------------------------------------------------- the task


def scores(labels: np.ndarray, pred: np.ndarray, num_classes: int) -> dict[str, float]:
    """OA, AA, kappa (fractions) and ``acc_<k>``, the accuracy of class value k (1..C, as in the label maps).

    Classes without a sample in ``labels`` get no ``acc_<k>`` entry (their accuracy is undefined), so every value
    is a finite float that the run's ``metrics.json`` can hold.
    """
    cm = confusion_matrix(labels, pred, num_classes=num_classes)
    out = {k: float(v) for k, v in scores_from_confusion(cm).items()}
    report = report_from_confusion(cm)
    for k, (acc, n) in enumerate(zip(report["per_class_accuracy"], report["support"])):
        if n > 0:
            out[f"acc_{k + 1}"] = float(acc)
    return out


class PHATask(Task):
    """Few-shot classification with the PHA alignment and dictionary terms of the model's version.

    Loss terms (``*_loss``, weighted by ``loss_weights``): ``cls_loss`` (cross-entropy on the labelled items);
    ``align_loss`` = ``sum_s w_s InfoNCE_s`` over the aligned stages (weights from the version's schedule, set each
    epoch); with the dictionary ``recon_loss``, ``decor_loss`` and ``sparse_loss`` (means over the two modalities).
    Logged only: ``acc``; ``w_<stage>``, ``nce_<stage>`` and ``sim_<stage>`` (mean cosine of positive pairs) per
    aligned stage; ``cka_<stage>`` (linear CKA of the MS and PAN stage features, every two-branch version);
    ``code_active`` (fraction of non-zero dictionary codes).

    Args:
        model: a :class:`~rswb.models.pha.PHANet` version.
        num_classes: classes.
        unlabelled: callable ``n -> batch`` of unlabelled items (``None``: labelled items only).
        n_unlabelled: unlabelled items per step (only versions with alignment use them).
        augment: dihedral augmentation during training.
        jitter: independent per-modality gain jitter during training (see :func:`jitter_gains`).
        temperature: InfoNCE temperature.
        progressive_width: see :func:`rswb.losses.pha.progressive_weights`.
        scene: the normalised scene (pixel mode), for dense evaluation of large pixel sets.
        loss_weights, info: see :class:`~rswb.engine.Task`.
    """

    monitor = "OA"
    monitor_mode = "max"

    def __init__(self, model: PHANet, num_classes: int, unlabelled: Callable[[int], dict[str, Any]] | None = None,
                 n_unlabelled: int = 0, augment: bool = True, jitter: float = 0.0, temperature: float = 0.1,
                 progressive_width: float = 0.5, scene: MSPANScene | None = None,
                 loss_weights: dict[str, float] | None = None, info: dict[str, str] | None = None):
        super().__init__(model, loss_weights, info)
        self.num_classes = int(num_classes)
        self.unlabelled, self.n_unlabelled = unlabelled, int(n_unlabelled)
        self.augment, self.temperature, self.jitter = bool(augment), float(temperature), float(jitter)
        self.progressive_width = float(progressive_width)
        self.scene = scene
        self.stage_weights = self.schedule(0, 1)

    def schedule(self, epoch: int, epochs: int) -> dict[int, float]:
        """Alignment weight of each aligned stage at ``epoch`` (0-based) of ``epochs``."""
        stages = self.model.align_stages
        kind = self.model.align_schedule
        if kind == "progressive":
            w = progressive_weights(epoch / max(epochs - 1, 1), self.model.stages, self.progressive_width)
            return {s: float(w[s]) for s in stages}
        return {s: 1.0 / len(stages) for s in stages}

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Set this epoch's stage weights."""
        self.stage_weights = self.schedule(epoch, epochs)

    def collate(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Pass through batches from :class:`PixelPatches`; stack scene-mode samples."""
        return _collate(samples)

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The terms listed in the class docstring for one batch."""
        model: PHANet = self.model
        y = batch["label"]
        n = y.shape[0]
        x = {k: batch[k] for k in ("ms", "pan") if k in batch}
        aligned = bool(model.align_stages)
        ids = batch.get("id")
        if self.training and aligned and self.unlabelled is not None and self.n_unlabelled > 0:
            extra = self.unlabelled(self.n_unlabelled)
            x = {k: torch.cat([v, extra[k].to(v.device, v.dtype)]) for k, v in x.items()}
            if ids is not None and "id" in extra:
                ids = torch.cat([ids, extra["id"].to(ids.device)])
            else:
                ids = None
        if self.training and self.augment:
            x = augment_pairs(x)
        if self.training and self.jitter > 0:
            x = jitter_gains(x, self.jitter)
        out = model(x)
        terms: dict[str, torch.Tensor] = {"cls_loss": F.cross_entropy(out["logits"][:n].float(), y)}
        with torch.no_grad():
            terms["acc"] = (out["logits"][:n].argmax(1) == y).float().mean()
        if aligned:
            total = 0.0
            for s, (a, b) in out["embed"].items():
                nce = cross_modal_info_nce(a, b, self.temperature, ids)
                w = self.stage_weights.get(s, 0.0)
                total = total + w * nce
                name = STAGE_NAMES[s]
                terms[f"nce_{name}"] = nce.detach()
                terms[f"w_{name}"] = torch.tensor(w, device=y.device)
                with torch.no_grad():
                    terms[f"sim_{name}"] = F.cosine_similarity(a.float(), b.float(), dim=1).mean()
            terms["align_loss"] = total
        if model.dictionary is not None:
            recon = decor = sparse = 0.0
            for m in ("ms", "pan"):
                recon = recon + 0.5 * reconstruction_loss(out[f"deep_{m}"], out[f"shared_{m}"], out[f"specific_{m}"])
                decor = decor + 0.5 * decorrelation_loss(out[f"shared_{m}"], out[f"specific_{m}"])
                sparse = sparse + 0.5 * sparsity_loss(out[f"codes_{m}"])
            terms.update(recon_loss=recon, decor_loss=decor, sparse_loss=sparse)
            with torch.no_grad():
                codes = torch.cat([out["codes_ms"], out["codes_pan"]])
                terms["code_active"] = (codes > 0).float().mean()
        if len(model.modalities) == 2:
            with torch.no_grad():
                feats = out["stage_features"]
                for s in range(model.stages):
                    terms[f"cka_{STAGE_NAMES[s]}"] = linear_cka(feats["ms"][s], feats["pan"][s])
        return terms

    def predict(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Logits and labels (plus pixel positions in pixel mode)."""
        out = {"logits": self.model(batch)["logits"].float(), "label": batch["label"]}
        for k in ("row", "col", "index"):
            if k in batch and isinstance(batch[k], torch.Tensor):
                out[k] = batch[k]
        return out

    def metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        """OA, AA, kappa and the accuracy of each class (see :func:`scores`) of the arg-max predictions."""
        return scores(outputs["label"].numpy(), outputs["logits"].argmax(1).numpy(), self.num_classes)

    def dense_is_faster(self, dataset: Dataset) -> bool:
        """Whether scoring ``dataset`` is cheaper as one dense pass over the scene than patch by patch.

        A patch costs about ``patch^2`` dense positions of work, so a pixel set larger than ``H W / patch^2 * 4``
        (the factor covers the PAN branch and the tile overlap) is scored densely.
        """
        if self.scene is None or not isinstance(dataset, PixelPatches) or dataset.repeats != 1:
            return False
        h, w = self.scene.shape
        return len(dataset) * self.model.patch ** 2 > 4 * h * w

    def predictions(self, dataset: Dataset, ctx: EvalContext, dense: bool | None = None) -> dict[str, Any]:
        """True and predicted 0-based classes of every item of ``dataset``, and the full-scene map when computed.

        Args:
            dataset: a split of this task.
            ctx: device, precision and batch size.
            dense: classify the whole scene with :func:`dense_predict` and read the pixels from the map (pixel
                mode only); ``None``: when :meth:`dense_is_faster`. Both ways give the same predictions.

        Returns:
            ``y_true`` and ``y_pred`` ``[N]`` int64, ``pred_map`` ``[H, W]`` (``None`` unless dense).
        """
        pixel_set = self.scene is not None and isinstance(dataset, PixelPatches)
        if dense is None:
            dense = self.dense_is_faster(dataset) and not ctx.dist.enabled
        if dense and pixel_set:
            pred_map = dense_predict(self.model, self.scene, device=ctx.device)
            return {"y_true": dataset.pixel_labels, "y_pred": pred_map[dataset.rows, dataset.cols],
                    "pred_map": pred_map}
        out = self.collect(dataset, ctx)
        return {"y_true": out["label"].numpy(), "y_pred": out["logits"].argmax(1).numpy(), "pred_map": None}

    def evaluate(self, dataset: Dataset, ctx: EvalContext) -> dict[str, float]:
        """Score a split; large pixel sets go through :func:`dense_predict` (same logits, far less work)."""
        if self.dense_is_faster(dataset) and not ctx.dist.enabled:
            pred = self.predictions(dataset, ctx, dense=True)
            return scores(pred["y_true"], pred["y_pred"], self.num_classes)
        return super().evaluate(dataset, ctx)


# ---------------------------------------------------------------------------------------------------- data + builder


@dataclasses.dataclass
class PHAData:
    """Everything a PHA run reads: the splits, and in pixel mode the scene and its sampler.

    Attributes:
        mode: ``"pixel"`` or ``"scene"``.
        train, val, test: datasets of the few shots (repeated ``repeats`` times), validation and test items.
        split: the few-shot draw over the candidate items (pixels of the train map, or training images).
        num_classes, bands, ratio: what the model is built for.
        class_names: class names (or ``None``).
        scene: the normalised scene (pixel mode).
        sampler: its patch sampler (pixel mode).
        unlabelled: callable ``n -> batch`` of unlabelled items for the alignment terms.
        source: what was loaded (a path or ``"embedded"``).
    """

    mode: str
    train: Dataset
    val: Dataset
    test: Dataset
    split: FewShotSplit
    num_classes: int
    bands: int
    ratio: int
    class_names: list[str] | None
    scene: MSPANScene | None = None
    sampler: PatchSampler | None = None
    unlabelled: Callable[[int], dict[str, Any]] | None = None
    source: str = ""


def _shots(value: float) -> int | float:
    return int(value) if float(value) >= 1 and float(value).is_integer() else float(value)


def _pixel_data(cfg: PHAConfig, path: Path | None) -> PHAData:
    if path is None:
        from rswb.data.synthetic import ensure_embedded

        path = Path(ensure_embedded("mspan"))
        source = "embedded"
    else:
        source = str(path)
    scene = load_mspan(path)
    for split in ("train", "test"):
        if split not in scene.labels:
            raise DataFormatError(scene.source, f"no '{split}' label map",
                                  "train.npy and test.npy on the MS grid (older single-map variants: split them "
                                  "into train/test maps first)")
    scene = scene.normalized(cfg.normalize)
    num_classes = scene.num_classes
    sampler = PatchSampler(scene, cfg.ms_patch)
    rows, cols, labels = scene.labelled_pixels("train")
    split = few_shot_split(labels, _shots(cfg.shots), _shots(cfg.val_shots), cfg.split_seed, num_classes)
    t_rows, t_cols, t_labels = scene.labelled_pixels("test")
    keep = stratified_subsample(t_labels, cfg.max_test, cfg.split_seed)
    train = PixelPatches(sampler, rows[split.train], cols[split.train], labels[split.train], cfg.repeats)
    val = PixelPatches(sampler, rows[split.val], cols[split.val], labels[split.val])
    test = PixelPatches(sampler, t_rows[keep], t_cols[keep], t_labels[keep])
    # Unlabelled pixels for alignment: anywhere outside the test map (the test pixels are never looked at).
    pool_r, pool_c = np.nonzero(scene.labels["test"] == 0)

    def unlabelled(n: int) -> dict[str, torch.Tensor]:
        pick = torch.randint(0, len(pool_r), (n,)).numpy()
        batch = sampler.gather(pool_r[pick], pool_c[pick])
        batch["id"] = torch.as_tensor(pool_r[pick] * sampler.width + pool_c[pick])
        return batch

    return PHAData("pixel", train, val, test, split, num_classes, scene.bands, scene.ratio, scene.class_names,
                   scene, sampler, unlabelled, source)


def _scene_data(cfg: PHAConfig, path: Path) -> PHAData:
    from rswb.data.scenes import SceneFolder
    from rswb.data.wald import WaldSceneDataset

    min_size = cfg.ratio * (cfg.ms_patch - 3)  # the three stages of unpadded convolutions need 13 MS pixels
    if cfg.image_size % cfg.ratio or cfg.image_size < min_size:
        raise ValueError(f"image_size must be a multiple of ratio {cfg.ratio} and at least {min_size} (the MS image "
                         f"must have >= {cfg.ms_patch - 3} pixels for the network), got {cfg.image_size}")
    folder = SceneFolder(path, split="train")
    test_folder = folder.with_split("test")
    labels = np.asarray(folder.labels)
    num_classes = len(folder.classes)
    split = few_shot_split(labels, _shots(cfg.shots), _shots(cfg.val_shots), cfg.split_seed, num_classes)
    rest = np.concatenate([np.flatnonzero(labels[split.rest] == c)[: cfg.unlabelled_pool] for c in
                           range(num_classes)]) if cfg.unlabelled else np.zeros(0, np.int64)
    pool_idx = split.rest[np.sort(rest)] if len(rest) else np.zeros(0, np.int64)
    kw = {"image_size": cfg.image_size, "ratio": cfg.ratio, "gain_at_nyquist": cfg.mtf_gain}
    labelled_idx = np.concatenate([split.train, split.val])
    labelled = WaldSceneDataset(folder, indices=labelled_idx, **kw)
    n_train = len(split.train)
    train = SceneImages(labelled, np.arange(n_train), cfg.repeats, ids=labelled_idx)
    val = SceneImages(labelled, np.arange(n_train, len(labelled)), ids=labelled_idx)
    t_labels = np.asarray(test_folder.labels)
    keep = stratified_subsample(t_labels, cfg.max_test, cfg.split_seed)
    test = WaldSceneDataset(test_folder, indices=keep, **kw)
    unlabelled = None
    if len(pool_idx):
        pool = WaldSceneDataset(folder, indices=pool_idx, **kw)

        def unlabelled(n: int) -> dict[str, torch.Tensor]:
            pick = torch.randint(0, len(pool), (n,)).tolist()
            items = pool.__getitems__(pick)
            out = {k: torch.stack([s[k] for s in items]) for k in ("ms", "pan")}
            out["id"] = torch.as_tensor(pool_idx[pick])  # candidate index, the same numbering as "id" below
            return out

    return PHAData("scene", train, val, test, split, num_classes, 3, cfg.ratio, list(folder.classes),
                   unlabelled=unlabelled, source=str(path))


def prepare_data(cfg: PHAConfig) -> PHAData:
    """Load ``cfg.data`` (or the embedded scene) and draw the few-shot splits.

    Raises:
        DatasetNotFoundError: ``cfg.data`` does not exist.
        rswb.data.DataError: the folder is in neither format, or its files are inconsistent (the error names the
            file and what was expected).
    """
    if cfg.data is None:
        return _pixel_data(cfg, None)
    path = Path(cfg.data).expanduser()
    if not path.exists():
        raise DatasetNotFoundError(path, "data path not found",
                                   "a lab-format folder (ms4.tif, pan.tif, train.npy, test.npy), a .mat MS/PAN pair, "
                                   "or a scene-classification folder")
    return _pixel_data(cfg, path) if is_mspan_source(path) else _scene_data(cfg, path)


def build_model(cfg: PHAConfig, data: PHAData) -> PHANet:
    """The registered version ``cfg.version`` for ``data``'s classes, bands and ratio."""
    cfg.check()  # the same rules as before training, for callers that build a model directly
    kw: dict[str, Any] = {"widths": stage_widths(cfg.widths), "dropout": cfg.dropout, "patch": cfg.ms_patch}
    if cfg.version == "pha_v5":
        kw["atoms"] = cfg.atoms
    for key in ("align_schedule", "stage_fusion"):
        if getattr(cfg, key) is not None:
            kw[key] = getattr(cfg, key)
    return create_model(cfg.version, num_classes=data.num_classes, bands=data.bands, ratio=data.ratio, **kw)


@register_task("pha")
def pha_task(cfg: PHAConfig) -> TaskBundle:
    """Few-shot MS+PAN classification with a PHA version (pixel mode on lab-format scenes, scene mode via Wald).

    Training settings this task prefers (the training options below override them): 30 epochs, batch 64, AdamW,
    lr 2e-3, weight decay 1e-4, cosine schedule with 1 warm-up epoch.
    """
    data = prepare_data(cfg)
    model = build_model(cfg, data)
    weights = {"align_loss": cfg.align_weight, "recon_loss": cfg.recon_weight, "decor_loss": cfg.decor_weight,
               "sparse_loss": cfg.sparse_weight}
    task = PHATask(model, data.num_classes, unlabelled=data.unlabelled, n_unlabelled=cfg.unlabelled,
                   augment=cfg.augment, jitter=cfg.jitter, temperature=cfg.temperature,
                   progressive_width=cfg.progressive_width, scene=data.scene, loss_weights=weights,
                   info={"method": "pha", "version": cfg.version, "data": data.source})
    defaults = {"epochs": 30, "batch_size": 64, "optimizer": "adamw", "lr": 2e-3, "weight_decay": 1e-4,
                "warmup_epochs": 1, "schedule": "cosine"}
    return TaskBundle(task, data.train, data.val, data.test, train_defaults=defaults)

