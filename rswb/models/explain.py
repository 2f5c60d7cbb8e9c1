"""Grad-CAM: where in a feature map a network's score comes from (Selvaraju et al., ICCV 2017), with plain hooks.

For a score ``y`` (one number per image) and the ``[C, h, w]`` map ``A`` that a chosen layer outputs, Grad-CAM
weighs each channel by its average gradient, ``alpha_c = mean_ij dy / dA_c(i, j)``, and keeps the positive part of
the weighted sum, ``ReLU(sum_c alpha_c A_c)``: the locations whose features raise the score. The usual package
pulls torchvision (which does not import with rswb's torch), so it is written here: a forward hook keeps the layer's
output (made a leaf that requires grad when a frozen trunk left it outside the graph, so ``requires_grad=False``
weights still give gradients at that layer), and ``torch.autograd.grad`` reads the gradient there.

Models provide their own scores (e.g. :meth:`rswb.models.hashing.DHCL.grad_cam`: the hash code and the class cue);
``rswb.viz.plot_cam_overlays`` draws the maps over the images.

A stride-32 map is 4 x 4 on a 128-pixel image: it says which quarter of the scene, not which object. Finer maps come
from several layers (:func:`multi_layer_cam`): Grad-CAM through captum's ``LayerGradCam`` at each layer, or LayerCAM
(Jiang et al., TIP 2021), which weighs every location by its own positive gradient instead of the channel's mean
and so keeps the detail of shallow layers; the layers' maps are upsampled to the image, scaled to a maximum of 1
and averaged. ``benchmarks/explain`` measures which one points at the objects (``benchmarks/results/explain.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CAM_METHODS", "combine_maps", "grad_cam", "multi_layer_cam"]

CAM_METHODS = ("gradcam", "layercam")
"""The per-layer maps :func:`multi_layer_cam` combines."""


def grad_cam(score: Callable[[Any], torch.Tensor], layer: nn.Module, inputs: Any,
             normalize: bool = True, weighting: str = "channel") -> dict[str, torch.Tensor]:
    """Grad-CAM maps of ``layer`` for the per-item scores ``score(inputs)``.

    Args:
        score: ``inputs -> [B]`` scores, running the network that contains ``layer`` (in eval mode, so that items do
            not interact through batch-norm statistics: the gradient of the summed scores is then each item's own).
        layer: the module whose output ``[B, C, h, w]`` is explained (usually the last convolutional block).
        inputs: what ``score`` takes.
        normalize: scale each map to a maximum of 1 (maps that are 0 everywhere stay 0).
        weighting: ``"channel"``: Grad-CAM's channel weights (the mean gradient); ``"location"``: LayerCAM's
            ``ReLU(dy/dA_c(i, j))`` at every location, ``ReLU(sum_c ReLU(dy/dA_c) A_c)``.

    Returns:
        ``{"cam": [B, h, w], "score": [B]}`` (detached; ``cam`` on the layer's grid, upsample it to draw it).

    Raises:
        RuntimeError: ``layer`` did not run, or its output is not a ``[B, C, h, w]`` map.
    """
    if weighting not in ("channel", "location"):
        raise ValueError(f"weighting must be 'channel' or 'location', got {weighting!r}")
    scores, [(a, grads)] = _layer_gradients(score, [layer], inputs)
    cam = _weighted(a, grads, weighting)
    if normalize:
        cam = _unit_max(cam)
    return {"cam": cam.float(), "score": scores.detach().float()}


def _weighted(a: torch.Tensor, grads: torch.Tensor, weighting: str) -> torch.Tensor:
    """Grad-CAM (``"channel"``) or LayerCAM (``"location"``) of a layer's map ``a`` and its gradient."""
    weights = grads.mean((2, 3), keepdim=True) if weighting == "channel" else torch.relu(grads)
    return torch.relu((weights * a).sum(1)).detach()


def _layer_gradients(score: Callable[[Any], torch.Tensor], layers: list[nn.Module], inputs: Any
                     ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """One forward and one backward pass: the scores and each layer's output map with its gradient.

    A forward hook keeps each layer's output; an output that does not require grad (a frozen trunk on inputs that
    do not) is swapped for a leaf tensor that does, so frozen layers still give gradients there. Outputs already in
    the graph are kept as they are, so a deeper layer's map does not cut the gradient of a shallower one.
    ``torch.autograd.grad`` reads the gradients: nothing accumulates in the model's ``.grad``.
    """
    store: dict[int, torch.Tensor] = {}

    def hook_for(k: int) -> Callable[..., torch.Tensor]:
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
            if not output.requires_grad:
                output = output.detach().requires_grad_(True)
            store[k] = output
            return output
        return hook

    handles = [layer.register_forward_hook(hook_for(k)) for k, layer in enumerate(layers)]
    try:
        with torch.enable_grad():
            scores = score(inputs)
            for k, layer in enumerate(layers):
                if k not in store:
                    raise RuntimeError(f"grad_cam: the layer {type(layer).__name__} did not run in score(inputs)")
                if store[k].ndim != 4:
                    raise RuntimeError(f"grad_cam: the layer's output is {tuple(store[k].shape)}, not a [B, C, h, w] "
                                       "map")
            maps = [store[k] for k in range(len(layers))]
            grads = torch.autograd.grad(scores.sum(), maps, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    return scores.detach(), [(a.detach(), torch.zeros_like(a) if g is None else g) for a, g in zip(maps, grads)]


def _unit_max(maps: torch.Tensor) -> torch.Tensor:
    """Each ``[B, h, w]`` map divided by its maximum (a map that is 0 everywhere stays 0)."""
    return maps / maps.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)


def multi_layer_cam(score: Callable[[torch.Tensor], torch.Tensor], layers: Mapping[str, nn.Module],
                    inputs: torch.Tensor, method: str = "layercam",
                    size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """One map per item from several layers: each layer's map upsampled to ``size``, scaled to 1, averaged.

    Args:
        score: ``inputs -> [B]`` scores (the network in eval mode).
        layers: ``{name: module}`` whose ``[B, C, h, w]`` outputs are explained (e.g. the stride-8, 16 and 32 maps).
        inputs: images ``[B, 3, H, W]`` (or what ``score`` takes; then give ``size``).
        method: ``"gradcam"`` (captum's ``LayerGradCam`` per layer, positive part) or ``"layercam"`` (per-location
            positive gradients, :func:`grad_cam` with ``weighting="location"``).
        size: the output grid (default: the images' ``H, W``).

    Returns:
        ``{"cam": [B, *size] in [0, 1], "layers": {name: [B, h, w] in [0, 1]}}`` (detached, float).

    Raises:
        ValueError: an unknown method, or no layer.
    """
    if method not in CAM_METHODS:
        raise ValueError(f"method must be one of {CAM_METHODS}, got {method!r}")
    if not layers:
        raise ValueError("multi_layer_cam needs at least one layer")
    size = tuple(size) if size is not None else tuple(inputs.shape[-2:])
    if method == "gradcam":  # captum's LayerGradCam, one pass per layer
        from captum.attr import LayerGradCam

        per_layer = {}
        for name, layer in layers.items():
            with torch.enable_grad():
                cam = LayerGradCam(score, layer).attribute(inputs, relu_attributions=True)[:, 0].detach()
            per_layer[name] = _unit_max(cam.float())
    else:  # LayerCAM of every layer from one forward and backward pass
        _, grads = _layer_gradients(score, list(layers.values()), inputs)
        per_layer = {name: _unit_max(_weighted(a, g, "location").float()) for name, (a, g) in zip(layers, grads)}
    return {"cam": combine_maps(list(per_layer.values()), size), "layers": per_layer}


def combine_maps(maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Maps ``[B, h_l, w_l]`` of several layers as one ``[B, *size]``.

    Each is upsampled (bilinear), scaled to a maximum of 1, then they are averaged and scaled to 1 again.
    """
    up = [F.interpolate(_unit_max(m.float())[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
          for m in maps]
    return _unit_max(torch.stack(up).mean(0))
