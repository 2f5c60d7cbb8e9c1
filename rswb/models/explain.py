"""Grad-CAM: where in a feature map a network's score comes from (Selvaraju et al., ICCV 2017), with plain hooks.

For a score ``y`` (one number per image) and the ``[C, h, w]`` map ``A`` that a chosen layer outputs, Grad-CAM
weighs each channel by its average gradient, ``alpha_c = mean_ij dy / dA_c(i, j)``, and keeps the positive part of
the weighted sum, ``ReLU(sum_c alpha_c A_c)``: the locations whose features raise the score. The usual package
pulls torchvision (which does not import with rswb's torch), so it is written here: a forward hook swaps the layer's
output for a leaf tensor that requires grad (so frozen layers and ``requires_grad=False`` weights still give
gradients at that layer), and ``torch.autograd.grad`` reads the gradient there.

Models provide their own scores (e.g. :meth:`rswb.models.hashing.DHCL.grad_cam`: the hash code and the class cue);
``rswb.viz.plot_cam_overlays`` draws the maps over the images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["grad_cam"]


def grad_cam(score: Callable[[Any], torch.Tensor], layer: nn.Module, inputs: Any,
             normalize: bool = True) -> dict[str, torch.Tensor]:
    """Grad-CAM maps of ``layer`` for the per-item scores ``score(inputs)``.

    Args:
        score: ``inputs -> [B]`` scores, running the network that contains ``layer`` (in eval mode, so that items do
            not interact through batch-norm statistics: the gradient of the summed scores is then each item's own).
        layer: the module whose output ``[B, C, h, w]`` is explained (usually the last convolutional block).
        inputs: what ``score`` takes.
        normalize: scale each map to a maximum of 1 (maps that are 0 everywhere stay 0).

    Returns:
        ``{"cam": [B, h, w], "score": [B]}`` (detached; ``cam`` on the layer's grid, upsample it to draw it).

    Raises:
        RuntimeError: ``layer`` did not run, or its output is not a ``[B, C, h, w]`` map.
    """
    store: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        leaf = output.detach().requires_grad_(True)
        store["map"] = leaf
        return leaf

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            scores = score(inputs)
            if "map" not in store:
                raise RuntimeError(f"grad_cam: the layer {type(layer).__name__} did not run in score(inputs)")
            a = store["map"]
            if a.ndim != 4:
                raise RuntimeError(f"grad_cam: the layer's output is {tuple(a.shape)}, not a [B, C, h, w] map")
            (grads,) = torch.autograd.grad(scores.sum(), a, allow_unused=True)
    finally:
        handle.remove()
    if grads is None:
        grads = torch.zeros_like(a)
    cam = torch.relu((grads.mean((2, 3), keepdim=True) * a).sum(1)).detach()
    if normalize:
        cam = cam / cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return {"cam": cam.float(), "score": scores.detach().float()}
