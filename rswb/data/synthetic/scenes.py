"""The embedded scene-classification folder in the UC Merced layout (``Images/<class>/<class>NN.png``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from rswb.data.synthetic.common import (
    _rng,
    _smooth_field,
    _write_png,
)

# ----------------------------------------------------------------------------------------------------------
# 2. Scene-classification folder (UC Merced layout)
# ----------------------------------------------------------------------------------------------------------

_FIELD_PALETTE = np.array(
    [(118, 158, 72), (165, 142, 92), (92, 128, 60), (192, 172, 112), (140, 110, 70)], float
)
_GRASS = np.array((100, 155, 70), float)
_WATER = np.array((38, 78, 138), float)
_SAND = np.array((212, 188, 140), float)
_ASPHALT = np.array((92, 92, 98), float)
_CONCRETE = np.array((152, 150, 144), float)


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _rotated(rng: np.random.Generator, size: int, spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (u along, v across) of a randomly rotated frame centred in the middle ``spread`` share."""
    yy, xx = _coords(size)
    theta = rng.uniform(0, np.pi)
    cy, cx = rng.uniform((1 - spread) / 2 * size, (1 + spread) / 2 * size, 2)
    c, s = np.cos(theta), np.sin(theta)
    return (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c


def _jit(rng: np.random.Generator, rgb: np.ndarray, amount: float = 12.0) -> np.ndarray:
    return np.clip(np.asarray(rgb, float) + rng.normal(0, amount, 3), 0, 255)


def _flat(size: int, rgb: np.ndarray) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, np.float32), (size, size, 3)).copy()


def _grass_background(rng: np.random.Generator, size: int) -> np.ndarray:
    img = _flat(size, _jit(rng, _GRASS))
    img += (14 * _smooth_field(rng, size, size, 4) + 6 * _smooth_field(rng, size, size, 12))[..., None]
    return img


def _draw(img: np.ndarray, painter: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    # PIL draws the vector shapes (circles, rotated rectangles); numpy does the smooth textures.
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="RGB")
    painter(ImageDraw.Draw(pil))
    return np.asarray(pil, dtype=np.float32)


def _mask(size: int, painter: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    """A boolean ``[size, size]`` mask of what ``painter`` fills (with 255) on a black canvas."""
    pil = Image.new("L", (size, size), 0)
    painter(ImageDraw.Draw(pil))
    return np.asarray(pil) > 127


def _rect_polygon(
    cx: float, cy: float, half_w: float, half_h: float, theta: float
) -> list[tuple[float, float]]:
    c, s = np.cos(theta), np.sin(theta)
    corners = [(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)]
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in corners]


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    r, g, b = (int(round(float(v))) for v in np.clip(colour, 0, 255))
    return r, g, b


def _scene_water(rng: np.random.Generator, size: int) -> np.ndarray:
    u, _ = _rotated(rng, size)
    period = rng.uniform(6, 14)
    ripples = rng.uniform(5, 10) * np.sin(2 * np.pi * u / period + 3 * _smooth_field(rng, size, size, 3))
    img = _flat(size, _jit(rng, _WATER))
    img += (ripples + 8 * _smooth_field(rng, size, size, 4))[..., None] * np.array(
        [0.6, 0.8, 1.0], np.float32
    )
    return img


def _scene_desert(rng: np.random.Generator, size: int) -> np.ndarray:
    # Same sinusoidal shape as "water", different colour: learnable only through colour.
    u, _ = _rotated(rng, size)
    period = rng.uniform(10, 20)
    dunes = rng.uniform(12, 22) * np.sin(2 * np.pi * u / period + 3 * _smooth_field(rng, size, size, 3))
    img = _flat(size, _jit(rng, _SAND))
    img += (dunes + 6 * _smooth_field(rng, size, size, 8))[..., None]
    return img


def _scene_meadow(rng: np.random.Generator, size: int) -> np.ndarray:
    return _grass_background(rng, size)


