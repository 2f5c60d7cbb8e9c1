"""DHCL: deep hashing with the predicted class as a semantic cue (docs/methods.md, DHCL).

``backbone -> global pooling -> linear hash layer (K bits, tanh relaxation) -> classification head on the code``.
At evaluation the code is ``sign(h)`` and the **semantic cue** is appended: the predicted class index written in
binary (``c = ceil(log2 C)`` bits as +-1). A code therefore stores **K + c bits** (32 + 5 on UC Merced's 21 classes),
and that is the length every table reports. To rank class first and then by Hamming distance, as the paper
describes, the ranking code repeats each cue bit ``cue_repeats`` times: with ``cue_repeats = K + 1`` (the default) one
differing class bit outweighs every hash bit. The repeats are an implementation detail of the ranking (a weighted
Hamming distance on the K + c stored bits), not extra information; ``cue_repeats = 1`` is the literal append (the cue
only breaks ties); ``cue=False`` is the ablation without it.

The backbone is any registered backbone with ``forward_features(x)["pooled"]`` and ``num_features``. With
``frozen_backbone=True`` the model also accepts precomputed backbone features (``batch["features"]``), which is how
the CPU profile trains in minutes (see :mod:`rswb.tasks.hashing`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from rswb.models.backbones import make_backbone
from rswb.registry import register_model

__all__ = ["DHCL", "cue_bits", "dhcl", "semantic_cue"]


def cue_bits(num_classes: int) -> int:
    """Bits needed to write a class index in binary: ``ceil(log2 C)`` (at least 1)."""
    return max(1, math.ceil(math.log2(num_classes)))


def semantic_cue(pred: torch.Tensor, num_classes: int, weight: int = 1) -> torch.Tensor:
    """The predicted class index in binary as +-1 bits, each repeated ``weight`` times.

    Args:
        pred: predicted class indices ``[B]`` (int).
        num_classes: number of classes ``C``.
        weight: repetitions of each bit (its weight in the Hamming distance).

    Returns:
        ``[B, ceil(log2 C) * weight]`` float tensor of +-1, most significant bit first.
    """
    n = cue_bits(num_classes)
    shifts = torch.arange(n - 1, -1, -1, device=pred.device)
    bits = (pred.long().unsqueeze(1) >> shifts) & 1
    return (bits.float() * 2 - 1).repeat_interleave(int(weight), dim=1)


class DHCL(nn.Module):
    """The DHCL hash model.

    Args:
        backbone: a backbone module (``forward_features``, ``num_features``).
        bits: hash code length ``K``.
        num_classes: number of scene classes ``C``.
        cue: append the semantic cue to evaluation codes.
        cue_repeats: repetitions of each cue bit (``None``: ``K + 1``, strict class-first ranking).
        frozen_backbone: keep the backbone fixed (eval mode, no gradients) and accept precomputed features.
        train_from: partial fine-tuning: the backbone's pieces before this cut point are frozen, batches carry their
            cached output (``"cut"``) and the pieces from the cut on train (``None``: the whole backbone, or none).
    """

    def __init__(self, backbone: nn.Module, bits: int = 64, num_classes: int = 21, cue: bool = True,
                 cue_repeats: int | None = None, frozen_backbone: bool = False, train_from: str | None = None):
        super().__init__()
        if bits < 1:
            raise ValueError(f"bits must be positive, got {bits}")
        self.backbone, self.bits, self.num_classes = backbone, int(bits), int(num_classes)
        self.cue, self.cue_repeats = bool(cue), int(cue_repeats if cue_repeats is not None else bits + 1)
        self.frozen_backbone = bool(frozen_backbone)
        if train_from is not None and self.frozen_backbone:
            raise ValueError("train_from (partial fine-tuning) needs a backbone that is not frozen as a whole")
        self.train_from = train_from
        self.hash = nn.Linear(backbone.num_features, self.bits)
        self.classifier = nn.Linear(self.bits, self.num_classes)
        if self.frozen_backbone:
            self.backbone.requires_grad_(False)
        if train_from is not None:
            self.backbone.fine_tune_from(train_from)
        elif not self.frozen_backbone:
            self.backbone.freeze_bn()  # DHCL fine-tunes with the pretrained batch-norm statistics

    def train(self, mode: bool = True) -> DHCL:
        """Train mode for the new layers; a frozen backbone always stays in eval mode (fixed batch-norm stats)."""
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()
        return self

    def features(self, batch: dict[str, Any]) -> torch.Tensor:
        """Pooled features ``[B, F]``.

        Precomputed ``batch["features"]``; the backbone continued from a cached cut (``batch["cut"]``, partial
        fine-tuning); else the backbone on ``batch["image"]``.
        """
        if "features" in batch:
            return batch["features"]
        if "cut" in batch:
            return self.backbone.forward_from(batch["cut"], self.train_from, batch.get("taps"))["pooled"]
        if self.frozen_backbone:
            with torch.no_grad():
                return self.backbone.forward_features(batch["image"])["pooled"]
        return self.backbone.forward_features(batch["image"])["pooled"]

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"code": tanh(h) [B, K], "logits": [B, C]}`` (the relaxed code feeds the losses).

        A cached cut with a view axis (``batch["cut"]`` of ``[B, V, C, H, W]``, test-time augmentation) gives the
        mean relaxed code and mean logits over the ``V`` views of each image.
        """
        cut = batch.get("cut")
        if cut is not None and cut.dim() == 5:
            b, v = cut.shape[:2]
            taps = {k: m.flatten(0, 1) for k, m in (batch.get("taps") or {}).items()}
            flat = {"cut": cut.flatten(0, 1), "taps": taps}
            out = self._heads(self.features(flat))
            return {k: t.view(b, v, *t.shape[1:]).mean(1) for k, t in out.items()}
        return self._heads(self.features(batch))

    def _heads(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        code = torch.tanh(self.hash(pooled))
        return {"code": code, "logits": self.classifier(code)}

    def grad_cam(self, images: torch.Tensor, target: str = "code", method: str = "gradcam",
                 strides: tuple[int, ...] | None = None) -> dict[str, torch.Tensor]:
        """Where in the image the code or the cue comes from (:mod:`rswb.models.explain`).

        Args:
            images: ``[B, 3, H, W]`` in [0, 1].
            target: ``"code"``: the score is ``sum_k sign(h_k) tanh(h_k)``, how firmly the image holds its own hash
                code (where the bits come from); ``"cue"``: the logit of the predicted class, the class the semantic
                cue writes into the code.
            method: ``"gradcam"`` or ``"layercam"`` (see :func:`rswb.models.explain.multi_layer_cam`).
            strides: ``None``: Grad-CAM of the backbone's last convolutional map alone (its stride-32 grid; only
                with ``method="gradcam"``); else the backbone maps at these strides, combined at the image's size.

        Returns:
            ``{"cam": [B, h, w] in [0, 1], "score": [B], "pred": [B]}`` (``h, w``: the stride-32 grid, or the
            images' size with ``strides``).
        """
        from rswb.models.explain import grad_cam, multi_layer_cam
        from rswb.utils import eval_mode

        if target not in ("code", "cue"):
            raise ValueError(f"target must be 'code' or 'cue', got {target!r}")
        seen: dict[str, torch.Tensor] = {}

        def score(x: torch.Tensor) -> torch.Tensor:
            out = self._heads(self.backbone.forward_features(x)["pooled"])
            seen["pred"] = out["logits"].argmax(1).detach()
            if target == "code":
                return (out["code"] * torch.sign(out["code"]).detach()).sum(1)
            return out["logits"].gather(1, seen["pred"][:, None])[:, 0]

        with eval_mode(self):
            if strides is None:
                if method != "gradcam":
                    raise ValueError(f"the single stride-32 map is Grad-CAM's; give strides for {method!r}")
                out = grad_cam(score, self.backbone.cam_layer(), images)
            else:
                out = multi_layer_cam(score, self.backbone.stride_layers(strides), images, method=method)
                out = {"cam": out["cam"], "score": score(images).detach()}
        return {**out, "pred": seen["pred"]}

    @torch.no_grad()
    def encode(self, batch: dict[str, Any], cue: bool | None = None) -> dict[str, torch.Tensor]:
        """Evaluation codes: ``{"bits": sign(h) [B, K], "pred": [B], "code": bits (+ cue) [B, K (+ c * repeats)]}``.

        ``code`` is the ranking code (each of the c cue bits repeated ``cue_repeats`` times); it stores K + c bits.
        """
        out = self.forward(batch)
        bits = torch.where(out["code"] >= 0, 1.0, -1.0)
        pred = out["logits"].argmax(1)
        use_cue = self.cue if cue is None else cue
        code = torch.cat([bits, semantic_cue(pred, self.num_classes, self.cue_repeats)], 1) if use_cue else bits
        return {"bits": bits, "pred": pred, "code": code}


@register_model
def dhcl(backbone: str = "efficientnet_lite0", bits: int = 64, num_classes: int = 21, pretrained: bool = True,
         cue: bool = True, cue_repeats: int | None = None, frozen_backbone: bool = False,
         train_from: str | None = None) -> DHCL:
    """DHCL on a registered backbone (ImageNet EfficientNet-Lite0 by default; ``small_cnn`` for fast tests)."""
    return DHCL(make_backbone(backbone, pretrained), bits=bits, num_classes=num_classes, cue=cue,
                cue_repeats=cue_repeats, frozen_backbone=frozen_backbone, train_from=train_from)
