"""Figures and a widget for the PHA version ladder (notebook 02): scene, scores, confusion, maps, alignment, codes.

Every ``plot_*`` function draws with matplotlib and returns the :class:`~matplotlib.figure.Figure`; none of them
trains anything. Label maps always use the fixed colour table :func:`rswb.data.mspan.label_colormap` (black for 0
= unlabelled, then tab20 colours for the classes 1..C), so a class has the same colour in every figure of the
notebook. Scores are fractions in the library (``OA``, ``AA``, ``kappa``, see :mod:`rswb.metrics.classification`)
and are only turned into percentages on the axes.

A few helpers prepare what the figures show from a finished run without training: :func:`summarize_versions` (mean
and std over seeds), :func:`load_predictions` (a run's test predictions, confusion matrix and full-scene map),
:func:`modality_embeddings` and :func:`dictionary_codes` (model outputs on a sample of test items).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from rswb.data.mspan import MSPANScene, label_colormap
from rswb.metrics.classification import scores_from_confusion
from rswb.models.pha import PHA_VERSIONS, STAGE_NAMES
from rswb.viz.common import figure_picker, pca_2d

__all__ = [
    "class_mean_codes",
    "describe_alignment",
    "describe_dictionary",
    "describe_pretraining",
    "map_accuracy",
    "normalize_rows",
    "pair_cosines",
    "plot_agreement_maps",
    "plot_alignment_curves",
    "plot_atom_maps",
    "plot_class_maps",
    "plot_confusion",
    "plot_dictionary_usage",
    "plot_modality_embedding",
    "plot_pixel_attributions",
    "plot_pretrain_curve",
    "plot_scene_overview",
    "plot_version_bars",
    "plot_version_detail",
    "summarize_versions",
    "version_picker",
]

METRICS = ("OA", "AA", "kappa")
STAGE_STYLES = {"shallow": ":", "middle": "--", "deep": "-"}
FEW_SHOT_MARKERS = {"train": ("o", "white"), "val": ("s", "yellow")}  # marker, colour of each few-shot set


def _array(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    return list(class_names) if class_names is not None else [f"class {c + 1}" for c in range(num_classes)]


def _class_colour(c: int, num_classes: int) -> tuple[float, ...]:
    """Colour of the 0-based class ``c`` in the fixed label colour table."""
    return label_colormap(num_classes).colors[c + 1]


def _version_order(versions: Sequence[str]) -> list[str]:
    """Versions in ladder order (:data:`PHA_VERSIONS`), others after them in the order first seen."""
    seen = list(dict.fromkeys(versions))
    return [v for v in PHA_VERSIONS if v in seen] + [v for v in seen if v not in PHA_VERSIONS]


def _version_colour(version: str) -> tuple[float, ...]:
    """A fixed colour per ladder version (tab10), so a version looks the same in every figure."""
    cmap = plt.get_cmap("tab10")
    i = PHA_VERSIONS.index(version) if version in PHA_VERSIONS else len(PHA_VERSIONS) + sum(map(ord, version)) % 3
    return cmap(i % cmap.N)


def _show_labels(ax: Axes, label_map: np.ndarray, num_classes: int, title: str) -> None:
    """Draw a label map (0 = unlabelled, 1..C = classes) with the fixed colour table, one colour per value."""
    norm = BoundaryNorm(np.arange(num_classes + 2) - 0.5, num_classes + 1)
    ax.imshow(label_map, cmap=label_colormap(num_classes), norm=norm, interpolation="nearest")
    ax.set_title(title, fontsize="medium")
    ax.set_axis_off()


def _class_legend(fig: Figure, class_names: Sequence[str], unlabelled: bool = True) -> None:
    """A legend of the class colours under the figure's panels."""
    c = len(class_names)
    handles = [Patch(color=(0, 0, 0), label="unlabelled")] if unlabelled else []
    handles += [Patch(color=_class_colour(i, c), label=name) for i, name in enumerate(class_names)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5), fontsize="small", frameon=False)


