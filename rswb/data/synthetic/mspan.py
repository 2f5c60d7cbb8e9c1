"""The embedded MS + PAN scene in the lab format (``ms4.tif``, ``pan.tif``, ``train.npy``, ``test.npy``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rswb.data.synthetic.common import (
    GENERATOR_VERSION,
    _rng,
    _smooth_field,
    _write_text,
)

# ----------------------------------------------------------------------------------------------------------
# 1. MS + PAN scene (lab format)
# ----------------------------------------------------------------------------------------------------------

MSPAN_BANDS: tuple[str, ...] = ("blue", "green", "red", "nir")
"""Band order of ``ms4.tif``."""

PAN_WEIGHTS = np.array([0.10, 0.30, 0.35, 0.25])
"""Spectral response of the synthetic PAN band: PAN intensity = sum_b w_b * MS_b (weights sum to 1)."""

MSPAN_DN_SCALE = 10000.0
"""``ms4.tif`` / ``pan.tif`` hold uint16 digital numbers = reflectance * 10000 (surface-reflectance style)."""

# PAN-weighted reflectance shared by all spectra, so that PAN brightness cannot tell them apart.
_TARGET_INTENSITY = 0.15

# Spectral shapes (blue, green, red, nir); only the shape matters, each is rescaled to _TARGET_INTENSITY.
_SPECTRUM_SHAPES: dict[str, tuple[float, float, float, float]] = {
    "water": (0.090, 0.070, 0.045, 0.020),
    "vegetation": (0.030, 0.070, 0.040, 0.400),
    "soil": (0.080, 0.120, 0.170, 0.220),
    "concrete": (0.200, 0.200, 0.200, 0.200),
}
MSPAN_SPECTRA: tuple[str, ...] = tuple(_SPECTRUM_SHAPES)
"""Names of the four spectra (index = spectrum id)."""

MSPAN_TEXTURES: tuple[str, ...] = ("smooth", "rows", "columns", "checker")
"""Names of the four PAN textures (index = texture id): none, horizontal / vertical stripes, checkerboard."""

# The classes form a ring spectrum0 - texture0 - spectrum1 - texture1 - ... - texture3 - spectrum0: class k
# has texture k // 2 and spectrum ((k + 1) // 2) % 4. Every spectrum and every texture is used by exactly two
# classes, and every (spectrum, texture) pair by at most one, so a spectrum-only model confuses pairs (1,2),
# (3,4), (5,6), (7,0) and a texture-only model confuses pairs (0,1), (2,3), (4,5), (6,7); only the two
# modalities together separate all eight.
MSPAN_CLASS_DESIGN: tuple[tuple[int, int], ...] = tuple((((k + 1) // 2) % 4, k // 2) for k in range(8))
"""``(spectrum id, texture id)`` of class k+1 (label value k+1), k = 0..7."""

MSPAN_CLASS_NAMES: tuple[str, ...] = tuple(
    f"{MSPAN_SPECTRA[s]}-{MSPAN_TEXTURES[t]}" for s, t in MSPAN_CLASS_DESIGN
)
"""Readable class names; line k of ``classes.txt`` is the name of label value k+1."""

_CRS_EPSG = 32650  # WGS 84 / UTM zone 50N
_ORIGIN = (500000.0, 4400000.0)  # upper-left corner (x, y) in metres
_MS_PIXEL = 2.0  # MS pixel size in metres; PAN is _MS_PIXEL / ratio
_TEXTURE_AMPLITUDE = 0.05  # reflectance units, about a third of the mean intensity: obvious in PAN
_MS_NOISE = 0.003
_PAN_NOISE = 0.004
_BOUNDARY_MARGIN = 2  # MS pixels closer than this to another class stay unlabelled
_SPLIT_BLOCK = 10  # train/test are assigned per 10 x 10 block so that the two maps are spatially disjoint
_MIN_PIXELS_PER_CLASS = 50


def mspan_design() -> dict:
    """What tells the embedded MS+PAN classes apart, as written to ``design.json``.

    Returns:
        ``{"classes": [{"label": k + 1, "name", "spectrum", "texture"}], "pan_twins": [[a, b], ...],
        "ms_twins": [[a, b], ...]}`` with labels 1..8: a PAN twin pair shares its spectrum and differs only in PAN
        texture (only PAN can tell the two apart), an MS twin pair shares its texture and differs only in spectrum
        (only MS can).
    """
    classes = [{"label": k + 1, "name": MSPAN_CLASS_NAMES[k], "spectrum": MSPAN_SPECTRA[s],
                "texture": MSPAN_TEXTURES[t]} for k, (s, t) in enumerate(MSPAN_CLASS_DESIGN)]
    pairs = [(a, b) for a in range(len(classes)) for b in range(a + 1, len(classes))]
    pan = [[a + 1, b + 1] for a, b in pairs if MSPAN_CLASS_DESIGN[a][0] == MSPAN_CLASS_DESIGN[b][0]]
    ms = [[a + 1, b + 1] for a, b in pairs if MSPAN_CLASS_DESIGN[a][1] == MSPAN_CLASS_DESIGN[b][1]]
    return {"classes": classes, "pan_twins": pan, "ms_twins": ms}


def mspan_spectra() -> np.ndarray:
    """Return the four mean reflectance spectra of the synthetic MS+PAN scene.

    Returns:
        Array ``[4 spectra, 4 bands]`` (float64, reflectance); every row has PAN-weighted intensity
        ``PAN_WEIGHTS @ row`` equal to the same constant.
    """
    shapes = np.array(list(_SPECTRUM_SHAPES.values()), dtype=np.float64)
    return shapes * (_TARGET_INTENSITY / (shapes @ PAN_WEIGHTS))[:, None]


def mspan_texture_tiles(ratio: int) -> np.ndarray:
    """Return the four PAN texture patterns on one ``ratio x ratio`` block.

    Each pattern has mean exactly 0 over the block (so averaging PAN to the MS grid erases it) and peak
    amplitude 1. For even ``ratio`` the patterns are period-2 stripes / checkerboard of +-1.

    Args:
        ratio: PAN/MS resolution ratio (>= 2).

    Returns:
        Array ``[4 textures, ratio, ratio]`` (float64).
    """
    if ratio < 2:
        raise ValueError(f"ratio must be >= 2 for a texture that is invisible at MS resolution, got {ratio}")
    profile = np.where(np.arange(ratio) % 2 == 0, 1.0, -1.0)
    profile -= profile.mean()  # exact zero mean also for odd ratios
    profile /= np.abs(profile).max()
    tiles = np.zeros((4, ratio, ratio))
    tiles[1] = profile[:, None]  # rows: horizontal stripes
    tiles[2] = profile[None, :]  # columns: vertical stripes
    tiles[3] = np.outer(profile, profile)  # checker: block sum = (sum profile)^2 = 0
    tiles[3] /= np.abs(tiles[3]).max()
    return tiles


def _voronoi_classes(
    rng: np.random.Generator, height: int, width: int, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Class map and cell map [H, W] (0-based) of a jittered-grid Voronoi partition with warped boundaries."""
    n_target = int(np.clip(round(height * width / 1250), 2 * n_classes, 40))
    gy = max(1, int(round(np.sqrt(n_target * height / width))))
    gx = max(1, int(np.ceil(n_target / gy)))
    cell_h, cell_w = height / gy, width / gx
    cy, cx = np.meshgrid((np.arange(gy) + 0.5) * cell_h, (np.arange(gx) + 0.5) * cell_w, indexing="ij")
    # Jittered grid rather than uniform seeds: cells of similar size, so no class ends up with a sliver.
    seeds_y = (cy + rng.uniform(-0.35, 0.35, cy.shape) * cell_h).ravel()
    seeds_x = (cx + rng.uniform(-0.35, 0.35, cx.shape) * cell_w).ravel()
    n_cells = seeds_y.size
    # Every class gets at least floor(n_cells / n_classes) >= 2 cells.
    cell_class = rng.permutation(np.tile(np.arange(n_classes), -(-n_cells // n_classes))[:n_cells])
    # Warp the coordinates with a smooth field so that boundaries are curved, not straight Voronoi edges.
    warp = 0.25 * min(cell_h, cell_w)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    yy += warp * _smooth_field(rng, height, width, max(3, gy))
    xx += warp * _smooth_field(rng, height, width, max(3, gy))
    d2 = (yy[..., None] - seeds_y) ** 2 + (xx[..., None] - seeds_x) ** 2  # [H, W, n_cells]
    cell = d2.argmin(axis=-1)
    return cell_class[cell], cell


def _near_boundary(classes: np.ndarray, radius: int) -> np.ndarray:
    """True where another class lies within Euclidean ``radius`` pixels (vectorised over offsets)."""
    h, w = classes.shape
    padded = np.pad(classes, radius, mode="edge")  # the image border is not a class boundary
    near = np.zeros((h, w), dtype=bool)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if (dy or dx) and dy * dy + dx * dx <= radius * radius:
                near |= padded[radius + dy : radius + dy + h, radius + dx : radius + dx + w] != classes
    return near


def _split_train_test(
    rng: np.random.Generator, labels: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split a label map into disjoint train / test maps by a random assignment of 10 x 10 blocks."""
    h, w = labels.shape
    by, bx = -(-h // _SPLIT_BLOCK), -(-w // _SPLIT_BLOCK)
    for _ in range(50):
        # Balanced assignment (half the blocks each) instead of independent coin flips.
        block_is_train = rng.permutation(np.arange(by * bx) % 2 == 0).reshape(by, bx)
        is_train = np.repeat(np.repeat(block_is_train, _SPLIT_BLOCK, 0), _SPLIT_BLOCK, 1)[:h, :w]
        train = np.where(is_train, labels, 0).astype(np.uint8)
        test = np.where(is_train, 0, labels).astype(np.uint8)
        n_train = np.bincount(train.ravel(), minlength=n_classes + 1)[1:]
        n_test = np.bincount(test.ravel(), minlength=n_classes + 1)[1:]
        if n_train.min() >= _MIN_PIXELS_PER_CLASS and n_test.min() >= _MIN_PIXELS_PER_CLASS:
            return train, test
    raise ValueError(
        f"could not split a {h}x{w} scene so that train and test both hold >= {_MIN_PIXELS_PER_CLASS} "
        "pixels of every class; use a larger height / width"
    )


def _write_geotiff(path: Path, bands: np.ndarray, pixel: float) -> None:
    # Imported here so that importing rswb.data.synthetic (e.g. for default_data_dir) does not need GDAL.
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    count, height, width = bands.shape
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": bands.dtype.name,
        "crs": CRS.from_epsg(_CRS_EPSG),
        "transform": from_origin(_ORIGIN[0], _ORIGIN[1], pixel, pixel),
        # Uncompressed, and GDAL sets no TIFFTAG_DATETIME unless asked: identical arrays give identical bytes.
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(bands)
        if count == len(MSPAN_BANDS):
            for i, name in enumerate(MSPAN_BANDS, start=1):
                dst.set_band_description(i, name)
        elif count == 1:
            dst.set_band_description(1, "pan")


def synth_mspan_scene(out: Path, height: int = 200, width: int = 200, ratio: int = 4, seed: int = 0) -> Path:
    """Write a synthetic MS+PAN land-cover scene in the lab format.

    Design: 8 classes = 4 spectra x 4 PAN textures arranged as a ring (:data:`MSPAN_CLASS_DESIGN`), so each
    class shares its spectrum with one class and its texture with another. All spectra have the same
    PAN-weighted intensity, and the textures have zero mean over every aligned ``ratio x ratio`` block, so MS
    sees spectra only and PAN sees textures (plus shared brightness) only. A smooth illumination field
    (x 0.75..1.25) and a per-region brightness factor multiply both modalities, so intensity varies and PAN
    stays radiometrically consistent with MS:
    ``PAN = upsample_nearest(PAN_WEIGHTS @ MS) + amplitude * illumination * texture + noise``.

    Files written into ``out``:
        - ``ms4.tif``: uint16 ``[4, height, width]`` (blue, green, red, nir), DN = reflectance * 10000,
          EPSG:32650, 2 m pixels, upper-left corner (500000, 4400000).
        - ``pan.tif``: uint16 ``[1, ratio*height, ratio*width]``, same scale and origin, pixel 2 m / ratio.
        - ``train.npy`` / ``test.npy``: uint8 ``[height, width]``, 0 = unlabelled, 1..8 = class; pixels within
          2 MS pixels of a class boundary are 0 in both; the two maps never label the same pixel (10 x 10
          block split).
        - ``classes.txt``: 8 lines, line k = name of label k+1.
        - ``design.json``: the ground truth of what tells the classes apart (:func:`mspan_design`): each class's
          spectrum and texture, and its twins, the class that differs from it only in PAN texture and the class
          that differs only in spectrum (``benchmarks/explain`` scores modality attributions against it).
        - ``README.txt``: how the scene was made.

    Args:
        out: Folder to write into (created if missing; existing files of the same names are overwritten).
        height: MS rows.
        width: MS columns.
        ratio: PAN/MS resolution ratio (>= 2); the textures have exactly zero block mean for any ratio.
        seed: Random seed; equal seeds give byte-identical files.

    Returns:
        ``out``.

    Raises:
        ValueError: If ``ratio < 2`` or the scene is too small to hold >= 50 train and test pixels per class.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tiles = mspan_texture_tiles(ratio)
    rng = _rng(seed, "mspan")
    n_classes = len(MSPAN_CLASS_DESIGN)
    spectra = mspan_spectra()  # [4, 4]
    class_spectrum = np.array([s for s, _ in MSPAN_CLASS_DESIGN])
    class_texture = np.array([t for _, t in MSPAN_CLASS_DESIGN])

    classes, cell = _voronoi_classes(rng, height, width, n_classes)  # [H, W] 0-based class, cell id
    n_cells = int(cell.max()) + 1

    # Per-region spectral jitter (+-4 % per band) renormalised to the common intensity: regions look a little
    # different, but PAN brightness still carries no spectral information.
    cell_spectra = spectra[class_spectrum[_first_class_of_cells(classes, cell, n_cells)]]
    cell_spectra = cell_spectra * (1.0 + rng.uniform(-0.04, 0.04, cell_spectra.shape))
    cell_spectra *= (_TARGET_INTENSITY / (cell_spectra @ PAN_WEIGHTS))[:, None]
    illumination = 1.0 + 0.25 * _smooth_field(rng, height, width, 4).astype(np.float64)
    illumination *= rng.uniform(0.92, 1.08, n_cells)[cell]  # per-region brightness

    ms = cell_spectra[cell] * illumination[..., None]  # [H, W, 4]
    ms += rng.normal(0.0, _MS_NOISE, ms.shape)
    ms_dn = np.clip(np.rint(ms * MSPAN_DN_SCALE), 0, 65535).astype(np.uint16)

    # PAN from the stored (quantised) MS, so that block means of PAN match PAN_WEIGHTS @ ms4.tif up to noise.
    intensity = (ms_dn.astype(np.float64) / MSPAN_DN_SCALE) @ PAN_WEIGHTS  # [H, W]
    texture = tiles[class_texture[classes]]  # [H, W, r, r]
    pan_blocks = intensity[:, :, None, None] + _TEXTURE_AMPLITUDE * illumination[:, :, None, None] * texture
    pan = pan_blocks.transpose(0, 2, 1, 3).reshape(height * ratio, width * ratio)
    pan += rng.normal(0.0, _PAN_NOISE, pan.shape)
    pan_dn = np.clip(np.rint(pan * MSPAN_DN_SCALE), 0, 65535).astype(np.uint16)

    labels = np.where(_near_boundary(classes, _BOUNDARY_MARGIN), 0, classes + 1).astype(np.uint8)
    train, test = _split_train_test(rng, labels, n_classes)
    assert not np.any((train > 0) & (test > 0)), "train and test label the same pixel"

    _write_geotiff(out / "ms4.tif", ms_dn.transpose(2, 0, 1), _MS_PIXEL)
    _write_geotiff(out / "pan.tif", pan_dn[None], _MS_PIXEL / ratio)
    np.save(out / "train.npy", train)
    np.save(out / "test.npy", test)
    _write_text(out / "classes.txt", MSPAN_CLASS_NAMES)
    _write_text(out / "design.json", [json.dumps(mspan_design(), sort_keys=True)])
    _write_text(out / "README.txt", _mspan_readme(height, width, ratio, seed, n_cells, train, test))
    return out


def _first_class_of_cells(classes: np.ndarray, cell: np.ndarray, n_cells: int) -> np.ndarray:
    # Each Voronoi cell holds exactly one class; read it off one pixel per cell (cells without pixels get
    # class 0, which is harmless because they are never indexed).
    cell_class = np.zeros(n_cells, dtype=np.int64)
    cell_class[cell.ravel()] = classes.ravel()
    return cell_class


def _mspan_readme(
    height: int, width: int, ratio: int, seed: int, n_cells: int, train: np.ndarray, test: np.ndarray
) -> list[str]:
    spectra = mspan_spectra()
    n_classes = len(MSPAN_CLASS_NAMES)
    n_train = np.bincount(train.ravel(), minlength=n_classes + 1)[1:]
    n_test = np.bincount(test.ravel(), minlength=n_classes + 1)[1:]
    weights = ", ".join(f"{w:.2f}" for w in PAN_WEIGHTS)
    lines = [
        "rswb synthetic MS+PAN scene (lab format)",
        f"generator: rswb.data.synthetic.synth_mspan_scene, version {GENERATOR_VERSION}, seed {seed}",
        "",
        f"ms4.tif   uint16, 4 bands ({', '.join(MSPAN_BANDS)}), {height} x {width},",
        "          DN = reflectance * 10000",
        f"pan.tif   uint16, 1 band, {height * ratio} x {width * ratio} (ratio {ratio}), same scale",
        f"          EPSG:{_CRS_EPSG}, upper-left corner ({_ORIGIN[0]:.0f}, {_ORIGIN[1]:.0f}),",
        f"          MS pixel {_MS_PIXEL} m, PAN pixel {_MS_PIXEL / ratio} m",
        "train.npy / test.npy",
        "          uint8 label maps on the MS grid, 0 = unlabelled, k = classes.txt line k;",
        f"          pixels within {_BOUNDARY_MARGIN} MS pixels of a class boundary are unlabelled;",
        f"          train and test are disjoint ({_SPLIT_BLOCK} x {_SPLIT_BLOCK} blocks, half each)",
        "",
        "Design: neither modality alone separates the classes.",
        f"- Layout: warped jittered-grid Voronoi partition into {n_cells} regions, each one class.",
        f"- 4 spectra (blue green red nir) with the same PAN-weighted intensity {_TARGET_INTENSITY}",
        f"  (PAN weights {weights}):",
    ]
    for name, vec in zip(MSPAN_SPECTRA, spectra):
        lines.append(f"    {name:<11s} {' '.join(f'{v:.4f}' for v in vec)}")
    lines += [
        "- 4 textures, only at PAN resolution, zero mean over every aligned ratio x ratio block",
        "  (so invisible in MS): smooth (none), rows (period-2 horizontal stripes),",
        "  columns (period-2 vertical stripes), checker (period-2 checkerboard);",
        f"  amplitude {_TEXTURE_AMPLITUDE} reflectance x illumination.",
        "- 8 classes on a ring: each shares its spectrum with one class and its texture with another.",
        "- Brightness: smooth illumination field (x 0.75..1.25) times a per-region factor",
        "  (x 0.92..1.08), applied to MS and PAN alike; spectra jittered +-4 % per band per region",
        "  and renormalised to the common intensity.",
        f"- Noise: MS sigma {_MS_NOISE}, PAN sigma {_PAN_NOISE} (reflectance).",
        "- PAN = nearest-upsampled (PAN weights @ MS) + texture + noise, so the ratio x ratio",
        "  block mean of PAN equals the PAN-weighted MS intensity up to noise.",
        "",
        "label  name                 spectrum     texture    train   test",
    ]
    for k, (name, (s, t)) in enumerate(zip(MSPAN_CLASS_NAMES, MSPAN_CLASS_DESIGN), start=1):
        spec, tex = MSPAN_SPECTRA[s], MSPAN_TEXTURES[t]
        lines.append(f"{k:>5d}  {name:<20s} {spec:<12s} {tex:<10s} {n_train[k - 1]:>5d} {n_test[k - 1]:>6d}")
    return lines


