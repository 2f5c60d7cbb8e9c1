"""Caption sets for image-text retrieval: Karpathy JSON and precomp text files, with an explicit caption index.

Formats:

* **Karpathy JSON** (``dataset*.json``): ``{"images": [{"filename", "split", "sentences": [{"raw"}, ...]}, ...]}``;
  the number of sentences may vary per image.
* **COCO captions** (``captions_{split}[2017].json``, or one JSON with a ``split`` field per image):
  ``{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}``; captions are joined to images by
  ``image_id`` (an image's captions in file order), the split comes from the file name or the ``split`` field.
* **precomp** (``{split}_caps.txt`` + ``{split}_filename.txt``): one caption per line, an image's captions on
  consecutive lines; the file-name list has either one line per caption or one line per image (then every image
  has ``n_captions / n_images`` captions). An explicit ``{split}_cap2img.txt`` (one 0-based index into the
  file-name list per caption) overrides both and allows any number of captions per image.

The caption-to-image map is always an explicit array built from the files (never ``j // 5``), and every count is
checked.

Joining caption-file names to image files (:class:`ImageResolver`) rests on evidence, never on a naming assumption:

1. an explicit map (``image_map``, a CSV of ``name,path`` rows), when given, for every name it lists;
2. the exact relative path under the image root;
3. the file name, anywhere under the root, when exactly one file has it;
4. the file stem with any image extension (``.tif`` names find ``.jpg`` files), when exactly one file has it;
5. the **UCM-Captions numbering** (``N.tif`` -> ``sorted(classes)[(N-1)//100]``, image ``(N-1) % 100``), only when
   the caption set is UCM-Captions (its names are exactly the numbers 1..2100, over all splits) and the image root
   is UC Merced (21 class folders of 100 images ``<class>00 .. <class>99``).

Two files that match one name (``port_10.jpg`` beside ``port_10.png``) are an error, and so is any name no rule
finds: numeric names of another release (Sydney-Captions ``1.tif`` .. ``613.tif``) over a UC Merced folder fail
with the first unmatched name and the fix (``--image-map``). :attr:`ImageResolver.report` counts how every name
was joined.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rswb.data.errors import CaptionMismatchError, DataFormatError, DatasetNotFoundError, require_exists
from rswb.data.scenes import IMAGE_EXTS
from rswb.utils import deprecated_names

_WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    "a an the of and or in on at to is are there it its this that with by for from as some many two three be".split()
)


def tokenize(caption: str) -> list[str]:
    """Lower-case word tokens of a caption (letters and digits; punctuation dropped)."""
    return _WORD.findall(caption.lower())


@dataclass
class CaptionSet:
    """The captions of one split and their images.

    Attributes:
        captions: caption strings ``[N_c]``.
        caption_to_image: image index of every caption ``[N_c]`` (int64), into ``image_names``.
        image_names: file name of every image ``[N_i]`` as written in the caption files.
        split: the split these captions belong to.
        source: the file(s) they were read from.
        scenes: optional scene label per image (e.g. from the Karpathy JSON ``scene`` field).
    """

    captions: list[str]
    caption_to_image: np.ndarray
    image_names: list[str]
    split: str
    source: Path | None = None
    scenes: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_captions(self) -> int:
        """Number of captions."""
        return len(self.captions)

    @property
    def num_images(self) -> int:
        """Number of images."""
        return len(self.image_names)

    def captions_per_image(self) -> np.ndarray:
        """Caption count of every image ``[N_i]``."""
        return np.bincount(self.caption_to_image, minlength=self.num_images)

    def captions_of(self, image: int) -> list[str]:
        """All captions of image ``image``."""
        return [self.captions[j] for j in np.flatnonzero(self.caption_to_image == image)]

    def stats(self, top_words: int = 20) -> dict[str, Any]:
        """Text statistics: counts, captions per image, caption length, vocabulary, duplicate rate, frequent words."""
        per_image = self.captions_per_image()
        tokens = [tokenize(c) for c in self.captions]
        lengths = np.array([len(t) for t in tokens]) if tokens else np.zeros(0)
        words = Counter(w for t in tokens for w in t)
        content = Counter({w: n for w, n in words.items() if w not in STOPWORDS})
        distinct = len(set(self.captions))
        return {
            "split": self.split,
            "images": self.num_images,
            "captions": self.num_captions,
            "captions_per_image": _summary(per_image),
            "words_per_caption": _summary(lengths),
            # a caption with no word (" .", "-") is as empty as a blank line
            "empty_captions": int(sum(1 for t in tokens if not t)),
            "vocabulary": len(words),
            "distinct_captions": distinct,
            "duplicate_rate": 1.0 - distinct / max(self.num_captions, 1),
            "top_words": content.most_common(top_words),
        }


def _summary(x: np.ndarray) -> dict[str, float]:
    if not x.size:
        return {"min": 0, "mean": 0.0, "max": 0}
    return {"min": int(x.min()), "mean": float(x.mean()), "max": int(x.max())}


def _read_lines(path: Path, keep_blank: bool = False) -> list[str]:
    """Stripped lines of a text file; trailing blank lines are dropped unless ``keep_blank``."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataFormatError(path, f"not UTF-8 text ({err})", "a UTF-8 text file, one entry per line") from err
    except OSError as err:  # a folder where the file belongs, a symlink loop, no permission
        raise DataFormatError(path, f"cannot read the file ({err.strerror or err})",
                              "a readable UTF-8 text file, one entry per line") from err
    lines = [ln.strip() for ln in text.splitlines()]  # splitlines: a final newline adds no empty line
    while not keep_blank and lines and not lines[-1]:
        lines.pop()
    return lines


