"""The dual encoder every image-text retrieval method builds on (VSE++, CLIP-style, FISVL, KAMCL; issue 6).

``encode_image`` and ``encode_text`` map images and captions to L2-normalised embeddings of one size, so the
similarity of an image and a caption is a dot product and :mod:`rswb.metrics.retrieval` scores the similarity matrix.
The image side is any registered backbone (EfficientNet-Lite0 with its ImageNet weights, or the small CNN for
tests) plus a linear projection of its pooled features; the text side is a registered text encoder
(:mod:`rswb.models.text`: MiniLM or a GRU over a vocabulary) plus a linear projection.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rswb.registry import create_model, register_model

__all__ = ["DualEncoder", "dual_encoder"]


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
    backbone = (create_model(image_backbone, pretrained=pretrained) if image_backbone == "efficientnet_lite0"
                else create_model(image_backbone))
    if text_encoder == "minilm":
        text = create_model("minilm", freeze=freeze_text, **text_kwargs)
    elif text_encoder == "gru_text":
        if vocab_size is None:
            raise ValueError("the GRU text encoder needs vocab_size (build a Vocabulary from the training captions)")
        text = create_model("gru_text", vocab_size=vocab_size, **text_kwargs)
    else:
        raise ValueError(f"unknown text encoder {text_encoder!r}; use minilm or gru_text")
    return DualEncoder(backbone, text, embed_dim)
