"""Format detection and human-readable summaries of a data path (``rswb data check``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rswb.data.captions import (
    ImageResolver,
    caption_set_names,
    caption_split_names,
    default_image_root,
    find_coco_json,
    find_karpathy_json,
    read_captions,
)
from rswb.data.errors import DataFormatError, require_exists
from rswb.data.mspan import MS_NAMES, PAN_NAMES, MSPANScene, load_mspan
from rswb.data.scenes import IMAGE_EXTS, SceneFolder, check_images, split_mask

FORMATS = ("mspan_folder", "mspan_mat", "scene_folder", "captions_precomp", "captions_karpathy", "captions_coco")


def detect_format(path: str | Path) -> str:
    """Which rswb format ``path`` is in: one of :data:`FORMATS`.

    Raises:
        DatasetNotFoundError: ``path`` does not exist.
        DataFormatError: it is none of the known formats.
    """
    path = require_exists(path, "data path")
    if path.is_file():
        if path.suffix.lower() == ".mat":
            return "mspan_mat"
        if path.suffix.lower() == ".json":
            return "captions_coco" if find_coco_json(path) else "captions_karpathy"
    elif any((path / n).exists() for n in MS_NAMES + PAN_NAMES):
        return "mspan_folder"
    elif any(path.glob("*_caps.txt")) or any(path.glob("*_filename.txt")):
        return "captions_precomp"
    elif find_karpathy_json(path) is not None:
        return "captions_karpathy"
    elif find_coco_json(path):  # before the scene-folder test: a COCO folder often holds images/ beside its JSON
        return "captions_coco"
    else:
        images = path / "Images" if (path / "Images").is_dir() else path
        subdirs = [d for d in images.iterdir() if d.is_dir() and not d.name.startswith(".")]
        if subdirs and any(f.suffix.lower() in IMAGE_EXTS for d in subdirs[:3] for f in d.iterdir()):
            return "scene_folder"
    raise DataFormatError(path, "unrecognised data format",
                          "an MS+PAN folder (ms4.tif + pan.tif), a .mat pair, a scene folder (<class>/<images>), "
                          "precomp captions ({split}_caps.txt), a Karpathy dataset*.json or COCO captions_*.json")


def summarize(path: str | Path, image_root: str | Path | None = None,
              image_map: str | Path | None = None) -> dict[str, Any]:
    """Read ``path`` with the matching reader (validating everything) and return a summary dict.

    Args:
        path: the data path.
        image_root: for caption sets, where their images are (default: ``images/`` beside the captions).
        image_map: for caption sets, a CSV of ``name,path`` rows joining caption-file names to images explicitly.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt.startswith("mspan"):
        return {"format": fmt, "path": str(path), **_summarize_mspan(load_mspan(path))}
    if fmt == "scene_folder":
        return {"format": fmt, "path": str(path), **_summarize_scenes(path)}
    return {"format": fmt, "path": str(path), **_summarize_captions(path, fmt, image_root, image_map)}


def registration_correlation(scene: MSPANScene) -> float:
    """Pearson correlation of PAN block-averaged to the MS grid with the MS band-mean intensity.

    A co-registered pair gives a high value (PAN is roughly a weighted band sum); a shifted or wrong pair does not.
    """
    _, h, w = scene.ms.shape
    r = scene.ratio
    pan = scene.pan[0].astype(np.float64).reshape(h, r, w, r).mean(axis=(1, 3))
    ms = scene.ms.astype(np.float64).mean(axis=0)
    return float(np.corrcoef(pan.ravel(), ms.ravel())[0, 1])


def _summarize_mspan(scene: MSPANScene) -> dict[str, Any]:
    h, w = scene.shape
    out: dict[str, Any] = {
        "bands": scene.bands,
        "ms_size": [h, w],
        "pan_size": list(scene.pan.shape[1:]),
        "ratio": scene.ratio,
        "crs": (scene.crs[:60] + "...") if scene.crs and len(scene.crs) > 60 else scene.crs,
        "ms_band_min": [float(v) for v in scene.ms.reshape(scene.bands, -1).min(1)],
        "ms_band_max": [float(v) for v in scene.ms.reshape(scene.bands, -1).max(1)],
        "pan_min_max": [float(scene.pan.min()), float(scene.pan.max())],
        "pan_ms_correlation": round(registration_correlation(scene), 4),
        "num_classes": scene.num_classes,
        "class_names": scene.class_names,
        "labels": {name: scene.class_counts(name) for name in scene.labels},
    }
    for key in ("sensor", "bit_depth"):
        if key in scene.meta:
            out[key] = scene.meta[key]
    return out


def _summarize_scenes(path: Path) -> dict[str, Any]:
    ds = SceneFolder(path)
    sizes = ds.verify()
    train = split_mask(ds.records, ds.layout, "train")
    return {
        "layout": ds.layout,
        "classes": len(ds.classes),
        "images": len(ds),
        "images_per_class": ds.class_counts(),
        "split": {"train": int(train.sum()), "query_database": int((~train).sum())},
        "image_sizes": {f"{hw[0]}x{hw[1]}": n for hw, n in sizes.most_common()},
    }