def precomp_split_names(root: str | Path) -> list[str]:
    """The precomp splits of a folder: every ``{split}`` with both ``{split}_caps.txt`` and ``{split}_filename.txt``.

    Raises:
        DatasetNotFoundError: a split has one of the two files but not the other (it would otherwise be dropped
            without a word).
    """
    root = Path(root)
    caps = {p.name[: -len("_caps.txt")] for p in root.glob("*_caps.txt")}
    names = {p.name[: -len("_filename.txt")] for p in root.glob("*_filename.txt")}
    for split in sorted(caps ^ names):
        have, lack = (f"{split}_caps.txt", f"{split}_filename.txt") if split in caps else \
            (f"{split}_filename.txt", f"{split}_caps.txt")
        raise DatasetNotFoundError(root / lack, f"split {split!r} has {have} but no {lack}",
                                   f"both files of the split, or neither (remove {have} to drop the split)")
    return split_order(caps)


def split_order(splits: Iterable[str]) -> list[str]:
    """Split names in the usual order: train, restval, val, test, then any others sorted."""
    splits = set(splits)
    known = ["train", "restval", "val", "test"]
    return [s for s in known if s in splits] + sorted(splits - set(known))


def read_precomp(root: str | Path, split: str) -> CaptionSet:
    """Read ``{split}_caps.txt`` + ``{split}_filename.txt`` (and ``{split}_cap2img.txt`` if present) from ``root``.

    Raises:
        DatasetNotFoundError: a caption or file-name file is missing.
        CaptionMismatchError: the counts cannot be reconciled, or an index is out of range.
    """
    root = require_exists(root, "caption folder")
    caps_path, names_path = root / f"{split}_caps.txt", root / f"{split}_filename.txt"
    for p in (caps_path, names_path):
        if not p.exists():
            available = sorted(f.name for f in root.glob("*_caps.txt"))
            raise DatasetNotFoundError(p, f"caption file for split {split!r} is missing",
                                       f"{caps_path.name} and {names_path.name} (found: {available or 'none'})")
    names = _read_lines(names_path)
    index_path = root / f"{split}_cap2img.txt"
    n_index = len(_read_lines(index_path)) if index_path.exists() else None

    def fits(n_caps: int) -> bool:
        if n_index is not None:
            return n_caps == n_index
        return n_caps == len(names) or (bool(names) and n_caps % len(names) == 0)

    # Trailing empty caption lines are either stray blank lines at the end of the file or placeholder captions
    # that keep an image's caption count (as RSITMD uses them): keep them only when the counts need them.
    with_blanks = _read_lines(caps_path, keep_blank=True)
    caps = list(with_blanks)
    while caps and not caps[-1]:
        caps.pop()
    if not fits(len(caps)) and fits(len(with_blanks)):
        caps = with_blanks
    # Empty caption lines are kept: real sets (RSITMD train has 20) use them as placeholders so that every image
    # still has its fixed number of lines. An empty file name, however, cannot point at an image.
    empty = [i + 1 for i, s in enumerate(names) if not s]
    if empty:
        raise DataFormatError(names_path, f"{len(empty)} empty line(s), first at line {empty[0]}", "no blank lines")
    n_c, n_n = len(caps), len(names)
    if n_c == 0 or n_n == 0:
        empty_file = caps_path if n_c == 0 else names_path
        other = names_path if n_c == 0 else caps_path
        raise CaptionMismatchError(empty_file, f"holds no lines ({n_c} captions, {n_n} file names in {other})",
                                   "at least one caption and one file name")
    if index_path.exists():
        raw = _read_lines(index_path)
        if len(raw) != n_c:
            raise CaptionMismatchError(index_path, f"{len(raw)} index lines for {n_c} captions in {caps_path.name}",
                                       "one image index per caption")
        try:
            idx = np.array([int(s) for s in raw], dtype=np.int64)
        except ValueError as err:
            raise DataFormatError(index_path, f"non-integer image index ({err})", "0-based integers") from err
        if idx.size and (idx.min() < 0 or idx.max() >= n_n):
            raise CaptionMismatchError(index_path, f"image indices {idx.min()}..{idx.max()}",
                                       f"0..{n_n - 1} (rows of {names_path.name})")
        image_names = names
    elif n_n == n_c:
        # One file name per caption: an image is a distinct name (first appearance order).
        order: dict[str, int] = {}
        idx = np.array([order.setdefault(n, len(order)) for n in names], dtype=np.int64)
        image_names = list(order)
    elif n_n and n_c % n_n == 0:
        per = n_c // n_n
        idx = np.repeat(np.arange(n_n, dtype=np.int64), per)
        image_names = names
    else:
        raise CaptionMismatchError(caps_path, f"{n_c} captions but {n_n} file names in {names_path.name}",
                                   "one file name per caption, the same number of captions per file name "
                                   f"(a multiple of {n_n}), or an explicit {index_path.name}")
    return CaptionSet(caps, idx, image_names, split, source=caps_path)


