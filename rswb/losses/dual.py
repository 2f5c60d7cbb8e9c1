"""The losses of the retrieval baselines: VSE++ (hardest-negative triplet) and CLIP-style (symmetric InfoNCE).

Every retrieval loss takes the model's outputs and the batch as keyword arguments (``loss(**out, **batch)``) and
returns a dict of named terms: the ``*_loss`` terms the task weights and sums, and diagnostics it only logs
(``pos_sim``, the mean cosine of the batch's true pairs; ``temperature`` where it is learned). Registered under the
method's name (:func:`rswb.registry.create_loss`).
"""

from __future__ import annotations

from typing import Any

import torch

from rswb.losses.contrastive import LearnableTemperature, hardest_negative_triplet, symmetric_info_nce
from rswb.losses.retrieval import RetrievalLoss
from rswb.registry import register_loss

__all__ = ["CLIPLoss", "RetrievalLoss", "VSEPPLoss", "clip", "vsepp"]


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
