"""Scores of maps against ground truth (rswb.metrics.explain): slow references, scipy, hand cases."""

from __future__ import annotations

import numpy as np
import pytest

from rswb.metrics.explain import center_hits, map_rank_correlation, modality_shares, pointing_game, pointing_hits


def _slow_hit(cam: np.ndarray, mask: np.ndarray, tol: float) -> bool:
    """Maximum by a loop (first in row-major order), distance to the nearest object pixel by a loop."""
    best, where = -np.inf, (0, 0)
    for r in range(cam.shape[0]):
        for c in range(cam.shape[1]):
            if cam[r, c] > best:
                best, where = cam[r, c], (r, c)
    objects = [(r, c) for r in range(mask.shape[0]) for c in range(mask.shape[1]) if mask[r, c]]
    return any(((r - where[0]) ** 2 + (c - where[1]) ** 2) ** 0.5 <= tol for r, c in objects)


@pytest.mark.parametrize("tol", [0.0, 1.5, 3.0])
def test_pointing_hits_match_a_slow_reference_on_seeded_random_maps(tol):
    rng = np.random.default_rng(0)
    cams = [rng.random((12, 12)) for _ in range(40)]  # on the mask's grid: no upsampling
    masks = [rng.random((12, 12)) > 0.9 for _ in range(40)]
    masks[0][:] = False  # an item without an object never hits
    got = pointing_hits(cams, masks, tol)
    want = np.array([_slow_hit(c, m, tol) for c, m in zip(cams, masks)])
    assert np.array_equal(got, want) and not got[0]
    assert 0 < got.mean() < 1  # the game can fail and can succeed on these inputs
    assert pointing_game(cams, masks, tol) == pytest.approx(want.mean())


def test_a_coarse_map_is_read_upsampled_and_the_centre_baseline():
    cam = np.array([[0.0, 0.0], [0.0, 1.0]])  # bottom-right quarter of a 2 x 2 grid
    on = np.zeros((8, 8), bool)
    on[5:8, 5:8] = True
    off = np.zeros((8, 8), bool)
    off[0:2, 0:2] = True
    assert pointing_hits([cam, cam], [on, off]).tolist() == [True, False]
    assert pointing_hits([cam], [off], tolerance=8.0).tolist() == [True]  # close enough with a wide tolerance
    centre = np.zeros((8, 8), bool)
    centre[4, 4] = True
    assert center_hits([centre, off]).tolist() == [True, False]
    with pytest.raises(ValueError, match="2 maps but 1 masks"):
        pointing_hits([cam, cam], [on])


def test_map_rank_correlation_is_scipy_spearman_with_ties():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(1)
    a = [rng.integers(0, 4, (5, 6)).astype(float) for _ in range(20)]  # many ties
    b = [x + rng.normal(0, 1.0, x.shape) for x in a]
    got = map_rank_correlation(a, b)
    want = [spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b)]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert map_rank_correlation([a[0]], [a[0]])[0] == pytest.approx(1.0)
    assert map_rank_correlation([a[0]], [-a[0]])[0] == pytest.approx(-1.0)
    assert np.isnan(map_rank_correlation([np.zeros((3, 3))], [a[0][:3, :3]])[0])  # a flat map ranks nothing
    with pytest.raises(ValueError, match="item 0"):
        map_rank_correlation([np.zeros((2, 2))], [np.zeros((3, 3))])


def test_modality_shares_by_hand():
    got = modality_shares(np.array([3.0, 1.0, -2.0, 0.0, 2.0]), np.array([1.0, 1.0, 4.0, 0.0, -1.0]))
    np.testing.assert_allclose(got[[0, 1, 2, 4]], [0.75, 0.5, 0.0, 1.0])
    assert np.isnan(got[3])  # neither removal lowered the score: no share
