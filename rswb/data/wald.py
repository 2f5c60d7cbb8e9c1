"""Simulated MS+PAN pairs from ordinary RGB images, by the Wald protocol.

Real MS+PAN scenes with scene-level labels are scarce, while RGB scene folders (UC Merced: 21 classes x 100 images)
are plentiful. To check a MS+PAN classifier at scene level, each RGB image is turned into a pair that looks like
what a pansharpening sensor delivers:

* **PAN** is the full-resolution intensity, the mean of the three bands (a panchromatic band integrates the
  visible spectrum), ``[1, H, W]``.
* **MS** is the RGB image degraded to ``1/ratio`` of the resolution the way a real MS sensor sees the ground:
  first a Gaussian approximation of the sensor's modulation transfer function (MTF), whose gain at the MS Nyquist
  frequency ``1 / (2 * ratio)`` cycles per PAN pixel is ``gain_at_nyquist`` (about 0.3 for typical sensors, the
  value used in pansharpening quality assessment), then an ``r x r`` block mean (the detector integrates over its
  footprint), ``[3, H/r, W/r]``.

This is the Wald protocol of pansharpening assessment (Wald, Ranchin and Mangolini, 1997): degrade what you have
so that the degraded pair behaves like a real one. The MTF blur matters: plain block averaging keeps aliased
high-frequency detail in MS that no real sensor delivers, which would let a model read PAN-level texture from
the MS branch.

Geometry: MS pixel ``(i, j)`` covers exactly PAN pixels ``r*i .. r*i+r-1`` by ``r*j .. r*j+r-1``, the same ground
footprint that :class:`rswb.data.patches.PatchSampler` assumes, so the simulated pairs can go through the same
models as the real ones. Blur and block mean are both centred on that footprint, so MS is not shifted against PAN.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rswb.data.scenes import SceneFolder, load_image
from rswb.utils import show_progress


def _check_ratio(ratio: int) -> int:
    try:
        r = operator.index(ratio)  # accepts numpy integers, refuses 4.0 (a float ratio has no block geometry)
    except TypeError:
        raise ValueError(f"ratio must be an integer >= 2, got {ratio!r}") from None
    if r < 2:
        raise ValueError(f"ratio must be an integer >= 2, got {ratio!r}")
    return r


def mtf_sigma(ratio: int = 4, gain_at_nyquist: float = 0.3) -> float:
    """Standard deviation of the Gaussian MTF that has a given gain at the MS Nyquist frequency.

    The Gaussian's frequency response is ``exp(-2 pi^2 sigma^2 f^2)``; setting it to ``gain_at_nyquist`` at
    ``f = 1 / (2 * ratio)`` cycles per full-resolution pixel gives ``sigma = ratio * sqrt(-2 ln g) / pi``.

    Args:
        ratio: PAN pixels per MS pixel along each axis (>= 2).
        gain_at_nyquist: MTF gain at the MS Nyquist frequency, strictly between 0 and 1.

    Returns:
        ``sigma`` in full-resolution (PAN) pixels, e.g. about 1.98 for ratio 4 and gain 0.3.

    Raises:
        ValueError: ``ratio`` is not an integer >= 2, or the gain is not in (0, 1).
    """
    r = _check_ratio(ratio)
    g = float(gain_at_nyquist)
    if not 0.0 < g < 1.0:
        raise ValueError(f"gain_at_nyquist must be strictly between 0 and 1, got {gain_at_nyquist!r}")
    return r * math.sqrt(-2.0 * math.log(g)) / math.pi


def gaussian_kernel(sigma: float, radius: int | None = None) -> np.ndarray:
    """Sampled 1-D Gaussian, normalised to sum 1.

    Args:
        sigma: standard deviation in pixels (> 0).
        radius: half-width; default ``ceil(3 * sigma)`` (the tails beyond hold under 0.3 % of the mass, which moves
            the gain at Nyquist by far less than the tolerance of any sensor model).

    Returns:
        ``[2 * radius + 1]`` float64 taps, symmetric, centred on the middle tap.

    Raises:
        ValueError: ``sigma`` is not positive or ``radius`` is negative.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    radius = max(1, math.ceil(3.0 * sigma)) if radius is None else int(radius)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    n = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (n / sigma) ** 2)
    return k / k.sum()


