"""MS+PAN readers, validation, normalisation and the vectorised patch sampler, on tiny fake twins."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import scipy.io
import torch
from matplotlib.figure import Figure

from rswb.data.errors import (
    DataFormatError,
    DatasetNotFoundError,
    InvalidPixelError,
    LabelRangeError,
    ShapeMismatchError,
)
from rswb.data.mspan import (
    MSPANScene,
    band_stats,
    is_mspan_source,
    load_mspan,
    read_label_map,
    read_raster,
    validate_scene,
)
from rswb.data.patches import PatchSampler, PatchStore, PixelPatches, patch_padding
from tests.data.fakes import (
    FAKE_EPSG,
    garble_file,
    make_mspan_folder,
    make_mspan_mat,
    raises_naming,
    random_label_maps,
    truncate_file,
    write_tif,
)

# -------------------------------------------------------------------------------------------------- reading folders


def test_folder_round_trip_values_and_shapes(tmp_path):
    fake = make_mspan_folder(tmp_path, h=12, w=10, ratio=4, bands=4, n_classes=3)
    scene = load_mspan(fake.path)
    assert isinstance(scene, MSPANScene)
    assert scene.ms.dtype == np.float32 and scene.pan.dtype == np.float32
    assert scene.ms.shape == (4, 12, 10) and scene.pan.shape == (1, 48, 40)
    np.testing.assert_array_equal(scene.ms, fake.ms.astype(np.float32))
    np.testing.assert_array_equal(scene.pan, fake.pan.astype(np.float32))
    assert scene.ratio == 4 and scene.bands == 4 and scene.shape == (12, 10)
    assert scene.source == fake.path
    assert sorted(scene.labels) == ["test", "train"]
    for name, m in fake.labels.items():
        assert scene.labels[name].dtype == np.int64
        np.testing.assert_array_equal(scene.labels[name], m)
    assert scene.meta["files"]["ms"].name == "ms4.tif"
    assert scene.meta["files"]["train"].name == "train.npy"


def test_folder_keeps_crs_and_transforms(tmp_path):
    fake = make_mspan_folder(tmp_path, ratio=4)
    scene = load_mspan(fake.path)
    assert scene.crs is not None
    assert rasterio.crs.CRS.from_wkt(scene.crs).to_epsg() == FAKE_EPSG
    assert scene.ms_transform == fake.ms_transform
    assert scene.pan_transform == fake.pan_transform
    assert scene.pan_transform.a * scene.ratio == pytest.approx(scene.ms_transform.a)


def test_folder_without_georeferencing(tmp_path):
    scene = load_mspan(make_mspan_folder(tmp_path, geo=False).path)
    assert scene.crs is None and scene.ms_transform is None and scene.pan_transform is None


def test_float_rasters_round_trip(tmp_path):
    fake = make_mspan_folder(tmp_path, dtype="float32", bands=3)
    scene = load_mspan(fake.path)
    np.testing.assert_array_equal(scene.ms, fake.ms)
    np.testing.assert_array_equal(scene.pan, fake.pan)


def test_class_names_and_counts(tmp_path):
    fake = make_mspan_folder(tmp_path, n_classes=3)
    scene = load_mspan(fake.path)
    assert scene.class_names == ["class_a", "class_b", "class_c"]
    assert scene.num_classes == 3
    values, counts = np.unique(fake.labels["train"], return_counts=True)
    expected = {int(v): int(n) for v, n in zip(values, counts) if v}
    assert scene.class_counts("train") == expected
    assert set(expected) == {1, 2, 3}


def test_num_classes_without_classes_txt_is_the_largest_label(tmp_path):
    fake = make_mspan_folder(tmp_path, n_classes=5, classes=False)
    scene = load_mspan(fake.path)
    assert scene.class_names is None
    assert scene.num_classes == 5


def test_labelled_pixels_are_zero_based(tmp_path):
    fake = make_mspan_folder(tmp_path, n_classes=3)
    scene = load_mspan(fake.path)
    rows, cols, labels = scene.labelled_pixels("train")
    m = fake.labels["train"]
    exp_rows, exp_cols = np.nonzero(m)
    np.testing.assert_array_equal(rows, exp_rows)
    np.testing.assert_array_equal(cols, exp_cols)
    np.testing.assert_array_equal(labels, m[exp_rows, exp_cols].astype(np.int64) - 1)
    assert labels.dtype == np.int64 and labels.min() == 0 and labels.max() == 2


def test_labelled_pixels_unknown_split(tmp_path):
    fake = make_mspan_folder(tmp_path)
    scene = load_mspan(fake.path)
    with pytest.raises(DataFormatError, match="'val'"):
        scene.labelled_pixels("val")


@pytest.mark.parametrize("variant", ["npy", "mat"])
def test_single_label_map_variants(tmp_path, variant):
    fake = make_mspan_folder(tmp_path, labels=variant)
    scene = load_mspan(fake.path)
    assert list(scene.labels) == ["label"]
    np.testing.assert_array_equal(scene.labels["label"], fake.labels["label"])
    assert scene.labels["label"].dtype == np.int64
    assert scene.meta["files"]["label"].name == f"label.{variant}"
    _, _, lab = scene.labelled_pixels("label")
    assert lab.min() == 0


def test_folder_without_labels(tmp_path):
    scene = load_mspan(make_mspan_folder(tmp_path, labels=None, classes=False).path)
    assert scene.labels == {} and scene.num_classes == 0


def test_the_folder_ratio_comes_from_the_grids(tmp_path):
    fake = make_mspan_folder(tmp_path, ratio=2, h=6, w=5)  # a Landsat-like 2x pair
    scene = load_mspan(fake.path)
    assert scene.ratio == 2 and scene.pan.shape == (1, 12, 10)
    assert load_mspan(fake.path, ratio=2).ratio == 2
    raises_naming(ShapeMismatchError, fake.files["pan"], load_mspan, fake.path, ratio=4)  # a stated ratio must fit


def test_a_pan_that_is_no_integer_multiple_is_refused(tmp_path):
    fake = make_mspan_folder(tmp_path, ratio=4, h=6, w=5)
    pan = fake.pan[:, :22, :]  # 22 rows for 6 MS rows: cropped
    write_tif(fake.files["pan"], pan)
    with pytest.raises(ShapeMismatchError, match="not one integer ratio") as err:
        load_mspan(fake.path)
    assert err.value.path == fake.files["pan"]


def test_read_raster_and_label_map_directly(tmp_path):
    fake = make_mspan_folder(tmp_path)
    arr, geo = read_raster(fake.files["ms"])
    np.testing.assert_array_equal(arr, fake.ms)
    assert geo["transform"] == fake.ms_transform
    np.testing.assert_array_equal(read_label_map(fake.files["train"]), fake.labels["train"])


def test_label_mat_with_a_differently_named_single_variable(tmp_path):
    m = np.arange(12, dtype=np.uint8).reshape(3, 4) % 3
    scipy.io.savemat(tmp_path / "label_gt.mat", {"whatever": m})
    np.testing.assert_array_equal(read_label_map(tmp_path / "label_gt.mat"), m)


# -------------------------------------------------------------------------------------------------------- .mat pairs


def test_mat_pair_round_trip(tmp_path):
    fake = make_mspan_mat(tmp_path, h=8, w=6, ratio=4, bands=8, rgb_indexes=(5, 3, 2))
    scene = load_mspan(fake.path)
    assert scene.ms.shape == (8, 8, 6)  # bands moved first
    assert scene.pan.shape == (1, 32, 24)
    np.testing.assert_array_equal(scene.ms, fake.ms.astype(np.float32))
    np.testing.assert_array_equal(scene.pan, fake.pan.astype(np.float32))
    assert scene.ratio == 4
    assert scene.meta["sensor"] == "WV2"
    assert scene.meta["bit_depth"] == 11
    assert scene.meta["rgb_bands"] == [4, 2, 1]  # 1-based MATLAB -> 0-based
    assert scene.labels == {} and scene.source == fake.path


def test_mat_pair_ratio_is_read_from_the_file(tmp_path):
    fake = make_mspan_mat(tmp_path, h=5, w=7, ratio=2, bands=4)
    scene = load_mspan(fake.path)
    assert scene.ratio == 2 and scene.pan.shape == (1, 10, 14)


@pytest.mark.parametrize("ratio", [2, 4, 6])
def test_mat_pair_without_ratio_takes_it_from_the_shapes(tmp_path, ratio):
    fake = make_mspan_mat(tmp_path, ratio=ratio, drop=("ratio", "sensor", "L", "RGB_indexes"))
    scene = load_mspan(fake.path)
    assert scene.ratio == ratio
    assert "sensor" not in scene.meta and "rgb_bands" not in scene.meta


def test_mat_pair_zpnn_and_pancollection_names(tmp_path):
    """I_MS_LR + I_PAN (Z-PNN, an 8-band WorldView-3 32 x 32 MS with 128 x 128 PAN), with an upsampled I_MS beside it;
    PanCollection's bands-first ms / lms / pan."""

    rng = np.random.default_rng(3)
    ms_lr = rng.integers(0, 2048, (32, 32, 8), dtype=np.uint16)
    up = np.repeat(np.repeat(ms_lr, 4, 0), 4, 1)
    pan = rng.integers(0, 2048, (128, 128), dtype=np.uint16)
    scipy.io.savemat(tmp_path / "zpnn.mat", {"I_MS_LR": ms_lr, "I_MS": up, "I_PAN": pan})
    scene = load_mspan(tmp_path / "zpnn.mat")
    assert scene.ratio == 4 and scene.ms.shape == (8, 32, 32) and scene.meta["variables"]["ms"] == "I_MS_LR"
    np.testing.assert_array_equal(scene.ms, np.moveaxis(ms_lr, -1, 0))
    scipy.io.savemat(tmp_path / "pc.mat", {"ms": np.moveaxis(ms_lr, -1, 0), "lms": np.moveaxis(up, -1, 0),
                                           "pan": pan[None]})
    scene = load_mspan(tmp_path / "pc.mat")
    assert scene.ratio == 4 and scene.meta["variables"] == {"ms": "ms", "pan": "pan"}
    np.testing.assert_array_equal(scene.ms, np.moveaxis(ms_lr, -1, 0))
    # Only an upsampled MS: a ratio-1 pair, said so in the metadata.
    scipy.io.savemat(tmp_path / "up.mat", {"I_MS_UP": up, "I_PAN": pan})
    scene = load_mspan(tmp_path / "up.mat")
    assert scene.ratio == 1 and scene.meta["ms_upsampled"]


