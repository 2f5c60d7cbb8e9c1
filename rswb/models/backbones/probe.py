"""Frozen-feature probes of a backbone on a scene folder: 1-NN accuracy and batch-norm statistics.

This is how the EfficientNet-Lite0 port is checked. ImageNet features must separate UC Merced classes far better than
a random initialisation (leave-one-out cosine 1-NN accuracy of pooled features). The input convention is checked by
how closely each batch-norm layer's input mean on real images lands on its stored running mean; 1-NN accuracy
cannot tell the conventions apart (see ``benchmarks/results/backbones.md``). Run::

    python -m rswb.models.backbones.probe ../shared/data/UCMerced_LandUse --size 224

which prints one row per setting of :data:`SETTINGS` (``--per-class 10`` takes the first 10 images of each class).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rswb.data.features import extract_images
from rswb.data.scenes import TensorImages, load_image, scan_scene_folder
from rswb.registry import create_model

__all__ = ["SETTINGS", "BatchNormInputStats", "ProbeSetting", "compare_settings", "extract_pooled", "load_scene_images",
           "nearest_neighbour_accuracy", "recalibrate_bn"]


@dataclass(frozen=True)
class ProbeSetting:
    """One backbone configuration to probe.

    Attributes:
        model: registered model name.
        kwargs: keyword overrides for ``create_model``.
        scale: multiply the [0, 1] images by this before the model (255 feeds raw pixel values).
        recalibrate_bn: replace the batch-norm running statistics by those of the probed images first.
        seed: torch seed set before building the model (random initialisations are reproducible).
    """

    model: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    scale: float = 1.0
    recalibrate_bn: bool = False
    seed: int = 0


_LITE0 = "efficientnet_lite0"
SETTINGS: dict[str, ProbeSetting] = {
    "pretrained ([-1, 1] input, SAME padding, BN eps 1e-3)": ProbeSetting(_LITE0),
    "pretrained, ImageNet mean/std input": ProbeSetting(_LITE0, {"input_norm": "imagenet"}),
    "pretrained, [0, 1] input (unscaled)": ProbeSetting(_LITE0, {"input_norm": "none"}),
    "pretrained, [0, 255] input (raw pixels)": ProbeSetting(_LITE0, {"input_norm": "none"}, scale=255.0),
    "pretrained, symmetric padding": ProbeSetting(_LITE0, {"padding": "symmetric"}),
    "pretrained, BN eps 1e-5": ProbeSetting(_LITE0, {"bn_eps": 1e-5}),
    "random init": ProbeSetting(_LITE0, {"pretrained": False}),
    "random init, BN statistics of the images": ProbeSetting(_LITE0, {"pretrained": False}, recalibrate_bn=True),
}


def load_scene_images(root: str | Path, per_class: int | None = None, size: int = 224,
                      progress: bool = False) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Decode the first ``per_class`` images of every class of a scene folder, resized to ``size``.

    Args:
        root: a UC Merced or AID layout folder (see :mod:`rswb.data.scenes`).
        per_class: images per class, lowest numbers first; ``None`` takes all.
        size: square side the images are resized to (bilinear).
        progress: show a progress bar.

    Returns:
        ``(images, labels, classes)``: uint8 ``[N, 3, size, size]`` (a quarter of the memory of float),
        ``[N]`` int64 labels and the class names.
    """
    from tqdm.auto import tqdm

    records, classes, _ = scan_scene_folder(root)
    if per_class is not None:
        taken: dict[int, int] = {}
        kept = []
        for r in records:
            if taken.get(r.label, 0) < per_class:
                kept.append(r)
                taken[r.label] = taken.get(r.label, 0) + 1
        records = kept
    images = torch.empty((len(records), 3, size, size), dtype=torch.uint8)
    for i, r in enumerate(tqdm(records, desc="decoding", disable=not progress)):
        images[i] = torch.from_numpy(load_image(r.path, size)).permute(2, 0, 1)
    return images, np.array([r.label for r in records], dtype=np.int64), classes


