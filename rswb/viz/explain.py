"""Attention maps drawn over their images (the maps come from the model code, e.g. Grad-CAM in rswb.models.explain)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

__all__ = ["overlay_heat", "plot_cam_overlays"]


def overlay_heat(ax: Any, heat: Any, height: int, width: int, alpha: float = 0.5,
                 interpolation: str = "bilinear") -> Any:
    """Stretch a map in [0, 1] (any grid) over the ``height x width`` image already on ``ax`` as a ``jet`` heat map.

    Every attention figure of :mod:`rswb.viz` draws its maps this way. Returns the ``AxesImage``.
    """
    return ax.imshow(np.asarray(heat), cmap="jet", alpha=alpha, vmin=0, vmax=1, interpolation=interpolation,
                     extent=(0, width, height, 0))


def plot_cam_overlays(images: Any, maps: Mapping[str, Any], titles: Sequence[str] | None = None,
                      alpha: float = 0.5, size: float = 2.4) -> Figure:
    """One row per image: the image, then each map stretched over it (bilinear) as a translucent heat map.

    Args:
        images: ``[B, H, W, 3]`` uint8 or float in [0, 1].
        maps: ``{column title: [B, h, w]}`` maps in [0, 1] on any grid covering the whole image.
        titles: one title per row (e.g. the class and prediction), shown over the image.
        alpha: opacity of the heat maps.
        size: inches per panel.
    """
    import matplotlib.pyplot as plt

    images = np.asarray(images)
    n, cols = len(images), 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(size * cols, size * n), squeeze=False)
    for r in range(n):
        h, w = images[r].shape[:2]
        axes[r, 0].imshow(images[r])
        axes[r, 0].set_title(titles[r] if titles else f"image {r}", fontsize=9)
        for c, (name, m) in enumerate(maps.items(), 1):
            ax = axes[r, c]
            ax.imshow(images[r])
            overlay_heat(ax, m[r], h, w, alpha)
            ax.set_title(name, fontsize=9)
        for ax in axes[r]:
            ax.axis("off")
    fig.tight_layout()
    return fig
