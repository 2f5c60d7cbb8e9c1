"""Hashing outputs for people: a trained run's codes, and where its code and class cue come from."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rswb.data.scenes import SceneFolder, image_to_tensor, load_image
from rswb.engine.device import select_device
from rswb.engine.launch import LoadedRun, load_run
from rswb.engine.runs import RunFolder
from rswb.engine.task import EvalContext
from rswb.models.hashing import cue_bits

__all__ = ["hash_grad_cam", "load_codes"]

def load_codes(run_dir: str | Path, device: str | None = None) -> dict[str, Any]:
    """The test-split outputs of a trained hash run, with what the figures of notebook 04 need.

    Only the query (= database) split is rebuilt (:func:`rswb.engine.load_run` with ``splits=("test",)``): the
    training images' features are not needed here.

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
    run, query = _hash_query(run_dir, device)
    dev = select_device(device)
    out = run.task.to(dev).collect(run.test, EvalContext(dev))
    labels = out["label"].numpy().astype(np.int64)
    if len(query) != len(labels) or not np.array_equal(query.labels, labels):
        raise RuntimeError(f"{run.path}: the query folder under {query.root} no longer matches the run's test split")
    model = run.task.model
    cue = cue_bits(model.num_classes) if model.cue else 0
    return {"code": out["code"].numpy().astype(np.int8), "bits": out["bits"].numpy().astype(np.int8),
            "hash_bits": int(model.bits), "cue_bits": cue, "code_bits": int(model.bits) + cue,
            "pred": out["pred"].numpy().astype(np.int64), "label": labels,
            "paths": [str(r.path) for r in query.records], "class_names": list(query.classes),
            "metrics": run.metrics.get("test", {})}


def _hash_query(run_dir: str | Path, device: str | None) -> tuple[LoadedRun, SceneFolder]:
    """A finished hash run rebuilt with its test split only, and its query (= database) folder."""
    from rswb.tasks.hashing import query_folder

    folder = RunFolder(run_dir)
    task_name = folder.read_config().get("task_name") if folder.config.exists() else "hash"  # load_run names a non-run
    if task_name != "hash":  # before the rebuild, which may fill caches for minutes
        raise ValueError(f"{folder.path}: not a hash run (rswb train hash); it is a {task_name} run")
    run = load_run(run_dir, splits=("test",), device=device)
    return run, query_folder(run.task_config)


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
    run, query = _hash_query(run_dir, device)
    idx = [int(i) for i in indices]
    images = np.stack([load_image(query.records[i].path, run.task_config.image_size) for i in idx])
    x = torch.stack([image_to_tensor(im) for im in images])
    dev = select_device(device)
    model = run.task.model.to(dev)
    maps = {target: model.grad_cam(x.to(dev), target, method=method, strides=strides) for target in ("code", "cue")}
    where = "stride 32" if strides is None else "strides " + "/".join(map(str, strides))
    return {"images": images, "code": maps["code"]["cam"].cpu().numpy(), "cue": maps["cue"]["cam"].cpu().numpy(),
            "pred": maps["cue"]["pred"].cpu().numpy(), "label": np.array([query.records[i].label for i in idx]),
            "class_names": list(query.classes), "paths": [str(query.records[i].path) for i in idx],
            "method": f"{'LayerCAM' if method == 'layercam' else 'Grad-CAM'}, {where}"}


