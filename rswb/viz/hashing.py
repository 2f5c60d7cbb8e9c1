"""Figures and a widget for hash retrieval: mAP vs bits, PR curves, Hamming histograms, code maps, galleries.

Every plotting function takes codes in ``{-1, +1}`` (numpy arrays or tensors; real values are binarised with
:func:`rswb.metrics.hashing.binarize`), draws with matplotlib and returns the :class:`~matplotlib.figure.Figure`
(the functions that draw on one axes accept ``ax=`` so that several plots can share a figure). They draw what they
are given: pair distances come from :func:`rswb.metrics.hashing.pair_distances`, rankings from
:func:`rswb.metrics.hashing.hamming_ranking` (by distance, ties broken by the lower database index, the query
itself excluded by its index).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from rswb.data.mspan import class_colors
from rswb.data.scenes import load_image
from rswb.metrics.hashing import binarize
from rswb.viz.common import pca_2d, picture_box

__all__ = [
    "cue_gain",
    "describe_cue",
    "gallery_widget",
    "plot_code_embedding",
    "plot_hamming_histograms",
    "plot_map_vs_bits",
    "plot_pr_curves",
    "plot_retrieval_gallery",
]

RIGHT, WRONG, QUERY = "#2ca02c", "#d62728", "#1f77b4"  # border colours: same class, other class, the query


def _array(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _codes(codes: Any) -> np.ndarray:
    """``{-1, +1}`` int8 codes ``[N, K]`` from codes, tensors or real-valued outputs."""
    c = _array(codes)
    if c.ndim != 2:
        raise ValueError(f"codes must be [N, K], got shape {c.shape}")
    return binarize(c)


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    return plt.subplots(figsize=figsize)[1] if ax is None else ax


def plot_map_vs_bits(df: pd.DataFrame, metric: str = "mAP@20", ax: Axes | None = None) -> Figure:
    """mAP@K against the code length, with the semantic cue and without it.

    With the cue a code stores K hash bits and c class bits: when the table has a ``cue_bits`` column the ticks read
    ``K + c`` and the legend says so, so a "32-bit" code with the cue is not mistaken for 32 bits.

    Args:
        df: one row per code length, with the code length in a ``bits`` column (or as the index) and the columns
            ``metric`` (with cue) and, when present, ``metric + "_nocue"`` and ``cue_bits`` (e.g. the table of
            :func:`rswb.engine.runs.compare` over the runs, plus a ``bits`` column).
        metric: the metric to plot.
        ax: axes to draw on (default: a new figure).

    Returns:
        The figure: one line with cue, one without (when the column exists), the code lengths as x ticks; the
        title gives the mean gain of the cue computed from the two lines (:func:`cue_gain`).
    """
    bits = np.asarray(df["bits"] if "bits" in df.columns else df.index, dtype=float)
    if metric not in df.columns:
        raise KeyError(f"no column {metric!r} in the table; columns: {', '.join(map(str, df.columns))}")
    order = np.argsort(bits, kind="stable")
    cue = np.asarray(df["cue_bits"], dtype=float)[order] if "cue_bits" in df.columns else None
    ax = _axes(ax, (5, 3.5))
    with_label = "with cue (K + c bits)" if cue is not None else "with cue"
    ax.plot(bits[order], np.asarray(df[metric], dtype=float)[order], marker="o", label=with_label)
    title = f"{metric} vs code length"
    if f"{metric}_nocue" in df.columns:
        ax.plot(bits[order], np.asarray(df[f"{metric}_nocue"], dtype=float)[order], marker="s", linestyle="--",
                label="without cue (K bits)")
        gain = cue_gain(df, metric)
        title += f"\nthe cue {'adds' if gain >= 0 else 'costs'} {abs(gain):.3f} on average"
    ax.set_xticks(bits[order])
    ax.set_xticklabels([f"{b:g}" if cue is None else f"{b:g} + {c:g}" for b, c in
                        zip(bits[order], cue if cue is not None else bits[order])])
    ax.set_xlabel("code length: K hash bits" + (" + c class bits (with cue)" if cue is not None else ""))
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return ax.figure


def cue_gain(df: pd.DataFrame, metric: str = "mAP@20") -> float:
    """The mean over code lengths of ``metric`` with the cue minus without it (negative: the cue costs)."""
    return float(np.mean(np.asarray(df[metric], dtype=float) - np.asarray(df[f"{metric}_nocue"], dtype=float)))


def describe_cue(df: pd.DataFrame, metric: str = "mAP@20") -> str:
    """One sentence on what the cue did, computed from the table :func:`plot_map_vs_bits` draws.

    Names each code length as ``K + c bits`` (when the table has ``cue_bits``), the value with and without the cue
    and the difference, and says "adds" or "costs" from the sign of the mean difference.
    """
    bits = np.asarray(df["bits"] if "bits" in df.columns else df.index, dtype=float)
    cue = np.asarray(df["cue_bits"], dtype=float) if "cue_bits" in df.columns else None
    parts = []
    for i, b in enumerate(bits):
        name = f"{b:g} + {cue[i]:g} bits" if cue is not None else f"{b:g} bits"
        w, wo = float(df[metric].iloc[i]), float(df[f"{metric}_nocue"].iloc[i])
        parts.append(f"{name}: {w:.3f} with the cue, {wo:.3f} without ({w - wo:+.3f})")
    gain = cue_gain(df, metric)
    verdict = ("the cue adds" if gain > 0 else "the cue costs" if gain < 0 else "the cue changes nothing,")
    return f"{metric}: " + "; ".join(parts) + f". On average {verdict} {abs(gain):.3f}."


def plot_pr_curves(curves: Mapping[str, Mapping[str, np.ndarray]], ax: Axes | None = None) -> Figure:
    """Precision-recall curves over the Hamming radius, one line per entry.

    Each point is one radius ``r = 0..K``: the mean over queries of the precision and recall of the items within
    distance ``r``. A query with nothing within ``r`` counts as precision 0 (see :func:`rswb.metrics.hashing.pr_curve`),
    so the curves start low at small radii when many queries retrieve nothing.

    Args:
        curves: ``{label: pr_curve(...)}``; each value holds ``precision`` and ``recall`` ``[K + 1]``.
        ax: axes to draw on (default: a new figure).

    Returns:
        The figure, one line per curve.
    """
    ax = _axes(ax, (5, 4))
    for label, curve in curves.items():
        ax.plot(_array(curve["recall"]), _array(curve["precision"]), marker=".", markersize=3, label=label)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize="small")
    ax.set_title("Precision-recall over Hamming radius")
    return ax.figure


def plot_hamming_histograms(pairs: Mapping[str, Any], ax: Axes | None = None, title: str | None = None) -> Figure:
    """Histograms of the Hamming distances of same-class and different-class pairs.

    Draws the pairs it is given (:func:`rswb.metrics.hashing.pair_distances`); computes no distance. Each histogram
    is normalised to a density, so the two shapes compare although different-class pairs are many more.

    Args:
        pairs: ``{"distance": [P], "same_class": [P], "bits": K}``.
        ax: axes to draw on (default: a new figure).
        title: axes title (default: the code length).

    Returns:
        The figure: two histograms with the number of pairs and the mean distance of each in the legend.
    """
    dist, same, k = _array(pairs["distance"]), _array(pairs["same_class"]).astype(bool), int(pairs["bits"])
    if dist.shape != same.shape:
        raise ValueError(f"{len(dist)} distances but {len(same)} same-class flags")
    bins = np.arange(k + 2) - 0.5
    ax = _axes(ax, (5.5, 3.5))
    for mask, name, colour in ((same, "same class", RIGHT), (~same, "different class", WRONG)):
        if mask.any():
            ax.hist(dist[mask], bins=bins, density=True, alpha=0.55, color=colour,
                    label=f"{name} ({mask.sum()} pairs, mean {dist[mask].mean():.1f})")
    ax.set_xlim(-0.5, k + 0.5)
    ax.set_xlabel("Hamming distance")
    ax.set_ylabel("density")
    ax.legend(fontsize="small")
    ax.set_title(title or f"Hamming distances of pairs ({k}-bit codes)")
    return ax.figure


def plot_code_embedding(codes: Any, labels: Any, class_names: Sequence[str] | None = None, method: str = "pca",
                        ax: Axes | None = None, seed: int = 0) -> Figure:
    """A 2-D map of the codes, one colour per class.

    Args:
        codes: codes ``[N, K]``.
        labels: class labels ``[N]``.
        class_names: name of each class index (default: the index).
        method: ``"pca"`` (numpy SVD of the centred codes) or ``"tsne"`` (needs scikit-learn).
        ax: axes to draw on (default: a new figure).
        seed: random state of t-SNE.

    Returns:
        The figure: one scatter per class present, with a legend.

    Raises:
        ImportError: ``method="tsne"`` without scikit-learn.
    """
    x = _codes(codes).astype(np.float64)
    y = _array(labels).reshape(-1)
    if method == "pca":
        xy, share = pca_2d(x)
        axis_labels = [f"PC{i + 1} ({100 * share[i]:.0f} % of variance)" for i in range(2)]
    elif method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError as err:
            raise ImportError("method='tsne' needs scikit-learn (pip install scikit-learn); use method='pca'") from err
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency

        perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
        # One OpenMP thread: with torch's OpenMP runtime loaded too, t-SNE's threads were seen to spin for 40 s
        # instead of 0.1 s on a busy 2-core machine; single-threaded it takes ~7 s for 2000 codes.
        with threadpool_limits(limits=1, user_api="openmp"):
            xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
        axis_labels = ["t-SNE 1", "t-SNE 2"]
    else:
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    ax = _axes(ax, (6, 4.5))
    classes = np.unique(y)
    colours = class_colors(len(classes))  # one colour per class, never wrapped round a palette
    for n, c in enumerate(classes):
        m = y == c
        name = class_names[int(c)] if class_names is not None else str(c)
        ax.scatter(xy[m, 0], xy[m, 1], s=12, alpha=0.75, color=colours[n], label=name)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.legend(fontsize="x-small", markerscale=1.5, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title(f"{method.upper() if method == 'pca' else 't-SNE'} of {x.shape[1]}-bit codes")
    ax.figure.tight_layout()
    return ax.figure


def _show_image(ax: Axes, image: Any, colour: str, title: str) -> None:
    img = load_image(image) if isinstance(image, str | Path) else _array(image)
    ax.imshow(img)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():  # a coloured frame instead of set_axis_off(), which hides the spines
        spine.set_edgecolor(colour)
        spine.set_linewidth(4)
    ax.set_title(title, fontsize="small", color=colour)


def plot_retrieval_gallery(query_index: int, neighbours: tuple[Any, Any], labels: Any, paths: Sequence[Any],
                           class_names: Sequence[str] | None = None, ncols: int = 9) -> Figure:
    """The query image and its results, framed green (same class) or red (other).

    Draws the ranking it is given (``rswb.metrics.hashing.hamming_ranking(query_index, codes, k)``); ranks nothing.

    Args:
        query_index: index of the query among the items.
        neighbours: ``(indices [k], Hamming distances [k])`` of the results, best first.
        labels: class labels ``[N]``.
        paths: image file of every item (or an ``[H, W, 3]`` array).
        class_names: name of each class index (default: the index).
        ncols: panels per row.

    Returns:
        The figure: ``k + 1`` axes (the query first, framed blue), each result titled with its distance and class.
    """
    y = _array(labels).reshape(-1)
    if len(y) != len(paths):
        raise ValueError(f"labels and paths differ in length: {len(y)}, {len(paths)}")
    idx, dist = (np.asarray(a).reshape(-1) for a in neighbours)
    panels = len(idx) + 1
    cols = max(1, min(ncols, panels))
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 2.0 * rows), squeeze=False)
    axes = axes.ravel()
    for ax in axes[panels:]:
        fig.delaxes(ax)

    def name(i: int) -> str:
        return class_names[int(y[i])] if class_names is not None else str(int(y[i]))

    _show_image(axes[0], paths[query_index], QUERY, f"query #{query_index}\n{name(query_index)}")
    for ax, i, d in zip(axes[1:], idx, dist):
        _show_image(ax, paths[i], RIGHT if y[i] == y[query_index] else WRONG, f"d={int(d)}  #{i}\n{name(i)}")
    hits = int((y[idx] == y[query_index]).sum())
    fig.suptitle(f"top-{len(idx)} by Hamming distance: {hits} of the same class", fontsize="medium")
    fig.tight_layout()
    return fig


def gallery_widget(rank: Callable[[int, int], tuple[Any, Any]], labels: Any, paths: Sequence[Any],
                   class_names: Sequence[str] | None = None, k: int = 8, query_index: int = 0,
                   max_k: int = 32) -> Any:
    """An interactive :func:`plot_retrieval_gallery`: a slider picks the query, a dropdown ``k``.

    Whenever a control changes, the gallery is redrawn and shown as a PNG in an ``ipywidgets.Image``. An image
    widget, not an ``Output`` widget capturing ``display()``: its state is plain data, so the widget also builds
    (and draws its first gallery) without a frontend, in papermill or a plain Python process, and headless
    executors never have to mimic output capture.

    Args:
        rank: ``rank(query_index, k) -> (indices, distances)``, e.g. ``lambda q, k: hamming_ranking(q, codes, k)``
            (:func:`rswb.metrics.hashing.hamming_ranking`): the widget draws, the caller's function ranks.
        labels: class labels ``[N]``.
        paths: image file of every item (or an ``[H, W, 3]`` array).
        class_names: name of each class index.
        k: initial number of results.
        query_index: initial query.
        max_k: largest ``k`` offered.

    Returns:
        An ``ipywidgets.VBox``: the controls (``IntSlider`` query, ``Dropdown`` k), then the gallery ``Image``.

    Raises:
        ImportError: ipywidgets is not installed (``pip install rswb[notebooks]``).
    """
    try:
        import ipywidgets as widgets
    except ImportError as err:
        raise ImportError("gallery_widget needs ipywidgets (pip install 'rswb[notebooks]')") from err

    n = len(paths)
    largest = max(1, min(max_k, n - 1))
    first_k = max(1, min(k, largest))
    choices = sorted({c for c in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64) if c <= largest} | {first_k})
    query = widgets.IntSlider(value=min(max(query_index, 0), n - 1), min=0, max=n - 1, description="query",
                              continuous_update=False)
    top = widgets.Dropdown(options=choices, value=first_k, description="k")
    image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))

    def redraw(*_: Any) -> None:
        fig = plot_retrieval_gallery(query.value, rank(query.value, top.value), labels, paths,
                                     class_names=class_names)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)  # shown through the widget only, not again by the inline backend
        image.value = buf.getvalue()

    query.observe(redraw, names="value")
    top.observe(redraw, names="value")
    redraw()
    return picture_box([widgets.HBox([query, top]), image], lambda: image.value)