def _summarize_captions(path: Path, fmt: str, image_root: str | Path | None,
                        image_map: str | Path | None = None) -> dict[str, Any]:
    splits: dict[str, Any] = {}
    kind = {"captions_precomp": "precomp", "captions_coco": "coco"}.get(fmt, "karpathy")
    sets = [read_captions(path, s, kind) for s in caption_split_names(path, kind)]
    root = Path(image_root) if image_root is not None else default_image_root(path)
    if root is None and image_map is not None:
        root = Path(image_map).parent  # a map without --images: its relative paths are relative to the CSV
    resolver = ImageResolver(root, caption_set_names(path), image_map=image_map) if root is not None else None
    found: list[Path] = []
    for cs in sets:
        st = cs.stats(top_words=10)
        if resolver is not None:
            before = dict(resolver.report)
            paths = resolver.resolve_all(cs.image_names, cs.source)
            found += paths
            st["images_found"] = len(set(paths))
            st["join"] = {r: n - before.get(r, 0) for r, n in resolver.report.items() if n - before.get(r, 0)}
        splits[cs.split] = st
    if found:
        # Every joined image decodes: a truncated download fails here, naming the file, not in a training run.
        check_images(list(dict.fromkeys(found)), desc="decoding caption images")
    join = None
    if resolver is not None:
        join = {"rules": dict(resolver.report), "ucm_numbering": resolver.ucm_numbering, "why": resolver.ucm_reason,
                "image_map": str(resolver.map_source) if resolver.map_source else None}
    return {"image_root": str(root) if root else None, "join": join, "splits": splits}


def format_summary(summary: dict[str, Any]) -> str:
    """Render a :func:`summarize` result as an aligned plain-text report."""
    lines = [f"{summary['path']}  [{summary['format']}]"]
    fmt = summary["format"]
    if fmt.startswith("mspan"):
        lines += [
            f"  MS   {summary['bands']} bands x {summary['ms_size'][0]} x {summary['ms_size'][1]}",
            f"  PAN  1 band x {summary['pan_size'][0]} x {summary['pan_size'][1]}  (ratio {summary['ratio']})",
            f"  CRS  {summary['crs'] or 'none'}",
        ]
        if "sensor" in summary:
            lines.append(f"  sensor {summary['sensor']}, {summary.get('bit_depth', '?')}-bit")
        ranges = ", ".join(f"{lo:g}..{hi:g}" for lo, hi in zip(summary["ms_band_min"], summary["ms_band_max"]))
        lines.append(f"  MS band ranges: {ranges}")
        lines.append(f"  PAN range: {summary['pan_min_max'][0]:g}..{summary['pan_min_max'][1]:g}")
        lines.append(f"  PAN vs block-averaged MS intensity: r = {summary['pan_ms_correlation']:.3f}")
        if not summary["labels"]:
            lines.append("  labels: none")
        names = summary.get("class_names")
        for split, counts in summary["labels"].items():
            lines.append(f"  {split} labels: {sum(counts.values())} px in {len(counts)} classes")
            for c, n in counts.items():
                name = f" {names[c - 1]}" if names and c - 1 < len(names) else ""
                lines.append(f"    {c:>3}{name:<22} {n:>9} px")
    elif fmt == "scene_folder":
        lines.append(f"  layout {summary['layout']}: {summary['images']} images, {summary['classes']} classes")
        split = summary["split"]
        lines.append(f"  split: {split['train']} train / {split['query_database']} query=database")
        sizes = list(summary["image_sizes"].items())
        shown = ", ".join(f"{k} ({v})" for k, v in sizes[:3])
        rest = sum(v for _, v in sizes[3:])
        lines.append(f"  image sizes: {shown}" + (f", {len(sizes) - 3} other sizes ({rest} images)" if rest else ""))
        for c, n in summary["images_per_class"].items():
            lines.append(f"    {c:<24} {n:>6}")
    else:
        lines.append(f"  image root: {summary['image_root'] or 'none (text only)'}")
        join = summary.get("join")
        if join:
            how = ", ".join(f"{n} by {r}" for r, n in join["rules"].items())
            lines.append(f"  join: {how}" + (f" (map {join['image_map']})" if join["image_map"] else ""))
            lines.append(f"  UCM-Captions numbering: {'applies' if join['ucm_numbering'] else 'not used'} "
                         f"({join['why']})")
        for split, st in summary["splits"].items():
            cpi = st["captions_per_image"]
            found = f", {st['images_found']} image files found" if "images_found" in st else ""
            lines.append(f"  {split}: {st['images']} images, {st['captions']} captions{found}")
            lines.append(f"    captions per image {cpi['min']}..{cpi['max']} (mean {cpi['mean']:.2f}); "
                         f"words per caption {st['words_per_caption']['mean']:.1f}; vocabulary {st['vocabulary']}; "
                         f"duplicates {100 * st['duplicate_rate']:.1f} %; empty {st['empty_captions']}")
            lines.append("    frequent words: " + ", ".join(f"{w} ({n})" for w, n in st["top_words"]))
    return "\n".join(lines)


__all__ = ["FORMATS", "detect_format", "format_summary", "registration_correlation", "summarize"]
