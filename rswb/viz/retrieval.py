"""Figures and widgets of notebook 03 (image-text retrieval); every plotting function returns its Figure."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from rswb.data.scenes import load_image
from rswb.viz.common import fig_png, picture_box
from rswb.viz.data import plot_captioned_images
from rswb.viz.explain import overlay_heat

__all__ = [
    "plot_caption_examples", "plot_failure_cases", "plot_search_hits", "plot_similarity_matrix",
    "plot_token_similarity", "plot_training_curves", "plot_word_maps", "search_widget", "describe_ties",
]


def _wrap(text: str, width: int = 38) -> str:
    return "\n".join(textwrap.wrap(text, width))


def plot_caption_examples(split, images: Sequence[int] = (0, 1, 2, 3), size: int = 256):
    """A few images of a split, each with all its captions underneath."""
    return plot_captioned_images([split.image_paths[i] for i in images], [split.captions_of(i) for i in images],
                                 size)


def plot_training_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]], metric: str = "val_mR"):
    """Per method: the training loss and a validation metric per epoch.

    Args:
        histories: ``{name: epoch records}`` (``rswb.engine.experiments.run_history(run)`` of each run).
        metric: the record key plotted on the right.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for name, hist in histories.items():
        epochs = [h["epoch"] for h in hist]
        axes[0].plot(epochs, [h["train_loss"] for h in hist], marker="o", label=name)
        axes[1].plot(epochs, [h.get(metric, np.nan) for h in hist], marker="o", label=name)
    axes[0].set(title="training loss (weighted sum of the *_loss terms)", xlabel="epoch", yscale="log")
    axes[1].set(title=f"validation {metric.removeprefix('val_')}", xlabel="epoch")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_similarity_matrix(embeddings: Mapping[str, torch.Tensor], split, n_images: int = 10):
    """Cosine similarity of the first ``n_images`` test images (rows) with all their captions (columns).

    The ground-truth blocks are outlined: a good model is bright inside them and dark elsewhere.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = min(n_images, split.num_images)
    cols = np.flatnonzero(split.caption_to_image < n)
    cols = cols[np.argsort(split.caption_to_image[cols], kind="stable")]
    sim = (embeddings["image"][:n] @ embeddings["text"][cols].t()).numpy()
    fig, ax = plt.subplots(figsize=(min(14, 0.25 * len(cols) + 3), 0.4 * n + 2))
    im = ax.imshow(sim, cmap="viridis", aspect="auto")
    owners = split.caption_to_image[cols]
    for i in range(n):
        idx = np.flatnonzero(owners == i)
        if len(idx):
            ax.add_patch(Rectangle((idx[0] - 0.5, i - 0.5), len(idx), 1, fill=False, ec="white", lw=1.5))
    ax.set(xlabel="captions (grouped by their image)", ylabel="image", title="image-caption cosine similarity")
    ax.set_yticks(range(n))
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    return fig


def plot_search_hits(hits: Sequence[dict[str, Any]], query: str, truth: int | None = None, size: int = 200):
    """The images :func:`rswb.infer.search_text` returned, best first, with their scores.

    ``truth``: the image the query belongs to (a test caption), framed green when found, and the others red.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(hits), figsize=(2.6 * len(hits), 3.2), squeeze=False)
    for ax, h in zip(axes[0], hits):
        ax.imshow(load_image(h["path"], size))
        ax.set_title(f"#{h['rank']}  {h['score']:.3f}\n{Path(h['path']).name}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        if truth is not None:
            color = "tab:green" if h["image"] == truth else "tab:red"
            for side in ax.spines.values():
                side.set(color=color, linewidth=3)
    fig.suptitle(_wrap(f"query: {query}", 100), fontsize=10)
    fig.tight_layout()
    return fig


def plot_token_similarity(image_path: str | Path, heat: np.ndarray, query: str, size: int = 256):
    """The image, and the per-location similarity with the query (bilinear upsampled) laid over it."""
    import matplotlib.pyplot as plt
    from PIL import Image

    img = load_image(image_path, size)
    lo, hi = float(heat.min()), float(heat.max())
    up = np.asarray(Image.fromarray(((heat - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)).resize(
        (img.shape[1], img.shape[0]), Image.BILINEAR), dtype=np.float32) / 255.0
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
    axes[0].imshow(img)
    axes[0].set_title(Path(image_path).name, fontsize=9)
    axes[1].imshow(img)
    over = axes[1].imshow(up * (hi - lo) + lo, cmap="jet", alpha=0.45, vmin=lo, vmax=hi)
    axes[1].set_title(_wrap(f"similarity with: {query}", 50), fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(over, ax=axes[1], fraction=0.046)
    fig.tight_layout()
    return fig


def describe_ties(table: pd.DataFrame, keys: Sequence[str] = ("mR", "i2t_R@1", "t2i_R@1")) -> str:
    """How much the tie rule moves each number of :func:`rswb.engine.experiments.tie_table`, in one sentence.

    For each key: the widest range between the pessimistic and the optimistic rule over the runs (rows), with that
    run's headline and published values; when no run moves by 0.05 points or more, the sentence says the rules
    agree on this data.
    """
    parts = []
    for key in keys:
        lo, hi = table[f"{key} pessimistic"].astype(float), table[f"{key} optimistic"].astype(float)
        spread = hi - lo
        run = spread.idxmax()
        if spread[run] < 0.05:
            parts.append(f"{key}: every rule gives the same value for every run (largest spread {spread[run]:.2f})")
            continue
        rule = table.loc[run, "ties"]
        head = f", {rule} {table.loc[run, f'{key} {rule}']:.1f}" if rule not in ("pessimistic", "optimistic") else ""
        pub = f", published {table.loc[run, f'{key} published']:.1f}" if rule != "published" else ""
        parts.append(f"{key} of {run} spans {lo[run]:.1f} (pessimistic) to {hi[run]:.1f} (optimistic){head}{pub}")
    moved = any("spans" in p for p in parts)
    end = ("; where the range is wide, that number depends on how ties are counted, not on the model" if moved
           else ": no tied scores change a ranking here")
    return "; ".join(parts) + end + "."


def plot_failure_cases(cases: Sequence[dict[str, Any]], split, size: int = 180):
    """For each failure: the caption, its true image and the image the model ranked first instead.

    ``cases`` come from :func:`rswb.infer.failure_cases`.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(cases), 2, figsize=(6.5, 3.0 * len(cases)), squeeze=False)
    for row, case in zip(axes, cases):
        for ax, key, label in ((row[0], "truth", f"its image (rank {case['rank']})"), (row[1], "top", "ranked #1")):
            ax.imshow(load_image(split.image_paths[case[key]], size))
            ax.set_title(f"{label}: {Path(split.image_paths[case[key]]).name}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(_wrap(case["caption"], 30), fontsize=8, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return fig


def search_widget(text_search: Callable[[str, int], list[dict]], image_search: Callable[[int, int], list[dict]],
                  image_paths: Sequence[str | Path], k: int = 5, query: str = ""):
    """An interactive search: type a caption to see the top-``k`` images, or pick an image to see its top captions.

    The searches are the caller's (this module runs no model): e.g. ``partial(rswb.infer.search_text, task, split,
    embeddings=emb)`` called as ``text_search(query, k)``, and ``partial(rswb.infer.search_image, ...)`` as
    ``image_search(image_index, k)``.

    Returns the ipywidgets box (display it as a cell's last expression); headless runs show its initial state.
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    box = w.Text(value=query, placeholder="a caption, e.g. many buildings near a green park",
                 description="text:", layout=w.Layout(width="70%"), continuous_update=False)
    go = w.Button(description="search images")
    pick = w.Dropdown(options=[(f"{i}: {Path(p).name}", i) for i, p in enumerate(image_paths)],
                      description="image:")
    out = w.Output()
    shown: dict[str, bytes] = {}  # the last picture, the static fallback of the HTML export

    def show_text(_=None):
        with out:
            out.clear_output(wait=True)
            if box.value.strip():
                hits = text_search(box.value, k)
                fig = plot_search_hits(hits, box.value)
                shown["png"] = fig_png(fig)
                display(fig)
                plt.close("all")

    def show_image(change=None):
        with out:
            out.clear_output(wait=True)
            i = pick.value
            fig, ax = plt.subplots(figsize=(3, 3))
            ax.imshow(load_image(image_paths[i], 200))
            ax.axis("off")
            shown["png"] = fig_png(fig)
            display(fig)
            plt.close(fig)
            for c in image_search(i, k):
                print(f"#{c['rank']} {c['score']:.3f} {'(its own) ' if c['own'] else ''}{c['caption']}")

    go.on_click(show_text)
    box.observe(show_text, names="value")  # Enter (or leaving the box) searches, as the button does
    pick.observe(show_image, names="value")
    show_text()
    return picture_box([w.HBox([box, go]), pick, out], lambda: shown.get("png"))


def plot_word_maps(words: Mapping[str, Any], top: int = 3, alpha: float = 0.5):
    """Each word's share of the image-caption score (bars), and where the ``top`` words are found in the image.

    Args:
        words: the output of :func:`rswb.infer.word_region_maps`.
        top: words shown with their maps, the largest shares first.
        alpha: opacity of the heat maps.

    Returns:
        The figure: the bar chart on top, then one map per word (the levels combined, ``words["cam"]``), titled with
        the word, its share and the method and strides the map was made with.
    """
    import matplotlib.pyplot as plt

    tokens, share = list(words["tokens"]), np.asarray(words["share"])
    order = np.argsort(-share)[:top]
    image = np.asarray(words["image"])
    h, w = image.shape[:2]
    stride = {"low": 8, "mid": 16, "high": 32}
    how = (f"{'LayerCAM' if words.get('method') == 'layercam' else 'Grad-CAM'}, strides "
           + "+".join(str(stride.get(lv, lv)) for lv in words.get("levels", words["maps"])))
    fig = plt.figure(figsize=(2.6 * max(top, 3), 5.0), layout="constrained")
    grid = fig.add_gridspec(2, max(len(order), 1), height_ratios=[0.9, 1])
    bar = fig.add_subplot(grid[0, :])
    bar.bar(range(len(tokens)), share, color=["#1a7f37" if v > 0 else "#cf222e" for v in share])
    bar.set_xticks(range(len(tokens)), tokens, rotation=45, ha="right", fontsize=8)
    bar.axhline(0, color="black", lw=0.6)
    bar.set_ylabel("score - score without it")
    bar.set_title(f"each word's share of the score {words['score']:.3f}", fontsize=10)
    for c, t in enumerate(order):
        ax = fig.add_subplot(grid[1, c])
        ax.imshow(image)
        overlay_heat(ax, words["cam"][t], h, w, alpha)
        ax.set_title(f"'{tokens[t]}' ({share[t]:+.3f})\n{how}", fontsize=9)
        ax.axis("off")
    return fig
