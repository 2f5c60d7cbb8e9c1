"""FISVL (JSTARS 2024; ``docs/methods.md``): fine-grained information supplementation over the image's nodes.

The image embedding is a CLS projection of the pooled vector plus a refinement of a graph (:class:`FGIS`) over a
global node (the stride-16 map's mean), a multi-scale local node (:class:`SceneFineGrainedBranch` on the stride-8
map) and the stride-32 tokens; the text embedding is the projected mean token state. Trained with
:class:`rswb.losses.fisvl.FISVLLoss` (multi-positive InfoNCE, affiliation, scene-adaptive hard negatives, then the
value-guided stage).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rswb.models.retrieval import RetrievalNet, build_encoders, map_tokens, register_retrieval_method
from rswb.models.text import masked_mean

__all__ = ["FGIS", "FISVLNet", "SceneFineGrainedBranch", "fisvl"]


class SceneFineGrainedBranch(nn.Module):
    """FISVL's multi-scale local branch on an early feature map (the "scene fine-grained sensing" module).

    Three parallel convolutions (1x1, 3x3 with stride 3, 5x5 with stride 5) look at the map at three granularities;
    each result is average-pooled to ``grid`` x ``grid`` tokens, the three token sets go through one transformer
    block together, and a learned softmax mixing of the three scales' mean tokens, projected to ``dim``, gives the
    local vector.

    Args:
        in_channels: channels of the input map.
        dim: output size.
        width: token width inside the branch (the transformer block's cost grows with its square).
        grid: side of the pooled token grid (the paper pools its stem map to 16 x 16; 4 x 4 per scale keeps the block
            cheap enough for CPU training, 48 tokens in all).
        heads: attention heads of the transformer block.
    """

    def __init__(self, in_channels: int, dim: int, width: int = 128, grid: int = 4, heads: int = 4):
        super().__init__()
        self.convs = nn.ModuleList([
            nn.Conv2d(in_channels, width, 1),
            nn.Conv2d(in_channels, width, 3, stride=3, padding=1),
            nn.Conv2d(in_channels, width, 5, stride=5, padding=2),
        ])
        self.grid = int(grid)
        self.block = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0,
                                                batch_first=True, norm_first=True)
        self.mix = nn.Parameter(torch.zeros(3))
        self.out = nn.Linear(width, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Local vector ``[B, dim]`` of a map ``[B, C, H, W]``."""
        # The 1x1 convolution commutes with average pooling, so it runs on the pooled grid (19 % of a CPU step at
        # full resolution); the strided ones see the full map.
        scales = [map_tokens(F.relu(self.convs[0](F.adaptive_avg_pool2d(x, self.grid))))]
        scales += [map_tokens(F.adaptive_avg_pool2d(F.relu(conv(x)), self.grid)) for conv in self.convs[1:]]
        n = scales[0].shape[1]
        tokens = self.block(torch.cat(scales, 1))
        means = torch.stack([tokens[:, i * n:(i + 1) * n].mean(1) for i in range(3)], 1)  # [B, 3, width]
        return self.out((torch.softmax(self.mix, 0)[None, :, None] * means).sum(1))


class FGIS(nn.Module):
    """FISVL's fine-grained information supplementation: attention-graph updates over the image's nodes.

    ``steps`` times: ``A = softmax(Q K^T / sqrt(d))`` over the nodes, ``X <- ReLU(W (A X))`` (docs/methods.md, FISVL).
    Our deviation: each update is wrapped in a residual connection and a layer norm, ``X <- LN(X + ReLU(W (A X)))``,
    the usual way to keep a node's own information through repeated attention when the graph is trained from
    scratch on top of frozen features. Returns the refined nodes.
    """

    def __init__(self, dim: int, steps: int = 2):
        super().__init__()
        self.q = nn.ModuleList([nn.Linear(dim, dim) for _ in range(steps)])
        self.k = nn.ModuleList([nn.Linear(dim, dim) for _ in range(steps)])
        self.w = nn.ModuleList([nn.Linear(dim, dim) for _ in range(steps)])
        self.norm = nn.ModuleList([nn.LayerNorm(dim) for _ in range(steps)])
        self.scale = dim ** -0.5

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        """Refined nodes ``[B, N, dim]`` of ``nodes`` ``[B, N, dim]``."""
        x = nodes
        for q, k, w, norm in zip(self.q, self.k, self.w, self.norm):
            a = torch.softmax(q(x) @ k(x).transpose(1, 2) * self.scale, dim=-1)
            x = norm(x + F.relu(w(a @ x)))
        return x


class FISVLNet(RetrievalNet):
    """FISVL's image and text heads (see the module docstring).

    Args:
        channels: ``{"low", "mid", "high", "pooled"}`` channels of the image feature levels.
        text_dim: width of the text token states.
        embed_dim: size of the joint embedding space.
        local_branch: use the multi-scale local node (ablation: off).
        fgis_steps: graph steps (0: no FGIS; the CLS is refined by an MLP over the mean of its nodes).
        backbone, text_encoder: see :class:`~rswb.models.retrieval.RetrievalNet`.
        graph_width: width of the graph nodes and the local branch.
    """

    method = "fisvl"

    def __init__(self, channels: dict[str, int], text_dim: int, embed_dim: int = 512, local_branch: bool = True,
                 fgis_steps: int = 2, backbone: nn.Module | None = None, text_encoder: nn.Module | None = None,
                 graph_width: int = 128):
        super().__init__(embed_dim, backbone, text_encoder)
        d = self.embed_dim
        # The graph runs at a narrower width than the embedding (its cost grows with the square of the width;
        # at 512 it took 30 s per UC Merced epoch on 2 CPU cores); only the refined CLS node is lifted to D.
        w = graph_width
        self.cls = nn.Linear(channels["pooled"], d)
        self.cls_node = nn.Linear(channels["pooled"], w)
        self.global_node = nn.Linear(channels["mid"], w)
        self.local = SceneFineGrainedBranch(channels["low"], w) if local_branch else None
        self.token_proj = nn.Linear(channels["high"], w)
        self.token_grid = 4  # the stride-32 map (7 x 7 at 224 px) pooled to 16 graph nodes
        self.fgis = FGIS(w, fgis_steps) if fgis_steps > 0 else None
        self.refine = nn.Sequential(nn.Linear(w, d), nn.ReLU(), nn.Linear(d, d))
        self.txt_head = nn.Linear(text_dim, d)

    def image_head(self, levels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"image_emb": [B, D]}``: CLS projection plus the refined CLS node of the graph."""
        cls = self.cls(levels["pooled"])
        nodes = [self.cls_node(levels["pooled"]), self.global_node(levels["mid"].mean(dim=(2, 3)))]
        if self.local is not None:
            nodes.append(self.local(levels["low"]))
        if self.fgis is not None:
            high = F.adaptive_avg_pool2d(levels["high"], self.token_grid)
            graph = torch.cat([torch.stack(nodes, 1), self.token_proj(map_tokens(high))], 1)
            refined = self.fgis(graph)[:, 0]
        else:
            refined = torch.stack(nodes, 1).mean(1)
        return {"image_emb": F.normalize(cls + self.refine(refined), dim=1)}

    def text_head(self, states: torch.Tensor, mask: torch.Tensor,
                  tags: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{"text_emb": [B, D]}``: the projected mean token state (``tags`` unused)."""
        return {"text_emb": F.normalize(self.txt_head(masked_mean(states, mask)), dim=1)}

    def pooled_projection(self) -> nn.Module:
        """The CLS projection (the graph term is nonlinear and not decomposed)."""
        return self.cls


@register_retrieval_method
def fisvl(channels: dict[str, int] | None = None, text_dim: int = 384, embed_dim: int = 512, local_branch: bool = True,
          fgis_steps: int = 2, graph_width: int = 128, **encoders: Any) -> FISVLNet:
    """FISVL's model (see :func:`rswb.models.dual.vsepp` for the shared arguments).

    Args:
        channels: feature-level channels of cached features (``None``: from the backbone).
        text_dim: token-state width of cached states.
        embed_dim: joint embedding size.
        local_branch: the multi-scale local node (ablation: off).
        fgis_steps: graph steps (0: off).
        graph_width: width of the graph nodes.
        encoders: the encoders inside the model (:func:`rswb.models.retrieval.build_encoders`).
    """
    bb, txt, channels, text_dim = build_encoders(channels, text_dim, **encoders)
    return FISVLNet(channels, text_dim, embed_dim, local_branch, fgis_steps, backbone=bb, text_encoder=txt,
                    graph_width=graph_width)