def _scene_forest(rng: np.random.Generator, size: int) -> np.ndarray:
    img = _flat(size, _jit(rng, (32, 68, 36), 6))
    n = int(rng.integers(30, 70) * (size / 64) ** 2)
    ys, xs = rng.uniform(0, size, n), rng.uniform(0, size, n)
    radii = rng.uniform(2, 6, n) * size / 64
    greens = np.stack([rng.uniform(20, 60, n), rng.uniform(65, 115, n), rng.uniform(25, 55, n)], axis=1)

    def paint(d: ImageDraw.ImageDraw) -> None:
        for y, x, r, g in zip(ys, xs, radii, greens):
            d.ellipse((x - r + 1, y - r + 1, x + r + 1, y + r + 1), fill=(15, 35, 18))  # shadow
            d.ellipse((x - r, y - r, x + r, y + r), fill=_rgb(g))

    return _draw(img, paint)


def _scene_circles(rng: np.random.Generator, size: int) -> np.ndarray:
    # Storage-tank-like: the circle shape of "forest", but light circles on concrete.
    img = _flat(size, _jit(rng, _CONCRETE)) + 6 * _smooth_field(rng, size, size, 6)[..., None]
    n = int(rng.integers(2, 8))
    radii = rng.uniform(4, 10, n) * size / 64
    xs = rng.uniform(radii, size - radii)
    ys = rng.uniform(radii, size - radii)
    fill = _jit(rng, (226, 226, 220), 8)

    def paint(d: ImageDraw.ImageDraw) -> None:
        for y, x, r in zip(ys, xs, radii):
            d.ellipse((x - r + 2, y - r + 2, x + r + 2, y + r + 2), fill=(70, 70, 70))
            d.ellipse((x - r, y - r, x + r, y + r), fill=_rgb(fill), outline=(170, 170, 165))

    def objects(d: ImageDraw.ImageDraw) -> None:  # the tanks themselves (not their shadows)
        for y, x, r in zip(ys, xs, radii):
            d.ellipse((x - r, y - r, x + r, y + r), fill=255)

    return _draw(img, paint), _mask(size, objects)


def _field_colours(rng: np.random.Generator, k: int) -> np.ndarray:
    idx = rng.choice(len(_FIELD_PALETTE), size=k, replace=False)
    return np.stack([_jit(rng, _FIELD_PALETTE[i], 8) for i in idx]).astype(np.float32)


def _scene_stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    # Same field colours as "checkerboard", stripe shape.
    u, _ = _rotated(rng, size)
    width = rng.uniform(4, 10) * size / 64
    colours = _field_colours(rng, int(rng.integers(2, 4)))
    idx = np.floor(u / width).astype(np.int64) % len(colours)
    return colours[idx] + 5 * _smooth_field(rng, size, size, 8)[..., None]


def _scene_checkerboard(rng: np.random.Generator, size: int) -> np.ndarray:
    u, v = _rotated(rng, size)
    cell = rng.uniform(6, 14) * size / 64
    colours = _field_colours(rng, 2)
    idx = (np.floor(u / cell) + np.floor(v / cell)).astype(np.int64) % 2
    return colours[idx] + 5 * _smooth_field(rng, size, size, 8)[..., None]


def _scene_river(rng: np.random.Generator, size: int) -> np.ndarray:
    # A meandering band: the band shape of "road", water colour and a curved centre line.
    img = _grass_background(rng, size)
    u, v = _rotated(rng, size, spread=0.5)  # band always well inside the image
    centre = rng.uniform(3, 9) * np.sin(2 * np.pi * u / rng.uniform(25, 50) + rng.uniform(0, 2 * np.pi))
    half = rng.uniform(3, 7) * size / 64
    mask = np.abs(v - centre * size / 64) < half
    water = _jit(rng, _WATER) + 6 * _smooth_field(rng, size, size, 6)[..., None]
    img[mask] = water[mask]
    return img, mask


