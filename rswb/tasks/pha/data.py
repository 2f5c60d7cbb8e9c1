"""The data of a PHA run: the scene or scene folder, the few-shot draw, and each split's items.

Pixel mode cuts co-registered MS+PAN patches from a lab-format scene; scene mode turns a scene folder's images into
Wald MS+PAN pairs, or (``--encoder``) into cached features of a frozen ImageNet backbone (see :mod:`rswb.tasks.pha`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from rswb.data.errors import DataFormatError, DatasetNotFoundError
from rswb.data.features import digest
from rswb.data.mspan import MSPANScene, is_mspan_source, load_mspan
from rswb.data.patches import PatchSampler, PixelPatches
from rswb.data.splits import FewShotSplit, few_shot_split, stratified_subsample
from rswb.data.wald import SceneImages
from rswb.engine.device import select_device
from rswb.registry import create_model

if TYPE_CHECKING:
    from rswb.tasks.pha import PHAConfig

__all__ = ["ENCODER_TAPS", "PHAData", "prepare_data", "pretrain_views", "source_files"]

ENCODER_TAPS = ("s8", "s16", "head")
"""The encoder depths that become the shallow, middle and deep stage (pooled)."""


@dataclasses.dataclass
class PHAData:
    """Everything a PHA run reads: the splits, and in pixel mode the scene and its sampler.

    Attributes:
        mode: ``"pixel"`` or ``"scene"``.
        train, val, test: datasets of the few shots (repeated ``repeats`` times), validation and test items.
        split: the few-shot draw over the candidate items (pixels of the train map, or training images).
        num_classes, bands, ratio: what the model is built for.
        class_names: class names (or ``None``).
        scene: the normalised scene (pixel mode).
        sampler: its patch sampler (pixel mode).
        unlabelled: callable ``n -> batch`` of unlabelled items for the alignment terms.
        source: what was loaded (a path or ``"embedded"``).
        feature_dims: with ``--encoder``, the sizes of the cached encoder features per stage (the items are
            features, not images).
        pretrain_pool: what self-supervised pre-training draws from (:func:`pretrain_views`): ``(views, key)``,
            the unlabelled items in two views and a key over the data they come from; built on first use.
    """

    mode: str
    train: Dataset
    val: Dataset
    test: Dataset
    split: FewShotSplit
    num_classes: int
    bands: int
    ratio: int
    class_names: list[str] | None
    scene: MSPANScene | None = None
    sampler: PatchSampler | None = None
    unlabelled: Callable[[int], dict[str, Any]] | None = None
    source: str = ""
    feature_dims: tuple[int, int, int] | None = None
    pretrain_pool: Callable[[], tuple[Any, str]] | None = None


def _shots(value: float) -> int | float:
    return int(value) if float(value) >= 1 and float(value).is_integer() else float(value)


def _pixel_data(cfg: PHAConfig, path: Path | None) -> PHAData:
    if path is None:
        from rswb.data.synthetic import ensure_embedded

        path = Path(ensure_embedded("mspan"))
        source = "embedded"
    else:
        source = str(path)
    scene = load_mspan(path)
    for split in ("train", "test"):
        if split not in scene.labels:
            raise DataFormatError(scene.source, f"no '{split}' label map",
                                  "train.npy and test.npy on the MS grid (older single-map variants: split them "
                                  "into train/test maps first)")
    scene = scene.normalized(cfg.normalize)
    num_classes = scene.num_classes
    sampler = PatchSampler(scene, cfg.ms_patch)
    rows, cols, labels = scene.labelled_pixels("train")
    split = few_shot_split(labels, _shots(cfg.shots), _shots(cfg.val_shots), cfg.split_seed, num_classes)
    t_rows, t_cols, t_labels = scene.labelled_pixels("test")
    keep = stratified_subsample(t_labels, cfg.max_test, cfg.split_seed)
    train = PixelPatches(sampler, rows[split.train], cols[split.train], labels[split.train], cfg.repeats)
    val = PixelPatches(sampler, rows[split.val], cols[split.val], labels[split.val])
    test = PixelPatches(sampler, t_rows[keep], t_cols[keep], t_labels[keep])
    # Unlabelled pixels for alignment: anywhere outside the test map (the test pixels are never looked at).
    pool_r, pool_c = np.nonzero(scene.labels["test"] == 0)

    def unlabelled(n: int) -> dict[str, torch.Tensor]:
        pick = torch.randint(0, len(pool_r), (n,)).numpy()
        batch = sampler.gather(pool_r[pick], pool_c[pick])
        batch["id"] = torch.as_tensor(pool_r[pick] * sampler.width + pool_c[pick])
        return batch

    def pretrain_pool() -> tuple[Any, str]:
        from rswb.tasks.pha.pretrain import ImageViews

        def draw(n: int) -> dict[str, torch.Tensor]:
            pick = torch.randint(0, len(pool_r), (n,)).numpy()
            return {**sampler.gather(pool_r[pick], pool_c[pick]), "row": torch.as_tensor(pool_r[pick]),
                    "col": torch.as_tensor(pool_c[pick])}

        key = digest(settings=("pixel", cfg.normalize, cfg.ms_patch), files=source_files(path))
        return ImageViews(draw, cfg.jitter, cfg.ms_patch, len(pool_r)), key

    return PHAData("pixel", train, val, test, split, num_classes, scene.bands, scene.ratio, scene.class_names,
                   scene, sampler, unlabelled, source, pretrain_pool=pretrain_pool)


def _scene_data(cfg: PHAConfig, path: Path, device: torch.device) -> PHAData:
    from rswb.data.scenes import SceneFolder
    from rswb.data.wald import WaldSceneDataset

    min_size = cfg.ratio * (cfg.ms_patch - 3)  # the three stages of unpadded convolutions need 13 MS pixels
    if cfg.image_size % cfg.ratio or cfg.image_size < min_size:
        raise ValueError(f"image_size must be a multiple of ratio {cfg.ratio} and at least {min_size} (the MS image "
                         f"must have >= {cfg.ms_patch - 3} pixels for the network), got {cfg.image_size}")
    folder = SceneFolder(path, split="train")
    test_folder = folder.with_split("test")
    labels = np.asarray(folder.labels)
    num_classes = len(folder.classes)
    split = few_shot_split(labels, _shots(cfg.shots), _shots(cfg.val_shots), cfg.split_seed, num_classes)
    rest = np.concatenate([np.flatnonzero(labels[split.rest] == c)[: cfg.unlabelled_pool] for c in
                           range(num_classes)]) if cfg.unlabelled else np.zeros(0, np.int64)
    pool_idx = split.rest[np.sort(rest)] if len(rest) else np.zeros(0, np.int64)
    kw = {"image_size": cfg.image_size, "ratio": cfg.ratio, "gain_at_nyquist": cfg.mtf_gain}
    t_labels = np.asarray(test_folder.labels)
    keep = stratified_subsample(t_labels, cfg.max_test, cfg.split_seed)
    if cfg.encoder:
        return _encoded_scene_data(cfg, folder, test_folder, split, pool_idx, keep, kw, device)
    labelled_idx = np.concatenate([split.train, split.val])
    labelled = WaldSceneDataset(folder, indices=labelled_idx, **kw)
    n_train = len(split.train)
    train = SceneImages(labelled, np.arange(n_train), cfg.repeats, ids=labelled_idx)
    val = SceneImages(labelled, np.arange(n_train, len(labelled)), ids=labelled_idx)
    test = WaldSceneDataset(test_folder, indices=keep, **kw)

    def pretrain_pool() -> tuple[Any, str]:  # every training image, labels unused; decoded on first use
        from rswb.tasks.pha.pretrain import ImageViews

        every = WaldSceneDataset(folder, indices=np.arange(len(labels)), **kw)

        def draw(n: int) -> dict[str, torch.Tensor]:
            pick = torch.randperm(len(every))[:n].tolist()
            items = every.__getitems__(pick)
            return {**{k: torch.stack([s[k] for s in items]) for k in ("ms", "pan")}, "id": torch.as_tensor(pick)}

        key = digest(settings=("scene", sorted(kw.items())), files=[r.path for r in folder.records])
        return ImageViews(draw, cfg.jitter, size=len(every)), key

    unlabelled = None
    if len(pool_idx):
        pool = WaldSceneDataset(folder, indices=pool_idx, **kw)

        def unlabelled(n: int) -> dict[str, torch.Tensor]:
            pick = torch.randint(0, len(pool), (n,)).tolist()
            items = pool.__getitems__(pick)
            out = {k: torch.stack([s[k] for s in items]) for k in ("ms", "pan")}
            out["id"] = torch.as_tensor(pool_idx[pick])  # candidate index, the same numbering as "id" below
            return out

    return PHAData("scene", train, val, test, split, num_classes, 3, cfg.ratio, list(folder.classes),
                   unlabelled=unlabelled, source=str(path), pretrain_pool=pretrain_pool)


def _frozen_encoder(cfg: PHAConfig) -> torch.nn.Module:
    """``cfg.encoder`` with its pretrained weights, frozen, checked to have every ``ENCODER_TAPS`` level."""
    encoder = create_model(cfg.encoder).eval().requires_grad_(False)
    missing = [t for t in ENCODER_TAPS if t not in encoder.feature_channels]
    if missing:
        raise ValueError(f"encoder {cfg.encoder} has no feature levels {missing} (it has "
                         f"{', '.join(encoder.feature_channels)})")
    return encoder


def _encoder_features(cfg: PHAConfig, encoder: torch.nn.Module, folder, indices: np.ndarray, views: int,
                      kw: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """Pooled ``ENCODER_TAPS`` features of MS and PAN of ``folder``'s images ``indices``: ``{m: [N, views, F]}``.

    Cached on disk (:mod:`rswb.data.features`) under a key over the encoder's weights, the image files, the Wald
    settings and the views, so every seed and shot count of an experiment reuses one extraction.
    """
    from rswb.data.features import cached_images, nbytes
    from rswb.data.wald import ModalityImages, WaldSceneDataset

    paths = [folder.records[i].path for i in indices]
    pairs = functools.cache(lambda: WaldSceneDataset(folder, indices=indices, **kw))  # decoded on a miss only

    def pooled(enc, x):
        f = enc.forward_features(x)
        return torch.cat([f[t].mean((2, 3)) for t in ENCODER_TAPS], 1)

    out = {m: cached_images(encoder, lambda m=m: ModalityImages(pairs(), m), paths, output=f"{cfg.encoder}-{m}-taps",
                            fn=pooled, views=views, settings=(ENCODER_TAPS, sorted(kw.items())),
                            split=getattr(folder, "split", None), cache_dir=cfg.cache_dir,
                            device=device,
                            desc=f"{cfg.encoder} {m} ({len(paths)} x {views})")["features"]
           for m in ("ms", "pan")}
    print(f"cached {cfg.encoder} features: {len(paths)} images x {views} views x (MS, PAN), "
          f"{nbytes(out) / 2**20:.1f} MiB")
    return out


def _encoded_scene_data(cfg: PHAConfig, folder, test_folder, split: FewShotSplit, pool_idx: np.ndarray,
                        keep: np.ndarray, kw: dict, device: torch.device) -> PHAData:
    """Scene mode on a frozen encoder: the splits as :class:`~rswb.data.features.PairedViews` of cached features."""
    from rswb.data.features import PairedViews

    labels = np.asarray(folder.labels)
    encoder = _frozen_encoder(cfg)
    # The whole training split, not just this draw's images: every seed and shot count then shares one extraction.
    feats = _encoder_features(cfg, encoder, folder, np.arange(len(labels)), cfg.views, kw, device)
    tfeats = _encoder_features(cfg, encoder, test_folder, keep, 1, kw, device)

    def subset(idx: np.ndarray, **opts) -> PairedViews:
        return PairedViews({m: f[idx] for m, f in feats.items()}, labels[idx], ids=idx, **opts)

    train = subset(split.train, repeats=cfg.repeats, random_view=cfg.augment)
    val = subset(split.val)
    test = PairedViews(tfeats, np.asarray(test_folder.labels)[keep])
    unlabelled = subset(pool_idx, random_view=cfg.augment).draw if len(pool_idx) else None
    dims = tuple(encoder.feature_channels[t] for t in ENCODER_TAPS)

    def pretrain_pool() -> tuple[Any, str]:  # every training image's cached views, labels unused
        from rswb.tasks.pha.pretrain import FeatureViews

        key = digest(settings=("encoder", cfg.encoder, cfg.views, sorted(kw.items())),
                     files=[r.path for r in folder.records])
        return FeatureViews(feats), key

    return PHAData("scene", train, val, test, split, len(folder.classes), 3, cfg.ratio, list(folder.classes),
                   unlabelled=unlabelled, source=str(folder.root), feature_dims=dims, pretrain_pool=pretrain_pool)


def source_files(path: Path | None) -> list[Path]:
    """The files an MS/PAN source (a folder, a ``.mat`` pair; None: the embedded scene) is read from.

    Their identity (path, size, time) keys the pre-training caches (:func:`rswb.data.features.digest`).
    """
    if path is None:
        from rswb.data.synthetic import ensure_embedded

        path = Path(ensure_embedded("mspan"))
    path = Path(path)
    return sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]


def pretrain_views(cfg: PHAConfig, data: PHAData) -> tuple[Any, str]:
    """The unlabelled items of ``data`` in two views for pre-training, and a key over the data they come from.

    Pixel mode: patches around every pixel outside the test map (the test pixels are never looked at), overlapping
    neighbours as soft positives. Scene mode: every image of the training split (few shots, validation images and
    the rest; labels unused), as images or, with ``--encoder``, as cached encoder features in two dihedral views.
    """
    if data.pretrain_pool is None:
        raise ValueError("this data has no unlabelled items to pre-train on")
    return data.pretrain_pool()


def prepare_data(cfg: PHAConfig, device: str | torch.device | None = None) -> PHAData:
    """Load ``cfg.data`` (or the embedded scene) and draw the few-shot splits.

    With ``--encoder`` the frozen encoder fills its feature cache on ``device`` (None: the best available).

    Raises:
        DatasetNotFoundError: ``cfg.data`` does not exist.
        rswb.data.DataError: the folder is in neither format, or its files are inconsistent (the error names the
            file and what was expected).
    """
    if cfg.data is None:
        if cfg.encoder:
            raise ValueError("task pha options: --encoder works in scene mode (--data a scene folder such as UC "
                             "Merced), not on the embedded MS/PAN scene")
        return _pixel_data(cfg, None)
    path = Path(cfg.data).expanduser()
    if not path.exists():
        raise DatasetNotFoundError(path, "data path not found",
                                   "a lab-format folder (ms4.tif, pan.tif, train.npy, test.npy), a .mat MS/PAN pair, "
                                   "or a scene-classification folder")
    if is_mspan_source(path):
        if cfg.encoder:
            raise ValueError(f"task pha options: --encoder works in scene mode (a scene folder), but {path} is an "
                             f"MS/PAN scene (pixel mode)")
        return _pixel_data(cfg, path)
    return _scene_data(cfg, path, select_device(device))
