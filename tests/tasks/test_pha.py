"""`rswb train pha`: co-registered augmentation, dense == per-patch inference, schedules, loss terms, splits, runs."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from rswb.cli import main
from rswb.data.mspan import load_mspan
from rswb.data.patches import PatchSampler, PixelPatches
from rswb.data.synthetic import ensure_embedded
from rswb.data.transforms import augment_pairs, dihedral
from rswb.losses.pha import PHALoss, progressive_weights
from rswb.models.pha import PHA_VERSIONS, PHANet, dense_predict, patch_predict
from rswb.registry import create_model
from rswb.tasks.pha import PHAConfig, prepare_data
from rswb.tasks.pha.task import PHATask
from tests.models.test_pha import randomize

WIDTHS = (4, 8, 8)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


@pytest.fixture(scope="module")
def scene():
    """The embedded MS+PAN scene, normalised (200 x 200 MS, 800 x 800 PAN, 8 classes)."""
    return load_mspan(ensure_embedded("mspan")).normalized()


@pytest.fixture(scope="module")
def sampler(scene):
    return PatchSampler(scene, 16)


def model_for(version: str, num_classes: int = 8, seed: int = 0, **kw) -> PHANet:
    torch.manual_seed(seed)
    if version == "pha_v5":
        kw.setdefault("atoms", 12)
    return create_model(version, num_classes=num_classes, widths=WIDTHS, proj_dim=8, **kw)


def pha_task_of(model: PHANet, num_classes: int, temperature: float = 0.1, progressive_width: float = 0.5,
                **kw) -> PHATask:
    return PHATask(model, PHALoss.for_model(model, temperature, progressive_width), num_classes, **kw)


def make_task(version: str, **kw) -> PHATask:
    return pha_task_of(model_for(version), 8, **kw)


def lab_copy(tmp_path):
    dst = tmp_path / "lab"
    shutil.copytree(ensure_embedded("mspan"), dst)
    return dst


# ---------------------------------------------------------------------------------------------------- augmentation


def test_augment_pairs_keeps_ms_and_pan_co_registered():
    g = torch.Generator().manual_seed(0)
    ms = torch.rand(64, 4, 6, 6, generator=g)
    up = lambda x: x[:, :1].repeat_interleave(4, -2).repeat_interleave(4, -1)  # noqa: E731
    batch = {"ms": ms, "pan": up(ms), "label": torch.arange(64)}
    out = augment_pairs(batch, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out["pan"], up(out["ms"]))
    assert out["label"] is batch["label"] and torch.equal(batch["ms"], ms)  # other keys kept, input untouched
    views = []
    for i in range(64):
        match = [v for v in range(8) if torch.equal(out["ms"][i], dihedral(ms[i], v))]
        assert match, f"sample {i} is not a dihedral view of its input"
        views.append(match[0])
    assert len(set(views)) >= 6  # 64 draws of 8 views: the views vary across the batch
    again = augment_pairs(batch, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again["ms"], out["ms"])  # seeded


def test_augment_pairs_with_one_modality():
    ms = torch.rand(5, 4, 6, 6)
    out = augment_pairs({"ms": ms}, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"ms"} and out["ms"].shape == ms.shape


# ---------------------------------------------------------------------------------------------------- inference


def test_dense_predict_equals_patch_predict_on_the_embedded_scene(scene, sampler):
    model = randomize(model_for("pha_v5")).eval()
    h, w = scene.shape
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, h, 500), rng.integers(0, w, 500)
    border = np.array([[0, 0], [0, w - 1], [h - 1, 0], [h - 1, w - 1], [0, 57], [h - 1, 3], [1, w - 2], [7, 8],
                       [h - 8, w - 9], [100, 0]])
    rows, cols = np.concatenate([border[:, 0], rows]), np.concatenate([border[:, 1], cols])
    ref = patch_predict(model, sampler, rows, cols, batch_size=256, return_logits=True)
    dense = dense_predict(model, scene, tile=256, return_logits=True)
    assert dense.shape == (8, h, w) and dense.dtype == np.float32
    np.testing.assert_allclose(dense[:, rows, cols].T, ref, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(dense_predict(model, scene, tile=37, return_logits=True), dense, atol=1e-5, rtol=1e-5)
    labels = dense_predict(model, scene, tile=37)
    assert labels.shape == (h, w) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, dense.argmax(0))  # the tile size does not change anything
    np.testing.assert_array_equal(labels[rows, cols], patch_predict(model, sampler, rows, cols))
    assert not model.training


def test_dense_predict_single_modality(scene, sampler):
    for version in ("ms_only", "pan_only"):
        model = randomize(model_for(version)).eval()
        rows, cols = np.array([0, 50, 199]), np.array([199, 3, 0])
        ref = patch_predict(model, sampler, rows, cols, return_logits=True)
        dense = dense_predict(model, scene, tile=128, return_logits=True)
        np.testing.assert_allclose(dense[:, rows, cols].T, ref, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------- the task


def test_schedule_per_version():
    for version in ("pha_v4", "pha_v5"):
        task = make_task(version, progressive_width=0.5)
        for epoch, progress in ((0, 0.0), (4, 0.5), (8, 1.0)):
            want = progressive_weights(progress, 3, 0.5).tolist()
            assert list(task.loss.schedule(epoch, 9).values()) == pytest.approx(want)
            assert sorted(task.loss.schedule(epoch, 9)) == [0, 1, 2]
        assert task.loss.schedule(0, 1) == pytest.approx(dict(enumerate(progressive_weights(0.0).tolist())))
        wide = make_task(version, progressive_width=2.0)
        assert list(wide.loss.schedule(0, 5).values()) == pytest.approx(progressive_weights(0.0, 3, 2.0).tolist())
    assert make_task("pha_v3").loss.schedule(3, 10) == pytest.approx({0: 1 / 3, 1: 1 / 3, 2: 1 / 3})
    assert make_task("pha_v2").loss.schedule(3, 10) == {2: 1.0}
    for version in ("ms_only", "pan_only", "pha_v1"):
        assert make_task(version).loss.schedule(0, 10) == {}
    task = make_task("pha_v4")
    assert task.loss.stage_weights == task.loss.schedule(0, 1)
    task.on_epoch_start(9, 10)
    w = task.loss.stage_weights
    assert w == task.loss.schedule(9, 10) and max(w, key=w.get) == 2


def small_batch(n: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"ms": torch.rand(n, 4, 16, 16, generator=g), "pan": torch.rand(n, 1, 64, 64, generator=g),
            "label": torch.randint(0, 8, (n,), generator=g)}


@pytest.mark.parametrize("version", PHA_VERSIONS)
def test_losses_terms_per_version(version):
    calls = []

    def unlabelled(n):
        calls.append(n)
        return {k: v for k, v in small_batch(n, seed=len(calls) + 10).items() if k != "label"}

    task = make_task(version, unlabelled=unlabelled, n_unlabelled=4).train()
    terms = task.losses(small_batch())
    model = task.model
    expect = {"cls_loss", "acc"}
    if model.align_stages:
        expect |= {"align_loss"}
        for s in model.align_stages:
            name = ("shallow", "middle", "deep")[s]
            expect |= {f"nce_{name}", f"w_{name}", f"sim_{name}"}
    if model.dictionary is not None:
        expect |= {"recon_loss", "decor_loss", "sparse_loss", "code_active"}
    if model.pseudo_threshold > 0:
        expect |= {"pseudo_loss", "pseudo_share"}
    if len(model.modalities) == 2:
        expect |= {"cka_shallow", "cka_middle", "cka_deep"}
    assert set(terms) == expect
    for k, v in terms.items():
        assert v.ndim == 0 and torch.isfinite(v), k
    if model.align_stages:
        want = sum(float(terms[f"w_{n}"]) * float(terms[f"nce_{n}"]) for n in ("shallow", "middle", "deep")
                   if f"w_{n}" in terms)
        assert float(terms["align_loss"].detach()) == pytest.approx(want, rel=1e-5)
    # The unlabelled callable is used only by the versions with alignment, only in training.
    assert calls == ([4] if model.align_stages else [])
    task.eval()
    task.losses(small_batch())
    assert len(calls) == (1 if model.align_stages else 0)
    task.train()
    loss, report = task(small_batch())
    assert torch.isfinite(loss) and float(report["loss"]) == pytest.approx(float(loss.detach()))
    loss.backward()
    assert model.head[1].weight.grad is not None


def test_total_loss_uses_the_weights():
    torch.manual_seed(0)
    weights = {"align_loss": 0.5, "recon_loss": 2.0, "decor_loss": 0.25, "sparse_loss": 0.1}
    task = pha_task_of(model_for("pha_v5"), 8, augment=False, loss_weights=weights).eval()  # eval: no dropout
    batch = small_batch()
    with torch.no_grad():
        terms = task.losses(batch)
        loss = task(batch)[0]
    want = float(terms["cls_loss"]) + sum(w * float(terms[k]) for k, w in weights.items())
    assert float(loss) == pytest.approx(want, rel=1e-5)


# ---------------------------------------------------------------------------------------------------- data


def pixel_set(ds: PixelPatches) -> set[tuple[int, int]]:
    return set(zip(ds.rows.tolist(), ds.cols.tolist()))


def test_prepare_data_pixel_splits(scene):
    cfg = PHAConfig(shots=5, val_shots=3, max_test=200, repeats=4)
    data = prepare_data(cfg)
    assert data.mode == "pixel" and data.num_classes == 8 and data.bands == 4 and data.ratio == 4
    assert data.source == "embedded" and isinstance(data.train, PixelPatches)
    assert len(data.train) == 8 * 5 * 4 and len(data.val) == 8 * 3
    assert np.bincount(data.train.labels, minlength=8).tolist() == [20] * 8
    assert np.bincount(data.val.pixel_labels, minlength=8).tolist() == [3] * 8
    assert 190 <= len(data.test) <= 210 and set(data.test.pixel_labels.tolist()) == set(range(8))
    train, val, test = pixel_set(data.train), pixel_set(data.val), pixel_set(data.test)
    assert len(train) == 40 and len(val) == 24
    assert not train & val and not train & test and not val & test
    # Each pixel's label is its map's value - 1; test pixels come from the test map, the others from the train map.
    for ds, split in ((data.train, "train"), (data.val, "train"), (data.test, "test")):
        np.testing.assert_array_equal(scene.labels[split][ds.rows, ds.cols] - 1, ds.pixel_labels)
    item = data.train[3]
    assert item["ms"].shape == (4, 16, 16) and item["pan"].shape == (1, 64, 64) and int(item["label"]) in range(8)
    batch = data.train.__getitems__([0, 1, 40])
    assert batch["ms"].shape == (3, 4, 16, 16) and int(batch["row"][2]) == int(batch["row"][0])  # 40 repeats pixel 0
    extra = data.unlabelled(5)
    assert extra["ms"].shape == (5, 4, 16, 16) and extra["pan"].shape == (5, 1, 64, 64)
    again = prepare_data(cfg)
    assert pixel_set(again.train) == train and pixel_set(again.val) == val and pixel_set(again.test) == test
    other = prepare_data(PHAConfig(shots=5, val_shots=3, max_test=200, split_seed=1))
    assert pixel_set(other.train) != train


def test_pixel_patches_cache_changes_nothing_but_the_speed(scene):
    data = prepare_data(PHAConfig(shots=5, val_shots=3, max_test=200, repeats=2))
    ds = data.train
    plain = PixelPatches(ds.sampler, ds.rows, ds.cols, ds.pixel_labels, repeats=2, cache_bytes=0)
    cached = PixelPatches(ds.sampler, ds.rows, ds.cols, ds.pixel_labels, repeats=2)
    idx = [0, 7, 45, 7]
    a, b = plain.__getitems__(idx), cached.__getitems__(idx)
    assert not plain.pixels.cached and cached.pixels.cached and len(cached.pixels) == 40
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # A pixel set larger than the budget is gathered on the fly.
    small = PixelPatches(ds.sampler, ds.rows, ds.cols, ds.pixel_labels, cache_bytes=39 * ds.sampler.pair_bytes)
    small.__getitems__([0])
    assert not small.pixels.cached


def test_prepare_data_missing_path_raises(tmp_path):
    from rswb.data.errors import DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError) as err:
        prepare_data(PHAConfig(data=str(tmp_path / "nowhere")))
    assert "nowhere" in str(err.value)


def test_missing_path_message_says_not_found(tmp_path):
    from rswb.data.errors import DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError, match="not found|does not exist"):
        prepare_data(PHAConfig(data=str(tmp_path / "nowhere")))


# ---------------------------------------------------------------------------------------------------- runs


def test_train_task_end_to_end(tmp_path):
    from rswb.engine.launch import train_task

    result = train_task("pha", {"version": "pha_v2", "epochs": 1, "repeats": 1, "max_test": 300, "widths": "4,8,8",
                                "batch_size": 32, "shots": 5, "val_shots": 2, "unlabelled": 16, "progress": False},
                        run_name="x", runs_root=tmp_path)
    assert 0.0 <= result.test["OA"] <= 1.0 and {"OA", "AA", "kappa"} <= set(result.test)
    final = json.loads((tmp_path / "x" / "metrics.json").read_text())
    assert final["version"] == "pha_v2" and final["test"]["OA"] == pytest.approx(result.test["OA"])
    record = json.loads((tmp_path / "x" / "metrics.jsonl").read_text().splitlines()[0])
    text = json.dumps(record)
    assert "align_loss" in text and "cka_deep" in text


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "rswb.cli", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def test_train_pha_cli_on_a_lab_folder(tmp_path):
    lab = lab_copy(tmp_path)
    out = run_cli("train", "pha", "--data", str(lab), "--version", "pha_v1", "--shots", "3", "--val-shots", "2",
                  "--epochs", "1", "--repeats", "1", "--widths", "4,8,8", "--max-test", "200", "--batch-size", "32",
                  "--runs-root", str(tmp_path / "runs"), "--name", "c", "--progress", "false")
    assert out.returncode == 0, out.stderr
    final = json.loads((tmp_path / "runs" / "c" / "metrics.json").read_text())
    assert final["version"] == "pha_v1" and final["data"] == str(lab)
    assert 0.0 <= final["test"]["OA"] <= 1.0


def test_train_pha_cli_missing_data_exits_2(tmp_path, capsys):
    missing = tmp_path / "no_such_scene"
    code = main(["train", "pha", "--data", str(missing), "--epochs", "1", "--runs-root", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and str(missing) in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_train_pha_cli_wrong_pan_size_exits_2(tmp_path, capsys):
    import rasterio

    from tests.data.fakes import write_tif

    lab = lab_copy(tmp_path)
    with rasterio.open(lab / "pan.tif") as src:
        pan = src.read()
    write_tif(lab / "pan.tif", np.ascontiguousarray(pan[:, :700, :]))
    code = main(["train", "pha", "--data", str(lab), "--epochs", "1", "--runs-root", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and "pan.tif" in err and "700x800" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------------- scene mode


def test_scene_mode_prepare_and_one_step():
    # image_size 64 -> MS 16 x 16: three stages of two unpadded 3x3 convolutions need at least 13 x 13 MS pixels,
    # so 32 (MS 8 x 8) gives maps too small for the network (see the next test).
    cfg = PHAConfig(data=str(ensure_embedded("scenes")), image_size=64, shots=2, val_shots=1, unlabelled_pool=2,
                    max_test=20, repeats=2)
    data = prepare_data(cfg)
    assert data.mode == "scene" and data.num_classes == 10 and data.bands == 3 and data.scene is None
    assert len(data.train) == 10 * 2 * 2 and len(data.val) == 10 and len(data.test) == 20
    item = data.train[0]
    assert item["ms"].shape == (3, 16, 16) and item["pan"].shape == (1, 64, 64)
    assert set(data.split.train.tolist()).isdisjoint(data.split.val.tolist())
    extra = data.unlabelled(3)
    assert extra["ms"].shape == (3, 3, 16, 16) and extra["pan"].shape == (3, 1, 64, 64)

    torch.manual_seed(0)
    model = create_model("pha_v1", num_classes=10, bands=3, widths=WIDTHS)
    task = pha_task_of(model, 10, unlabelled=data.unlabelled, n_unlabelled=2).train()
    batch = task.collate([data.train[i] for i in range(4)])
    opt = torch.optim.SGD(task.parameters(), lr=0.1)
    loss, report = task(batch)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and "cka_deep" in report


def test_scene_mode_image_size_32_gives_8x8_ms():
    cfg = PHAConfig(data=str(ensure_embedded("scenes")), image_size=64, shots=2, val_shots=1, unlabelled_pool=2,
                    max_test=20)
    data = prepare_data(cfg)
    item = data.train[0]
    assert data.mode == "scene" and item["ms"].shape == (3, 16, 16) and item["pan"].shape == (1, 64, 64)


def test_scene_mode_too_small_images_raise_a_clear_error():
    from rswb.tasks.pha import pha_task

    cfg = PHAConfig(data=str(ensure_embedded("scenes")), version="pha_v1", widths="4,8,8", image_size=32, shots=2,
                    val_shots=1, unlabelled_pool=2, max_test=20)
    with pytest.raises(ValueError, match="image_size|too small"):
        bundle = pha_task(cfg)
        bundle.task.train()(bundle.task.collate([bundle.train[0], bundle.train[1]]))


def test_jitter_gains_are_per_sample_independent_per_modality_and_bounded():
    from rswb.data.transforms import jitter_gains

    g = torch.Generator().manual_seed(3)
    x = {"ms": torch.ones(256, 4, 2, 2), "pan": torch.ones(256, 1, 8, 8)}
    out = jitter_gains(x, 0.3, generator=g)
    ms_gain, pan_gain = out["ms"][:, 0, 0, 0], out["pan"][:, 0, 0, 0]
    assert float(ms_gain.min()) >= 0.7 and float(ms_gain.max()) <= 1.3
    assert torch.all(out["ms"] == ms_gain[:, None, None, None])  # one gain per sample, all bands alike
    assert abs(float(torch.corrcoef(torch.stack([ms_gain, pan_gain]))[0, 1])) < 0.2  # drawn independently
    assert torch.equal(jitter_gains(x, 0.0)["pan"], x["pan"])


def test_ablation_overrides_reach_the_model_and_need_an_aligned_version():
    from rswb.tasks.pha import build_model

    data = prepare_data(PHAConfig(shots=2, val_shots=1, max_test=50))
    model = build_model(PHAConfig(version="pha_v4", widths="4,8,8", stage_fusion=False), data)
    assert model.stage_fuse is None and model.align_schedule == "progressive"
    model = build_model(PHAConfig(version="pha_v4", widths="4,8,8", align_schedule="equal"), data)
    assert model.stage_fuse is not None and model.align_schedule == "equal"
    with pytest.raises(ValueError, match="aligned version"):
        build_model(PHAConfig(version="pha_v1", widths="4,8,8", stage_fusion=True), data)


def test_train_help_states_the_training_settings_the_task_prefers(capsys):
    assert main(["train", "pha", "--help"]) == 0
    out = capsys.readouterr().out
    assert "30 epochs" in out and "--version" in out and "--shots" in out and "--epochs" in out


def test_scores_per_class_accuracy_matches_a_loop_and_skips_absent_classes():
    from rswb.metrics.classification import class_scores as scores

    rng = np.random.default_rng(4)
    y = rng.integers(0, 5, 300)
    y[y == 3] = 0  # class value 4 (index 3) has no sample
    pred = np.where(rng.random(300) < 0.7, y, rng.integers(0, 5, 300))
    got = scores(y, pred, 5)
    for c in range(5):
        members = [i for i in range(300) if y[i] == c]
        if not members:
            assert f"acc_{c + 1}" not in got
            continue
        assert got[f"acc_{c + 1}"] == pytest.approx(sum(pred[i] == c for i in members) / len(members))
    assert got["OA"] == pytest.approx(float(np.mean(pred == y)))
    present = [got[f"acc_{c + 1}"] for c in range(5) if f"acc_{c + 1}" in got]
    assert got["AA"] == pytest.approx(float(np.mean(present)))


# ------------------------------------------------------------------------------------------ encoder branches


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """Scene mode on a frozen EfficientNet-Lite0 (embedded scenes at 64 px, 2 views), cache in a temporary folder."""
    cfg = PHAConfig(data=str(ensure_embedded("scenes")), image_size=64, shots=2, val_shots=1, unlabelled_pool=2,
                    max_test=20, repeats=2, encoder="efficientnet_lite0", views=2,
                    cache_dir=str(tmp_path_factory.mktemp("cache")))
    return cfg, prepare_data(cfg)


def test_encoder_mode_items_are_cached_pooled_features(encoded):
    cfg, data = encoded
    assert data.feature_dims == (40, 112, 1280) and data.mode == "scene"
    assert len(data.train) == 10 * 2 * 2 and len(data.val) == 10 and len(data.test) == 20
    item = data.train[0]
    assert item["ms"].shape == (1432,) and item["pan"].shape == (1432,)
    extra = data.unlabelled(3)
    assert extra["ms"].shape == (3, 1432) and extra["id"].shape == (3,)
    # The ids are training-split positions, the numbering the unlabelled pool uses too.
    assert set(data.train.ids.tolist()) == set(data.split.train.tolist())


def test_encoder_features_are_the_backbone_on_each_view_of_each_modality(encoded):
    """The cache holds exactly the frozen backbone's pooled s8 / s16 / head features of the MS (upsampled) and PAN
    images of each view: recompute one image's second view by hand."""
    from rswb.data.scenes import SceneFolder
    from rswb.data.wald import ModalityImages, WaldSceneDataset
    from rswb.tasks.pha.data import _encoder_features, _frozen_encoder

    cfg, data = encoded
    folder = SceneFolder(cfg.data, split="train")
    kw = {"image_size": 64, "ratio": 4, "gain_at_nyquist": 0.3}
    feats = _encoder_features(cfg, _frozen_encoder(cfg), folder, np.arange(len(folder.records)), 2, kw,
                              torch.device("cpu"))  # cache hit
    j = int(data.split.train[0])
    pairs = WaldSceneDataset(folder, indices=[j], **kw)
    enc = create_model("efficientnet_lite0").eval()
    for m in ("ms", "pan"):
        img = dihedral(ModalityImages(pairs, m)[0]["image"][None], 1)
        with torch.no_grad():
            f = enc.forward_features(img)
        want = torch.cat([f[t].mean((2, 3)) for t in ("s8", "s16", "head")], 1)[0]
        torch.testing.assert_close(feats[m][j, 1], want, rtol=1e-4, atol=1e-5)
    # Training items share one view between MS and PAN (the pair stays co-registered).
    torch.manual_seed(3)
    item = data.train[0]
    v = [k for k in range(2) if torch.equal(feats["ms"][j, k], item["ms"])]
    assert v and torch.equal(feats["pan"][j, v[0]], item["pan"])


