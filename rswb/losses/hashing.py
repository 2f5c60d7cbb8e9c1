"""DHCL's losses: Proxy Anchor on the relaxed codes + class cross-entropy + a quantisation term.

* ``proxy_loss``: Proxy Anchor (Kim et al. 2020) from pytorch-metric-learning, cosine similarity, ``alpha = 32``,
  ``margin = 0.1``; its proxies are parameters of this module and train with their own (larger) learning rate
  (``param_groups`` gives them ``lr_mult``, 100 in the paper).
* ``cls_loss``: cross-entropy of the classification head on the code (optionally label-smoothed: the head then
  never drives a training image's logit margin to infinity, a regulariser for 80 images per class).
* ``quant_loss``: ``mean((|u| - 1)^2)`` over the relaxed code ``u = tanh(h)``, pulling it to +-1 so that ``sign``
  loses little.
* ``distill_loss`` (only with teacher targets): ``T^2 KL(p_teacher || softmax(logits / T))`` (Hinton et al. 2015),
  the class scores of an ensemble of teachers as a softer target than the label.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import ProxyAnchorLoss
from torch import nn

__all__ = ["DHCLLoss", "distillation_loss", "quantization_loss"]


def quantization_loss(code: torch.Tensor) -> torch.Tensor:
    """``mean((|u| - 1)^2)`` of relaxed codes ``u`` ``[B, K]``."""
    return (code.abs() - 1.0).pow(2).mean()


def distillation_loss(logits: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(target || softmax(logits / T))``, averaged over the batch (Hinton et al. 2015).

    Args:
        logits: the student's class logits ``[B, C]``.
        target: the teachers' class probabilities ``[B, C]``, already softened at ``T`` (rows sum to 1).
        temperature: ``T``; the ``T^2`` keeps the gradient's size independent of it.
    """
    log_q = F.log_softmax(logits / temperature, dim=1)
    kl = (target * (target.clamp_min(1e-12).log() - log_q)).sum(1)
    return kl.mean() * temperature**2


class DHCLLoss(nn.Module):
    """The three DHCL terms, unweighted (the task weights them).

    Args:
        num_classes: number of classes (one proxy each).
        bits: code length (the proxies' dimension).
        alpha: Proxy Anchor scale.
        margin: Proxy Anchor margin.
        label_smoothing: the cross-entropy's label smoothing (0: none; ``torch.nn.functional.cross_entropy``'s).
        distill_temperature: the temperature ``T`` of the distillation term, used when a batch carries teacher
            targets (``soft_target``, class scores already softened at ``T``).
    """

    def __init__(self, num_classes: int, bits: int, alpha: float = 32.0, margin: float = 0.1,
                 label_smoothing: float = 0.0, distill_temperature: float = 4.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if distill_temperature <= 0:
            raise ValueError(f"distill_temperature must be positive, got {distill_temperature}")
        self.label_smoothing, self.distill_temperature = float(label_smoothing), float(distill_temperature)
        self.proxy_anchor = ProxyAnchorLoss(num_classes=num_classes, embedding_size=bits, margin=margin, alpha=alpha)

    @property
    def proxies(self) -> nn.Parameter:
        """The class proxies ``[C, K]``."""
        return self.proxy_anchor.proxies

    def forward(self, code: torch.Tensor, logits: torch.Tensor, label: torch.Tensor,
                soft_target: torch.Tensor | None = None, **_: Any) -> dict[str, torch.Tensor]:
        """The three terms, and the classifier's batch accuracy (``acc``, logged only).

        For relaxed codes ``[B, K]``, logits ``[B, C]`` and labels ``[B]``; other batch entries are ignored, so the
        call is ``loss(**model_out, **batch)``. With teacher targets (``soft_target`` ``[B, C]``, probabilities at
        temperature ``T``) a fourth term, ``distill_loss``: :func:`distillation_loss`.
        """
        code32 = code.float()
        terms = {
            "proxy_loss": self.proxy_anchor(code32, label),
            "cls_loss": F.cross_entropy(logits.float(), label, label_smoothing=self.label_smoothing),
            "quant_loss": quantization_loss(code32),
        }
        if soft_target is not None:
            terms["distill_loss"] = distillation_loss(logits.float(), soft_target.float(), self.distill_temperature)
        with torch.no_grad():
            terms["acc"] = (logits.argmax(1) == label).float().mean()
        return terms
