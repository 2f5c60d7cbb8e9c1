"""Local Hugging Face checkpoints as rswb encoders, for users who have the original methods' weights.

FISVL used Swin-T and BERT-base, KAMCL a ResNet: a user with those checkpoints saved in Hugging Face format (a folder
with ``config.json`` and the weights, e.g. from ``save_pretrained``) can train with them instead of the bundled
EfficientNet-Lite0 and MiniLM:

* :class:`HFBackbone` (``create_model("hf_backbone", path=...)``): any ``transformers`` vision model that returns
  hidden states as feature maps (ResNet, ConvNeXt: ``hidden_states``; Swin: ``reshaped_hidden_states``), behind
  rswb's backbone interface (``forward_features`` keyed by stride, ``pooled``, ``feature_info``);
* ``hf_text`` (``create_model("hf_text", path=...)``): a BERT-like text model and its tokenizer, as a
  :class:`~rswb.models.text.MiniLMTextEncoder` (attention-masked mean of token states).

Nothing is downloaded: both load with ``local_files_only=True``. ``rswb train retrieval --backbone hf_backbone
--backbone-path DIR --text-encoder hf_text --text-path DIR`` uses them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rswb.data.errors import require_exists
from rswb.models.backbones.base import Backbone, FeatureInfo
from rswb.models.text import MiniLMTextEncoder
from rswb.registry import register_model

__all__ = ["HFBackbone", "hf_backbone", "hf_text"]


class HFBackbone(Backbone):
    """A local ``transformers`` vision model as an rswb backbone.

    The feature maps and their strides are discovered once, from a probe image of ``probe_size`` pixels: every 4-D
    hidden state ``[B, C, h, w]`` becomes ``"s{probe_size // h}"`` (the deepest map of each stride wins). ``pooled``
    is the model's ``pooler_output`` when it has one, else the mean of the deepest map.

    Args:
        path: the checkpoint folder (``config.json`` + weights).
        input_norm: the normalisation the weights expect (``"imagenet"`` for torchvision-style and most Hugging Face
            vision checkpoints).
        probe_size: side of the probe image (Swin needs a multiple of its patch size x window size x 8).
    """

    def __init__(self, path: str | Path, input_norm: str = "imagenet", probe_size: int = 224):
        super().__init__()
        from transformers import AutoModel

        folder = require_exists(path, "Hugging Face checkpoint folder")
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        self.input_norm = input_norm
        self.model.eval()
        with torch.no_grad():
            maps, pooled = self._run(torch.zeros(1, 3, probe_size, probe_size))
        self._names = {}
        for i, m in enumerate(maps):
            self._names[f"s{probe_size // m.shape[-1]}"] = i  # later (deeper) maps of a stride replace earlier ones
        self.feature_info = [FeatureInfo(name, maps[i].shape[1], int(name[1:])) for name, i in self._names.items()]
        self.num_features = int(pooled.shape[1])

    def _run(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        out = self.model(pixel_values=x, output_hidden_states=True)
        states = getattr(out, "reshaped_hidden_states", None) or out.hidden_states
        maps = [h for h in states if h.ndim == 4]
        if not maps:
            raise ValueError(f"{type(self.model).__name__} returns no 4-D hidden states to use as feature maps")
        pooled = getattr(out, "pooler_output", None)
        pooled = maps[-1].mean(dim=(2, 3)) if pooled is None else pooled.flatten(1)
        return maps, pooled

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Feature maps keyed by stride and ``"pooled"`` ``[B, num_features]`` of images in [0, 1]."""
        maps, pooled = self._run(self.normalize(x))
        return {**{name: maps[i] for name, i in self._names.items()}, "pooled": pooled}


@register_model
def hf_backbone(path: str, input_norm: str = "imagenet", pretrained: bool = True) -> HFBackbone:
    """A local Hugging Face vision checkpoint (Swin, ResNet, ConvNeXt, ...) as a backbone.

    ``pretrained`` is accepted for a uniform interface: the folder's weights are always loaded.
    """
    return HFBackbone(path, input_norm)


@register_model
def hf_text(path: str, freeze: bool = True, max_length: int = 64, out_dim: int | None = None) -> MiniLMTextEncoder:
    """A local Hugging Face text checkpoint (BERT, RoBERTa, ...) with its tokenizer: masked mean of token states."""
    return MiniLMTextEncoder(out_dim, freeze, max_length, path=require_exists(path, "Hugging Face checkpoint folder"))
