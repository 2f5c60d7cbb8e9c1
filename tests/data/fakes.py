"""Tiny seeded "fake twins" of the real data formats.

Each generator writes the same file names and layouts as the real format, at a few pixels, into a folder (a pytest
``tmp_path``), and returns what it wrote so that a test can compare a reader's output with the truth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FAKE_EPSG = 32633  # WGS 84 / UTM zone 33N
MS_PIXEL = 8.0  # metres


@dataclass
class FakeMSPAN:
    """What :func:`make_mspan_folder` / :func:`make_mspan_mat` wrote."""

    path: Path
    ms: np.ndarray  # [C, H, W] as written (uint16 or float32)
    pan: np.ndarray  # [1, rH, rW]
    ratio: int
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    class_names: list[str] | None = None
    ms_transform: Any = None
    pan_transform: Any = None
    files: dict[str, Path] = field(default_factory=dict)


def write_tif(path: Path, arr: np.ndarray, transform=None, epsg: int | None = None) -> Path:
    """Write ``arr`` ``[C, H, W]`` (or ``[H, W]``) as a GeoTIFF, with CRS and transform when given."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    arr = arr[None] if arr.ndim == 2 else arr
    profile: dict[str, Any] = {
        "driver": "GTiff", "count": arr.shape[0], "height": arr.shape[1], "width": arr.shape[2], "dtype": arr.dtype,
    }
    if transform is not None:
        profile["transform"] = transform
    if epsg is not None:
        profile["crs"] = rasterio.crs.CRS.from_epsg(epsg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a plain TIFF is wanted here
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(arr)
    return path


def random_label_maps(rng: np.random.Generator, h: int, w: int, n_classes: int, frac: float = 0.5):
    """Disjoint train/test label maps (0 = unlabelled, 1..C) covering about ``frac`` of the grid each."""
    values = rng.integers(1, n_classes + 1, size=(h, w))
    which = rng.random((h, w))
    train = np.where(which < frac / 2, values, 0).astype(np.uint8)
    test = np.where((which >= frac / 2) & (which < frac), values, 0).astype(np.uint8)
    # Make sure every class appears at least once in each map.
    for k in range(n_classes):
        train.flat[2 * k], test.flat[2 * k] = k + 1, 0
        test.flat[2 * k + 1], train.flat[2 * k + 1] = k + 1, 0
    return train, test


def make_mspan_folder(tmp: str | Path, h: int = 12, w: int = 10, ratio: int = 4, bands: int = 4, n_classes: int = 3,
                      seed: int = 0, geo: bool = True, labels: str | None = "split", classes: bool = True,
                      dtype: str = "uint16", name: str = "scene") -> FakeMSPAN:
    """Write a lab-format MS+PAN folder: ``ms4.tif``, ``pan.tif``, label maps and ``classes.txt``.

    Args:
        labels: ``"split"`` (``train.npy`` + ``test.npy``, disjoint), ``"npy"`` (one ``label.npy``), ``"mat"``
            (one ``label.mat``) or ``None`` (no labels).
        geo: write a CRS and affine transforms (MS pixel 8 m, PAN pixel 8/ratio m, same origin).
        dtype: pixel dtype of the rasters (``"uint16"`` 11-bit-like values, or ``"float32"``).
    """
    from affine import Affine

    root = Path(tmp) / name
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if dtype == "uint16":
        ms = rng.integers(0, 2048, size=(bands, h, w), dtype=np.uint16)
        pan = rng.integers(0, 2048, size=(1, ratio * h, ratio * w), dtype=np.uint16)
    else:
        ms = rng.normal(100, 20, size=(bands, h, w)).astype(dtype)
        pan = rng.normal(100, 20, size=(1, ratio * h, ratio * w)).astype(dtype)
    x0, y0 = 500_000.0, 4_200_000.0  # north-up, same origin for both grids
    ms_tf = Affine(MS_PIXEL, 0.0, x0, 0.0, -MS_PIXEL, y0) if geo else None
    pan_tf = Affine(MS_PIXEL / ratio, 0.0, x0, 0.0, -MS_PIXEL / ratio, y0) if geo else None
    epsg = FAKE_EPSG if geo else None
    files = {"ms": write_tif(root / "ms4.tif", ms, ms_tf, epsg), "pan": write_tif(root / "pan.tif", pan, pan_tf, epsg)}
    train, test = random_label_maps(rng, h, w, n_classes)
    maps: dict[str, np.ndarray] = {}
    if labels == "split":
        maps = {"train": train, "test": test}
        for k, m in maps.items():
            np.save(root / f"{k}.npy", m)
            files[k] = root / f"{k}.npy"
    elif labels == "npy":
        maps = {"label": np.maximum(train, test)}
        np.save(root / "label.npy", maps["label"])
        files["label"] = root / "label.npy"
    elif labels == "mat":
        import scipy.io

        maps = {"label": np.maximum(train, test)}
        scipy.io.savemat(root / "label.mat", {"label": maps["label"]})
        files["label"] = root / "label.mat"
    elif labels is not None:
        raise ValueError(labels)
    names = None
    if classes:
        names = [f"class_{chr(ord('a') + k)}" for k in range(n_classes)]
        (root / "classes.txt").write_text("\n".join(names) + "\n")
    return FakeMSPAN(root, ms, pan, ratio, maps, names, ms_tf, pan_tf, files)


def make_mspan_mat(tmp: str | Path, h: int = 8, w: int = 6, ratio: int = 4, bands: int = 8, seed: int = 0,
                   name: str = "pair.mat", sensor: str = "WV2", rgb_indexes=(5, 3, 2), drop: tuple[str, ...] = (),
                   label: bool = False) -> FakeMSPAN:
    """Write a pansharpening-benchmark ``.mat`` pair: ``I_MS`` (H x W x C uint16), ``I_PAN``, ``ratio``, ...

    ``rgb_indexes`` are 1-based (MATLAB); ``drop`` leaves variables out; ``label`` adds a 2-D ``label`` map.
    """
    import scipy.io

    path = Path(tmp) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ms_hwc = rng.integers(0, 2048, size=(h, w, bands), dtype=np.uint16)
    pan = rng.integers(0, 2048, size=(ratio * h, ratio * w), dtype=np.uint16)
    data: dict[str, Any] = {"I_MS": ms_hwc, "I_PAN": pan, "ratio": np.array([[ratio]], dtype=np.float64),
                            "sensor": sensor, "L": np.array([[11]], dtype=np.float64),
                            "RGB_indexes": np.array([list(rgb_indexes)], dtype=np.float64)}
    maps = {}
    if label:
        maps["label"] = random_label_maps(rng, h, w, 3)[0]
        data["label"] = maps["label"]
    for k in drop:
        data.pop(k)
    scipy.io.savemat(path, data)
    return FakeMSPAN(path, np.moveaxis(ms_hwc, -1, 0), pan[None], ratio, maps, files={"ms": path, "pan": path})


# ------------------------------------------------------------------------------------------------------ scene folders


def _write_image(path: Path, rng: np.random.Generator, size: int) -> None:
    from PIL import Image

    arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def make_ucmerced(tmp: str | Path, classes=("beach", "forest", "river"), per_class: int = 100, size: int = 8,
                  exts=(".jpg",), seed: int = 0, images_subdir: bool = True, name: str = "UCMerced_LandUse") -> Path:
    """Write a UC Merced folder ``[Images/]<class>/<class>NN.<ext>`` (NN = 00..per_class-1); returns its root.

    ``exts`` cycles over the images (e.g. ``(".tif", ".jpg", ".png")`` for a mixed folder).
    """
    root = Path(tmp) / name
    images = root / "Images" if images_subdir else root
    rng = np.random.default_rng(seed)
    for c in classes:
        (images / c).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            _write_image(images / c / f"{c}{n:02d}{exts[n % len(exts)]}", rng, size)
    return root


def make_aid(tmp: str | Path, classes=("Airport", "Beach", "Forest"), per_class: int | tuple[int, ...] = 12,
             size: int = 8, ext: str = ".jpg", seed: int = 0, name: str = "AID") -> Path:
    """Write an AID folder ``<Class>/<class>_N.<ext>`` (N = 1..per_class); returns its root."""
    root = Path(tmp) / name
    rng = np.random.default_rng(seed)
    counts = per_class if isinstance(per_class, tuple) else (per_class,) * len(classes)
    for c, k in zip(classes, counts):
        (root / c).mkdir(parents=True, exist_ok=True)
        for n in range(1, k + 1):
            _write_image(root / c / f"{c.lower()}_{n}{ext}", rng, size)
    return root


# ------------------------------------------------------------------------------------------------------- captions


@dataclass
class FakeCaptions:
    """What a caption generator wrote: the folder and the expected caption set."""

    root: Path
    captions: list[str]
    caption_to_image: np.ndarray
    image_names: list[str]


def fake_caption(rng: np.random.Generator, image: int, k: int) -> str:
    """A short caption; includes the image and caption numbers so that every caption is distinct."""
    words = ("many", "green", "trees", "buildings", "road", "river", "beach", "white", "cars", "near")
    body = " ".join(rng.choice(words, size=4))
    return f"image {image} caption {k} {body} ."


def make_precomp(tmp: str | Path, split: str = "train", n_images: int = 3, per_image: int | list[int] = 5,
                 style: str = "per_image", names: list[str] | None = None, seed: int = 0,
                 name: str = "precomp") -> FakeCaptions:
    """Write ``{split}_caps.txt`` + ``{split}_filename.txt`` (+ ``{split}_cap2img.txt``) into ``tmp/name``.

    Args:
        style: ``"per_image"`` (one file-name line per image), ``"per_caption"`` (the name repeated once per
            caption) or ``"cap2img"`` (one line per image plus an explicit 0-based caption -> image index).
        per_image: captions per image, or a list with one count per image (``"cap2img"`` or ``"per_caption"``).
        names: image file names (default ``img_0.jpg``, ...).
    """
    root = Path(tmp) / name
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if names is None:
        names = [f"img_{i}.jpg" for i in range(len(per_image) if isinstance(per_image, list) else n_images)]
    counts = per_image if isinstance(per_image, list) else [per_image] * len(names)
    caps, idx = [], []
    for i, k in enumerate(counts):
        for j in range(k):
            caps.append(fake_caption(rng, i, j))
            idx.append(i)
    (root / f"{split}_caps.txt").write_text("\n".join(caps) + "\n")
    if style == "per_image":
        if len(set(counts)) != 1:
            raise ValueError("per_image style needs the same caption count for every image")
        lines = names
    elif style == "per_caption":
        lines = [names[i] for i in idx]
    elif style == "cap2img":
        lines = names
        (root / f"{split}_cap2img.txt").write_text("\n".join(map(str, idx)) + "\n")
    else:
        raise ValueError(style)
    (root / f"{split}_filename.txt").write_text("\n".join(lines) + "\n")
    return FakeCaptions(root, caps, np.array(idx, dtype=np.int64), list(names))


def make_karpathy(tmp: str | Path, splits=("train", "train", "val", "test", "restval", "train"),
                  sentences=(5, 3, 1, 2, 4, 6), filepath: str | None = None, seed: int = 0,
                  name: str = "dataset_fake.json") -> tuple[Path, list[dict[str, Any]]]:
    """Write a Karpathy JSON with one image per entry of ``splits`` and ``sentences[i]`` sentences each.

    Returns the file and the list of image entries written.
    """
    path = Path(tmp) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scenes = ("beach", "forest", "river")
    images = []
    for i, (split, k) in enumerate(zip(splits, sentences)):
        entry: dict[str, Any] = {
            "filename": f"{scenes[i % 3]}_{i}.jpg", "imgid": i, "split": split, "scene": scenes[i % 3],
            "sentences": [{"raw": " " + fake_caption(rng, i, j) + " ", "tokens": [], "imgid": i} for j in range(k)],
        }
        if filepath:
            entry["filepath"] = filepath
        images.append(entry)
    path.write_text(json.dumps({"images": images, "dataset": "fake"}))
    return path, images


def ucm_number_to_name(n: int, classes: list[str]) -> str:
    """UCM-Captions ``N.tif`` (1-based) -> UC Merced stem ``<class>NN`` (the documented rule, for checking)."""
    return f"{sorted(classes)[(n - 1) // 100]}{(n - 1) % 100:02d}"


UCM_CLASS_NAMES = (
    "agricultural", "airplane", "baseballdiamond", "beach", "buildings", "chaparral", "denseresidential", "forest",
    "freeway", "golfcourse", "harbor", "intersection", "mediumresidential", "mobilehomepark", "overpass",
    "parkinglot", "river", "runway", "sparseresidential", "storagetanks", "tenniscourt",
)


def make_ucm_captions(tmp: str | Path, classes=UCM_CLASS_NAMES, test_numbers=(81, 82, 2100),
                      per_image: int = 5, seed: int = 0) -> tuple[FakeCaptions, FakeCaptions, Path]:
    """Write a fake UCM-Captions folder (``N.tif`` names) and a fake UC Merced image folder (100 ``.jpg`` per class).

    With the default 21 classes it is a faithful twin (2,100 numbers over 21 x 100 images, so the UCM-Captions
    numbering applies); fewer classes make a set that only looks like it. ``train`` has one file-name line per image
    (every N not in ``test_numbers``), ``test`` one line per caption. Returns ``(train, test, image_root)``.
    """
    image_root = make_ucmerced(tmp, classes=classes, per_class=100, size=4, seed=seed)
    total = 100 * len(classes)
    train_n = [n for n in range(1, total + 1) if n not in set(test_numbers)]
    train = make_precomp(tmp, "train", names=[f"{n}.tif" for n in train_n], per_image=per_image,
                         style="per_image", seed=seed, name="ucm_captions")
    test = make_precomp(tmp, "test", names=[f"{n}.tif" for n in test_numbers], per_image=per_image,
                        style="per_caption", seed=seed + 1, name="ucm_captions")
    return train, test, image_root


def make_coco_captions(tmp: str | Path, splits=(("train", 4), ("val", 2), ("test", 2)), per_image=(5, 3, 1, 2),
                       one_file: bool = False, with_images: bool = True, seed: int = 0,
                       name: str = "rsicd_coco") -> tuple[Path, dict[str, list[tuple[str, list[str]]]]]:
    """A fake COCO-caption release: ``captions_{split}2017.json`` (or one ``captions.json`` with a ``split`` field).

    Image ids are scattered and annotations shuffled, so that only ``image_id`` can join them; ``images/`` holds the
    files. Returns the folder and, per split, ``[(file_name, [captions in file order])]``.
    """
    root = Path(tmp) / name
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truth: dict[str, list[tuple[str, list[str]]]] = {}
    all_images, all_anns, n = [], [], 0
    for split, count in splits:
        images, anns = [], []
        for i in range(count):
            file_name = f"{split}_{i:03d}.jpg"
            img_id = int(1000 + 37 * n)
            caps = [fake_caption(rng, n, k) for k in range(per_image[n % len(per_image)])]
            images.append({"id": img_id, "file_name": file_name, "height": 8, "width": 8}
                          | ({"split": split} if one_file else {}))
            anns += [{"id": len(all_anns) + len(anns) + j, "image_id": img_id, "caption": c}
                     for j, c in enumerate(caps)]
            truth.setdefault(split, []).append((file_name, caps))
            if with_images:
                _write_image(root / "images" / file_name, rng, 8)
            n += 1
        # Shuffle the annotations but keep each image's captions in their order (the order the reader must keep).
        order = rng.permutation(len(anns))
        by_img: dict[int, list[dict]] = {}
        for a in anns:
            by_img.setdefault(a["image_id"], []).append(a)
        shuffled = [by_img[anns[o]["image_id"]].pop(0) for o in order]
        if one_file:
            all_images += images
            all_anns += shuffled
        else:
            (root / f"captions_{split}2017.json").write_text(json.dumps({"images": images, "annotations": shuffled}))
    if one_file:
        (root / "captions.json").write_text(json.dumps({"images": all_images, "annotations": all_anns}))
    return root, truth


def make_sydney_captions(tmp: str | Path, splits=(("train", 497), ("val", 58), ("test", 58)), per_image: int = 5,
                         seed: int = 0) -> Path:
    """A fake Sydney-Captions precomp set: images ``1.tif`` .. ``613.tif`` over three splits; returns its folder."""
    n0 = 1
    root = None
    for split, n in splits:
        fake = make_precomp(tmp, split, names=[f"{i}.tif" for i in range(n0, n0 + n)], per_image=per_image,
                            seed=seed + n0, name="sydney_captions")
        root, n0 = fake.root, n0 + n
    return root


def truncate_file(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to a fraction of its bytes (a truncated download)."""
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


def garble_file(path: Path, n: int = 256, seed: int = 0) -> Path:
    """Replace a file's content with random bytes."""
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8).tobytes())
    return path


def raises_naming(cls, path, fn, *args, **kwargs):
    """Call ``fn``; assert it raises exactly ``cls`` and that the message names ``path``'s file; return the error."""
    import pytest

    with pytest.raises(cls) as info:
        fn(*args, **kwargs)
    assert type(info.value) is cls, f"raised {type(info.value).__name__}, expected {cls.__name__}"
    assert str(path.name) in str(info.value), f"{path.name!r} not in {str(info.value)!r}"
    return info.value
