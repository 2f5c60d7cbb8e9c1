"""How a deep hashing method is trained and scored: :class:`HashTask` (DHCL).

Training is the loss over the model's outputs (``loss(**model(batch), **batch)``: Proxy Anchor, classification,
quantisation; :mod:`rswb.losses.hashing`), with the proxies at a higher learning rate. Evaluation binarises the codes
of the query set, which is also the database, and scores leave-one-out Hamming ranking (each query excluded by its
index) with and without the semantic cue (:func:`rswb.metrics.hashing.hash_metrics`), plus DHCL's own "MAP@K" on
the same codes (:func:`rswb.metrics.legacy.dhcl_map_at_k`) so that the column can stand beside the published table.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rswb.engine.task import Task
from rswb.metrics.hashing import hash_metrics
from rswb.metrics.legacy import dhcl_map_at_k
from rswb.models.hashing import cue_bits

__all__ = ["HashTask", "mix_inputs"]


# The batch entries a model reads as its input (cached pooled features, cached cut activations and their taps, images).
_INPUTS = ("features", "cut", "image")


def mix_inputs(batch: dict[str, Any], lam: float, perm: torch.Tensor) -> dict[str, Any]:
    """The batch with each input ``x`` (and each tap map) replaced by ``lam x + (1 - lam) x[perm]``; labels kept."""
    out = dict(batch)
    for key in _INPUTS:
        if key in batch:
            out[key] = lam * batch[key] + (1.0 - lam) * batch[key][perm]
    if batch.get("taps"):
        out["taps"] = {k: lam * m + (1.0 - lam) * m[perm] for k, m in batch["taps"].items()}
    return out


class HashTask(Task):
    """DHCL training and leave-one-out evaluation (query set = database).

    Args:
        model: a :class:`~rswb.models.hashing.DHCL`.
        loss: its :class:`~rswb.losses.hashing.DHCLLoss` (holds the class proxies).
        weights: weights of ``proxy_loss``, ``cls_loss``, ``quant_loss``.
        proxy_lr_mult: learning-rate multiplier of the proxies.
        topk: the K of mAP@K and P@K (the monitored ``mAP@K``).
        info: method / version / data for the run registry.
        mixup: mixup of the network's input (Zhang et al. 2018): the ``a`` of ``lam ~ Beta(a, a)`` (0: none). A
            training batch is replaced by ``lam x + (1 - lam) x[perm]`` (its cached features, cut activations or
            images: whatever the model reads) and every loss term by ``lam L(y) + (1 - lam) L(y[perm])``.
    """

    monitor = "mAP@20"
    monitor_mode = "max"

    def __init__(self, model: nn.Module, loss: nn.Module, weights: dict[str, float], proxy_lr_mult: float = 100.0,
                 topk: int = 20, info: dict[str, str] | None = None, mixup: float = 0.0):
        super().__init__(model, weights, info)
        self.loss = loss
        self.proxy_lr_mult, self.topk = float(proxy_lr_mult), int(topk)
        self.monitor = f"mAP@{self.topk}"
        if mixup < 0:
            raise ValueError(f"mixup must be >= 0, got {mixup}")
        self.mixup = float(mixup)

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``proxy_loss``, ``cls_loss``, ``quant_loss`` and the classifier's training accuracy.

        With teacher targets in the batch also ``distill_loss``; with ``mixup`` every term is mixed as the inputs were.
        """
        if self.mixup <= 0:
            return self.loss(**self.model(batch), **batch)
        lam = float(torch.distributions.Beta(self.mixup, self.mixup).sample())
        perm = torch.randperm(len(batch["label"])).to(batch["label"].device)
        out = self.model(mix_inputs(batch, lam, perm))
        own = self.loss(**out, **batch)
        swapped = {k: batch[k][perm] for k in ("label", "soft_target") if k in batch}  # the partners' targets
        other = self.loss(**out, **{**batch, **swapped})
        return {k: lam * own[k] + (1.0 - lam) * other[k] for k in own}

    def param_groups(self) -> list[dict[str, Any]]:
        """The network at the base lr, the proxies at ``proxy_lr_mult`` x (no weight decay on the proxies)."""
        net = [p for p in self.model.parameters() if p.requires_grad]
        return [{"params": net}, {"params": [self.loss.proxies], "lr_mult": self.proxy_lr_mult, "weight_decay": 0.0}]

    def predict(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Binary codes with and without the cue, the predicted class and the label."""
        enc = self.model.encode(batch, cue=True)
        return {"code": enc["code"], "bits": enc["bits"], "pred": enc["pred"], "label": batch["label"]}

    def metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        """mAP@K, P@K, mAP@all, P@r2, R@r2 of the codes, the same without cue, DHCL's MAP@K, class accuracy.

        Also the code length as stored: ``hash_bits`` (K), ``cue_bits`` (c = ceil(log2 C), 0 without the cue) and
        ``code_bits`` (K + c): a "32-bit" DHCL code on 21 classes is 32 + 5 bits.
        """
        labels = outputs["label"].numpy()
        k = self.topk
        main = outputs["code"] if self.model.cue else outputs["bits"]
        res = hash_metrics(main.numpy(), main.numpy(), labels, labels, topk=(k,), radius=2, exclude_self=True)
        nocue = hash_metrics(outputs["bits"].numpy(), outputs["bits"].numpy(), labels, labels, topk=(k,),
                             radius=2, exclude_self=True)
        res.update({f"{key}_nocue": v for key, v in nocue.items()})
        res[f"dhcl_MAP@{k}"] = dhcl_map_at_k(main, labels, k)
        res["class_acc"] = float((outputs["pred"].numpy() == labels).mean())
        # What a code stores: K hash bits plus, with the cue, ceil(log2 C) class bits. The ranking code repeats each
        # class bit K + 1 times (class first, then Hamming) but holds no more information than K + c bits.
        res["hash_bits"] = self.model.bits
        res["cue_bits"] = cue_bits(self.model.num_classes) if self.model.cue else 0
        res["code_bits"] = res["hash_bits"] + res["cue_bits"]
        return res
