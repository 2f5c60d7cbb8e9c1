"""Figures and tables of notebook 01 (data inspection); every plotting function returns its Figure.

MS+PAN scenes: band statistics and histograms, class pixel counts, the PAN-against-MS registration check. Scene
folders: a sample grid per class and the class balance. Caption sets: captions per image, caption lengths, frequent
words, and images shown with their captions. The scene overview itself (composite, PAN, label maps with a legend)
is :func:`rswb.viz.pha.plot_scene_overview`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from rswb.data.captions import STOPWORDS, CaptionSet, tokenize
from rswb.data.check import registration_correlation
from rswb.data.mspan import MSPANScene
from rswb.data.scenes import SceneFolder, load_image
from rswb.viz.common import figure_picker

__all__ = [
    "band_statistics", "class_pixel_counts", "plot_band_histograms", "plot_captioned_images",
    "plot_caption_statistics", "plot_class_balance", "plot_registration", "plot_scene_grid",
]


def _band_names(scene: MSPANScene) -> list[str]:
    return [f"MS {i + 1}" for i in range(scene.bands)] + ["PAN"]


def band_statistics(scene: MSPANScene, max_samples: int = 2_000_000):
    """Per-band statistics of a scene as a DataFrame: min, 2nd percentile, mean, median, 98th percentile, max, std.

    Percentiles are estimated on a regular sub-grid of at most ``max_samples`` values per band (exact for small
    scenes); min, max and mean use every value.
    """
    import pandas as pd

    rows = []
    for name, band in zip(_band_names(scene), [*scene.ms, scene.pan[0]]):
        flat = band.ravel()
        sub = flat[:: max(1, flat.size // max_samples)]
        p2, p50, p98 = np.percentile(sub, [2, 50, 98])
        rows.append({"band": name, "min": float(flat.min()), "p2": float(p2),
                     "mean": float(flat.mean(dtype=np.float64)), "median": float(p50), "p98": float(p98),
                     "max": float(flat.max()), "std": float(flat.std())})
    return pd.DataFrame(rows).set_index("band")


def plot_band_histograms(scene: MSPANScene, bins: int = 128, max_samples: int = 2_000_000):
    """Histogram of every MS band and of PAN (log counts), with the 2nd and 98th percentiles marked."""
    import matplotlib.pyplot as plt

    bands = [*scene.ms, scene.pan[0]]
    fig, axes = plt.subplots(1, len(bands), figsize=(2.8 * len(bands), 2.8), squeeze=False)
    for ax, name, band in zip(axes[0], _band_names(scene), bands):
        flat = band.ravel()[:: max(1, band.size // max_samples)]
        ax.hist(flat, bins=bins, color="tab:gray" if name == "PAN" else "tab:blue", log=True)
        for q in np.percentile(flat, [2, 98]):
            ax.axvline(q, color="tab:red", lw=0.8, ls="--")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle("value histograms (dashed: 2nd / 98th percentile)", fontsize=10)
    fig.tight_layout()
    return fig


def class_pixel_counts(scene: MSPANScene, class_names: Sequence[str] | None = None):
    """Labelled pixels per class in every label map of the scene (a DataFrame; class 0, unlabelled, left out)."""
    import pandas as pd

    c = scene.num_classes
    names = list(class_names or scene.class_names or [f"class {k}" for k in range(1, c + 1)])
    data = {split: np.bincount(m.ravel(), minlength=c + 1)[1:c + 1] for split, m in scene.labels.items()}
    table = pd.DataFrame(data, index=names[:c])
    table.index.name = "class"
    return table


def plot_registration(scene: MSPANScene, crop: int = 64):
    """Is PAN registered with MS? PAN block-averaged to the MS grid against the MS band-mean intensity.

    Three panels: a 2-D histogram of the two with their Pearson correlation (high for a registered pair, since PAN
    is about a weighted sum of the bands); the difference of the two after standardising each, where a shift shows
    as paired bright/dark edges; and a checkerboard of PAN and the upsampled MS intensity on a ``crop`` x ``crop``
    MS-pixel window, where misregistration breaks edges at the tile borders.
    """
    import matplotlib.pyplot as plt

    r, (h, w) = scene.ratio, scene.shape
    intensity = scene.ms.mean(0)
    pan_block = scene.pan[0][: h * r, : w * r].reshape(h, r, w, r).mean((1, 3))
    corr = registration_correlation(scene)

    def z(x):
        return (x - x.mean()) / max(float(x.std()), 1e-12)

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    axes[0].hist2d(intensity.ravel(), pan_block.ravel(), bins=80, cmap="magma", cmin=1)
    axes[0].set(xlabel="MS band-mean intensity", ylabel=f"PAN averaged over {r}x{r} blocks",
                title=f"registration: r = {corr:.3f}")
    diff = z(pan_block) - z(intensity)
    lim = float(np.percentile(np.abs(diff), 99))
    im = axes[1].imshow(diff, cmap="coolwarm", vmin=-lim, vmax=lim)
    axes[1].set_title("standardised PAN - MS intensity", fontsize=10)
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    c = min(crop, h, w)
    y0, x0 = (h - c) // 2, (w - c) // 2
    pan_crop = z(scene.pan[0][y0 * r:(y0 + c) * r, x0 * r:(x0 + c) * r])
    ms_up = np.kron(z(intensity[y0:y0 + c, x0:x0 + c]), np.ones((r, r)))
    tile = max(1, (c * r) // 8)
    yy, xx = np.indices(pan_crop.shape)
    board = np.where(((yy // tile) + (xx // tile)) % 2 == 0, pan_crop, ms_up)
    axes[2].imshow(np.clip(board, -2.5, 2.5), cmap="gray")
    axes[2].set_title(f"checkerboard PAN / MS intensity ({c}x{c} MS px)", fontsize=10)
    for ax in axes[1:]:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def plot_scene_grid(folder: SceneFolder, per_class: int = 4, max_classes: int | None = None, size: int = 96):
    """``per_class`` sample images of every class (rows), the first ones of each class in the folder's order."""
    import matplotlib.pyplot as plt

    classes = list(folder.classes)[:max_classes]
    by_class: dict[int, list[Path]] = {}
    for rec in folder.records:
        if len(by_class.setdefault(rec.label, [])) < per_class:
            by_class[rec.label].append(Path(rec.path))
    fig, axes = plt.subplots(len(classes), per_class, figsize=(1.3 * per_class + 1.6, 1.3 * len(classes)),
                             squeeze=False)
    for k, (row, name) in enumerate(zip(axes, classes)):
        for j, ax in enumerate(row):
            paths = by_class.get(k, [])
            if j < len(paths):
                ax.imshow(load_image(paths[j], size))
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout(pad=0.3)
    return fig


