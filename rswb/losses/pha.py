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
    "PHALoss", "PretrainLoss", "cross_modal_info_nce", "decorrelation_loss", "linear_cka", "overlap_targets",
    "progressive_weights", "pseudo_label_terms", "reconstruction_loss", "soft_info_nce", "sparsity_loss",
]


def cross_modal_info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1,
                         ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between the MS and PAN embeddings of the same samples.

    :func:`rswb.losses.contrastive.symmetric_info_nce` under PHA's name: row i of ``a`` and of ``b`` are one pixel
    seen by the two modalities; ``ids`` (pixel identities) keep a pixel drawn twice in a batch (few-shot epochs
    repeat their few pixels) from being pushed away from its own twin.
    """
    return symmetric_info_nce(a, b, temperature, ids)


def soft_info_nce(a: torch.Tensor, b: torch.Tensor, targets: torch.Tensor | None = None,
                  temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE with soft targets: cross-entropy of ``softmax_j(cos(a_i, b_j) / T)`` against ``targets``.

    ``targets[i, j] >= 0`` says how much ``b_j`` is a positive of ``a_i`` (each row and column is normalised to sum
    1 inside); ``None`` is the identity (plain InfoNCE: only the item itself). Pre-training on overlapping pixel
    patches gives neighbours a share of the target in proportion to their overlap (:func:`overlap_targets`), so a
    patch is not pushed away from the one next to it that shows mostly the same ground (a *soft* negative); an
    image drawn twice in one batch is a full positive of its twin.
    ``loss = 1/2 [ mean_i -sum_j t_ij log p_ij + mean_j -sum_i t'_ji log p'_ji ]`` (a->b and b->a).
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two [B, D] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    n = a.shape[0]
    if targets is None:
        targets = torch.eye(n, device=a.device)
    if targets.shape != (n, n) or bool((targets < 0).any()) or bool((targets.diagonal() <= 0).any()):
        raise ValueError(f"targets must be [{n}, {n}], non-negative, with a positive diagonal")
    logits = F.normalize(a.float(), dim=1) @ F.normalize(b.float(), dim=1).t() / temperature
    t = targets.float()
    ab = -(t / t.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
    ba = -(t.t() / t.sum(0).unsqueeze(1) * F.log_softmax(logits.t(), 1)).sum(1).mean()
    return 0.5 * (ab + ba)


def overlap_targets(rows: torch.Tensor, cols: torch.Tensor, patch: int) -> torch.Tensor:
    """Shared area of every two ``patch x patch`` patches centred on ``(rows, cols)``, as a fraction: ``[B, B]``.

    ``t_ij = max(0, P - |r_i - r_j|) max(0, P - |c_i - c_j|) / P^2``: 1 on the diagonal (and for a pixel drawn twice),
    0 for patches that do not touch. The soft targets of :func:`soft_info_nce` in pixel-mode pre-training.
    """
    if rows.shape != cols.shape or rows.ndim != 1 or patch < 1:
        raise ValueError(f"need rows and cols of one shape [B] and patch >= 1, got {tuple(rows.shape)}, "
                         f"{tuple(cols.shape)}, {patch}")
    dr = (rows[:, None] - rows[None, :]).abs().float()
    dc = (cols[:, None] - cols[None, :]).abs().float()
    return (patch - dr).clamp_min(0) * (patch - dc).clamp_min(0) / float(patch * patch)


def pseudo_label_terms(logits: torch.Tensor, threshold: float) -> dict[str, torch.Tensor]:
    """Self-training on unlabelled items: cross-entropy towards each confident item's own predicted class.

    ``pseudo_loss = sum_i [max_c p_ic >= threshold] CE(logits_i, argmax_c p_ic) / N`` over the ``N`` unlabelled
    items (divided by all of them, as FixMatch does, so a few confident items weigh little early on); the targets
    are detached. ``pseudo_share`` (logged only) is the share of items over the threshold.
    """
    if logits.ndim != 2 or logits.shape[0] < 1 or not 0 < threshold < 1:
        raise ValueError(f"need [N, C] logits with N >= 1 and a threshold in (0, 1), got {tuple(logits.shape)}, "
                         f"{threshold}")
    with torch.no_grad():
        conf, target = F.softmax(logits.float(), 1).max(1)
        keep = (conf >= threshold).float()
    ce = F.cross_entropy(logits.float(), target, reduction="none")
    return {"pseudo_loss": (ce * keep).sum() / logits.shape[0], "pseudo_share": keep.mean()}


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
    stage features, every two-branch version); ``code_active`` (fraction of non-zero dictionary codes). With
    ``pseudo_threshold`` > 0 (the self-training ablation) also ``pseudo_loss`` and ``pseudo_share``
    (:func:`pseudo_label_terms`).

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
                 two_modalities: bool, temperature: float = 0.1, progressive_width: float = 0.5,
                 pseudo_threshold: float = 0.0):
        super().__init__()
        self.pseudo_threshold = float(pseudo_threshold)
        self.align_stages, self.align_schedule, self.stages = tuple(align_stages), align_schedule, int(stages)
        self.dictionary, self.two_modalities = bool(dictionary), bool(two_modalities)
        self.temperature, self.progressive_width = float(temperature), float(progressive_width)
        self.stage_weights = self.schedule(0, 1)

    @classmethod
    def for_model(cls, model: nn.Module, temperature: float = 0.1, progressive_width: float = 0.5) -> PHALoss:
        """The loss of a :class:`~rswb.models.pha.PHANet` version (its stages, schedule, dictionary, branches)."""
        return cls(model.align_stages, model.align_schedule, model.stages, model.dictionary is not None,
                   len(model.modalities) == 2, temperature, progressive_width,
                   model.pseudo_threshold)

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
        if self.pseudo_threshold > 0 and logits.shape[0] > n:
            terms.update(pseudo_label_terms(logits[n:], self.pseudo_threshold))
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


class PretrainLoss(nn.Module):
    """The self-supervised pre-training terms of the branches (``pha_v6``; :mod:`rswb.tasks.pha.pretrain`).

    From the :class:`~rswb.models.pha.PretrainHeads` embeddings of two views of the same unlabelled items:

    * ``within_loss``: :func:`soft_info_nce` between the two views' *specific* embeddings of each modality (mean over
      the modalities): what a modality sees of a place must survive a flip / rotation (and gain change);
    * ``cross_loss`` (objective ``"cross"``): :func:`soft_info_nce` between the *shared* MS embedding of one view and
      the shared PAN embedding of the other, both ways round: the two modalities of a place agree;
    * ``orth_loss`` (``"cross"``): :func:`decorrelation_loss` between each modality's shared and specific embedding
      (mean over the modalities), so the specific head keeps what the shared one does not.

    Objective ``"within"`` (the honest control) keeps only ``within_loss``: the same pre-training with no
    cross-modal term. Logged only: ``sim_cross`` (mean cosine of the shared MS/PAN embeddings of the same item).

    Args:
        objective: ``"within"`` or ``"cross"``.
        temperature: InfoNCE temperature.
    """

    def __init__(self, objective: str = "cross", temperature: float = 0.2):
        super().__init__()
        if objective not in ("within", "cross"):
            raise ValueError(f"objective must be 'within' or 'cross', got {objective!r}")
        self.objective, self.temperature = objective, float(temperature)

    def forward(self, view1: dict[str, torch.Tensor], view2: dict[str, torch.Tensor],
                targets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The terms for one batch: ``view1``/``view2`` are the heads' outputs of the two views."""
        mods = [k.removeprefix("specific_") for k in view1 if k.startswith("specific_")]
        t = self.temperature
        terms = {"within_loss": sum(soft_info_nce(view1[f"specific_{m}"], view2[f"specific_{m}"], targets, t)
                                    for m in mods) / len(mods)}
        if self.objective == "cross":
            terms["cross_loss"] = 0.5 * (soft_info_nce(view1["shared_ms"], view2["shared_pan"], targets, t)
                                         + soft_info_nce(view2["shared_ms"], view1["shared_pan"], targets, t))
            terms["orth_loss"] = sum(decorrelation_loss(v[f"shared_{m}"], v[f"specific_{m}"])
                                     for v in (view1, view2) for m in mods) / (2 * len(mods))
            with torch.no_grad():
                terms["sim_cross"] = F.cosine_similarity(view1["shared_ms"].float(), view1["shared_pan"].float(),
                                                         dim=1).mean()
        return terms
