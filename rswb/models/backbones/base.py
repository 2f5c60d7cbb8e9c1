"""The interface every image backbone shares: multi-depth feature maps, pooled features and frozen batch-norm.

A backbone takes images as ``[B, 3, H, W]`` float tensors in [0, 1] (what :func:`rswb.data.scenes.image_to_tensor`
returns) and applies its own input normalisation, so callers never need to know which convention its weights were
trained with. ``forward_features(x)`` returns a dict of feature maps keyed by their stride (``"s2"`` ... ``"s32"``,
each ``[B, C, ceil(H / s), ceil(W / s)]``) plus ``"pooled"`` ``[B, num_features]``; ``forward(x)`` returns only
``"pooled"``. ``feature_info`` lists the keys with their channels and strides, so later models can pick a depth
without hard-coding channel counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Backbone", "FeatureInfo", "Piece", "normalize_input", "INPUT_NORMS"]

# The input conventions a backbone can be told to apply to [0, 1] images (see `normalize_input`).
INPUT_NORMS = ("tf", "imagenet", "none")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class FeatureInfo:
    """One entry of ``Backbone.feature_info``: the key in ``forward_features``' dict, its channels and stride."""

    name: str
    channels: int
    stride: int


@dataclass(frozen=True)
class Piece:
    """One consecutive piece of a backbone (a stage): what it computes, the modules it owns, the map it taps.

    Attributes:
        name: ``"stem"``, ``"stage1"``, ... or ``"head"``; every piece but the first is a cut point.
        run: ``h -> h`` of the piece (the stem takes the [0, 1] images).
        modules: the modules whose parameters the piece uses.
        tap: the ``forward_features`` key of its output, or ``None``.
    """

    name: str
    run: Callable[[torch.Tensor], torch.Tensor]
    modules: Sequence[nn.Module]
    tap: str | None = None


def normalize_input(x: torch.Tensor, mode: str = "tf") -> torch.Tensor:
    """Map images in [0, 1] to a backbone's input convention.

    Args:
        x: images ``[B, 3, H, W]`` in [0, 1].
        mode: ``"tf"``: ``(x - 0.5) / 0.5``, i.e. [-1, 1], the convention of the TensorFlow EfficientNet-Lite
            checkpoints (the same as ``(pixel / 255 - 0.5) / 0.5``); ``"imagenet"``: per-channel ImageNet mean/std
            (torchvision's convention; wrong for EfficientNet-Lite, kept to measure that it is); ``"none"``: unchanged.

    Returns:
        The normalised images ``[B, 3, H, W]``, same device and dtype.
    """
    if mode == "tf":
        return x * 2.0 - 1.0
    if mode == "imagenet":
        mean = x.new_tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(_IMAGENET_STD).view(1, 3, 1, 1)
        return (x - mean) / std
    if mode == "none":
        return x
    raise ValueError(f"unknown input_norm {mode!r}; use one of {INPUT_NORMS}")