def plot_class_images(folder: SceneFolder, label: int, n: int = 8, size: int = 128):
    """The first ``n`` images of class ``label`` of a scene folder in one row, titled with their file names.

    Raises:
        ValueError: ``label`` is not a class of the folder.
    """
    import matplotlib.pyplot as plt

    if not 0 <= label < len(folder.classes):
        raise ValueError(f"{folder.root}: no class {label} (it has {len(folder.classes)})")
    members = [Path(rec.path) for rec in folder.records if rec.label == label]
    paths = members[:n]
    fig, axes = plt.subplots(1, max(len(paths), 1), figsize=(1.6 * max(len(paths), 1), 2.0), squeeze=False)
    for ax, path in zip(axes[0], paths):
        ax.imshow(load_image(path, size))
        ax.set_title(path.name, fontsize=7)
    for ax in axes[0]:
        ax.axis("off")
    fig.suptitle(f"{list(folder.classes)[label]} ({len(members)} images)")
    fig.tight_layout()
    return fig


def class_browser(folder: SceneFolder, n: int = 8, size: int = 128) -> Any:
    """A dropdown of the folder's classes showing ``n`` images of the picked one (:func:`plot_class_images`)."""
    views = {name: partial(plot_class_images, folder, k, n, size) for k, name in enumerate(folder.classes)}
    return figure_picker(views, description="class")