def _scene_road(rng: np.random.Generator, size: int) -> np.ndarray:
    img = _grass_background(rng, size)
    u, v = _rotated(rng, size, spread=0.5)  # band always well inside the image
    half = rng.uniform(3, 6) * size / 64
    road = np.abs(v) < half
    img[road] = _jit(rng, _ASPHALT, 6)
    dash = rng.uniform(3, 6)
    line = (np.abs(v) < 0.6) & (np.floor(u / dash).astype(np.int64) % 2 == 0)
    img[line] = (230, 230, 225)
    return img, road


def _scene_buildings(rng: np.random.Generator, size: int) -> np.ndarray:
    img = _flat(size, _jit(rng, (186, 180, 168))) + 5 * _smooth_field(rng, size, size, 6)[..., None]
    roofs = [(150, 72, 60), (118, 118, 124), (82, 82, 92), (172, 150, 128)]
    n = int(rng.integers(4, 11))
    theta = rng.uniform(0, np.pi / 2)  # buildings of one block share an orientation
    specs = [
        (
            rng.uniform(0, size),
            rng.uniform(0, size),
            rng.uniform(3, 8) * size / 64,
            rng.uniform(3, 8) * size / 64,
            theta + rng.normal(0, 0.1),
            _jit(rng, roofs[int(rng.integers(len(roofs)))], 10),
        )
        for _ in range(n)
    ]

    def paint(d: ImageDraw.ImageDraw) -> None:
        for x, y, hw, hh, th, colour in specs:
            d.polygon(_rect_polygon(x + 2, y + 2, hw, hh, th), fill=(60, 58, 55))  # shadow
            d.polygon(_rect_polygon(x, y, hw, hh, th), fill=_rgb(colour))

    def objects(d: ImageDraw.ImageDraw) -> None:  # the roofs (not their shadows)
        for x, y, hw, hh, th, _ in specs:
            d.polygon(_rect_polygon(x, y, hw, hh, th), fill=255)

    return _draw(img, paint), _mask(size, objects)


def _scene_beach(rng: np.random.Generator, size: int) -> np.ndarray:
    u, v = _rotated(rng, size, spread=0.5)  # shore line through the middle: both sides in view
    shore = v + 3 * _smooth_field(rng, size, size, 4) * size / 64
    img = _flat(size, _jit(rng, _SAND)) + 6 * _smooth_field(rng, size, size, 8)[..., None]
    water = _flat(size, _jit(rng, _WATER))
    water += (4 * np.sin(2 * np.pi * v / rng.uniform(4, 8)))[..., None]
    sea = shore > 0
    img[sea] = water[sea]
    foam = np.abs(shore) < 1.2
    img[foam] = (228, 232, 232)
    return img


def _scene_parking(rng: np.random.Generator, size: int) -> np.ndarray:
    img = _flat(size, _jit(rng, _ASPHALT, 6)) + 4 * _smooth_field(rng, size, size, 6)[..., None]
    theta = rng.choice([0.0, np.pi / 2]) + rng.normal(0, 0.08)
    c, s = np.cos(theta), np.sin(theta)
    pitch_x, pitch_y = 5.0 * size / 64, 12.0 * size / 64
    off_x, off_y = rng.uniform(0, pitch_x), rng.uniform(0, pitch_y)
    occupancy = rng.uniform(0.5, 0.9)
    car_colours = [(200, 200, 205), (30, 30, 35), (160, 30, 30), (40, 60, 140), (150, 150, 155)]
    cars = []
    n_x, n_y = int(size / pitch_x) + 4, int(size / pitch_y) + 4
    for j in range(-2, n_y):
        for i in range(-2, n_x):
            if rng.random() < occupancy:
                gx, gy = off_x + i * pitch_x - size / 2, off_y + j * pitch_y - size / 2
                cx, cy = size / 2 + gx * c - gy * s, size / 2 + gx * s + gy * c
                cars.append((cx, cy, car_colours[int(rng.integers(len(car_colours)))]))

    def paint(d: ImageDraw.ImageDraw) -> None:
        for cx, cy, colour in cars:
            d.polygon(_rect_polygon(cx, cy, 1.6 * size / 64, 3.2 * size / 64, theta), fill=colour)

    return _draw(img, paint)


