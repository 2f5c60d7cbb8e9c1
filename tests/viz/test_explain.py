"""Attention-map overlays (rswb.viz.plot_cam_overlays)."""

from __future__ import annotations

import numpy as np
import pytest

from rswb.viz import plot_cam_overlays


def test_overlays_stretch_each_map_over_its_image():
    images = np.zeros((2, 40, 60, 3), np.uint8)
    cams = {"code": np.random.default_rng(0).random((2, 2, 3)), "cue": np.ones((2, 5, 5))}
    fig = plot_cam_overlays(images, cams, titles=["query", "neighbour"])
    axes = np.array(fig.axes).reshape(2, 3)
    assert axes[0, 0].get_title() == "query" and [a.get_title() for a in axes[1, 1:]] == ["code", "cue"]
    heat = axes[1, 1].get_images()[1]
    assert heat.get_extent() == pytest.approx((0, 60, 40, 0)) and heat.get_array().shape == (2, 3)