def _legend_space(n_entries: int) -> float:
    """Inches under the panels for a class legend of ``n_entries`` (5 per row)."""
    return 0.15 + 0.25 * -(-n_entries // 5)


# ---------------------------------------------------------------------------------------------------- the scene


def plot_scene_overview(scene: MSPANScene, few_shot: Mapping[str, tuple[Any, Any]] | None = None,
                        class_names: Sequence[str] | None = None) -> Figure:
    """The scene at a glance: MS false-colour composite, PAN, and every label map, with a legend of the classes.

    Args:
        scene: an MS+PAN scene (normalised or not; the composite is stretched for display either way).
        few_shot: optional pixel sets to mark on the composite, ``{name: (rows [N], cols [N])}`` on the MS grid,
            e.g. ``{"train": (data.train.rows, data.train.cols), "val": (data.val.rows, data.val.cols)}``.
            ``train`` is drawn as white circles, ``val`` as yellow squares, other names in further colours.
        class_names: names of classes 1..C (default: ``scene.class_names``, else ``class k``).

    Returns:
        The figure: ``2 + len(scene.labels)`` panels and the class legend (colours of
        :func:`rswb.data.mspan.label_colormap`).
    """
    c = scene.num_classes
    names = _names(class_names if class_names is not None else scene.class_names, c)
    splits = list(scene.labels)
    n = 2 + len(splits)
    height = 4.4 + _legend_space(c + 1)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, height), squeeze=False, layout="constrained")
    axes = axes[0]
    axes[0].imshow(scene.rgb(), interpolation="nearest")
    title = f"MS composite ({scene.bands} bands, {scene.shape[0]}x{scene.shape[1]})"
    extra = iter(["cyan", "magenta", "orange"])
    for name, (rows, cols) in (few_shot or {}).items():
        marker, colour = FEW_SHOT_MARKERS.get(name, ("D", next(extra, "red")))
        rows, cols = _array(rows).reshape(-1), _array(cols).reshape(-1)
        axes[0].scatter(cols, rows, s=18, marker=marker, facecolors="none", edgecolors=colour, linewidths=1.2,
                        label=f"{name} ({len(rows)} px)")
    if few_shot:
        axes[0].legend(loc="upper right", fontsize="x-small", framealpha=0.6)
        title += "\nfew-shot pixels marked"
    axes[0].set_title(title, fontsize="medium")
    axes[0].set_axis_off()
    pan = scene.pan[0]
    step = max(1, max(pan.shape) // 2048)  # display resolution is enough; a huge PAN would only cost memory
    pan = pan[::step, ::step]
    lo, hi = np.percentile(pan, (2, 98))
    axes[1].imshow(np.clip((pan - lo) / max(hi - lo, 1e-12), 0, 1), cmap="gray", interpolation="nearest")
    axes[1].set_title(f"PAN ({scene.pan.shape[1]}x{scene.pan.shape[2]}, ratio {scene.ratio})", fontsize="medium")
    axes[1].set_axis_off()
    for ax, split in zip(axes[2:], splits):
        m = scene.labels[split]
        _show_labels(ax, m, c, f"{split} labels ({int((m > 0).sum())} px)")
    _class_legend(fig, names)
    return fig


# ---------------------------------------------------------------------------------------------------- scores


def summarize_versions(df: pd.DataFrame, metrics: Sequence[str] = METRICS, percent: bool = False) -> pd.DataFrame:
    """Mean and standard deviation over seeds of each version's scores.

    Args:
        df: one row per run with the columns ``version``, ``seed`` (optional) and ``metrics`` as fractions (the
            test columns of :func:`rswb.engine.runs.compare`).
        metrics: the score columns.
        percent: multiply the scores by 100 (for display; ``kappa`` x 100 is the usual table convention).

    Returns:
        One row per version in ladder order: ``<metric>`` (mean) and ``<metric>_std`` (sample standard deviation,
        ``ddof=1``; 0 when a version has a single seed) for each metric, then ``seeds`` (the number of runs).

    Raises:
        KeyError: a column is missing.
    """
    missing = [c for c in ("version", *metrics) if c not in df.columns]
    if missing:
        raise KeyError(f"missing column(s) {', '.join(missing)}; columns: {', '.join(map(str, df.columns))}")
    groups = df.groupby("version", sort=False)[list(metrics)]
    mean, std, count = groups.mean(), groups.std(ddof=1), groups.size()
    std.loc[count <= 1] = 0.0
    scale = 100.0 if percent else 1.0
    out = pd.DataFrame(index=mean.index)
    for m in metrics:
        out[m] = scale * mean[m].astype(float)
        out[f"{m}_std"] = scale * std[m].astype(float)
    out["seeds"] = count.astype(int)
    out.index.name = "version"
    return out.loc[_version_order(list(out.index))]


def plot_version_bars(df: pd.DataFrame, metrics: Sequence[str] = METRICS, ax: Axes | None = None) -> Figure:
    """Grouped bars of OA, AA and kappa per version: mean over seeds with standard-deviation error bars.

    Args:
        df: one row per run with ``version``, ``seed`` and the ``metrics`` as **fractions** (as the runs record
            them); they are shown in percent (kappa x 100). See :func:`summarize_versions`.
        metrics: the score columns, one bar each per version.
        ax: axes to draw on (default: a new figure).

    Returns:
        The figure: versions in ladder order on the x axis, one bar container per metric.
    """
    s = summarize_versions(df, metrics, percent=True)
    if ax is None:
        ax = plt.subplots(figsize=(max(6.0, 1.1 * len(s) + 2), 4), layout="constrained")[1]
    x = np.arange(len(s))
    width = 0.8 / len(metrics)
    for i, m in enumerate(metrics):
        bars = ax.bar(x + (i - (len(metrics) - 1) / 2) * width, s[m], width, yerr=s[f"{m}_std"], capsize=3,
                      label=m, alpha=0.85)
        ax.bar_label(bars, fmt="%.1f", fontsize="x-small", padding=2)
    ax.set_xticks(x)
    ax.set_xticklabels(s.index, rotation=20)
    ax.set_ylabel("% (mean ± std over seeds)")
    low = float(np.nanmin((s[list(metrics)] - s[[f"{m}_std" for m in metrics]].to_numpy()).to_numpy()))
    ax.set_ylim(min(0.0, low - 5), 105)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(ncol=len(metrics), fontsize="small", loc="upper left")
    seeds = s["seeds"].unique()
    ax.set_title(f"Test scores per version ({', '.join(map(str, seeds))} seed{'s' if seeds.max() > 1 else ''})")
    return ax.figure


def normalize_rows(cm: Any) -> np.ndarray:
    """Each row of a confusion matrix divided by its sum (rows = true class): the share of each prediction.

    Args:
        cm: confusion matrix ``[C, C]`` of counts.

    Returns:
        ``[C, C]`` float64; a row with no sample stays all zero.
    """
    m = _array(cm).astype(np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"a confusion matrix must be square [C, C], got shape {m.shape}")
    rows = m.sum(axis=1, keepdims=True)
    return np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)


