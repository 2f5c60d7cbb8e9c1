"""Scene-classification folders (UC Merced and AID layouts) and their retrieval split rules.

Layouts:

* **UC Merced**: ``[Images/]<class>/<class>NN.<ext>`` (NN = 00..99). Split rule (DHCL protocol): NN 00-79 train,
  80-99 query = database.
* **AID**: ``<Class>/<class>_N.<ext>`` (N = 1..). Split rule: the first half of each class (by N) trains, the rest is
  query = database.

Extensions ``.tif .tiff .jpg .jpeg .png`` are accepted; images are decoded with Pillow.
"""

from __future__ import annotations

import copy
import re
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rswb.data.errors import CorruptImageError, DataFormatError, DatasetNotFoundError, require_exists
from rswb.utils import show_progress

IMAGE_EXTS = (".tif", ".tiff", ".jpg", ".jpeg", ".png")
SPLITS = ("all", "train", "query", "database", "test")


@dataclass(frozen=True)
class SceneRecord:
    """One image of a scene folder: its file, 0-based class index, class name and number within the class."""

    path: Path
    label: int
    class_name: str
    number: int


def load_image(path: str | Path, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image file to an RGB ``[H, W, 3]`` uint8 array, optionally resized (bilinear) to ``size``.

    Raises:
        DatasetNotFoundError: the file does not exist.
        CorruptImageError: Pillow cannot decode it.
    """
    from PIL import Image, UnidentifiedImageError

    path = require_exists(path, "image")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None:
                hw = (size, size) if isinstance(size, int) else tuple(size)
                im = im.resize((hw[1], hw[0]), Image.BILINEAR)
            return np.array(im, dtype=np.uint8)  # a writable copy (torch warns on read-only arrays)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise CorruptImageError(path, f"cannot decode image ({err.__class__.__name__}: {err})",
                                "a readable .tif/.jpg/.png image; re-export or remove the file") from err


def check_image(path: str | Path) -> tuple[int, int]:
    """Decode one image file far enough to know it is whole; returns its ``(height, width)``.

    Pillow's ``verify()`` checks the container (PNG chunk CRCs, TIFF tags), then the pixel data is decoded; a JPEG
    is decoded at 1/8 scale (``draft``), which still reads its whole entropy-coded stream, so a truncated file fails
    here at a fraction of a full decode's cost.

    Raises:
        DatasetNotFoundError: the file does not exist.
        CorruptImageError: the file cannot be opened, verified or decoded (naming it).
    """
    from PIL import Image, UnidentifiedImageError

    path = require_exists(path, "image")
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error) as err:
        raise CorruptImageError(path, f"cannot decode image ({err.__class__.__name__}: {err})",
                                "a readable .tif/.jpg/.png image; re-export or remove the file") from err
    if size[0] < 1 or size[1] < 1:
        raise CorruptImageError(path, f"image of size {size[0]} x {size[1]}", "at least 1 x 1 pixels")
    return size[1], size[0]


def check_images(paths: Sequence[str | Path], cache_dir: str | Path | None = None, workers: int | None = None,
                 progress: bool = True, desc: str = "checking images") -> int:
    """Check that every image decodes (:func:`check_image`) before any expensive step; returns how many were read.

    Runs on ``workers`` threads (default: the CPU count; Pillow decodes without the GIL) and stops at the first bad
    file in ``paths`` order. With ``cache_dir``, the files that passed are remembered by path, size and modification
    time (one small JSON per folder set, written atomically), so a second check of unchanged files reads nothing.
    The progress bar appears only when the check takes more than a second.

    Raises:
        DatasetNotFoundError: a file is missing.
        CorruptImageError: a file cannot be decoded (naming it); files that passed are still remembered.
    """
    import hashlib
    import json
    import os
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    paths = [Path(p) for p in paths]
    stamps = {}
    for p in paths:
        try:
            st = p.stat()
        except FileNotFoundError as err:
            raise DatasetNotFoundError(p, "image file is missing", "an image file") from err
        except OSError as err:  # a symlink loop, a permission problem on the folder
            raise CorruptImageError(p, f"cannot read the file ({err.strerror or err})", "a readable image") from err
        stamps[str(p.resolve())] = [st.st_size, st.st_mtime_ns]
    store = None
    known: dict[str, list[int]] = {}
    if cache_dir is not None:
        folders = "\n".join(sorted({str(Path(k).parent.parent) for k in stamps}))
        store = Path(cache_dir) / f"{hashlib.sha256(folders.encode()).hexdigest()[:20]}.json"
        try:
            known = json.loads(store.read_text())
        except (OSError, ValueError):
            known = {}  # no record (or an unreadable one): check everything
    todo = [p for p in paths if known.get(str(p.resolve())) != stamps[str(p.resolve())]]
    passed: dict[str, list[int]] = {}
    error: Exception | None = None
    if todo:
        n_workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
        with ThreadPoolExecutor(n_workers, thread_name_prefix="rswb-imgcheck") as pool:
            bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not show_progress(progress), leave=False,
                       delay=1.0)
            try:
                for p, _ in zip(todo, pool.map(check_image, todo)):
                    passed[str(p.resolve())] = stamps[str(p.resolve())]
                    bar.update()
            except Exception as err:  # noqa: BLE001 - re-raised below, after the passed files are remembered
                error = err
                pool.shutdown(wait=True, cancel_futures=True)
            finally:
                bar.close()
    if store is not None and passed:
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_name(f".{store.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**known, **passed}))
        os.replace(tmp, store)  # atomic: a reader sees the old record or the new one, never half of one
    if error is not None:
        raise error
    return len(todo)


def image_to_tensor(img: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` uint8 -> ``[3, H, W]`` float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)


def _images_root(root: Path) -> Path:
    return root / "Images" if (root / "Images").is_dir() else root


def scan_scene_folder(root: str | Path, layout: str = "auto") -> tuple[list[SceneRecord], list[str], str]:
    """List the images of a scene folder.

    Args:
        root: the dataset folder (its ``Images/`` sub-folder is used when present).
        layout: ``"ucmerced"``, ``"aid"`` or ``"auto"`` (decided from the file names).

    Returns:
        ``(records, class_names, layout)``: records sorted by class then number; class names sorted, index = label.

    Raises:
        DatasetNotFoundError: the folder is missing or has no class folders.
        DataFormatError: a class folder is empty or a file name does not follow the layout.
    """
    root = require_exists(root, "scene folder")
    images = _images_root(root)
    class_dirs = sorted(p for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetNotFoundError(images, "no class folders found", "<class>/<image files> (UC Merced or AID layout)")
    files: dict[str, list[Path]] = {}
    for d in class_dirs:
        fs = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        for p in fs:
            if not p.is_file():  # a folder named like an image, a dangling symlink or a symlink loop
                kind = "a directory" if p.is_dir() else "not a readable file (a dangling link or a link loop?)"
                raise DataFormatError(p, f"has an image extension but is {kind}", "an image file")
        if not fs:
            raise DataFormatError(d, "class folder has no images", f"files with extensions {', '.join(IMAGE_EXTS)}")
        files[d.name] = fs
    if layout == "auto":
        first = class_dirs[0].name
        stem = files[first][0].stem
        layout = "aid" if re.fullmatch(rf"(?i){re.escape(first)}_\d+", stem) else "ucmerced"
    if layout not in ("ucmerced", "aid"):
        raise ValueError(f"unknown layout {layout!r}; use 'ucmerced', 'aid' or 'auto'")
    records = []
    for label, d in enumerate(class_dirs):
        pattern = rf"(?i){re.escape(d.name)}_(\d+)" if layout == "aid" else rf"(?i){re.escape(d.name)}(\d+)"
        for f in files[d.name]:
            m = re.fullmatch(pattern, f.stem)
            if m is None:
                form = f"{d.name.lower()}_N" if layout == "aid" else f"{d.name}NN"
                raise DataFormatError(f, f"file name does not follow the {layout} layout", f"{form}{f.suffix}")
            records.append(SceneRecord(f, label, d.name, int(m.group(1))))
    # Two files with one number (port_10.jpg beside port_10.png, or beach07 beside beach7) are one image twice or
    # two images the split rule cannot tell apart: either way the numbering is no longer evidence.
    seen: dict[tuple[int, int], Path] = {}
    for r in records:
        other = seen.setdefault((r.label, r.number), r.path)
        if other != r.path:
            raise DataFormatError(r.path, f"has the same image number ({r.number}) as {other.name} in {r.class_name}/",
                                  "one file per image number; remove or renumber one of them")
    records.sort(key=lambda r: (r.label, r.number))
    return records, [d.name for d in class_dirs], layout


def split_mask(records: Sequence[SceneRecord], layout: str, split: str) -> np.ndarray:
    """Boolean mask of ``records`` in ``split`` under the layout's rule (see module docstring).

    ``"query"``, ``"database"`` and ``"test"`` are the same set: the protocol retrieves among the held-out images.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    if split == "all":
        return np.ones(len(records), dtype=bool)
    if layout == "ucmerced":
        train = np.array([r.number < 80 for r in records], dtype=bool)
    else:
        train = np.zeros(len(records), dtype=bool)
        labels = np.array([r.label for r in records])
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)  # records are sorted by number within a class
            train[idx[: len(idx) // 2]] = True
    return train if split == "train" else ~train


class SceneFolder(torch.utils.data.Dataset):
    """A scene-classification folder as dict samples ``{"image": [3,H,W], "label", "index", "path"}``.

    Args:
        root: dataset folder (UC Merced or AID layout).
        split: ``"all"``, ``"train"`` or ``"query"`` (= ``"database"`` = ``"test"``), by the layout's split rule.
        transforms: optional callable applied to each sample dict.
        layout: ``"auto"``, ``"ucmerced"`` or ``"aid"``.
        image_size: resize every image to this size (UC Merced has a few images slightly below 256 x 256, so
            batching needs a fixed size); ``None`` keeps the native size.
    """

    def __init__(self, root: str | Path, split: str = "all", transforms=None, layout: str = "auto",
                 image_size: int | tuple[int, int] | None = None):
        self.root = Path(root)
        self._all_records, self.classes, self.layout = scan_scene_folder(root, layout)
        self.transforms, self.image_size = transforms, image_size
        self._select(split)

    def _select(self, split: str) -> None:
        mask = split_mask(self._all_records, self.layout, split)
        self.records = [r for r, keep in zip(self._all_records, mask) if keep]
        self.split = split

    def with_split(self, split: str) -> SceneFolder:
        """The same folder restricted to another split, without scanning the disk again (a shallow copy)."""
        other = copy.copy(self)
        other._select(split)
        return other

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> np.ndarray:
        """0-based class index of every sample ``[N]``."""
        return np.array([r.label for r in self.records], dtype=np.int64)

    def class_counts(self) -> dict[str, int]:
        """Images per class name in this split."""
        counts = Counter(r.class_name for r in self.records)
        return {c: counts.get(c, 0) for c in self.classes}

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        sample = {"image": image_to_tensor(load_image(rec.path, self.image_size)), "label": rec.label,
                  "index": index, "path": str(rec.path)}
        return self.transforms(sample) if self.transforms else sample

    def verify(self, progress: bool = False) -> Counter:
        """Decode every image (raises :class:`CorruptImageError` on the first bad one); returns a Counter of sizes."""
        from tqdm.auto import tqdm

        sizes: Counter = Counter()
        for rec in tqdm(self.records, desc="decoding images", disable=not show_progress(progress)):
            # A full decode, not a header read: a truncated JPEG only fails here.
            sizes[load_image(rec.path).shape[:2]] += 1
        return sizes

    def plot(self, sample: dict[str, Any]):
        """Show one sample with its class name; returns the figure."""
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(3, 3))
        ax.imshow(sample["image"].permute(1, 2, 0).cpu().numpy())
        ax.set_title(f"{self.classes[sample['label']]} ({Path(sample['path']).name})")
        ax.set_axis_off()
        fig.tight_layout()
        return fig


__all__ = ["ImageFiles", "SceneFolder", "SceneRecord", "TensorImages", "check_image", "check_images", "image_to_tensor",
           "load_image", "scan_scene_folder", "split_mask"]


class ImageFiles(torch.utils.data.Dataset):
    """Image files as dict samples ``{"image": [3, S, S] in [0, 1], "path"}``, decoded and resized on access.

    Args:
        paths: the image files, in the order of the samples.
        size: square size every image is resized to (bilinear).
    """

    def __init__(self, paths: Sequence[str | Path], size: int):
        self.paths, self.size = [Path(p) for p in paths], int(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": image_to_tensor(load_image(self.paths[i], self.size)), "path": str(self.paths[i])}

    def plot(self, sample: dict[str, Any], ax=None):
        """Show one sample's image, titled with its file name."""
        import matplotlib.pyplot as plt

        ax = ax or plt.subplots(figsize=(3, 3))[1]
        ax.imshow(sample["image"].permute(1, 2, 0).numpy())
        ax.set_title(Path(sample["path"]).name)
        ax.axis("off")
        return ax


class TensorImages(torch.utils.data.Dataset):
    """Decoded uint8 images ``[N, 3, H, W]`` as samples ``{"image": float in [0, scale]}`` (no file access).

    Args:
        images: the uint8 images (e.g. a scene folder decoded once into memory).
        scale: multiplier applied to the [0, 1] values.
    """

    def __init__(self, images: torch.Tensor, scale: float = 1.0):
        self.images, self.scale = images, float(scale)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = self.images[i].float().div_(255.0)
        return {"image": x.mul_(self.scale) if self.scale != 1.0 else x}

    def plot(self, sample: dict[str, Any], ax=None):
        """Show one sample's image."""
        import matplotlib.pyplot as plt

        ax = ax or plt.subplots(figsize=(3, 3))[1]
        ax.imshow(sample["image"].permute(1, 2, 0).clamp(0, 1).numpy())
        ax.axis("off")
        return ax
