"""Benchmark: whole-scene classification maps with PHA, dense mode against batched per-patch inference.

A pixel classifier over 16x16 MS / 64x64 PAN patches recomputes almost everything for neighbouring pixels. The PHA
models are built so that one pass over the (tiled, reflect-padded) scene gives every pixel's logits exactly
(:meth:`rswb.models.pha.PHANet.dense`). Both ways run here, in the same process, on the same random scene and model
(``pha_v5``, default widths, eval mode):

* ``rswb``: :func:`rswb.models.pha.dense_predict` (tiles of 256 x 256 output pixels; median of 3 runs);
* ``reference``: :func:`rswb.models.pha.patch_predict`, every pixel's patch pair gathered by the vectorised
  :class:`~rswb.data.PatchSampler` and classified in batches of 1,024, the usual way (one run: it is the slow side).

Reported: times, speed-up, the share of pixels whose predicted class agrees and the largest logit difference.

Usage: ``python -m benchmarks.pha_dense [--size 256] [--json]`` (``--size 2000`` for the 4-million-pixel scene the
issue mentions; on a CPU the per-patch reference then takes about an hour).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from rswb.data.mspan import MSPANScene
from rswb.data.patches import PatchSampler
from rswb.registry import create_model


def run(size: int = 256, version: str = "pha_v5", seed: int = 0, device: str | None = None,
        widths: tuple[int, int, int] = (16, 32, 64)) -> dict:
    """Classify a random ``size x size`` scene both ways; return times, speed-up and agreement."""
    import rswb.models  # noqa: F401  (registers the versions)
    from rswb.models.pha import dense_predict, patch_predict

    rng = np.random.default_rng(seed)
    scene = MSPANScene(ms=rng.random((4, size, size), dtype=np.float32),
                       pan=rng.random((1, 4 * size, 4 * size), dtype=np.float32), ratio=4)
    torch.manual_seed(seed)
    dev = torch.device(device) if device else torch.device("cpu")
    model = create_model(version, num_classes=8, widths=widths).to(dev).eval()
    sampler = PatchSampler(scene, 16, device=dev)
    rows, cols = (a.ravel() for a in np.mgrid[0:size, 0:size])

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    # Warm-ups: oneDNN builds its convolution kernels on the first call for each input shape.
    dense = dense_predict(model, scene, return_logits=True)
    patch_predict(model, sampler, rows[:1024], cols[:1024], batch_size=1024)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        dense = dense_predict(model, scene, return_logits=True)
        sync()
        times.append(time.perf_counter() - t0)
    rswb_s = statistics.median(times)
    t0 = time.perf_counter()
    patch = patch_predict(model, sampler, rows, cols, batch_size=1024, return_logits=True)
    sync()
    reference_s = time.perf_counter() - t0
    patch = patch.reshape(size, size, -1).transpose(2, 0, 1)
    agree = float((dense.argmax(0) == patch.argmax(0)).mean())
    return {
        "rswb_s": rswb_s, "reference_s": reference_s, "speedup": reference_s / rswb_s,
        "pixels": size * size, "scene": f"{size}x{size} MS, {4 * size}x{4 * size} PAN", "version": version,
        "widths": list(widths), "device": str(dev), "map_agreement": agree,
        "max_logit_diff": float(np.abs(dense - patch).max()),
        "pixels_per_s_dense": size * size / rswb_s, "pixels_per_s_patch": size * size / reference_s,
        "goals": {"speedup >= 10x": reference_s / rswb_s >= 10, "maps identical": agree == 1.0},
    }


def run_benchmark(quick: bool = False) -> dict:
    """Registry entry point (``rswb bench pha_dense``): 256 x 256 scene, or 48 x 48 with ``quick``."""
    return run(size=48 if quick else 256)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--version", default="pha_v5")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    res = run(a.size, a.version, device=a.device)
    print(json.dumps({"pha_dense": res}, indent=1) if a.json else
          "\n".join(f"{k}: {v}" for k, v in res.items()))


if __name__ == "__main__":
    main()