def _batches(images: torch.Tensor, batch_size: int, scale: float, device: torch.device):
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device).float().div_(255.0)
        if scale != 1.0:
            x.mul_(scale)
        yield x.contiguous(memory_format=torch.channels_last)  # ~2x faster depthwise convolutions on CPU


def _channels_last_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x.contiguous(memory_format=torch.channels_last))  # ~2x faster depthwise convolutions on CPU


def extract_pooled(model: nn.Module, images: torch.Tensor, batch_size: int = 64, scale: float = 1.0,
                   progress: bool = False) -> torch.Tensor:
    """Pooled features ``[N, D]`` (float32, CPU) of uint8 images ``[N, 3, H, W]``, in eval mode.

    Args:
        model: a backbone (``forward`` returns ``[B, D]``); it runs in eval mode and channels-last memory format
            (about 2x faster on CPU) on its own device (:func:`rswb.data.features.extract_images`).
        images: uint8 images; each is converted to [0, 1] floats (times ``scale``).
        batch_size: images per forward pass.
        scale: multiplier applied to the [0, 1] images.
        progress: show a progress bar.
    """
    model.to(memory_format=torch.channels_last)
    device = next(model.parameters()).device
    return extract_images(model, TensorImages(images, scale), _channels_last_forward, device=device,
                          batch_size=batch_size, progress=progress)["features"]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: torch.Tensor, batch_size: int = 64, scale: float = 1.0) -> nn.Module:
    """Replace every batch-norm layer's running statistics by their average over ``images`` (uint8 ``[N, 3, H, W]``).

    The new statistics are the plain average of the per-batch statistics (equal to the statistics of all images
    when the batches have equal sizes). Gives a random initialisation the normalisation it would have after seeing
    the data, a fairer baseline than the unit statistics of a fresh model. Returns ``model`` in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: equal weight for every batch
    model.train()
    device = next(model.parameters()).device
    for x in _batches(images, batch_size, scale, device):
        model(x)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    return model.eval()


def nearest_neighbour_accuracy(features: torch.Tensor, labels: Sequence[int] | np.ndarray, chunk: int = 1024) -> float:
    """Leave-one-out 1-NN accuracy under cosine similarity.

    Args:
        features: ``[N, D]``.
        labels: ``[N]`` class indices.
        chunk: query rows per similarity block (bounds memory to ``chunk x N``).

    Returns:
        The fraction of samples whose most similar other sample has the same label.
    """
    f = torch.nn.functional.normalize(features.float(), dim=1)
    y = torch.as_tensor(np.asarray(labels), device=f.device)
    hits = 0
    for start in range(0, len(f), chunk):
        sim = f[start:start + chunk] @ f.T
        rows = torch.arange(sim.shape[0], device=f.device)
        sim[rows, rows + start] = -float("inf")  # leave one out
        hits += int((y[sim.argmax(dim=1)] == y[start:start + chunk]).sum())
    return hits / len(f)


class BatchNormInputStats:
    """Context manager recording the mean input of every batch-norm layer while a model runs.

    A pretrained model's batch-norm running means were recorded on its training images under its input convention.
    On other natural images, fed the right way, each layer's mean input should land near its running mean; a wrong
    input scaling moves the first layers' means away. :meth:`mismatch` measures the distance per layer, in units of
    the running standard deviation. Use as ``with BatchNormInputStats(model) as stats: model(x)``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self._sums: list[torch.Tensor | None] = [None] * len(self.layers)
        self._counts = [0] * len(self.layers)
        self._handles: list[Any] = []

    def _hook(self, i: int):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = inputs[0].detach().float()
            total = x.sum(dim=[d for d in range(x.ndim) if d != 1])
            self._sums[i] = total if self._sums[i] is None else self._sums[i] + total
            self._counts[i] += x.numel() // x.shape[1]
        return hook

    def __enter__(self) -> BatchNormInputStats:
        self._handles = [m.register_forward_hook(self._hook(i)) for i, (_, m) in enumerate(self.layers)]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def mismatch(self) -> dict[str, float]:
        """Per layer (by module name, in forward order): mean over channels of ``|input mean - running mean| / std``.

        ``std`` is ``sqrt(running_var + eps)``. Layers that saw no input are left out.
        """
        out = {}
        for (name, m), total, count in zip(self.layers, self._sums, self._counts):
            if total is None or m.running_mean is None:
                continue
            mean = total / count
            z = (mean - m.running_mean.float()).abs() / (m.running_var.float() + m.eps).sqrt()
            out[name] = float(z.mean())
        return out


