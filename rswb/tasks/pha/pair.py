"""Pre-training on an unlabelled MS/PAN pair, and how well it aligned the modalities (``rswb pretrain``).

A user with a scene and no labels can still see what the self-supervised pre-training of ``pha_v6`` learns: the
scene's MS grid is cut into ``grid x grid`` tiles, a fixed quarter of them (a diagonal pattern, so held-out ground
is spread over the scene) is held out, the branches pre-train on patches around pixels whose whole patch lies in the
other tiles (and at least a patch's width away from the held-out ones), and the encoder alone is then scored on the
held-out tiles: every MS patch of a grid of patches there (stride half a patch, so neighbours share half their
ground: a near miss counts as a miss) must find the PAN patch of the same place among all of them, and the other way
round (cross-modal patch retrieval R@1 / R@5, through the shared embeddings). The untrained branches and the
within-modality control (no cross-modal term) are scored on the same patches, so the table says how much of the
alignment the cross-modal pre-training made.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rswb.data.features import digest
from rswb.data.mspan import load_mspan
from rswb.data.patches import PatchSampler
from rswb.models.pha import PHANet, PretrainHeads
from rswb.tasks.pha.data import source_files
from rswb.tasks.pha.pretrain import ImageViews, PretrainRecipe, cross_modal_retrieval, initial_heads, pretrained

__all__ = ["held_out_tiles", "pair_alignment"]


def held_out_tiles(shape: tuple[int, int], grid: int) -> np.ndarray:
    """``[H, W]`` bool: the MS pixels of the held-out tiles (tile ``(i, j)`` of ``grid x grid``, ``(i - j) % 4 == 0``).

    A quarter of the tiles (rounded), one per row and column in every 4 x 4 block: held-out ground is spread over
    the whole scene instead of being one corner.
    """
    h, w = shape
    if grid < 2 or grid > min(h, w):
        raise ValueError(f"grid must be between 2 and the scene's side ({min(h, w)}), got {grid}")
    ti = np.minimum(np.arange(h) * grid // h, grid - 1)
    tj = np.minimum(np.arange(w) * grid // w, grid - 1)
    return ((ti[:, None] - tj[None, :]) % 4) == 0


def pair_alignment(path: str | Path, recipe: PretrainRecipe | None = None, *, seed: int = 0, grid: int = 4,
                   widths: tuple[int, int, int] = (16, 32, 64), ms_patch: int = 16, normalize: str = "minmax",
                   objectives: tuple[str, ...] = ("within", "cross"), cache_dir: str | Path | None = None,
                   device: str | torch.device = "cpu", progress: bool = True) -> dict[str, Any]:
    """Pre-train on the pair at ``path`` (no labels) and score cross-modal patch retrieval on held-out tiles.

    Args:
        path: an MS/PAN pair the readers accept (a ``.mat`` pair, a lab-format folder); labels are not needed.
        recipe: the pre-training recipe (its objective is replaced by each of ``objectives``); default
            :class:`PretrainRecipe`'s.
        seed: seed of the initial weights and of the pre-training.
        grid: the MS grid is cut into ``grid x grid`` tiles (:func:`held_out_tiles`).
        widths: the branches' stage widths.
        ms_patch: MS patch side (PAN: ratio times it).
        normalize: per-band scaling (``minmax`` | ``percentile``).
        objectives: pre-training objectives to compare (``within``: the control; ``cross``: ``pha_v6``'s).
        cache_dir: where the pre-trained weights are cached.
        device: where to train.
        progress: progress bars.

    Returns:
        ``{"source", "scene", "tiles", "train_pixels", "eval_patches", "recipe", "untrained": {metrics},
        "<objective>": {metrics, "seconds", "final_loss", "key"}, ...}`` with the metrics of
        :func:`rswb.tasks.pha.pretrain.cross_modal_retrieval`.
    """
    recipe = recipe or PretrainRecipe()
    scene = load_mspan(Path(path)).normalized(normalize)
    h, w = scene.shape
    held = held_out_tiles((h, w), grid)
    sampler = PatchSampler(scene, ms_patch)
    pad = ms_patch  # keep a patch's width of ground between the two sets: no training patch overlaps a test one
    from scipy.ndimage import binary_dilation

    near_held = binary_dilation(held, np.ones((2 * pad + 1, 2 * pad + 1), bool))
    tr_r, tr_c = np.nonzero(~near_held)
    # Held-out patches lie wholly inside the held-out tiles, centred on a grid of stride half a patch: each MS patch
    # has exactly one right PAN partner, and its neighbours (half the same ground) are the hardest wrong ones.
    core = held & ~binary_dilation(~held, np.ones((ms_patch + 1, ms_patch + 1), bool))
    ev_r, ev_c = np.nonzero(core)
    stride = max(1, ms_patch // 2)
    keep = (ev_r % stride == 0) & (ev_c % stride == 0)
    ev_r, ev_c = ev_r[keep], ev_c[keep]
    if len(tr_r) < recipe.batch_size or len(ev_r) < 10:
        raise ValueError(f"{path}: the scene ({h} x {w} MS pixels) is too small for grid {grid} and patch "
                         f"{ms_patch}: {len(tr_r)} training pixels, {len(ev_r)} held-out patches")
    held_batch = {k: v for k, v in sampler.gather(ev_r, ev_c).items() if k in ("ms", "pan")}

    def draw(n: int) -> dict[str, torch.Tensor]:
        pick = torch.randint(0, len(tr_r), (n,)).numpy()
        return {**sampler.gather(tr_r[pick], tr_c[pick]), "row": torch.as_tensor(tr_r[pick]),
                "col": torch.as_tensor(tr_c[pick])}

    data_key = digest(settings=("pair", normalize, ms_patch, grid), files=source_files(Path(path)))
    views = ImageViews(draw, recipe.jitter, ms_patch, len(tr_r))

    def fresh(objective: str) -> tuple[PHANet, PretrainHeads]:
        torch.manual_seed(seed)
        model = PHANet(2, scene.bands, scene.ratio, widths=widths, patch=ms_patch, pretrain=objective)
        return model, initial_heads(model, recipe.proj_dim, seed)

    out: dict[str, Any] = {"source": str(path), "scene": {"ms": [scene.bands, h, w], "ratio": scene.ratio},
                           "tiles": {"grid": grid, "held_out": int(held_out_tile_count(grid))},
                           "train_pixels": len(tr_r), "eval_patches": len(ev_r), "seed": seed,
                           "recipe": dataclasses.asdict(recipe)}
    model, heads = fresh("cross")
    out["untrained"] = cross_modal_retrieval(model, heads, held_batch)
    for objective in objectives:
        r = dataclasses.replace(recipe, objective=objective)
        model, heads = fresh(objective)
        t0 = time.perf_counter()
        res = pretrained(model, views, r, data_key, seed, cache_dir, device, progress)
        heads.load_state_dict(res.heads)
        out[objective] = {**cross_modal_retrieval(model, heads, held_batch), "seconds": res.seconds,
                          "wall_s": time.perf_counter() - t0, "final_loss": res.curve["loss"][-1], "key": res.key}
    return out


def held_out_tile_count(grid: int) -> int:
    """How many of the ``grid x grid`` tiles :func:`held_out_tiles` holds out."""
    i, j = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    return int((((i - j) % 4) == 0).sum())
