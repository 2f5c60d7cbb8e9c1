"""Image-text retrieval loss terms of FISVL and KAMCL (docs/methods.md).

FISVL trains with (a) a multi-positive InfoNCE in which every caption of the same image is a positive
(:func:`multi_positive_info_nce`), (b) a scene-affiliation loss classifying each embedding against the other
modality's in-batch scene centres (:func:`affiliation_loss`), (c) a scene-adaptive hardest-negative triplet
(:func:`scene_adaptive_triplet`) and (d) a caption-value-weighted InfoNCE (:func:`value_weighted_info_nce`); KAMCL
adds a MoCo-style InfoNCE against momentum keys and a queue (:func:`momentum_info_nce`) and a soft binary
cross-entropy aligning predicted concepts with knowledge targets (:func:`concept_bce`). Bugs of the public code
avoided here: the hardest negative is mined only among pairs of *other* images (the public code let another caption
of the same image be "the hardest negative"); the scene weights ``exp(beta * epoch)`` stay floats (the public code
cast them to integers, so ``exp(0.3)`` became 1 and ``exp(-0.3)`` became 0); gradients flow through the chosen
negatives (the public code detached them). The momentum encoder's EMA update and the queue's enqueue/dequeue are
handled by the training code, not here: these functions take the keys and the queue as constants. In every
similarity-matrix loss ``sim[i, j]`` is the similarity of image ``i`` and caption ``j`` of a batch of ``B`` pairs
(row ``i`` and column ``i`` are a pair) and ``img_ids[i]`` names the underlying image of pair ``i``; pairs with the
same id are positives of each other. Each loss returns a scalar mean over the batch. :class:`RetrievalLoss` is what
every method's loss module shares (the epoch for two-stage schedules, the logged diagnostics).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rswb.losses.contrastive import _at_least_fp32

__all__ = [
    "RetrievalLoss", "affiliation_loss", "concept_bce", "momentum_info_nce", "multi_positive_info_nce",
    "scene_adaptive_triplet", "value_weighted_info_nce",
]


class RetrievalLoss(nn.Module):
    """What the retrieval losses share: the training schedule position and the logged diagnostics."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch, self.epochs = 0, 1

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Remember the epoch (0-based) of ``epochs``: two-stage schedules and FISVL's weights depend on it."""
        self.epoch, self.epochs = int(epoch), int(epochs)

    def in_stage2(self, share: float) -> bool:
        """Whether the epoch has reached ``share`` of the training (the second stage of a two-stage schedule)."""
        return self.epoch >= int(round(share * self.epochs))

    @staticmethod
    def diagnostics(sim: torch.Tensor, temperature: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """``pos_sim`` (mean similarity of the true pairs, the diagonal) and the learned temperature."""
        with torch.no_grad():
            out = {"pos_sim": sim.diagonal().mean()}
            if temperature is not None:
                out["temperature"] = temperature().detach()
        return out


def _check_temperature(temperature: float | torch.Tensor) -> None:
    """A temperature is a positive float or a one-element tensor (not checked for sign: no device sync)."""
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1:
            raise ValueError(f"temperature must be a scalar, got a tensor of shape {tuple(temperature.shape)}")
    elif not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


def _check_per_pair(x: torch.Tensor, n: int, name: str) -> torch.Tensor:
    """``x`` as a ``[n]`` vector (``ValueError`` if it has another shape)."""
    if x.ndim != 1 or x.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}] for a batch of {n}, got {tuple(x.shape)}")
    return x


def _positive_mask(sim: torch.Tensor, img_ids: torch.Tensor) -> torch.Tensor:
    """``[B, B]`` bool mask of the pairs sharing an image id (diagonal included), after checking the shapes."""
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1] or sim.shape[0] == 0:
        raise ValueError(f"expected a non-empty square [B, B] similarity matrix, got {tuple(sim.shape)}")
    ids = _check_per_pair(img_ids, sim.shape[0], "img_ids").to(sim.device)
    return ids[:, None] == ids[None, :]