def test_mat_pair_errors_list_the_variables_present(tmp_path):

    rng = np.random.default_rng(4)
    scipy.io.savemat(tmp_path / "odd.mat", {"MSI": rng.random((8, 8, 4)), "PANI": rng.random((32, 32))})
    err = raises_naming(DataFormatError, tmp_path / "odd.mat", load_mspan, tmp_path / "odd.mat")
    assert "MSI (8x8x4 float64)" in str(err) and "PANI (32x32 float64)" in str(err) and "I_MS_LR" in str(err)
    scipy.io.savemat(tmp_path / "ratio.mat", {"I_MS": rng.random((8, 8, 4)), "I_PAN": rng.random((32, 32)),
                                              "ratio": np.array([[2.0]])})
    err = raises_naming(ShapeMismatchError, tmp_path / "ratio.mat", load_mspan, tmp_path / "ratio.mat")
    assert "stored ratio 2 disagrees" in str(err)
    scipy.io.savemat(tmp_path / "skew.mat", {"I_MS": rng.random((8, 8, 4)), "I_PAN": rng.random((30, 32))})
    err = raises_naming(ShapeMismatchError, tmp_path / "skew.mat", load_mspan, tmp_path / "skew.mat")
    assert "30x32 PAN grid" in str(err)


def test_mat_pair_with_label(tmp_path):
    fake = make_mspan_mat(tmp_path, label=True)
    scene = load_mspan(fake.path)
    np.testing.assert_array_equal(scene.labels["label"], fake.labels["label"])


