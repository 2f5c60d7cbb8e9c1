"""KAMCL's loss (``docs/methods.md``): triplet + momentum contrast, then knowledge alignment.

``triplet_loss`` (hardest negative, as VSE++) and ``moco_loss`` (InfoNCE of each side's embedding against the other
side's momentum keys and queue, at a fixed temperature) from the start; from ``knowledge_stage`` of the epochs
``concept_loss`` (BCE of both concept heads against the image's tag targets; 0 before, and absent without a tag
vocabulary).

The momentum key encoder (an EMA copy of the **whole** model, every parameter: the public code's zip stopped at the
shorter parameter list) and the two queues are training state, so they live here: each training step first moves
the key encoder one EMA step, then computes the batch's keys with it (from the same inputs as the model), uses the
queues as they were, and finally pushes the keys.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rswb.losses.contrastive import hardest_negative_triplet
from rswb.losses.retrieval import RetrievalLoss, concept_bce, momentum_info_nce
from rswb.models.momentum import FeatureQueue, MomentumEncoder
from rswb.registry import register_loss

__all__ = ["KAMCLLoss", "kamcl"]


class KAMCLLoss(RetrievalLoss):
    """KAMCL's terms and momentum state (see the module docstring).

    Args:
        model: the online model (copied into the key encoder; its embeddings' size sizes the queues).
        ema_momentum: EMA momentum of the key encoder.
        queue_size: keys per modality queue (0: in-batch keys only).
        temperature: the fixed InfoNCE temperature.
        margin: hinge margin of the triplet term.
        knowledge_stage: share of the epochs before knowledge alignment starts.
        duplicate_captions: batches carry ``text_group`` (identical caption strings share one): keys of the same
            text group are positives of the momentum InfoNCE, and neither term uses them as negatives.
    """

    def __init__(self, model: nn.Module, ema_momentum: float = 0.995, queue_size: int = 8000,
                 temperature: float = 0.07, margin: float = 0.2, knowledge_stage: float = 0.5,
                 duplicate_captions: bool = False):
        super().__init__()
        self.key = MomentumEncoder(model, ema_momentum)
        self.online = [model]  # a list, so the online model is not registered (and saved) a second time here
        size = max(1, int(queue_size))
        self.duplicate_captions = bool(duplicate_captions)
        columns = 2 if self.duplicate_captions else 1  # queue ids: image (and text group)
        self.queue_img = FeatureQueue(size, model.embed_dim, columns)
        self.queue_txt = FeatureQueue(size, model.embed_dim, columns)
        self.use_queue = queue_size > 0
        self.temperature, self.margin, self.knowledge_stage = float(temperature), float(margin), float(knowledge_stage)

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor, image_id: torch.Tensor,
                image_concepts: torch.Tensor | None = None, text_concepts: torch.Tensor | None = None,
                tag_targets: torch.Tensor | None = None, text_group: torch.Tensor | None = None,
                **inputs: Any) -> dict[str, torch.Tensor]:
        """Terms for a batch of pairs; ``inputs`` are the rest of the batch (the model's inputs for the keys).

        Raises:
            ValueError: ``duplicate_captions`` without ``text_group`` in the batch.
        """
        if self.duplicate_captions and text_group is None:
            raise ValueError("KAMCL with duplicate_captions needs batches with text_group (the training split's "
                             "text group of each caption)")
        if self.training:
            self.key.update(self.online[0])  # MoCo: move the key encoder before computing this step's keys
        keys = self.key(inputs)
        ids = torch.stack([image_id, text_group.to(image_id)], 1) if self.duplicate_captions else image_id
        q_img, qid_img = self.queue_img.contents() if self.use_queue else (keys["image_emb"][:0], ids[:0])
        q_txt, qid_txt = self.queue_txt.contents() if self.use_queue else (keys["text_emb"][:0], ids[:0])
        t = self.temperature
        sim = image_emb @ text_emb.t()
        if self.duplicate_captions:  # column 0: the image, column 1: the text group
            moco = 0.5 * (momentum_info_nce(image_emb, keys["text_emb"], q_txt, t, ids[:, 0], qid_txt[:, 0],
                                            ids[:, 1], qid_txt[:, 1])
                          + momentum_info_nce(text_emb, keys["image_emb"], q_img, t, ids[:, 0], qid_img[:, 0],
                                              ids[:, 1], qid_img[:, 1]))
        else:
            moco = 0.5 * (momentum_info_nce(image_emb, keys["text_emb"], q_txt, t, ids, qid_txt)
                          + momentum_info_nce(text_emb, keys["image_emb"], q_img, t, ids, qid_img))
        terms = {"triplet_loss": hardest_negative_triplet(sim, self.margin, ids), "moco_loss": moco}
        if image_concepts is not None:
            terms["concept_loss"] = (0.5 * (concept_bce(image_concepts, tag_targets)
                                            + concept_bce(text_concepts, tag_targets))
                                     if self.in_stage2(self.knowledge_stage) else sim.new_zeros(()))
        if self.training and self.use_queue:
            self.queue_img.push(keys["image_emb"].float(), ids)
            self.queue_txt.push(keys["text_emb"].float(), ids)
        return {**terms, **self.diagnostics(sim)}


@register_loss
def kamcl(model: nn.Module, ema_momentum: float = 0.995, queue_size: int = 8000, temperature: float = 0.07,
          margin: float = 0.2, knowledge_stage: float = 0.5, duplicate_captions: bool = False) -> KAMCLLoss:
    """KAMCL's loss for ``model`` (arguments as :class:`KAMCLLoss`)."""
    return KAMCLLoss(model, ema_momentum, queue_size, temperature, margin, knowledge_stage, duplicate_captions)
