"""The baselines of the retrieval table: VSE++ and a CLIP-style dual encoder (linear heads on pooled features).

Both project the pooled image vector and the mean token state to the joint space; they differ only in the loss
(:mod:`rswb.losses.dual`): VSE++ trains with the hardest-negative triplet, CLIP with symmetric InfoNCE.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rswb.models.retrieval import RetrievalNet, build_encoders, register_retrieval_method
from rswb.models.text import masked_mean

__all__ = ["CLIPStyle", "DualHeads", "VSEPP", "clip", "vsepp"]


class DualHeads(RetrievalNet):
    """Linear projections of the pooled image vector and the mean token state (VSE++ and CLIP-style).

    Args:
        channels: ``{"low", "mid", "high", "pooled"}`` channels of the image feature levels.
        text_dim: width of the text token states.
        embed_dim, backbone, text_encoder: see :class:`~rswb.models.retrieval.RetrievalNet`.
    """

    def __init__(self, channels: dict[str, int], text_dim: int, embed_dim: int = 512,
                 backbone: nn.Module | None = None, text_encoder: nn.Module | None = None):
        super().__init__(embed_dim, backbone, text_encoder)
        self.img_head = nn.Linear(channels["pooled"], self.embed_dim)
        self.txt_head = nn.Linear(text_dim, self.embed_dim)

    def image_head(self, levels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"image_emb": [B, D]}``: the projected pooled vector."""
        return {"image_emb": F.normalize(self.img_head(levels["pooled"]), dim=1)}

    def text_head(self, states: torch.Tensor, mask: torch.Tensor,
                  tags: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{"text_emb": [B, D]}``: the projected mean token state (``tags`` unused)."""
        return {"text_emb": F.normalize(self.txt_head(masked_mean(states, mask)), dim=1)}

    def pooled_projection(self) -> nn.Module:
        """The image head itself."""
        return self.img_head


class VSEPP(DualHeads):
    """VSE++ (trained with :class:`rswb.losses.dual.VSEPPLoss`)."""

    method = "vsepp"


class CLIPStyle(DualHeads):
    """The CLIP-style baseline (trained with :class:`rswb.losses.dual.CLIPLoss`)."""

    method = "clip"


def _dual(cls: type[DualHeads], channels: dict[str, int] | None, text_dim: int, embed_dim: int,
          **encoders: Any) -> DualHeads:
    bb, txt, channels, text_dim = build_encoders(channels, text_dim, **encoders)
    return cls(channels, text_dim, embed_dim, backbone=bb, text_encoder=txt)


@register_retrieval_method
def vsepp(channels: dict[str, int] | None = None, text_dim: int = 384, embed_dim: int = 512,
          **encoders: Any) -> DualHeads:
    """VSE++: linear heads on the pooled image vector and the mean token state (hardest-negative triplet loss).

    Args:
        channels: feature-level channels of cached features (``None``: from ``backbone``).
        text_dim: token-state width of cached states (MiniLM: 384).
        embed_dim: joint embedding size.
        encoders: the encoders inside the model, for fine-tuning (none: cached inputs): ``backbone`` (a registered
            backbone), ``pretrained``, ``backbone_path`` (``hf_backbone``'s folder), ``text_encoder`` (``minilm``,
            ``hf_text`` or ``gru_text``), ``freeze_text``, ``vocab_size`` (the GRU's), ``text_path`` (``hf_text``'s
            folder); see :func:`rswb.models.retrieval.build_encoders`.
    """
    return _dual(VSEPP, channels, text_dim, embed_dim, **encoders)


@register_retrieval_method
def clip(channels: dict[str, int] | None = None, text_dim: int = 384, embed_dim: int = 512,
         **encoders: Any) -> DualHeads:
    """The CLIP-style baseline: the heads of :func:`vsepp`, trained with symmetric InfoNCE (arguments as there)."""
    return _dual(CLIPStyle, channels, text_dim, embed_dim, **encoders)