def _blur_axis(x: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    # One multiply-add per tap over the whole array: 2R+1 vectorised passes instead of a loop over pixels.
    radius = len(kernel) // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius, radius)
    # numpy's "reflect" mirrors about the edge pixel (no repeat), so a constant image stays exactly constant and a
    # field that is flat at the border is not bent by the blur.
    padded = np.pad(x, pad, mode="reflect")
    n = x.shape[axis]
    out = np.zeros_like(x)
    window = [slice(None)] * x.ndim
    for t, w in enumerate(kernel):
        window[axis] = slice(t, t + n)
        out += w * padded[tuple(window)]
    return out


def wald_simulate(
    rgb: np.ndarray | torch.Tensor, ratio: int = 4, gain_at_nyquist: float = 0.3
) -> dict[str, np.ndarray | torch.Tensor]:
    """Simulate an MS+PAN pair from an RGB image (see the module docstring for the protocol).

    Args:
        rgb: ``[3, H, W]`` image in [0, 1] (numpy array or torch tensor); ``H`` and ``W`` multiples of ``ratio``.
        ratio: PAN pixels per MS pixel along each axis (>= 2).
        gain_at_nyquist: MTF gain at the MS Nyquist frequency, in (0, 1).

    Returns:
        ``{"ms": [3, H/r, W/r], "pan": [1, H, W]}``, float32; numpy arrays for numpy input, torch tensors on the
        input's device for tensor input. MS pixel ``(i, j)`` covers PAN pixels ``r*i .. r*i+r-1`` (rows) by
        ``r*j .. r*j+r-1`` (columns).

    Raises:
        ValueError: ``rgb`` is not ``[3, H, W]``, ``H`` or ``W`` is not a multiple of ``ratio``, or the ratio / gain
            is out of range.
    """
    r = _check_ratio(ratio)
    sigma = mtf_sigma(r, gain_at_nyquist)
    device = rgb.device if isinstance(rgb, torch.Tensor) else None
    x = rgb.detach().cpu().numpy() if isinstance(rgb, torch.Tensor) else np.asarray(rgb)
    if x.ndim != 3 or x.shape[0] != 3:
        hint = " (channels last? pass rgb.transpose(2, 0, 1))" if x.ndim == 3 and x.shape[-1] == 3 else ""
        raise ValueError(f"rgb must be [3, H, W] (three bands first), got shape {list(x.shape)}{hint}")
    _, h, w = x.shape
    if h % r or w % r:
        raise ValueError(f"image size {h}x{w} is not a multiple of ratio {r}; crop or resize it to a multiple "
                         f"(e.g. {h - h % r}x{w - w % r})")
    # float32 throughout: the sources are 8-bit, far coarser than float32 rounding, and it halves the work.
    x = x.astype(np.float32, copy=False)
    pan = x.mean(axis=0, keepdims=True)
    kernel = gaussian_kernel(sigma).astype(np.float32)
    blurred = _blur_axis(_blur_axis(x, kernel, axis=1), kernel, axis=2)
    ms = blurred.reshape(3, h // r, r, w // r, r).mean(axis=(2, 4), dtype=np.float32)
    out = {"ms": np.ascontiguousarray(ms, dtype=np.float32), "pan": np.ascontiguousarray(pan, dtype=np.float32)}
    if device is not None:
        return {k: torch.from_numpy(v).to(device) for k, v in out.items()}
    return out


class WaldSceneDataset(torch.utils.data.Dataset):
    """A scene folder turned into simulated MS+PAN pairs, as dict samples.

    Every selected image is decoded and simulated once, at construction, and kept in memory as float16 (half the
    memory of float32: the 1,680 UC Merced training images at 256 px take about 260 MB; float16 keeps
    about 3 significant digits, finer than the 8-bit sources). Samples are converted back to float32:
    ``{"ms": [3, s/r, s/r], "pan": [1, s, s], "label": int, "index": int, "path": str}`` with ``s = image_size``,
    ``label`` 0-based and ``index`` the position in this dataset.

    Args:
        root: scene folder (UC Merced or AID layout; see :class:`rswb.data.scenes.SceneFolder`) or an existing
            :class:`~rswb.data.scenes.SceneFolder`.
        split: ``"all"``, ``"train"`` or ``"query"`` (= ``"database"`` = ``"test"``), the folder's split rule.
            Default: ``"all"`` for a path, the folder's own split for a ``SceneFolder``.
        indices: positions within ``split`` to keep, in this order; default all of them.
        image_size: side every image is resized to (bilinear, Pillow) before simulation; a multiple of ``ratio``.
        ratio: PAN pixels per MS pixel along each axis.
        gain_at_nyquist: MTF gain at the MS Nyquist frequency (see :func:`mtf_sigma`).
        transforms: optional callable applied to each sample dict.
        layout: ``"auto"``, ``"ucmerced"`` or ``"aid"`` (only used when ``root`` is a path).
        progress: show a progress bar while simulating.

    Raises:
        DatasetNotFoundError: the folder is missing (raised by ``SceneFolder``, naming the path).
        CorruptImageError: an image cannot be decoded (naming the file).
        ValueError: bad ``image_size`` / ``ratio`` / ``gain_at_nyquist``, or an index outside the split.
    """

    def __init__(self, root: str | Path | SceneFolder, split: str | None = None,
                 indices: Sequence[int] | np.ndarray | None = None, image_size: int = 256, ratio: int = 4,
                 gain_at_nyquist: float = 0.3, transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 layout: str = "auto", progress: bool = False):
        from tqdm.auto import tqdm

        r = _check_ratio(ratio)
        self.sigma = mtf_sigma(r, gain_at_nyquist)  # validates the gain before any decoding
        size = operator.index(image_size)
        if size < r or size % r:
            raise ValueError(f"image_size must be a positive multiple of ratio {r}, got {image_size}")
        if isinstance(root, SceneFolder):
            folder = root if split is None or split == root.split else root.with_split(split)
        else:
            folder = SceneFolder(root, "all" if split is None else split, layout=layout)
        n_split = len(folder.records)
        idx = np.arange(n_split) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= n_split):
            bad = idx[(idx < 0) | (idx >= n_split)]
            raise ValueError(f"indices {bad[:5].tolist()} are outside split {folder.split!r} of {folder.root} "
                             f"({n_split} images; valid 0..{n_split - 1})")

        self.root, self.split, self.folder = folder.root, folder.split, folder
        self.records = [folder.records[i] for i in idx]
        self.split_indices = idx
        self.class_names: list[str] = list(folder.classes)
        self.labels = np.array([rec.label for rec in self.records], dtype=np.int64)
        self.image_size, self.ratio, self.gain_at_nyquist = size, r, float(gain_at_nyquist)
        self.transforms = transforms

        m = size // r
        self._ms = torch.empty((len(self.records), 3, m, m), dtype=torch.float16)
        self._pan = torch.empty((len(self.records), 1, size, size), dtype=torch.float16)
        for k, rec in enumerate(tqdm(self.records, desc=f"Wald-simulating {len(self.records)} images",
                                     disable=not show_progress(progress))):
            rgb = load_image(rec.path, size).transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
            pair = wald_simulate(rgb, r, gain_at_nyquist)
            self._ms[k] = torch.from_numpy(pair["ms"])
            self._pan[k] = torch.from_numpy(pair["pan"])

    def __len__(self) -> int:
        return len(self.records)

    def _position(self, index: int) -> int:
        i = operator.index(index)
        n = len(self.records)
        if not -n <= i < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        return i % n

    def _sample(self, i: int, ms: torch.Tensor, pan: torch.Tensor) -> dict[str, Any]:
        rec = self.records[i]
        sample = {"ms": ms, "pan": pan, "label": int(rec.label), "index": i, "path": str(rec.path)}
        return self.transforms(sample) if self.transforms else sample

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = self._position(index)
        return self._sample(i, self._ms[i].float(), self._pan[i].float())

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """A list of samples; the float16 -> float32 conversion is done once for the whole batch.

        ``torch.utils.data.DataLoader`` calls this with a batch of indices when it exists.
        """
        pos = [self._position(i) for i in indices]
        sel = torch.as_tensor(pos, dtype=torch.long)
        ms, pan = self._ms[sel].float(), self._pan[sel].float()
        return [self._sample(i, ms[k], pan[k]) for k, i in enumerate(pos)]

    def plot(self, sample: int | dict[str, Any]):
        """Show the MS composite (nearest upsampled to PAN size) next to the PAN, titled with the class name.

        Args:
            sample: a position in this dataset, or a sample dict from it.

        Returns:
            The matplotlib figure.
        """
        import matplotlib.pyplot as plt

        if not isinstance(sample, dict):
            sample = self[sample]
        ms = sample["ms"].detach().cpu().numpy()
        pan = sample["pan"].detach().cpu().numpy()[0]
        r = pan.shape[0] // ms.shape[1]
        # Nearest upsampling shows the MS pixels as the blocks they are, rather than hiding the resolution loss.
        composite = np.clip(ms.repeat(r, axis=1).repeat(r, axis=2).transpose(1, 2, 0), 0.0, 1.0)
        fig, axes = plt.subplots(1, 2, figsize=(6, 3.2))
        axes[0].imshow(composite, interpolation="nearest")
        axes[0].set_title(f"MS {ms.shape[1]}x{ms.shape[2]} (x{r} nearest)", fontsize=9)
        axes[1].imshow(pan, cmap="gray", vmin=0.0, vmax=1.0)
        axes[1].set_title(f"PAN {pan.shape[0]}x{pan.shape[1]}", fontsize=9)
        for ax in axes:
            ax.set_axis_off()
        fig.suptitle(f"{self.class_names[sample['label']]} ({Path(sample['path']).name})")
        fig.tight_layout()
        return fig


__all__ = ["ModalityImages", "SceneImages", "WaldSceneDataset", "gaussian_kernel", "mtf_sigma", "wald_simulate"]


class SceneImages(torch.utils.data.Dataset):
    """A subset of a Wald-simulated scene set repeated ``repeats`` times (scene mode's few-shot splits).

    Args:
        base: the simulated images.
        indices: positions in ``base`` of this subset's images.
        repeats: passes over the subset per epoch.
        ids: identity of each image of ``base`` (default: its position), returned as ``"id"`` so that the
            alignment loss can recognise the same image drawn twice in a batch.
    """

    def __init__(self, base: torch.utils.data.Dataset, indices: np.ndarray, repeats: int = 1,
                 ids: np.ndarray | None = None):
        self.base, self.indices, self.repeats = base, np.asarray(indices, np.int64), max(1, int(repeats))
        self.ids = np.arange(len(base)) if ids is None else np.asarray(ids, np.int64)

    @property
    def labels(self) -> np.ndarray:
        """0-based class of every item."""
        return np.tile(np.asarray(self.base.labels)[self.indices], self.repeats)

    def __len__(self) -> int:
        return len(self.indices) * self.repeats

    def __getitem__(self, index: int) -> dict[str, Any]:
        j = int(self.indices[index % len(self.indices)])
        return {**self.base[j], "id": int(self.ids[j])}


class ModalityImages(torch.utils.data.Dataset):
    """One modality of Wald-simulated pairs as 3-band images on the PAN grid, for an ImageNet backbone.

    ``{"image": [3, S, S], "label", "index"}`` in [0, 1] with ``S`` the PAN size: MS (three bands, RGB order in
    scene mode) is upsampled by bicubic interpolation (clamped to [0, 1]) onto the PAN grid, its pixel centres where
    the Wald geometry puts them (``align_corners=False``: MS pixel ``i`` covers PAN pixels ``r i .. r i + r - 1``);
    PAN is repeated over three channels (an ImageNet backbone expects colour; equal channels are a grey image).

    Args:
        base: the simulated pairs (a :class:`WaldSceneDataset`).
        modality: ``"ms"`` or ``"pan"``.

    Raises:
        ValueError: an unknown modality, or MS with another number of bands than 3.
    """

    def __init__(self, base: torch.utils.data.Dataset, modality: str):
        if modality not in ("ms", "pan"):
            raise ValueError(f"modality must be 'ms' or 'pan', got {modality!r}")
        self.base, self.modality = base, modality

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.base[index]
        x = s[self.modality]
        if self.modality == "pan":
            img = x.expand(3, -1, -1)
        else:
            if x.shape[0] != 3:
                raise ValueError(f"MS has {x.shape[0]} bands; an ImageNet backbone takes 3 (RGB order)")
            size = tuple(s["pan"].shape[-2:])
            img = F.interpolate(x[None], size=size, mode="bicubic", align_corners=False)[0].clamp(0, 1)
        return {"image": img.contiguous(), "label": s["label"], "index": s["index"]}
