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


def test_word_maps_figure_has_the_bars_and_the_combined_map_of_each_top_word():
    from rswb.viz import plot_word_maps

    words = {"tokens": ["many", "green", "trees"], "share": np.array([0.01, -0.02, 0.05]), "score": 0.4,
             "maps": {"low": np.random.default_rng(0).random((3, 8, 8)), "mid": np.ones((3, 4, 4))},
             "cam": np.random.default_rng(1).random((3, 64, 64)), "levels": ["low", "mid"], "method": "layercam",
             "image": np.zeros((64, 64, 3), np.uint8)}
    fig = plot_word_maps(words, top=2)
    assert len(fig.axes) == 1 + 2
    assert [a.get_title() for a in fig.axes[1:3]] == ["'trees' (+0.050)\nLayerCAM, strides 8+16",
                                                     "'many' (+0.010)\nLayerCAM, strides 8+16"]
    heat = fig.axes[1].get_images()[1]
    np.testing.assert_array_equal(heat.get_array(), words["cam"][2])  # the word's own map, as computed


def test_the_tie_sentence_follows_the_tie_table():
    import pandas as pd

    from rswb.viz import describe_ties

    same = pd.DataFrame({"ties": ["expected"], "mR expected": [50.0], "mR published": [50.0],
                         "mR pessimistic": [50.0], "mR optimistic": [50.0]}, index=["clip"])
    assert describe_ties(same, keys=["mR"]).startswith("mR: every rule gives the same value for every run")
    wide = pd.DataFrame({"ties": ["expected", "expected"], "mR expected": [50.0, 52.0], "mR published": [49.0, 51.0],
                         "mR pessimistic": [44.0, 51.5], "mR optimistic": [60.0, 52.5]}, index=["fisvl", "kamcl"])
    sentence = describe_ties(wide, keys=["mR"])
    assert sentence.startswith("mR of fisvl spans 44.0 (pessimistic) to 60.0 (optimistic), expected 50.0, "
                               "published 49.0") and "depends on how ties are counted" in sentence