@pytest.mark.parametrize("version", PHA_VERSIONS)
def test_encoder_mode_trains_every_version_one_step(encoded, version):
    cfg, data = encoded
    torch.manual_seed(0)
    kw = {"atoms": 12} if version == "pha_v5" else {}
    model = create_model(version, num_classes=10, bands=3, widths=(8, 8, 16), proj_dim=8,
                         feature_dims=data.feature_dims, **kw)
    task = pha_task_of(model, 10, unlabelled=data.unlabelled, n_unlabelled=4, augment=False).train()
    batch = task.collate([data.train[i] for i in range(6)])
    opt = torch.optim.SGD(task.parameters(), lr=0.1)
    loss, _ = task(batch)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    # The deep adapter always trains; the shallower ones where the version uses those stages (alignment, fusion).
    used = set(model.align_stages) | {2} | ({0, 1} if model.stage_fuse is not None else set())
    for branch in model.branches.values():
        for s, stage in enumerate(branch.stages):
            assert all((p.grad is not None) == (s in used) for p in stage.parameters()), (version, s)
    with pytest.raises(ValueError, match="feature maps"):
        model.stage_maps(None, None)


def test_encoder_needs_scene_mode(tmp_path):
    with pytest.raises(ValueError, match="scene mode"):
        prepare_data(PHAConfig(encoder="efficientnet_lite0"))
    with pytest.raises(ValueError, match="scene mode"):
        prepare_data(PHAConfig(data=str(lab_copy(tmp_path)), encoder="efficientnet_lite0"))


def test_pha_task_on_an_encoder_records_it_and_turns_image_augmentation_off(encoded):
    from rswb.tasks.pha import pha_task

    cfg, _ = encoded
    bundle = pha_task(dataclasses.replace(cfg, version="pha_v3", widths="8,8,16"))
    assert bundle.task.info["encoder"] == "efficientnet_lite0"
    assert not bundle.task.augment and bundle.task.jitter == 0.0
    assert bundle.task.model.describe()["branches"] == "encoder features"
