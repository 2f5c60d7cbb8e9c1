"""Image-text splits as training data: a caption set joined to its images, with the inputs every batch needs.

A :class:`RetrievalSplit` holds one split's captions, the explicit caption -> image index, the image files, the
scene labels, and the encoders' inputs: cached frozen feature levels and token states (the CPU profile), or images
and tokens for encoders inside the model (fine-tuning). :class:`CaptionInputs` turns any caption text into the same
inputs (for free-text queries). The helpers below limit, carve and label the caption sets these are built from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from rswb.data.captions import (
    CaptionSet,
    ImageResolver,
    caption_set_names,
    caption_split_names,
    find_karpathy_json,
    read_captions,
    read_karpathy,
)
from rswb.data.errors import DatasetNotFoundError
from rswb.data.scenes import check_images, image_to_tensor, load_image
from rswb.data.splits import carve_items
from rswb.data.tags import Vocabulary, content_words
from rswb.data.transforms import dihedral
from rswb.utils import deprecated_names

__all__ = [
    "CaptionInputs", "JoinedCaptions", "RetrievalData", "RetrievalSplit", "limit_images",
    "read_joined_captions", "scene_names", "subset_images", "truncate_words",
]


class CaptionInputs:
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

    def __init__(self, tag_vocabulary: Sequence[str], max_words: int, minilm: nn.Module | None = None,
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
        caps = [truncate_words(c, self.max_words) for c in captions]
        if self.vocab is not None:
            ids, mask = self.vocab.encode(caps, max_length=self.max_words)
            return {"input_ids": ids, "attention_mask": mask}
        toks = self.minilm.tokenize(caps)
        return {"input_ids": toks["input_ids"], "attention_mask": toks["attention_mask"]}

    @torch.no_grad()
    def __call__(self, captions: Sequence[str]) -> dict[str, Any]:
        """Text inputs of ``captions`` (``states``/``mask`` or ``tokens``, plus ``tags`` when there is a vocabulary)."""
        caps = [truncate_words(c, self.max_words) for c in captions]
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


"""The former name of :class:`CaptionInputs`."""


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
        cut: cached activations at the backbone's cut point, ``{"cut": [N_i, V, ...], <tap>: [N_i, V, ...]}``
            (partial fine-tuning: ``V`` dihedral views; a training batch takes one at random, evaluation view 0).
        states, mask: cached text token states ``[N_c, L, D]`` and mask ``[N_c, L]``, or ``None``.
        hidden: cached hidden states entering the first trained text layer ``[N_c, L, D]`` (partial fine-tuning of
            the text transformer; with ``mask``), or ``None``.
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
    cut: dict[str, torch.Tensor] | None = None
    states: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    tokens: dict[str, torch.Tensor] | None = None
    caption_tags: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    values: torch.Tensor | None = None
    image_size: int = 224
    augment: bool = False
    query_encoder: CaptionInputs | None = None
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
        """``{"levels": ...}``, ``{"cut": ..., "taps": ...}`` or ``{"image": [B, 3, S, S]}`` of images ``index``."""
        idx = torch.as_tensor(np.asarray(index, np.int64))
        if self.levels is not None:
            return {"levels": {k: v[idx] for k, v in self.levels.items()}}
        if self.cut is not None:
            n_views = self.cut["cut"].shape[1]
            views = torch.randint(0, n_views, (len(idx),)) if augment and n_views > 1 else torch.zeros_like(idx)
            maps = {k: v[idx, views].float() for k, v in self.cut.items()}
            return {"cut": maps.pop("cut"), "taps": maps}
        imgs = torch.stack([image_to_tensor(load_image(self.image_paths[i], self.image_size)) for i in idx.tolist()])
        if augment:
            imgs = torch.stack([dihedral(im[None], int(v))[0] for im, v in zip(imgs, torch.randint(0, 8, (len(idx),)))])
        return {"image": imgs}

    def text_inputs(self, index: np.ndarray) -> dict[str, Any]:
        """Text inputs of captions ``index``, trimmed to the longest caption among them (+ ``tags``)."""
        idx = torch.as_tensor(np.asarray(index, np.int64))
        out: dict[str, Any] = {}
        if self.states is not None or self.hidden is not None:
            mask = self.mask[idx]
            width = max(1, int(mask.sum(1).max()))
            key, cached = ("states", self.states) if self.states is not None else ("hidden", self.hidden)
            out.update({key: cached[idx, :width], "mask": mask[:, :width]})
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

    def plot(self, image: int = 0, ax=None):
        """Show image ``image`` of the split with all its captions (decoded from its file)."""
        import matplotlib.pyplot as plt

        ax = ax or plt.subplots(figsize=(4, 4.8))[1]
        ax.imshow(load_image(self.image_paths[image], self.image_size))
        ax.set_title(Path(self.image_paths[image]).name, fontsize=9)
        ax.set_xlabel("\n".join(f"- {c}" for c in self.captions_of(image)), fontsize=8, loc="left")
        ax.set_xticks([])
        ax.set_yticks([])
        return ax

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


def truncate_words(caption: str, max_words: int) -> str:
    """The first ``max_words`` words of a caption."""
    words = caption.split()
    return " ".join(words[:max_words])


def scene_names(cs: CaptionSet, paths: list[Path], image_root: Path, root: Path) -> list[str] | None:
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


def limit_images(cs: CaptionSet, max_images: int | None) -> CaptionSet:
    """The first ``max_images`` images of a caption set with their captions (``None``: all; quick runs)."""
    if max_images is None or cs.num_images <= max_images:
        return cs
    keep = cs.caption_to_image < max_images
    return dataclasses.replace(cs, captions=[c for c, k in zip(cs.captions, keep) if k],
                               caption_to_image=cs.caption_to_image[keep], image_names=cs.image_names[:max_images],
                               scenes=cs.scenes[:max_images] if cs.scenes else None)


def subset_images(cs: CaptionSet, images: np.ndarray, split: str) -> CaptionSet:
    """The captions of ``images`` (re-indexed in that order)."""
    remap = np.full(cs.num_images, -1, np.int64)
    remap[images] = np.arange(len(images))
    keep = remap[cs.caption_to_image] >= 0
    return dataclasses.replace(cs, captions=[c for c, k in zip(cs.captions, keep) if k],
                               caption_to_image=remap[cs.caption_to_image[keep]],
                               image_names=[cs.image_names[i] for i in images],
                               scenes=[cs.scenes[i] for i in images] if cs.scenes else None, split=split)


@dataclass
class JoinedCaptions:
    """The caption sets of train / val / test, joined to their image files and scene labels (no encoder inputs).

    Attributes:
        sets: ``{split: CaptionSet}`` (captions cut to ``max_words``).
        paths: ``{split: [image file per image]}``.
        labels: ``{split: scene class per image}`` (-1 when the set has no scene labels).
        class_names: the scene classes (empty without labels).
        root, image_root: the caption set and the image folder.
    """

    sets: dict[str, CaptionSet]
    paths: dict[str, list[Path]]
    labels: dict[str, np.ndarray]
    class_names: list[str]
    root: Path
    image_root: Path


def read_joined_captions(root: Path, image_root: Path | None, fmt: str = "auto", image_map: str | None = None,
                        max_images: int | None = None, val_share: float = 0.1, split_seed: int = 0,
                        max_words: int = 30, check_cache: Path | None = None, progress: bool = True) -> JoinedCaptions:
    """Read a caption set's splits, join them to their images by evidence, carve the validation images, label scenes.

    The validation split is the set's own ``val`` split, else a seeded ``val_share`` of the training images with all
    their captions (:func:`rswb.data.splits.carve_items`). Every image is decoded once
    (:func:`rswb.data.scenes.check_images`) before anything expensive happens, so a truncated file fails in seconds,
    named. Scene labels come from the set's ``scene`` field, a Karpathy JSON beside precomp files, or the images'
    class folders (:func:`scene_names`); one folder name over all splits is a plain folder, not classes.

    Raises:
        DatasetNotFoundError: missing caption files or image root.
        CaptionMismatchError: a caption's image is missing under the image root.
        ValueError: a split left without images.
    """
    if image_root is None:
        raise DatasetNotFoundError(root, "no image root: the caption set has no images/ folder beside it",
                                   "--images PATH (for UCM-Captions: the UC Merced folder)")
    train_cs = limit_images(read_captions(root, "train", fmt), max_images)
    test_cs = limit_images(read_captions(root, "test", fmt), max_images)
    if "val" in caption_split_names(root, fmt):  # a val split that is there but broken raises instead of being skipped
        val_cs = limit_images(read_captions(root, "val", fmt), max_images)
    else:  # carve a seeded share of the training images, with all their captions
        kept, carved = carve_items(train_cs.num_images, val_share, split_seed)
        val_cs = subset_images(train_cs, carved, "val")
        train_cs = subset_images(train_cs, kept, "train")
    sets = {"train": train_cs, "val": val_cs, "test": test_cs}
    for cs in sets.values():
        if cs.num_images == 0:
            raise ValueError(f"{root}: the {cs.split} split has no images")
        cs.captions = [truncate_words(c, max_words) for c in cs.captions]

    # The evidence for the join: every name of the set (before max_images limits it), over all its splits.
    resolver = ImageResolver(image_root, caption_set_names(root, fmt), image_map=image_map)
    paths = {s: resolver.resolve_all(cs.image_names, cs.source) for s, cs in sets.items()}
    check_images(list(dict.fromkeys(p for ps in paths.values() for p in ps)), cache_dir=check_cache, progress=progress)
    scenes = {s: scene_names(cs, paths[s], image_root, root) for s, cs in sets.items()}
    # One folder name over every split is a plain image folder, not a class layout (judged over all splits
    # together: a small split may well hold one class only).
    have_scenes = all(s is not None for s in scenes.values()) and len({n for s in scenes.values() for n in s}) > 1
    class_names = sorted({n for s in scenes.values() for n in s}) if have_scenes else []
    cls_index = {n: i for i, n in enumerate(class_names)}
    labels = {s: np.array([cls_index[n] for n in scenes[s]], np.int64) if have_scenes
              else np.full(cs.num_images, -1) for s, cs in sets.items()}
    return JoinedCaptions(sets, paths, labels, class_names, root, image_root)


# The former names, served with a FutureWarning.
__getattr__ = deprecated_names("rswb.data.image_text", {"CaptionSplits": "JoinedCaptions",
                                                        "read_caption_splits": "read_joined_captions"}, globals())