OBJECT_CLASSES: tuple[str, ...] = ("circles", "river", "road", "buildings")
"""The object-based scene classes: their recipes return ``(image, object mask)``; the others draw a texture that
fills the image and return the image alone. The masks are the ground truth of ``benchmarks/explain``."""

# Order matters: synth_scene_folder(n_classes=k) uses the first k recipes.
SCENE_RECIPES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "checkerboard": _scene_checkerboard,
    "stripes": _scene_stripes,
    "circles": _scene_circles,
    "water": _scene_water,
    "forest": _scene_forest,
    "meadow": _scene_meadow,
    "desert": _scene_desert,
    "river": _scene_river,
    "road": _scene_road,
    "buildings": _scene_buildings,
    "beach": _scene_beach,
    "parking": _scene_parking,
}
"""Scene classes (folder names) and their generators ``(rng, size) -> float [size, size, 3]`` (for
:data:`OBJECT_CLASSES`, ``(image, bool mask [size, size])``), in order."""


def _finish_scene(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    # Per-image photometric jitter (brightness, colour balance, sensor noise) so that no class is a constant
    # colour.
    img = img * rng.uniform(0.88, 1.12) * (1.0 + rng.normal(0, 0.04, 3)).astype(np.float32)
    img = img + rng.normal(0, rng.uniform(2, 5), img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def synth_scene_folder(
    out: Path, n_classes: int = 10, per_class: int = 100, size: int = 64, seed: int = 0
) -> Path:
    """Write a scene-classification dataset in the UC Merced layout.

    Files: ``out/Images/<class>/<class>NN.png`` (RGB uint8, ``size x size``), ``NN`` zero-padded to two digits
    (more when ``per_class > 100``), numbered from 00. Classes are the first ``n_classes`` names of
    :data:`SCENE_RECIPES` (``checkerboard, stripes, circles, water, forest, meadow, desert, river, road,
    buildings`` by default, then ``beach, parking``). Images of the object-based classes (:data:`OBJECT_CLASSES`)
    get their object mask beside them: ``out/objects/<class>/<class>NN.png`` (uint8, 255 on the objects: tanks,
    river, road, roofs), the ground truth that attention maps are scored against. Some recipes share colours but
    differ in shape
    (checkerboard / stripes, water / river / beach) and others share a shape but differ in colour (forest /
    circles, water / desert, river / road), with random position, scale, rotation, colour jitter and noise per
    image.

    Args:
        out: Dataset root (the folder that will contain ``Images/``).
        n_classes: Number of classes, 1 .. ``len(SCENE_RECIPES)``.
        per_class: Images per class.
        size: Image side in pixels.
        seed: Random seed; equal seeds give byte-identical files.

    Returns:
        ``out``.

    Raises:
        ValueError: If ``n_classes`` is out of range or ``per_class`` / ``size`` is not positive.
    """
    if not 1 <= n_classes <= len(SCENE_RECIPES):
        raise ValueError(f"n_classes must be in 1..{len(SCENE_RECIPES)}, got {n_classes}")
    if per_class < 1 or size < 8:
        raise ValueError(f"per_class must be >= 1 and size >= 8, got per_class={per_class}, size={size}")
    out = Path(out)
    digits = max(2, len(str(per_class - 1)))
    for class_idx, (name, recipe) in enumerate(list(SCENE_RECIPES.items())[:n_classes]):
        folder = out / "Images" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rng = _rng(seed, "scenes", class_idx, i)
            drawn = recipe(rng, size)
            img, mask = drawn if isinstance(drawn, tuple) else (drawn, None)
            _write_png(folder / f"{name}{i:0{digits}d}.png", _finish_scene(rng, img))
            if mask is not None:
                objects = out / "objects" / name
                objects.mkdir(parents=True, exist_ok=True)
                _write_png(objects / f"{name}{i:0{digits}d}.png", np.repeat(mask[..., None] * np.uint8(255), 3, 2))
    return out


