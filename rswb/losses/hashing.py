"""DHCL's losses: Proxy Anchor on the relaxed codes + class cross-entropy + a quantisation term.

* ``proxy_loss``: Proxy Anchor (Kim et al. 2020) from pytorch-metric-learning, cosine similarity, ``alpha = 32``,
  ``margin = 0.1``; its proxies are parameters of this module and train with their own (larger) learning rate
  (``param_groups`` gives them ``lr_mult``, 100 in the paper).
* ``cls_loss``: cross-entropy of the classification head on the code (optionally label-smoothed: the head then
  never drives a training image's logit margin to infinity, a regulariser for 80 images per class).
* ``quant_loss``: ``mean((|u| - 1)^2)`` over the relaxed code ``u = tanh(h)``, pulling it to +-1 so that ``sign``
  loses little.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import ProxyAnchorLoss
from torch import nn

__all__ = ["DHCLLoss", "quantization_loss"]


def quantization_loss(code: torch.Tensor) -> torch.Tensor:
    """``mean((|u| - 1)^2)`` of relaxed codes ``u`` ``[B, K]``."""
    return (code.abs() - 1.0).pow(2).mean()


class DHCLLoss(nn.Module):
    """The three DHCL terms, unweighted (the task weights them).

    Args:
        num_classes: number of classes (one proxy each).
        bits: code length (the proxies' dimension).
        alpha: Proxy Anchor scale.
        margin: Proxy Anchor margin.
        label_smoothing: the cross-entropy's label smoothing (0: none; ``torch.nn.functional.cross_entropy``'s).
    """

    def __init__(self, num_classes: int, bits: int, alpha: float = 32.0, margin: float = 0.1,
                 label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        self.proxy_anchor = ProxyAnchorLoss(num_classes=num_classes, embedding_size=bits, margin=margin, alpha=alpha)

    @property
    def proxies(self) -> nn.Parameter:
        """The class proxies ``[C, K]``."""
        return self.proxy_anchor.proxies

    def forward(self, code: torch.Tensor, logits: torch.Tensor, label: torch.Tensor,
                **_: Any) -> dict[str, torch.Tensor]:
        """The three terms, and the classifier's batch accuracy (``acc``, logged only).

        For relaxed codes ``[B, K]``, logits ``[B, C]`` and labels ``[B]``; other batch entries are ignored, so the
        call is ``loss(**model_out, **batch)``.
        """
        code32 = code.float()
        terms = {
            "proxy_loss": self.proxy_anchor(code32, label),
            "cls_loss": F.cross_entropy(logits.float(), label, label_smoothing=self.label_smoothing),
            "quant_loss": quantization_loss(code32),
        }
        with torch.no_grad():
            terms["acc"] = (logits.argmax(1) == label).float().mean()
        return terms
