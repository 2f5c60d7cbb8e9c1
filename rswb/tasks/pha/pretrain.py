"""Self-supervised pre-training of the PHA branches on unlabelled items (``pha_v6``, ``--pretrain``).

Before the few shots arrive, the MS and PAN branches of a version train without labels on every unlabelled item the
run may look at: pixel mode, patches around every pixel outside the test map; scene mode, every image of the training
split (the few shots, the validation images and the rest, labels unused; the test split is never seen). Each step
takes a batch of items in two views (scene mode on a frozen encoder: two of the cached dihedral views; images and
patches: two independent random flips / rotations and, with ``jitter``, independent MS and PAN gains) and applies
:class:`rswb.losses.pha.PretrainLoss` to the :class:`rswb.models.pha.PretrainHeads` embeddings of the pooled deep
features: contrast within each modality, MS <-> PAN contrast and shared/specific decorrelation (``"cross"``), or the
within-modality contrast alone (``"within"``, the control). In pixel mode neighbouring patches overlap, so they are
soft negatives: targets in proportion to the shared area (:func:`rswb.losses.pha.overlap_targets`).

The pre-trained weights are cached (:func:`rswb.data.features.cached`, verified when read) under a key over the data,
the seed, the recipe and the architecture, so every shot count and every version of one seed reuses one pre-training.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rswb.data.features import cache_root, cached, digest
from rswb.data.transforms import augment_pairs, jitter_gains
from rswb.losses.pha import PretrainLoss, overlap_targets
from rswb.models.pha import PHANet, PretrainHeads
from rswb.utils import eval_mode

__all__ = ["FeatureViews", "ImageViews", "PretrainRecipe", "PretrainResult", "cross_modal_retrieval",
           "initial_heads", "pretrain_agreement", "pretrain_branches", "pretrained"]


@dataclasses.dataclass(frozen=True)
class PretrainRecipe:
    """How the branches are pre-trained (every field is part of the cache key).

    Attributes:
        objective: ``"cross"`` (within + cross-modal + decorrelation) or ``"within"`` (the control).
        steps: optimiser steps.
        batch_size: items per step (each in two views).
        lr: AdamW learning rate (cosine schedule to 0, 5 % warm-up).
        weight_decay: AdamW weight decay.
        temperature: InfoNCE temperature.
        orth_weight: weight of the shared/specific decorrelation term (``"cross"``).
        jitter: per-view, per-modality random gain in ``[1 - jitter, 1 + jitter]`` (images and patches only).
        proj_dim: size of the heads' embeddings.
    """

    objective: str = "cross"
    steps: int = 300
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2
    orth_weight: float = 1.0
    jitter: float = 0.3
    proj_dim: int = 64

    def __post_init__(self) -> None:
        if self.objective not in ("within", "cross"):
            raise ValueError(f"pre-training objective must be 'within' or 'cross', got {self.objective!r}")
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError(f"pre-training needs steps >= 1 and batch_size >= 2, got {self.steps}, "
                             f"{self.batch_size}")


@dataclasses.dataclass
class PretrainResult:
    """Pre-trained weights and their loss curve.

    Attributes:
        branches: state dict of the model's ``branches`` (what fine-tuning starts from).
        heads: state dict of the :class:`~rswb.models.pha.PretrainHeads` (diagnostics only).
        curve: per step, every term of :class:`~rswb.losses.pha.PretrainLoss` and ``loss`` (the weighted sum).
        key: the cache key.
        seconds: wall time of the pre-training (when it ran, not when it was read from the cache).
    """

    branches: dict[str, torch.Tensor]
    heads: dict[str, torch.Tensor]
    curve: dict[str, list[float]]
    key: str
    seconds: float


class FeatureViews:
    """Two views of unlabelled images from cached encoder features ``{modality: [N, V, F]}`` (scene mode).

    A batch is ``batch_size`` distinct images (all of them, shuffled, when there are fewer), each in two different
    cached dihedral views (the same view for MS and PAN within a view, as in training). With a single cached view
    (``--views 1``) the two views are that one with independent random feature masks instead (``mask`` of the
    features zeroed, the rest scaled by ``1 / (1 - mask)``: the corruption SCARF uses for tabular contrast), since
    two copies of one vector would make the within-modality contrast trivial.
    """

    def __init__(self, cache: dict[str, torch.Tensor], mask: float = 0.3):
        shapes = {tuple(v.shape[:2]) for v in cache.values()}
        if len(shapes) != 1:
            raise ValueError(f"every modality needs the same [images, views], got {shapes}")
        if not 0 < mask < 1:
            raise ValueError(f"mask must be in (0, 1), got {mask}")
        self.cache, self.mask = cache, float(mask)
        self.n, self.views = next(iter(shapes))

    def __len__(self) -> int:
        return self.n

    def _masked(self, x: torch.Tensor) -> torch.Tensor:
        keep = (torch.rand(x.shape) >= self.mask).to(x.dtype)
        return x * keep / (1 - self.mask)

    def draw(self, n: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor | None]:
        """``(view1, view2, targets)`` for ``n`` images (targets ``None``: each image is only its own positive)."""
        pick = torch.randperm(self.n)[: min(n, self.n)]
        if self.views == 1:
            base = {m: f[pick, 0].float() for m, f in self.cache.items()}
            return ({m: self._masked(x) for m, x in base.items()}, {m: self._masked(x) for m, x in base.items()},
                    None)
        v1 = torch.randint(0, self.views, (len(pick),))
        v2 = (v1 + torch.randint(1, self.views, (len(pick),))) % self.views  # another view than v1
        return ({m: f[pick, v1].float() for m, f in self.cache.items()},
                {m: f[pick, v2].float() for m, f in self.cache.items()}, None)


class ImageViews:
    """Two views of unlabelled MS+PAN patches or images from ``draw(n) -> {"ms", "pan", ...}``.

    Each view gets its own random dihedral transform (the same for MS and PAN, which stay co-registered) and, with
    ``jitter``, its own MS and PAN gains. When the draw returns pixel positions (``"row"``, ``"col"``), overlapping
    patches are soft positives in proportion to their shared area (``patch``); with ``"id"``, an item drawn twice
    is a full positive of its twin.
    """

    def __init__(self, draw: Callable[[int], dict[str, torch.Tensor]], jitter: float = 0.0, patch: int | None = None,
                 size: int | None = None):
        self._draw, self.jitter, self.patch, self.size = draw, float(jitter), patch, size

    def __len__(self) -> int:
        return int(self.size or 0)

    def _view(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        v = augment_pairs(x)
        return jitter_gains(v, self.jitter) if self.jitter > 0 else v

    def draw(self, n: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor | None]:
        """``(view1, view2, targets)`` for ``n`` drawn items."""
        batch = self._draw(n)
        x = {k: batch[k].float() for k in ("ms", "pan")}
        targets = None
        if "row" in batch and self.patch:
            targets = overlap_targets(torch.as_tensor(batch["row"]), torch.as_tensor(batch["col"]), self.patch)
        elif "id" in batch:
            ids = torch.as_tensor(batch["id"])
            targets = (ids[:, None] == ids[None, :]).float()
        return self._view(x), self._view(x), targets


def _deep(model: PHANet, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each modality's pooled deep feature of a batch (the branches only: no classifier, no dictionary)."""
    if model.feature_dims is not None:
        return {m: model.branches[m](x[m])[-1] for m in model.modalities}
    maps = model.stage_maps(x.get("ms"), x.get("pan"))
    return {m: fs[-1].mean((2, 3)) for m, fs in maps.items()}