def _sentences(path: Path, img: dict[str, Any]) -> list[str]:
    """The raw caption strings of one Karpathy image entry (sentence dicts with ``raw``, or plain strings)."""
    sents = img["sentences"]
    if not isinstance(sents, list):
        raise DataFormatError(path, f"image {img['filename']!r}: 'sentences' is a {type(sents).__name__}",
                              'a list of {"raw": "..."} sentence objects')
    out = []
    for s in sents:
        if isinstance(s, str):
            out.append(s.strip())
        elif isinstance(s, dict) and isinstance(s.get("raw"), str):
            out.append(s["raw"].strip())
        else:
            raise DataFormatError(path, f"image {img['filename']!r}: a sentence without a 'raw' string ({s!r:.60})",
                                  'sentence objects {"raw": "...", ...}')
    return out


def read_karpathy(path: str | Path, split: str | Sequence[str] = "train") -> CaptionSet:
    """Read one split (or several, or ``"all"``) of a Karpathy-style JSON caption file.

    ``"val"`` and ``"restval"`` are kept as they are written; pass ``split=("train", "restval")`` to merge them.

    Raises:
        DatasetNotFoundError: the file is missing.
        DataFormatError: invalid JSON, or an image entry without ``filename``/``sentences``.
    """
    path = require_exists(path, "Karpathy caption JSON")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataFormatError(path, f"invalid JSON ({err})", 'a Karpathy file {"images": [...]}') from err
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataFormatError(path, "no 'images' list at the top level", 'a Karpathy file {"images": [...]}')
    wanted = None if split == "all" else ({split} if isinstance(split, str) else set(split))
    caps, idx, names, scenes = [], [], [], []
    for k, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "filename" not in img or "sentences" not in img:
            raise DataFormatError(path, f"images[{k}] lacks 'filename' or 'sentences'", "both keys in every entry")
        if wanted is not None and img.get("split") not in wanted:
            continue
        sents = _sentences(path, img)
        if not sents:
            raise CaptionMismatchError(path, f"image {img['filename']!r} has no sentences", ">= 1 caption per image")
        i = len(names)
        names.append(str(Path(img.get("filepath", "")) / img["filename"]) if img.get("filepath") else img["filename"])
        scenes.append(str(img.get("scene", img.get("class", ""))))
        caps.extend(sents)
        idx.extend([i] * len(sents))
    name = split if isinstance(split, str) else "+".join(split)
    if not names:
        found = sorted({str(img.get("split")) for img in data["images"] if isinstance(img, dict)})
        raise DataFormatError(path, f"no images in split {name!r}", f"one of the splits present: {found}")
    return CaptionSet(caps, np.array(idx, dtype=np.int64), names, name, source=path,
                      scenes=scenes if any(scenes) else None)


