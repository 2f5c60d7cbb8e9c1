"""Seeded crop views (rswb.data.transforms): boxes in bounds, reproducible per image, different between images."""

from __future__ import annotations

import pytest
import torch

from rswb.data.transforms import CropView, crop_box, dihedral


def test_crop_boxes_stay_inside_the_image_and_cover_the_asked_share():
    g = torch.Generator().manual_seed(0)
    shares = []
    for _ in range(500):
        top, left, h, w = crop_box(60, 40, g, scale=(0.35, 1.0))
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 40 and h >= 1 and w >= 1
        shares.append(h * w / (60 * 40))
    # Shrunk to fit at most: no box exceeds the image, and the shares spread over the range asked for.
    assert max(shares) <= 1.0 and min(shares) < 0.45 and sum(s > 0.8 for s in shares) > 10
    with pytest.raises(ValueError, match="crop scale"):
        crop_box(10, 10, g, scale=(0.0, 1.0))


def test_crop_view_is_a_function_of_seed_number_and_image_index():
    img = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    sample = {"image": img, "label": 2, "index": 7}
    a = CropView(0)(sample)["image"]
    assert a.shape == img.shape and a.dtype == img.dtype and float(a.min()) >= 0 and float(a.max()) <= 1
    torch.manual_seed(123)  # the global generator plays no part
    assert torch.equal(CropView(0)(sample)["image"], a)
    assert not torch.equal(CropView(1)(sample)["image"], a)  # another crop number
    assert not torch.equal(CropView(0)({**sample, "index": 8})["image"], a)  # another image
    assert not torch.equal(CropView(0, seed=1)(sample)["image"], a)
    assert CropView(0)(sample)["label"] == 2


def test_a_full_size_crop_is_a_dihedral_view_of_the_image():
    img = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))
    out = CropView(0, scale=(1.0, 1.0), ratio=(1.0, 1.0))({"image": img, "index": 0})["image"]
    # A box of the whole area at aspect 1 is the image itself: the result is one of its 8 views.
    assert any(torch.allclose(out, dihedral(img, v), atol=1e-5) for v in range(8))
