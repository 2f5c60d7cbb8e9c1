"""PHA outputs for people: test predictions and scene maps, embeddings per stage, dictionary codes, attributions."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from rswb.engine.device import select_device
from rswb.engine.task import EvalContext
from rswb.metrics.classification import classification_report, scores_from_confusion
from rswb.metrics.explain import modality_shares
from rswb.models.pha import STAGE_NAMES
from rswb.utils import eval_mode

__all__ = ["dictionary_codes", "load_predictions", "modality_embeddings", "pha_attributions", "pha_scene_maps",
           "pretraining_maps"]

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
    from rswb.engine.launch import load_run

    bundle = load_run(run_dir, splits=("test",), device=device)
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
        sampler: the scene's :class:`~rswb.data.patches.PatchSampler`.
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


def _scene_tile(scene: Any, row: int, col: int, size: int, patch: int
                ) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """``(r0, c0, ms [1, bands, size, size], pan [1, 1, r size, r size])``: the tile around ``(row, col)``.

    The tile is moved inside the scene where it would cross its border.

    Raises:
        ValueError: ``size`` smaller than the model's ``patch`` or larger than the scene.
    """
    h, w = scene.shape
    if size < patch or size > min(h, w):
        raise ValueError(f"size must be between the patch ({patch}) and the scene's side ({min(h, w)}), got {size}")
    r0 = int(np.clip(row - size // 2, 0, h - size))
    c0 = int(np.clip(col - size // 2, 0, w - size))
    r = scene.ratio
    ms = torch.from_numpy(np.ascontiguousarray(scene.ms[:, r0:r0 + size, c0:c0 + size]))[None].float()
    pan = torch.from_numpy(np.ascontiguousarray(scene.pan[:, r * r0:r * (r0 + size), r * c0:r * (c0 + size)]))
    return r0, c0, ms, pan[None].float()


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
    dev = select_device(device)
    r0, c0, ms, pan = _scene_tile(scene, row, col, size, model.patch)
    ms, pan = ms.to(dev), pan.to(dev)
    model = model.to(dev)
    out: dict[str, Any] = {"rgb": scene.rgb()[r0:r0 + size, c0:c0 + size], "origin": (r0, c0),
                           "agreement": [m[0].cpu().numpy() for m in model.agreement_maps(ms, pan)],
                           "offsets": [2 * (s + 1) for s in range(model.stages)], "stage_names": list(STAGE_NAMES)}
    if model.dictionary is not None:
        out["atoms"] = {m: a[0].cpu().numpy() for m, a in model.atom_maps(ms, pan).items()}
    return out


def pretraining_maps(cfg: Any, data: Any, seed: int, row: int | None = None, col: int | None = None, size: int = 64,
                     shift: int = 8, device: str | None = None) -> dict[str, Any]:
    """What a run's self-supervised pre-training learnt: its loss curve and (pixel mode) MS-PAN agreement maps.

    The pre-training of ``cfg`` (a version that pre-trains, e.g. ``pha_v6``) for ``seed`` is read from the cache when
    the run made it (the model is rebuilt the way the run built it: ``torch.manual_seed(seed)``, then the builder),
    else it runs. In pixel mode the shared-embedding agreement (:func:`rswb.tasks.pha.pretrain.pretrain_agreement`)
    of a ``size`` tile around ``(row, col)`` (default: the scene's centre) is computed before (the initial weights)
    and after pre-training, each also against the PAN embedding ``shift`` MS pixels away (the control).

    Returns:
        ``curve`` (per step, every loss term), ``seconds``, ``key``, ``objective``; in pixel mode also ``rgb``,
        ``origin``, ``agreement`` ``[before, after]``, ``offsets``, ``stage_names`` (for
        :func:`rswb.viz.plot_agreement_maps`) and ``same_place`` / ``shifted`` ``{"before": mean, "after": mean}``.
    """
    from rswb.tasks.pha import build_model, pretrain_recipe, run_pretraining
    from rswb.tasks.pha.pretrain import initial_heads, pretrain_agreement

    if cfg.pretrain_objective() == "none":
        raise ValueError(f"version {cfg.version} does not pre-train (use pha_v6 or --pretrain within|cross)")
    recipe = pretrain_recipe(cfg)

    def fresh() -> tuple[Any, Any]:
        torch.manual_seed(seed)
        model = build_model(cfg, data)
        return model, initial_heads(model, recipe.proj_dim, seed)

    before_model, before_heads = fresh()
    after_model, after_heads = fresh()
    res = run_pretraining(cfg, data, after_model, seed, device=select_device(device), progress=False)
    after_heads.load_state_dict(res.heads)
    out: dict[str, Any] = {"curve": res.curve, "seconds": res.seconds, "key": res.key, "objective": recipe.objective}
    scene = getattr(data, "scene", None)
    if scene is None:
        return out
    h, w = scene.shape
    r0, c0, ms, pan = _scene_tile(scene, h // 2 if row is None else row, w // 2 if col is None else col, size,
                                  after_model.patch)
    states = {"before": (before_model, before_heads), "after": (after_model, after_heads)}
    maps = {k: pretrain_agreement(m, hd, ms, pan) for k, (m, hd) in states.items()}
    shifted = {k: pretrain_agreement(m, hd, ms, pan, shift) for k, (m, hd) in states.items()}
    off = (size - maps["after"].shape[0]) // 2
    out.update(rgb=scene.rgb()[r0:r0 + size, c0:c0 + size], origin=(r0, c0),
               agreement=[maps["before"], maps["after"]], offsets=[off, off],
               stage_names=["before pre-training", "after pre-training"],
               same_place={k: float(v.mean()) for k, v in maps.items()},
               shifted={k: float(v.mean()) for k, v in shifted.items()}, shift=shift)
    return out
