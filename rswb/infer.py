"""Model outputs for people to look at: search, attention maps, dense scene maps, codes and embeddings.

Training never calls these; notebooks, ``rswb search`` and ``rswb eval`` do. Everything here runs a trained model
(in eval mode, restored afterwards) and returns arrays or tensors; :mod:`rswb.viz` draws them.

* image-text retrieval: :func:`split_embeddings`, :func:`encode_queries`, :func:`search_text`,
  :func:`search_image`, :func:`token_similarity` (where the model looks).
* hashing: :func:`load_codes` (the codes of a trained run's query set).
* PHA: :func:`load_predictions` (test predictions, confusion, full-scene map), :func:`modality_embeddings`,
  :func:`dictionary_codes`; the dense scene pass itself is :func:`rswb.models.pha.dense_predict`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from rswb.data.image_text import RetrievalSplit
from rswb.data.scenes import image_to_tensor, load_image
from rswb.engine.device import select_device, to_device
from rswb.engine.retrieval import RetrievalTask
from rswb.engine.task import EvalContext
from rswb.metrics.classification import classification_report, scores_from_confusion
from rswb.metrics.explain import modality_shares
from rswb.models.hashing import cue_bits
from rswb.models.pha import STAGE_NAMES
from rswb.utils import eval_mode

__all__ = [
    "dictionary_codes", "encode_queries", "hash_grad_cam", "load_codes", "load_predictions", "modality_embeddings",
    "pha_attributions", "pha_scene_maps", "search_image", "search_text", "split_embeddings", "token_similarity",
    "word_region_maps",
]


# ------------------------------------------------------------------------------------------- image-text retrieval


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


# ------------------------------------------------------------------------------------------------------------ hashing


def load_codes(run_dir: str | Path, device: str | None = None) -> dict[str, Any]:
    """The test-split outputs of a trained hash run, with what the figures of notebook 04 need.

    Only the query (= database) split is built (:func:`rswb.tasks.hashing.query_task`): the training images'
    features are not needed here.

    Args:
        run_dir: a finished ``rswb train hash`` run.
        device: where to run the model (None: the best available).

    Returns:
        ``code`` ``[N, K + c * repeats]`` (the ranking code: hash bits and the semantic cue, each of its c class bits
        repeated so that the class ranks first) and ``bits`` ``[N, K]`` (int8, ``{-1, +1}``, without the cue);
        ``hash_bits`` (K), ``cue_bits`` (c, 0 without the cue) and ``code_bits`` (K + c: what a code stores),
        ``pred`` and ``label`` ``[N]`` (int64), ``paths`` (the image file of each item), ``class_names`` and
        ``metrics`` (the run's recorded test metrics), in the order of the query set (= database).

    Raises:
        FileNotFoundError: the run has no selected weights.
        RuntimeError: the query folder changed since the run.
    """
    run, _, task, test, query = _hash_query(run_dir)
    dev = select_device(device)
    out = task.to(dev).collect(test, EvalContext(dev))
    labels = out["label"].numpy().astype(np.int64)
    if len(query) != len(labels) or not np.array_equal(query.labels, labels):
        raise RuntimeError(f"{run.path}: the query folder under {query.root} no longer matches the run's test split")
    model = task.model
    cue = cue_bits(model.num_classes) if model.cue else 0
    return {"code": out["code"].numpy().astype(np.int8), "bits": out["bits"].numpy().astype(np.int8),
            "hash_bits": int(model.bits), "cue_bits": cue, "code_bits": int(model.bits) + cue,
            "pred": out["pred"].numpy().astype(np.int64), "label": labels,
            "paths": [str(r.path) for r in query.records], "class_names": list(query.classes),
            "metrics": (run.read_final() or {}).get("test", {})}


def _hash_query(run_dir: str | Path):
    """A finished hash run's folder, config, task (selected weights) and query split (dataset and folder)."""
    from rswb.config import from_dict
    from rswb.engine.launch import renamed
    from rswb.engine.runs import RunFolder
    from rswb.io import load_checkpoint
    from rswb.tasks.hashing import HashConfig, query_task

    run = RunFolder(run_dir)
    if not run.best.exists():
        raise FileNotFoundError(f"{run.best}: weights file not found (is the run finished?)")
    cfg = from_dict(HashConfig, renamed(HashConfig, run.read_config().get("task_config", {})), source=str(run.config))
    task, test, query = query_task(cfg, load_checkpoint(run.best)["task"])
    return run, cfg, task, test, query


def hash_grad_cam(run_dir: str | Path, indices: Sequence[int], device: str | None = None,
                  method: str = "layercam", strides: tuple[int, ...] | None = (8, 16)) -> dict[str, Any]:
    """Where a hash run's code and its class cue come from, on query images (:meth:`rswb.models.hashing.DHCL.grad_cam`).

    The default, LayerCAM over the stride-8 and stride-16 maps, is the method ``benchmarks/explain`` found to point
    at the objects of the embedded scenes (``benchmarks/results/explain.md``); ``method="gradcam", strides=None`` is
    the plain stride-32 Grad-CAM (a 4 x 4 grid at 128 px), which points no better than the image centre there.

    Args:
        run_dir: a finished ``rswb train hash`` run.
        indices: positions in the query split (the order of :func:`load_codes`).
        device: where to run the model (None: the best available).
        method: ``"layercam"`` or ``"gradcam"``.
        strides: the backbone maps combined (``None``: the last map alone, Grad-CAM only).

    Returns:
        ``images`` ``[B, H, W, 3]`` uint8 (at the run's image size), ``code`` and ``cue`` maps ``[B, h, w]`` in
        [0, 1], ``pred`` and ``label`` ``[B]``, ``class_names``, ``paths`` (the image files) and ``method`` (a
        short description of the maps).
    """
    _, cfg, task, _, query = _hash_query(run_dir)
    idx = [int(i) for i in indices]
    images = np.stack([load_image(query.records[i].path, cfg.image_size) for i in idx])
    x = torch.stack([image_to_tensor(im) for im in images])
    dev = select_device(device)
    model = task.model.to(dev)
    maps = {target: model.grad_cam(x.to(dev), target, method=method, strides=strides) for target in ("code", "cue")}
    where = "stride 32" if strides is None else "strides " + "/".join(map(str, strides))
    return {"images": images, "code": maps["code"]["cam"].cpu().numpy(), "cue": maps["cue"]["cam"].cpu().numpy(),
            "pred": maps["cue"]["pred"].cpu().numpy(), "label": np.array([query.records[i].label for i in idx]),
            "class_names": list(query.classes), "paths": [str(query.records[i].path) for i in idx],
            "method": f"{'LayerCAM' if method == 'layercam' else 'Grad-CAM'}, {where}"}


# ------------------------------------------------------------------------------------------------- PHA outputs


def load_predictions(run_dir: str | Path, device: str | None = None) -> dict[str, Any]:
    """A finished PHA run's test predictions (no training): its model, confusion matrix and full-scene map.

    Pixel mode runs the model densely over the whole normalised scene (:func:`rswb.models.pha.dense_predict`) and
    reads the run's test pixels from that map, which gives the same predictions as per-patch inference; scene mode
    (a scene folder) classifies the test images with :meth:`~rswb.engine.Task.collect`.

    Args:
        run_dir: a finished ``rswb train pha`` run (its ``best.pt`` is loaded).
        device: where to run the model (None: the best available).

    Returns:
        ``model`` (the trained :class:`~rswb.models.pha.PHANet`, in eval mode), ``pred_map`` (``[H, W]`` int64
        0-based classes, ``None`` in scene mode), ``y_true`` and ``y_pred`` (``[N]`` 0-based, the run's test
        set), ``confusion`` (``[C, C]``), ``per_class_accuracy`` (``[C]``) and ``metrics`` (``OA``, ``AA``,
        ``kappa`` fractions, equal to the run's recorded test scores).
    """
    from rswb.engine.launch import load_trained

    bundle = load_trained(run_dir)
    dev = select_device(device)
    task = bundle.task.to(dev)
    pred = task.predictions(bundle.test, EvalContext(dev), dense=True)  # dense: the notebook shows the full map
    y_true, y_pred = pred["y_true"], pred["y_pred"]
    report = classification_report(y_true, y_pred, num_classes=task.num_classes)
    return {"model": task.model, "pred_map": pred["pred_map"], "y_true": np.asarray(y_true),
            "y_pred": np.asarray(y_pred),
            "confusion": report["confusion_matrix"], "per_class_accuracy": report["per_class_accuracy"],
            "metrics": scores_from_confusion(report["confusion_matrix"])}


def _sample(n_items: int, n: int | None, seed: int) -> np.ndarray:
    if n is None or n >= n_items:
        return np.arange(n_items)
    return np.sort(np.random.default_rng(seed).choice(n_items, n, replace=False))


def _batches(dataset: Dataset, indices: np.ndarray, batch_size: int) -> Iterator[dict[str, Any]]:
    """Batch dicts of ``dataset[indices]`` (a patch dataset's ``__getitems__`` already returns one)."""
    for start in range(0, len(indices), batch_size):
        chunk = [int(i) for i in indices[start:start + batch_size]]
        items = dataset.__getitems__(chunk) if hasattr(dataset, "__getitems__") else [dataset[i] for i in chunk]
        yield items if isinstance(items, dict) else default_collate(list(items))


@torch.no_grad()
def _outputs(model: torch.nn.Module, dataset: Dataset, n: int | None, seed: int, batch_size: int,
             pick: Callable[[dict[str, Any]], dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """``pick(model output)`` over a seeded sample of ``dataset``, concatenated, with the items' labels."""
    device = next(model.parameters()).device
    chunks: dict[str, list[np.ndarray]] = {"labels": []}
    with eval_mode(model):
        for batch in _batches(dataset, _sample(len(dataset), n, seed), batch_size):
            x = {k: batch[k].to(device) for k in ("ms", "pan") if k in batch}
            for k, v in pick(model(x)).items():
                chunks.setdefault(k, []).append(v.float().cpu().numpy())
            chunks["labels"].append(np.asarray(batch["label"]).astype(np.int64))
    return {k: np.concatenate(v) for k, v in chunks.items()}


def modality_embeddings(model: torch.nn.Module, dataset: Dataset, n: int | None = 300, stage: int | str | None = None,
                        seed: int = 0, batch_size: int = 256) -> dict[str, Any]:
    """The MS and PAN alignment embeddings of one stage on a seeded sample of items.

    Args:
        model: an aligned :class:`~rswb.models.pha.PHANet` version (``pha_v2`` ... ``pha_v5``), trained or not.
        dataset: items with ``ms``, ``pan`` and ``label`` (e.g. a run's test split, ``PHAData.test``).
        n: items to sample (``None``: all).
        stage: stage index or name (``"shallow"``, ``"middle"``, ``"deep"``); default: the deepest aligned stage
            (for ``pha_v5`` the deep embeddings are the dictionary codes).
        seed: seed of the sample (the same seed gives the same items for two models).
        batch_size: items per forward pass.

    Returns:
        ``{"ms": [N, D], "pan": [N, D], "labels": [N], "stage": name}`` for :func:`rswb.viz.plot_modality_embedding`.

    Raises:
        ValueError: the model aligns no stage, or not ``stage``.
    """
    aligned = tuple(getattr(model, "align_stages", ()))
    if not aligned:
        raise ValueError("the model has no alignment embeddings (pick an aligned version: pha_v2 ... pha_v5)")
    s = aligned[-1] if stage is None else (STAGE_NAMES.index(stage) if isinstance(stage, str) else int(stage))
    if s not in aligned:
        raise ValueError(f"stage {stage!r} is not aligned in this model; aligned: "
                         f"{', '.join(STAGE_NAMES[a] for a in aligned)}")
    out = _outputs(model, dataset, n, seed, batch_size, lambda o: {"ms": o["embed"][s][0], "pan": o["embed"][s][1]})
    return {**out, "stage": STAGE_NAMES[s]}


def dictionary_codes(model: torch.nn.Module, dataset: Dataset, n: int | None = 1000, seed: int = 0,
                     batch_size: int = 256) -> dict[str, np.ndarray]:
    """The dictionary codes of both modalities (``pha_v5``) on a seeded sample of items.

    Args:
        model: a :class:`~rswb.models.pha.PHANet` with the compensated dictionary.
        dataset: items with ``ms``, ``pan`` and ``label``.
        n: items to sample (``None``: all).
        seed: seed of the sample.
        batch_size: items per forward pass.

    Returns:
        ``{"ms": [N, atoms], "pan": [N, atoms], "labels": [N]}`` for :func:`rswb.viz.plot_dictionary_usage`.

    Raises:
        ValueError: the model has no dictionary.
    """
    if getattr(model, "dictionary", None) is None:
        raise ValueError("the model has no dictionary (only pha_v5 has one)")
    return _outputs(model, dataset, n, seed, batch_size, lambda o: {"ms": o["codes_ms"], "pan": o["codes_pan"]})


def pha_attributions(model: torch.nn.Module, sampler: Any, rows: Sequence[int], cols: Sequence[int],
                     baseline: Mapping[str, torch.Tensor] | None = None, twin: Sequence[int] | None = None,
                     steps: int = 32, device: str | None = None) -> dict[str, Any]:
    """Which MS and which PAN pixels make a PHA version's decision, at the patches' own resolution.

    Integrated gradients (captum's ``IntegratedGradients``, ``steps`` points on the straight path) of the score
    from a baseline to each pixel's MS and PAN patches: the attributions of every MS and PAN pixel sum, over both
    modalities, to ``score(x) - score(baseline)`` (completeness), so ``pan_share`` = the PAN sum over both sums is
    the part of the decision PAN carries (:func:`rswb.metrics.explain.modality_shares`: a modality whose sum is
    negative counts 0). The score is the predicted class's logit, or with ``twin`` the margin
    ``logit(pred) - logit(twin)`` against another class (e.g. the class that differs only in PAN texture). The
    baseline is each band's mean (over the scene by default): a flat patch with no spectrum or texture to read.
    ``benchmarks/explain`` checks this kind of per-modality reading against the embedded scene's design.

    Args:
        model: a trained :class:`~rswb.models.pha.PHANet` with convolutional branches.
        sampler: the scene's :class:`~rswb.data.mspan.PatchSampler`.
        rows: the pixels' rows (MS grid).
        cols: their columns.
        baseline: ``{"ms": [bands], "pan": [1]}`` per-band baseline values (default: the scene's band means).
        twin: one 0-based class per pixel for the margin score (default: the logit alone).
        steps: integration steps.
        device: where to run the model (None: the best available).

    Returns:
        ``ms`` ``[B, patch, patch, 3]`` (the first three bands, for display), ``pan`` ``[B, r patch, r patch]``,
        ``attr_ms`` ``[B, patch, patch]`` and ``attr_pan`` ``[B, r patch, r patch]`` (signed, summed over bands:
        positive raises the score), ``pan_share`` ``[B]`` in [0, 1] (NaN where neither sum is positive),
        ``delta`` ``[B]`` (the score's change from the baseline, what the attributions sum to), ``pred`` ``[B]``.
    """
    from captum.attr import IntegratedGradients

    from rswb.models.pha import PHANet

    if not isinstance(model, PHANet) or model.feature_dims is not None:
        raise ValueError("pha_attributions needs a PHANet with convolutional branches (images, not encoder features)")
    if set(model.modalities) != {"ms", "pan"}:
        raise ValueError(f"pha_attributions needs both modalities; the model has {list(model.modalities)}")
    dev = select_device(device)
    batch = sampler.gather(np.asarray(rows), np.asarray(cols))
    ms, pan = batch["ms"].to(dev), batch["pan"].to(dev)
    if baseline is None:
        scene = sampler.scene
        baseline = {"ms": torch.as_tensor(scene.ms.reshape(scene.bands, -1).mean(1)),
                    "pan": torch.as_tensor(scene.pan.reshape(1, -1).mean(1))}
    base = (baseline["ms"].float().to(dev).view(1, -1, 1, 1).expand_as(ms),
            baseline["pan"].float().to(dev).view(1, -1, 1, 1).expand_as(pan))
    model = model.to(dev)
    with eval_mode(model), torch.no_grad():
        pred = model({"ms": ms, "pan": pan})["logits"].argmax(1)
    other = None if twin is None else torch.as_tensor(np.asarray(twin), device=dev)

    def score(ms_in: torch.Tensor, pan_in: torch.Tensor) -> torch.Tensor:
        logits = model({"ms": ms_in, "pan": pan_in})["logits"]
        n = len(ms_in) // len(pred)  # captum stacks the path's points along the batch
        out = logits.gather(1, pred.repeat(n)[:, None])[:, 0]
        return out if other is None else out - logits.gather(1, other.repeat(n)[:, None])[:, 0]

    with eval_mode(model):
        a_ms, a_pan = IntegratedGradients(score).attribute((ms, pan), baselines=base, n_steps=steps,
                                                           internal_batch_size=len(ms) * 8)
        with torch.no_grad():
            delta = score(ms, pan) - score(*base)
    attr_ms, attr_pan = a_ms.sum(1).detach().cpu().numpy(), a_pan.sum(1).detach().cpu().numpy()
    s_ms, s_pan = attr_ms.reshape(len(ms), -1).sum(1), attr_pan.reshape(len(ms), -1).sum(1)
    share = modality_shares(s_pan, s_ms)  # a modality that lowers the score supports none of it
    return {"ms": batch["ms"][:, :3].permute(0, 2, 3, 1).cpu().numpy(), "pan": batch["pan"][:, 0].cpu().numpy(),
            "attr_ms": attr_ms, "attr_pan": attr_pan, "pan_share": share, "delta": delta.cpu().numpy(),
            "pred": pred.cpu().numpy()}


def pha_scene_maps(model: torch.nn.Module, scene: Any, row: int, col: int, size: int = 64,
                   device: str | None = None) -> dict[str, Any]:
    """Where MS and PAN agree over a piece of the scene, per stage, and (``pha_v5``) where each atom fires.

    Runs :meth:`~rswb.models.pha.PHANet.agreement_maps` (and :meth:`~rswb.models.pha.PHANet.atom_maps`) on the
    ``size x size`` MS tile around ``(row, col)`` (moved inside the scene) and its PAN footprint.

    Args:
        model: a trained :class:`~rswb.models.pha.PHANet` with both modalities (convolutional branches).
        scene: the normalised :class:`~rswb.data.mspan.MSPANScene`.
        row: centre row of the tile (MS grid).
        col: centre column.
        size: tile side in MS pixels (at least the model's patch).
        device: where to run the model (None: the best available).

    Returns:
        ``rgb`` ``[size, size, 3]`` (the scene's composite on the tile), ``origin`` ``(r0, c0)``, ``agreement``
        (per stage ``[size - 4 (s + 1), ...]`` in [-1, 1]), ``offsets`` (per stage, the tile pixel on which each
        map's first position is centred: ``2 (s + 1)``), ``stage_names`` and, with a dictionary, ``atoms``
        ``{"ms": [A, h, w], "pan": [A, h, w]}`` on the deep stage's grid.
    """
    h, w = scene.shape
    if size < model.patch or size > min(h, w):
        raise ValueError(f"size must be between the patch ({model.patch}) and the scene's side ({min(h, w)}), "
                         f"got {size}")
    r0 = int(np.clip(row - size // 2, 0, h - size))
    c0 = int(np.clip(col - size // 2, 0, w - size))
    r = scene.ratio
    dev = select_device(device)
    ms = torch.from_numpy(np.ascontiguousarray(scene.ms[:, r0:r0 + size, c0:c0 + size]))[None].float().to(dev)
    pan = torch.from_numpy(np.ascontiguousarray(scene.pan[:, r * r0:r * (r0 + size), r * c0:r * (c0 + size)]))
    pan = pan[None].float().to(dev)
    model = model.to(dev)
    out: dict[str, Any] = {"rgb": scene.rgb()[r0:r0 + size, c0:c0 + size], "origin": (r0, c0),
                           "agreement": [m[0].cpu().numpy() for m in model.agreement_maps(ms, pan)],
                           "offsets": [2 * (s + 1) for s in range(model.stages)], "stage_names": list(STAGE_NAMES)}
    if model.dictionary is not None:
        out["atoms"] = {m: a[0].cpu().numpy() for m, a in model.atom_maps(ms, pan).items()}
    return out