def find_karpathy_json(root: Path) -> Path | None:
    """The Karpathy JSON of a caption folder (``dataset*.json``), if any."""
    if root.is_file() and root.suffix == ".json":
        return root
    hits = sorted(root.glob("dataset*.json")) if root.is_dir() else []
    return hits[0] if hits else None


_COCO_SPLIT = re.compile(r"(?<![a-z])(train|restval|val|test)(?:\d*)(?![a-z])", re.IGNORECASE)


def _is_coco_file(path: Path) -> bool:
    """Whether a JSON file is COCO-style captions (``annotations`` beside ``images``); cheap for the usual names."""
    if path.name.startswith("captions"):
        return True
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "annotations" in data and "images" in data


def find_coco_json(root: Path) -> list[Path]:
    """The COCO caption files of a caption folder (``captions*.json``), or ``[root]`` for a COCO JSON file."""
    if root.is_file():
        return [root] if root.suffix == ".json" and _is_coco_file(root) else []
    return sorted(root.glob("captions*.json")) if root.is_dir() else []


def coco_split_of(path: Path) -> str | None:
    """The split named by a COCO file name (``captions_val2017.json`` -> ``val``), or ``None``."""
    m = _COCO_SPLIT.search(path.stem)
    return m.group(1).lower() if m else None