def plot_confusion(cm: Any, class_names: Sequence[str] | None = None, title: str = "",
                   ax: Axes | None = None) -> Figure:
    """A seaborn heatmap of the row-normalised confusion matrix, each cell annotated with its count.

    Colour is the share of the true class (row) predicted as each class, so the diagonal is the per-class
    (producer's) accuracy whatever the class sizes; the numbers are the raw counts.

    Args:
        cm: confusion matrix ``[C, C]`` of counts, rows = true class, columns = predicted class (as
            :func:`rswb.metrics.classification.classification_report` returns it).
        class_names: name of each class (default: ``class k``).
        title: title; OA and AA of the matrix are appended.
        ax: axes to draw on (default: a new figure).

    Returns:
        The figure.
    """
    import seaborn as sns

    counts = _array(cm).astype(np.int64)
    share = normalize_rows(counts)
    c = len(counts)
    names = _names(class_names, c)
    if ax is None:
        side = max(4.5, 0.55 * c + 2.5)
        ax = plt.subplots(figsize=(side + 1.2, side), layout="constrained")[1]
    sns.heatmap(share, annot=counts, fmt="d", cmap="Blues", vmin=0.0, vmax=1.0, square=True, ax=ax,
                xticklabels=names, yticklabels=names, annot_kws={"fontsize": 8 if c <= 12 else 6},
                cbar_kws={"label": "share of the true class"}, linewidths=0.3, linecolor="white")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.tick_params(axis="x", labelrotation=45, labelsize="small")
    ax.tick_params(axis="y", labelrotation=0, labelsize="small")
    scores = scores_from_confusion(counts) if counts.sum() else {"OA": float("nan"), "AA": float("nan")}
    ax.set_title(f"{title}{': ' if title else ''}OA {100 * scores['OA']:.1f} %, AA {100 * scores['AA']:.1f} % "
                 f"({counts.sum()} items)", fontsize="medium")
    return ax.figure


# ---------------------------------------------------------------------------------------------------- class maps


def map_accuracy(pred: np.ndarray, ground_truth: np.ndarray) -> float:
    """Share of the labelled pixels of ``ground_truth`` (1..C, 0 = unlabelled) where the 0-based ``pred`` is right."""
    labelled = ground_truth > 0
    if not labelled.any():
        return float("nan")
    return float((pred[labelled] == ground_truth[labelled] - 1).mean())


def plot_class_maps(maps: Mapping[str, Any], ground_truth: Any, class_names: Sequence[str] | None = None,
                    ncols: int = 4) -> Figure:
    """Full-scene predicted class maps next to the ground truth, in the fixed label colours with one legend.

    Args:
        maps: ``{title: predicted map [H, W]}`` of 0-based classes (e.g. :func:`rswb.models.pha.dense_predict`
            per version).
        ground_truth: label map ``[H, W]`` with 1..C for the classes and 0 = unlabelled (shown black).
        class_names: name of each class (default: ``class k``).
        ncols: panels per row.

    Returns:
        The figure: the ground truth first, then one panel per map titled with its accuracy on the labelled
        ground-truth pixels (all of them, so it can differ from a run's subsampled test score).

    Raises:
        ValueError: a map's shape differs from the ground truth's.
    """
    gt = _array(ground_truth).astype(np.int64)
    preds = {k: _array(v).astype(np.int64) for k, v in maps.items()}
    for k, v in preds.items():
        if v.shape != gt.shape:
            raise ValueError(f"map {k!r} has shape {v.shape}, the ground truth {gt.shape}")
    c = len(class_names) if class_names is not None else int(max([gt.max(), *(v.max() + 1 for v in preds.values())]))
    names = _names(class_names, c)
    panels = 1 + len(preds)
    cols = max(1, min(ncols, panels))
    rows = -(-panels // cols)
    aspect = gt.shape[0] / max(gt.shape[1], 1)
    height = 3.6 * aspect * rows + 0.4 + _legend_space(c + 1)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, height), squeeze=False, layout="constrained")
    axes = axes.ravel()
    for ax in axes[panels:]:
        fig.delaxes(ax)
    _show_labels(axes[0], gt, c, f"ground truth ({int((gt > 0).sum())} px)")
    for ax, (title, pred) in zip(axes[1:], preds.items()):
        _show_labels(ax, pred + 1, c, f"{title}\nOA {100 * map_accuracy(pred, gt):.1f} % on the labelled px")
    _class_legend(fig, names)
    return fig


