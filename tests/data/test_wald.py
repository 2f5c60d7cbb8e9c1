"""Wald-protocol MS+PAN simulation: the MTF, the degradation against a slow reference, and the scene dataset."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from rswb.data import WaldSceneDataset as ExportedDataset
from rswb.data import wald_simulate as exported_simulate
from rswb.data.scenes import SceneFolder
from rswb.data.synthetic import ensure_embedded
from rswb.data.wald import WaldSceneDataset, gaussian_kernel, mtf_sigma, wald_simulate

# ---------------------------------------------------------------------------------------------------------- the MTF


@pytest.mark.parametrize("ratio", [2, 4])
@pytest.mark.parametrize("gain", [0.2, 0.3, 0.5])
def test_sampled_kernel_has_the_requested_gain_at_nyquist(ratio, gain):
    k = gaussian_kernel(mtf_sigma(ratio, gain))
    n = np.arange(len(k)) - len(k) // 2
    f = 1.0 / (2 * ratio)
    response = float(np.sum(k * np.cos(2 * np.pi * f * n)))  # DTFT of a symmetric kernel (real)
    assert abs(response - gain) < 0.02
    # The same from an FFT of the kernel zero-padded to a length where f is an exact bin.
    length = 64 * ratio
    spectrum = np.abs(np.fft.rfft(np.roll(np.pad(k, (0, length - len(k))), -(len(k) // 2))))
    assert abs(spectrum[length // (2 * ratio)] - gain) < 0.02


def test_mtf_sigma_closed_form_and_kernel_shape():
    assert mtf_sigma(4, 0.3) == pytest.approx(4 * math.sqrt(-2 * math.log(0.3)) / math.pi)
    assert mtf_sigma(4, 0.3) == pytest.approx(1.976, abs=1e-3)
    k = gaussian_kernel(mtf_sigma(4, 0.3))
    assert len(k) == 2 * math.ceil(3 * mtf_sigma(4, 0.3)) + 1
    assert k.sum() == pytest.approx(1.0) and np.allclose(k, k[::-1]) and k.argmax() == len(k) // 2


@pytest.mark.parametrize("ratio,gain", [(1, 0.3), (0, 0.3), (4.0, 0.3), (4, 0.0), (4, 1.0), (4, -0.1), (4, 1.5)])
def test_mtf_sigma_rejects_bad_arguments(ratio, gain):
    with pytest.raises(ValueError):
        mtf_sigma(ratio, gain)


# ------------------------------------------------------------------------------------------------- the degradation


def slow_reference(rgb: np.ndarray, ratio: int, gain: float) -> np.ndarray:
    """Explicit 2-D convolution (loop over kernel taps, reflect padding by np.pad), then a loop over blocks."""
    sigma = mtf_sigma(ratio, gain)
    radius = math.ceil(3 * sigma)
    n = np.arange(-radius, radius + 1, dtype=np.float64)
    k1 = np.exp(-(n**2) / (2 * sigma**2))
    k2 = np.outer(k1, k1) / k1.sum() ** 2
    x = rgb.astype(np.float64)
    _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (radius, radius), (radius, radius)), mode="reflect")
    blurred = np.zeros_like(x)
    for a in range(2 * radius + 1):
        for b in range(2 * radius + 1):
            blurred += k2[a, b] * padded[:, a:a + h, b:b + w]
    ms = np.zeros((3, h // ratio, w // ratio))
    for i in range(h // ratio):
        for j in range(w // ratio):
            ms[:, i, j] = blurred[:, ratio * i:ratio * i + ratio, ratio * j:ratio * j + ratio].mean(axis=(1, 2))
    return ms


@pytest.mark.parametrize("ratio,gain,h,w", [(4, 0.3, 32, 24), (2, 0.5, 10, 14), (4, 0.2, 16, 40)])
def test_ms_matches_slow_reference(ratio, gain, h, w):
    rgb = np.random.default_rng(0).random((3, h, w))
    out = wald_simulate(rgb, ratio, gain)
    assert out["ms"].dtype == np.float32 and out["ms"].shape == (3, h // ratio, w // ratio)
    np.testing.assert_allclose(out["ms"], slow_reference(rgb, ratio, gain), rtol=0, atol=1e-5)


def test_pan_is_the_band_mean_and_shapes():
    rgb = np.random.default_rng(1).random((3, 16, 12)).astype(np.float32)
    out = wald_simulate(rgb, ratio=4)
    assert out["pan"].dtype == np.float32 and out["pan"].shape == (1, 16, 12)
    np.testing.assert_array_equal(out["pan"][0], rgb.mean(axis=0))
    assert out["ms"].shape == (3, 4, 3)


def test_constant_image_stays_constant():
    rgb = np.stack([np.full((16, 16), v) for v in (0.2, 0.5, 0.9)])
    out = wald_simulate(rgb, ratio=4)
    for band, v in enumerate((0.2, 0.5, 0.9)):
        np.testing.assert_allclose(out["ms"][band], v, atol=1e-6)


def test_smooth_image_block_mean_of_pan_matches_ms_intensity():
    h = w = 64
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    # cos(pi x / (w-1)) is mirror-symmetric about the first and last pixel centres, like numpy's reflect padding,
    # so the borders add no kink and the only change is the blur's gain at this low frequency (about 0.995).
    cx, cy = np.cos(np.pi * x / (w - 1)), np.cos(np.pi * y / (h - 1))
    rgb = np.stack([0.5 + 0.2 * cx, 0.5 + 0.2 * cy, 0.4 + 0.15 * cx * cy])
    out = wald_simulate(rgb, ratio=4)
    block_mean = out["pan"][0].reshape(16, 4, 16, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(out["ms"].mean(axis=0), block_mean, atol=5e-3)


def test_torch_input_gives_torch_output():
    rgb = np.random.default_rng(2).random((3, 8, 8)).astype(np.float32)
    ref = wald_simulate(rgb)
    out = wald_simulate(torch.from_numpy(rgb))
    assert isinstance(out["ms"], torch.Tensor) and out["ms"].dtype == torch.float32
    np.testing.assert_array_equal(out["ms"].numpy(), ref["ms"])
    np.testing.assert_array_equal(out["pan"].numpy(), ref["pan"])


@pytest.mark.parametrize("shape,ratio,match", [
    ((3, 30, 32), 4, "30x32"),
    ((3, 32, 30), 4, "32x30"),
    ((4, 32, 32), 4, r"\[3, H, W\]"),
    ((32, 32, 3), 4, "channels last"),
    ((32, 32), 4, r"\[3, H, W\]"),
    ((3, 32, 32), 1, "ratio"),
])
def test_bad_inputs_raise(shape, ratio, match):
    with pytest.raises(ValueError, match=match):
        wald_simulate(np.zeros(shape), ratio=ratio)


def test_exported_from_rswb_data():
    assert exported_simulate is wald_simulate and ExportedDataset is WaldSceneDataset


# ------------------------------------------------------------------------------------------ WaldSceneDataset (embedded)


@pytest.fixture(scope="module")
def scenes_root():
    return ensure_embedded("scenes")


@pytest.fixture(scope="module")
def small_ds(scenes_root):
    return WaldSceneDataset(scenes_root, "train", indices=[0, 85, 170, 3, 799], image_size=64)


def test_dataset_samples(scenes_root, small_ds):
    folder = SceneFolder(scenes_root, "train")
    assert len(small_ds) == 5 and small_ds.class_names == folder.classes
    np.testing.assert_array_equal(small_ds.labels, folder.labels[[0, 85, 170, 3, 799]])
    for i in range(len(small_ds)):
        s = small_ds[i]
        assert s["ms"].shape == (3, 16, 16) and s["pan"].shape == (1, 64, 64)
        assert s["ms"].dtype == torch.float32 and s["pan"].dtype == torch.float32
        assert s["label"] == int(small_ds.labels[i]) and isinstance(s["label"], int) and s["index"] == i
        assert s["path"] == str(folder.records[[0, 85, 170, 3, 799][i]].path)
    assert small_ds[-1]["index"] == 4
    with pytest.raises(IndexError):
        small_ds[5]


def test_dataset_matches_wald_simulate_up_to_float16(scenes_root, small_ds):
    from rswb.data.scenes import load_image

    rgb = load_image(small_ds.records[2].path, 64).transpose(2, 0, 1) / 255.0
    ref = wald_simulate(rgb)
    s = small_ds[2]
    # float16 storage: about 3 significant digits, i.e. < 5e-4 absolute in [0, 1].
    np.testing.assert_allclose(s["ms"].numpy(), ref["ms"], atol=5e-4)
    np.testing.assert_allclose(s["pan"].numpy(), ref["pan"], atol=5e-4)


def test_getitems_equals_getitem(small_ds):
    order = [3, 0, 4, 0]
    batch = small_ds.__getitems__(order)
    assert len(batch) == 4
    for got, i in zip(batch, order):
        want = small_ds[i]
        assert got.keys() == want.keys()
        assert torch.equal(got["ms"], want["ms"]) and torch.equal(got["pan"], want["pan"])
        assert (got["label"], got["index"], got["path"]) == (want["label"], want["index"], want["path"])
    loader = torch.utils.data.DataLoader(small_ds, batch_size=5)
    b = next(iter(loader))
    assert b["ms"].shape == (5, 3, 16, 16) and b["pan"].shape == (5, 1, 64, 64)


def test_dataset_from_scenefolder_and_split_default(scenes_root):
    folder = SceneFolder(scenes_root, "test")
    ds = WaldSceneDataset(folder, indices=[1, 0], image_size=32)
    assert ds.split == "test"
    assert [r.path for r in ds.records] == [folder.records[1].path, folder.records[0].path]
    ds_all = WaldSceneDataset(folder, split="all", indices=[0], image_size=32)
    assert ds_all.split == "all" and ds_all.records[0].path == SceneFolder(scenes_root).records[0].path


def test_dataset_rejects_bad_arguments(scenes_root):
    with pytest.raises(ValueError, match="multiple of ratio"):
        WaldSceneDataset(scenes_root, indices=[0], image_size=62)
    with pytest.raises(ValueError, match="outside split"):
        WaldSceneDataset(scenes_root, "test", indices=[0, 10_000], image_size=32)
    with pytest.raises(ValueError, match="ratio"):
        WaldSceneDataset(scenes_root, indices=[0], image_size=32, ratio=1)


def test_dataset_plot(small_ds):
    fig = small_ds.plot(1)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert small_ds.class_names[small_ds.labels[1]] in fig._suptitle.get_text()
    assert isinstance(small_ds.plot(small_ds[0]), Figure)


# ----------------------------------------------------------------------------------------------- UC Merced (real)


@pytest.mark.realdata
def test_ucmerced_wald_pairs(shared_data):
    root = shared_data("UCMerced_LandUse", "Images").parent
    indices = [20 * c + k for c in range(21) for k in (0, 1)]  # the test split lists 20 images per class, in order
    ds = WaldSceneDataset(root, "test", indices=indices, image_size=256)
    assert len(ds) == 42 and len(ds.class_names) == 21
    np.testing.assert_array_equal(ds.labels, np.repeat(np.arange(21), 2))
    np.testing.assert_array_equal(ds.labels, SceneFolder(root, "test").labels[indices])
    batch = ds.__getitems__(range(len(ds)))
    ms = torch.stack([s["ms"] for s in batch]).numpy()
    pan = torch.stack([s["pan"] for s in batch]).numpy()
    assert ms.shape == (42, 3, 64, 64) and pan.shape == (42, 1, 256, 256)
    block_mean = pan[:, 0].reshape(42, 64, 4, 64, 4).mean(axis=(2, 4))
    intensity = ms.mean(axis=1)
    assert np.corrcoef(block_mean.ravel(), intensity.ravel())[0, 1] > 0.95
    per_image = np.array([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(block_mean, intensity)])
    assert np.median(per_image) > 0.95
    # Low-contrast, finely textured scenes (agricultural rows) lose most of their MS-scale variance to the MTF,
    # which is the point of the blur; they still correlate clearly.
    assert per_image.min() > 0.6


def test_modality_images_put_ms_on_the_pan_grid_and_pan_in_three_equal_channels():
    import torch.nn.functional as F

    from rswb.data.wald import ModalityImages

    pairs = WaldSceneDataset(ensure_embedded("scenes"), split="train", indices=[0, 1], image_size=64)
    pan = ModalityImages(pairs, "pan")[1]["image"]
    assert pan.shape == (3, 64, 64) and torch.equal(pan[0], pan[2]) and torch.equal(pan[0], pairs[1]["pan"][0])
    ms = ModalityImages(pairs, "ms")[0]["image"]
    assert ms.shape == (3, 64, 64) and 0 <= float(ms.min()) and float(ms.max()) <= 1
    # Geometry: block-averaging the upsampled MS back onto the MS grid gives the MS image (up to the bicubic kernel's
    # smoothing, which is small on the blurred MS), so nothing is shifted.
    err = float((F.avg_pool2d(ms[None], 4)[0] - pairs[0]["ms"]).abs().mean())
    moved = float((F.avg_pool2d(ms[None, :, :, 2:62], 4)[0] - pairs[0]["ms"][:, :, :15]).abs().mean())
    assert err < 0.01 and err < moved  # half an MS pixel off the Wald footprint fits worse
    with pytest.raises(ValueError, match="modality"):
        ModalityImages(pairs, "rgb")