def plot_class_balance(folder: SceneFolder, splits: Sequence[str] = ("train", "query")):
    """Images per class in each split of the layout's split rule (stacked bars)."""
    import matplotlib.pyplot as plt

    classes = list(folder.classes)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(classes) + 2), 3.2))
    bottom = np.zeros(len(classes))
    for split in splits:
        counts = np.bincount(folder.with_split(split).labels, minlength=len(classes))
        ax.bar(range(len(classes)), counts, bottom=bottom, label=f"{split} ({int(counts.sum())})")
        bottom += counts
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels(classes, rotation=60, ha="right", fontsize=8)
    ax.set(ylabel="images", title=f"class balance ({len(folder.with_split('all'))} images, {len(classes)} classes)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_caption_statistics(captions: CaptionSet, top: int = 15):
    """Captions per image, words per caption, and the most frequent content words of a caption set."""
    import matplotlib.pyplot as plt

    tokens = [tokenize(c) for c in captions.captions]
    per_image = captions.captions_per_image()
    lengths = np.array([len(t) for t in tokens])
    words = Counter(w for t in tokens for w in t if w not in STOPWORDS).most_common(top)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.4))
    axes[0].hist(per_image, bins=np.arange(per_image.min(), per_image.max() + 2) - 0.5, color="tab:blue")
    axes[0].set(xlabel="captions per image", ylabel="images", title=f"{captions.num_images:,} images")
    axes[1].hist(lengths, bins=np.arange(0, lengths.max() + 2) - 0.5, color="tab:green")
    axes[1].set(xlabel="words per caption", ylabel="captions", title=f"{captions.num_captions:,} captions, "
                f"mean {lengths.mean():.1f} words")
    axes[2].barh([w for w, _ in words][::-1], [n for _, n in words][::-1], color="tab:orange")
    dup = captions.stats()["duplicate_rate"]
    axes[2].set(xlabel="occurrences", title=f"frequent content words (duplicate captions: {100 * dup:.1f} %)")
    axes[2].tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return fig


def plot_captioned_images(paths: Sequence[str | Path], captions: Sequence[Sequence[str]], size: int = 256):
    """Images side by side, each with its captions underneath (wrapped)."""
    import textwrap

    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(paths), figsize=(3.6 * len(paths), 5.2), squeeze=False)
    for ax, path, caps in zip(axes[0], paths, captions):
        ax.imshow(load_image(path, size))
        ax.set_title(Path(path).name, fontsize=9)
        ax.set_xlabel("\n".join("\n".join(textwrap.wrap(f"- {c}", 44)) for c in caps), fontsize=7, loc="left")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def load_for_inspection(kind: str, root: str | Path | None):
    """The data set of one notebook-01 section, or ``None`` with the reason printed, so that a section can skip.

    Args:
        kind: ``"mspan"`` (:func:`rswb.data.load_mspan`), ``"scenes"`` (:class:`rswb.data.SceneFolder`, split
            ``"all"``) or ``"captions"`` (the ``train`` split of :func:`rswb.data.read_captions`, or ``"all"`` of
            a Karpathy JSON that has no ``train`` split).
        root: the data set's path; ``None`` means the embedded synthetic data of that kind, ``""`` means skip.
    """
    from rswb.data import DataError, SceneFolder, load_mspan, read_captions
    from rswb.data.synthetic import ensure_embedded

    if root == "":
        print(f"{kind}: skipped (no path given)")
        return None
    path = Path(root) if root is not None else ensure_embedded(kind)
    try:
        if kind == "mspan":
            return load_mspan(path)
        if kind == "scenes":
            return SceneFolder(path, "all")
        if kind == "captions":
            return read_captions(path, "train")
    except (DataError, FileNotFoundError) as err:
        print(f"{kind}: cannot read {path}: {err}")
        return None
    raise ValueError(f"unknown kind {kind!r}; use mspan, scenes or captions")


__all__ += ["load_for_inspection"]
