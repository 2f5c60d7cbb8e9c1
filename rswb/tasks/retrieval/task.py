"""How an image-text retrieval method is trained and scored: :class:`RetrievalTask`.

Training is the method's loss over the model's outputs (``loss(**model(batch), **batch)``, a dict of named terms;
:mod:`rswb.losses.dual`, :mod:`rswb.losses.fisvl`, :mod:`rswb.losses.kamcl`). Evaluation encodes every image and every
caption of a split once and scores the whole similarity matrix (:func:`rswb.metrics.retrieval_metrics_from_embeddings`)
under the task's tie rule, with the other rules beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from rswb.data.image_text import RetrievalSplit
from rswb.engine.device import autocast, to_device
from rswb.engine.task import EvalContext, Task
from rswb.metrics.retrieval import TIE_RULES, retrieval_metrics_from_embeddings
from rswb.utils import eval_mode

__all__ = ["RetrievalTask"]

# Checkpoints written before the losses held their own state kept it on the task: read them under the new names.
_LEGACY_PREFIXES = {"temperature.": "loss.temperature.", "key.": "loss.key.", "queue_img.": "loss.queue_img.",
                    "queue_txt.": "loss.queue_txt."}


class RetrievalTask(Task):
    """A retrieval model, its method's loss, and evaluation over whole splits.

    Args:
        model: a :class:`~rswb.models.retrieval.RetrievalNet` (any method).
        loss: the method's loss module (:func:`rswb.registry.create_loss`); ``*_loss`` terms are weighted by
            ``loss_weights``, the others only logged.
        loss_weights: weights of the ``*_loss`` terms (missing: 1).
        ties: the tie rule of the headline numbers and of validation selection (:data:`TIE_RULES`).
        info: method / version / data for the run registry.
        encoder_lr_mult: learning-rate multiplier of the encoders inside the model (fine-tuning profiles).
    """

    monitor = "mR"
    monitor_mode = "max"

    def __init__(self, model: nn.Module, loss: nn.Module, loss_weights: dict[str, float] | None = None,
                 ties: str = "expected", info: dict[str, str] | None = None, encoder_lr_mult: float = 1.0):
        super().__init__(model, loss_weights, info)
        if ties not in TIE_RULES:
            raise ValueError(f"unknown tie rule ties={ties!r}; use one of {', '.join(TIE_RULES)}")
        self.loss = loss
        self.ties = str(ties)
        self.encoder_lr_mult = float(encoder_lr_mult)

    def param_groups(self) -> list[dict[str, Any]]:
        """Every trainable parameter; the encoders inside the model at ``encoder_lr_mult`` x the learning rate."""
        params = [p for p in self.parameters() if p.requires_grad]
        if self.encoder_lr_mult == 1.0:
            return [{"params": params}]
        encoders = {id(p) for m in (self.model.backbone, self.model.text_encoder) if m is not None
                    for p in m.parameters()}
        groups = [{"params": [p for p in params if id(p) not in encoders]},
                  {"params": [p for p in params if id(p) in encoders], "lr_mult": self.encoder_lr_mult}]
        return [g for g in groups if g["params"]]

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Tell the loss the epoch: FISVL's weights and both methods' two-stage schedules depend on it."""
        self.loss.set_epoch(epoch, epochs)

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The method's named terms for one batch of image-caption pairs."""
        return self.loss(**self.model(batch), **batch)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Load weights; keys of older checkpoints (loss state on the task itself) are renamed first."""
        renamed = {}
        for k, v in state_dict.items():
            prefix = next((p for p in _LEGACY_PREFIXES if k.startswith(p)), None)
            renamed[_LEGACY_PREFIXES[prefix] + k[len(prefix):] if prefix else k] = v
        return super().load_state_dict(renamed, strict=strict, assign=assign)

    @torch.no_grad()
    def embeddings(self, split: RetrievalSplit, ctx: EvalContext | None = None) -> dict[str, torch.Tensor]:
        """Normalised embeddings of every image ``[N_i, D]`` and caption ``[N_c, D]`` of a split (CPU, float32)."""
        if ctx is None:
            ctx = EvalContext(next(self.parameters()).device)
        out: dict[str, list[torch.Tensor]] = {"image": [], "text": []}
        bs = ctx.batch_size
        show = ctx.progress and ctx.dist.is_main
        with eval_mode(self):
            for side, batches, n in (("image", split.image_batches(bs), split.num_images),
                                     ("text", split.caption_batches(bs), len(split))):
                encode = self.model.encode_image if side == "image" else self.model.encode_text
                for b in tqdm(batches, total=-(-n // bs), desc=f"{ctx.desc} {side}s", leave=False, disable=not show):
                    with autocast(ctx.device, ctx.precision):
                        out[side].append(encode(to_device(b, ctx.device)).float().cpu())
        return {k: torch.cat(v) for k, v in out.items()}

    def protocol(self) -> dict[str, str]:
        """The tie rule of the headline numbers (recorded in ``metrics.json`` and every ``metrics.jsonl`` line)."""
        return {"ties": self.ties}

    def evaluate(self, dataset: RetrievalSplit, ctx: EvalContext) -> dict[str, float]:
        """R@1/5/10 both ways, mR and rank statistics of every image against every caption of the split.

        The plain keys (``i2t_R@1``, ..., ``mR``; the one validation selects on) follow the task's ``ties`` rule;
        the six recalls and mR under each other rule come beside them as ``{rule}_i2t_R@1``, ..., ``{rule}_mR``,
        so one run shows the optimistic-pessimistic range and the published-protocol number at once.
        """
        emb = self.embeddings(dataset, ctx)
        out: dict[str, float] = {}
        for rule in (self.ties, *(r for r in TIE_RULES if r != self.ties)):
            m = retrieval_metrics_from_embeddings(emb["image"], emb["text"], dataset.caption_to_image, ties=rule)
            if rule == self.ties:
                out.update(m)
            else:
                out.update({f"{rule}_{k}": v for k, v in m.items() if "_R@" in k or k == "mR"})
        return out

    def collate(self, samples: Any) -> Any:
        """Batches come whole from :meth:`RetrievalSplit.__getitems__`: passed through."""
        return samples
