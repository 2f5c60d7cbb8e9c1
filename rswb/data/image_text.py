"""Image-text splits as training data: a caption set joined to its images, with the inputs every batch needs.

A :class:`RetrievalSplit` holds one split's captions, the explicit caption -> image index, the image files, the
scene labels, and the encoders' inputs: cached frozen feature levels and token states (the CPU profile), or images
and tokens for encoders inside the model (fine-tuning). :class:`CaptionInputs` turns any caption text into the same
inputs (for free-text queries). The helpers below limit, carve and label the caption sets these are built from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
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
    default_image_root,
    find_karpathy_json,
    read_captions,
    read_karpathy,
)
from rswb.data.errors import DatasetNotFoundError
from rswb.data.scenes import check_images, image_to_tensor, load_image
from rswb.data.splits import carve_items, check_val_rule, held_out_block
from rswb.data.tags import Vocabulary, content_words
from rswb.data.transforms import dihedral
from rswb.utils import deprecated_names

__all__ = [
    "CachedCut", "CachedLevels", "CachedStates", "CaptionInputs", "CaptionText", "CaptionTokens", "ImagesFromFiles",
    "JoinedCaptions", "RetrievalData", "RetrievalSplit", "limit_images", "read_joined_captions", "scene_names",
    "subset_images", "truncate_words",
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


# --- how a split's images and captions reach the model: the inputs strategies a RetrievalSplit is given ------------


@dataclass
class ImagesFromFiles:
    """Images decoded from their files (encoders inside the model, or no model at all).

    Augmenting draws a random dihedral view per image.

    Attributes:
        paths: image file per image ``[N_i]``.
        image_size: decode size (``None``: native size).
    """

    paths: list[Path]
    image_size: int | None = None

    def __call__(self, idx: torch.Tensor, augment: bool) -> dict[str, Any]:
        """``{"image": [B, 3, S, S]}`` in [0, 1]."""
        imgs = torch.stack([image_to_tensor(load_image(self.paths[i], self.image_size)) for i in idx.tolist()])
        if augment:
            imgs = torch.stack([dihedral(im[None], int(v))[0] for im, v in zip(imgs, torch.randint(0, 8, (len(idx),)))])
        return {"image": imgs}


@dataclass
class CachedLevels:
    """Feature levels of a frozen backbone, cached once per image (the CPU profile).

    Attributes:
        levels: ``{name: [N_i, ...]}`` (float16 on disk, float32 in batches).
        backbone: the frozen backbone that computed them, for images outside the cache (word maps, free images).
    """

    levels: dict[str, torch.Tensor]
    backbone: nn.Module | None = None

    def __call__(self, idx: torch.Tensor, augment: bool) -> dict[str, Any]:
        """``{"levels": {name: [B, ...]}}`` (one view: ``augment`` does not apply)."""
        return {"levels": {k: v[idx] for k, v in self.levels.items()}}


@dataclass
class CachedCut:
    """Partial fine-tuning: the frozen trunk's output at the cut and the level maps tapped before it, per view.

    Attributes:
        maps: ``{"cut": [N_i, V, ...], <tap>: [N_i, V, ...]}``; a training batch takes a random view, evaluation
            view 0.
        backbone: the backbone whose trunk computed them (the model's frozen trunk must be this one).
    """

    maps: dict[str, torch.Tensor]
    backbone: nn.Module | None = None

    def __call__(self, idx: torch.Tensor, augment: bool) -> dict[str, Any]:
        """``{"cut": [B, ...], "taps": {tap: [B, ...]}}`` (float32)."""
        n_views = self.maps["cut"].shape[1]
        views = torch.randint(0, n_views, (len(idx),)) if augment and n_views > 1 else torch.zeros_like(idx)
        maps = {k: v[idx, views].float() for k, v in self.maps.items()}
        return {"cut": maps.pop("cut"), "taps": maps}


@dataclass
class CachedStates:
    """Token states of a frozen text transformer, cached once per caption.

    With ``key="hidden"`` (partial fine-tuning) they are the hidden states entering its first trained layer.

    Attributes:
        states: ``[N_c, L, D]``.
        mask: ``[N_c, L]`` (True on tokens).
        key: the batch key of the states: ``"states"`` or ``"hidden"``.
    """

    states: torch.Tensor
    mask: torch.Tensor
    key: str = "states"

    def __call__(self, idx: torch.Tensor) -> dict[str, Any]:
        """The states and mask of captions ``idx``, trimmed to the longest of them."""
        mask = self.mask[idx]
        width = max(1, int(mask.sum(1).max()))
        return {self.key: self.states[idx, :width], "mask": mask[:, :width]}


@dataclass
class CaptionTokens:
    """Token ids for a text encoder inside the model (``input_ids`` / ``attention_mask`` ``[N_c, L]``)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def __call__(self, idx: torch.Tensor) -> dict[str, Any]:
        """``{"tokens": {...}}`` of captions ``idx``, trimmed to the longest of them."""
        am = self.attention_mask[idx]
        width = max(1, int(am.sum(1).max()))
        return {"tokens": {"input_ids": self.input_ids[idx, :width], "attention_mask": am[:, :width]}}


@dataclass
class CaptionText:
    """The caption strings themselves (no text encoder: reading, counting, plotting a caption set)."""

    captions: list[str]

    def __call__(self, idx: torch.Tensor) -> dict[str, Any]:
        """``{"caption": [B strings]}``."""
        return {"caption": [self.captions[i] for i in idx.tolist()]}


def _first(x: Any) -> Any:
    """Item 0 of a batch (nested dicts, lists and tensors), the batch dimension dropped."""
    if isinstance(x, dict):
        return {k: _first(v) for k, v in x.items()}
    return x[0]


@dataclass
class RetrievalSplit(Dataset):
    """One split of a caption set joined to its images: the dataset of every image-text format.

    An item is a caption with its image. How images and captions reach the model is injected: ``images`` is
    :class:`ImagesFromFiles`, :class:`CachedLevels` or :class:`CachedCut`; ``text`` is :class:`CachedStates`,
    :class:`CaptionTokens` or :class:`CaptionText`. ``__getitems__`` gathers a whole batch dict in one pass (what
    training uses: the caption's text input, its image's input, ``image_id``, ``caption_id``, scene ``label``, and
    for the methods that use them ``value``, ``tags`` and ``tag_targets``); ``split[i]`` is the same dict for one
    caption without the batch dimension, passed through ``transforms``. Evaluation walks :meth:`image_batches` and
    :meth:`caption_batches` instead, every image once. :meth:`from_root` reads a caption set by
    ``(root, split, transforms)`` with images from files and captions as text.

    Attributes:
        name: split name.
        captions: caption strings ``[N_c]``.
        caption_to_image: image index of every caption ``[N_c]``.
        image_paths: image files ``[N_i]`` (``None``: a caption set without images).
        labels: scene class per image ``[N_i]`` (-1 when unknown).
        images: the image inputs (``None``: no images).
        text: the text inputs.
        caption_tags: each caption's own tag words, multi-hot ``[N_c, K]`` (uint8; KAMCL's knowledge).
        targets: KAMCL tag targets per image ``[N_i, K]`` (training split).
        values: FISVL value weight per caption ``[N_c]`` (training split).
        text_groups: text group per caption ``[N_c]`` (identical caption strings share one; training batches then
            carry ``text_group``), or ``None``.
        augment: training batches draw a random view of each image.
        query_encoder: turns free text into this split's text inputs (``rswb search``).
        transforms: applied to each ``split[i]`` sample.
        image_names: each image's name in the caption files ``[N_i]``.
        root: the caption set the split was read from.
        image_size: the size images are decoded at (figures, word maps; ``None``: native).
    """

    name: str
    captions: list[str]
    caption_to_image: np.ndarray
    image_paths: list[Path] | None
    labels: np.ndarray
    images: ImagesFromFiles | CachedLevels | CachedCut | None = None
    text: CachedStates | CaptionTokens | CaptionText | None = None
    caption_tags: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    values: torch.Tensor | None = None
    augment: bool = False
    query_encoder: CaptionInputs | None = None
    transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    image_names: list[str] | None = None
    root: Path | None = None
    image_size: int | None = None
    text_groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.text is None:
            self.text = CaptionText(list(self.captions))

    @classmethod
    def from_root(cls, root: str | Path, split: str = "train", transforms: Callable | None = None,
                  image_root: str | Path | None = None, image_size: int | None = None, fmt: str = "auto",
                  image_map: str | Path | None = None) -> RetrievalSplit:
        """A caption set's split by ``(root, split, transforms)``: images from their files, captions as text.

        Without an image root (e.g. RSICD captions shipped without images) samples carry no ``image`` and the split
        still serves text statistics and text encoders.

        Args:
            root: caption folder or JSON file.
            split: ``"train"``, ``"val"``, ``"test"`` (the set's own splits: :func:`caption_split_names`).
            transforms: callable applied to each sample dict.
            image_root: folder holding the images; default: ``images/`` beside the captions when it exists.
            image_size: decode images at this size (``None``: native sizes).
            fmt: caption format (:func:`rswb.data.captions.read_captions`).
            image_map: an explicit join, a CSV of ``name,path`` rows (:class:`~rswb.data.captions.ImageResolver`).

        Raises:
            DatasetNotFoundError: the caption files or the image root are missing.
            CaptionMismatchError: a caption's image is not under the image root.
        """
        root = Path(root)
        cs = read_captions(root, split, fmt)
        image_root = Path(image_root) if image_root is not None else default_image_root(root)
        paths = None
        if image_root is not None:
            resolver = ImageResolver(image_root, caption_set_names(root, fmt), image_map=image_map)
            paths = resolver.resolve_all(cs.image_names, cs.source)
        return cls(name=split, captions=list(cs.captions), caption_to_image=np.asarray(cs.caption_to_image, np.int64),
                   image_paths=paths, labels=np.full(cs.num_images, -1, np.int64),
                   images=ImagesFromFiles(paths, image_size) if paths is not None else None,
                   transforms=transforms, image_names=list(cs.image_names), root=root, image_size=image_size)

    def __len__(self) -> int:
        return len(self.captions)

    # --- what the inputs hold (read-only views for callers that look inside) -----------------------------------
    @property
    def has_images(self) -> bool:
        """Whether every caption's image was found."""
        return self.image_paths is not None

    @property
    def num_images(self) -> int:
        """Number of images."""
        return len(self.image_paths) if self.image_paths is not None else len(self.labels)

    @property
    def levels(self) -> dict[str, torch.Tensor] | None:
        """Cached feature levels ``{name: [N_i, ...]}`` (``None``: not this strategy)."""
        return self.images.levels if isinstance(self.images, CachedLevels) else None

    @property
    def cut(self) -> dict[str, torch.Tensor] | None:
        """Cached activations at the backbone's cut (``None``: not this strategy)."""
        return self.images.maps if isinstance(self.images, CachedCut) else None

    @property
    def backbone(self) -> nn.Module | None:
        """The frozen backbone behind cached image inputs (``None`` when the model holds its backbone)."""
        return getattr(self.images, "backbone", None)

    @property
    def states(self) -> torch.Tensor | None:
        """Cached token states ``[N_c, L, D]`` (``None``: not this strategy)."""
        return self.text.states if isinstance(self.text, CachedStates) and self.text.key == "states" else None

    @property
    def mask(self) -> torch.Tensor | None:
        """The token mask of cached states ``[N_c, L]`` (``None``: not cached)."""
        return self.text.mask if isinstance(self.text, CachedStates) else None

    def captions_of(self, image: int) -> list[str]:
        """All captions of image ``image``."""
        return [self.captions[j] for j in np.flatnonzero(self.caption_to_image == image)]

    def load_image(self, image: int) -> torch.Tensor:
        """Image ``image`` decoded from its file, ``[3, H, W]`` float in [0, 1]."""
        if self.image_paths is None:
            raise DatasetNotFoundError(self.root or Path(self.name), "this caption set has no image root",
                                       "image_root=... to load images")
        return image_to_tensor(load_image(self.image_paths[image], self.image_size))

    # --- batches ------------------------------------------------------------------------------------------------
    def image_inputs(self, index: np.ndarray, augment: bool = False) -> dict[str, Any]:
        """The image inputs of images ``index`` (``levels``, ``cut`` + ``taps``, or ``image``)."""
        if self.images is None:
            return {}
        return self.images(torch.as_tensor(np.asarray(index, np.int64)), augment)

    def text_inputs(self, index: np.ndarray) -> dict[str, Any]:
        """Text inputs of captions ``index``, trimmed to the longest caption among them (+ ``tags``)."""
        idx = torch.as_tensor(np.asarray(index, np.int64))
        out = self.text(idx)
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
        if self.text_groups is not None:
            batch["text_group"] = torch.as_tensor(self.text_groups[cap])
        return batch

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Caption ``index`` with its image: the :meth:`__getitems__` dict without the batch dimension."""
        batch = _first(self.__getitems__([index]))
        sample = {k: (int(v) if k in ("image_id", "label") else v) for k, v in batch.items()}
        sample["caption_id"] = int(index)
        return self.transforms(sample) if self.transforms else sample

    @staticmethod
    def collate(batch: dict[str, Any]) -> dict[str, Any]:
        """The ``collate_fn`` of a ``DataLoader`` over a split: :meth:`__getitems__` already built the batch."""
        return batch

    def image_batches(self, batch_size: int) -> Iterator[dict[str, Any]]:
        """Every image once, in order, as batches of model inputs."""
        for start in range(0, self.num_images, batch_size):
            yield self.image_inputs(np.arange(start, min(self.num_images, start + batch_size)))

    def caption_batches(self, batch_size: int) -> Iterator[dict[str, Any]]:
        """Every caption once, in order, as batches of model inputs."""
        for start in range(0, len(self), batch_size):
            yield self.text_inputs(np.arange(start, min(len(self), start + batch_size)))

    def plot(self, image: int | dict[str, Any] = 0, ax=None):
        """Show an image of the split (an index, or a sample of ``split[i]``) with all its captions.

        A caption set without images shows the captions alone. Returns the figure.
        """
        import matplotlib.pyplot as plt

        if isinstance(image, dict):
            image = int(image["image_id"])
        ax = ax or plt.subplots(figsize=(4, 4.8))[1]
        if self.image_paths is not None:
            ax.imshow(load_image(self.image_paths[image], self.image_size))
            ax.set_title(Path(self.image_paths[image]).name, fontsize=9)
        elif self.image_names is not None:
            ax.set_title(self.image_names[image], fontsize=9)
        ax.set_xlabel("\n".join(f"- {c}" for c in self.captions_of(image)), fontsize=8, loc="left")
        ax.set_xticks([])
        ax.set_yticks([])
        return ax.figure


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
                        max_words: int = 30, check_cache: Path | None = None, progress: bool = True,
                        val_rule: str = "block") -> JoinedCaptions:
    """Read a caption set's splits, join them to their images by evidence, carve the validation images, label scenes.

    The validation split is the set's own ``val`` split, else ``val_share`` of the training images with all their
    captions: under ``val_rule="block"`` the first images of each scene class in file order
    (:func:`rswb.data.splits.held_out_block`; UCM-Captions: NN 00-08 of each class, while its test images are NN
    80-99), which keeps the near-copies of neighbouring images out of training as the test split does; under
    ``"random"`` a seeded share (:func:`rswb.data.splits.carve_items`), the rule of runs made before. Every image
    is decoded once
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
    # The evidence for the join: every name of the set (before max_images limits it), over all its splits.
    resolver = ImageResolver(image_root, caption_set_names(root, fmt), image_map=image_map)
    if "val" in caption_split_names(root, fmt):  # a val split that is there but broken raises instead of being skipped
        val_cs = limit_images(read_captions(root, "val", fmt), max_images)
    else:  # carve a share of the training images, with all their captions
        check_val_rule(val_rule)
        if val_rule == "block":  # the first share of each scene's images (one block without scenes), in file order
            scenes = scene_names(train_cs, resolver.resolve_all(train_cs.image_names, train_cs.source), image_root,
                                 root)
            groups = np.unique(scenes, return_inverse=True)[1] if scenes is not None else None
            kept, carved = held_out_block(train_cs.num_images, val_share, groups)
        else:  # random
            kept, carved = carve_items(train_cs.num_images, val_share, split_seed)
        val_cs = subset_images(train_cs, carved, "val")
        train_cs = subset_images(train_cs, kept, "train")
    sets = {"train": train_cs, "val": val_cs, "test": test_cs}
    for cs in sets.values():
        if cs.num_images == 0:
            raise ValueError(f"{root}: the {cs.split} split has no images")
        cs.captions = [truncate_words(c, max_words) for c in cs.captions]

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
