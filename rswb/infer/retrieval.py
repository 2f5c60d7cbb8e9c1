"""Image-text retrieval outputs for people: search, query embeddings, where the model looks, rescored test scores.

Rescoring happens at inference, on trained runs: seed or checkpoint ensembles and query-bank normalisation
(:func:`two_way_scores`, scored by :func:`rescored_metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rswb.data.image_text import RetrievalSplit
from rswb.data.scenes import image_to_tensor, load_image
from rswb.engine.device import select_device, to_device
from rswb.engine.launch import LoadedRun, load_run
from rswb.engine.task import EvalContext
from rswb.metrics.retrieval import DEFAULT_TIES, retrieval_metrics, retrieval_ranks_from_embeddings
from rswb.models.qbnorm import dynamic_inverted_softmax
from rswb.tasks.retrieval.task import RetrievalTask
from rswb.utils import eval_mode

__all__ = [
    "SplitEmbeddings", "TwoWayScores", "encode_queries", "encode_run", "failure_cases", "rescored_metrics",
    "search_image", "search_text", "split_embeddings", "token_similarity", "two_way_scores", "word_region_maps",
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


# ------------------------------------------------------------------ rescoring at inference: ensembles, QB-Norm


@dataclass(frozen=True)
class SplitEmbeddings:
    """One run's embeddings of one split, with what identifies the split (to check an ensemble shares it).

    Attributes:
        image: L2-normalised image embeddings ``[N_i, D]`` (CPU float32).
        text: L2-normalised caption embeddings ``[N_c, D]``.
        caption_to_image: image index of every caption ``[N_c]``.
        captions: the caption texts ``[N_c]``.
        images: each image's name (file name where the split has no names) ``[N_i]``.
    """

    image: torch.Tensor
    text: torch.Tensor
    caption_to_image: np.ndarray
    captions: tuple[str, ...]
    images: tuple[str, ...]

    def same_split(self, other: SplitEmbeddings) -> bool:
        """Whether ``other`` holds the same images and captions in the same order."""
        return (self.images == other.images and self.captions == other.captions
                and np.array_equal(self.caption_to_image, other.caption_to_image))


@dataclass(frozen=True)
class TwoWayScores:
    """Image-to-text and text-to-image scores of one split, each laid out query x gallery.

    The two matrices are transposes of each other until a per-query rescoring (QB-Norm) changes one direction.

    Attributes:
        i2t: image queries x captions ``[N_i, N_c]``.
        t2i: caption queries x images ``[N_c, N_i]``.
        caption_to_image: image index of every caption ``[N_c]``.
        split: the split scored.
        runs: how many runs' similarities were averaged.
        qbnorm_beta: ``{"i2t": beta, "t2i": beta}``, ``None`` where a direction was not normalised.
    """

    i2t: torch.Tensor
    t2i: torch.Tensor
    caption_to_image: np.ndarray
    split: str
    runs: int
    qbnorm_beta: dict[str, float | None]


RunLike = str | Path | LoadedRun | Mapping[str, SplitEmbeddings]


def encode_run(run: str | Path | LoadedRun, splits: Sequence[str] = ("test",), *,
               device: str | torch.device | None = None, batch_size: int = 256) -> dict[str, SplitEmbeddings]:
    """A trained retrieval run's embeddings of some of its splits (:func:`split_embeddings` of each).

    Encode once and pass the result to :func:`two_way_scores` as many times as needed (several ``beta``, several
    ensembles): the encoders are the slow part.

    Args:
        run: a run folder (rebuilt with :func:`rswb.engine.load_run`, only ``splits``) or an already loaded run.
        splits: the split names, e.g. ``("train", "val", "test")``.
        device: where the encoders run (None: the best available).
        batch_size: images or captions per forward pass.

    Returns:
        ``{split: SplitEmbeddings}``.
    """
    loaded = run if isinstance(run, LoadedRun) else load_run(run, splits=tuple(splits), device=device)
    out = {}
    for name in splits:
        split = getattr(loaded, name, None)
        if split is None:
            raise ValueError(f"{loaded.path}: split {name!r} was not built (load the run with splits={tuple(splits)})")
        emb = split_embeddings(loaded.task, split, device, batch_size)
        names = (split.image_names if split.image_names is not None
                 else [Path(p).name for p in split.image_paths or ()])
        # Normalised again: every method's heads normalise already, but an ensemble average weighs runs equally
        # only when each similarity is a cosine, whatever a (user-registered) head returns.
        out[name] = SplitEmbeddings(F.normalize(emb["image"].float(), dim=1), F.normalize(emb["text"].float(), dim=1),
                                    np.asarray(split.caption_to_image, np.int64), tuple(split.captions),
                                    tuple(str(n) for n in names))
    return out


def _beta_per_direction(qbnorm_beta: float | Mapping[str, float | None] | None) -> dict[str, float | None]:
    if qbnorm_beta is None or isinstance(qbnorm_beta, int | float):
        return {"i2t": qbnorm_beta, "t2i": qbnorm_beta}
    unknown = set(qbnorm_beta) - {"i2t", "t2i"}
    if unknown:
        raise ValueError(f"qbnorm_beta keys must be 'i2t' and/or 't2i', got {sorted(unknown)}")
    return {d: qbnorm_beta.get(d) for d in ("i2t", "t2i")}


def _mean_similarity(encoded: Sequence[Mapping[str, SplitEmbeddings]], queries: tuple[str, str],
                     gallery: tuple[str, str]) -> torch.Tensor:
    """Mean over runs of ``queries @ gallery.T``; each a ``(split, "image" | "text")`` pair."""
    total = None
    for e in encoded:
        sim = getattr(e[queries[0]], queries[1]) @ getattr(e[gallery[0]], gallery[1]).t()
        total = sim if total is None else total.add_(sim)
    return total / len(encoded) if len(encoded) > 1 else total


def two_way_scores(runs: RunLike | Sequence[RunLike], split: str = "test",
                   qbnorm_beta: float | Mapping[str, float | None] | None = None, *, bank_split: str = "train",
                   qbnorm_k: int = 1, device: str | torch.device | None = None, batch_size: int = 256) -> TwoWayScores:
    """Both directions' scores of a split from one run or an ensemble, optionally query-bank normalised.

    **Ensemble**: each run's embeddings are L2-normalised and its image x caption cosine similarity computed; the
    scores are the mean of those matrices over runs (seeds or checkpoints of the same split; the splits are checked
    to hold the same images and captions). **QB-Norm** (:func:`rswb.models.qbnorm.dynamic_inverted_softmax`): the
    bank is ``bank_split`` (the training split: never the split scored) as queries of the same modality, scored
    against the same gallery by the same (ensemble) similarity: the training images for image queries (i2t), the
    training captions for caption queries (t2i).

    Args:
        runs: a run folder, a loaded run or the output of :func:`encode_run`, or a sequence of them (an ensemble).
        split: the split to score (``"test"``; ``"val"`` to choose ``beta``).
        qbnorm_beta: ``None`` (off), one ``beta`` for both directions, or ``{"i2t": beta, "t2i": beta}`` (a missing
            or ``None`` entry leaves that direction unnormalised).
        bank_split: the split whose queries form the bank.
        qbnorm_k: top-``k`` of each bank query form the activation set (QB-Norm's default 1).
        device: where encoders run for runs not yet encoded.
        batch_size: images or captions per forward pass when encoding.

    Returns:
        :class:`TwoWayScores` (CPU float32).
    """
    items = [runs] if isinstance(runs, str | Path | LoadedRun | Mapping) else list(runs)
    if not items:
        raise ValueError("two_way_scores needs at least one run")
    betas = _beta_per_direction(qbnorm_beta)
    needed = (split, bank_split) if any(b is not None for b in betas.values()) else (split,)
    encoded = [it if isinstance(it, Mapping) else encode_run(it, needed, device=device, batch_size=batch_size)
               for it in items]
    for name in needed:
        missing = [i for i, e in enumerate(encoded) if name not in e]
        if missing:
            raise ValueError(f"run(s) {missing} hold no embeddings of split {name!r} (encode_run(run, {needed}))")
        if not all(encoded[0][name].same_split(e[name]) for e in encoded[1:]):
            raise ValueError(f"the runs' {name!r} splits differ (another caption set or split seed): an ensemble "
                             "averages the scores of the same images and captions")
    sim = _mean_similarity(encoded, (split, "image"), (split, "text"))  # [N_i, N_c]
    i2t, t2i = sim, sim.t().contiguous()
    if betas["i2t"] is not None:
        bank = _mean_similarity(encoded, (bank_split, "image"), (split, "text"))  # training images x captions
        i2t = dynamic_inverted_softmax(i2t, bank, betas["i2t"], k=qbnorm_k)
    if betas["t2i"] is not None:
        bank = _mean_similarity(encoded, (bank_split, "text"), (split, "image"))  # training captions x images
        t2i = dynamic_inverted_softmax(t2i, bank, betas["t2i"], k=qbnorm_k)
    return TwoWayScores(i2t, t2i, encoded[0][split].caption_to_image, split, len(encoded), betas)


def rescored_metrics(scores: TwoWayScores, *, ks: Sequence[int] = (1, 5, 10),
                     ties: str = DEFAULT_TIES) -> dict[str, float]:
    """R@K both ways, mR and rank statistics of :class:`TwoWayScores` under a tie rule.

    Each direction is scored by :func:`rswb.metrics.retrieval.retrieval_metrics` on its own matrix (i2t from the
    rows of ``scores.i2t``, t2i from the rows of ``scores.t2i``), so a rescoring of one direction never leaks into
    the other; ``mR`` is the mean of the ``2 len(ks)`` recalls, as there.

    Args:
        scores: the output of :func:`two_way_scores`.
        ks: the cut-offs ``K`` of ``R@K``.
        ties: any rule of :data:`rswb.metrics.retrieval.TIE_RULES`.

    Returns:
        The keys of :func:`rswb.metrics.retrieval.retrieval_metrics` (``i2t_R@1`` ... ``mR``, ranks).
    """
    c2i = scores.caption_to_image
    i2t = retrieval_metrics(scores.i2t, c2i, ks=ks, ties=ties)
    # retrieval_metrics reads t2i from the columns of an image x caption matrix: hand it the transpose.
    same = torch.equal(scores.i2t, scores.t2i.t())
    t2i = i2t if same else retrieval_metrics(scores.t2i.t().contiguous(), c2i, ks=ks, ties=ties)
    out = {k: (t2i if k.startswith("t2i_") else i2t)[k] for k in i2t if k.startswith(("i2t_", "t2i_"))}
    recalls = [v for k, v in out.items() if "_R@" in k]
    out["mR"] = float(np.mean(recalls))
    return {k: out[k] for k in i2t if k in out}  # retrieval_metrics' key order
