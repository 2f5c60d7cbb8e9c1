"""Image-text retrieval outputs for people: search, query embeddings, where the model looks (word maps)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rswb.data.image_text import RetrievalSplit
from rswb.data.scenes import image_to_tensor, load_image
from rswb.engine.device import select_device, to_device
from rswb.engine.task import EvalContext
from rswb.metrics.retrieval import retrieval_ranks_from_embeddings
from rswb.tasks.retrieval.task import RetrievalTask
from rswb.utils import eval_mode

__all__ = [
    "encode_queries", "failure_cases", "search_image", "search_text", "split_embeddings", "token_similarity",
    "word_region_maps",
]

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
    device = next(task.parameters()).device
    with eval_mode(task):
        return task.model.encode_text(to_device(split.query_encoder(list(queries)), device)).float().cpu()


def search_text(task: RetrievalTask, split: RetrievalSplit, query: str, k: int = 5,
                embeddings: dict[str, torch.Tensor] | None = None) -> list[dict[str, Any]]:
    """The ``k`` images of ``split`` most similar to a free-text query, best first.

    Args:
        task: a trained retrieval task (e.g. ``load_run(run).task``).
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


@torch.no_grad()
def token_similarity(task: RetrievalTask, split: RetrievalSplit, image: int, query: str) -> np.ndarray:
    """Where the model looks: the similarity of each image location with a text query, ``[h, w]`` (stride 32).

    Every method's image embedding has a term that is a linear map ``W`` of the pooled backbone vector, the mean of
    the last feature map's tokens ``h_ij``. Applying ``W`` to each token instead gives that location's share of the
    term, ``W h_ij``; its cosine similarity with the query's embedding shows which regions pull the image towards
    the text. (The other heads - FISVL's graph, KAMCL's GPO - are nonlinear and not decomposed.)
    """
    model = task.model
    backbone = model.backbone if model.backbone is not None else split.backbone
    if backbone is None:
        raise ValueError("no backbone to compute the image's feature map from")
    device = next(task.parameters()).device
    backbone.eval().to(device)
    img = image_to_tensor(load_image(split.image_paths[image], split.image_size))[None].to(device)
    feats = backbone.forward_features(img)
    last = next(f.name for f in reversed(backbone.feature_info) if f.channels == backbone.num_features)
    fmap = feats[last][0].float()  # [F, h, w]
    tokens = F.normalize(model.pooled_projection()(fmap.flatten(1).t()), dim=1)  # [h*w, D]
    q = encode_queries(task, split, [query])[0].to(device)
    return (tokens @ q).reshape(fmap.shape[1:]).cpu().numpy()


def _token_strings(encoder: Any, ids: torch.Tensor) -> list[str]:
    """Readable tokens of one caption's ids (MiniLM word pieces, or the GRU vocabulary's words)."""
    if getattr(encoder, "vocab", None) is not None:
        return [encoder.vocab.words[int(i)] for i in ids]
    return encoder.minilm.tokenizer.convert_ids_to_tokens([int(i) for i in ids])


