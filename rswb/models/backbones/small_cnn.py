"""A small, fast CNN with the backbone interface, for tests and quick experiments (about 125k parameters).

A stride-2 stem and four stages, each a stride-2 3x3 convolution and a 3x3 convolution (BN + ReLU after both), give
the same feature keys as EfficientNet-Lite0 (input ``[B, 3, H, W]``, maps ``[B, C, ceil(H / s), ceil(W / s)]``):
``"s2"`` 16, ``"s4"`` 24, ``"s8"`` 32, ``"s16"`` 48, ``"s32"`` 64 channels (with the default ``widths``), and
``"pooled"`` ``[B, 64]``, the global average of ``"s32"``. Any input size works; it has no pretrained weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rswb.models.backbones.base import Backbone, FeatureInfo, Piece
from rswb.registry import register_model

__all__ = ["SmallCNN", "small_cnn"]


def _conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(Backbone):
    """Stem + four stages of plain 3x3 convolutions; see the module docstring for the feature maps.

    Args:
        widths: channels at strides 2, 4, 8, 16, 32 (five values).
        input_norm: normalisation applied to [0, 1] inputs (``"tf"``: [-1, 1], the same convention as
            EfficientNet-Lite0, so the two backbones take the same tensors).

    Attributes:
        num_features: ``widths[-1]``, channels of ``"pooled"``.
    """

    def __init__(self, widths: Sequence[int] = (16, 24, 32, 48, 64), input_norm: str = "tf") -> None:
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"widths needs 5 values (strides 2, 4, 8, 16, 32), got {len(widths)}")
        self.input_norm = input_norm
        self.normalize(torch.zeros(1, 3, 1, 1))  # fail now on an unknown input_norm
        self.stem = nn.Sequential(*_conv_bn_relu(3, widths[0], 2))
        self.stages = nn.ModuleList(
            nn.Sequential(*_conv_bn_relu(cin, cout, 2), *_conv_bn_relu(cout, cout, 1))
            for cin, cout in zip(widths[:-1], widths[1:])
        )
        self.feature_info = [FeatureInfo(f"s{2 ** (i + 1)}", w, 2 ** (i + 1)) for i, w in enumerate(widths)]
        self.num_features = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def pieces(self) -> list[Piece]:
        """Stem (tapped ``"s2"``) and ``"stage1"`` ... ``"stage4"`` (tapped ``"s4"`` ... ``"s32"``)."""
        out = [Piece("stem", lambda x: self.stem(self.normalize(x)), [self.stem], "s2")]
        for k, (info, stage) in enumerate(zip(self.feature_info[1:], self.stages), 1):
            out.append(Piece(f"stage{k}", stage, [stage], info.name))
        return out

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Feature maps ``"s2" ... "s32"`` and ``"pooled"`` ``[B, num_features]``.

        Args:
            x: images ``[B, 3, H, W]`` in [0, 1], any ``H, W``.
        """
        return super().forward_features(x)


@register_model
def small_cnn(**kwargs) -> SmallCNN:
    """The small test CNN (about 125k parameters, random initialisation); ``kwargs`` go to :class:`SmallCNN`."""
    return SmallCNN(**kwargs)