def test_rgb_uses_the_file_rgb_bands(tmp_path):
    scene = load_mspan(make_mspan_mat(tmp_path, bands=8, rgb_indexes=(5, 3, 2)).path)
    rgb = scene.rgb()
    assert rgb.shape == (8, 6, 3)
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    np.testing.assert_array_equal(rgb, scene.rgb(bands=[4, 2, 1]))


@pytest.mark.parametrize("bands", [1, 3, 4, 8])
def test_rgb_is_a_displayable_composite(bands):
    rng = np.random.default_rng(bands)
    scene = MSPANScene(rng.random((bands, 5, 6), dtype=np.float32), rng.random((1, 20, 24), dtype=np.float32), 4)
    rgb = scene.rgb()
    assert rgb.shape == (5, 6, 3)
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0


def test_rgb_of_a_two_band_scene():
    rng = np.random.default_rng(2)
    scene = MSPANScene(rng.random((2, 5, 6), dtype=np.float32), rng.random((1, 20, 24), dtype=np.float32), 4)
    assert scene.rgb().shape == (5, 6, 3)


# ----------------------------------------------------------------------------------------------------- normalisation


def test_minmax_gives_exactly_zero_to_one_per_band(tmp_path):
    fake = make_mspan_folder(tmp_path, bands=4)
    scene = load_mspan(fake.path)
    norm = scene.normalized("minmax")
    for x in (norm.ms, norm.pan):
        assert x.dtype == np.float32
        flat = x.reshape(x.shape[0], -1)
        np.testing.assert_array_equal(flat.min(axis=1), 0.0)
        np.testing.assert_array_equal(flat.max(axis=1), 1.0)
    lo, hi = fake.ms.reshape(4, -1).min(1), fake.ms.reshape(4, -1).max(1)
    expected = (fake.ms.astype(np.float64) - lo[:, None, None]) / (hi - lo)[:, None, None]
    np.testing.assert_allclose(norm.ms, expected, atol=1e-6)
    np.testing.assert_array_equal(scene.ms, fake.ms.astype(np.float32))  # the original is untouched
    stats = norm.meta["normalization"]
    assert stats["method"] == "minmax"
    assert stats["ms_low"] == lo.astype(np.float32).tolist() and stats["ms_high"] == hi.astype(np.float32).tolist()
    assert norm.labels is scene.labels or all(np.array_equal(norm.labels[k], scene.labels[k]) for k in scene.labels)


def test_percentile_clips_outliers():
    rng = np.random.default_rng(0)
    ms = rng.normal(100.0, 10.0, size=(3, 20, 20)).astype(np.float32)
    ms[:, 0, 0] = 1e6  # a saturated pixel
    pan = rng.normal(50.0, 5.0, size=(1, 80, 80)).astype(np.float32)
    scene = MSPANScene(ms, pan, 4)
    norm = scene.normalized("percentile", (2.0, 98.0))
    for x, raw in ((norm.ms, ms), (norm.pan, pan)):
        assert x.min() == 0.0 and x.max() == 1.0
        flat, raw_flat = x.reshape(x.shape[0], -1), raw.reshape(raw.shape[0], -1)
        lo, hi = np.percentile(raw_flat, (2.0, 98.0), axis=1)
        for b in range(x.shape[0]):
            assert np.all(flat[b][raw_flat[b] <= lo[b]] == 0.0)
            assert np.all(flat[b][raw_flat[b] >= hi[b]] == 1.0)
            inside = (raw_flat[b] > lo[b]) & (raw_flat[b] < hi[b])
            np.testing.assert_allclose(flat[b][inside], (raw_flat[b][inside] - lo[b]) / (hi[b] - lo[b]), atol=1e-5)
            assert 0.01 < np.mean(flat[b] == 1.0) < 0.05  # ~2 % clipped at the top, not just the outlier
    # minmax is dominated by the outlier; percentile is not
    assert np.median(scene.normalized("minmax").ms) < 1e-3 < np.median(norm.ms)


