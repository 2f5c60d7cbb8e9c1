"""FISVL's loss (``docs/methods.md``): a two-stage, value-guided schedule of four contrastive terms.

Stage 1 (before ``value_stage`` of the epochs): ``nce_loss`` (multi-positive InfoNCE), ``hard_loss`` (the hardest
negative per query, weighted by ``exp(beta1 * epoch)`` from another scene and ``exp(beta2 * epoch)`` from the same
scene) and ``affil_loss`` (each sample against the other modality's class centres). Stage 2: ``value_loss`` (InfoNCE
with each caption's logits scaled by its value weight) and ``affil_loss``. Inactive terms are logged as 0.
"""

from __future__ import annotations

from typing import Any

import torch

from rswb.losses.contrastive import LearnableTemperature
from rswb.losses.retrieval import (
    RetrievalLoss,
    affiliation_loss,
    multi_positive_info_nce,
    scene_adaptive_triplet,
    value_weighted_info_nce,
)
from rswb.registry import register_loss

__all__ = ["FISVLLoss", "fisvl"]


class FISVLLoss(RetrievalLoss):
    """FISVL's terms (see the module docstring).

    Args:
        temperature: initial value of the learnable temperature.
        margin: hinge margin of the hard-negative term.
        beta1, beta2: growth rates of the hard-negative weights (other scene, same scene).
        value_stage: share of the epochs before the value-guided stage 2 (1: no stage 2).
    """

    def __init__(self, temperature: float = 0.07, margin: float = 0.2, beta1: float = 0.0, beta2: float = 0.05,
                 value_stage: float = 0.5):
        super().__init__()
        self.temperature = LearnableTemperature(temperature)
        self.margin, self.beta1, self.beta2 = float(margin), float(beta1), float(beta2)
        self.value_stage = float(value_stage)

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor, image_id: torch.Tensor, label: torch.Tensor,
                value: torch.Tensor, **_: Any) -> dict[str, torch.Tensor]:
        """Terms for a batch of pairs.

        Embeddings ``[B, D]``; per pair its image ``[B]``, scene ``label`` ``[B]`` and caption ``value`` weight ``[B]``.
        """
        sim = image_emb @ text_emb.t()
        zero = sim.new_zeros(())
        t = self.temperature()
        stage2 = self.in_stage2(self.value_stage)
        terms = {
            "nce_loss": zero if stage2 else multi_positive_info_nce(sim, image_id, t),
            "hard_loss": zero if stage2 else scene_adaptive_triplet(sim, image_id, label, self.epoch, self.beta1,
                                                                    self.beta2, self.margin),
            "value_loss": value_weighted_info_nce(sim, image_id, value, t) if stage2 else zero,
            "affil_loss": affiliation_loss(image_emb, text_emb, label),
        }
        return {**terms, **self.diagnostics(sim, self.temperature)}


@register_loss
def fisvl(temperature: float = 0.07, margin: float = 0.2, beta1: float = 0.0, beta2: float = 0.05,
          value_stage: float = 0.5) -> FISVLLoss:
    """FISVL's loss (arguments as :class:`FISVLLoss`)."""
    return FISVLLoss(temperature, margin, beta1, beta2, value_stage)