def plot_version_detail(pred_map: Any | None, ground_truth: Any | None, cm: Any,
                        class_names: Sequence[str] | None = None, title: str = "") -> Figure:
    """One version at a glance: its full-scene class map (pixel mode) next to its confusion matrix.

    Args:
        pred_map: predicted map ``[H, W]`` of 0-based classes, or ``None`` (scene mode: the matrix only).
        ground_truth: label map ``[H, W]`` (1..C, 0 = unlabelled) to score the map against, or ``None``.
        cm: test confusion matrix ``[C, C]``.
        class_names: name of each class.
        title: the version (or any title).

    Returns:
        The figure (what :func:`version_picker` shows per version).
    """
    c = len(_array(cm))
    names = _names(class_names, c)
    if pred_map is None:
        return plot_confusion(cm, names, title)
    side = max(4.5, 0.55 * c + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(side + 6.0, side), gridspec_kw={"width_ratios": [1, 1.25]},
                             layout="constrained")
    pred = _array(pred_map).astype(np.int64)
    sub = "" if ground_truth is None else f"\nOA {100 * map_accuracy(pred, _array(ground_truth)):.1f} % on the map"
    _show_labels(axes[0], pred + 1, c, f"{title} class map{sub}")
    axes[0].legend(handles=[Patch(color=_class_colour(i, c), label=n) for i, n in enumerate(names)],
                   loc="upper left", bbox_to_anchor=(-0.05, -0.02), ncol=2, fontsize="x-small", frameon=False)
    plot_confusion(cm, names, title, ax=axes[1])
    return fig


# ---------------------------------------------------------------------------------------------------- alignment


def plot_alignment_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure:
    """How MS and PAN features come together during training, per stage and version, from ``metrics.jsonl``.

    Three panels over the epochs: the linear CKA of the MS and PAN stage features (``train_cka_<stage>``, every
    two-branch version); the mean cosine of positive MS-PAN pairs of the alignment embeddings
    (``train_sim_<stage>``, aligned versions only); the weight of each stage's alignment term
    (``train_w_<stage>``: flat for the equal schedule, a bump moving shallow -> deep for the progressive one).
    Colour = version (fixed per ladder version), line style = stage (dotted shallow, dashed middle, solid deep).

    Args:
        histories: ``{version: epoch records}``, each record a dict of one ``metrics.jsonl`` line
            (:meth:`rswb.engine.runs.RunFolder.read_history`); versions without a term are skipped in its panel.

    Returns:
        The figure (a panel with nothing to show says so).
    """
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), layout="constrained")
    panels = (("cka", "linear CKA of MS vs PAN stage features", "CKA"),
              ("sim", "cosine of positive MS-PAN pairs (aligned stages)", "mean cosine"),
              ("w", "stage weight of the alignment term", "weight"))
    shown: list[str] = []
    for ax, (term, title, ylabel) in zip(axes, panels):
        drawn = False
        for version in _version_order(list(histories)):
            records = sorted(histories[version], key=lambda r: r.get("epoch", 0))
            for stage in STAGE_NAMES:
                key = f"train_{term}_{stage}"
                pts = [(r.get("epoch", i + 1), r[key]) for i, r in enumerate(records)
                       if r.get(key) is not None and np.isfinite(r[key])]
                if not pts:
                    continue
                x, y = zip(*pts)
                ax.plot(x, y, STAGE_STYLES[stage], color=_version_colour(version), marker=".", linewidth=1.5)
                drawn = True
                if version not in shown:
                    shown.append(version)
        if not drawn:
            ax.text(0.5, 0.5, "no version in the selection logs this", ha="center", va="center",
                    transform=ax.transAxes, color="gray")
        ax.set_title(title, fontsize="medium")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=_version_colour(v), linewidth=2, label=v) for v in shown]
    handles += [Line2D([], [], color="black", linestyle=STAGE_STYLES[s], label=s) for s in STAGE_NAMES]
    fig.legend(handles=handles, loc="outside right center", fontsize="small", frameon=False)
    return fig


