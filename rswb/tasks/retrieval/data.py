"""The data of a retrieval run: caption splits joined to images, knowledge from the training captions, inputs.

Each split's encoder inputs are cached frozen features, or images and tokens for encoders inside the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rswb.data.captions import default_image_root
from rswb.data.features import cache_root, cached_images, cached_text, nbytes
from rswb.data.image_text import (
    CachedCut,
    CachedLevels,
    CachedStates,
    CaptionInputs,
    CaptionTokens,
    ImagesFromFiles,
    RetrievalData,
    RetrievalSplit,
    read_joined_captions,
)
from rswb.data.scenes import ImageFiles
from rswb.data.tags import Vocabulary, build_tag_vocabulary, caption_values, tag_targets
from rswb.engine.device import select_device
from rswb.metrics.retrieval import normalize_caption
from rswb.models.backbones import make_backbone
from rswb.models.retrieval import feature_levels, level_channels, level_names, make_text_encoder

if TYPE_CHECKING:
    from rswb.tasks.retrieval import RetrievalConfig

__all__ = ["prepare_data", "text_groups"]


def text_groups(captions: list[str]) -> np.ndarray:
    """The text group of every caption ``[N_c]`` (int64): captions whose normalised text is identical share one.

    UCM-Captions holds about 2,000 distinct strings among 10,500 captions: a template sentence written for many
    images. Its groups let the contrastive targets treat it as a positive of all of them (``duplicate_captions``).
    Normalised as the metrics' ``positives="text"`` view (:func:`rswb.metrics.retrieval.normalize_caption`).
    """
    index: dict[str, int] = {}
    return np.array([index.setdefault(normalize_caption(c), len(index)) for c in captions], np.int64)


def _cached_cuts(cfg: RetrievalConfig, cs: Any, progress: bool,
                 device: torch.device) -> tuple[torch.nn.Module, dict[str, dict]]:
    """Partial fine-tuning: per split, the frozen trunk's output at the cut and the level maps tapped before it.

    Float16, ``views`` dihedral views of the training images and one of the others, from the disk cache.

    Returns:
        The backbone that computed them (the model's frozen trunk must be this one) and
        ``{split: {"cut": [N, V, ...], <tap>: [N, V, ...]}}``.
    """
    backbone = make_backbone(cfg.backbone, cfg.pretrained, cfg.backbone_path)
    cut = cfg.train_from
    keep = set(level_names(backbone).values())  # the maps the heads read (the stride-8/16/32 ones)

    def until(b: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v for k, v in b.forward_until(x, cut).items() if k == "cut" or k in keep}

    out = {}
    for split, ps in cs.paths.items():
        views = cfg.views if split == "train" else 1
        # The frozen pieces' weights shape the cache (backbone.trunk), not the trained ones.
        out[split] = cached_images(backbone, ImageFiles(ps, cfg.image_size), ps, output=f"{cfg.backbone}-{cut}-levels",
                                   fn=until, views=views, settings=cfg.image_size, weights=backbone.trunk(cut),
                                   split=split, cache_dir=cfg.cache_dir, device=device,
                                   dtype=torch.float16, progress=progress,
                                   desc=f"{cfg.backbone} up to {cut} ({split}, {len(ps)} images x {views})")
        print(f"cached {cut} activations ({split}): {len(ps)} images x {views} views, "
              f"{nbytes(out[split]) / 2**20:.0f} MiB")
    return backbone, out


def prepare_data(cfg: RetrievalConfig, progress: bool = True,
                 device: str | torch.device | None = None) -> RetrievalData:
    """The splits of a run, with the knowledge from the training captions and each split's encoder inputs.

    Captions are joined to images by :func:`rswb.data.image_text.read_joined_captions`; the inputs are cached frozen
    encoder outputs (:mod:`rswb.data.features`, computed on ``device``; None: the best available), or images and
    tokens for encoders inside the model.

    Raises:
        DatasetNotFoundError: missing caption files or image root.
        CaptionMismatchError: a caption's image is missing under the image root.
        ValueError: FISVL without scene labels, a split left without images, an unknown text encoder.
    """
    from rswb.data.synthetic import ensure_embedded

    device = select_device(device)
    root = Path(cfg.data) if cfg.data else ensure_embedded("captions")
    cs = read_joined_captions(root, Path(cfg.images) if cfg.images else default_image_root(root), cfg.fmt,
                             cfg.image_map, cfg.max_images, cfg.val_share, cfg.split_seed, cfg.max_words,
                             cache_root(cfg.cache_dir) / "image_checks", progress, val_rule=cfg.val_rule)
    if cfg.method == "fisvl" and not cs.class_names:
        raise ValueError(f"{root}: FISVL needs a scene label per image (a Karpathy 'scene' field, or class folders "
                         f"under the image root {cs.image_root}); none found")
    if cfg.text_encoder not in ("minilm", "hf_text", "gru_text"):
        raise ValueError(f"unknown text encoder {cfg.text_encoder!r}; use minilm, hf_text or gru_text")
    train_caps = cs.sets["train"].captions

    # Knowledge from the training captions only.
    vocab_tags = build_tag_vocabulary(train_caps, k=cfg.num_tags) if cfg.num_tags else []
    per_image = [cs.sets["train"].captions_of(i) for i in range(cs.sets["train"].num_images)]
    targets = torch.from_numpy(tag_targets(per_image, vocab_tags)) if vocab_tags else None
    values = torch.from_numpy(caption_values(train_caps))

    # Image inputs: cached frozen feature levels, or nothing (the model loads images).
    channels, backbone, cut_maps = None, None, {s: None for s in cs.paths}
    levels: dict[str, dict[str, torch.Tensor] | None] = {s: None for s in cs.paths}
    if cfg.train_from is not None:
        backbone, cut_maps = _cached_cuts(cfg, cs, progress, device)
        channels = level_channels(backbone)
    elif cfg.freeze_backbone:
        backbone = make_backbone(cfg.backbone, cfg.pretrained, cfg.backbone_path)
        channels = level_channels(backbone)
        for split, ps in cs.paths.items():
            levels[split] = cached_images(backbone, ImageFiles(ps, cfg.image_size), ps,
                                          output=f"{cfg.backbone}-levels", fn=feature_levels,
                                          settings=cfg.image_size, split=split, cache_dir=cfg.cache_dir,
                                          device=device, dtype=torch.float16, progress=progress,
                                          desc=f"{cfg.backbone} feature levels ({split}, {len(ps)} images)")

    # Text inputs: cached frozen transformer states, or tokens for an encoder inside the model.
    vocab, encoder = None, None
    if cfg.text_encoder == "gru_text":
        vocab = Vocabulary.build(train_caps, min_count=1)
    else:
        encoder = make_text_encoder(cfg.text_encoder, True, cfg.text_path, max_length=2 * cfg.max_words)
    inputs = CaptionInputs(vocab_tags, cfg.max_words, minilm=encoder, vocab=vocab,
                           states=cfg.freeze_text and not cfg.text_train_last)
    text: dict[str, CachedStates | CaptionTokens] = {}
    for split, caps in ((s, c.captions) for s, c in cs.sets.items()):
        if cfg.text_train_last:  # partial: the hidden states entering the first trained layer
            layer = encoder.num_layers - cfg.text_train_last
            out = cached_text(encoder, caps, output=f"{cfg.text_encoder}-layer{layer}", layer=layer, split=split,
                              cache_dir=cfg.cache_dir, device=device, progress=progress,
                              desc=f"{cfg.text_encoder} layers 0-{layer - 1} ({split}, {len(caps)} captions)")
            text[split] = CachedStates(out["states"], out["mask"], key="hidden")
        elif inputs.states:
            out = cached_text(encoder, caps, output=cfg.text_encoder, split=split, cache_dir=cfg.cache_dir,
                              device=device, progress=progress,
                              desc=f"{cfg.text_encoder} token states ({split}, {len(caps)} captions)")
            text[split] = CachedStates(out["states"], out["mask"])
        else:
            text[split] = CaptionTokens(**inputs.tokens(caps))

    def images(split: str) -> ImagesFromFiles | CachedLevels | CachedCut:
        if cut_maps[split] is not None:
            return CachedCut(cut_maps[split], backbone)
        if levels[split] is not None:
            return CachedLevels(levels[split], backbone)
        return ImagesFromFiles(cs.paths[split], cfg.image_size)

    def split_data(split: str) -> RetrievalSplit:
        c, train = cs.sets[split], split == "train"
        return RetrievalSplit(
            name=split, captions=c.captions, caption_to_image=c.caption_to_image.astype("int64"),
            image_paths=cs.paths[split], labels=cs.labels[split], images=images(split), text=text[split],
            caption_tags=inputs.tags(c.captions), targets=targets if train else None,
            values=values if train else None, augment=train, query_encoder=inputs,
            image_names=list(c.image_names), root=root, image_size=cfg.image_size,
            text_groups=text_groups(c.captions) if train and cfg.duplicate_captions else None)

    return RetrievalData(train=split_data("train"), val=split_data("val"), test=split_data("test"),
                         class_names=cs.class_names, tag_vocabulary=vocab_tags, root=root, image_root=cs.image_root,
                         channels=channels, text_dim=encoder.state_dim if encoder is not None else 0, vocab=vocab)
