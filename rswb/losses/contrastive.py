"""Contrastive losses shared by the cross-modal methods.

Symmetric InfoNCE (PHA's MS<->PAN alignment, CLIP-style image-text training) and VSE++'s hardest-negative triplet
loss (the image-text retrieval baseline).

Every loss takes paired embeddings or a similarity matrix whose diagonal holds the positive pairs, optionally with
``ids`` naming each row's underlying item: rows ``j != i`` with the same id as row ``i`` (the same pixel drawn twice,
or another caption of the same image) are neither positives nor negatives of row ``i``, so a batch never pushes an
item away from itself. Each returns a scalar mean over the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LearnableTemperature", "hardest_negative_triplet", "same_item_mask", "symmetric_info_nce"]


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision inputs (under AMP) are computed in float32; float64 stays float64 (exact tests)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def same_item_mask(ids: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor | None:
    """``[n, n]`` bool mask of off-diagonal pairs that share an id (``None`` without ids).

    ``ids`` is ``[n]``, or ``[n, G]`` for several identities per row (e.g. the image and the text group of a
    caption): two rows are the same item when any column matches.
    """
    if ids is None:
        return None
    ids = ids.to(device)
    ids = ids.reshape(ids.shape[0], -1) if ids.ndim == 2 else ids.reshape(-1, 1)
    if ids.shape[0] != n:
        raise ValueError(f"ids has {ids.shape[0]} entries for a batch of {n}")
    same = (ids[:, None, :] == ids[None, :, :]).any(-1)
    return same & ~torch.eye(n, dtype=torch.bool, device=device)


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float | torch.Tensor = 0.1,
                       ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between two views (modalities) of the same items.

    With ``s_ij = cos(a_i, b_j) / T`` the loss is
    ``1/2 [ mean_i -log softmax_j(s_ij)[i] + mean_j -log softmax_i(s_ij)[j] ]`` (a->b and b->a); pairs that
    share an id (see the module docstring) are left out of the softmax.

    Args:
        a: ``[B, D]`` embeddings of view 1 (need not be normalised).
        b: ``[B, D]`` embeddings of view 2.
        temperature: softmax temperature ``T``, a float or a scalar tensor (learnable, e.g.
            :class:`LearnableTemperature`).
        ids: optional ``[B]`` item identities.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two [B, D] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a = F.normalize(_at_least_fp32(a), dim=1)
    b = F.normalize(_at_least_fp32(b), dim=1)
    logits = a @ b.t() / temperature
    n = a.shape[0]
    mask = same_item_mask(ids, n, a.device)
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    target = torch.arange(n, device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def hardest_negative_triplet(sim: torch.Tensor, margin: float = 0.2, ids: torch.Tensor | None = None) -> torch.Tensor:
    """VSE++ hinge loss with the hardest negative of each query (Faghri et al., 2018), both directions.

    ``sim[i, j]`` is the similarity of image ``i`` and caption ``j``; ``sim[i, i]`` the positive pair. For every
    image the hardest caption negative and for every caption the hardest image negative give
    ``relu(margin - sim[i, i] + sim[i, j*]) + relu(margin - sim[i, i] + sim[j*, i])``; the loss is its mean over
    the batch (the paper sums; a mean only rescales the learning rate and keeps the ``*_loss`` contract).
    Gradients flow through the positive and through the chosen negatives.

    Args:
        sim: ``[B, B]`` similarity matrix.
        margin: the hinge margin (VSE++: 0.2).
        ids: optional ``[B]`` image identities of the rows (or ``[B, G]``, see :func:`same_item_mask`); captions of
            the same image are not negatives.
    """
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"expected a square [B, B] similarity matrix, got {tuple(sim.shape)}")
    n = sim.shape[0]
    if n < 2:
        raise ValueError("a hardest-negative loss needs at least two pairs in the batch")
    sim = _at_least_fp32(sim)
    pos = sim.diagonal()
    blocked = torch.eye(n, dtype=torch.bool, device=sim.device)
    mask = same_item_mask(ids, n, sim.device)
    if mask is not None:
        blocked = blocked | mask
    neg = sim.masked_fill(blocked, float("-inf"))
    hardest_caption = neg.max(dim=1).values  # per image
    hardest_image = neg.max(dim=0).values  # per caption
    # A row whose every other entry is blocked has no negative: its terms are zero, not -inf.
    cost_i2t = torch.where(torch.isfinite(hardest_caption), F.relu(margin - pos + hardest_caption), 0.0)
    cost_t2i = torch.where(torch.isfinite(hardest_image), F.relu(margin - pos + hardest_image), 0.0)
    return (cost_i2t + cost_t2i).mean()


class LearnableTemperature(nn.Module):
    """CLIP's learnable softmax temperature, stored as a log-scale and clamped (CLIP: at most a scale of 100).

    Args:
        init: initial temperature (CLIP: 0.07).
        min_temperature: the smallest temperature the clamp allows.
    """

    def __init__(self, init: float = 0.07, min_temperature: float = 0.01):
        super().__init__()
        if not 0 < min_temperature <= init:
            raise ValueError(f"need 0 < min_temperature <= init, got {min_temperature}, {init}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init)))
        self.max_log_scale = math.log(1.0 / min_temperature)

    def forward(self) -> torch.Tensor:
        """The current temperature (a scalar tensor with gradient, except where clamped)."""
        return torch.exp(-self.log_scale.clamp(max=self.max_log_scale))
