"""PHA loss terms (``docs/methods.md``, PHA) and :class:`PHALoss`, the terms of a model version together.

Cross-modal InfoNCE, the progressive stage schedule, and the terms of the modality-compensated dictionary
(reconstruction, shared/specific decorrelation, code sparsity), plus linear CKA as a training-free measure of how
aligned two feature sets are.

Every function is pure (tensors in, a scalar tensor out) and differentiable; tests check each against a slow
reference written with explicit loops. :class:`PHALoss` weights them by the version's schedule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rswb.losses.contrastive import symmetric_info_nce
from rswb.models.pha import STAGE_NAMES

__all__ = [
    "PHALoss", "cross_modal_info_nce", "decorrelation_loss", "linear_cka", "progressive_weights", "reconstruction_loss",
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


class PHALoss(nn.Module):
    """The PHA terms of a model version, from the model's outputs and the batch's labels.

    ``cls_loss`` (cross-entropy on the labelled items, the first ``len(label)`` of the batch; unlabelled items for
    the alignment follow them); ``align_loss`` = ``sum_s w_s InfoNCE_s`` over the aligned stages (weights from the
    version's schedule, set each epoch by :meth:`set_epoch`); with the dictionary ``recon_loss``, ``decor_loss`` and
    ``sparse_loss`` (means over the two modalities). Logged only: ``acc``; ``w_<stage>``, ``nce_<stage>`` and
    ``sim_<stage>`` (mean cosine of positive pairs) per aligned stage; ``cka_<stage>`` (linear CKA of the MS and PAN
    stage features, every two-branch version); ``code_active`` (fraction of non-zero dictionary codes).

    Args:
        align_stages: the aligned stages (indices) of the version.
        align_schedule: ``"progressive"`` (see :func:`progressive_weights`) or equal weights.
        stages: number of stages.
        dictionary: the version has the compensated dictionary.
        two_modalities: the version has both branches (the CKA diagnostics).
        temperature: InfoNCE temperature.
        progressive_width: width (in stages) of the progressive schedule's bump.
    """

    def __init__(self, align_stages: tuple[int, ...], align_schedule: str, stages: int, dictionary: bool,
                 two_modalities: bool, temperature: float = 0.1, progressive_width: float = 0.5):
        super().__init__()
        self.align_stages, self.align_schedule, self.stages = tuple(align_stages), align_schedule, int(stages)
        self.dictionary, self.two_modalities = bool(dictionary), bool(two_modalities)
        self.temperature, self.progressive_width = float(temperature), float(progressive_width)
        self.stage_weights = self.schedule(0, 1)

    @classmethod
    def for_model(cls, model: nn.Module, temperature: float = 0.1, progressive_width: float = 0.5) -> PHALoss:
        """The loss of a :class:`~rswb.models.pha.PHANet` version (its stages, schedule, dictionary, branches)."""
        return cls(model.align_stages, model.align_schedule, model.stages, model.dictionary is not None,
                   len(model.modalities) == 2, temperature, progressive_width)

    def schedule(self, epoch: int, epochs: int) -> dict[int, float]:
        """Alignment weight of each aligned stage at ``epoch`` (0-based) of ``epochs``."""
        if self.align_schedule == "progressive":
            w = progressive_weights(epoch / max(epochs - 1, 1), self.stages, self.progressive_width)
            return {s: float(w[s]) for s in self.align_stages}
        return {s: 1.0 / len(self.align_stages) for s in self.align_stages}

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Set this epoch's stage weights."""
        self.stage_weights = self.schedule(epoch, epochs)

    def forward(self, logits: torch.Tensor, label: torch.Tensor, embed: dict | None = None,
                stage_features: dict | None = None, id: torch.Tensor | None = None,  # noqa: A002 (the batch key)
                **parts: torch.Tensor) -> dict[str, torch.Tensor]:
        """The terms for one batch; ``parts`` are the dictionary's outputs (``deep_*``, ``shared_*``, ...)."""
        n = label.shape[0]
        terms: dict[str, torch.Tensor] = {"cls_loss": F.cross_entropy(logits[:n].float(), label)}
        with torch.no_grad():
            terms["acc"] = (logits[:n].argmax(1) == label).float().mean()
        if self.align_stages:
            total = 0.0
            for s, (a, b) in embed.items():
                nce = cross_modal_info_nce(a, b, self.temperature, id)
                w = self.stage_weights.get(s, 0.0)
                total = total + w * nce
                name = STAGE_NAMES[s]
                terms[f"nce_{name}"] = nce.detach()
                terms[f"w_{name}"] = torch.tensor(w, device=label.device)
                with torch.no_grad():
                    terms[f"sim_{name}"] = F.cosine_similarity(a.float(), b.float(), dim=1).mean()
            terms["align_loss"] = total
        if self.dictionary:
            recon = decor = sparse = 0.0
            for m in ("ms", "pan"):
                recon = recon + 0.5 * reconstruction_loss(parts[f"deep_{m}"], parts[f"shared_{m}"],
                                                          parts[f"specific_{m}"])
                decor = decor + 0.5 * decorrelation_loss(parts[f"shared_{m}"], parts[f"specific_{m}"])
                sparse = sparse + 0.5 * sparsity_loss(parts[f"codes_{m}"])
            terms.update(recon_loss=recon, decor_loss=decor, sparse_loss=sparse)
            with torch.no_grad():
                codes = torch.cat([parts["codes_ms"], parts["codes_pan"]])
                terms["code_active"] = (codes > 0).float().mean()
        if self.two_modalities:
            with torch.no_grad():
                for s in range(self.stages):
                    terms[f"cka_{STAGE_NAMES[s]}"] = linear_cka(stage_features["ms"][s], stage_features["pan"][s])
        return terms