def test_unknown_normalisation():
    with pytest.raises(ValueError, match="unknown normalisation"):
        band_stats(np.zeros((1, 2, 2), np.float32), "zscore")


def test_constant_band_does_not_divide_by_zero():
    ms = np.full((2, 3, 3), 7.0, np.float32)
    norm = MSPANScene(ms, np.ones((1, 12, 12), np.float32), 4).normalized("minmax")
    assert np.all(np.isfinite(norm.ms)) and np.all(norm.ms == 0.0)


# ------------------------------------------------------------------------------------------------------------ plots


def test_scene_plot_returns_a_figure(tmp_path):
    scene = load_mspan(make_mspan_folder(tmp_path).path)
    fig = scene.plot()
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 4  # MS, PAN, train, test


def test_mat_scene_plot_returns_a_figure(tmp_path):
    assert isinstance(load_mspan(make_mspan_mat(tmp_path).path).plot(), Figure)


def test_patch_dataset_plot_returns_a_figure(tmp_path):
    ds = PixelPatches.from_scene(make_mspan_folder(tmp_path).path, "train", ms_patch=4)
    assert isinstance(ds.plot(ds[0]), Figure)


# ------------------------------------------------------------------------------------------------- bad MS+PAN input


def test_missing_folder(tmp_path):
    missing = tmp_path / "no_such_scene"
    err = raises_naming(DatasetNotFoundError, missing, load_mspan, missing)
    assert isinstance(err, FileNotFoundError)


@pytest.mark.parametrize("which", ["ms", "pan"])
def test_missing_raster(tmp_path, which):
    fake = make_mspan_folder(tmp_path)
    fake.files[which].unlink()
    raises_naming(DatasetNotFoundError, fake.files[which], load_mspan, fake.path)


def test_pan_not_ratio_times_ms(tmp_path):
    fake = make_mspan_folder(tmp_path, h=12, w=10, ratio=4)
    write_tif(fake.files["pan"], np.zeros((1, 47, 40), np.uint16))
    err = raises_naming(ShapeMismatchError, fake.files["pan"], load_mspan, fake.path)
    assert "48x40" in str(err)  # the expected PAN size
    assert "47x40" in str(err)


def test_pan_with_several_bands(tmp_path):
    fake = make_mspan_folder(tmp_path, h=4, w=4)
    write_tif(fake.files["pan"], np.zeros((2, 16, 16), np.uint16))
    raises_naming(ShapeMismatchError, fake.files["pan"], load_mspan, fake.path)


@pytest.mark.parametrize("split", ["train", "test"])
def test_label_map_off_the_ms_grid(tmp_path, split):
    fake = make_mspan_folder(tmp_path, h=12, w=10)
    np.save(fake.files[split], np.zeros((12, 11), np.uint8))
    err = raises_naming(ShapeMismatchError, fake.files[split], load_mspan, fake.path)
    assert "12x10" in str(err)


def test_label_map_that_is_not_2d(tmp_path):
    fake = make_mspan_folder(tmp_path)
    np.save(fake.files["train"], np.zeros((12, 10, 2), np.uint8))
    raises_naming(ShapeMismatchError, fake.files["train"], load_mspan, fake.path)


def test_label_above_classes_txt(tmp_path):
    fake = make_mspan_folder(tmp_path, n_classes=3)
    m = fake.labels["train"].copy()
    m[0, 0] = 4
    np.save(fake.files["train"], m)
    err = raises_naming(LabelRangeError, fake.files["train"], load_mspan, fake.path)
    assert "0..3" in str(err)


def test_label_above_num_classes(tmp_path):
    fake = make_mspan_folder(tmp_path, n_classes=3, classes=False)
    assert load_mspan(fake.path).num_classes == 3  # fine without a class count
    raises_naming(LabelRangeError, fake.files["train"], load_mspan, fake.path, num_classes=2)
    load_mspan(fake.path, num_classes=3)


def test_negative_label(tmp_path):
    fake = make_mspan_folder(tmp_path, classes=False)
    m = fake.labels["test"].astype(np.int16)
    m[3, 3] = -1
    np.save(fake.files["test"], m)
    raises_naming(LabelRangeError, fake.files["test"], load_mspan, fake.path)


@pytest.mark.parametrize("bad", [1.5, np.nan, np.inf])
def test_non_integer_float_labels(tmp_path, bad):
    fake = make_mspan_folder(tmp_path)
    m = fake.labels["train"].astype(np.float32)
    m[1, 1] = bad
    np.save(fake.files["train"], m)
    raises_naming(LabelRangeError, fake.files["train"], load_mspan, fake.path)