def word_region_maps(task: RetrievalTask, split: RetrievalSplit, image: int, caption: str,
                     levels: Sequence[str] = ("low", "mid", "high"), method: str = "gradcam") -> dict[str, Any]:
    """Each word of a caption: its share of the image-caption score and where in the image it is found.

    **Share** of token ``t``: the cosine score of the image and the caption minus the score of the caption with ``t``
    left out (its attention-mask entry off), ``s - s_{-t} = <v, e - e_{-t}>`` with ``v`` the image embedding and
    ``e`` the caption's; positive: the word pulls the pair together. **Where**: the map of that share over the
    backbone's stride-8 (``low``), stride-16 (``mid``) and stride-32 (``high``) maps, the levels FISVL's local branch
    and KAMCL's aggregator read (28 x 28, 14 x 14 and 7 x 7 at 224 px), combined into one map at the image's size
    (:func:`rswb.models.explain.multi_layer_cam`; Grad-CAM over the three levels by default, the variant that
    ``benchmarks/explain`` found to point at the named objects most often, ``benchmarks/results/explain.md``). The
    special tokens ([CLS], [SEP]) are skipped.

    Args:
        task: a trained retrieval task (its model; the split's backbone when the model keeps none).
        split: the split whose images and caption pipeline are used.
        image: image index in the split.
        caption: any text.
        levels: ``"low"`` (stride 8), ``"mid"`` (stride 16), ``"high"`` (stride 32), in any subset.
        method: how each level's map is made: ``"gradcam"`` or ``"layercam"``.

    Returns:
        ``tokens`` ``[T]``, ``share`` ``[T]`` (score points), ``score`` (the full caption's cosine), ``maps``
        ``{level: [T, h, w]}`` in [0, 1] (each level's map), ``cam`` ``[T, H, W]`` in [0, 1] (the levels combined),
        ``caption_cam`` ``[H, W]`` (the same map of the whole caption's score: where the image matches the
        caption) and ``caption_maps`` ``{level: [h, w]}``, ``levels``, ``method``, ``image`` ``[H, W, 3]`` uint8.
    """
    from rswb.models.explain import multi_layer_cam
    from rswb.models.retrieval import feature_levels, level_names

    model = task.model
    backbone = model.backbone if model.backbone is not None else split.backbone
    if backbone is None or split.query_encoder is None:
        raise ValueError("word maps need the split's backbone and caption pipeline (build it with prepare_data)")
    device = next(task.parameters()).device
    text = split.query_encoder([caption])
    ids = text["tokens"]["input_ids"][0] if "tokens" in text else split.query_encoder.tokens([caption])["input_ids"][0]
    mask_of = (lambda b: b["tokens"]["attention_mask"]) if "tokens" in text else (lambda b: b["mask"])
    valid = mask_of(text)[0].bool()
    strings = _token_strings(split.query_encoder, ids[: len(valid)])
    keep = [t for t in range(int(valid.sum())) if strings[t] not in ("[CLS]", "[SEP]", "<pad>")]
    variants = {k: (v.repeat(1 + len(keep), *[1] * (v.ndim - 1)) if torch.is_tensor(v) else
                    {kk: vv.repeat(1 + len(keep), 1) for kk, vv in v.items()}) for k, v in text.items()}
    m = mask_of(variants)
    for row, t in enumerate(keep, 1):
        m[row, t] = False if m.dtype == torch.bool else 0
    with eval_mode(task), torch.no_grad():
        e = model.encode_text(to_device(variants, device)).float()  # [1 + T, D]
    # Row 0 scores the whole caption, row 1 + t the share of token t: one batch gives every map.
    directions = torch.cat([e[:1], e[:1] - e[1:]]).detach()  # [1 + T, D]
    picture = load_image(split.image_paths[image], split.image_size)
    x = image_to_tensor(picture)[None].to(device).repeat(len(directions), 1, 1, 1)
    names = level_names(backbone)
    pieces = {p.tap: p for p in backbone.pieces() if p.tap}

    def scores(images: torch.Tensor) -> torch.Tensor:
        return (model.image_head(feature_levels(backbone, images))["image_emb"].float() * directions).sum(1)

    with eval_mode(task), eval_mode(backbone):
        out = multi_layer_cam(scores, {level: pieces[names[level]].modules[-1] for level in levels}, x, method=method)
        values = scores(x).detach().cpu().numpy()
    cam = out["cam"].cpu().numpy()
    return {"tokens": [strings[t] for t in keep], "share": values[1:], "score": float(values[0]),
            "maps": {level: m[1:].cpu().numpy() for level, m in out["layers"].items()}, "cam": cam[1:],
            "caption_cam": cam[0], "caption_maps": {level: m[0].cpu().numpy() for level, m in out["layers"].items()},
            "levels": list(levels), "method": method, "image": picture}


def failure_cases(embeddings: Mapping[str, torch.Tensor], split, n: int = 4) -> list[dict[str, Any]]:
    """The ``n`` captions whose own image ranks worst in text-to-image search (ties: the first captions).

    Ranks are optimistic (an image tied with its caption's best match counts as ranked above it), so every case
    shown is a failure under any order of tied items, not an artefact of duplicate captions.

    Returns:
        ``[{"caption", "index", "truth", "rank", "top"}]``: the caption, its index, its image, that image's 1-based
        rank, and the image ranked first instead.
    """
    _, t2i = retrieval_ranks_from_embeddings(embeddings["image"], embeddings["text"], split.caption_to_image,
                                              ties="optimistic")
    worst = np.argsort(-t2i, kind="stable")[:n]
    top = (embeddings["text"][torch.as_tensor(worst)] @ embeddings["image"].t()).argmax(1).numpy()
    return [{"caption": split.captions[j], "index": int(j), "truth": int(split.caption_to_image[j]),
             "rank": int(t2i[j]) + 1, "top": int(t)} for j, t in zip(worst, top)]
