"""rswb.viz.hashing: every figure on seeded random codes, and the gallery ranking against a naive loop."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.colors import to_rgb, to_rgba
from matplotlib.figure import Figure

import rswb.viz.hashing as vh
from rswb.metrics.hashing import hamming_ranking, pair_distances, pr_curve
from rswb.viz import (
    gallery_widget,
    plot_code_embedding,
    plot_hamming_histograms,
    plot_map_vs_bits,
    plot_pr_curves,
    plot_retrieval_gallery,
)
from rswb.viz.common import pca_2d


def _data(n=40, k=16, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    # Class prototypes plus noise, so that same-class codes are closer (and many distances tie).
    protos = rng.choice([-1, 1], size=(classes, k))
    flip = rng.random((n, k)) < 0.2
    codes = np.where(flip, -protos[labels], protos[labels]).astype(np.int8)
    images = [np.full((8, 8, 3), 20 * i % 256, dtype=np.uint8) for i in range(n)]
    return codes, labels, images


def test_map_vs_bits_has_a_line_with_and_without_cue():
    df = pd.DataFrame({"bits": [32, 16, 64], "mAP@20": [0.6, 0.5, 0.7], "mAP@20_nocue": [0.4, 0.3, 0.5]})
    fig = plot_map_vs_bits(df)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2
    assert lines[0].get_xdata().tolist() == [16, 32, 64]  # sorted by code length
    assert lines[0].get_ydata().tolist() == [0.5, 0.6, 0.7]
    only_cue = plot_map_vs_bits(df.drop(columns="mAP@20_nocue").set_index("bits"))
    assert len(only_cue.axes[0].get_lines()) == 1
    with pytest.raises(KeyError, match="mAP@8"):
        plot_map_vs_bits(df, metric="mAP@8")


def test_pr_curves_one_line_per_curve():
    codes, labels, _ = _data()
    curves = {"cue": pr_curve(codes, codes, labels, labels, exclude_self=True),
              "no cue": pr_curve(codes[:, :8], codes[:, :8], labels, labels, exclude_self=True)}
    fig = plot_pr_curves(curves)
    lines = fig.axes[0].get_lines()
    assert len(fig.axes) == 1 and len(lines) == 2
    assert len(lines[0].get_xdata()) == 17 and len(lines[1].get_xdata()) == 9  # radii 0..K


def test_hamming_histograms_count_each_pair_once():
    codes, labels, _ = _data(n=30)
    pairs = pair_distances(torch.from_numpy(codes).float(), labels)
    naive = [(int((codes[i] != codes[j]).sum()), labels[i] == labels[j]) for i in range(30) for j in range(i + 1, 30)]
    assert pairs["distance"].tolist() == [d for d, _ in naive] and pairs["same_class"].tolist() == [s for _, s in naive]
    fig = plot_hamming_histograms(pairs)
    ax = fig.axes[0]
    assert len(fig.axes) == 1 and len(ax.containers) == 2  # same class, different class
    text = [t.get_text() for t in ax.get_legend().get_texts()]
    same = sum((labels[i] == labels[j]) for i in range(30) for j in range(i + 1, 30))
    assert text[0].startswith(f"same class ({same} pairs") and f"({30 * 29 // 2 - same} pairs" in text[1]
    with_self = plot_hamming_histograms(pair_distances(codes, labels, exclude_self=False))
    assert f"({same + 30} pairs" in with_self.axes[0].get_legend().get_texts()[0].get_text()
    # Each histogram is a density over integer-centred bins 0..K.
    heights = np.array([p.get_height() for p in ax.containers[0]])
    assert len(heights) == 17 and heights.sum() == pytest.approx(1.0)


def test_code_embedding_one_scatter_per_class():
    codes, labels, _ = _data()
    names = ["a", "b", "c", "d"]
    fig = plot_code_embedding(codes, labels, names)
    ax = fig.axes[0]
    assert len(fig.axes) == 1 and len(ax.collections) == len(np.unique(labels))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [names[c] for c in np.unique(labels)]
    assert sum(len(c.get_offsets()) for c in ax.collections) == len(codes)
    with pytest.raises(ValueError, match="pca"):
        plot_code_embedding(codes, labels, method="umap")


def test_pca_matches_the_covariance_eigenvectors():
    codes, _, _ = _data(n=50, k=8)
    x = codes.astype(float) - codes.mean(0)
    xy, share = pca_2d(codes.astype(float))
    w, v = np.linalg.eigh(np.cov(x.T, bias=True))
    top = v[:, ::-1][:, :2]
    for i in range(2):  # the same axes up to sign
        assert abs(np.corrcoef(xy[:, i], x @ top[:, i])[0, 1]) == pytest.approx(1.0)
    assert share == pytest.approx(w[::-1][:2] / w.sum())


def test_code_embedding_tsne():
    pytest.importorskip("sklearn")
    codes, labels, _ = _data(n=30)
    fig = plot_code_embedding(codes, labels, method="tsne")
    assert len(fig.axes[0].collections) == len(np.unique(labels))


def _naive_ranking(q, codes, k):
    dist = [(int((codes[q] != codes[j]).sum()), j) for j in range(len(codes)) if j != q]
    dist.sort()  # by distance, then by index
    return [j for _, j in dist[:k]], [d for d, _ in dist[:k]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gallery_ranking_equals_a_naive_loop(seed):
    codes, _, _ = _data(n=60, k=12, seed=seed)
    codes[5] = codes[17]  # an identical code: the query is excluded by index, its twin still ranks
    for q in (0, 5, 17, 59):
        for k in (1, 8, 59, 100):
            idx, dist = hamming_ranking(q, codes, k)
            want_idx, want_dist = _naive_ranking(q, codes, k)
            assert idx.tolist() == want_idx and dist.tolist() == want_dist
    assert hamming_ranking(5, codes, 1)[0].tolist() == [17]
    with pytest.raises(IndexError):
        hamming_ranking(60, codes, 3)


def test_retrieval_gallery_panels_titles_and_borders(tmp_path):
    from PIL import Image

    codes, labels, images = _data()
    paths = list(images)
    paths[3] = tmp_path / "img.png"  # image files and arrays both work
    Image.fromarray(images[3]).save(paths[3])
    q, k = 0, 8
    idx, dist = hamming_ranking(q, codes, k)
    fig = plot_retrieval_gallery(q, (idx, dist), labels, paths, class_names=["a", "b", "c", "d"])
    assert len(fig.axes) == k + 1
    for ax, i, d in zip(fig.axes[1:], idx, dist):
        assert ax.get_title().startswith(f"d={d}  #{i}")
        want = vh.RIGHT if labels[i] == labels[q] else vh.WRONG
        assert all(to_rgba(s.get_edgecolor())[:3] == to_rgb(want) for s in ax.spines.values())
    assert fig.axes[0].get_title().startswith("query #0")
    wide = plot_retrieval_gallery(3, hamming_ranking(3, codes, 12), labels, paths, ncols=5)
    assert len(wide.axes) == 13  # 3 rows of 5, the two unused panels removed


def test_gallery_widget_redraws_on_change(monkeypatch):
    pytest.importorskip("ipywidgets")
    codes, labels, images = _data()
    calls = []
    real = vh.plot_retrieval_gallery

    def spy(query_index, neighbours, *args, **kwargs):
        calls.append((query_index, len(neighbours[0])))
        return real(query_index, neighbours, *args, **kwargs)

    monkeypatch.setattr(vh, "plot_retrieval_gallery", spy)
    # no frontend attached: must still build and draw
    box = gallery_widget(lambda q, k: hamming_ranking(q, codes, k), labels, images, k=8)
    query, top = box.children[0].children
    assert calls == [(0, 8)]
    assert (query.min, query.max) == (0, len(codes) - 1) and 8 in top.options and max(top.options) <= 32
    image = box.children[1]
    assert bytes(image.value).startswith(b"\x89PNG")
    first = bytes(image.value)
    query.value = 7
    top.value = 4
    assert calls == [(0, 8), (7, 8), (7, 4)]
    assert bytes(image.value).startswith(b"\x89PNG") and bytes(image.value) != first


def test_the_cue_sentence_and_the_plot_title_follow_the_table():
    import pandas as pd

    from rswb.viz import describe_cue, plot_map_vs_bits

    table = pd.DataFrame({"bits": [16, 32], "cue_bits": [5, 5], "mAP@20": [0.90, 0.95], "mAP@20_nocue": [0.80, 0.97]})
    sentence = describe_cue(table)
    assert "16 + 5 bits: 0.900 with the cue, 0.800 without (+0.100)" in sentence
    assert "32 + 5 bits: 0.950 with the cue, 0.970 without (-0.020)" in sentence
    assert sentence.endswith("On average the cue adds 0.040.")
    fig = plot_map_vs_bits(table)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["16 + 5", "32 + 5"]
    assert ax.get_title().endswith("the cue adds 0.040 on average")
    worse = table.assign(**{"mAP@20_nocue": [0.95, 0.99]})
    assert describe_cue(worse).endswith("On average the cue costs 0.045.")
