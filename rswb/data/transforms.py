"""Geometric transforms shared by the methods: the 8 flips and 90-degree rotations of the square (dihedral group).

Applied to a stack of images ``[..., H, W]``, a transform moves every channel alike, so an MS patch and the PAN patch
covering the same ground stay co-registered when both get the same view (PHA), and a scene image keeps its label
(DHCL's augmentation and cached views).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["DIHEDRAL", "RandomDihedral", "dihedral"]

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
