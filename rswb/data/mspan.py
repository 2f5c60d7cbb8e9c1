"""MS+PAN scenes: readers for the lab format and ``.mat`` pairs, validation, normalisation, patch sampling.

Formats read here:

* **lab folder**: ``ms4.tif`` (C bands, H x W), ``pan.tif`` (1 band, ratio*H x ratio*W), label maps ``train.npy`` /
  ``test.npy`` on the MS grid (0 = unlabelled, 1..C = classes); older variants with a single ``label*.npy`` or
  ``label*.mat``; an optional ``classes.txt`` (line k names class k+1). GeoTIFFs are read with rasterio and their
  CRS and affine transform are kept.
* **``.mat`` pair** (the pansharpening benchmark toolbox, Z-PNN, PanCollection): an MS variable (``I_MS_LR``,
  ``I_MS``, ``I_MS_UP``, ``ms``, ``lms``; H x W x C or C x H x W) and a PAN variable (``I_PAN``, ``pan``; rH x rW).
  The low-resolution MS is the one on the smallest integer fraction of the PAN grid; the ratio comes from the shapes
  (a stored ``ratio`` must agree with them).

A labelled MS pixel ``(r, c)`` gives an MS patch of ``ms_patch`` pixels around it (``(ms_patch-1)//2`` before, the
rest after: 7/8 for 16) and the PAN patch that covers the same ground, centred on the PAN footprint of the MS patch
(28/32 for 64 at ratio 4). Borders use reflect padding.

The :class:`PatchSampler` pads the scene once and gathers whole batches of patches with one ``index_select`` per
modality over an overlapping "row segment" view of the padded scene: every patch row is one contiguous
memcpy, so a batch costs a small multiple of copying its bytes, with no Python loop over pixels. The same code runs on
CUDA with the scene kept on the device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rswb.data.errors import (
    DataFormatError,
    DatasetNotFoundError,
    InvalidPixelError,
    LabelRangeError,
    ShapeMismatchError,
    require_exists,
)

MS_NAMES = ("ms4.tif", "ms4.tiff", "ms.tif", "ms.tiff")
PAN_NAMES = ("pan.tif", "pan.tiff")
SPLIT_NAMES = ("train", "test")


@dataclass
class MSPANScene:
    """One co-registered MS+PAN scene with optional label maps.

    Attributes:
        ms: multispectral image, ``[C, H, W]`` float32.
        pan: panchromatic image, ``[1, ratio*H, ratio*W]`` float32.
        ratio: PAN pixels per MS pixel along each axis.
        labels: label maps on the MS grid by name (``"train"``, ``"test"`` or ``"label"``), ``[H, W]`` int64,
            0 = unlabelled, 1..C = classes.
        class_names: names of classes 1..C (index 0 names class 1), or ``None``.
        source: the folder or file the scene was read from.
        crs: coordinate reference system (WKT string) of the GeoTIFFs, if any.
        ms_transform: affine transform of the MS grid (rasterio ``Affine``), if any.
        pan_transform: affine transform of the PAN grid, if any.
        meta: anything else worth keeping (sensor, RGB band indices, normalisation statistics, ...).
    """

    ms: np.ndarray
    pan: np.ndarray
    ratio: int
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    class_names: list[str] | None = None
    source: Path | None = None
    crs: str | None = None
    ms_transform: Any = None
    pan_transform: Any = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def bands(self) -> int:
        """Number of MS bands."""
        return int(self.ms.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """MS grid size ``(H, W)``."""
        return int(self.ms.shape[1]), int(self.ms.shape[2])

    @property
    def num_classes(self) -> int:
        """Number of classes: from ``class_names`` when known, else the largest label value in any map."""
        if self.class_names is not None:
            return len(self.class_names)
        return max((int(m.max()) for m in self.labels.values() if m.size), default=0)

    def class_counts(self, split: str) -> dict[int, int]:
        """Labelled pixels per class value (1..C) in the label map ``split``."""
        values, counts = np.unique(self.labels[split], return_counts=True)
        return {int(v): int(n) for v, n in zip(values, counts) if v != 0}

    def labelled_pixels(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows, columns and 0-based class indices (map value - 1) of every labelled pixel of ``split``."""
        if split not in self.labels:
            raise DataFormatError(self.source, f"no label map named {split!r}", f"one of {sorted(self.labels)}")
        m = self.labels[split]
        rows, cols = np.nonzero(m)
        return rows, cols, m[rows, cols].astype(np.int64) - 1

    def normalized(self, method: str = "minmax", percentiles: tuple[float, float] = (2.0, 98.0)) -> MSPANScene:
        """Return a copy with every band scaled to [0, 1]; the statistics are computed once, here.

        Args:
            method: ``"minmax"`` (per-band minimum and maximum) or ``"percentile"`` (per-band percentiles,
                clipped outside them; robust to a few saturated pixels).
            percentiles: lower and upper percentile for ``"percentile"``.
        """
        ms_lo, ms_hi = band_stats(self.ms, method, percentiles)
        pan_lo, pan_hi = band_stats(self.pan, method, percentiles)
        meta = dict(self.meta)
        meta["normalization"] = {
            "method": method,
            "ms_low": ms_lo.tolist(),
            "ms_high": ms_hi.tolist(),
            "pan_low": pan_lo.tolist(),
            "pan_high": pan_hi.tolist(),
        }
        return replace(
            self, ms=apply_band_stats(self.ms, ms_lo, ms_hi), pan=apply_band_stats(self.pan, pan_lo, pan_hi), meta=meta
        )

    def rgb(self, bands: Sequence[int] | None = None) -> np.ndarray:
        """A displayable ``[H, W, 3]`` composite in [0, 1] (2-98 % stretch per band).

        Args:
            bands: three 0-based band indices; default: the file's RGB indices when it has them, else
                NIR-R-G false colour (3, 2, 1) for 4 bands, else the first three bands.
        """
        if bands is None:
            bands = self.meta.get("rgb_bands") or ((3, 2, 1) if self.bands == 4 else (0, 1, 2) if self.bands >= 3
                                                   else (0,))  # fewer than 3 bands: show the first as grey
        img = self.ms[list(bands)]
        lo, hi = band_stats(img, "percentile", (2.0, 98.0))
        img = apply_band_stats(img, lo, hi)
        if img.shape[0] == 1:
            img = np.repeat(img, 3, axis=0)
        return np.moveaxis(img, 0, -1)

    def plot(self, splits: Sequence[str] | None = None, figsize: tuple[float, float] | None = None):
        """Show the MS composite, the PAN image and the label maps side by side; returns the figure."""
        import matplotlib.pyplot as plt

        splits = list(self.labels) if splits is None else list(splits)
        n = 2 + len(splits)
        fig, axes = plt.subplots(1, n, figsize=figsize or (4 * n, 4), squeeze=False)
        axes = axes[0]
        axes[0].imshow(self.rgb())
        axes[0].set_title(f"MS composite ({self.bands} bands, {self.shape[0]}x{self.shape[1]})")
        pan = self.pan[0]
        lo, hi = np.percentile(pan[:: max(1, pan.shape[0] // 512), :: max(1, pan.shape[1] // 512)], (2, 98))
        axes[1].imshow(np.clip((pan - lo) / max(hi - lo, 1e-12), 0, 1), cmap="gray")
        axes[1].set_title(f"PAN ({pan.shape[0]}x{pan.shape[1]}, ratio {self.ratio})")
        cmap = label_colormap(self.num_classes)
        for ax, name in zip(axes[2:], splits):
            ax.imshow(self.labels[name], cmap=cmap, vmin=0, vmax=max(self.num_classes, 1), interpolation="nearest")
            ax.set_title(f"{name} labels ({int((self.labels[name] > 0).sum())} px)")
        for ax in axes:
            ax.set_axis_off()
        fig.tight_layout()
        return fig


def class_colors(num_classes: int) -> list[tuple[float, ...]]:
    """``num_classes`` distinct colours, one per class.

    tab10 up to 10 classes, tab20 up to 20, then tab20b and tab20c (60 in all), then evenly spaced hues: no two
    classes ever share a colour (UC Merced's 21 classes once wrapped round tab20).
    """
    from matplotlib import colormaps

    n = max(int(num_classes), 1)
    if n <= 10:
        return list(colormaps["tab10"].colors[:n])
    table = [*colormaps["tab20"].colors, *colormaps["tab20b"].colors, *colormaps["tab20c"].colors]
    if n <= len(table):
        return list(table[:n])
    return [tuple(colormaps["hsv"](i / n)) for i in range(n)]


def label_colormap(num_classes: int):
    """A fixed colour table for label maps: black for 0 (unlabelled), then :func:`class_colors` for 1..C."""
    from matplotlib.colors import ListedColormap

    return ListedColormap([(0.0, 0.0, 0.0), *class_colors(num_classes)])


# ----------------------------------------------------------------------------------------------------------- reading


def read_raster(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a raster (GeoTIFF or anything rasterio opens) as ``[C, H, W]`` plus its georeferencing.

    Returns:
        The pixel array and ``{"crs": WKT or None, "transform": Affine or None}``.

    Raises:
        DatasetNotFoundError: the file does not exist.
        DataFormatError: rasterio cannot decode it.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    path = require_exists(path, "raster file")
    import warnings

    try:
        with warnings.catch_warnings():
            # Plain TIFFs without georeferencing are fine: we then keep no CRS/transform.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                arr = src.read()
                crs = src.crs.to_wkt() if src.crs else None
                transform = None if src.transform.is_identity else src.transform
    except RasterioIOError as err:
        raise DataFormatError(path, f"cannot read raster ({err})", "a GeoTIFF readable by rasterio") from err
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        # complex (SAR single-look) or boolean rasters are no MS/PAN radiance; casting would drop information silently
        raise DataFormatError(path, f"pixel type {arr.dtype} is not a radiance type", "integer or float pixels")
    return arr, {"crs": crs, "transform": transform}


def read_label_map(path: str | Path) -> np.ndarray:
    """Read a label map from ``.npy`` or ``.mat`` (the single 2-D array variable, or one named like ``label``/``gt``).

    Raises:
        DatasetNotFoundError: the file does not exist.
        DataFormatError: the file cannot be parsed or holds no 2-D array.
    """
    path = require_exists(path, "label map")
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif path.suffix == ".mat":
            arr = _pick_mat_label(path)
        else:
            raise DataFormatError(path, f"unsupported label file type {path.suffix!r}", ".npy or .mat")
    except (ValueError, OSError) as err:
        if isinstance(err, DataFormatError):
            raise
        raise DataFormatError(path, f"cannot read label map ({err})", "a NumPy .npy or MATLAB .mat file") from err
    if arr.ndim != 2:
        raise ShapeMismatchError(path, f"label map has shape {arr.shape}", "a 2-D [H, W] array")
    return arr


def _pick_mat_label(path: Path) -> np.ndarray:
    import scipy.io

    data = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    arrays = {k: v for k, v in data.items() if isinstance(v, np.ndarray) and v.ndim == 2 and min(v.shape) > 1}
    for key in arrays:
        if key.lower() in ("label", "labels", "gt", "train", "test", "map"):
            return arrays[key]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise DataFormatError(path, f"cannot tell which variable is the label map among {sorted(arrays)}",
                          "one 2-D variable, or one named 'label' or 'gt'")


def load_mspan(path: str | Path, ratio: int | None = None, num_classes: int | None = None) -> MSPANScene:
    """Read an MS+PAN scene from a lab-format folder or a ``.mat`` pair and validate it.

    Args:
        path: a folder with ``ms4.tif`` + ``pan.tif`` (+ label maps) or a ``.mat`` file with ``I_MS``/``I_PAN``.
        ratio: PAN/MS resolution ratio; default: the folder's 4, or a ``.mat`` file's shapes.
        num_classes: number of classes C, to check label values against 0..C; default: ``classes.txt`` if
            present, else only non-negativity is checked.

    Raises:
        DataError: a subclass naming the file and the problem (see :func:`validate_scene`).
    """
    path = require_exists(path, "MS+PAN scene")
    if path.is_dir():
        scene = _load_folder(path, ratio)
    elif path.suffix.lower() == ".mat":
        scene = _load_mat(path, ratio)
    else:
        raise DataFormatError(path, "not an MS+PAN scene", "a folder with ms4.tif and pan.tif, or a .mat file")
    validate_scene(scene, num_classes)
    return scene


def is_mspan_source(path: str | Path) -> bool:
    """Whether :func:`load_mspan` reads ``path`` as a scene: a ``.mat`` file, or a folder holding an MS raster.

    Callers that accept several kinds of data (e.g. ``rswb train pha``) use this to pick the reader; the reader
    itself then reports anything else that is missing or wrong.
    """
    path = Path(path)
    if path.is_dir():
        return _find(path, MS_NAMES) is not None
    return path.suffix.lower() == ".mat"


def _find(root: Path, names: Sequence[str]) -> Path | None:
    return next((root / n for n in names if (root / n).exists()), None)


def _load_folder(root: Path, ratio: int | None) -> MSPANScene:
    ms_path, pan_path = _find(root, MS_NAMES), _find(root, PAN_NAMES)
    if ms_path is None or pan_path is None:
        missing = MS_NAMES[0] if ms_path is None else PAN_NAMES[0]
        raise DatasetNotFoundError(root / missing, "MS+PAN folder lacks this file",
                                   f"{MS_NAMES[0]} and {PAN_NAMES[0]} in {root}")
    ms, ms_geo = read_raster(ms_path)
    pan, pan_geo = read_raster(pan_path)
    if pan.shape[0] != 1:
        raise ShapeMismatchError(pan_path, f"PAN has {pan.shape[0]} bands", "1 band")
    if ratio is None:
        # The ratio is read off the grids (4 for WorldView / GF / Pleiades, 2 for Landsat 8), never assumed.
        rh, rw = pan.shape[1] / max(1, ms.shape[1]), pan.shape[2] / max(1, ms.shape[2])
        if rh != rw or not rh.is_integer() or rh < 1:
            near = max(1, round((rh + rw) / 2))
            raise ShapeMismatchError(pan_path, f"PAN is {pan.shape[1]}x{pan.shape[2]} for an MS of "
                                     f"{ms.shape[1]}x{ms.shape[2]} ({ms_path.name}): not one integer ratio",
                                     f"PAN = ratio x MS on both axes, e.g. {ms.shape[1] * near}x{ms.shape[2] * near} "
                                     f"for ratio {near}")
        ratio = int(rh)
    labels, label_files = {}, {}
    for split in SPLIT_NAMES:
        p = _find(root, (f"{split}.npy", f"{split}.mat"))
        if p is not None:
            labels[split], label_files[split] = read_label_map(p), p
    if not labels:
        singles = sorted(root.glob("label*.npy")) + sorted(root.glob("label*.mat"))
        if singles:
            labels["label"], label_files["label"] = read_label_map(singles[0]), singles[0]
    names = None
    if (root / "classes.txt").exists():
        try:
            names = [ln.strip() for ln in (root / "classes.txt").read_text(encoding="utf-8").splitlines() if ln.strip()]
        except UnicodeDecodeError as err:
            raise DataFormatError(root / "classes.txt", f"not UTF-8 text ({err.reason} at byte {err.start})",
                                  "one UTF-8 class name per line") from err
    return MSPANScene(
        ms=ms.astype(np.float32, copy=False),
        pan=pan.astype(np.float32, copy=False),
        ratio=ratio,
        labels=labels,
        class_names=names,
        source=root,
        crs=ms_geo["crs"],
        ms_transform=ms_geo["transform"],
        pan_transform=pan_geo["transform"],
        meta={"files": {"ms": ms_path, "pan": pan_path, **label_files}},
    )


# Variable names of the MS and PAN images in the .mat conventions we know: the pansharpening benchmark toolbox and
# Z-PNN (I_MS_LR low resolution, I_MS / I_MS_UP possibly upsampled to the PAN grid, I_PAN) and PanCollection
# (ms, lms = upsampled, pan). Which MS is low-resolution is decided by shape, never by name alone.
MAT_MS_NAMES = ("I_MS_LR", "I_MS", "I_MS_UP", "MS", "ms", "lms", "I_MS_LR_UP")
MAT_PAN_NAMES = ("I_PAN", "PAN", "pan", "P")


def _mat_inventory(data: dict[str, Any]) -> str:
    """The variables of a loaded .mat file with their shapes and dtypes (for error messages)."""
    items = [(k, np.asarray(v)) for k, v in data.items() if not k.startswith("__")]
    return ", ".join(f"{k} ({'x'.join(map(str, a.shape)) or 'scalar'} {a.dtype})" for k, a in items) or "nothing"


def _ms_on_pan_grid(ms: np.ndarray, pan_hw: tuple[int, int]) -> tuple[np.ndarray, int] | None:
    """``(ms as H x W x C, ratio)`` when ``ms`` (H x W x C or C x H x W) lies on an integer fraction of the PAN grid."""
    arr = ms[..., None] if ms.ndim == 2 else ms
    if arr.ndim != 3:
        return None
    for layout in (arr, np.moveaxis(arr, 0, -1)):  # bands last (MATLAB), then bands first (PanCollection)
        h, w = layout.shape[:2]
        if h and w and pan_hw[0] % h == 0 and pan_hw[1] % w == 0 and pan_hw[0] // h == pan_hw[1] // w:
            return layout, pan_hw[0] // h
    return None


def _load_mat(path: Path, ratio: int | None) -> MSPANScene:
    import scipy.io

    try:
        data = scipy.io.loadmat(path)
    except Exception as err:  # scipy raises several types for a corrupt file
        raise DataFormatError(path, f"cannot read MATLAB file ({err})", "a MATLAB v5/v7 .mat file") from err
    pan_key = next((k for k in MAT_PAN_NAMES if k in data), None)
    ms_keys = [k for k in MAT_MS_NAMES if k in data]
    if pan_key is None or not ms_keys:
        raise DataFormatError(path, f"no {'PAN' if pan_key is None else 'MS'} image variable; the file holds: "
                              f"{_mat_inventory(data)}",
                              f"an MS variable ({' / '.join(MAT_MS_NAMES)}) and a PAN variable "
                              f"({' / '.join(MAT_PAN_NAMES)})")
    pan = np.asarray(data[pan_key])
    if pan.ndim == 3 and 1 in (pan.shape[0], pan.shape[2]):
        pan = pan[..., 0] if pan.shape[2] == 1 else pan[0]
    if pan.ndim != 2:
        raise ShapeMismatchError(path, f"{pan_key} has shape {pan.shape}", "a single-band rH x rW PAN image")
    # Every MS candidate placed on the PAN grid; the lowest-resolution one is the MS (an upsampled copy is not).
    placed = {k: _ms_on_pan_grid(np.asarray(data[k]), pan.shape) for k in ms_keys}
    usable = {k: v for k, v in placed.items() if v is not None}
    file_ratio = int(np.asarray(data["ratio"]).ravel()[0]) if "ratio" in data else None
    if usable:
        ms_key = max(usable, key=lambda k: usable[k][1])  # the largest ratio: the low-resolution MS
        ms, shape_ratio = usable[ms_key]
    elif ratio or file_ratio:
        # No MS fits the PAN grid: keep the first one at the stated ratio, so that validation names both sizes.
        ms_key, ms = ms_keys[0], np.asarray(data[ms_keys[0]])
        ms, shape_ratio = (ms[..., None] if ms.ndim == 2 else ms), int(ratio or file_ratio)
    else:
        raise ShapeMismatchError(path, f"no MS variable lies on an integer fraction of the {pan.shape[0]}x"
                                 f"{pan.shape[1]} PAN grid and no ratio is stored; the file holds: "
                                 f"{_mat_inventory(data)}", "MS of H x W x C with PAN of rH x rW")
    if ms.ndim != 3:
        raise ShapeMismatchError(path, f"{ms_key} has shape {ms.shape}", "H x W x C")
    if usable and file_ratio is not None and shape_ratio > 1 and file_ratio != shape_ratio:
        raise ShapeMismatchError(path, f"the stored ratio {file_ratio} disagrees with the shapes ({ms_key} "
                                 f"{ms.shape[0]}x{ms.shape[1]}, {pan_key} {pan.shape[0]}x{pan.shape[1]}: ratio "
                                 f"{shape_ratio})", "a ratio variable equal to PAN size / MS size")
    meta: dict[str, Any] = {"files": {"ms": path, "pan": path}, "variables": {"ms": ms_key, "pan": pan_key}}
    if shape_ratio == 1:
        meta["ms_upsampled"] = True  # only an MS on the PAN grid: trained as a ratio-1 pair
    if "sensor" in data:
        meta["sensor"] = str(np.asarray(data["sensor"]).ravel()[0])
    if "L" in data:
        meta["bit_depth"] = int(np.asarray(data["L"]).ravel()[0])
    if "RGB_indexes" in data:
        meta["rgb_bands"] = [int(i) - 1 for i in np.asarray(data["RGB_indexes"]).ravel()]  # MATLAB is 1-based
    labels = {}
    for key in ("label", "gt", "train", "test"):
        if key in data and np.asarray(data[key]).ndim == 2:
            labels[key if key in ("train", "test") else "label"] = np.asarray(data[key])
    return MSPANScene(
        ms=np.moveaxis(ms, -1, 0).astype(np.float32),
        pan=pan[None].astype(np.float32),
        ratio=ratio or shape_ratio,
        labels=labels,
        source=path,
        meta=meta,
    )


def validate_scene(scene: MSPANScene, num_classes: int | None = None, allow_overlap: bool = False) -> None:
    """Check a scene's consistency; raise a :class:`DataError` naming the file on the first problem.

    Checks: ``[C, H, W]`` MS and ``[1, rH, rW]`` PAN with ``r = scene.ratio``; finite pixels; label maps of shape
    ``[H, W]`` with integer values in ``0..C``; ``train`` and ``test`` maps labelling disjoint pixels.
    Label maps are converted to int64 in place.
    """
    files = scene.meta.get("files", {})
    ms_file, pan_file = files.get("ms", scene.source), files.get("pan", scene.source)
    if scene.ms.ndim != 3 or min(scene.ms.shape) == 0:
        raise ShapeMismatchError(ms_file, f"MS array has shape {scene.ms.shape}", "[C, H, W] with C, H, W > 0")
    _, h, w = scene.ms.shape
    r = scene.ratio
    if scene.pan.shape != (1, r * h, r * w):
        got = "x".join(map(str, scene.pan.shape[-2:]))
        raise ShapeMismatchError(pan_file, f"PAN is {got} but MS is {h}x{w} at ratio {r}",
                                 f"PAN of {r * h}x{r * w} (ratio x MS), or pass the right ratio")
    for name, arr, f in (("MS", scene.ms, ms_file), ("PAN", scene.pan, pan_file)):
        bad = ~np.isfinite(arr)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InvalidPixelError(f, f"{name} has {int(bad.sum())} NaN/inf pixels (first at index {where})",
                                    "finite values; mask or fill them before use")
    c = num_classes if num_classes is not None else (len(scene.class_names) if scene.class_names else None)
    for name, m in scene.labels.items():
        f = files.get(name, scene.source)
        if m.shape != (h, w):
            raise ShapeMismatchError(f, f"label map {name!r} has shape {m.shape}", f"the MS grid {h}x{w}")
        if not np.issubdtype(m.dtype, np.integer):
            if not np.issubdtype(m.dtype, np.floating) or not np.all(np.isfinite(m)) or np.any(m != np.round(m)):
                raise LabelRangeError(f, f"label map {name!r} holds non-integer values ({m.dtype})",
                                      "integer class values 0..C")
        lo, hi = int(m.min()), int(m.max())
        if lo < 0 or (c is not None and hi > c):
            rng = f"0..{c}" if c is not None else "0..C (non-negative)"
            raise LabelRangeError(f, f"label map {name!r} has values {lo}..{hi}", f"values in {rng}, 0 = unlabelled")
        scene.labels[name] = m.astype(np.int64, copy=False)
    if not allow_overlap and "train" in scene.labels and "test" in scene.labels:
        both = (scene.labels["train"] > 0) & (scene.labels["test"] > 0)
        if both.any():
            raise DataFormatError(files.get("test", scene.source),
                                  f"{int(both.sum())} pixels are labelled in both train and test maps",
                                  "disjoint train/test pixel sets (test pixels must not be trained on)")


# ----------------------------------------------------------------------------------------------------- normalisation


def band_stats(x: np.ndarray, method: str = "minmax", percentiles: tuple[float, float] = (2.0, 98.0),
               max_samples: int = 4_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Per-band low/high statistics of ``x`` ``[C, H, W]`` for scaling to [0, 1].

    ``"percentile"`` estimates the percentiles on a regular sub-grid of at most ``max_samples`` pixels per band
    (exact for small images), since sorting a full 8,000 x 8,000 PAN would dominate the load time.
    """
    flat = x.reshape(x.shape[0], -1)
    if method == "minmax":
        return flat.min(axis=1).astype(np.float32), flat.max(axis=1).astype(np.float32)
    if method == "percentile":
        step = max(1, math.ceil(flat.shape[1] / max_samples))
        lo, hi = np.percentile(flat[:, ::step], percentiles, axis=1)
        return lo.astype(np.float32), hi.astype(np.float32)
    raise ValueError(f"unknown normalisation {method!r}; use 'minmax' or 'percentile'")


def apply_band_stats(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Scale each band of ``x`` ``[C, H, W]`` linearly so ``lo -> 0`` and ``hi -> 1``, clipping outside."""
    lo = lo.reshape(-1, 1, 1)
    span = np.maximum(hi.reshape(-1, 1, 1) - lo, np.float32(1e-12))
    return np.clip((x - lo) / span, 0.0, 1.0, dtype=np.float32)


# ---------------------------------------------------------------------------------------------------- patch sampling


def patch_padding(ms_patch: int, pan_patch: int, ratio: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Reflect-padding ``(before, after)`` for the MS grid and the PAN grid.

    The MS patch of pixel r spans ``r - before .. r + after`` with ``before = (ms_patch - 1) // 2``. The PAN patch is
    centred on the ground footprint of that MS patch, so with ``pan_patch = ratio * ms_patch`` it is exactly that
    footprint (16 -> 7/8, 64 -> 28/32 at ratio 4).
    """
    ms_before = (ms_patch - 1) // 2
    ms_after = ms_patch - 1 - ms_before
    pan_before = ratio * ms_before + (pan_patch - ratio * ms_patch) // 2
    pan_after = pan_patch - pan_before - ratio
    if pan_before < 0 or pan_after < 0:
        raise ValueError(f"PAN patch {pan_patch} is smaller than one MS pixel footprint at ratio {ratio}")
    return (ms_before, ms_after), (pan_before, pan_after)


class PatchSampler:
    """Vectorised MS/PAN patch-pair gathering from one scene, on CPU or on the scene's device.

    The scene is padded once (reflect) and kept as an HWC MS tensor and a PAN tensor on ``device``. A batch of
    ``B`` pixels is gathered with two ``index_select`` calls over overlapping row-segment views, so each patch row is
    one contiguous copy and no per-pixel Python code runs. MS patches come out as ``[B, C, p, p]`` in channels-last
    memory format (the natural layout of an HWC gather; convolutions accept it directly), PAN as ``[B, 1, P, P]``.

    Args:
        scene: the scene; use :meth:`MSPANScene.normalized` first if the model expects [0, 1] inputs.
        ms_patch: MS patch size p (default 16).
        pan_patch: PAN patch size P (default ``ratio * ms_patch``).
        device: where the padded scene lives and batches are produced (default CPU).
        dtype: floating dtype of the stored scene and the patches.
    """

    def __init__(self, scene: MSPANScene, ms_patch: int = 16, pan_patch: int | None = None,
                 device: str | torch.device | None = None, dtype: torch.dtype = torch.float32):
        self.scene = scene
        self.ratio = r = scene.ratio
        self.ms_patch = p = ms_patch
        self.pan_patch = q = pan_patch if pan_patch is not None else r * ms_patch
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        (mb, ma), (pb, pa) = patch_padding(p, q, r)
        c, h, w = scene.ms.shape
        ms = np.pad(np.moveaxis(scene.ms, 0, -1), ((mb, ma), (mb, ma), (0, 0)), mode="reflect")
        pan = np.pad(scene.pan[0], ((pb, pa), (pb, pa)), mode="reflect")
        # Widen PAN to a multiple of the ratio so that a patch starting at PAN column ratio*c is segment number
        # y * (width / ratio) + c of a view whose segments start every `ratio` elements. The extra columns are
        # never read (every patch ends inside the reflect padding).
        extra = (-pan.shape[1]) % r
        if extra:
            pan = np.pad(pan, ((0, 0), (0, extra)), mode="edge")
        self._ms = torch.as_tensor(np.ascontiguousarray(ms), dtype=dtype).to(self.device)
        self._pan = torch.as_tensor(np.ascontiguousarray(pan), dtype=dtype).to(self.device)
        self._ms_w = ms.shape[1]
        self._pan_segw = pan.shape[1] // r
        self._ms_seg = self._ms.as_strided(((self._ms.numel() - p * c) // c + 1, p * c), (c, 1))
        self._pan_seg = self._pan.as_strided(((self._pan.numel() - q) // r + 1, q), (r, 1))
        self._p_off = torch.arange(p, device=self.device)
        self._q_off = torch.arange(q, device=self.device)
        self.bands, self.height, self.width = c, h, w

    def gather(self, rows: torch.Tensor | np.ndarray, cols: torch.Tensor | np.ndarray,
               out: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Patches around MS pixels ``(rows[i], cols[i])``.

        Args:
            rows: MS pixel rows ``[B]``.
            cols: MS pixel columns ``[B]``.
            out: optional preallocated contiguous ``{"ms": [B, p, p, C], "pan": [B, 1, P, P]}`` to write into (the
                MS buffer is pixel-major HWC, the gather's natural layout); :class:`PatchCache` fills itself this way.

        Returns:
            ``{"ms": [B, C, p, p], "pan": [B, 1, P, P]}`` on the sampler's device.
        """
        rows = torch.as_tensor(rows, device=self.device, dtype=torch.long)
        cols = torch.as_tensor(cols, device=self.device, dtype=torch.long)
        if rows.numel() and (rows.min() < 0 or rows.max() >= self.height or cols.min() < 0 or cols.max() >= self.width):
            raise IndexError(f"pixel outside the {self.height}x{self.width} MS grid")
        b, c, p, q = rows.numel(), self.bands, self.ms_patch, self.pan_patch
        ms_idx = (rows[:, None] + self._p_off) * self._ms_w + cols[:, None]  # [B, p] segment ids
        pan_idx = (rows[:, None] * self.ratio + self._q_off) * self._pan_segw + cols[:, None]  # [B, P]
        if out is None:
            ms = self._ms_seg.index_select(0, ms_idx.reshape(-1)).view(b, p, p, c)
            pan = self._pan_seg.index_select(0, pan_idx.reshape(-1)).view(b, 1, q, q)
        else:
            ms, pan = out["ms"], out["pan"]
            torch.index_select(self._ms_seg, 0, ms_idx.reshape(-1), out=ms.view(b * p, p * c))
            torch.index_select(self._pan_seg, 0, pan_idx.reshape(-1), out=pan.view(b * q, q))
        return {"ms": ms.permute(0, 3, 1, 2), "pan": pan}

    @property
    def pair_bytes(self) -> int:
        """Bytes of one delivered MS + PAN patch pair."""
        return self._pan.element_size() * (self.bands * self.ms_patch ** 2 + self.pan_patch ** 2)

    def cache(self, rows: np.ndarray, cols: np.ndarray, chunk: int = 2048,
              max_bytes: int | None = None) -> PatchCache | None:
        """Extract the patches of a fixed pixel set once into contiguous memory (see :class:`PatchCache`).

        Args:
            rows: MS pixel rows ``[N]``.
            cols: MS pixel columns ``[N]``.
            chunk: pixels gathered per step while filling.
            max_bytes: return ``None`` instead when the cache would need more memory than this (or there are no
                pixels); ``None`` means no limit.
        """
        if max_bytes is not None and not 0 < len(rows) * self.pair_bytes <= max_bytes:
            return None
        return PatchCache(self, rows, cols, chunk=chunk)

    def batches(self, rows: np.ndarray, cols: np.ndarray, labels: np.ndarray | None = None, batch_size: int = 128,
                shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """Iterate over training batches ``{"ms", "pan", "label", "row", "col"}`` of the given pixels.

        Args:
            rows: MS pixel rows ``[N]``.
            cols: MS pixel columns ``[N]``.
            labels: 0-based class index per pixel ``[N]`` (optional).
            batch_size: pixels per batch.
            shuffle: visit pixels in a seeded random order.
            seed: seed of that order (its own generator: it does not touch the global RNG).
            drop_last: drop a last incomplete batch.
        """
        order = _epoch_order(len(rows), shuffle, seed)
        rows_t = torch.as_tensor(np.asarray(rows)[order], device=self.device, dtype=torch.long)
        cols_t = torch.as_tensor(np.asarray(cols)[order], device=self.device, dtype=torch.long)
        lab_t = None if labels is None else torch.as_tensor(np.asarray(labels)[order], device=self.device)
        for sl in _batch_slices(len(order), batch_size, drop_last):
            r, c = rows_t[sl], cols_t[sl]
            batch = self.gather(r, c)
            batch["row"], batch["col"] = r, c
            if lab_t is not None:
                batch["label"] = lab_t[sl]
            yield batch


def _epoch_order(n: int, shuffle: bool, seed: int) -> np.ndarray:
    """The order in which one epoch visits ``n`` items: seeded by its own generator (the global RNG is untouched)."""
    return np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)


def _batch_slices(n: int, batch_size: int, drop_last: bool) -> Iterator[slice]:
    """Consecutive batches of an epoch's order (every item is permuted once per epoch, then batches are views)."""
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield slice(start, start + batch_size)


def _empty_like_scene(sampler: PatchSampler, shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised tensor of the sampler's dtype and device.

    On the CPU it is allocated through NumPy, which asks Linux for transparent huge pages on large arrays (torch's
    allocator does not): reading 16 KiB patches at random from a cache on 4 KiB pages costs a TLB miss per page and
    stops the hardware prefetcher at every page boundary, which measured 13-20 % slower per epoch.
    """
    dtype = sampler._pan.dtype
    if sampler.device.type != "cpu" or dtype not in (torch.float32, torch.float64, torch.float16):
        return torch.empty(shape, dtype=dtype, device=sampler.device)
    return torch.from_numpy(np.empty(shape, dtype=torch.empty(0, dtype=dtype).numpy().dtype))


class PatchCache:
    """The patch pairs of a fixed pixel set, extracted once into contiguous memory.

    Training visits the same labelled pixels every epoch. Gathering a patch from the scene reads 80 separate row
    segments (16 MS + 64 PAN rows, each on its own memory page); random 256-byte reads run at about 40 % of the
    streaming bandwidth on a CPU, so on-the-fly gathering stays 2.5-3.5x slower than a plain copy of the same bytes
    (``benchmarks/results/patch_sampler.md``). A cache pays one on-the-fly pass, after which every epoch reads each
    pair as two contiguous blocks (4 KiB MS + 16 KiB PAN), within 2x of that copy. It costs
    ``len(rows) * sampler.pair_bytes`` of memory (20 KiB per pixel at the default sizes in float32) on the sampler's
    device.

    Args:
        sampler: the scene's sampler (patch sizes, dtype and device come from it).
        rows, cols: MS pixel coordinates ``[N]``.
        chunk: pixels gathered per step while filling.
    """

    def __init__(self, sampler: PatchSampler, rows: np.ndarray, cols: np.ndarray, chunk: int = 2048):
        rows, cols = np.asarray(rows, np.int64).reshape(-1), np.asarray(cols, np.int64).reshape(-1)
        if rows.shape != cols.shape:
            raise ValueError(f"rows and cols differ in length ({len(rows)} vs {len(cols)})")
        n, c, p, q = len(rows), sampler.bands, sampler.ms_patch, sampler.pan_patch
        self.sampler = sampler
        self.rows = torch.as_tensor(rows, device=sampler.device)
        self.cols = torch.as_tensor(cols, device=sampler.device)
        self._ms = _empty_like_scene(sampler, (n, p, p, c))
        self._pan = _empty_like_scene(sampler, (n, 1, q, q))
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            sampler.gather(rows[start:stop], cols[start:stop],
                           out={"ms": self._ms[start:stop], "pan": self._pan[start:stop]})

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        """Memory held by the cached patches."""
        return self._ms.nbytes + self._pan.nbytes

    def gather(self, index: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        """Cached patches of items ``index`` (positions in the pixel set), as :meth:`PatchSampler.gather` returns."""
        index = torch.as_tensor(index, device=self._ms.device, dtype=torch.long)
        return {"ms": self._ms.index_select(0, index).permute(0, 3, 1, 2), "pan": self._pan.index_select(0, index)}

    def batches(self, labels: np.ndarray | None = None, batch_size: int = 128, shuffle: bool = True, seed: int = 0,
                drop_last: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """Training batches ``{"ms", "pan", "label", "row", "col"}`` of the cached pixels.

        Same arguments and the same seeded order as :meth:`PatchSampler.batches`, so the two deliver identical
        batches; ``labels`` are the cached pixels' 0-based classes.
        """
        order = _epoch_order(len(self), shuffle, seed)
        order_t = torch.as_tensor(order, device=self._ms.device)
        rows_t, cols_t = self.rows[order_t], self.cols[order_t]
        lab_t = None if labels is None else torch.as_tensor(np.asarray(labels)[order], device=self._ms.device)
        for sl in _batch_slices(len(order), batch_size, drop_last):
            batch = self.gather(order_t[sl])
            batch["row"], batch["col"] = rows_t[sl], cols_t[sl]
            if lab_t is not None:
                batch["label"] = lab_t[sl]
            yield batch


class PixelSet:
    """A fixed set of pixels of one scene whose patch pairs are fetched by position in the set.

    The first :meth:`gather` extracts every pixel's patches into a :class:`PatchCache` when they fit in
    ``cache_bytes`` (datasets visit the same pixels every epoch, and cached epochs read contiguous memory); a larger
    set is gathered from the scene on every call.

    Args:
        sampler: the scene's sampler.
        rows, cols: MS pixel coordinates ``[N]``.
        cache_bytes: largest cache to build (0 never caches).
    """

    def __init__(self, sampler: PatchSampler, rows: np.ndarray, cols: np.ndarray, cache_bytes: int = 512 << 20):
        self.sampler, self.cache_bytes = sampler, cache_bytes
        self.rows, self.cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        self._cache: PatchCache | None = None
        self._tried = False

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def cached(self) -> bool:
        """Whether the patches are served from a cache (decided on the first :meth:`gather`)."""
        return self._cache is not None

    def gather(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        """Patches of the pixels at positions ``index`` of the set, as :meth:`PatchSampler.gather` returns."""
        if not self._tried:
            self._cache, self._tried = self.sampler.cache(self.rows, self.cols, max_bytes=self.cache_bytes), True
        if self._cache is not None:
            return self._cache.gather(index)
        return self.sampler.gather(self.rows[index], self.cols[index])


class PixelPatches(torch.utils.data.Dataset):
    """Labelled pixels of a scene as patch pairs; ``__getitems__`` returns a whole batch dict at once.

    The same pixels are visited every epoch, so a :class:`~rswb.data.mspan.PixelSet` extracts their patches once
    on first use when they fit in ``cache_bytes`` (a few-shot split always does); larger pixel sets are gathered from
    the scene on the fly.

    Args:
        sampler: the scene's patch sampler (shared by every split).
        rows, cols, labels: the pixels and their 0-based classes.
        repeats: the dataset is this many passes over the pixels (index ``i`` is pixel ``i % n``).
        cache_bytes: largest patch cache to build (0 disables it).
    """

    def __init__(self, sampler: PatchSampler, rows: np.ndarray, cols: np.ndarray, labels: np.ndarray,
                 repeats: int = 1, cache_bytes: int = 512 << 20):
        self.sampler, self.repeats = sampler, max(1, int(repeats))
        self.rows, self.cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        self.pixel_labels = np.asarray(labels, np.int64)
        self.pixels = PixelSet(sampler, self.rows, self.cols, cache_bytes)

    @property
    def labels(self) -> np.ndarray:
        """0-based class of every item (repeated ``repeats`` times)."""
        return np.tile(self.pixel_labels, self.repeats)

    def __len__(self) -> int:
        return len(self.rows) * self.repeats

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices, np.int64) % len(self.rows)
        batch = self.pixels.gather(idx)
        batch["ms"] = batch["ms"].contiguous()
        batch["label"] = torch.as_tensor(self.pixel_labels[idx])
        batch["row"], batch["col"] = torch.as_tensor(self.rows[idx]), torch.as_tensor(self.cols[idx])
        batch["id"] = batch["row"] * self.sampler.width + batch["col"]  # pixel identity (duplicates in a batch)
        return batch

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}



class MSPANPatchDataset(PixelPatches):
    """Labelled pixels of one split as dict samples ``{"ms": [C,p,p], "pan": [1,P,P], "label", "row", "col"}``.

    The reader's interface (``root, split, transforms``) over :class:`PixelPatches`, which gathers the patches:
    ``label`` is the 0-based class index (map value - 1). ``__getitems__`` gathers a whole batch at once, which
    :class:`torch.utils.data.DataLoader` uses automatically, so a DataLoader over this dataset is vectorised too.

    Args:
        root: lab-format folder or ``.mat`` pair, or an already loaded :class:`MSPANScene`.
        split: label map to take pixels from (``"train"``, ``"test"`` or ``"label"``).
        transforms: optional callable applied to each sample dict (or batch dict in ``__getitems__``).
        ms_patch, pan_patch: patch sizes.
        normalize: ``"minmax"``, ``"percentile"`` or ``None`` (raw values).
        cache_bytes: on first use, extract the split's patches once into a :class:`PatchCache` when they fit in this
            many bytes (epochs after the first then read contiguous memory); 0 gathers from the scene every time.
    """

    def __init__(self, root: str | Path | MSPANScene, split: str = "train", transforms=None, ms_patch: int = 16,
                 pan_patch: int | None = None, normalize: str | None = "minmax", cache_bytes: int = 512 << 20):
        scene = root if isinstance(root, MSPANScene) else load_mspan(root)
        if normalize:
            scene = scene.normalized(normalize)
        self.scene, self.split, self.transforms = scene, split, transforms
        rows, cols, labels = scene.labelled_pixels(split)
        super().__init__(PatchSampler(scene, ms_patch, pan_patch), rows, cols, labels, cache_bytes=cache_bytes)

    @property
    def labels(self) -> np.ndarray:
        """0-based class of every pixel."""
        return self.pixel_labels

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        idx = np.asarray(indices)
        batch = self.pixels.gather(idx)
        ms, pan = batch["ms"].contiguous(), batch["pan"]
        samples = [
            {"ms": ms[i], "pan": pan[i], "label": int(self.labels[j]), "row": int(self.rows[j]),
             "col": int(self.cols[j])}
            for i, j in enumerate(idx)
        ]
        return [self.transforms(s) for s in samples] if self.transforms else samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def plot(self, sample: dict[str, Any], bands: Sequence[int] | None = None):
        """Show one sample's MS composite and PAN patch with its class; returns the figure."""
        import matplotlib.pyplot as plt

        ms = sample["ms"].detach().cpu().numpy()
        bands = list(bands or ((3, 2, 1) if ms.shape[0] == 4 else (0, 1, 2)[: ms.shape[0]]))
        img = np.moveaxis(ms[bands], 0, -1)
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-12)
        fig, axes = plt.subplots(1, 2, figsize=(6, 3))
        axes[0].imshow(img if img.shape[-1] == 3 else img[..., 0], cmap=None if img.shape[-1] == 3 else "gray")
        axes[0].set_title(f"MS {ms.shape[1]}x{ms.shape[2]}")
        axes[1].imshow(sample["pan"][0].detach().cpu().numpy(), cmap="gray")
        axes[1].set_title(f"PAN {sample['pan'].shape[-1]}x{sample['pan'].shape[-1]}")
        names = self.scene.class_names
        label = sample["label"]
        fig.suptitle(f"class {label + 1}" + (f" ({names[label]})" if names else "") +
                     f" at ({sample['row']}, {sample['col']})")
        for ax in axes:
            ax.set_axis_off()
        fig.tight_layout()
        return fig


__all__ = [
    "MSPANScene", "MSPANPatchDataset", "PatchSampler", "PixelPatches", "apply_band_stats", "band_stats",
    "is_mspan_source", "label_colormap", "load_mspan", "patch_padding", "read_label_map", "read_raster",
    "validate_scene",
]
