"""Geometric transforms shared by the methods: the 8 flips and 90-degree rotations of the square (dihedral group).

Applied to a stack of images ``[..., H, W]``, a transform moves every channel alike, so an MS patch and the PAN patch
covering the same ground stay co-registered when both get the same view (PHA), and a scene image keeps its label
(DHCL's augmentation and cached views).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["DIHEDRAL", "CropView", "RandomDihedral", "augment_pairs", "crop_box", "dihedral", "jitter_gains"]

DIHEDRAL = ("identity", "hflip", "vflip", "rot180", "rot90", "rot270", "transpose", "antitranspose")


def dihedral(x: torch.Tensor, view: int) -> torch.Tensor:
    """One of the 8 flips/rotations of images ``[..., H, W]`` (view 0 is the identity); see ``DIHEDRAL``."""
    if view == 0:
        return x
    if view == 1:
        return x.flip(-1)
    if view == 2:
        return x.flip(-2)
    if view == 3:
        return x.flip(-1, -2)
    if view == 4:
        return x.rot90(1, (-2, -1))
    if view == 5:
        return x.rot90(-1, (-2, -1))
    if view == 6:
        return x.transpose(-2, -1)
    if view == 7:
        return x.flip(-1, -2).transpose(-2, -1)
    raise ValueError(f"view must be in 0..7, got {view}")


class RandomDihedral:
    """A sample transform: one random dihedral view of ``sample["image"]`` (flip / 90-degree rotation, 8 in all).

    Training augmentation for scene images (a scene keeps its label under every view). Draws from torch's global
    generator, so a seeded run is reproducible.
    """

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        """The sample with its image in a random view."""
        view = int(torch.randint(0, 8, ()).item())
        return {**sample, "image": dihedral(sample["image"], view)}


def crop_box(height: int, width: int, generator: torch.Generator, scale: tuple[float, float] = (0.35, 1.0),
             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """A random crop box ``(top, left, h, w)`` covering ``scale`` of the image's area at an aspect ratio in ``ratio``.

    The random-resized-crop rule: area share uniform in ``scale``, log aspect ratio uniform in ``log(ratio)``; a box
    that does not fit is shrunk to fit (never resampled, so one draw from ``generator`` gives one box).
    """
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"crop scale must be 0 < low <= high <= 1, got {scale}")
    u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[0])
    lo, hi = torch.log(torch.tensor(ratio, dtype=torch.float64)).tolist()
    aspect = float(torch.exp(torch.tensor(lo + (hi - lo) * u[1])))
    h = max(1, min(height, round((area / aspect) ** 0.5)))
    w = max(1, min(width, round((area * aspect) ** 0.5)))
    return int(u[2] * (height - h + 1)), int(u[3] * (width - w + 1)), h, w


class CropView:
    """A sample transform: a seeded random-resized crop of ``sample["image"]`` in a seeded dihedral view.

    The crop depends only on ``(seed, number, sample["index"])``, never on a global generator, so a cache of crop
    views is the same whenever it is rebuilt and every image gets its own crop. The crop is resized back to the
    image's size (bilinear, antialiased).

    Args:
        number: which crop of each image (0, 1, ...): different numbers give different crops.
        seed: the seed of the crop draws.
        scale: the share of the image's area a crop covers (low, high).
        ratio: the crop's aspect ratio (low, high).
    """

    def __init__(self, number: int, seed: int = 0, scale: tuple[float, float] = (0.35, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        self.number, self.seed, self.scale, self.ratio = int(number), int(seed), tuple(scale), tuple(ratio)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        """The sample with its image replaced by its crop."""
        img = sample["image"]
        gen = torch.Generator().manual_seed(((self.seed * 1_000_003 + self.number) * 1_000_033 + int(sample["index"]))
                                            % (2**63))
        top, left, h, w = crop_box(img.shape[-2], img.shape[-1], gen, self.scale, self.ratio)
        crop = img[..., top:top + h, left:left + w]
        out = torch.nn.functional.interpolate(crop.unsqueeze(0).float(), size=tuple(img.shape[-2:]),
                                              mode="bilinear", align_corners=False, antialias=True)[0]
        view = int(torch.randint(0, 8, (), generator=gen))
        return {**sample, "image": dihedral(out.clamp_(0, 1).to(img.dtype), view)}


def augment_pairs(batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Apply one random dihedral view (flip / 90-degree rotation, 8 in all) per sample, the same to MS and PAN.

    The PAN patch covers exactly the ground of the MS patch, so transforming both about their centres keeps the
    pair co-registered. Samples are grouped by view, so there are at most 8 tensor operations per batch.
    """
    ms, pan = batch.get("ms"), batch.get("pan")
    ref = ms if ms is not None else pan
    views = torch.randint(0, 8, (ref.shape[0],), generator=generator).to(ref.device)
    out = dict(batch)
    for key, x in (("ms", ms), ("pan", pan)):
        if x is None:
            continue
        y = x.clone()
        for v in range(1, 8):
            sel = (views == v).nonzero().flatten()
            if sel.numel():
                y[sel] = dihedral(x[sel], v)
        out[key] = y
    return out


def jitter_gains(batch: dict[str, torch.Tensor], amount: float,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Multiply each sample's MS and its PAN by independent random gains in ``[1 - amount, 1 + amount]``.

    Why: illumination (sun, haze, slope) scales both modalities of a pixel alike. Without this, the cheapest way for
    cross-modal InfoNCE to find a pixel's partner is to match brightness, a nuisance the alignment then writes into
    the features; independent gains take that shortcut away and make the classifier robust to brightness as well.
    """
    out = dict(batch)
    for key in ("ms", "pan"):
        x = batch.get(key)
        if x is None:
            continue
        g = 1.0 + amount * (2.0 * torch.rand((x.shape[0], 1, 1, 1), generator=generator) - 1.0)
        out[key] = x * g.to(x.device, x.dtype)
    return out
