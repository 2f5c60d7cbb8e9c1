"""Generic tasks shared by several methods."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rswb.engine.task import Task
from rswb.metrics.classification import classification_metrics

__all__ = ["ClassificationTask"]


class ClassificationTask(Task):
    """Cross-entropy classification scored by OA / AA / kappa.

    The model takes the batch dict and returns a dict with ``"logits"`` ``[B, C]`` (plus any extra ``*_loss`` terms
    it computes itself, e.g. alignment losses, which are added with their ``loss_weights``); labels are
    ``batch["label"]`` ``[B]`` (0-based).

    Args:
        model: the network.
        num_classes: number of classes (for the confusion matrix).
        label_smoothing: cross-entropy label smoothing.
        loss_weights: weights of the ``*_loss`` terms (``cls_loss`` and the model's own).
        info: method / version / data for the run registry.
    """

    monitor = "OA"
    monitor_mode = "max"

    def __init__(self, model: nn.Module, num_classes: int, label_smoothing: float = 0.0,
                 loss_weights: dict[str, float] | None = None, info: dict[str, str] | None = None):
        super().__init__(model, loss_weights, info)
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``cls_loss`` (mean cross-entropy) plus every term the model's output dict carries except the logits."""
        out = self.model(batch)
        terms = {k: v for k, v in out.items() if k != "logits" and isinstance(v, torch.Tensor) and v.ndim == 0}
        terms["cls_loss"] = F.cross_entropy(out["logits"].float(), batch["label"], label_smoothing=self.label_smoothing)
        with torch.no_grad():
            terms["acc"] = (out["logits"].argmax(1) == batch["label"]).float().mean()
        return terms

    def predict(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Logits and labels of a batch."""
        return {"logits": self.model(batch)["logits"].float(), "label": batch["label"]}

    def metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        """OA, AA and kappa (fractions) of the arg-max predictions."""
        pred = outputs["logits"].argmax(1).numpy()
        return classification_metrics(outputs["label"].numpy(), pred, num_classes=self.num_classes)
