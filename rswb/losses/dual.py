"""The losses of the retrieval baselines: VSE++ (hardest-negative triplet) and CLIP-style (symmetric InfoNCE).

Every retrieval loss takes the model's outputs and the batch as keyword arguments (``loss(**out, **batch)``) and
returns a dict of named terms: the ``*_loss`` terms the task weights and sums, and diagnostics it only logs
(``pos_sim``, the mean cosine of the batch's true pairs; ``temperature`` where it is learned). Registered under the
method's name (:func:`rswb.registry.create_loss`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rswb.losses.contrastive import LearnableTemperature, hardest_negative_triplet, symmetric_info_nce
from rswb.registry import register_loss

__all__ = ["CLIPLoss", "RetrievalLoss", "VSEPPLoss", "clip", "vsepp"]


class RetrievalLoss(nn.Module):
    """What the retrieval losses share: the training schedule position and the logged diagnostics."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch, self.epochs = 0, 1

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Remember the epoch (0-based) of ``epochs``: two-stage schedules and FISVL's weights depend on it."""
        self.epoch, self.epochs = int(epoch), int(epochs)

    def in_stage2(self, share: float) -> bool:
        """Whether the epoch has reached ``share`` of the training (the second stage of a two-stage schedule)."""
        return self.epoch >= int(round(share * self.epochs))

    @staticmethod
    def diagnostics(sim: torch.Tensor, temperature: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """``pos_sim`` (mean similarity of the true pairs, the diagonal) and the learned temperature."""
        with torch.no_grad():
            out = {"pos_sim": sim.diagonal().mean()}
            if temperature is not None:
                out["temperature"] = temperature().detach()
        return out


class VSEPPLoss(RetrievalLoss):
    """``triplet_loss``: VSE++'s hinge on the hardest negative in both directions.

    Other captions of the same image are not negatives.

    Args:
        margin: the hinge margin.
    """

    def __init__(self, margin: float = 0.2):
        super().__init__()
        self.margin = float(margin)

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor, image_id: torch.Tensor,
                **_: Any) -> dict[str, torch.Tensor]:
        """Terms for a batch of pairs: embeddings ``[B, D]``, the image of each pair ``[B]``."""
        sim = image_emb @ text_emb.t()
        return {"triplet_loss": hardest_negative_triplet(sim, self.margin, image_id), **self.diagnostics(sim)}


class CLIPLoss(RetrievalLoss):
    """``nce_loss``: symmetric InfoNCE with a learnable temperature (other captions of the same image masked).

    Args:
        temperature: the initial temperature.
    """

    def __init__(self, temperature: float = 0.07):
        super().__init__()
        self.temperature = LearnableTemperature(temperature)

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor, image_id: torch.Tensor,
                **_: Any) -> dict[str, torch.Tensor]:
        """Terms for a batch of pairs: embeddings ``[B, D]``, the image of each pair ``[B]``."""
        sim = image_emb @ text_emb.t()
        return {"nce_loss": symmetric_info_nce(image_emb, text_emb, self.temperature(), image_id),
                **self.diagnostics(sim, self.temperature)}


@register_loss
def vsepp(margin: float = 0.2) -> VSEPPLoss:
    """VSE++'s loss: the hardest-negative triplet with ``margin``."""
    return VSEPPLoss(margin)


@register_loss
def clip(temperature: float = 0.07) -> CLIPLoss:
    """The CLIP-style baseline's loss: symmetric InfoNCE at the initial ``temperature`` (learnable)."""
    return CLIPLoss(temperature)
