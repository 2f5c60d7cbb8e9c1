"""Small computations several figure modules share (no model is run here)."""

from __future__ import annotations

import numpy as np

__all__ = ["pca_2d"]


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first two principal components ``[N, 2]`` and their share of the variance ``[2]``."""
    x = x - x.mean(0)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    # The sign of a singular vector is arbitrary: make each one's largest loading positive, so plots are stable.
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])
    signs[signs == 0] = 1
    y = (u * s * signs)[:, :2]
    var = s**2
    share = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
    if y.shape[1] < 2:  # a single component (K = 1, or one distinct code): pad with zeros
        y = np.pad(y, ((0, 0), (0, 2 - y.shape[1])))
        share = np.pad(share, (0, 2 - len(share)))
    return y, share