def pair_cosines(ms: Any, pan: Any) -> tuple[float, float]:
    """Mean cosine similarity of the positive pairs ``(ms_i, pan_i)`` and of all the other pairs ``(ms_i, pan_j)``.

    Args:
        ms: MS embeddings ``[N, D]``.
        pan: PAN embeddings ``[N, D]`` (row ``i`` is the same item as ``ms[i]``).

    Returns:
        ``(positive, negative)``: aligned embeddings have a high first and a lower second value; a gap near 0
        means an item's MS embedding is no closer to its own PAN embedding than to any other.
    """
    a, b = _unit(_array(ms)), _unit(_array(pan))
    if a.shape != b.shape:
        raise ValueError(f"MS embeddings {a.shape} and PAN embeddings {b.shape} differ in shape")
    sim = a @ b.T
    n = len(sim)
    pos = float(np.trace(sim) / n)
    neg = float((sim.sum() - np.trace(sim)) / (n * (n - 1))) if n > 1 else float("nan")
    return pos, neg


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def plot_modality_embedding(before: Mapping[str, Any], after: Mapping[str, Any],
                            class_names: Sequence[str] | None = None, n_pairs: int = 20, seed: int = 0) -> Figure:
    """2-D PCA of MS and PAN embeddings of the same items, before and after alignment, side by side.

    Each panel L2-normalises the embeddings (InfoNCE compares cosines) and projects the MS and PAN points together
    onto their first two principal components, so a gap between the modalities shows as two separate clouds.
    MS points are circles, PAN points triangles, both coloured by class (fixed label colours); grey lines join the
    two embeddings of ``n_pairs`` random items. Titles give :func:`pair_cosines`.

    Args:
        before: ``{"ms": [N, D], "pan": [N, D], "labels": [N]}`` of the untrained model (optional ``"title"``).
        after: the same for the trained model (see :func:`modality_embeddings`).
        class_names: name of each 0-based class (default: ``class k``).
        n_pairs: pairs joined by a line.
        seed: which pairs are joined.

    Returns:
        The figure: two panels and a legend of markers and classes.
    """
    labels_all = np.concatenate([_array(d["labels"]).reshape(-1) for d in (before, after)])
    c = len(class_names) if class_names is not None else int(labels_all.max()) + 1
    names = _names(class_names, c)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), layout="constrained")
    for ax, (default, emb) in zip(axes, (("before alignment (untrained)", before), ("after alignment", after))):
        ms, pan = _unit(_array(emb["ms"])), _unit(_array(emb["pan"]))
        y = _array(emb["labels"]).reshape(-1).astype(np.int64)
        if not len(ms) == len(pan) == len(y):
            raise ValueError(f"ms, pan and labels differ in length: {len(ms)}, {len(pan)}, {len(y)}")
        xy, share = pca_2d(np.concatenate([ms, pan]))
        p_ms, p_pan = xy[: len(ms)], xy[len(ms):]
        pick = np.random.default_rng(seed).choice(len(ms), min(n_pairs, len(ms)), replace=False)
        for i in pick:
            ax.plot([p_ms[i, 0], p_pan[i, 0]], [p_ms[i, 1], p_pan[i, 1]], color="gray", linewidth=0.7, alpha=0.7)
        colours = np.array([_class_colour(int(k), c) for k in y])
        ax.scatter(p_ms[:, 0], p_ms[:, 1], s=14, marker="o", c=colours, alpha=0.8, linewidths=0)
        ax.scatter(p_pan[:, 0], p_pan[:, 1], s=18, marker="^", facecolors="none", edgecolors=colours, linewidths=0.9)
        pos, neg = pair_cosines(ms, pan)
        ax.set_title(f"{emb.get('title', default)}\npair cosine {pos:.2f}, other pairs {neg:.2f}", fontsize="medium")
        ax.set_xlabel(f"PC1 ({100 * share[0]:.0f} % of variance)")
        ax.set_ylabel(f"PC2 ({100 * share[1]:.0f} % of variance)")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], marker="o", linestyle="", color="gray", label="MS"),
               Line2D([], [], marker="^", linestyle="", markerfacecolor="none", color="gray", label="PAN"),
               Line2D([], [], color="gray", label="same item")]
    present = np.unique(labels_all)
    handles += [Patch(color=_class_colour(int(k), c), label=names[int(k)]) for k in present]
    fig.legend(handles=handles, loc="outside right center", fontsize="small", frameon=False)
    return fig


