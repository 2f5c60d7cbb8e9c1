"""The embedded image-caption set (``images/``, Karpathy ``dataset.json``, precomp text files)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import ImageDraw

from rswb.data.synthetic.common import (
    _rng,
    _smooth_field,
    _write_png,
    _write_text,
)
from rswb.data.synthetic.scenes import _SAND, _WATER, _draw, _flat, _grass_background, _jit, _rgb, _rotated

# ----------------------------------------------------------------------------------------------------------
# 3. Image-caption set (Karpathy JSON + precomp text)
# ----------------------------------------------------------------------------------------------------------

CAPTION_BACKGROUNDS: tuple[str, ...] = ("grass", "water", "sand", "road")
"""Background types of the caption images; also the ``scene`` label stored per image in ``dataset.json``."""

_OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 40),
    "white": (245, 245, 245),
}
_OBJECT_SHAPES = ("circle", "square", "triangle")
# Object colours too close to a background to be told apart are never drawn on it (captions must stay true).
_CLASHES = {"grass": {"green"}, "water": {"blue"}, "sand": {"yellow"}, "road": set()}

# Grid cell (row, col) -> phrase variants; the 3 x 3 grid gives the positions a caption can name.
_POS_PHRASES = {
    (0, 0): ("in the top left corner", "at the top left"),
    (0, 1): ("at the top", "in the top middle"),
    (0, 2): ("in the top right corner", "at the top right"),
    (1, 0): ("on the left", "on the left side"),
    (1, 1): ("in the center", "in the middle"),
    (1, 2): ("on the right", "on the right side"),
    (2, 0): ("in the bottom left corner", "at the bottom left"),
    (2, 1): ("at the bottom", "in the bottom middle"),
    (2, 2): ("in the bottom right corner", "at the bottom right"),
}
_POS_OF = {
    (0, 0): "in the top left of",
    (0, 1): "at the top of",
    (0, 2): "in the top right of",
    (1, 0): "on the left side of",
    (1, 1): "in the middle of",
    (1, 2): "on the right side of",
    (2, 0): "in the bottom left of",
    (2, 1): "at the bottom of",
    (2, 2): "in the bottom right of",
}
_BG_ON = {
    "grass": ("on the grass", "on green grass", "on a grassy field", "on a green lawn"),
    "water": ("on the water", "on blue water", "on the surface of a lake", "on the sea"),
    "sand": ("on the sand", "on beige sand", "on a sandy beach", "in a sandy area"),
    "road": ("on the road", "on a gray road", "on the asphalt", "on a paved road"),
}
_BG_AREA = {
    "grass": ("a grassy field", "a green meadow", "an area of grass"),
    "water": ("a water surface", "a stretch of blue water", "a lake"),
    "sand": ("a sandy area", "a beach of beige sand", "an area of sand"),
    "road": ("a gray road", "an asphalt road", "a paved area"),
}
_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
_SPLIT_SHARES = (("train", 0.8), ("val", 0.1), ("test", 0.1))


def _caption_background(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    if kind == "grass":
        return _grass_background(rng, size)
    if kind == "water":
        u, _ = _rotated(rng, size)
        img = _flat(size, _jit(rng, _WATER, 8))
        img += (5 * np.sin(2 * np.pi * u / rng.uniform(6, 12)) + 6 * _smooth_field(rng, size, size, 4))[
            ..., None
        ]
        return img
    if kind == "sand":
        return _flat(size, _jit(rng, _SAND, 8)) + 8 * _smooth_field(rng, size, size, 6)[..., None]
    return _flat(size, _jit(rng, (118, 118, 122), 6)) + 5 * _smooth_field(rng, size, size, 10)[..., None]


def _sample_caption_scene(rng: np.random.Generator) -> tuple[str, list[dict]]:
    background = CAPTION_BACKGROUNDS[int(rng.integers(len(CAPTION_BACKGROUNDS)))]
    colours = [c for c in _OBJECT_COLOURS if c not in _CLASHES[background]]
    n = int(rng.integers(1, 5))
    cells = rng.choice(
        9, size=n, replace=False
    )  # one object per grid cell: no overlaps, unambiguous positions
    objects: list[dict] = []
    for k in range(n):
        if objects and rng.random() < 0.4:
            # Repeat an earlier object's kind so that counts like "two red circles" occur often.
            prev = objects[int(rng.integers(len(objects)))]
            colour, shape = prev["colour"], prev["shape"]
        else:
            colour = colours[int(rng.integers(len(colours)))]
            shape = _OBJECT_SHAPES[int(rng.integers(len(_OBJECT_SHAPES)))]
        cell = int(cells[k])
        objects.append({"colour": colour, "shape": shape, "row": cell // 3, "col": cell % 3})
    # Reading order (top-left to bottom-right) makes positional captions read naturally.
    objects.sort(key=lambda o: (o["row"], o["col"]))
    return background, objects


def _draw_caption_image(
    rng: np.random.Generator, background: str, objects: list[dict], size: int
) -> tuple[np.ndarray, list[dict]]:
    """The image and, per object, its colour, shape and pixel box ``[x0, y0, x1, y1]`` (the ground truth)."""
    img = _caption_background(rng, background, size)
    cell = size / 3
    shapes = []
    for obj in objects:
        extent = cell * rng.uniform(0.55, 0.85)  # object side / diameter, always inside its grid cell
        margin = (cell - extent) / 2
        x0 = obj["col"] * cell + margin + rng.uniform(-margin, margin) * 0.8
        y0 = obj["row"] * cell + margin + rng.uniform(-margin, margin) * 0.8
        colour = np.array(_OBJECT_COLOURS[obj["colour"]], float) + rng.normal(0, 8, 3)
        shapes.append((obj["shape"], x0, y0, extent, _rgb(colour)))

    def paint(d: ImageDraw.ImageDraw) -> None:
        for shape, x0, y0, e, colour in shapes:
            if shape == "circle":
                d.ellipse((x0, y0, x0 + e, y0 + e), fill=colour)
            elif shape == "square":
                d.rectangle((x0, y0, x0 + e, y0 + e), fill=colour)
            else:
                d.polygon([(x0 + e / 2, y0), (x0 + e, y0 + e), (x0, y0 + e)], fill=colour)

    img = _draw(img, paint)
    img = img + rng.normal(0, 2.5, img.shape).astype(np.float32)
    boxes = [{"colour": obj["colour"], "shape": obj["shape"], "box": [round(x0, 2), round(y0, 2), round(x0 + e, 2),
                                                                       round(y0 + e, 2)]}
             for obj, (_, x0, y0, e, _) in zip(objects, shapes)]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), boxes


def _np(count: int, colour: str | None, noun: str) -> str:
    """Noun phrase: 'a red circle', 'two red circles', 'a circle', 'three objects'."""
    words = [w for w in (colour, noun) if w]
    if count == 1:
        return "a " + " ".join(words)
    return f"{_NUMBER_WORDS[count]} {' '.join(words[:-1] + [words[-1] + 's'])}".replace("  ", " ")


def _join(parts: Sequence[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _grouped(objects: list[dict], key: Callable[[dict], tuple]) -> list[tuple[tuple, int]]:
    """(key, count) in order of first appearance."""
    counts: dict[tuple, int] = {}
    for obj in objects:
        counts[key(obj)] = counts.get(key(obj), 0) + 1
    return list(counts.items())


def _caption_candidates(rng: np.random.Generator, background: str, objects: list[dict]) -> list[str]:
    """One true caption per template (wording variants at random); templates differ in what they mention."""
    n = len(objects)

    def on() -> str:
        return _BG_ON[background][int(rng.integers(len(_BG_ON[background])))]

    def area() -> str:
        return _BG_AREA[background][int(rng.integers(len(_BG_AREA[background])))]

    def pos(obj: dict) -> str:
        variants = _POS_PHRASES[(obj["row"], obj["col"])]
        return variants[int(rng.integers(len(variants)))]

    by_kind = _join(
        [_np(c, col, shape) for (col, shape), c in _grouped(objects, lambda o: (o["colour"], o["shape"]))]
    )
    by_shape = _join([_np(c, None, shape) for (shape,), c in _grouped(objects, lambda o: (o["shape"],))])
    by_colour = _join([_np(c, col, "object") for (col,), c in _grouped(objects, lambda o: (o["colour"],))])
    placed = _join([f"{_np(1, o['colour'], o['shape'])} {pos(o)}" for o in objects])
    one = objects[int(rng.integers(n))]
    n_obj = "a single object" if n == 1 else _np(n, None, "object")
    there = "there is one object" if n == 1 else f"there are {_NUMBER_WORDS[n]} objects"

    return [
        f"{by_kind} {on()}",
        f"{there} {on()}: {by_kind}",
        f"{area()} with {placed}",
        f"{area()} with {by_kind}",
        f"{by_shape} {on()}",
        f"{by_colour} {on()}",
        f"the image shows {by_kind} {on()}",
        f"{_np(1, one['colour'], one['shape'])} {_POS_OF[(one['row'], one['col'])]} {area()}",
        f"{n_obj} {on()}",
        f"an aerial view of {area()} with {n_obj}",
    ]


def _finish_caption(text: str) -> str:
    # The surface form of the real precomp files ("There is a piece of farmland ."): capital, spaced period.
    return text[0].upper() + text[1:] + " ."


def _tokens(raw: str) -> list[str]:
    return re.findall(r"[a-z]+", raw.lower())


def _pick_captions(rng: np.random.Generator, background: str, objects: list[dict], k: int) -> list[str]:
    chosen: list[str] = []
    for _ in range(20):  # each round re-draws wording variants; distinct templates first
        candidates = _caption_candidates(rng, background, objects)
        for i in rng.permutation(len(candidates)):
            text = candidates[i]
            if text not in chosen:
                chosen.append(text)
            if len(chosen) == k:
                return [_finish_caption(t) for t in chosen]
    raise ValueError(f"cannot make {k} distinct captions for one image; use captions_per_image <= 10")


def _assign_splits(seed: int, n_images: int) -> list[str]:
    rng = _rng(seed, "captions", 0)  # key (0,) for the split, (1, imgid) for the images
    n_val = int(round(n_images * _SPLIT_SHARES[1][1]))
    n_test = int(round(n_images * _SPLIT_SHARES[2][1]))
    labels = np.array(["train"] * (n_images - n_val - n_test) + ["val"] * n_val + ["test"] * n_test)
    return [str(s) for s in labels[rng.permutation(n_images)]]


def synth_captions(
    out: Path, n_images: int = 300, size: int = 64, captions_per_image: int = 5, seed: int = 0
) -> Path:
    """Write an image-caption dataset in both the Karpathy JSON and the precomp text formats.

    Each image shows 1-4 objects (circle / square / triangle; red, green, blue, yellow, white), one per cell
    of a 3 x 3 grid, on a background (grass, water, sand, road). Every caption is true of its image; the
    captions of one image are distinct and use different templates (counts, colours, shapes, positions,
    background). Captions look like the real precomp files: ``"Two red circles on green grass ."``.

    Files written into ``out``:
        - ``images/img_00000.png`` ...: RGB uint8, ``size x size`` (5 digits, more if ``n_images > 100000``).
        - ``dataset.json``: ``{"dataset": "rswb-synthetic", "images": [{"filename", "filepath": "images",
          "imgid", "split", "scene", "sentids", "sentences": [{"raw", "tokens", "imgid", "sentid"}]}]}``;
          ``sentid`` = ``imgid * captions_per_image + j``; ``scene`` is the background type; ``tokens`` are
          the lower-case words.
        - ``{split}_caps.txt`` for train / val / test: one caption per line, an image's captions consecutive,
          images in ``imgid`` order.
        - ``objects.json``: ``{"size": size, "images": {filename: [{"colour", "shape", "box": [x0, y0, x1, y1]}]}}``,
          every object's pixel box: the ground truth that word-region maps are scored against.
        - ``{split}_filename.txt``: train and val have ONE line per image; test has ONE line per caption (the
          file name repeated ``captions_per_image`` times), as in the real datasets, which mix both styles.

    Splits: about 80 / 10 / 10 % train / val / test, a seeded permutation (deterministic).

    Args:
        out: Folder to write into.
        n_images: Number of images.
        size: Image side in pixels (>= 24).
        captions_per_image: Captions per image, 1..10.
        seed: Random seed; equal seeds give byte-identical files.

    Returns:
        ``out``.

    Raises:
        ValueError: If an argument is out of range.
    """
    if n_images < 1 or size < 24 or not 1 <= captions_per_image <= 10:
        raise ValueError(
            f"need n_images >= 1, size >= 24, 1 <= captions_per_image <= 10; got {n_images}, {size}, "
            f"{captions_per_image}"
        )
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    digits = max(5, len(str(n_images - 1)))
    splits = _assign_splits(seed, n_images)
    images = []
    boxes: dict[str, list[dict]] = {}
    per_split: dict[str, tuple[list[str], list[str]]] = {s: ([], []) for s, _ in _SPLIT_SHARES}
    for imgid in range(n_images):
        rng = _rng(seed, "captions", 1, imgid)
        background, objects = _sample_caption_scene(rng)
        filename = f"img_{imgid:0{digits}d}.png"
        img, boxes[filename] = _draw_caption_image(rng, background, objects, size)
        _write_png(out / "images" / filename, img)
        raws = _pick_captions(rng, background, objects, captions_per_image)
        sentids = [imgid * captions_per_image + j for j in range(captions_per_image)]
        images.append(
            {
                "filename": filename,
                "filepath": "images",
                "imgid": imgid,
                "split": splits[imgid],
                "scene": background,
                "sentids": sentids,
                "sentences": [
                    {"raw": raw, "tokens": _tokens(raw), "imgid": imgid, "sentid": sid}
                    for raw, sid in zip(raws, sentids)
                ],
            }
        )
        caps, names = per_split[splits[imgid]]
        caps.extend(raws)
        # Test lists the file name once per caption, train/val once per image: readers must handle both.
        names.extend([filename] * (captions_per_image if splits[imgid] == "test" else 1))

    with open(out / "dataset.json", "w", encoding="utf-8", newline="\n") as fh:
        json.dump({"dataset": "rswb-synthetic", "images": images}, fh, ensure_ascii=True)
        fh.write("\n")
    with open(out / "objects.json", "w", encoding="utf-8", newline="\n") as fh:
        json.dump({"size": size, "images": boxes}, fh, ensure_ascii=True)
        fh.write("\n")
    for split, (caps, names) in per_split.items():
        _write_text(out / f"{split}_caps.txt", caps)
        _write_text(out / f"{split}_filename.txt", names)
    return out


