"""KAMCL (TGRS 2023; ``docs/methods.md``): knowledge-aided momentum contrastive learning, its image and text heads.

The image side is a hierarchical aggregator (:class:`HierarchicalAggregator`: GPO over each feature level, a
shared MLP, GPO again); the text side is GPO over the projected token states fused with the caption's tag vector;
concept heads predict the image's tags and their sigmoid outputs are added back to the embedding through learned
tag embeddings. The momentum key encoders and queues are part of the loss (:class:`rswb.losses.kamcl.KAMCLLoss`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rswb.models.pooling import GPO
from rswb.models.retrieval import RetrievalNet, build_encoders, map_tokens, register_retrieval_method

__all__ = ["HierarchicalAggregator", "KAMCLNet", "kamcl"]


class HierarchicalAggregator(nn.Module):
    """KAMCL's hierarchical aggregator over the low, mid and high feature levels and the final vector.

    Each level's tokens are projected and pooled to ``dim`` by their own GPO, stacked with the projected final
    vector, passed through a shared MLP (residual) and pooled again by a GPO.

    Args:
        channels: ``{"low", "mid", "high", "pooled"}`` input channels.
        dim: output size.
    """

    def __init__(self, channels: dict[str, int], dim: int):
        super().__init__()
        self.levels = ("low", "mid", "high")
        # Each map is average-pooled to 4 x 4 tokens first: GPO sorts every channel of the set (torch's CPU sort of
        # many short rows is slow), which over the 28 x 28 stride-8 map (784 tokens) took 80 % of a CPU step, and
        # still 60 % at 7 x 7.
        self.grid = 4
        self.proj = nn.ModuleDict({k: nn.Linear(channels[k], dim) for k in self.levels})
        self.pools = nn.ModuleDict({k: GPO() for k in self.levels})
        self.final = nn.Linear(channels["pooled"], dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.out_pool = GPO()

    def forward(self, levels: dict[str, torch.Tensor]) -> torch.Tensor:
        """Image vector ``[B, dim]`` from :func:`feature_levels`' dict."""
        parts = [self.pools[k](self.proj[k](map_tokens(F.adaptive_avg_pool2d(levels[k], self.grid))))
                 for k in self.levels]
        parts.append(self.final(levels["pooled"]))
        stack = torch.stack(parts, 1)  # [B, 4, dim]
        return self.out_pool(stack + self.mlp(stack))


class KAMCLNet(RetrievalNet):
    """KAMCL's image and text heads (see the module docstring).

    Args:
        channels: ``{"low", "mid", "high", "pooled"}`` channels of the image feature levels.
        text_dim: width of the text token states.
        embed_dim: size of the joint embedding space.
        hierarchical: the hierarchical aggregator (off: a projection of the pooled vector, like the baselines).
        num_tags: size of the tag vocabulary (0: no knowledge-aided parts: no tag fusion, no concept heads).
        backbone, text_encoder: see :class:`~rswb.models.retrieval.RetrievalNet`.
    """

    method = "kamcl"

    def __init__(self, channels: dict[str, int], text_dim: int, embed_dim: int = 512, hierarchical: bool = True,
                 num_tags: int = 0, backbone: nn.Module | None = None, text_encoder: nn.Module | None = None):
        super().__init__(embed_dim, backbone, text_encoder)
        d = self.embed_dim
        self.num_tags = int(num_tags)
        self.aggregator = HierarchicalAggregator(channels, d) if hierarchical else None
        self.img_head = None if hierarchical else nn.Linear(channels["pooled"], d)
        self.txt_proj = nn.Linear(text_dim, d)
        self.txt_pool = GPO()
        if self.num_tags:
            self.tag_fuse = nn.Linear(self.num_tags, d)
            self.img_concepts = nn.Linear(d, self.num_tags)
            self.txt_concepts = nn.Linear(d, self.num_tags)
            self.tag_embed = nn.Linear(self.num_tags, d, bias=False)

    def image_head(self, levels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"image_emb": [B, D]}`` plus ``"image_concepts"`` logits with a tag vocabulary."""
        latent = self.aggregator(levels) if self.aggregator is not None else self.img_head(levels["pooled"])
        return self._with_concepts(latent, self.img_concepts if self.num_tags else None, "image")

    def text_head(self, states: torch.Tensor, mask: torch.Tensor,
                  tags: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{"text_emb": [B, D]}`` plus ``"text_concepts"``.

        ``tags`` ``[B, K]``: the caption's own tag words (multi-hot), fused into the text vector.
        """
        latent = self.txt_pool(self.txt_proj(states), mask)
        if self.num_tags:
            if tags is None:
                raise KeyError("KAMCL with a tag vocabulary needs each caption's 'tags' vector")
            latent = latent + self.tag_fuse(tags.float())
        return self._with_concepts(latent, self.txt_concepts if self.num_tags else None, "text")

    def _with_concepts(self, latent: torch.Tensor, head: nn.Module | None, side: str) -> dict[str, torch.Tensor]:
        if head is None:
            return {f"{side}_emb": F.normalize(latent, dim=1)}
        logits = head(latent)
        return {f"{side}_emb": F.normalize(latent + self.tag_embed(torch.sigmoid(logits)), dim=1),
                f"{side}_concepts": logits}

    def pooled_projection(self) -> nn.Module:
        """The aggregator's projection of the final vector (or the plain image head without the aggregator)."""
        return self.aggregator.final if self.aggregator is not None else self.img_head


@register_retrieval_method
def kamcl(channels: dict[str, int] | None = None, text_dim: int = 384, embed_dim: int = 512, hierarchical: bool = True,
          num_tags: int = 0, **encoders: Any) -> KAMCLNet:
    """KAMCL's model (see :func:`rswb.models.dual.vsepp` for the shared arguments).

    Args:
        channels: feature-level channels of cached features (``None``: from the backbone).
        text_dim: token-state width of cached states.
        embed_dim: joint embedding size.
        hierarchical: the hierarchical aggregator (off: a projection of the pooled vector).
        num_tags: the tag vocabulary size (0: no knowledge-aided parts).
        encoders: the encoders inside the model (:func:`rswb.models.retrieval.build_encoders`).
    """
    bb, txt, channels, text_dim = build_encoders(channels, text_dim, **encoders)
    return KAMCLNet(channels, text_dim, embed_dim, hierarchical, num_tags, backbone=bb, text_encoder=txt)