def _seeded_heads(model: PHANet, proj_dim: int, seed: int) -> PretrainHeads:
    """Seed torch with ``seed`` and build the heads: the first draws of the pre-training's random stream."""
    torch.manual_seed(seed)
    return PretrainHeads(model.widths[-1], model.modalities, proj_dim)


def initial_heads(model: PHANet, proj_dim: int, seed: int) -> PretrainHeads:
    """The heads :func:`pretrain_branches` starts from for ``seed``, built without touching the caller's random state.

    The "before" side of a before/after comparison (:func:`cross_modal_retrieval`, :func:`pretrain_agreement`).
    """
    with torch.random.fork_rng():
        return _seeded_heads(model, proj_dim, seed)


def pretrain_branches(model: PHANet, views: FeatureViews | ImageViews, recipe: PretrainRecipe, seed: int = 0,
                      device: str | torch.device = "cpu", progress: bool = True) -> PretrainResult:
    """Pre-train ``model``'s branches in place on ``views`` (no labels) and return their weights and loss curve.

    Runs under its own random state seeded with ``seed`` (the caller's random stream is left as it was), so the
    result depends only on the initial branches, the data, the recipe and the seed.
    """
    device = torch.device(device)
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        heads = _seeded_heads(model, recipe.proj_dim, seed)
        model.to(device).train()
        heads.to(device).train()
        params = [*model.branches.parameters(), *heads.parameters()]
        opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
        warm = max(1, recipe.steps // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, recipe.steps) /
                                                                           recipe.steps)))
        loss_fn = PretrainLoss(recipe.objective, recipe.temperature)
        curve: dict[str, list[float]] = {}
        bar = tqdm(range(recipe.steps), desc=f"pre-training ({recipe.objective})", disable=not progress, leave=False)
        for _ in bar:
            v1, v2, targets = views.draw(recipe.batch_size)
            v1 = {k: t.to(device) for k, t in v1.items()}
            v2 = {k: t.to(device) for k, t in v2.items()}
            terms = loss_fn(heads(_deep(model, v1)), heads(_deep(model, v2)),
                            None if targets is None else targets.to(device))
            loss = terms["within_loss"]
            if recipe.objective == "cross":
                loss = loss + terms["cross_loss"] + recipe.orth_weight * terms["orth_loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"pre-training loss is {float(loss)} at step {len(curve.get('loss', []))}: "
                                         f"lower --pretrain-lr (now {recipe.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for k, v in {**terms, "loss": loss}.items():
                curve.setdefault(k, []).append(float(v.detach()))
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    model.cpu()
    heads.cpu()
    return PretrainResult({k: v.detach().clone() for k, v in model.branches.state_dict().items()},
                          {k: v.detach().clone() for k, v in heads.state_dict().items()}, curve, "",
                          time.perf_counter() - t0)


def pretrained(model: PHANet, views: FeatureViews | ImageViews, recipe: PretrainRecipe, data_key: str, seed: int,
               cache_dir: str | Path | None = None, device: str | torch.device = "cpu",
               progress: bool = True) -> PretrainResult:
    """:func:`pretrain_branches` through the cache: the weights for (data, seed, recipe, architecture).

    ``model``'s branches must hold their initial weights (the cache key covers them, so a different initialisation
    is a different entry). On a miss the pre-training runs on ``model`` itself; on a hit its branches get the
    cached weights. Either way ``model.branches`` holds the pre-trained weights afterwards.
    """
    key = digest(settings=("pha-pretrain", dataclasses.asdict(recipe), data_key, int(seed)),
                 modules=[model.branches])
    path = cache_root(cache_dir) / "pha_pretrain" / f"{key}.pt"
    stored: dict[str, Any] = {}

    def compute() -> dict[str, Any]:
        res = pretrain_branches(model, views, recipe, seed, device, progress)
        stored["ran"] = True
        return {"branches": res.branches, "heads": res.heads, "seconds": torch.tensor(res.seconds),
                "curve": {k: torch.tensor(v) for k, v in res.curve.items()}}

    entry = cached(path, compute, holds={"recipe": dataclasses.asdict(recipe), "data": data_key, "seed": int(seed)})
    if not stored:
        model.branches.load_state_dict(entry["branches"])
    return PretrainResult(entry["branches"], entry["heads"], {k: v.tolist() for k, v in entry["curve"].items()},
                          key, float(entry["seconds"]))


# ------------------------------------------------------------------------------------------------- diagnostics


def _shared_embeddings(model: PHANet, heads: PretrainHeads, x: dict[str, torch.Tensor], batch: int = 1024
                       ) -> dict[str, torch.Tensor]:
    out: dict[str, list[torch.Tensor]] = {m: [] for m in ("ms", "pan")}
    n = next(iter(x.values())).shape[0]
    with eval_mode(model), eval_mode(heads), torch.no_grad():
        for i in range(0, n, batch):
            emb = heads(_deep(model, {k: v[i:i + batch] for k, v in x.items()}))
            for m in out:
                out[m].append(F.normalize(emb[f"shared_{m}"].float(), dim=1))
    return {m: torch.cat(v) for m, v in out.items()}


def cross_modal_retrieval(model: PHANet, heads: PretrainHeads, x: dict[str, torch.Tensor]) -> dict[str, float]:
    """How well the MS and PAN views of the same place find each other through the shared embeddings.

    ``x`` holds ``N`` co-registered items (``{"ms", "pan"}``, e.g. patches of held-out tiles); every MS item queries
    the ``N`` PAN items and the other way round, ranked by cosine. Ties count against the query (the pessimistic
    rule: an embedding that collapsed to one point scores 0, not chance).

    Returns:
        ``R@1_ms2pan``, ``R@1_pan2ms``, ``R@5_ms2pan``, ``R@5_pan2ms`` (percent), ``chance_R@1`` (``100 / N``)
        and ``n``.
    """
    emb = _shared_embeddings(model, heads, x)
    sim = emb["ms"] @ emb["pan"].t()
    n = sim.shape[0]
    out: dict[str, float] = {}
    for name, s in (("ms2pan", sim), ("pan2ms", sim.t())):
        own = s.diagonal().unsqueeze(1)
        rank = (s >= own).sum(1) - 1  # items scoring at least the true partner, the partner itself excluded
        for k in (1, 5):
            out[f"R@{k}_{name}"] = float((rank < k).float().mean() * 100)
    out["chance_R@1"] = 100.0 / n
    out["n"] = float(n)
    return out


@torch.no_grad()
def pretrain_agreement(model: PHANet, heads: PretrainHeads, ms: torch.Tensor, pan: torch.Tensor,
                       shift: int = 0) -> np.ndarray:
    """Where MS and PAN agree after (or before) pre-training: the cosine of their shared embeddings per position.

    ``ms`` ``[1, bands, h, w]`` and ``pan`` ``[1, 1, r h, r w]`` are a scene tile; every deep-stage position's
    feature (before any window average) goes through the shared heads and the MS embedding of each position is
    compared with the PAN embedding of the same position, or with ``shift > 0`` of the position ``shift`` MS pixels
    to its right (the control: a map that is as high for other places says nothing about alignment).
    Returns ``[h', w' - shift]`` in [-1, 1], ``h' = h - 12`` (convolutional branches only).
    """
    if model.feature_dims is not None:
        raise ValueError("agreement maps need convolutional branches (pixel mode), not encoder features")
    with eval_mode(model), eval_mode(heads):
        maps = model.stage_maps(ms, pan)
        deep = {m: maps[m][-1][0].permute(1, 2, 0) for m in ("ms", "pan")}  # [h', w', C]
        h, w, c = deep["ms"].shape
        if not 0 <= shift < w:
            raise ValueError(f"shift must be in [0, {w}), got {shift}")
        emb = heads({m: f.reshape(h * w, c) for m, f in deep.items()})
        e_ms = emb["shared_ms"].reshape(h, w, -1)[:, : w - shift]
        e_pan = emb["shared_pan"].reshape(h, w, -1)[:, shift:]
        cos = F.cosine_similarity(e_ms, e_pan, dim=-1, eps=1e-8)
    return cos.cpu().numpy()
