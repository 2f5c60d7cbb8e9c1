"""MS+PAN scenes: readers for the lab format and ``.mat`` pairs, validation, normalisation (patches: ``patches.py``).

Formats read here:

* **lab folder**: ``ms4.tif`` (C bands, H x W), ``pan.tif`` (1 band, ratio*H x ratio*W), label maps ``train.npy`` /
  ``test.npy`` on the MS grid (0 = unlabelled, 1..C = classes); older variants with a single ``label*.npy`` or
  ``label*.mat``; an optional ``classes.txt`` (line k names class k+1). GeoTIFFs are read with rasterio and their
  CRS and affine transform are kept.
* **``.mat`` pair** (the pansharpening benchmark toolbox, Z-PNN, PanCollection): an MS variable (``I_MS_LR``,
  ``I_MS``, ``I_MS_UP``, ``ms``, ``lms``; H x W x C or C x H x W) and a PAN variable (``I_PAN``, ``pan``; rH x rW).
  The low-resolution MS is the one on the smallest integer fraction of the PAN grid; the ratio comes from the shapes
  (a stored ``ratio`` must agree with them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

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


__all__ = [
    "MSPANScene", "apply_band_stats", "band_stats", "class_colors", "is_mspan_source", "label_colormap", "load_mspan",
    "read_label_map", "read_raster", "validate_scene",
]