def _multi_positive_nce(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Symmetric MIL-NCE of ``[B, B]`` logits: positives pooled in the numerator, every entry in the denominator."""
    pos_logits = logits.masked_fill(~pos, float("-inf"))
    rows = torch.logsumexp(logits, dim=1) - torch.logsumexp(pos_logits, dim=1)
    cols = torch.logsumexp(logits, dim=0) - torch.logsumexp(pos_logits, dim=0)
    return 0.5 * (rows.mean() + cols.mean())


def multi_positive_info_nce(sim: torch.Tensor, img_ids: torch.Tensor,
                            temperature: float | torch.Tensor) -> torch.Tensor:
    """FISVL (a): symmetric InfoNCE in which every pair of the same image is a positive (MIL-NCE form).

    With ``P(i) = {j : img_ids[j] == img_ids[i]}`` (``i`` included) the image-to-text term of row ``i`` is
    ``-log( sum_{j in P(i)} exp(sim_ij / T) / sum_j exp(sim_ij / T) )``, the text-to-image term of column ``j`` the
    same over the rows of that column; the loss is ``1/2 (mean over rows + mean over columns)``. Both sums are
    computed with ``logsumexp``.

    Args:
        sim: ``[B, B]`` image-caption similarities (cosine).
        img_ids: ``[B]`` image identity of each pair.
        temperature: softmax temperature ``T``, a float or a scalar tensor (learnable).
    """
    pos = _positive_mask(sim, img_ids)
    _check_temperature(temperature)
    return _multi_positive_nce(_at_least_fp32(sim) / temperature, pos)


def value_weighted_info_nce(sim: torch.Tensor, img_ids: torch.Tensor, values: torch.Tensor,
                            temperature: float | torch.Tensor) -> torch.Tensor:
    """FISVL (d): :func:`multi_positive_info_nce` with each caption's logits scaled by its value.

    ``logits[:, j] = values[j] * sim[:, j] / T`` is used both in the image-to-text softmax over the columns of a row
    and in the text-to-image softmax over the rows of column ``j``; the rest is the multi-positive form of
    :func:`multi_positive_info_nce`, which this equals exactly when every value is 1. Gradients flow into ``values``
    too (detach them beforehand if they are fixed weights).

    Args:
        sim: ``[B, B]`` image-caption similarities (cosine).
        img_ids: ``[B]`` image identity of each pair.
        values: ``[B]`` positive value of each caption (column).
        temperature: softmax temperature ``T``, a float or a scalar tensor (learnable).
    """
    pos = _positive_mask(sim, img_ids)
    _check_temperature(temperature)
    values = _check_per_pair(values, sim.shape[0], "values")
    if not bool((values > 0).all()):
        raise ValueError("values must all be positive")
    sim = _at_least_fp32(sim)
    return _multi_positive_nce(sim * values.to(sim.device)[None, :] / temperature, pos)


def affiliation_loss(img: torch.Tensor, txt: torch.Tensor, labels: torch.Tensor,
                     temperature: float | torch.Tensor = 0.07) -> torch.Tensor:
    """FISVL (b): classify each embedding against the other modality's in-batch scene centres.

    For every scene class ``c`` present in the batch, ``centre_c`` of a modality is the L2-normalised mean of that
    modality's (normalised) embeddings labelled ``c``; no fixed number of classes is needed. Image ``i`` is
    classified against the *text* centres (``logits = img_i @ centres_txt^T / T``, cross-entropy to its own class)
    and caption ``i`` against the *image* centres; the loss is the mean of the two cross-entropies. The centres are
    not detached: the gradient also moves each centre (hence the members of a class) towards the other modality's
    samples of that class, which is the affiliation the loss is meant to build. A batch with a single class gives 0.
    The result does not depend on the order of the batch.

    Args:
        img: ``[B, D]`` image embeddings (need not be normalised).
        txt: ``[B, D]`` text embeddings of the same pairs.
        labels: ``[B]`` integer scene class of each pair.
        temperature: softmax temperature ``T``, a float or a scalar tensor.
    """
    if img.shape != txt.shape or img.ndim != 2 or img.shape[0] == 0:
        raise ValueError(f"expected two non-empty [B, D] tensors of one shape, got {tuple(img.shape)} "
                         f"and {tuple(txt.shape)}")
    labels = _check_per_pair(labels, img.shape[0], "labels").to(img.device)
    _check_temperature(temperature)
    img = F.normalize(_at_least_fp32(img), dim=1)
    txt = F.normalize(_at_least_fp32(txt), dim=1).to(img.dtype)
    _, target = torch.unique(labels, return_inverse=True)  # class index among the classes present
    member = F.one_hot(target).to(img.dtype)  # [B, C]
    counts = member.sum(dim=0)[:, None]
    centres_img = F.normalize(member.t() @ img / counts, dim=1)
    centres_txt = F.normalize(member.t() @ txt / counts, dim=1)
    img_loss = F.cross_entropy(img @ centres_txt.t() / temperature, target)
    txt_loss = F.cross_entropy(txt @ centres_img.t() / temperature, target)
    return 0.5 * (img_loss + txt_loss)


def scene_adaptive_triplet(sim: torch.Tensor, img_ids: torch.Tensor, labels: torch.Tensor, epoch: float,
                           beta1: float = 0.1, beta2: float = -0.1, margin: float = 0.2) -> torch.Tensor:
    """FISVL (c): hardest-negative triplet whose negative is reweighted by scene agreement and epoch.

    For image row ``i`` the hardest negative caption is ``j* = argmax_j sim[i, j]`` over the columns of *other*
    images (``img_ids[j] != img_ids[i]``; captions of the same image are never negatives). Its similarity is scaled
    by the float weight ``w = exp(beta1 * epoch)`` when its scene ``labels[j*]`` differs from ``labels[i]`` and
    ``w = exp(beta2 * epoch)`` when it is the same scene, giving ``cost_i = relu(margin - sim[i, i] + w sim[i, j*])``.
    The negative is chosen on the raw similarity, then weighted. Caption column ``j`` likewise takes its hardest
    negative image ``i*`` over the rows of other images, weighted by ``labels[i*]`` against ``labels[j]``. The
    positive is always the diagonal pair ``sim[i, i]`` (not, e.g., the weakest of several captions of one image).
    A row or column without any negative (every pair in the batch is the same image) contributes 0. The loss is the
    mean over the batch of ``cost_i2t + cost_t2i``; gradients flow through the positive and the chosen negatives.

    Args:
        sim: ``[B, B]`` image-caption similarities (cosine).
        img_ids: ``[B]`` image identity of each pair.
        labels: ``[B]`` integer scene class of each pair (image ``i`` and caption ``i`` share it).
        epoch: the current epoch (or fractional epoch).
        beta1: growth rate of the weight of a negative from another scene.
        beta2: growth rate of the weight of a negative from the same scene.
        margin: the hinge margin.
    """
    pos = _positive_mask(sim, img_ids)
    n = sim.shape[0]
    if n < 2:
        raise ValueError("a hardest-negative loss needs at least two pairs in the batch")
    labels = _check_per_pair(labels, n, "labels").to(sim.device)
    sim = _at_least_fp32(sim)
    w_other, w_same = math.exp(beta1 * float(epoch)), math.exp(beta2 * float(epoch))
    diag = sim.diagonal()
    neg = sim.masked_fill(pos, float("-inf"))

    def cost(hardest: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        has_negative = torch.isfinite(hardest)
        weight = torch.where(labels[index] == labels, sim.new_tensor(w_same), sim.new_tensor(w_other))
        hinge = F.relu(margin - diag + weight * torch.where(has_negative, hardest, 0.0))
        return torch.where(has_negative, hinge, 0.0)

    hardest_caption, caption_index = neg.max(dim=1)  # per image row
    hardest_image, image_index = neg.max(dim=0)  # per caption column
    return (cost(hardest_caption, caption_index) + cost(hardest_image, image_index)).mean()


def momentum_info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float | torch.Tensor = 0.07,
                      ids: torch.Tensor | None = None, queue_ids: torch.Tensor | None = None,
                      groups: torch.Tensor | None = None, queue_groups: torch.Tensor | None = None) -> torch.Tensor:
    """KAMCL's MoCo-style InfoNCE of one modality's queries against the other modality's momentum keys.

    All inputs are L2-normalised here; ``k`` and ``queue`` come from the momentum encoder and are detached (only
    ``q`` and ``temperature`` get gradients). The logits of query ``i`` are
    ``[q_i . k_i, q_i . k_j (j != i), q_i . queue_m] / T`` with cross-entropy to position 0 (its own key). With
    ``ids`` and ``queue_ids``, in-batch keys ``j != i`` and queue entries with the same id as ``q_i`` are other views
    of the same image and are left out of the denominator; the positive ``k_i`` always stays. Returns the mean over
    the batch.

    Args:
        q: ``[B, D]`` query embeddings.
        k: ``[B, D]`` key embeddings of the other modality; row ``i`` is the positive of ``q_i``.
        queue: ``[K, D]`` older keys of the other modality (``K`` may be 0).
        temperature: softmax temperature ``T``, a float or a scalar tensor.
        ids: optional ``[B]`` image identity of each pair.
        queue_ids: ``[K]`` image identity of each queue entry; required with ``ids`` when ``K > 0``, and only
            allowed together with ``ids``.
        groups: optional ``[B]`` text group of each pair (identical caption strings share a group; needs ``ids``):
            keys of the same group are positives too, pooled in the numerator (MIL-NCE), so a caption that several
            images share is not pushed away from any of them. Other views of the same image stay left out.
        queue_groups: ``[K]`` text group of each queue entry (with ``groups`` when ``K > 0``).
    """
    if groups is not None and ids is None:
        raise ValueError("groups need ids (the image identity of each pair)")
    if q.shape != k.shape or q.ndim != 2 or q.shape[0] == 0:
        raise ValueError(f"expected q and k as non-empty [B, D] tensors of one shape, got {tuple(q.shape)} "
                         f"and {tuple(k.shape)}")
    if queue.ndim != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(f"expected a [K, {q.shape[1]}] queue, got {tuple(queue.shape)}")
    _check_temperature(temperature)
    n, size = q.shape[0], queue.shape[0]
    if queue_ids is not None and ids is None:
        raise ValueError("queue_ids given without ids")
    if groups is not None and size > 0 and (queue_ids is None or queue_groups is None):
        raise ValueError("a non-empty queue needs queue_ids and queue_groups with groups")
    if ids is not None and queue_ids is None and size > 0:
        raise ValueError("ids given without queue_ids for a non-empty queue: the queue could not be masked")
    q = F.normalize(_at_least_fp32(q), dim=1)
    if groups is None:
        return _own_key_info_nce(q, k, queue, temperature, ids, queue_ids)
    keys = torch.cat([F.normalize(_at_least_fp32(k.detach()), dim=1).to(q.dtype),
                      F.normalize(_at_least_fp32(queue.detach()), dim=1).to(q.dtype)])
    logits = q @ keys.t() / temperature  # [B, B + K]: the in-batch keys, then the queue
    positive = torch.zeros_like(logits, dtype=torch.bool)
    positive[:, :n] = torch.eye(n, dtype=torch.bool, device=q.device)  # the own key k_i
    kept = logits
    if ids is not None:
        ids = _check_per_pair(ids, n, "ids").to(q.device)
        all_ids = ids
        if groups is not None:
            groups = _check_per_pair(groups, n, "groups").to(q.device)
            all_groups = groups
        if size > 0:
            all_ids = torch.cat([ids, _check_per_pair(queue_ids, size, "queue_ids").to(q.device)])
            if groups is not None:
                all_groups = torch.cat([groups, _check_per_pair(queue_groups, size, "queue_groups").to(q.device)])
        if groups is not None:
            positive = positive | (groups[:, None] == all_groups[None, :])
        excluded = (ids[:, None] == all_ids[None, :]) & ~positive  # other views of the same image: neither
        kept = logits.masked_fill(excluded, float("-inf"))
    # -log( sum of the positives / sum of the kept entries ) per query, both sums by logsumexp.
    return (torch.logsumexp(kept, 1) - torch.logsumexp(logits.masked_fill(~positive, float("-inf")), 1)).mean()


def _own_key_info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float | torch.Tensor,
                      ids: torch.Tensor | None, queue_ids: torch.Tensor | None) -> torch.Tensor:
    """:func:`momentum_info_nce` without groups: cross-entropy to the own key, in the operation order of the runs.

    The same value as the grouped form with one positive per row, but computed as the recorded KAMCL runs computed
    it: a float32 change of 5e-7 in this loss moved a real-data KAMCL run's i2t R@5 by 6 points
    (``notebooks/baselines/real.yaml``), so the order of operations stays the one the baselines were measured with.
    """
    n, size = q.shape[0], queue.shape[0]
    k = F.normalize(_at_least_fp32(k.detach()), dim=1).to(q.dtype)
    queue = F.normalize(_at_least_fp32(queue.detach()), dim=1).to(q.dtype)
    batch_logits = q @ k.t() / temperature  # [B, B]
    queue_logits = q @ queue.t() / temperature  # [B, K]
    if ids is not None:
        ids = _check_per_pair(ids, n, "ids").to(q.device)
        # The diagonal is masked too but dropped below: the positive is computed on its own and always kept.
        batch_logits = batch_logits.masked_fill(ids[:, None] == ids[None, :], float("-inf"))
        if size > 0:
            queue_ids = _check_per_pair(queue_ids, size, "queue_ids").to(q.device)
            queue_logits = queue_logits.masked_fill(ids[:, None] == queue_ids[None, :], float("-inf"))
    positive = (q * k).sum(dim=1, keepdim=True) / temperature
    off_diagonal = batch_logits.masked_select(~torch.eye(n, dtype=torch.bool, device=q.device)).view(n, n - 1)
    logits = torch.cat([positive, off_diagonal, queue_logits], dim=1)
    return F.cross_entropy(logits, torch.zeros(n, dtype=torch.long, device=q.device))


def concept_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """KAMCL's knowledge alignment: binary cross-entropy of concept logits against soft targets.

    ``mean_{b, c} -[t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))]`` over all ``B x K`` entries, via
    :func:`torch.nn.functional.binary_cross_entropy_with_logits`.

    Args:
        logits: ``[B, K]`` predicted concept logits.
        targets: ``[B, K]`` soft targets in ``[0, 1]``.
    """
    if logits.shape != targets.shape or logits.ndim != 2:
        raise ValueError(f"expected logits and targets of one [B, K] shape, got {tuple(logits.shape)} "
                         f"and {tuple(targets.shape)}")
    if not bool(((targets >= 0) & (targets <= 1)).all()):
        raise ValueError("targets must lie in [0, 1]")
    logits = _at_least_fp32(logits)
    return F.binary_cross_entropy_with_logits(logits, targets.to(device=logits.device, dtype=logits.dtype))
