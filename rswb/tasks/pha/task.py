"""How a PHA version is trained and scored: :class:`PHATask` (few-shot MS+PAN classification).

Training feeds the labelled items, plus unlabelled ones for the alignment terms, through the same random dihedral
view for MS and PAN and independent per-modality gain jitter (:mod:`rswb.data.transforms`), then takes the version's
terms (:class:`rswb.losses.pha.PHALoss`). Evaluation scores OA / AA / kappa and each class's accuracy; a large pixel
set (a test map) is classified by one dense pass over the scene (:func:`rswb.models.pha.dense_predict`), which gives
the per-patch logits in a fraction of the time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from rswb.data.mspan import MSPANScene
from rswb.data.patches import PixelPatches
from rswb.data.transforms import augment_pairs, jitter_gains
from rswb.engine.task import EvalContext, Task
from rswb.losses.pha import PHALoss
from rswb.metrics.classification import class_scores
from rswb.models.pha import PHANet, dense_predict

__all__ = ["PHATask"]


class PHATask(Task):
    """Few-shot classification with the PHA alignment and dictionary terms of the model's version.

    Args:
        model: a :class:`~rswb.models.pha.PHANet` version.
        loss: its :class:`~rswb.losses.pha.PHALoss` (``PHALoss.for_model(model, ...)``).
        num_classes: classes.
        unlabelled: callable ``n -> batch`` of unlabelled items (``None``: labelled items only).
        n_unlabelled: unlabelled items per step (only versions with alignment use them).
        augment: dihedral augmentation during training.
        jitter: independent per-modality gain jitter during training (see :func:`rswb.data.transforms.jitter_gains`).
        scene: the normalised scene (pixel mode), for dense evaluation of large pixel sets.
        loss_weights, info: see :class:`~rswb.engine.Task`.
        branch_lr_mult: learning-rate multiplier of the branches (pre-trained ones fine-tune gently; 0 freezes them).
    """

    monitor = "OA"
    monitor_mode = "max"

    def __init__(self, model: PHANet, loss: PHALoss, num_classes: int,
                 unlabelled: Callable[[int], dict[str, Any]] | None = None, n_unlabelled: int = 0,
                 augment: bool = True, jitter: float = 0.0, scene: MSPANScene | None = None,
                 loss_weights: dict[str, float] | None = None, info: dict[str, str] | None = None,
                 branch_lr_mult: float = 1.0):
        super().__init__(model, loss_weights, info)
        self.branch_lr_mult = float(branch_lr_mult)
        self.loss = loss
        self.num_classes = int(num_classes)
        self.unlabelled, self.n_unlabelled = unlabelled, int(n_unlabelled)
        self.augment, self.jitter = bool(augment), float(jitter)
        self.scene = scene

    def param_groups(self) -> list[dict[str, Any]]:
        """One group, or with ``branch_lr_mult != 1`` the branches apart (frozen when it is 0)."""
        if self.branch_lr_mult == 1.0:
            return super().param_groups()
        branch = {id(p) for p in self.model.branches.parameters()}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in branch]
        if self.branch_lr_mult == 0.0:
            self.model.branches.requires_grad_(False)
            return [{"params": rest}]
        return [{"params": rest}, {"params": list(self.model.branches.parameters()), "lr_mult": self.branch_lr_mult}]

    def protocol(self) -> dict[str, str]:
        """The pre-training behind the run's numbers, when it had one (objective, steps, cache key, final loss)."""
        return {k: self.info[k] for k in ("pretrain", "pretrain_final_loss") if k in self.info}

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Set this epoch's stage weights."""
        self.loss.set_epoch(epoch, epochs)

    def collate(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Pass through batches from :class:`~rswb.data.patches.PixelPatches`; stack scene-mode samples."""
        if isinstance(samples, dict):  # PixelPatches already returns a batch
            return samples
        return default_collate(list(samples))

    def training_inputs(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """The model's inputs of a training batch and the items' identities.

        In training, aligned and self-training versions get ``n_unlabelled`` unlabelled items appended (alignment
        and pseudo-labels need no labels),
        then every item gets a random dihedral view (the same for MS and PAN) and independent gains.
        """
        x = {k: batch[k] for k in ("ms", "pan") if k in batch}
        ids = batch.get("id")
        wants = self.model.align_stages or self.model.pseudo_threshold > 0
        if self.training and wants and self.unlabelled is not None and self.n_unlabelled > 0:
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
        return x, ids

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The version's terms (:class:`~rswb.losses.pha.PHALoss`) for one batch."""
        x, ids = self.training_inputs(batch)
        return self.loss(**self.model(x), label=batch["label"], id=ids)

    def predict(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Logits and labels (plus pixel positions in pixel mode)."""
        out = {"logits": self.model(batch)["logits"].float(), "label": batch["label"]}
        for k in ("row", "col", "index"):
            if k in batch and isinstance(batch[k], torch.Tensor):
                out[k] = batch[k]
        return out

    def metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        """OA, AA, kappa and the accuracy of each class of the arg-max predictions (``class_scores``)."""
        return class_scores(outputs["label"].numpy(), outputs["logits"].argmax(1).numpy(), self.num_classes)

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
            return class_scores(pred["y_true"], pred["y_pred"], self.num_classes)
        return super().evaluate(dataset, ctx)