def _load_coco(path: Path) -> tuple[list[dict[str, Any]], dict[Any, list[str]]]:
    """Validated ``images`` and the captions of every image id, in file order."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataFormatError(path, f"invalid JSON ({err})", 'COCO captions {"images": [...], "annotations": [...]}') \
            from err
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or \
            not isinstance(data.get("annotations"), list):
        raise DataFormatError(path, "no 'images' and 'annotations' lists at the top level",
                              'COCO captions {"images": [{"id", "file_name"}], "annotations": [{"image_id", '
                              '"caption"}]}')
    seen: set[Any] = set()
    for k, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
            raise DataFormatError(path, f"images[{k}] lacks 'id' or a 'file_name' string", "both in every entry")
        if img["id"] in seen:
            raise DataFormatError(path, f"images[{k}]: image id {img['id']!r} appears twice", "unique image ids")
        seen.add(img["id"])
    caps: dict[Any, list[str]] = {}
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
            raise DataFormatError(path, f"annotations[{k}] lacks 'image_id' or a 'caption' string",
                                  "both in every annotation")
        if ann["image_id"] not in seen:
            raise CaptionMismatchError(path, f"annotations[{k}] refers to image id {ann['image_id']!r}, which is "
                                       "not in 'images'", "every caption's image listed under 'images'")
        caps.setdefault(ann["image_id"], []).append(ann["caption"].strip())
    return data["images"], caps


def read_coco(root: str | Path, split: str = "train") -> CaptionSet:
    """Read one split (or ``"all"``) of COCO-style caption JSON: a folder of ``captions_{split}*.json`` or one file.

    The split of an image is its ``split`` field when present, else the split its file name says
    (``captions_val2017.json`` -> ``val``). Captions are joined to images by ``image_id`` (never by position).

    Raises:
        DatasetNotFoundError: no COCO caption file.
        DataFormatError: invalid JSON, missing keys, duplicate image ids, an image whose split is unknown, or no
            image in the split.
        CaptionMismatchError: a caption of an unlisted image, or an image without captions.
    """
    root = require_exists(root, "COCO caption JSON")
    files = find_coco_json(root)
    if not files:
        raise DatasetNotFoundError(root / "captions_train.json", "no COCO caption JSON found",
                                   "captions_{split}.json files with 'images' and 'annotations'")
    caps, idx, names = [], [], []
    for f in files:
        file_split = coco_split_of(f)
        if split != "all" and file_split is not None and file_split != split and len(files) > 1:
            continue  # another split's file
        images, by_id = _load_coco(f)
        for k, img in enumerate(images):
            img_split = img.get("split", file_split)
            if img_split is None and split != "all":
                raise DataFormatError(f, f"images[{k}] has no 'split' field and the file name names no split",
                                      "captions_{split}.json, or a 'split' field in every image")
            if split != "all" and img_split != split:
                continue
            sents = by_id.get(img["id"], [])
            if not sents:
                raise CaptionMismatchError(f, f"image {img['file_name']!r} (id {img['id']!r}) has no captions",
                                           ">= 1 annotation per image")
            i = len(names)
            names.append(img["file_name"])
            caps.extend(sents)
            idx.extend([i] * len(sents))
    if not names:
        raise DataFormatError(root, f"no images in split {split!r}", f"one of the splits present: {coco_splits(root)}")
    return CaptionSet(caps, np.array(idx, dtype=np.int64), names, split, source=files[0] if len(files) == 1 else root)


def coco_splits(root: Path) -> list[str]:
    """The splits a COCO caption folder or file holds (from file names and ``split`` fields)."""
    out: set[str] = set()
    for f in find_coco_json(root):
        fs = coco_split_of(f)
        try:
            images = json.loads(f.read_text(encoding="utf-8")).get("images", [])
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            images = []
        fields = {str(i["split"]) for i in images if isinstance(i, dict) and "split" in i}
        out |= fields or ({fs} if fs else set())
    return sorted(out)


def read_captions(root: str | Path, split: str = "train", fmt: str = "auto") -> CaptionSet:
    """Read a caption set in any supported format.

    Args:
        root: caption folder (precomp files, ``dataset*.json`` or ``captions_*.json``) or a JSON file.
        split: ``"train"``, ``"val"``, ``"test"`` (or ``"all"`` for JSON).
        fmt: ``"precomp"``, ``"karpathy"``, ``"coco"`` or ``"auto"`` (precomp when ``{split}_caps.txt`` exists,
            else a Karpathy ``dataset*.json``, else COCO ``captions*.json``; a JSON file by its content).
    """
    root = require_exists(root, "caption set")
    if fmt == "auto":
        if root.is_dir() and ((root / f"{split}_caps.txt").exists() or (root / f"{split}_filename.txt").exists()):
            fmt = "precomp"
        elif find_karpathy_json(root) is not None and not find_coco_json(root):
            fmt = "karpathy"
        elif find_coco_json(root):
            fmt = "coco"
        else:
            fmt = "karpathy"
    if fmt == "precomp":
        return read_precomp(root, split)
    if fmt == "coco":
        return read_coco(root, split)
    js = find_karpathy_json(root)
    if js is None:
        raise DatasetNotFoundError(root / f"{split}_caps.txt", "no caption files found",
                                   "precomp {split}_caps.txt + {split}_filename.txt, or a Karpathy dataset*.json")
    return read_karpathy(js, split)


def caption_split_names(root: str | Path, fmt: str = "auto") -> list[str]:
    """The splits a caption set holds (precomp file pairs, COCO file names and fields, Karpathy ``split`` fields).

    Raises:
        DataError: the caption files are broken (a precomp split with one of its two files, invalid JSON, ...).
    """
    root = require_exists(root, "caption set")
    if fmt in ("auto", "precomp") and root.is_dir() and (any(root.glob("*_caps.txt"))
                                                         or any(root.glob("*_filename.txt"))):
        return precomp_split_names(root)
    if fmt in ("auto", "coco") and find_coco_json(root):
        return split_order(coco_splits(root))
    js = find_karpathy_json(root)
    if js is None:
        return []
    read_karpathy(js, "all")  # validates the file, with errors naming it
    return split_order(str(i.get("split")) for i in json.loads(js.read_text(encoding="utf-8"))["images"])


UCM_CAPTIONS_IMAGES = 2100  # UCM-Captions: images 1.tif .. 2100.tif, 100 per UC Merced class in sorted class order
_UCM_CLASSES, _UCM_PER_CLASS = 21, 100
JOIN_RULES = ("image map", "relative path", "file name", "file stem", "UCM-Captions numbering")


def read_image_map(path: str | Path) -> dict[str, str]:
    """Read an explicit caption-name -> image-path map: a CSV with ``name,path`` rows (an optional header row).

    Paths may be absolute or relative to the image root. Raises :class:`DataFormatError` on a malformed row or a
    name listed twice.
    """
    import csv

    p = require_exists(path, "image map")
    out: dict[str, str] = {}
    try:
        rows = list(csv.reader(p.read_text(encoding="utf-8").splitlines()))
    except UnicodeDecodeError as e:
        raise DataFormatError(p, f"not UTF-8 text ({e.reason} at byte {e.start})", "a CSV of name,path rows") from e
    for i, row in enumerate(rows, start=1):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2:
            raise DataFormatError(p, f"line {i} has {len(row)} fields", "two: caption-file name, image path")
        name, target = row[0].strip(), row[1].strip()
        if i == 1 and (name.lower(), target.lower()) in {("name", "path"), ("filename", "path"), ("name", "image")}:
            continue  # header
        if name in out:
            raise DataFormatError(p, f"line {i}: {name!r} is mapped twice", "one row per caption-file name")
        out[name] = target
    if not out:
        raise DataFormatError(p, "no rows", "a CSV of name,path rows")
    return out


def is_ucm_captions(names: Sequence[str]) -> bool:
    """Whether caption-file names are UCM-Captions': exactly the numbers 1..2100 (over all splits), any extension."""
    stems = {Path(n).stem for n in names}
    return len(stems) == UCM_CAPTIONS_IMAGES and all(s.isdigit() for s in stems) and \
        {int(s) for s in stems} == set(range(1, UCM_CAPTIONS_IMAGES + 1))


