"""Scores of attention and attribution maps against ground truth: pure functions over arrays.

* :func:`pointing_hits` / :func:`pointing_game`: does a map's maximum fall on an object (Zhang et al., "Top-down
  neural attention by excitation backprop", ECCV 2016)? The maximum is read on the map upsampled to the mask's
  grid (bilinear, the way maps are drawn); a hit is a maximum within ``tolerance`` pixels of the object (the original
  game allows 15 pixels on about 224-pixel images: ``tolerance = 15 / 224`` of the image side is the default of
  ``benchmarks/explain``).
* :func:`center_hits`: the same game played by a map that always points at the image centre, the baseline any
  explanation must beat.
* :func:`map_rank_correlation`: Spearman's rank correlation of two maps of the same items (the model-randomisation
  sanity check of Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018: a map that hardly changes when the
  weights are re-initialised is not explaining the trained model).
* :func:`modality_shares`: how much of a score change two modalities account for, from per-modality occlusion deltas.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["center_hits", "map_rank_correlation", "modality_shares", "pointing_game", "pointing_hits"]


def _upsample(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a ``[h, w]`` map to ``shape`` with aligned pixel centres (what drawing does)."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(np.asarray(cam, np.float32))[None, None]
    return F.interpolate(t, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()


def _near(mask: np.ndarray, tolerance: float) -> np.ndarray:
    """``mask`` grown by ``tolerance`` pixels (Euclidean): where a pointing hit may land."""
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    if tolerance <= 0 or not mask.any():
        return mask
    return ndimage.distance_transform_edt(~mask) <= tolerance


def pointing_hits(cams: Sequence[np.ndarray], masks: Sequence[np.ndarray], tolerance: float = 0.0) -> np.ndarray:
    """Whether each map's maximum falls on (or within ``tolerance`` pixels of) its item's object mask.

    Args:
        cams: one map ``[h, w]`` per item, any grid (upsampled bilinearly to the mask's grid first); ties of the
            maximum go to the first position in row-major order.
        masks: one boolean object mask ``[H, W]`` per item (an item without any object never hits).
        tolerance: pixels, on the mask's grid.

    Returns:
        ``[N]`` bool.

    Raises:
        ValueError: different numbers of maps and masks.
    """
    if len(cams) != len(masks):
        raise ValueError(f"pointing_hits: {len(cams)} maps but {len(masks)} masks")
    hits = np.zeros(len(cams), bool)
    for i, (cam, mask) in enumerate(zip(cams, masks)):
        mask = np.asarray(mask, bool)
        up = _upsample(cam, mask.shape)
        r, c = np.unravel_index(int(np.argmax(up)), up.shape)
        hits[i] = bool(_near(mask, tolerance)[r, c])
    return hits


def pointing_game(cams: Sequence[np.ndarray], masks: Sequence[np.ndarray], tolerance: float = 0.0) -> float:
    """The share of items whose map maximum hits the object (:func:`pointing_hits`); NaN with no items."""
    hits = pointing_hits(cams, masks, tolerance)
    return float(hits.mean()) if len(hits) else float("nan")


def center_hits(masks: Sequence[np.ndarray], tolerance: float = 0.0) -> np.ndarray:
    """:func:`pointing_hits` of a map that always peaks at the image centre (the pixel ``(H // 2, W // 2)``)."""
    out = np.zeros(len(masks), bool)
    for i, mask in enumerate(masks):
        mask = np.asarray(mask, bool)
        out[i] = bool(_near(mask, tolerance)[mask.shape[0] // 2, mask.shape[1] // 2])
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), 0-based."""
    from scipy.stats import rankdata

    return rankdata(x) - 1.0


def map_rank_correlation(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> np.ndarray:
    """Spearman's rank correlation of each pair of maps (same item, same grid), ``[N]``.

    A constant map has no ranking: its correlation is NaN (a map that is 0 everywhere says nothing either way).

    Raises:
        ValueError: different numbers of maps, or a pair on different grids.
    """
    if len(a) != len(b):
        raise ValueError(f"map_rank_correlation: {len(a)} maps against {len(b)}")
    out = np.full(len(a), np.nan)
    for i, (x, y) in enumerate(zip(a, b)):
        x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
        if x.shape != y.shape:
            raise ValueError(f"map_rank_correlation: item {i} has maps of {x.size} and {y.size} values")
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        rx, ry = _ranks(x), _ranks(y)
        rx, ry = rx - rx.mean(), ry - ry.mean()
        out[i] = float((rx * ry).sum() / np.sqrt((rx**2).sum() * (ry**2).sum()))
    return out


def modality_shares(delta_a: np.ndarray, delta_b: np.ndarray) -> np.ndarray:
    """Each item's share of a score change that modality ``a`` accounts for, from occlusion deltas.

    ``delta_a[i]`` is how much item ``i``'s score (e.g. the margin between its true class's logit and a twin
    class's) drops when modality ``a`` is replaced by its baseline, ``delta_b[i]`` the same for ``b``. The share of
    ``a`` is ``max(delta_a, 0) / (max(delta_a, 0) + max(delta_b, 0))``: a modality whose removal raises the score
    supports none of it. An item neither removal lowers has no share (NaN).

    Returns:
        ``[N]`` shares in [0, 1] (NaN where undefined); the share of ``b`` is ``1 - share``.
    """
    a = np.clip(np.asarray(delta_a, float), 0, None)
    b = np.clip(np.asarray(delta_b, float), 0, None)
    total = a + b
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, a / np.where(total > 0, total, 1.0), np.nan)
