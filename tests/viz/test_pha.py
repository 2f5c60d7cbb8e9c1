"""rswb.viz.pha: every figure on small synthetic inputs, and the numbers the figures are computed from."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

import rswb.infer.pha as infer_pha
import rswb.viz.pha as vp
from rswb.data.mspan import MSPANScene, label_colormap
from rswb.infer import dictionary_codes, load_predictions, modality_embeddings
from rswb.registry import create_model
from rswb.viz import (
    plot_alignment_curves,
    plot_class_maps,
    plot_confusion,
    plot_dictionary_usage,
    plot_modality_embedding,
    plot_scene_overview,
    plot_version_bars,
    plot_version_detail,
    summarize_versions,
    version_picker,
)
from rswb.viz.common import pca_2d

NAMES = ["water", "field", "road"]


def _scene(seed=0):
    rng = np.random.default_rng(seed)
    h, w = 12, 16
    train = rng.integers(0, 4, (h, w))
    test = np.where(train > 0, 0, rng.integers(0, 4, (h, w)))
    return MSPANScene(ms=rng.random((4, h, w), dtype=np.float32), pan=rng.random((1, 4 * h, 4 * w), dtype=np.float32),
                      ratio=4, labels={"train": train, "test": test}, class_names=list(NAMES))


def _results():
    return pd.DataFrame({"version": ["pha_v1", "ms_only", "pha_v1", "ms_only", "pha_v3"],
                         "seed": [0, 0, 1, 1, 0],
                         "OA": [0.6, 0.4, 0.8, 0.5, 0.7], "AA": [0.5, 0.3, 0.7, 0.4, 0.6],
                         "kappa": [0.4, 0.2, 0.6, 0.3, -0.1]})


def _legend_texts(fig):
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


# ---------------------------------------------------------------------------------------------------- scene


def test_scene_overview_panels_legend_and_few_shot_marks():
    scene = _scene()
    rows, cols = np.array([1, 2, 3]), np.array([4, 5, 6])
    fig = plot_scene_overview(scene, few_shot={"train": (rows, cols), "val": (rows[:2], cols[:2])})
    assert isinstance(fig, Figure) and len(fig.axes) == 4  # composite, PAN, train, test
    assert _legend_texts(fig) == ["unlabelled", *NAMES]
    marks = fig.axes[0].collections
    assert [len(m.get_offsets()) for m in marks] == [3, 2]
    assert np.array_equal(marks[0].get_offsets(), np.stack([cols, rows], 1))  # x = column, y = row
    # The label maps use the fixed colour table: every value 0..C gets its own colour.
    im = fig.axes[2].get_images()[0]
    assert np.array_equal(im.get_array(), scene.labels["train"])
    assert np.allclose(im.cmap.colors, label_colormap(3).colors)
    rgba = im.to_rgba(np.arange(4)[None])[0]
    assert np.allclose(rgba[:, :3], np.asarray(label_colormap(3).colors))
    assert len(plot_scene_overview(scene).axes[0].collections) == 0


# ---------------------------------------------------------------------------------------------------- scores


def test_summarize_versions_mean_std_and_ladder_order():
    s = summarize_versions(_results())
    assert list(s.index) == ["ms_only", "pha_v1", "pha_v3"]
    assert s.loc["pha_v1", "OA"] == pytest.approx(0.7)
    assert s.loc["pha_v1", "OA_std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert s.loc["pha_v3", "kappa_std"] == 0.0 and s.loc["pha_v3", "seeds"] == 1
    assert summarize_versions(_results(), percent=True).loc["ms_only", "AA"] == pytest.approx(35.0)
    with pytest.raises(KeyError, match="kappa"):
        summarize_versions(_results().drop(columns="kappa"))


def test_version_bars_heights_are_means_in_percent():
    fig = plot_version_bars(_results())
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and len(ax.containers) >= 3
    bars = [c for c in ax.containers if hasattr(c, "patches")]
    assert [c.get_label() for c in bars] == ["OA", "AA", "kappa"]
    assert [p.get_height() for p in bars[0].patches] == pytest.approx([45.0, 70.0, 70.0])
    assert [p.get_height() for p in bars[2].patches] == pytest.approx([25.0, 50.0, -10.0])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ms_only", "pha_v1", "pha_v3"]
    assert ax.get_ylim()[0] < -10  # negative kappa is visible


def test_normalize_rows_by_hand():
    cm = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    want = np.array([[0.75, 0.25, 0.0], [0.0, 0.0, 0.0], [0.25, 0.25, 0.5]])
    assert np.allclose(vp.normalize_rows(cm), want)
    assert np.allclose(vp.normalize_rows(torch.as_tensor(cm)), want)
    with pytest.raises(ValueError, match="square"):
        vp.normalize_rows(np.zeros((2, 3)))


def test_confusion_colours_shares_and_annotates_counts():
    cm = np.array([[8, 2, 0], [1, 1, 0], [0, 5, 5]])
    fig = plot_confusion(cm, NAMES, "pha_v1")
    ax = fig.axes[0]
    assert isinstance(fig, Figure)
    assert np.allclose(np.asarray(ax.collections[0].get_array()).reshape(3, 3), vp.normalize_rows(cm))
    assert [int(t.get_text()) for t in ax.texts] == cm.ravel().tolist()
    assert [t.get_text() for t in ax.get_yticklabels()] == NAMES
    assert "OA 63.6 %" in ax.get_title()  # 14 / 22


# ---------------------------------------------------------------------------------------------------- maps


def test_class_maps_show_predictions_in_the_fixed_colours():
    scene = _scene()
    gt = scene.labels["test"]
    right = np.clip(gt - 1, 0, None)  # correct wherever labelled
    wrong = (right + 1) % 3
    fig = plot_class_maps({"right": right, "wrong": wrong}, gt, NAMES)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert np.array_equal(fig.axes[1].get_images()[0].get_array(), right + 1)  # 0-based classes shown as 1..C
    assert "OA 100.0 %" in fig.axes[1].get_title() and "OA 0.0 %" in fig.axes[2].get_title()
    assert _legend_texts(fig) == ["unlabelled", *NAMES]
    # The same class has the same colour in the ground truth and in a prediction.
    gt_im, pred_im = fig.axes[0].get_images()[0], fig.axes[1].get_images()[0]
    assert np.allclose(gt_im.to_rgba(np.array([[2]])), pred_im.to_rgba(np.array([[2]])))
    with pytest.raises(ValueError, match="shape"):
        plot_class_maps({"bad": right[:-1]}, gt, NAMES)


def test_map_accuracy_by_hand():
    gt = np.array([[0, 1, 2], [3, 0, 1]])
    pred = np.array([[2, 0, 0], [2, 1, 1]])  # 0-based: right at (0, 1) and (1, 0), wrong at (0, 2) and (1, 2)
    assert vp.map_accuracy(pred, gt) == pytest.approx(2 / 4)
    assert np.isnan(vp.map_accuracy(pred, np.zeros_like(gt)))


def test_version_detail_map_and_confusion():
    scene = _scene()
    gt = scene.labels["test"]
    cm = np.array([[2, 1, 0], [0, 3, 0], [1, 0, 4]])
    fig = plot_version_detail(np.zeros_like(gt), gt, cm, NAMES, "pha_v2")
    assert isinstance(fig, Figure) and "pha_v2" in fig.axes[0].get_title()
    assert len(fig.axes) == 3  # map, matrix, colour bar
    only_cm = plot_version_detail(None, None, cm, NAMES, "scene mode")
    assert len(only_cm.axes) == 2


# ---------------------------------------------------------------------------------------------------- alignment


def _history(version, epochs=3):
    records = []
    for e in range(1, epochs + 1):
        r = {"epoch": e, "train_loss": 1.0 / e}
        for i, s in enumerate(("shallow", "middle", "deep")):
            r[f"train_cka_{s}"] = 0.1 * e + i
            if version != "pha_v1":
                r[f"train_sim_{s}"] = 0.2 * e
                r[f"train_w_{s}"] = [0.8, 0.2, 0.0][i] if e == 1 else 1 / 3
        records.append(r)
    return records[::-1]  # out of order on purpose: curves are drawn by epoch


def test_alignment_curves_per_stage_and_version():
    fig = plot_alignment_curves({"pha_v4": _history("pha_v4"), "pha_v1": _history("pha_v1")})
    cka, sim, w = fig.axes
    assert isinstance(fig, Figure)
    assert len(cka.get_lines()) == 6 and len(sim.get_lines()) == 3 and len(w.get_lines()) == 3
    first = cka.get_lines()[0]  # pha_v1 first (ladder order), shallow stage
    assert first.get_xdata().tolist() == [1, 2, 3] and first.get_ydata() == pytest.approx([0.1, 0.2, 0.3])
    assert first.get_linestyle() == ":" and cka.get_lines()[2].get_linestyle() == "-"
    assert w.get_lines()[0].get_ydata()[0] == pytest.approx(0.8)
    assert {"pha_v1", "pha_v4", "shallow", "middle", "deep"} <= set(_legend_texts(fig))
    only_v1 = plot_alignment_curves({"pha_v1": _history("pha_v1")})
    assert len(only_v1.axes[1].get_lines()) == 0 and only_v1.axes[1].texts  # says there is nothing to show


# ---------------------------------------------------------------------------------------------------- embeddings


def _embedding(n=40, d=6, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    ms = rng.normal(size=(n, d))
    return {"ms": ms, "pan": ms + shift + 0.1 * rng.normal(size=(n, d)), "labels": rng.integers(0, 3, n)}


def test_pair_cosines_by_hand():
    ms = np.array([[1.0, 0.0], [0.0, 2.0]])
    pan = np.array([[3.0, 0.0], [1.0, 1.0]])
    pos, neg = vp.pair_cosines(ms, pan)
    assert pos == pytest.approx((1 + 1 / np.sqrt(2)) / 2)
    assert neg == pytest.approx((1 / np.sqrt(2) + 0) / 2)
    assert vp.pair_cosines(ms, ms)[0] == pytest.approx(1.0)


def test_modality_embedding_is_a_joint_pca_of_both_modalities():
    before, after = _embedding(shift=3.0), _embedding(seed=1)
    fig = plot_modality_embedding(before, after, NAMES, n_pairs=5)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 5  # pair lines
    ms_pts, pan_pts = (c.get_offsets() for c in ax.collections)
    unit = [x / np.linalg.norm(x, axis=1, keepdims=True) for x in (before["ms"], before["pan"])]
    want, _ = pca_2d(np.concatenate(unit))
    assert np.allclose(ms_pts, want[:40]) and np.allclose(pan_pts, want[40:])
    pos, neg = vp.pair_cosines(after["ms"], after["pan"])
    assert f"pair cosine {pos:.2f}, other pairs {neg:.2f}" in fig.axes[1].get_title()
    with pytest.raises(ValueError, match="length"):
        plot_modality_embedding({**before, "labels": before["labels"][:-1]}, after)


# ---------------------------------------------------------------------------------------------------- dictionary


def test_class_mean_codes_equal_a_loop():
    rng = np.random.default_rng(0)
    codes, labels = np.maximum(rng.normal(size=(30, 5)), 0), rng.integers(0, 3, 30)
    labels[labels == 2] = 0  # class 2 empty: its row stays zero
    want = np.stack([codes[labels == c].mean(0) if (labels == c).any() else np.zeros(5) for c in range(3)])
    assert np.allclose(vp.class_mean_codes(codes, labels, 3), want)


def test_dictionary_usage_heatmaps_and_active_share():
    rng = np.random.default_rng(0)
    ms, pan = np.maximum(rng.normal(size=(50, 8)), 0), np.maximum(rng.normal(size=(50, 8)) - 0.5, 0)
    labels = rng.integers(0, 3, 50)
    fig = plot_dictionary_usage(torch.as_tensor(ms), pan, labels, NAMES)
    assert isinstance(fig, Figure)
    heat_ms, heat_pan, bars = fig.axes[:3]
    assert np.allclose(heat_ms.get_images()[0].get_array(), vp.class_mean_codes(ms, labels, 3))
    assert np.allclose(heat_pan.get_images()[0].get_array(), vp.class_mean_codes(pan, labels, 3))
    widths = [p.get_width() for p in bars.containers[0].patches]
    assert widths == pytest.approx([100 * (ms[labels == c] > 0).mean() for c in range(3)])
    with pytest.raises(ValueError, match="shape"):
        plot_dictionary_usage(ms, pan[:, :4], labels, NAMES)


# ---------------------------------------------------------------------------------------------------- widget


def test_version_picker_draws_headless_and_caches(monkeypatch):
    pytest.importorskip("ipywidgets")
    calls = []

    def view(name):
        def draw():
            calls.append(name)
            return plot_confusion(np.eye(3, dtype=int) * (len(calls) + 1), NAMES, name)
        return draw

    box = version_picker({"pha_v1": view("pha_v1"), "pha_v5": view("pha_v5")}, value="pha_v5")
    pick, image = box.children
    assert calls == ["pha_v5"] and pick.value == "pha_v5" and list(pick.options) == ["pha_v1", "pha_v5"]
    first = bytes(image.value)
    assert first.startswith(b"\x89PNG")
    pick.value = "pha_v1"
    assert calls == ["pha_v5", "pha_v1"] and bytes(image.value) != first
    pick.value = "pha_v5"
    assert calls == ["pha_v5", "pha_v1"] and bytes(image.value) == first  # cached
    with pytest.raises(ValueError, match="pha_v9"):
        version_picker({"pha_v1": view("pha_v1")}, value="pha_v9")


# ---------------------------------------------------------------------------------------------------- model outputs


class _Pairs(torch.utils.data.Dataset):
    """Random MS/PAN patch pairs as single-sample dicts (the scene-mode access path)."""

    def __init__(self, n=12, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.ms, self.pan = torch.rand(n, 4, 16, 16, generator=g), torch.rand(n, 1, 64, 64, generator=g)
        self.labels = torch.arange(n) % 3

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"ms": self.ms[i], "pan": self.pan[i], "label": self.labels[i]}


def test_modality_embeddings_and_codes_match_the_forward_pass():
    torch.manual_seed(0)
    model = create_model("pha_v5", num_classes=3, widths=(4, 8, 8), atoms=6)
    data = _Pairs()
    emb = modality_embeddings(model, data, n=5, seed=1, batch_size=2)
    idx = infer_pha._sample(len(data), 5, 1)
    model.eval()
    with torch.no_grad():
        out = model({"ms": data.ms[idx], "pan": data.pan[idx]})
    assert emb["stage"] == "deep" and emb["ms"].shape == (5, 6)  # pha_v5's deep embedding is the code
    assert np.allclose(emb["ms"], out["codes_ms"].numpy(), atol=1e-6)
    assert emb["labels"].tolist() == data.labels[idx].tolist()
    middle = modality_embeddings(model, data, n=None, stage="middle")
    assert middle["ms"].shape[0] == len(data) and middle["stage"] == "middle"
    codes = dictionary_codes(model, data, n=5, seed=1)
    assert np.allclose(codes["pan"], out["codes_pan"].numpy(), atol=1e-6)
    plain = create_model("pha_v1", num_classes=3, widths=(4, 8, 8))
    with pytest.raises(ValueError, match="aligned"):
        modality_embeddings(plain, data)
    with pytest.raises(ValueError, match="dictionary"):
        dictionary_codes(plain, data)
    with pytest.raises(ValueError, match="shallow"):
        modality_embeddings(create_model("pha_v2", num_classes=3, widths=(4, 8, 8)), data, stage="shallow")


def test_load_predictions_reproduces_the_recorded_test_scores(tmp_path):
    import rswb.tasks  # noqa: F401  (registers the "pha" task)
    from rswb.engine.launch import train_task

    train_task("pha", {"version": "pha_v1", "epochs": 1, "repeats": 1, "max_test": 300, "widths": "4,8,8",
                       "progress": False}, run_name="tiny", runs_root=tmp_path)
    pred = load_predictions(tmp_path / "tiny", device="cpu")
    recorded = json.loads((tmp_path / "tiny" / "metrics.json").read_text())["test"]
    assert pred["metrics"] == pytest.approx({k: recorded[k] for k in ("OA", "AA", "kappa")})
    assert pred["pred_map"].ndim == 2 and len(pred["y_true"]) == pred["confusion"].sum() == 300


def test_scene_maps_and_the_figures_of_where_the_model_looks():
    import torch

    from rswb.data.mspan import load_mspan
    from rswb.data.patches import PatchSampler
    from rswb.data.synthetic import ensure_embedded
    from rswb.infer import pha_attributions, pha_scene_maps
    from rswb.registry import create_model
    from rswb.viz import plot_agreement_maps, plot_atom_maps, plot_pixel_attributions

    scene = load_mspan(ensure_embedded("mspan")).normalized()
    torch.manual_seed(0)
    model = create_model("pha_v5", num_classes=scene.num_classes, bands=scene.bands, widths=(4, 8, 8), atoms=10).eval()
    maps = pha_scene_maps(model, scene, row=5, col=190, size=32, device="cpu")  # a corner: the tile moves inside
    assert maps["origin"] == (0, scene.shape[1] - 32) and maps["rgb"].shape == (32, 32, 3)
    assert [m.shape for m in maps["agreement"]] == [(28, 28), (24, 24), (20, 20)] and maps["offsets"] == [2, 4, 6]
    assert maps["atoms"]["ms"].shape == (10, 20, 20)
    fig = plot_agreement_maps(maps)
    assert len(fig.axes) == 5  # composite, three stages, colour bar
    assert len(plot_atom_maps(maps, top=4).axes) == 8
    attr = pha_attributions(model, PatchSampler(scene, 16), [20, 60], [30, 90], steps=8, device="cpu")
    fig = plot_pixel_attributions(attr, labels=[0, 1], class_names=scene.class_names)
    assert len(fig.axes) == 8  # 2 rows of 4 panels
    ms_sum, pan_sum = attr["attr_ms"][0].sum(), attr["attr_pan"][0].sum()
    assert fig.axes[1].get_title() == f"MS: {ms_sum:+.2f} of the score"  # the title is the map's own sum
    assert fig.axes[3].get_title().startswith(f"PAN: {pan_sum:+.2f} of the score")
    lo, hi = fig.axes[1].get_images()[0].get_clim()
    assert lo == -hi  # a diverging scale centred at 0
    with pytest.raises(ValueError, match="size"):
        pha_scene_maps(model, scene, 0, 0, size=8)


def test_alignment_and_dictionary_sentences_follow_their_numbers():
    from rswb.viz import describe_alignment, describe_dictionary
    from rswb.viz.pha import pair_cosines

    rng = np.random.default_rng(0)
    ms = rng.normal(size=(50, 8))
    apart = {"ms": ms, "pan": rng.normal(size=(50, 8)), "labels": np.zeros(50)}
    together = {"ms": ms, "pan": ms + 0.1 * rng.normal(size=(50, 8)), "labels": np.zeros(50)}
    up = describe_alignment(apart, together)
    p0, p1 = pair_cosines(apart["ms"], apart["pan"])[0], pair_cosines(together["ms"], together["pan"])[0]
    assert up.startswith(f"Training raised the cosine of an item's own MS-PAN pair ({p0:.2f} -> {p1:.2f})")
    assert "more distinguishable" in up
    down = describe_alignment(together, apart)  # the sentence turns with the numbers
    assert down.startswith("Training lowered") and "less distinguishable" in down
    labels = np.repeat(np.arange(4), 30)
    codes = np.eye(4)[labels] + 0.05 * rng.random((120, 4))
    names = ["a", "b", "c", "d"]
    assert "largely the same atoms" in describe_dictionary(codes, codes, labels, names)
    shuffled = np.eye(4)[(labels + 1) % 4] + 0.05 * rng.random((120, 4))  # PAN uses another class's atoms
    assert "mostly different atoms" in describe_dictionary(codes, shuffled, labels, names)