class ImageResolver:
    """Find the image file of every caption-file name under an image root, by the rules of the module docstring.

    Args:
        image_root: the folder holding the images.
        all_names: every image name of the caption set, over all its splits: the evidence that decides whether the
            UCM-Captions numbering applies (None: it never applies).
        image_map: a CSV of ``name,path`` rows (see :func:`read_image_map`), or the mapping itself.

    Attributes:
        report: how many names each rule joined so far (``{rule: count}``, rules of :data:`JOIN_RULES`).
        ucm_numbering: whether the UCM-Captions numbering applies (and why not, in :attr:`ucm_reason`).
    """

    def __init__(self, image_root: str | Path, all_names: Sequence[str] | None = None,
                 image_map: str | Path | dict[str, str] | None = None):
        self.root = require_exists(image_root, "image root")
        if not self.root.is_dir():
            raise DataFormatError(self.root, "is a file", "a folder holding the images")
        self.map_source = None if image_map is None or isinstance(image_map, dict) else Path(image_map)
        self.image_map = read_image_map(image_map) if self.map_source is not None else dict(image_map or {})
        by_name: dict[str, list[Path]] = {}
        by_stem: dict[str, list[Path]] = {}
        for p in sorted(self.root.rglob("*")):
            if p.suffix.lower() in IMAGE_EXTS and p.is_file():
                by_name.setdefault(p.name, []).append(p)
                by_stem.setdefault(p.stem, []).append(p)
        self.by_name, self.by_stem = by_name, by_stem
        images = self.root / "Images" if (self.root / "Images").is_dir() else self.root
        self.ucm_classes = sorted(d.name for d in images.iterdir() if d.is_dir() and not d.name.startswith("."))
        self.ucm_numbering, self.ucm_reason = self._ucm_evidence(images, all_names)
        self.report: Counter[str] = Counter()

    def _ucm_evidence(self, images: Path, all_names: Sequence[str] | None) -> tuple[bool, str]:
        """Whether the numbering applies: a UCM-Captions name set over a complete UC Merced folder."""
        if all_names is None:
            return False, "the caption set's names were not given"
        if not is_ucm_captions(all_names):
            n = len({Path(x).stem for x in all_names})
            return False, f"the caption set names {n} images, not UCM-Captions' numbers 1..{UCM_CAPTIONS_IMAGES}"
        if len(self.ucm_classes) != _UCM_CLASSES:
            return False, f"{images} has {len(self.ucm_classes)} class folders, not UC Merced's {_UCM_CLASSES}"
        for c in self.ucm_classes:
            want = {f"{c}{i:02d}" for i in range(_UCM_PER_CLASS)}
            have = {p.stem for p in (images / c).iterdir() if p.suffix.lower() in IMAGE_EXTS}
            if have != want:
                return False, f"{images / c} does not hold exactly {c}00 .. {c}{_UCM_PER_CLASS - 1}"
        return True, "UCM-Captions names over a UC Merced folder of 21 x 100 images"

    def _unique(self, hits: list[Path] | None, name: str) -> Path | None:
        if not hits:
            return None
        if len(hits) > 1:
            raise CaptionMismatchError(self.root, f"{name!r} matches {len(hits)} files: "
                                       + ", ".join(str(h.relative_to(self.root)) for h in hits[:4]),
                                       "one image file per caption-file name (remove the duplicate, or give "
                                       "--image-map FILE.csv)")
        return hits[0]

    def lookup(self, name: str) -> tuple[Path | None, str | None]:
        """The path of image ``name`` and the rule that found it (``(None, None)`` when none does)."""
        if name in self.image_map:
            target = Path(self.image_map[name]).expanduser()
            target = target if target.is_absolute() else self.root / target
            if not target.is_file():
                raise DatasetNotFoundError(self.map_source or target, f"maps {name!r} to {target}, which is not a "
                                           "file", "an existing image path (absolute or relative to the image root)")
            return target, "image map"
        direct = self.root / name
        if direct.is_file() and direct.suffix.lower() in IMAGE_EXTS:
            return direct, "relative path"
        p = Path(name)
        hit = self._unique(self.by_name.get(p.name), name)
        if hit is not None:
            return hit, "file name"
        hit = self._unique(self.by_stem.get(p.stem), name)
        if hit is not None:
            return hit, "file stem"
        if self.ucm_numbering and p.stem.isdigit() and 1 <= int(p.stem) <= UCM_CAPTIONS_IMAGES:
            n = int(p.stem) - 1
            return self.by_stem[f"{self.ucm_classes[n // 100]}{n % 100:02d}"][0], "UCM-Captions numbering"
        return None, None

    def __call__(self, name: str) -> Path | None:
        """The path of image ``name``, or ``None`` when no rule finds it (counted in :attr:`report`)."""
        path, rule = self.lookup(name)
        if rule is not None:
            self.report[rule] += 1
        return path

    def resolve_all(self, names: Sequence[str], caption_file: Path | None = None) -> list[Path]:
        """Paths of all ``names``; raises :class:`CaptionMismatchError` naming the first that no rule finds."""
        paths = [self(n) for n in names]
        missing = [n for n, p in zip(names, paths) if p is None]
        if missing:
            hint = "every image named by the caption files under the image root"
            if Path(missing[0]).stem.isdigit():
                hint = (f"image files named as the captions say; the UCM-Captions numbering does not apply, as "
                        f"{self.ucm_reason}. Fix: give --image-map FILE.csv (rows: caption-file name, image path), "
                        f"or the image folder of this caption release")
            raise CaptionMismatchError(caption_file or self.root,
                                       f"{len(missing)} of {len(names)} captioned images not found under "
                                       f"{self.root} (first: {missing[0]!r})", hint)
        return paths  # type: ignore[return-value]

    def describe(self) -> str:
        """One line: how the names resolved so far were joined (e.g. ``2100 by UCM-Captions numbering``)."""
        return ", ".join(f"{n} by {rule}" for rule, n in self.report.most_common()) or "nothing joined yet"