class Backbone(nn.Module):
    """Base class of the image backbones (see the module docstring for the interface).

    Subclasses set ``feature_info``, ``num_features`` and ``input_norm`` and implement ``forward_features``.

    Attributes:
        feature_info: the feature maps of ``forward_features``, shallow to deep.
        num_features: channels of ``"pooled"``.
        input_norm: the normalisation applied to [0, 1] inputs (one of ``INPUT_NORMS``).
    """

    feature_info: list[FeatureInfo]
    num_features: int
    input_norm: str = "tf"

    def __init__(self) -> None:
        super().__init__()
        self._bn_frozen = False
        self.partial_cut: str | None = None  # set by fine_tune_from: where batches of cached activations start

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Apply this backbone's input normalisation to images ``[B, 3, H, W]`` in [0, 1]."""
        return normalize_input(x, self.input_norm)

    def pieces(self) -> list[Piece]:
        """The network as consecutive pieces, stem first (subclasses define it; see :class:`Piece`)."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Feature maps at every depth of ``feature_info`` plus ``"pooled"`` ``[B, num_features]``.

        Args:
            x: images ``[B, 3, H, W]`` in [0, 1].
        """
        return self._run(self.pieces(), x, {})

    # --- partial fine-tuning: the frozen trunk runs once up to a cut, the pieces after it train -------------------
    def cut_points(self) -> list[str]:
        """Where training can start: every piece after the stem (``"stage1"`` ... and ``"head"`` where there is one)."""
        return [p.name for p in self.pieces()[1:]]

    def _index(self, cut: str) -> int:
        names = [p.name for p in self.pieces()]
        if cut not in names[1:]:
            raise ValueError(f"unknown cut point {cut!r} of {type(self).__name__}; use one of {', '.join(names[1:])}")
        return names.index(cut)

    def trunk(self, cut: str) -> nn.ModuleList:
        """The modules of the pieces before ``cut``: what stays frozen, and what a cache of its outputs depends on."""
        return nn.ModuleList(m for piece in self.pieces()[: self._index(cut)] for m in piece.modules)

    def forward_until(self, x: torch.Tensor, cut: str) -> dict[str, torch.Tensor]:
        """The activation entering piece ``cut`` (``"cut"``) and the feature maps tapped before it.

        Args:
            x: images ``[B, 3, H, W]`` in [0, 1].
            cut: a name of :meth:`cut_points`.
        """
        pieces = self.pieces()[: self._index(cut)]
        out: dict[str, torch.Tensor] = {}
        h = x
        for piece in pieces:
            h = piece.run(h)
            if piece.tap:
                out[piece.tap] = h
        return {"cut": h, **out}

    def forward_from(self, h: torch.Tensor, cut: str, taps: dict[str, torch.Tensor] | None = None
                     ) -> dict[str, torch.Tensor]:
        """:meth:`forward_features` continued from the activation ``h`` entering piece ``cut``.

        ``taps`` are the maps :meth:`forward_until` tapped before the cut (passed through), so
        ``forward_from(**forward_until(x, cut))`` equals ``forward_features(x)``.
        """
        return self._run(self.pieces()[self._index(cut):], h, dict(taps or {}))

    def freeze_until(self, cut: str) -> Backbone:
        """Stop gradients to every parameter of the pieces before ``cut`` (the trunk whose outputs are cached).

        Returns:
            ``self``.
        """
        for piece in self.pieces()[: self._index(cut)]:
            for m in piece.modules:
                m.requires_grad_(False)
        return self

    def fine_tune_from(self, cut: str) -> Backbone:
        """Partial fine-tuning from ``cut`` (one place for every method).

        The pieces before the cut are frozen (their outputs are cached), batch-norm statistics stay the pretrained
        ones, and the cut is remembered (``partial_cut``) for :meth:`forward_from` on cached batches.

        Returns:
            ``self``.
        """
        self.partial_cut = cut
        return self.freeze_until(cut).freeze_bn()

    def _run(self, pieces: Sequence[Piece], h: torch.Tensor, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for piece in pieces:
            h = piece.run(h)
            if piece.tap:
                out[piece.tap] = h
        out["pooled"] = h.mean(dim=(2, 3))
        return out

    def cam_layer(self) -> nn.Module:
        """The module whose output Grad-CAM explains: the last block of the deepest piece that is made of blocks.

        A 1x1 head (EfficientNet's ``head``: conv, batch-norm, ReLU6 in one function) only recombines channels, so
        the map before it carries the same locations; its last module would be a batch-norm before the activation.
        """
        for piece in reversed(self.pieces()):
            if piece.name != "head":
                return piece.modules[-1]
        raise RuntimeError(f"{type(self).__name__} has no convolutional piece")

    def stride_layers(self, strides: Sequence[int] = (8, 16, 32)) -> dict[str, nn.Module]:
        """``{"s8": module, ...}``: for each stride, the last module of the last piece whose map has that stride.

        These are the layers a multi-layer attribution map explains (:func:`rswb.models.explain.multi_layer_cam`);
        a 1x1 ``head`` is skipped for the reason :meth:`cam_layer` gives.

        Raises:
            ValueError: the backbone has no map at one of the strides.
        """
        by_stride = {f.name: f.stride for f in self.feature_info}
        found: dict[int, nn.Module] = {}
        for piece in self.pieces():
            if piece.tap is not None and piece.name != "head" and by_stride.get(piece.tap) in strides:
                found[by_stride[piece.tap]] = piece.modules[-1]
        missing = [s for s in strides if s not in found]
        if missing:
            raise ValueError(f"{type(self).__name__} has no feature map at stride(s) {missing}")
        return {f"s{s}": found[s] for s in strides}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled features ``[B, num_features]`` of images ``[B, 3, H, W]`` in [0, 1]."""
        return self.forward_features(x)["pooled"]

    @property
    def feature_channels(self) -> dict[str, int]:
        """Channels of each feature map key, e.g. ``{"s2": 16, ..., "s32": 320}``."""
        return {f.name: f.channels for f in self.feature_info}

    @property
    def feature_strides(self) -> dict[str, int]:
        """Stride of each feature map key, e.g. ``{"s2": 2, ..., "s32": 32}``."""
        return {f.name: f.stride for f in self.feature_info}

    @property
    def bn_frozen(self) -> bool:
        """Whether batch-norm layers are held in eval mode (see :meth:`freeze_bn`)."""
        return self._bn_frozen

    def freeze_bn(self, freeze: bool = True, affine: bool = False) -> Backbone:
        """Hold every batch-norm layer in eval mode, also after ``model.train()``.

        Frozen batch-norm normalises with the stored running statistics and never updates them, which is what
        fine-tuning a pretrained backbone with small or class-imbalanced batches needs (DHCL trains this way).

        Args:
            freeze: ``False`` undoes a previous freeze (the layers follow the module's mode again, affine parameters
                become trainable again).
            affine: also stop gradients to the batch-norm scale and shift (``requires_grad = False``).

        Returns:
            ``self``, so ``create_model(...).freeze_bn()`` chains.
        """
        self._bn_frozen = freeze
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if freeze:
                    m.eval()
                else:
                    m.train(self.training)
                for p in m.parameters():
                    if not freeze:
                        p.requires_grad_(True)
                    elif affine:
                        p.requires_grad_(False)  # else left as it is: a frozen trunk's parameters stay frozen
        return self

    def train(self, mode: bool = True) -> Backbone:
        """Set train/eval mode; batch-norm layers stay in eval mode while :meth:`freeze_bn` is in force."""
        super().train(mode)
        if self._bn_frozen:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self