def describe_alignment(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """One sentence on what training did to the MS-PAN pairs, computed from the numbers the embedding figure shows.

    Compares :func:`pair_cosines` before and after: the cosine of an item's own MS-PAN pair and of other items'
    pairs, and their gap (how much closer an item's MS embedding is to its own PAN embedding than to others). The
    verb (raised, lowered, left unchanged: within 0.01) follows the sign of the change.
    """
    (p0, n0), (p1, n1) = pair_cosines(before["ms"], before["pan"]), pair_cosines(after["ms"], after["pan"])

    def verb(a: float, b: float) -> str:
        return "left unchanged" if abs(b - a) < 0.01 else ("raised" if b > a else "lowered")

    g0, g1 = p0 - n0, p1 - n1
    return (f"Training {verb(p0, p1)} the cosine of an item's own MS-PAN pair ({p0:.2f} -> {p1:.2f}) and "
            f"{verb(n0, n1)} that of other items' pairs ({n0:.2f} -> {n1:.2f}): the gap between them went from "
            f"{g0:.2f} to {g1:.2f}, so an item's two embeddings are "
            + ("more" if g1 > g0 + 0.01 else "less" if g1 < g0 - 0.01 else "no more")
            + " distinguishable from other items' after training" + (" than before." if abs(g1 - g0) >= 0.01
                                                                       else " than before it."))


def plot_pretrain_curve(curve: Mapping[str, Sequence[float]], title: str = "pre-training") -> Figure:
    """The self-supervised pre-training's loss terms per step (raw, faint; a 10-step moving mean, solid).

    Args:
        curve: ``{term: [value per step]}`` as :func:`rswb.infer.pretraining_maps` returns it (``loss``,
            ``within_loss``, and for the cross-modal objective ``cross_loss``, ``orth_loss``, ``sim_cross``).
        title: the figure's title.
    """
    terms = [k for k in ("loss", "within_loss", "cross_loss", "orth_loss") if k in curve]
    fig, axes = plt.subplots(1, 2 if "sim_cross" in curve else 1, figsize=(10 if "sim_cross" in curve else 6, 3.2),
                             squeeze=False, layout="constrained")
    ax = axes[0][0]
    for i, k in enumerate(terms):
        y = np.asarray(curve[k], dtype=float)
        steps = np.arange(1, len(y) + 1)
        ax.plot(steps, y, color=f"C{i}", alpha=0.25, lw=0.8)
        win = min(10, len(y))
        smooth = np.convolve(y, np.ones(win) / win, mode="valid")
        ax.plot(steps[win - 1:], smooth, color=f"C{i}", lw=1.6, label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    if "sim_cross" in curve:
        y = np.asarray(curve["sim_cross"], dtype=float)
        axes[0][1].plot(np.arange(1, len(y) + 1), y, color="C4")
        axes[0][1].set_xlabel("step")
        axes[0][1].set_ylabel("cosine")
        axes[0][1].set_title("shared MS-PAN embeddings of the same item", fontsize=10)
    return fig


def describe_pretraining(maps: Mapping[str, Any]) -> str:
    """One sentence on the agreement maps before and after pre-training, computed from the numbers they show.

    Compares the mean cosine of the MS and PAN shared embeddings of the same place with that of places ``shift``
    MS pixels apart (:func:`rswb.infer.pretraining_maps`): only a gap between the two says the embeddings align
    places rather than agree everywhere.
    """
    same, other, shift = maps["same_place"], maps["shifted"], maps["shift"]
    gap = {k: same[k] - other[k] for k in ("before", "after")}
    verdict = ("the pre-training made the MS and PAN embeddings of a place agree more with each other than with "
               "places nearby" if gap["after"] > gap["before"] + 0.02 else
               "the pre-training did not make the embeddings of a place agree more than those of places nearby")
    return (f"Mean MS-PAN cosine on this tile: the same place {same['before']:.2f} before and {same['after']:.2f} "
            f"after pre-training; places {shift} MS pixels apart {other['before']:.2f} and {other['after']:.2f}. The "
            f"gap went from {gap['before']:.2f} to {gap['after']:.2f}: {verdict}.")


# ---------------------------------------------------------------------------------------------------- dictionary


def class_mean_codes(codes: Any, labels: Any, num_classes: int) -> np.ndarray:
    """Mean code of every class: ``[C, atoms]`` (a class with no item is all zero)."""
    a = _array(codes).astype(np.float64)
    y = _array(labels).reshape(-1).astype(np.int64)
    if len(a) != len(y):
        raise ValueError(f"{len(a)} codes but {len(y)} labels")
    sums = np.zeros((num_classes, a.shape[1]))
    np.add.at(sums, y, a)
    counts = np.bincount(y, minlength=num_classes)[:num_classes, None]
    return np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)


def plot_dictionary_usage(codes_ms: Any, codes_pan: Any, labels: Any, class_names: Sequence[str]) -> Figure:
    """How the two modalities use the shared dictionary (``pha_v5``).

    Left and middle: the mean code of each class on each atom (``[C, atoms]`` heatmaps on one colour scale), for
    MS and for PAN; similar rows in both mean the modalities describe a class with the same atoms. Right: the share
    of active atoms (code > 0) per item, averaged per class, for MS and PAN (the overall share in the legend).

    Args:
        codes_ms: non-negative MS codes ``[N, atoms]`` (``codes_ms`` of :meth:`rswb.models.pha.PHANet.forward`).
        codes_pan: PAN codes ``[N, atoms]`` of the same items.
        labels: 0-based class of each item ``[N]``.
        class_names: name of each class.

    Returns:
        The figure.
    """
    ms, pan = _array(codes_ms).astype(np.float64), _array(codes_pan).astype(np.float64)
    if ms.shape != pan.shape:
        raise ValueError(f"MS codes {ms.shape} and PAN codes {pan.shape} differ in shape")
    y = _array(labels).reshape(-1).astype(np.int64)
    c, atoms = len(class_names), ms.shape[1]
    means = {m: class_mean_codes(x, y, c) for m, x in (("MS", ms), ("PAN", pan))}
    vmax = max(float(v.max()) for v in means.values()) or 1.0
    fig, axes = plt.subplots(1, 3, figsize=(17, 0.35 * c + 2.8), gridspec_kw={"width_ratios": [1, 1, 0.7]},
                             layout="constrained")
    for ax, (m, mean) in zip(axes, means.items()):
        im = ax.imshow(mean, aspect="auto", cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_yticks(range(c))
        ax.set_yticklabels(class_names if m == "MS" else [], fontsize="small")
        ax.set_xlabel(f"atom (of {atoms})")
        ax.set_title(f"{m}: mean code per class", fontsize="medium")
    fig.colorbar(im, ax=axes[:2], fraction=0.02, pad=0.01, label="mean code")
    x = np.arange(c)
    for i, (m, codes) in enumerate((("MS", ms), ("PAN", pan))):
        share = class_mean_codes(codes > 0, y, c).mean(1)
        axes[2].barh(x + (i - 0.5) * 0.4, 100 * share, 0.4, label=f"{m} (all items: {100 * (codes > 0).mean():.0f} %)")
    axes[2].set_yticks(x)
    axes[2].set_yticklabels([])
    axes[2].set_ylim(c - 0.5, -0.5)  # class 0 on top, as in the heatmaps
    axes[2].set_xlabel("active atoms per item (%)")
    axes[2].set_title("share of active atoms", fontsize="medium")
    axes[2].legend(fontsize="x-small", loc="lower right")
    return fig


def describe_dictionary(codes_ms: Any, codes_pan: Any, labels: Any, class_names: Sequence[str]) -> str:
    """One sentence on whether MS and PAN describe each class with the same atoms, from the figure's class means.

    For each class the Pearson correlation of its MS and PAN mean codes (the two heatmaps' rows) is compared with the
    correlation of MS and PAN rows of different classes: "largely the same atoms" only when same-class rows
    correlate at least 0.5 and clearly more (by 0.1) than different-class rows do; "more alike than others" when
    only the second holds; else "mostly different atoms".
    """
    y = _array(labels).reshape(-1).astype(np.int64)
    c = len(class_names)
    ms = class_mean_codes(_array(codes_ms), y, c)
    pan = class_mean_codes(_array(codes_pan), y, c)
    present = [k for k in range(c) if (y == k).any()]

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a - a.mean(), b - b.mean()
        d = np.sqrt((a**2).sum() * (b**2).sum())
        return float((a * b).sum() / d) if d > 0 else 0.0

    same = [corr(ms[k], pan[k]) for k in present]
    other = [corr(ms[k], pan[j]) for k in present for j in present if j != k]
    s, o = float(np.mean(same)), float(np.mean(other)) if other else float("nan")
    if s > o + 0.1:
        verdict = ("MS and PAN describe a class with largely the same atoms" if s >= 0.5 else
                   "same-class rows are more alike than others, but the two modalities still use mostly different "
                   "atoms")
    else:
        verdict = "MS and PAN use mostly different atoms for the same class (the rows differ)"
    low = present[int(np.argmin(same))]
    return (f"Same-class MS and PAN rows correlate {s:.2f} on average (lowest: {class_names[low]}, "
            f"{min(same):.2f}); rows of different classes {o:.2f}: {verdict}.")


# ---------------------------------------------------------------------------------------------------- widget


def version_picker(views: Mapping[str, Callable[[], Figure]], value: str | None = None) -> Any:
    """A dropdown that switches which version's figure is shown (:func:`rswb.viz.common.figure_picker`).

    Args:
        views: ``{version: callable () -> Figure}``, e.g. ``lambda: plot_version_detail(...)`` per version.
        value: the version shown first (default: the first one).

    Returns:
        An ``ipywidgets.VBox``: the ``Dropdown`` (labelled "version"), then the ``Image``.
    """
    return figure_picker(views, value, description="version")


# ----------------------------------------------------------------------------------------- where the model looks


def plot_agreement_maps(maps: Mapping[str, Any]) -> Figure:
    """The tile's composite, then per stage where MS and PAN agree (cosine, blue = agree, red = disagree).

    Each stage's map covers the tile minus the border its unpadded convolutions cannot reach; that border is grey
    (no value), and the axis is left visible so the border is not mistaken for the scale's white (cosine 0).

    Args:
        maps: the output of :func:`rswb.infer.pha_scene_maps` (``rgb``, ``agreement``, ``offsets``,
            ``stage_names``); each stage's map is drawn on the tile pixels its positions are centred on.
    """
    rgb = np.asarray(maps["rgb"])
    n = 1 + len(maps["agreement"])
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False, layout="constrained")
    axes = axes[0]
    axes[0].imshow(rgb, interpolation="nearest")
    axes[0].set_title(f"MS composite, tile at {tuple(maps['origin'])}", fontsize=9)
    im = None
    for ax, m, off, name in zip(axes[1:], maps["agreement"], maps["offsets"], maps["stage_names"]):
        m = np.asarray(m)
        # Outside a stage's map (the border its unpadded convolutions do not reach) there is no value: grey, not a
        # tinted composite that would read as a colour of the scale.
        ax.set_facecolor("#d0d0d0")
        im = ax.imshow(m, cmap="RdBu", vmin=-1, vmax=1, interpolation="nearest",
                       extent=(off - 0.5, off + m.shape[1] - 0.5, off + m.shape[0] - 0.5, off - 0.5))
        ax.set_xlim(-0.5, rgb.shape[1] - 0.5)
        ax.set_ylim(rgb.shape[0] - 0.5, -0.5)
        ax.set_title(f"{name}: mean cosine {m.mean():.2f}", fontsize=9)
    axes[0].axis("off")
    for ax in axes[1:]:
        ax.set_xticks([])
        ax.set_yticks([])
    if im is not None:
        fig.colorbar(im, ax=list(axes[1:]), shrink=0.8, label="MS-PAN cosine (grey: outside the stage's map)")
    return fig


def plot_atom_maps(maps: Mapping[str, Any], top: int = 6) -> Figure:
    """``pha_v5``: where the most used dictionary atoms fire over the tile, for MS (top row) and PAN (bottom row).

    Args:
        maps: the output of :func:`rswb.infer.pha_scene_maps` with ``atoms``.
        top: atoms shown, those with the largest mean activation over both modalities.
    """
    atoms = {m: np.asarray(a) for m, a in maps["atoms"].items()}
    order = np.argsort(-(atoms["ms"].mean((1, 2)) + atoms["pan"].mean((1, 2))))[:top]
    fig, axes = plt.subplots(2, len(order), figsize=(2.2 * len(order), 4.6), squeeze=False, layout="constrained")
    vmax = max(float(atoms[m][order].max()) for m in atoms) or 1.0
    for r, m in enumerate(("ms", "pan")):
        for c, a in enumerate(order):
            ax = axes[r, c]
            ax.imshow(atoms[m][a], cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_title(f"{m.upper()} atom {a}", fontsize=9)
            ax.axis("off")
    fig.suptitle("dictionary codes on the deep stage's grid, per atom: MS (top) and PAN (bottom)", fontsize=10)
    return fig


def plot_pixel_attributions(attr: Mapping[str, Any], labels: Sequence[int] | None = None,
                            class_names: Sequence[str] | None = None) -> Figure:
    """Which MS and PAN pixels make the decision of chosen test pixels: patch, attribution, patch, attribution.

    The maps are the signed integrated gradients of :func:`rswb.infer.pha_attributions`, summed over bands, on a
    diverging colour map centred at 0 (red raises the score, blue lowers it), each on its own symmetric scale: a PAN
    pixel covers a sixteenth of an MS pixel, so per-pixel values of the two do not compare, their sums do. The
    titles give each map's sum and PAN's share of the score, computed from those sums.

    Args:
        attr: the output of :func:`rswb.infer.pha_attributions`.
        labels: 0-based true class of each pixel (for the titles).
        class_names: class names.
    """
    ms, pan, pred = np.asarray(attr["ms"]), np.asarray(attr["pan"]), np.asarray(attr["pred"])
    seen = [*pred.tolist(), *(list(labels) if labels is not None else [])]
    names = _names(class_names, len(class_names) if class_names is not None else int(max(seen)) + 1)
    n = len(pred)
    fig, axes = plt.subplots(n, 4, figsize=(9.6, 2.4 * n), squeeze=False, layout="constrained")
    for i in range(n):
        msi = np.clip((ms[i] - ms[i].min()) / max(float(np.ptp(ms[i])), 1e-6), 0, 1)
        p = np.clip((pan[i] - pan[i].min()) / max(float(np.ptp(pan[i])), 1e-6), 0, 1)
        a_ms, a_pan = np.asarray(attr["attr_ms"][i]), np.asarray(attr["attr_pan"][i])
        truth = f"{names[labels[i]]} -> " if labels is not None else ""
        share = float(attr["pan_share"][i])
        axes[i, 0].imshow(msi, interpolation="nearest")
        axes[i, 0].set_title(f"{truth}{names[pred[i]]}", fontsize=9)
        axes[i, 2].imshow(p, cmap="gray", interpolation="nearest")
        axes[i, 2].set_title("PAN", fontsize=9)
        for ax, a, what in ((axes[i, 1], a_ms, "MS"), (axes[i, 3], a_pan, "PAN")):
            lim = max(float(np.abs(a).max()), 1e-12)
            ax.imshow(a, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            ax.set_title(f"{what}: {a.sum():+.2f} of the score" + (f" ({100 * share:.0f} %)" if what == "PAN"
                                                                    and np.isfinite(share) else ""), fontsize=9)
        for ax in axes[i]:
            ax.axis("off")
    fig.suptitle("red raises the score, blue lowers it (each map on its own scale, centred at 0)", fontsize=9)
    return fig