def caption_set_names(root: str | Path, fmt: str = "auto") -> list[str]:
    """Every image name of a caption set over all its splits (the evidence :class:`ImageResolver` joins by)."""
    root = Path(root)
    names: list[str] = []
    if fmt in ("auto", "precomp") and root.is_dir() and any(root.glob("*_filename.txt")):
        for f in sorted(root.glob("*_filename.txt")):
            names += [line.strip() for line in f.read_text(encoding="utf-8", errors="replace").splitlines()
                      if line.strip()]
        return names
    if fmt in ("auto", "coco") and find_coco_json(root):
        return read_coco(root, "all").image_names
    js = find_karpathy_json(root)
    if js is None:
        return names
    try:
        data = json.loads(js.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return names  # the reader itself reports the broken file
    images = data.get("images", []) if isinstance(data, dict) else []
    return [str(i.get("filename", "")) for i in images if isinstance(i, dict)]


def default_image_root(root: Path) -> Path | None:
    """The image folder that ships with a caption set (``images/`` beside the caption files), if any."""
    base = root if root.is_dir() else root.parent
    return base / "images" if (base / "images").is_dir() else None


def _image_text_dataset(*args: Any, **kwargs: Any) -> Any:
    """The former ``ImageTextDataset``: :meth:`rswb.data.image_text.RetrievalSplit.from_root`."""
    from rswb.data.image_text import RetrievalSplit

    return RetrievalSplit.from_root(*args, **kwargs)


__all__ = [
    "CaptionSet", "ImageResolver", "JOIN_RULES", "caption_set_names", "default_image_root",
    "coco_splits", "find_coco_json", "find_karpathy_json", "is_ucm_captions", "read_captions", "read_coco",
    "read_image_map",
    "read_karpathy", "read_precomp", "tokenize",
]


# The former names, served with a FutureWarning.
__getattr__ = deprecated_names("rswb.data.captions", {"caption_splits": "caption_split_names",
                                                     "precomp_splits": "precomp_split_names",
                                                     "ImageTextDataset": "RetrievalSplit.from_root"},
                               {**globals(), "RetrievalSplit.from_root": _image_text_dataset})