def compare_settings(images: torch.Tensor, labels: np.ndarray, settings: dict[str, ProbeSetting] | None = None,
                     batch_size: int = 64, progress: bool = False) -> list[dict[str, Any]]:
    """Leave-one-out 1-NN accuracy of each setting's pooled features.

    Args:
        images: uint8 ``[N, 3, H, W]`` (from :func:`load_scene_images`).
        labels: ``[N]``.
        settings: name -> setting; default :data:`SETTINGS`.
        batch_size: images per forward pass.
        progress: show progress bars.

    Returns:
        One dict per setting: ``{"setting", "knn_acc", "bn_z_stem", "bn_z_mean", "seconds"}``; ``bn_z_*`` are
        :meth:`BatchNormInputStats.mismatch` of the first batch-norm layer and its mean over all layers
        (meaningless for a random init, whose running statistics are not learned).
    """
    rows = []
    for name, s in (settings or SETTINGS).items():
        t0 = time.perf_counter()
        torch.manual_seed(s.seed)
        model = create_model(s.model, **s.kwargs)
        if s.recalibrate_bn:
            recalibrate_bn(model, images, batch_size, s.scale)
        with BatchNormInputStats(model) as stats:
            feats = extract_pooled(model, images, batch_size, s.scale, progress)
        z = list(stats.mismatch().values())
        rows.append({"setting": name, "knn_acc": nearest_neighbour_accuracy(feats, labels),
                     "bn_z_stem": z[0] if z else float("nan"), "bn_z_mean": float(np.mean(z)) if z else float("nan"),
                     "seconds": time.perf_counter() - t0})
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Command line: probe every setting of :data:`SETTINGS` on a scene folder and print a Markdown table."""
    ap = argparse.ArgumentParser(prog="python -m rswb.models.backbones.probe", description=__doc__.split("\n")[0])
    ap.add_argument("root", help="scene folder (UC Merced or AID layout), e.g. ../shared/data/UCMerced_LandUse")
    ap.add_argument("--per-class", type=int, default=None, help="first N images of each class (default: all)")
    ap.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    ap.add_argument("--model", default=None, help="probe only this registered backbone, pretrained (e.g. "
                    "efficientnet_lite1 at --size 240); default: every setting of the comparison")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    images, labels, classes = load_scene_images(args.root, args.per_class, args.size, progress=True)
    decode_s = time.perf_counter() - t0
    settings = {f"{args.model} pretrained": ProbeSetting(args.model)} if args.model else None
    rows = compare_settings(images, labels, settings, batch_size=args.batch_size, progress=True)
    print(f"\n{len(labels)} images, {len(classes)} classes, {args.size} px, decoded in {decode_s:.1f} s, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; chance = {1 / len(classes):.3f}\n")
    print("| setting | 1-NN acc (cosine, leave-one-out) | BN mean mismatch, stem | BN mean mismatch, all layers "
          "| seconds |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['knn_acc']:.3f} | {r['bn_z_stem']:.3f} | {r['bn_z_mean']:.3f} "
              f"| {r['seconds']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"images": len(labels), "classes": len(classes), "size": args.size,
                                         "torch": torch.__version__, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
