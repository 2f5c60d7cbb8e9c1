"""The baselines of the retrieval table: VSE++ and a CLIP-style dual encoder (linear heads on pooled features).

Both project the pooled image vector and the mean token state to the joint space; they differ only in the loss
(:mod:`rswb.losses.dual`): VSE++ trains with the hardest-negative triplet, CLIP with symmetric InfoNCE.
:class:`DualEncoder` is the same idea with any backbone and text encoder inside, for direct use.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rswb.models.retrieval import RetrievalNet, build_encoders, make_backbone
from rswb.models.text import masked_mean
from rswb.registry import create_model, register_model

__all__ = ["CLIPStyle", "DualEncoder", "DualHeads", "VSEPP", "clip", "dual_encoder", "vsepp"]


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


@register_model
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


@register_model
def clip(channels: dict[str, int] | None = None, text_dim: int = 384, embed_dim: int = 512,
         **encoders: Any) -> DualHeads:
    """The CLIP-style baseline: the heads of :func:`vsepp`, trained with symmetric InfoNCE (arguments as there)."""
    return _dual(CLIPStyle, channels, text_dim, embed_dim, **encoders)


class DualEncoder(nn.Module):
    """Image backbone + text encoder, each projected to ``embed_dim`` and L2-normalised.

    Args:
        image_backbone: a backbone module (``forward(images) -> [B, num_features]``, ``num_features``).
        text_encoder: a text encoder (``forward(input_ids, attention_mask) -> [B, out_features]``,
            ``out_features``).
        embed_dim: size of the shared embedding space.
    """

    def __init__(self, image_backbone: nn.Module, text_encoder: nn.Module, embed_dim: int = 512):
        super().__init__()
        self.image_backbone, self.text_encoder = image_backbone, text_encoder
        self.image_proj = nn.Linear(image_backbone.num_features, embed_dim)
        self.text_proj = nn.Linear(text_encoder.out_features, embed_dim)
        self.embed_dim = int(embed_dim)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised embeddings ``[B, embed_dim]`` of images ``[B, 3, H, W]`` in [0, 1]."""
        return F.normalize(self.image_proj(self.image_backbone(images)).float(), dim=1)

    def encode_text(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalised embeddings ``[B, embed_dim]`` of tokenised captions (``input_ids``, ``attention_mask``)."""
        return F.normalize(self.text_proj(self.text_encoder(tokens["input_ids"], tokens["attention_mask"])).float(),
                           dim=1)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"image": [B, D], "text": [B, D]}`` for a batch with ``image`` and ``tokens``."""
        return {"image": self.encode_image(batch["image"]), "text": self.encode_text(batch["tokens"])}


@register_model
def dual_encoder(image_backbone: str = "efficientnet_lite0", text_encoder: str = "minilm", embed_dim: int = 512,
                 pretrained: bool = True, vocab_size: int | None = None, freeze_text: bool = True,
                 **text_kwargs: Any) -> DualEncoder:
    """A dual encoder from registered parts.

    Args:
        image_backbone: registered backbone name (``efficientnet_lite0`` | ``small_cnn``).
        text_encoder: ``minilm`` (pretrained, offline) or ``gru_text`` (needs ``vocab_size``).
        embed_dim: size of the shared embedding space.
        pretrained: load the backbone's ImageNet weights (EfficientNet-Lite0).
        vocab_size: vocabulary size of the GRU encoder.
        freeze_text: keep MiniLM's transformer fixed.
        text_kwargs: further options of the text encoder.
    """
    backbone = make_backbone(image_backbone, pretrained)
    if text_encoder == "minilm":
        text = create_model("minilm", freeze=freeze_text, **text_kwargs)
    elif text_encoder == "gru_text":
        if vocab_size is None:
            raise ValueError("the GRU text encoder needs vocab_size (build a Vocabulary from the training captions)")
        text = create_model("gru_text", vocab_size=vocab_size, **text_kwargs)
    else:
        raise ValueError(f"unknown text encoder {text_encoder!r}; use minilm or gru_text")
    return DualEncoder(backbone, text, embed_dim)


