"""``rswb train retrieval``: image-text retrieval with VSE++, CLIP-style, FISVL or KAMCL on a captioned image set.

Protocol (issue 6): the caption set's train and test splits (precomp ``{split}_caps.txt`` / ``{split}_filename.txt``
or Karpathy JSON); a validation split is the set's own ``val`` split when it has one, else a seeded share of the
training **images** (with all their captions), and selects the epoch; the test split is scored once at the end.
Metrics: R@1/5/10 in both directions, mR and median ranks (:func:`rswb.metrics.retrieval_metrics_from_embeddings`),
every image against every caption of the split.

Two profiles, like the hash task:

* ``freeze_backbone=True, freeze_text=True`` (default, the CPU profile): the ImageNet EfficientNet-Lite0 and the
  pretrained MiniLM are frozen; their outputs (the image feature levels of
  :func:`rswb.models.retrieval.feature_levels`, MiniLM's token states) are computed once per image and caption,
  cached on disk (:mod:`rswb.data.features`, float16), and only the method's heads train, in seconds per epoch.
* ``freeze_backbone=False`` and/or ``freeze_text=False`` (a GPU profile): the encoders sit inside the model and
  fine-tune on images (random dihedral views as augmentation) and tokenised captions.

Scene labels (FISVL's affiliation and scene-adaptive terms) come from the Karpathy ``scene`` field, else from the
class folder of each image (UC Merced: ``Images/<class>/``). KAMCL's tag vocabulary, image tag targets and FISVL's
caption value weights are computed from the training captions only (:mod:`rswb.data.tags`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from rswb.config import option
from rswb.data.captions import (
    CaptionSet,
    ImageResolver,
    caption_set_names,
    caption_splits,
    default_image_root,
    find_karpathy_json,
    read_captions,
    read_karpathy,
)
from rswb.data.errors import DatasetNotFoundError
from rswb.data.features import cache_root, cached, digest, extract_images, extract_text_states
from rswb.data.scenes import ImageFiles, check_images, image_to_tensor, load_image
from rswb.data.splits import carve_items
from rswb.data.tags import build_tag_vocabulary, caption_values, content_words, tag_targets
from rswb.data.transforms import dihedral
from rswb.engine.device import autocast, frozen_encoder_device, select_device, to_device
from rswb.engine.task import EvalContext, Task, TaskBundle
from rswb.losses.contrastive import LearnableTemperature, hardest_negative_triplet, symmetric_info_nce
from rswb.losses.retrieval import (
    affiliation_loss,
    concept_bce,
    momentum_info_nce,
    multi_positive_info_nce,
    scene_adaptive_triplet,
    value_weighted_info_nce,
)
from rswb.metrics.retrieval import TIE_RULES, retrieval_metrics_from_embeddings
from rswb.models.momentum import FeatureQueue, MomentumEncoder
from rswb.models.retrieval import (
    METHODS,
    RetrievalNet,
    feature_levels,
    level_channels,
    make_backbone,
    make_text_encoder,
    retrieval_net,
)
from rswb.models.text import Vocabulary
from rswb.registry import register_task

__all__ = ["RetrievalConfig", "RetrievalData", "RetrievalSplit", "RetrievalTask", "prepare_data", "retrieval_task"]


@dataclasses.dataclass
class RetrievalConfig:
    """Options of ``rswb train retrieval``."""

    # Spellings of saved run configs that were renamed (read back by load_trained and --resume).
    RENAMED_OPTIONS: ClassVar[dict[str, str]] = {"val_fraction": "val_share", "momentum": "ema_momentum"}
    OWN_VALIDATION: ClassVar[bool] = True  # the set's val split, or the task's own held-out share

    data: str | None = option(None, "caption folder or Karpathy JSON; None: the embedded captions")
    images: str | None = option(None, "image root (UCM-Captions: the UC Merced folder); None: images/ beside data")
    fmt: str = option("auto", "caption format: auto | karpathy | coco | precomp",
                      choices=("auto", "karpathy", "coco", "precomp"))
    image_map: str | None = option(None, "CSV of caption-file name,image path rows: an explicit caption-image join")
    method: str = option("clip", "vsepp | clip | fisvl | kamcl", choices=("vsepp", "clip", "fisvl", "kamcl"))
    backbone: str = option("efficientnet_lite0", "image backbone: efficientnet_lite0 | small_cnn | hf_backbone")
    pretrained: bool = option(True, "load the backbone's ImageNet weights")
    freeze_backbone: bool = option(True, "train on cached frozen image features (CPU profile)")
    backbone_path: str | None = option(None, "checkpoint folder of --backbone hf_backbone (Swin, ResNet, ...)")
    text_encoder: str = option("minilm", "minilm (offline) | hf_text (--text-path) | gru_text (train vocabulary)")
    text_path: str | None = option(None, "checkpoint folder of --text-encoder hf_text (BERT, ...)")
    freeze_text: bool = option(True, "keep the text transformer frozen and train on its cached token states")
    image_size: int = option(224, "images are resized to this square size", low=8)
    embed_dim: int = option(512, "joint embedding size", low=1)
    max_words: int = option(30, "captions are cut to this many words", low=1)
    temperature: float = option(0.07, "softmax temperature (learnable for clip/fisvl, fixed for kamcl)", low=0,
                                low_open=True)
    margin: float = option(0.2, "hinge margin of the hardest-negative terms", low=0)
    local_branch: bool = option(True, "fisvl: multi-scale local branch")
    fgis_steps: int = option(2, "fisvl: FGIS graph steps (0: off)", low=0)
    affil_weight: float = option(1.0, "fisvl: weight of the affiliation (class-centre) loss", low=0)
    hard_weight: float = option(1.0, "fisvl: weight of the scene-adaptive hard-negative loss", low=0)
    beta1: float = option(0.0, "fisvl: hard negative from another scene weighs exp(beta1 * epoch)")
    beta2: float = option(0.05, "fisvl: hard negative from the same scene weighs exp(beta2 * epoch)")
    value_stage: float = option(0.5, "fisvl: share of the epochs before value-guided stage 2 (1: no stage 2)", low=0,
                                high=1)
    hierarchical: bool = option(True, "kamcl: hierarchical aggregator")
    num_tags: int = option(512, "kamcl: tag vocabulary size (0: no knowledge-aided learning)", low=0)
    queue_size: int = option(8000, "kamcl: keys per modality queue (0: in-batch keys only)", low=0)
    ema_momentum: float = option(0.995, "kamcl: EMA momentum of the key encoders", low=0, high=1, high_open=True)
    moco_weight: float = option(10.0, "kamcl: weight of the momentum InfoNCE", low=0)
    concept_weight: float = option(10.0, "kamcl: weight of the concept BCE in step 2", low=0)
    knowledge_stage: float = option(0.5, "kamcl: share of the epochs before knowledge alignment starts", low=0,
                                    high=1)
    ties: str = option("expected", "tie rule of the headline R@K (validation selection and test): expected | "
                       "optimistic | pessimistic | published; the other rules are reported beside it",
                       choices=TIE_RULES)
    val_share: float = option(0.1, "share of the training images held out when the set has no val split (this "
                              "task's own split; the engine's --val-fraction is not used)", low=0, low_open=True,
                              high=1, high_open=True)
    split_seed: int = option(0, "seed of that held-out share")
    max_images: int | None = option(None, "use at most this many images per split (quick runs)", low=1)
    cache_dir: str | None = option(None, "feature cache folder (default: $RSWB_CACHE_DIR or ~/.cache/rswb)")


# ------------------------------------------------------------------------------------------------------------ data


class QueryEncoder:
    """Raw captions -> the text inputs a split's batches carry, by the same pipeline as the training data.

    Used for the splits' caption tags and for free-text queries (``rswb search``, notebook 03's search box).

    Args:
        tag_vocabulary: KAMCL's tag words (empty: no ``tags`` input).
        max_words: captions are cut to this many words.
        minilm: the frozen MiniLM whose token states the batches carry (``states``/``mask``), or whose tokenizer
            gives ``tokens`` when ``states`` is False.
        vocab: the GRU's vocabulary (``tokens``).
        states: emit MiniLM token states (frozen text encoder) instead of tokens (ignored with a vocabulary).
    """

    def __init__(self, tag_vocabulary: Sequence[str], max_words: int, minilm: torch.nn.Module | None = None,
                 vocab: Vocabulary | None = None, states: bool = True):
        self.tag_index = {w: i for i, w in enumerate(tag_vocabulary)}
        self.max_words, self.minilm, self.vocab = int(max_words), minilm, vocab
        self.states = bool(states) and vocab is None

    def tags(self, captions: Sequence[str]) -> torch.Tensor:
        """Each caption's own tag words, multi-hot ``[N, K]`` (uint8)."""
        out = torch.zeros(len(captions), len(self.tag_index), dtype=torch.uint8)
        for j, c in enumerate(captions):
            for w in content_words(c):
                if w in self.tag_index:
                    out[j, self.tag_index[w]] = 1
        return out

    def tokens(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` ``[N, L]`` of captions (cut to ``max_words``) for the text encoder."""
        caps = [_truncate(c, self.max_words) for c in captions]
        if self.vocab is not None:
            ids, mask = self.vocab.encode(caps, max_length=self.max_words)
            return {"input_ids": ids, "attention_mask": mask}
        toks = self.minilm.tokenize(caps)
        return {"input_ids": toks["input_ids"], "attention_mask": toks["attention_mask"]}

    @torch.no_grad()
    def __call__(self, captions: Sequence[str]) -> dict[str, Any]:
        """Text inputs of ``captions`` (``states``/``mask`` or ``tokens``, plus ``tags`` when there is a vocabulary)."""
        caps = [_truncate(c, self.max_words) for c in captions]
        out: dict[str, Any] = {}
        toks = self.tokens(caps)
        if self.states:
            device = next(self.minilm.parameters()).device
            st = self.minilm.token_states(toks["input_ids"].to(device), toks["attention_mask"].to(device))
            out.update(states=st.float().cpu(), mask=toks["attention_mask"].bool())
        else:
            out["tokens"] = toks
        if self.tag_index:
            out["tags"] = self.tags(caps).float()
        return out


@dataclass
class RetrievalSplit(Dataset):
    """One split: its images, captions and everything a batch needs, gathered per batch by index.

    As a training dataset an item is a caption (``__getitems__`` returns a whole batch dict: the caption's text
    input, its image's input, ``image_id``, scene ``label``, ``value``, ``tags`` and ``tag_targets``); evaluation
    walks :meth:`image_batches` and :meth:`caption_batches` instead, every image once.

    Attributes:
        name: split name.
        captions: caption strings ``[N_c]``.
        caption_to_image: image index of every caption ``[N_c]``.
        image_paths: image files ``[N_i]``.
        labels: scene class per image ``[N_i]`` (-1 when unknown).
        levels: cached feature levels ``{name: [N_i, ...]}`` (frozen backbone) or ``None`` (images are loaded).
        states, mask: cached text token states ``[N_c, L, D]`` and mask ``[N_c, L]``, or ``None``.
        tokens: ``input_ids`` / ``attention_mask`` ``[N_c, L]`` when the text encoder is inside the model.
        caption_tags: each caption's own tag words, multi-hot ``[N_c, K]`` (uint8; K = 0 without tags).
        targets: KAMCL tag targets per image ``[N_i, K]`` (training split).
        values: FISVL value weight per caption ``[N_c]``.
        image_size: decode size when images are loaded.
        augment: random dihedral view per loaded training image.
        query_encoder: turns free text into this split's text inputs.
        backbone: the frozen feature extractor of cached levels (``None`` when the model holds its backbone).
    """

    name: str
    captions: list[str]
    caption_to_image: np.ndarray
    image_paths: list[Path]
    labels: np.ndarray
    levels: dict[str, torch.Tensor] | None = None
    states: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    tokens: dict[str, torch.Tensor] | None = None
    caption_tags: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    values: torch.Tensor | None = None
    image_size: int = 224
    augment: bool = False
    query_encoder: QueryEncoder | None = None
    backbone: torch.nn.Module | None = None

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def num_images(self) -> int:
        """Number of images."""
        return len(self.image_paths)

    def captions_of(self, image: int) -> list[str]:
        """All captions of image ``image``."""
        return [self.captions[j] for j in np.flatnonzero(self.caption_to_image == image)]

    def image_inputs(self, index: np.ndarray, augment: bool = False) -> dict[str, Any]:
        """``{"levels": ...}`` or ``{"image": [B, 3, S, S]}`` of images ``index``."""
        idx = torch.as_tensor(np.asarray(index, np.int64))
        if self.levels is not None:
            return {"levels": {k: v[idx] for k, v in self.levels.items()}}
        imgs = torch.stack([image_to_tensor(load_image(self.image_paths[i], self.image_size)) for i in idx.tolist()])
        if augment:
            imgs = torch.stack([dihedral(im[None], int(v))[0] for im, v in zip(imgs, torch.randint(0, 8, (len(idx),)))])
        return {"image": imgs}

    def text_inputs(self, index: np.ndarray) -> dict[str, Any]:
        """Text inputs of captions ``index``, trimmed to the longest caption among them (+ ``tags``)."""
        idx = torch.as_tensor(np.asarray(index, np.int64))
        out: dict[str, Any] = {}
        if self.states is not None:
            mask = self.mask[idx]
            width = max(1, int(mask.sum(1).max()))
            out.update(states=self.states[idx, :width], mask=mask[:, :width])
        else:
            am = self.tokens["attention_mask"][idx]
            width = max(1, int(am.sum(1).max()))
            out["tokens"] = {"input_ids": self.tokens["input_ids"][idx, :width], "attention_mask": am[:, :width]}
        if self.caption_tags is not None and self.caption_tags.shape[1]:
            out["tags"] = self.caption_tags[idx].float()
        return out

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        cap = np.asarray(indices, np.int64)
        img = self.caption_to_image[cap]
        batch = {**self.image_inputs(img, self.augment), **self.text_inputs(cap)}
        batch["image_id"] = torch.as_tensor(img)
        batch["label"] = torch.as_tensor(self.labels[img])
        if self.values is not None:
            batch["value"] = self.values[cap]
        if self.targets is not None and self.targets.shape[1]:
            batch["tag_targets"] = self.targets[torch.as_tensor(img)]
        return batch

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Caption ``index`` as a batch of one (the same dict as :meth:`__getitems__`, leading dimension 1)."""
        return self.__getitems__([index])

    def image_batches(self, batch_size: int) -> Iterator[dict[str, Any]]:
        """Every image once, in order, as batches of model inputs."""
        for start in range(0, self.num_images, batch_size):
            yield self.image_inputs(np.arange(start, min(self.num_images, start + batch_size)))

    def caption_batches(self, batch_size: int) -> Iterator[dict[str, Any]]:
        """Every caption once, in order, as batches of model inputs."""
        for start in range(0, len(self), batch_size):
            yield self.text_inputs(np.arange(start, min(len(self), start + batch_size)))


@dataclass
class RetrievalData:
    """The splits of a retrieval run and the text knowledge computed from the training captions."""

    train: RetrievalSplit
    val: RetrievalSplit
    test: RetrievalSplit
    class_names: list[str]
    tag_vocabulary: list[str]
    root: Path
    image_root: Path
    channels: dict[str, int] | None
    text_dim: int
    vocab: Vocabulary | None = None


def _truncate(caption: str, max_words: int) -> str:
    words = caption.split()
    return " ".join(words[:max_words])


def _scene_names(cs: CaptionSet, paths: list[Path], image_root: Path, root: Path) -> list[str] | None:
    """Scene name per image, or ``None`` when there is none.

    From the caption set's ``scene`` field (also read from a Karpathy JSON beside precomp files, matching file
    names), else from each image's class folder (UC Merced: ``Images/<class>/``).
    """
    if cs.scenes and all(cs.scenes):
        return list(cs.scenes)
    js = find_karpathy_json(root) if root.is_dir() else None
    if js is not None:
        full = read_karpathy(js, "all")
        if full.scenes:
            by_name = {Path(n).name: sc for n, sc in zip(full.image_names, full.scenes)}
            names = [by_name.get(Path(n).name) for n in cs.image_names]
            if all(names):
                return names  # type: ignore[return-value]
    parents = [p.parent for p in paths]
    if any(par.resolve() == image_root.resolve() for par in parents):
        return None  # images directly under the root: no class folders
    return [par.name for par in parents]


def _limit(cs: CaptionSet, max_images: int | None) -> CaptionSet:
    if max_images is None or cs.num_images <= max_images:
        return cs
    keep = cs.caption_to_image < max_images
    return dataclasses.replace(cs, captions=[c for c, k in zip(cs.captions, keep) if k],
                               caption_to_image=cs.caption_to_image[keep], image_names=cs.image_names[:max_images],
                               scenes=cs.scenes[:max_images] if cs.scenes else None)


def _subset(cs: CaptionSet, images: np.ndarray, split: str) -> CaptionSet:
    """The captions of ``images`` (re-indexed in that order)."""
    remap = np.full(cs.num_images, -1, np.int64)
    remap[images] = np.arange(len(images))
    keep = remap[cs.caption_to_image] >= 0
    return dataclasses.replace(cs, captions=[c for c, k in zip(cs.captions, keep) if k],
                               caption_to_image=remap[cs.caption_to_image[keep]],
                               image_names=[cs.image_names[i] for i in images],
                               scenes=[cs.scenes[i] for i in images] if cs.scenes else None, split=split)


def _has_split(root: Path, split: str, fmt: str) -> bool:
    """Whether the caption set ships ``split``. A split that is there but broken raises instead of being skipped."""
    return split in caption_splits(root, fmt)


def prepare_data(cfg: RetrievalConfig, progress: bool = True) -> RetrievalData:
    """Read the caption set, join it to its images, carve the validation images and build the inputs of each split.

    Raises:
        DatasetNotFoundError: missing caption files or image root.
        CaptionMismatchError: a caption's image is missing under the image root.
        ValueError: FISVL without scene labels, or a split left without images.
    """
    from rswb.data.synthetic import ensure_embedded

    root = Path(cfg.data) if cfg.data else ensure_embedded("captions")
    image_root = Path(cfg.images) if cfg.images else default_image_root(root)
    if image_root is None:
        raise DatasetNotFoundError(root, "no image root: the caption set has no images/ folder beside it",
                                   "--images PATH (for UCM-Captions: the UC Merced folder)")
    train_cs = _limit(read_captions(root, "train", cfg.fmt), cfg.max_images)
    test_cs = _limit(read_captions(root, "test", cfg.fmt), cfg.max_images)
    if _has_split(root, "val", cfg.fmt):
        val_cs = _limit(read_captions(root, "val", cfg.fmt), cfg.max_images)
    else:  # carve a seeded share of the training images, with all their captions
        kept, carved = carve_items(train_cs.num_images, cfg.val_share, cfg.split_seed)
        val_cs = _subset(train_cs, carved, "val")
        train_cs = _subset(train_cs, kept, "train")
    for cs in (train_cs, val_cs, test_cs):
        if cs.num_images == 0:
            raise ValueError(f"{root}: the {cs.split} split has no images")
        cs.captions = [_truncate(c, cfg.max_words) for c in cs.captions]

    # The evidence for the join: every name of the set (before max_images limits it), over all its splits.
    resolver = ImageResolver(image_root, caption_set_names(root, cfg.fmt), image_map=cfg.image_map)
    paths = {cs.split: resolver.resolve_all(cs.image_names, cs.source) for cs in (train_cs, val_cs, test_cs)}
    # Every image decodes before any feature is extracted: a truncated file fails here in seconds, naming it.
    check_images(list(dict.fromkeys(p for ps in paths.values() for p in ps)),
                 cache_dir=cache_root(cfg.cache_dir) / "image_checks", progress=progress)
    scenes = {cs.split: _scene_names(cs, paths[cs.split], image_root, root) for cs in (train_cs, val_cs, test_cs)}
    # One folder name over every split is a plain image folder, not a class layout (judged over all splits
    # together: a small split may well hold one class only).
    have_scenes = all(s is not None for s in scenes.values()) and len({n for s in scenes.values() for n in s}) > 1
    class_names = sorted({n for s in scenes.values() for n in s}) if have_scenes else []
    if cfg.method == "fisvl" and not have_scenes:
        raise ValueError(f"{root}: FISVL needs a scene label per image (a Karpathy 'scene' field, or class folders "
                         f"under the image root {image_root}); none found")
    cls_index = {n: i for i, n in enumerate(class_names)}

    # Knowledge from the training captions only.
    vocab_tags = build_tag_vocabulary(train_cs.captions, k=cfg.num_tags) if cfg.num_tags else []
    per_image = [train_cs.captions_of(i) for i in range(train_cs.num_images)]
    targets = torch.from_numpy(tag_targets(per_image, vocab_tags)) if vocab_tags else None
    values = torch.from_numpy(caption_values(train_cs.captions))

    # Image inputs: cached frozen feature levels, or nothing (the model loads images).
    channels, backbone = None, None
    levels: dict[str, dict[str, torch.Tensor] | None] = {s: None for s in paths}
    if cfg.freeze_backbone:
        backbone = make_backbone(cfg.backbone, cfg.pretrained, cfg.backbone_path)
        channels = level_channels(backbone)
        weights = digest(modules=[backbone])  # hashed once, not once per split
        for split, ps in paths.items():
            key = digest(("levels", cfg.backbone, cfg.image_size, weights), files=ps)
            path = cache_root(cfg.cache_dir) / "levels" / f"{cfg.backbone}-{key}.pt"
            desc = f"{cfg.backbone} feature levels ({split}, {len(ps)} images)"
            levels[split] = cached(path, lambda ps=ps, desc=desc: extract_images(
                backbone, ImageFiles(ps, cfg.image_size), feature_levels, device=frozen_encoder_device(),
                dtype=torch.float16, desc=desc, progress=progress))

    # Text inputs: cached frozen MiniLM states, or tokens for an encoder inside the model.
    if cfg.text_encoder not in ("minilm", "hf_text", "gru_text"):
        raise ValueError(f"unknown text encoder {cfg.text_encoder!r}; use minilm, hf_text or gru_text")
    vocab, encoder = None, None
    if cfg.text_encoder == "gru_text":
        vocab = Vocabulary.build(train_cs.captions, min_count=1)
    else:
        encoder = make_text_encoder(cfg.text_encoder, True, cfg.text_path, max_length=2 * cfg.max_words)
    text_dim = encoder.state_dim if encoder is not None else 0
    queries = QueryEncoder(vocab_tags, cfg.max_words, minilm=encoder, vocab=vocab, states=cfg.freeze_text)
    text_cache: dict[str, dict[str, Any]] = {}
    weights = digest(modules=[encoder]) if queries.states else ""
    for split, caps in {"train": train_cs.captions, "val": val_cs.captions, "test": test_cs.captions}.items():
        if queries.states:
            key = digest(("states", encoder.max_length, weights), texts=caps)
            path = cache_root(cfg.cache_dir) / "text" / f"{cfg.text_encoder}-{key}.pt"
            desc = f"{cfg.text_encoder} token states ({split}, {len(caps)} captions)"
            text_cache[split] = cached(path, lambda caps=caps, desc=desc: extract_text_states(
                encoder, caps, device=frozen_encoder_device(), desc=desc, progress=progress))
        else:
            text_cache[split] = {"tokens": queries.tokens(caps)}

    def build(cs: CaptionSet, train: bool) -> RetrievalSplit:
        names = scenes[cs.split] if have_scenes else None
        labels = np.array([cls_index[n] for n in names], np.int64) if names else np.full(cs.num_images, -1)
        tc = text_cache[cs.split]
        return RetrievalSplit(
            name=cs.split, captions=cs.captions, caption_to_image=np.asarray(cs.caption_to_image, np.int64),
            image_paths=paths[cs.split], labels=labels, levels=levels[cs.split], states=tc.get("states"),
            mask=tc.get("mask"), tokens=tc.get("tokens"), caption_tags=queries.tags(cs.captions),
            targets=targets if train else None, values=values if train else None, image_size=cfg.image_size,
            augment=train, query_encoder=queries, backbone=backbone)

    return RetrievalData(train=build(train_cs, True), val=build(val_cs, False), test=build(test_cs, False),
                         class_names=class_names, tag_vocabulary=vocab_tags, root=root, image_root=image_root,
                         channels=channels, text_dim=text_dim, vocab=vocab)


# ------------------------------------------------------------------------------------------------------------ task


class RetrievalTask(Task):
    """Training terms and evaluation of one retrieval method (see the module docstring and ``METHODS.md``).

    Loss terms by method (names as logged; inactive schedule terms are logged as 0):

    * ``vsepp``: ``triplet_loss`` (hardest negative, margin 0.2);
    * ``clip``: ``nce_loss`` (symmetric InfoNCE, learnable temperature; other captions of the same image masked);
    * ``fisvl``: stage 1 ``nce_loss`` (multi-positive) + ``affil_loss`` + ``hard_loss`` (scene-adaptive hardest
      negative); stage 2 (from ``value_stage`` of the epochs) ``value_loss`` (value-weighted InfoNCE) +
      ``affil_loss``;
    * ``kamcl``: ``triplet_loss`` + ``moco_loss`` (x10: InfoNCE of each side against the other side's momentum keys
      and queue) and, from ``knowledge_stage`` of the epochs, ``concept_loss`` (x10: BCE of both concept heads
      against the image's tag targets).
    """

    monitor = "mR"
    monitor_mode = "max"

    def __init__(self, model: RetrievalNet, cfg: RetrievalConfig, info: dict[str, str] | None = None):
        m = cfg.method
        weights = {"affil_loss": cfg.affil_weight, "hard_loss": cfg.hard_weight, "moco_loss": cfg.moco_weight,
                   "concept_loss": cfg.concept_weight}
        super().__init__(model, weights, info)
        self.method = m
        self.ties = str(cfg.ties)
        self.margin, self.beta1, self.beta2 = float(cfg.margin), float(cfg.beta1), float(cfg.beta2)
        self.fixed_temperature = float(cfg.temperature)
        self.value_stage, self.knowledge_stage = float(cfg.value_stage), float(cfg.knowledge_stage)
        self.temperature = LearnableTemperature(cfg.temperature) if m in ("clip", "fisvl") else None
        self.key: MomentumEncoder | None = None
        if m == "kamcl":
            self.key = MomentumEncoder(model, cfg.ema_momentum)
            size = max(1, int(cfg.queue_size))
            self.queue_img, self.queue_txt = FeatureQueue(size, model.embed_dim), FeatureQueue(size, model.embed_dim)
            self.use_queue = cfg.queue_size > 0
        self.epoch, self.epochs = 0, 1

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Remember the epoch: FISVL's weights and both methods' two-stage schedules depend on it."""
        self.epoch, self.epochs = int(epoch), int(epochs)

    def _stage2(self, share: float) -> bool:
        return self.epoch >= int(round(share * self.epochs))

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The method's terms for one batch of image-caption pairs (see the class docstring)."""
        if self.key is not None and self.training:
            self.key.update(self.model)  # MoCo: move the key encoder before computing this step's keys
        out = self.model(batch)
        img, txt, ids = out["image"], out["text"], batch["image_id"]
        sim = img @ txt.t()
        zero = sim.new_zeros(())
        terms: dict[str, torch.Tensor] = {}
        if self.method == "vsepp":
            terms["triplet_loss"] = hardest_negative_triplet(sim, self.margin, ids)
        elif self.method == "clip":
            terms["nce_loss"] = symmetric_info_nce(img, txt, self.temperature(), ids)
        elif self.method == "fisvl":
            t, labels = self.temperature(), batch["label"]
            stage2 = self._stage2(self.value_stage)
            terms["nce_loss"] = zero if stage2 else multi_positive_info_nce(sim, ids, t)
            terms["hard_loss"] = zero if stage2 else scene_adaptive_triplet(sim, ids, labels, self.epoch, self.beta1,
                                                                            self.beta2, self.margin)
            terms["value_loss"] = value_weighted_info_nce(sim, ids, batch["value"], t) if stage2 else zero
            terms["affil_loss"] = affiliation_loss(img, txt, labels)
        else:
            terms.update(self._kamcl_terms(batch, out, sim, ids))
        with torch.no_grad():
            terms["pos_sim"] = sim.diagonal().mean()
            if self.temperature is not None:
                terms["temperature"] = self.temperature().detach()
        return terms

    def _kamcl_terms(self, batch: dict[str, Any], out: dict[str, torch.Tensor], sim: torch.Tensor,
                     ids: torch.Tensor) -> dict[str, torch.Tensor]:
        keys = self.key(batch)
        t = self.fixed_temperature
        q_img, qid_img = self.queue_img.contents() if self.use_queue else (keys["image"][:0], ids[:0])
        q_txt, qid_txt = self.queue_txt.contents() if self.use_queue else (keys["text"][:0], ids[:0])
        moco = 0.5 * (momentum_info_nce(out["image"], keys["text"], q_txt, t, ids, qid_txt)
                      + momentum_info_nce(out["text"], keys["image"], q_img, t, ids, qid_img))
        terms = {"triplet_loss": hardest_negative_triplet(sim, self.margin, ids), "moco_loss": moco}
        if "image_concepts" in out:
            terms["concept_loss"] = (0.5 * (concept_bce(out["image_concepts"], batch["tag_targets"])
                                            + concept_bce(out["text_concepts"], batch["tag_targets"]))
                                     if self._stage2(self.knowledge_stage) else sim.new_zeros(()))
        if self.training and self.use_queue:
            self.queue_img.push(keys["image"].float(), ids)
            self.queue_txt.push(keys["text"].float(), ids)
        return terms

    @torch.no_grad()
    def embeddings(self, split: RetrievalSplit, ctx: EvalContext | None = None) -> dict[str, torch.Tensor]:
        """Normalised embeddings of every image ``[N_i, D]`` and caption ``[N_c, D]`` of a split (CPU, float32)."""
        if ctx is None:
            ctx = EvalContext(next(self.parameters()).device)
        was_training = self.training
        self.eval()
        out: dict[str, list[torch.Tensor]] = {"image": [], "text": []}
        bs = ctx.batch_size
        show = ctx.progress and ctx.dist.is_main
        for side, batches, n in (("image", split.image_batches(bs), split.num_images),
                                 ("text", split.caption_batches(bs), len(split))):
            encode = self.model.encode_image if side == "image" else self.model.encode_text
            for b in tqdm(batches, total=-(-n // bs), desc=f"{ctx.desc} {side}s", leave=False, disable=not show):
                with autocast(ctx.device, ctx.precision):
                    out[side].append(encode(to_device(b, ctx.device)).float().cpu())
        self.train(was_training)
        return {k: torch.cat(v) for k, v in out.items()}

    def protocol(self) -> dict[str, str]:
        """The tie rule of the headline numbers (recorded in ``metrics.json`` and every ``metrics.jsonl`` line)."""
        return {"ties": self.ties}

    def evaluate(self, dataset: RetrievalSplit, ctx: EvalContext) -> dict[str, float]:
        """R@1/5/10 both ways, mR and rank statistics of every image against every caption of the split.

        The plain keys (``i2t_R@1``, ..., ``mR``; the one validation selects on) follow the task's ``ties`` rule;
        the six recalls and mR under each other rule come beside them as ``{rule}_i2t_R@1``, ..., ``{rule}_mR``,
        so one run shows the optimistic-pessimistic range and the published-protocol number at once.
        """
        emb = self.embeddings(dataset, ctx)
        out: dict[str, float] = {}
        for rule in (self.ties, *(r for r in TIE_RULES if r != self.ties)):
            m = retrieval_metrics_from_embeddings(emb["image"], emb["text"], dataset.caption_to_image, ties=rule)
            if rule == self.ties:
                out.update(m)
            else:
                out.update({f"{rule}_{k}": v for k, v in m.items() if "_R@" in k or k == "mR"})
        return out

    def collate(self, samples: Any) -> Any:
        """Batches come whole from :meth:`RetrievalSplit.__getitems__`: passed through."""
        return samples


@register_task("retrieval")
def retrieval_task(cfg: RetrievalConfig) -> TaskBundle:
    """Image-text retrieval (VSE++, CLIP-style, FISVL, KAMCL) on a caption set with images; R@K and mR.

    Training settings this task prefers (the training options below override them): frozen encoders (cached
    features): 10 epochs (the heads' validation mR plateaus after 2-4 on UCM-Captions), batch 128, AdamW lr 1e-3,
    weight decay 0.01, 1 warm-up epoch then cosine; fine-tuning:
    20 epochs, batch 64, AdamW lr 4e-5, weight decay 0.01, 10 % warm-up then linear decay (FISVL's schedule).
    """
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; use one of {', '.join(METHODS)}")
    if cfg.ties not in TIE_RULES:
        raise ValueError(f"unknown tie rule ties={cfg.ties!r}; use one of {', '.join(TIE_RULES)}")
    data = prepare_data(cfg)
    cached_text = data.train.states is not None  # prepare_data cached a frozen transformer's token states
    frozen = data.train.levels is not None and cached_text
    model = retrieval_net(
        cfg.method, channels=data.channels, text_dim=data.text_dim, embed_dim=cfg.embed_dim,
        local_branch=cfg.local_branch, fgis_steps=cfg.fgis_steps, hierarchical=cfg.hierarchical,
        num_tags=len(data.tag_vocabulary), backbone=None if cfg.freeze_backbone else cfg.backbone,
        pretrained=cfg.pretrained, text_encoder=None if cached_text else cfg.text_encoder,
        freeze_text=cfg.freeze_text, vocab_size=len(data.vocab) if data.vocab is not None else None,
        backbone_path=cfg.backbone_path, text_path=cfg.text_path)
    info = {"method": cfg.method, "version": _version(cfg), "data": f"{data.root.name}"}
    task = RetrievalTask(model, cfg, info)
    defaults = ({"epochs": 10, "batch_size": 128, "lr": 1e-3, "weight_decay": 0.01, "schedule": "cosine",
                 "warmup_epochs": 1.0, "val_fraction": 0.0} if frozen else
                {"epochs": 20, "batch_size": 64, "lr": 4e-5, "weight_decay": 0.01, "schedule": "linear",
                 "warmup_epochs": 2.0, "val_fraction": 0.0})
    return TaskBundle(task, data.train, val=data.val, test=data.test, train_defaults=defaults)


def _version(cfg: RetrievalConfig) -> str:
    """A short label of the components that differ from the method's full version (for the run registry)."""
    off = []
    if cfg.method == "fisvl":
        off += ["-local"] if not cfg.local_branch else []
        off += ["-fgis"] if cfg.fgis_steps == 0 else []
        off += ["-affil"] if cfg.affil_weight == 0 else []
        off += ["-hard"] if cfg.hard_weight == 0 else []
        off += ["-value"] if cfg.value_stage >= 1 else []
    if cfg.method == "kamcl":
        off += ["-ha"] if not cfg.hierarchical else []
        off += ["-knowledge"] if cfg.num_tags == 0 else []
        off += ["-queue"] if cfg.queue_size == 0 else []
        off += ["-moco"] if cfg.moco_weight == 0 else []
    return cfg.method + "".join(off)


# --- search and explanation (rswb search, notebook 03) -----------------------------------------------------------


def split_embeddings(task: RetrievalTask, split: RetrievalSplit, device: str | torch.device | None = None,
                     batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Normalised embeddings of a split's images ``[N_i, D]`` and captions ``[N_c, D]`` (CPU float32)."""
    dev = select_device(device)
    task.to(dev)
    return task.embeddings(split, EvalContext(dev, batch_size=batch_size))


@torch.no_grad()
def encode_queries(task: RetrievalTask, split: RetrievalSplit, queries: Sequence[str]) -> torch.Tensor:
    """Normalised embeddings ``[Q, D]`` of free-text queries, through the split's text pipeline (CPU float32)."""
    if split.query_encoder is None:
        raise ValueError("this split has no query encoder (build it with prepare_data)")
    was_training = task.training
    task.eval()
    device = next(task.parameters()).device
    emb = task.model.encode_text(to_device(split.query_encoder(list(queries)), device)).float().cpu()
    task.train(was_training)
    return emb


def search_text(task: RetrievalTask, split: RetrievalSplit, query: str, k: int = 5,
                embeddings: dict[str, torch.Tensor] | None = None) -> list[dict[str, Any]]:
    """The ``k`` images of ``split`` most similar to a free-text query, best first.

    Args:
        task: a trained retrieval task (e.g. ``load_trained(run).task``).
        split: the gallery (e.g. the run's test split).
        query: any caption-like text.
        k: how many images.
        embeddings: :func:`split_embeddings` of the split, to reuse across queries.

    Returns:
        ``[{"rank", "image", "path", "score", "captions"}]``: image index, file, cosine similarity, its captions.
    """
    emb = embeddings or split_embeddings(task, split)
    q = encode_queries(task, split, [query])[0]
    scores = emb["image"] @ q
    top = torch.topk(scores, min(k, len(scores)))
    return [{"rank": r + 1, "image": int(i), "path": str(split.image_paths[int(i)]), "score": float(v),
             "captions": split.captions_of(int(i))}
            for r, (v, i) in enumerate(zip(top.values, top.indices))]


def search_image(task: RetrievalTask, split: RetrievalSplit, image: int, k: int = 5,
                 embeddings: dict[str, torch.Tensor] | None = None) -> list[dict[str, Any]]:
    """The ``k`` captions of ``split`` most similar to image ``image``, best first.

    Returns:
        ``[{"rank", "caption", "score", "own"}]`` (``own``: the caption belongs to that image).
    """
    emb = embeddings or split_embeddings(task, split)
    scores = emb["text"] @ emb["image"][image]
    top = torch.topk(scores, min(k, len(scores)))
    return [{"rank": r + 1, "caption": split.captions[int(j)], "score": float(v),
             "own": bool(split.caption_to_image[int(j)] == image)}
            for r, (v, j) in enumerate(zip(top.values, top.indices))]


def _pooled_branch(model: RetrievalNet) -> torch.nn.Module:
    """The linear map each method applies to the pooled image vector (see :func:`token_similarity`)."""
    if model.method in ("vsepp", "clip"):
        return model.img_head
    if model.method == "fisvl":
        return model.cls
    return model.aggregator.final if model.aggregator is not None else model.img_head


@torch.no_grad()
def token_similarity(task: RetrievalTask, split: RetrievalSplit, image: int, query: str) -> np.ndarray:
    """Where the model looks: the similarity of each image location with a text query, ``[h, w]`` (stride 32).

    Every method's image embedding has a term that is a linear map ``W`` of the pooled backbone vector, the mean of
    the last feature map's tokens ``h_ij``. Applying ``W`` to each token instead gives that location's share of the
    term, ``W h_ij``; its cosine similarity with the query's embedding shows which regions pull the image towards
    the text. (The other heads - FISVL's graph, KAMCL's GPO - are nonlinear and not decomposed.)
    """
    model: RetrievalNet = task.model
    backbone = model.backbone if model.backbone is not None else split.backbone
    if backbone is None:
        raise ValueError("no backbone to compute the image's feature map from")
    device = next(task.parameters()).device
    backbone.eval().to(device)
    img = image_to_tensor(load_image(split.image_paths[image], split.image_size))[None].to(device)
    feats = backbone.forward_features(img)
    last = next(f.name for f in reversed(backbone.feature_info) if f.channels == backbone.num_features)
    fmap = feats[last][0].float()  # [F, h, w]
    tokens = F.normalize(_pooled_branch(model)(fmap.flatten(1).t()), dim=1)  # [h*w, D]
    q = encode_queries(task, split, [query])[0].to(device)
    return (tokens @ q).reshape(fmap.shape[1:]).cpu().numpy()


__all__ += ["QueryEncoder", "encode_queries", "search_image", "search_text", "split_embeddings",
            "token_similarity"]


# --- notebook 03: profiles and cached runs per method --------------------------------------------------------------

PROFILES: dict[str, dict[str, Any]] = {
    # Seconds per run on a 2-core CPU (the papermill test): a small random CNN on 64-px images and the frozen
    # MiniLM's cached token states, a 32-word tag vocabulary and a short queue.
    "quick": {"backbone": "small_cnn", "pretrained": False, "image_size": 64, "num_tags": 32, "queue_size": 512,
              "batch_size": 64},
    # Frozen ImageNet EfficientNet-Lite0 and MiniLM with cached features (RetrievalConfig's defaults): minutes.
    "cpu": {},
    # Both encoders fine-tune (a GPU profile; FISVL's learning-rate schedule).
    "full": {"freeze_backbone": False, "freeze_text": False},
}
"""Option overrides of ``rswb train retrieval`` for each profile of notebook 03 (see :func:`train_or_load`)."""


def train_or_load(method: str, profile: str, data_root: str | Path | None, image_root: str | Path | None,
                  epochs: int, seed: int, output_dir: str | Path, device: str | None = None,
                  progress: bool = True) -> Path:
    """The run folder ``output_dir/<profile>-<method>``: reused when finished with the same options, else trained.

    Args:
        method: ``vsepp``, ``clip``, ``fisvl`` or ``kamcl``.
        profile: a key of :data:`PROFILES`.
        data_root: caption folder or JSON (None: the embedded captions).
        image_root: image folder (None: ``images/`` beside the captions).
        epochs: training epochs.
        seed: training seed.
        output_dir: parent folder of the runs.
        device: training device (None: the best available).
        progress: show progress bars.

    Raises:
        KeyError: an unknown profile.
    """
    from rswb.engine.launch import train_or_reuse

    if profile not in PROFILES:
        raise KeyError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")

    def absolute(p: str | Path | None) -> str | None:
        return str(Path(p).expanduser().resolve()) if p is not None else None

    options = {**PROFILES[profile], "method": method, "data": absolute(data_root), "images": absolute(image_root),
               "epochs": int(epochs), "seed": int(seed)}
    return train_or_reuse("retrieval", options, Path(output_dir) / f"{profile}-{method}", device, progress)


def tie_table(runs: dict[str, str | Path] | Sequence[str | Path], keys: Sequence[str] = ("mR", "i2t_R@1"),
              split: str = "test") -> pd.DataFrame:
    """Each run's numbers under every tie rule: the headline rule, ``published`` and the pessimistic-optimistic range.

    Args:
        runs: run folders (a dict's keys name the rows, e.g. ``{"fisvl": path}``).
        keys: metric names (without rule prefix) to show.
        split: ``"test"`` or ``"val"``.

    Returns:
        One row per run: ``ties`` (the run's headline rule), then for every key the headline value, ``published``,
        ``pessimistic`` and ``optimistic`` (columns ``"{key} {rule}"``).

    Raises:
        KeyError: a run has no numbers under some rule (trained before tie rules were recorded: re-score it with
            ``rswb eval RUN --ties RULE``).
    """
    named = runs if isinstance(runs, dict) else {Path(r).name: r for r in runs}
    rows = {}
    for name, path in named.items():
        final = json.loads((Path(path) / "metrics.json").read_text())
        rule, metrics = final.get("ties", "optimistic"), final.get(split) or {}
        row: dict[str, Any] = {"ties": rule}
        for key in keys:
            for r in (rule, *(r for r in ("published", "pessimistic", "optimistic") if r != rule)):
                name_in_run = key if r == rule else f"{r}_{key}"
                if name_in_run not in metrics:
                    raise KeyError(f"{path}: no {split} {name_in_run!r} "
                                   f"(an older run: rswb eval {path} --ties RULE scores it)")
                row[f"{key} {r}"] = metrics[name_in_run]
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")


__all__ += ["PROFILES", "tie_table", "train_or_load"]
