"""PHA loss terms (METHODS.md section 1).

Cross-modal InfoNCE, the progressive stage schedule, and the terms of the modality-compensated dictionary
(reconstruction, shared/specific decorrelation, code sparsity), plus linear CKA as a training-free measure of how
aligned two feature sets are.

Every function is pure (tensors in, a scalar tensor out) and differentiable; tests check each against a slow
reference written with explicit loops.
"""

from __future__ import annotations

import math

import torch

from rswb.losses.contrastive import symmetric_info_nce

__all__ = [
    "cross_modal_info_nce", "decorrelation_loss", "linear_cka", "progressive_weights", "reconstruction_loss",
    "sparsity_loss",
]


def cross_modal_info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1,
                         ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between the MS and PAN embeddings of the same samples.

    :func:`rswb.losses.contrastive.symmetric_info_nce` under PHA's name: row i of ``a`` and of ``b`` are one pixel
    seen by the two modalities; ``ids`` (pixel identities) keep a pixel drawn twice in a batch (few-shot epochs
    repeat their few pixels) from being pushed away from its own twin.
    """
    return symmetric_info_nce(a, b, temperature, ids)


def progressive_weights(progress: float, stages: int = 3, width: float = 0.5) -> torch.Tensor:
    """Per-stage alignment weights of the progressive schedule (``pha_v4`` and later), summing to 1.

    The emphasis is a Gaussian bump over stage index ``s = 0..S-1`` whose centre moves linearly from the shallowest
    stage to the deepest over training: ``c = progress * (S - 1)``, ``w_s ∝ exp(-(s - c)^2 / (2 width^2))``. Early
    epochs align shallow features (misalignment there would propagate upward), late epochs align deep ones.

    Args:
        progress: training progress in [0, 1] (epoch / (epochs - 1)); clipped to that range.
        stages: number of aligned stages ``S``.
        width: the bump's standard deviation in stages (large: close to equal weights).
    """
    if stages < 1 or width <= 0:
        raise ValueError(f"need stages >= 1 and width > 0, got {stages}, {width}")
    c = min(max(float(progress), 0.0), 1.0) * (stages - 1)
    w = torch.tensor([math.exp(-((s - c) ** 2) / (2 * width * width)) for s in range(stages)], dtype=torch.float32)
    return w / w.sum()


def _standardize(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.float()
    return (x - x.mean(0)) / (x.std(0, unbiased=False) + eps)


def decorrelation_loss(shared: torch.Tensor, specific: torch.Tensor) -> torch.Tensor:
    """Mean squared cross-correlation between the shared and the specific part of one modality.

    Both ``[B, D1]`` and ``[B, D2]`` are standardised per dimension over the batch; the loss is the mean of the
    squared entries of their ``[D1, D2]`` correlation matrix. Zero when every shared dimension is uncorrelated
    with every specific one, so the specific part cannot simply copy what the shared dictionary already carries.
    """
    if shared.shape[0] != specific.shape[0] or shared.shape[0] < 2:
        raise ValueError(f"need the same batch size >= 2, got {shared.shape[0]} and {specific.shape[0]}")
    corr = _standardize(shared).t() @ _standardize(specific) / shared.shape[0]
    return corr.pow(2).mean()


def reconstruction_loss(target: torch.Tensor, shared: torch.Tensor, specific: torch.Tensor) -> torch.Tensor:
    """Relative squared error of rebuilding a modality's feature from its shared and specific parts.

    ``mean_i ||f_i - (s_i + p_i)||^2 / (||f_i||^2 + eps)``: the two parts together must keep all of ``f``, so
    compensation has something to give back.
    """
    target = target.float()
    err = (target - shared.float() - specific.float()).pow(2).sum(1)
    return (err / (target.pow(2).sum(1) + 1e-6)).mean()


def sparsity_loss(codes: torch.Tensor) -> torch.Tensor:
    """Mean absolute code value (L1 penalty per code entry) that keeps the dictionary codes sparse."""
    return codes.float().abs().mean()


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear centred kernel alignment of two feature sets of the same samples (Kornblith et al., 2019).

    ``CKA = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)`` with column-centred ``X_c``, ``Y_c``: 1 when
    the two representations are equal up to rotation and scale, near 0 when unrelated. It needs no projection head,
    so it measures MS/PAN alignment for every two-branch version, aligned or not.
    """
    x = x.float() - x.float().mean(0)
    y = y.float() - y.float().mean(0)
    num = (y.t() @ x).pow(2).sum()
    den = (x.t() @ x).norm() * (y.t() @ y).norm()
    return num / den.clamp_min(1e-12)