def test_integral_float_labels_are_accepted(tmp_path):
    fake = make_mspan_folder(tmp_path)
    np.save(fake.files["train"], fake.labels["train"].astype(np.float64))
    scene = load_mspan(fake.path)
    assert scene.labels["train"].dtype == np.int64
    np.testing.assert_array_equal(scene.labels["train"], fake.labels["train"])


@pytest.mark.parametrize("which", ["ms", "pan"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels(tmp_path, which, bad):
    fake = make_mspan_folder(tmp_path, dtype="float32")
    arr = (fake.ms if which == "ms" else fake.pan).copy()
    arr[0, 2, 3] = bad
    write_tif(fake.files[which], arr, fake.ms_transform if which == "ms" else fake.pan_transform, FAKE_EPSG)
    err = raises_naming(InvalidPixelError, fake.files[which], load_mspan, fake.path)
    assert "(0, 2, 3)" in str(err)  # where the first bad pixel is


def test_non_finite_pixels_in_a_mat_pair(tmp_path):
    fake = make_mspan_mat(tmp_path, h=4, w=4)
    data = scipy.io.loadmat(fake.path)
    data["I_PAN"] = data["I_PAN"].astype(np.float64)
    data["I_PAN"][5, 5] = np.nan
    scipy.io.savemat(fake.path, {k: v for k, v in data.items() if not k.startswith("__")})
    raises_naming(InvalidPixelError, fake.path, load_mspan, fake.path)


def test_train_test_overlap(tmp_path):
    fake = make_mspan_folder(tmp_path)
    train, test = fake.labels["train"].copy(), fake.labels["test"].copy()
    r, c = np.argwhere(test > 0)[0]
    train[r, c] = 1
    np.save(fake.files["train"], train)
    err = raises_naming(DataFormatError, fake.files["test"], load_mspan, fake.path)
    assert "1 pixels" in str(err)
    # overlap can be allowed explicitly when validating by hand
    s = MSPANScene(np.zeros((1, 12, 10), np.float32), np.zeros((1, 48, 40), np.float32), 4,
                   labels={"train": train, "test": test})
    validate_scene(s, allow_overlap=True)


@pytest.mark.parametrize("which", ["ms", "pan"])
@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_raster(tmp_path, which, damage):
    fake = make_mspan_folder(tmp_path, h=40, w=40)
    path = fake.files[which]
    if damage == "garbage":
        garble_file(path)
    elif damage == "truncated":
        truncate_file(path, 0.5)
    else:
        path.write_bytes(b"")
    raises_naming(DataFormatError, path, load_mspan, fake.path)


@pytest.mark.parametrize("var", ["I_PAN", "I_MS"])
def test_mat_pair_missing_variable(tmp_path, var):
    fake = make_mspan_mat(tmp_path, drop=(var,))
    err = raises_naming(DataFormatError, fake.path, load_mspan, fake.path)
    assert var in str(err)


def test_mat_pair_pan_wrong_size(tmp_path):
    fake = make_mspan_mat(tmp_path, h=8, w=6, ratio=4)
    err = raises_naming(ShapeMismatchError, fake.path, load_mspan, fake.path, ratio=2)
    assert "16x12" in str(err)


def test_corrupt_mat_pair(tmp_path):
    path = garble_file(tmp_path / "pair.mat")
    raises_naming(DataFormatError, path, load_mspan, path)


def test_corrupt_label_file(tmp_path):
    fake = make_mspan_folder(tmp_path, labels="npy")
    garble_file(fake.files["label"])
    raises_naming(DataFormatError, fake.files["label"], load_mspan, fake.path)


def test_ambiguous_label_mat(tmp_path):
    fake = make_mspan_folder(tmp_path, labels="mat")
    m = fake.labels["label"]
    scipy.io.savemat(fake.files["label"], {"a": m, "b": m})
    err = raises_naming(DataFormatError, fake.files["label"], load_mspan, fake.path)
    assert "'a'" in str(err) and "'b'" in str(err)


def test_not_a_scene(tmp_path):
    path = tmp_path / "scene.txt"
    path.write_text("hello")
    raises_naming(DataFormatError, path, load_mspan, path)


# ---------------------------------------------------------------------------------------------------- patch sampling


def reference_patches(ms, pan, ratio, rows, cols, p, q):
    """Slow, obviously correct patches: pad with np.pad(reflect) once, then slice pixel by pixel."""
    mb = (p - 1) // 2
    ma = p - 1 - mb
    pb = ratio * mb + (q - ratio * p) // 2  # PAN patch centred on the footprint of the MS patch
    pa = q - pb - ratio
    msp = np.pad(ms, ((0, 0), (mb, ma), (mb, ma)), mode="reflect")
    panp = np.pad(pan[0], ((pb, pa), (pb, pa)), mode="reflect")
    out_ms, out_pan = [], []
    for r, c in zip(rows, cols):
        out_ms.append(msp[:, r:r + p, c:c + p])  # padded index of pixel r is r + mb
        out_pan.append(panp[None, ratio * r:ratio * r + q, ratio * c:ratio * c + q])
    return np.stack(out_ms), np.stack(out_pan)


def random_scene(h, w, ratio, bands, seed=0, n_classes=3):
    rng = np.random.default_rng(seed)
    ms = rng.random((bands, h, w), dtype=np.float32)
    pan = rng.random((1, ratio * h, ratio * w), dtype=np.float32)
    train, test = random_label_maps(rng, h, w, n_classes, frac=0.8) if h * w >= 2 * n_classes else (None, None)
    labels = {} if train is None else {"train": train.astype(np.int64), "test": test.astype(np.int64)}
    return MSPANScene(ms, pan, ratio, labels=labels)


SAMPLER_CASES = [
    # (h, w, ratio, bands, ms_patch, pan_patch)
    (12, 10, 4, 4, 16, None),  # the default 16/64 at ratio 4
    (5, 7, 4, 4, 16, None),  # scene smaller than the padding (7 before / 8 after)
    (2, 3, 4, 3, 16, None),  # tiny scene: repeated reflection
    (9, 11, 2, 8, 16, None),  # ratio 2, 8 bands: 16/32
    (9, 8, 2, 3, 5, None),  # odd MS patch
    (10, 9, 4, 8, 8, 24),  # PAN patch smaller than the footprint
    (7, 6, 4, 4, 5, 18),  # odd MS patch, PAN not a multiple of the ratio
    (8, 13, 2, 4, 6, 16),  # PAN patch wider than the footprint
    (6, 6, 4, 3, 1, 4),  # one-pixel MS patch
]


@pytest.mark.parametrize("h,w,ratio,bands,p,q", SAMPLER_CASES)
def test_sampler_matches_reference_on_every_pixel(h, w, ratio, bands, p, q):
    scene = random_scene(h, w, ratio, bands, seed=h * 100 + w)
    sampler = PatchSampler(scene, ms_patch=p, pan_patch=q)
    q = ratio * p if q is None else q
    rows, cols = np.divmod(np.arange(h * w), w)
    out = sampler.gather(rows, cols)
    ref_ms, ref_pan = reference_patches(scene.ms, scene.pan, ratio, rows, cols, p, q)
    assert out["ms"].shape == (h * w, bands, p, p) and out["pan"].shape == (h * w, 1, q, q)
    assert out["ms"].dtype == torch.float32 and out["pan"].dtype == torch.float32
    np.testing.assert_array_equal(out["ms"].numpy(), ref_ms)
    np.testing.assert_array_equal(out["pan"].numpy(), ref_pan)


@pytest.mark.parametrize("h,w,ratio,bands,p,q", SAMPLER_CASES)
def test_ms_patch_centre_is_the_pixel(h, w, ratio, bands, p, q):
    scene = random_scene(h, w, ratio, bands, seed=1)
    rows, cols = np.divmod(np.arange(h * w), w)
    ms = PatchSampler(scene, ms_patch=p, pan_patch=q).gather(rows, cols)["ms"].numpy()
    centre = (p - 1) // 2
    np.testing.assert_array_equal(ms[:, :, centre, centre], scene.ms[:, rows, cols].T)


@pytest.mark.parametrize("ratio,p", [(4, 16), (2, 16), (4, 4), (2, 5)])
def test_pan_patch_is_the_ground_footprint_of_the_ms_patch(ratio, p):
    h = w = p + 6
    scene = random_scene(h, w, ratio, 4, seed=ratio)
    before, after = (p - 1) // 2, p - 1 - (p - 1) // 2
    rows, cols = np.meshgrid(np.arange(before, h - after), np.arange(before, w - after), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    out = PatchSampler(scene, ms_patch=p).gather(rows, cols)
    for k, (r, c) in enumerate(zip(rows, cols)):
        r0, r1, c0, c1 = r - before, r + after + 1, c - before, c + after + 1
        np.testing.assert_array_equal(out["ms"][k].numpy(), scene.ms[:, r0:r1, c0:c1])
        foot = scene.pan[:, ratio * r0:ratio * r1, ratio * c0:ratio * c1]
        np.testing.assert_array_equal(out["pan"][k].numpy(), foot)


def test_patch_padding():
    assert patch_padding(16, 64, 4) == ((7, 8), (28, 32))
    assert patch_padding(16, 32, 2) == ((7, 8), (14, 16))
    assert patch_padding(5, 20, 4) == ((2, 2), (8, 8))
    with pytest.raises(ValueError, match="smaller than one MS pixel"):
        patch_padding(16, 2, 4)


def test_default_pan_patch_is_ratio_times_ms_patch():
    scene = random_scene(6, 6, 4, 4)
    sampler = PatchSampler(scene)
    assert sampler.ms_patch == 16 and sampler.pan_patch == 64
    out = sampler.gather([0], [5])
    assert out["ms"].shape == (1, 4, 16, 16) and out["pan"].shape == (1, 1, 64, 64)


def test_gather_of_no_pixels():
    out = PatchSampler(random_scene(5, 5, 4, 3), ms_patch=4).gather(np.zeros(0, int), np.zeros(0, int))
    assert out["ms"].shape == (0, 3, 4, 4) and out["pan"].shape == (0, 1, 16, 16)


@pytest.mark.parametrize("row,col", [(-1, 0), (0, -1), (7, 0), (0, 5), (100, 100)])
def test_out_of_grid_pixels_raise(row, col):
    sampler = PatchSampler(random_scene(7, 5, 4, 3), ms_patch=4)
    with pytest.raises(IndexError):
        sampler.gather([0, row], [0, col])
    with pytest.raises(IndexError):
        next(sampler.batches(np.array([row]), np.array([col]), shuffle=False))


def collect(batches):
    rows, cols, labels, ms, pan = [], [], [], [], []
    for b in batches:
        rows.append(b["row"].numpy())
        cols.append(b["col"].numpy())
        labels.append(b["label"].numpy())
        ms.append(b["ms"].numpy())
        pan.append(b["pan"].numpy())
    return tuple(np.concatenate(x) for x in (rows, cols, labels, ms, pan))


def test_batches_cover_every_pixel_once_with_its_label():
    scene = random_scene(11, 9, 4, 4, seed=3)
    sampler = PatchSampler(scene, ms_patch=6)
    rows, cols, labels = scene.labelled_pixels("train")
    assert len(rows) > 20
    sizes = [len(b["row"]) for b in sampler.batches(rows, cols, labels, batch_size=7, seed=5)]
    assert sizes == [7] * (len(rows) // 7) + ([len(rows) % 7] if len(rows) % 7 else [])
    r, c, lab, ms, pan = collect(sampler.batches(rows, cols, labels, batch_size=7, seed=5))
    got = sorted(zip(r.tolist(), c.tolist(), lab.tolist()))
    assert got == sorted(zip(rows.tolist(), cols.tolist(), labels.tolist()))
    assert len(set(zip(r.tolist(), c.tolist()))) == len(rows)  # exactly once
    np.testing.assert_array_equal(lab, scene.labels["train"][r, c] - 1)
    ref_ms, ref_pan = reference_patches(scene.ms, scene.pan, 4, r, c, 6, 24)
    np.testing.assert_array_equal(ms, ref_ms)
    np.testing.assert_array_equal(pan, ref_pan)


def test_batches_drop_last_and_no_shuffle():
    scene = random_scene(6, 6, 2, 3)
    sampler = PatchSampler(scene, ms_patch=4)
    rows, cols = np.divmod(np.arange(36), 6)
    batches = list(sampler.batches(rows, cols, batch_size=8, shuffle=False, drop_last=True))
    assert [len(b["row"]) for b in batches] == [8, 8, 8, 8]
    assert "label" not in batches[0]
    np.testing.assert_array_equal(torch.cat([b["row"] for b in batches]).numpy(), rows[:32])
    np.testing.assert_array_equal(torch.cat([b["col"] for b in batches]).numpy(), cols[:32])


def test_batches_are_seeded_and_deterministic():
    scene = random_scene(10, 10, 4, 4, seed=7)
    sampler = PatchSampler(scene, ms_patch=4)
    rows, cols, labels = scene.labelled_pixels("train")
    a = collect(sampler.batches(rows, cols, labels, batch_size=16, seed=11))
    b = collect(sampler.batches(rows, cols, labels, batch_size=16, seed=11))
    c = collect(sampler.batches(rows, cols, labels, batch_size=16, seed=12))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0] * 100 + a[1], c[0] * 100 + c[1])  # another seed, another order
    assert not np.array_equal(a[0] * 100 + a[1], rows * 100 + cols)  # shuffled


def test_batches_leave_global_rng_state_alone():
    scene = random_scene(10, 10, 4, 4, seed=8)
    sampler = PatchSampler(scene, ms_patch=4)
    rows, cols, labels = scene.labelled_pixels("train")
    np.random.seed(1234)
    torch.manual_seed(1234)
    np_state, torch_state = np.random.get_state(), torch.get_rng_state()
    collect(sampler.batches(rows, cols, labels, batch_size=8, seed=3))
    after = np.random.get_state()
    assert np_state[0] == after[0] and np_state[2:] == after[2:]
    np.testing.assert_array_equal(np_state[1], after[1])
    assert torch.equal(torch_state, torch.get_rng_state())


def test_gather_into_preallocated_buffers_matches_the_plain_gather():
    scene = random_scene(9, 8, 4, 3, seed=4)
    sampler = PatchSampler(scene, ms_patch=5)
    rows, cols = np.array([0, 8, 4, 4]), np.array([7, 0, 3, 3])
    out = {"ms": torch.empty(4, 5, 5, 3), "pan": torch.empty(4, 1, 20, 20)}
    got = sampler.gather(rows, cols, out=out)
    ref = sampler.gather(rows, cols)
    assert torch.equal(got["ms"], ref["ms"]) and torch.equal(got["pan"], ref["pan"])
    assert got["pan"].data_ptr() == out["pan"].data_ptr()  # written in place, no extra copy


def test_patch_cache_delivers_the_samplers_batches():
    scene = random_scene(11, 9, 4, 4, seed=3)
    sampler = PatchSampler(scene, ms_patch=6)
    rows, cols, labels = scene.labelled_pixels("train")
    cache = sampler.cache(rows, cols, chunk=5)  # several fill steps, the last one partial
    assert len(cache) == len(rows) and cache.nbytes == len(rows) * sampler.pair_bytes == len(rows) * 4 * (4 * 36 + 576)
    for kwargs in ({"batch_size": 7, "seed": 5}, {"batch_size": 8, "shuffle": False, "drop_last": True}):
        a = collect(sampler.batches(rows, cols, labels, **kwargs))
        b = collect(cache.batches(labels, **kwargs))
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    got = cache.gather([2, 0, 2])
    ref = sampler.gather(rows[[2, 0, 2]], cols[[2, 0, 2]])
    assert torch.equal(got["ms"], ref["ms"]) and torch.equal(got["pan"], ref["pan"])
    with pytest.raises(ValueError, match="differ in length"):
        sampler.cache(rows, cols[:-1])


def test_pixel_set_caches_only_what_fits():
    scene = random_scene(11, 9, 4, 4, seed=3)
    sampler = PatchSampler(scene, ms_patch=6)
    rows, cols, _ = scene.labelled_pixels("train")
    idx = np.array([3, 0, 3])
    ref = sampler.gather(rows[idx], cols[idx])
    for budget, cached in ((len(rows) * sampler.pair_bytes, True), (len(rows) * sampler.pair_bytes - 1, False),
                           (0, False)):
        pixels = PatchStore(sampler, rows, cols, cache_bytes=budget)
        got = pixels.gather(idx)
        assert pixels.cached is cached and len(pixels) == len(rows)
        assert torch.equal(got["ms"], ref["ms"]) and torch.equal(got["pan"], ref["pan"])
    assert sampler.cache(rows[:0], cols[:0], max_bytes=1 << 30) is None  # nothing to cache


@pytest.mark.parametrize("cache_bytes", [0, 1 << 30])
def test_patch_dataset_with_a_dataloader_matches_the_sampler(tmp_path, cache_bytes):
    fake = make_mspan_folder(tmp_path, h=9, w=8, ratio=4, bands=4)
    ds = PixelPatches.from_scene(fake.path, "train", ms_patch=6, normalize="minmax", cache_bytes=cache_bytes)
    assert len(ds) == int((fake.labels["train"] > 0).sum())
    sampler = PatchSampler(load_mspan(fake.path).normalized("minmax"), ms_patch=6)
    expected = sampler.batches(ds.rows, ds.cols, ds.labels, batch_size=5, shuffle=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, shuffle=False, collate_fn=PixelPatches.collate)
    n = 0
    for got, exp in zip(loader, expected, strict=True):
        assert torch.equal(got["ms"], exp["ms"])
        assert torch.equal(got["pan"], exp["pan"])
        assert torch.equal(got["label"], exp["label"])
        assert torch.equal(got["row"], exp["row"]) and torch.equal(got["col"], exp["col"])
        n += len(got["label"])
    assert n == len(ds) and ds.pixels.cached is bool(cache_bytes)
    assert float(ds[0]["ms"].min()) >= 0.0 and float(ds[0]["ms"].max()) <= 1.0


def test_patch_dataset_samples(tmp_path):
    fake = make_mspan_folder(tmp_path, h=9, w=8, n_classes=3)
    scene = load_mspan(fake.path)
    ds = PixelPatches.from_scene(scene, "test", ms_patch=4, pan_patch=12, normalize=None)
    rows, cols, labels = scene.labelled_pixels("test")
    s = ds[3]
    assert s["label"] == labels[3] and s["row"] == rows[3] and s["col"] == cols[3]
    assert s["ms"].shape == (4, 4, 4) and s["pan"].shape == (1, 12, 12)
    ref_ms, ref_pan = reference_patches(scene.ms, scene.pan, 4, rows[3:4], cols[3:4], 4, 12)
    np.testing.assert_array_equal(s["ms"].numpy(), ref_ms[0])
    np.testing.assert_array_equal(s["pan"].numpy(), ref_pan[0])


def test_patch_dataset_transforms(tmp_path):
    fake = make_mspan_folder(tmp_path)

    def flip(sample):
        return {**sample, "ms": sample["ms"].flip(-1), "tag": True}

    ds = PixelPatches.from_scene(fake.path, "train", transforms=flip, ms_patch=4, normalize=None)
    plain = PixelPatches.from_scene(fake.path, "train", ms_patch=4, normalize=None)
    s = ds[2]
    assert s["tag"] is True
    assert torch.equal(s["ms"], plain[2]["ms"].flip(-1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sampler_on_cuda_matches_cpu():
    scene = random_scene(20, 17, 4, 4, seed=9)
    rows, cols = np.divmod(np.arange(20 * 17), 17)
    cpu = PatchSampler(scene).gather(rows, cols)
    sampler = PatchSampler(scene, device="cuda")
    gpu = sampler.gather(rows, cols)
    assert gpu["ms"].is_cuda
    assert torch.equal(cpu["ms"], gpu["ms"].cpu()) and torch.equal(cpu["pan"], gpu["pan"].cpu())
    cached = sampler.cache(rows, cols).gather(np.arange(len(rows)))
    assert cached["pan"].is_cuda
    assert torch.equal(cpu["ms"], cached["ms"].cpu()) and torch.equal(cpu["pan"], cached["pan"].cpu())


def test_is_mspan_source_recognises_what_load_mspan_reads(tmp_path):
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "ms4.tif").touch()
    (tmp_path / "scenes" / "forest").mkdir(parents=True)
    (tmp_path / "pair.mat").touch()
    assert is_mspan_source(tmp_path / "lab") and is_mspan_source(tmp_path / "pair.mat")
    assert not is_mspan_source(tmp_path / "scenes") and not is_mspan_source(tmp_path / "image.tif")
