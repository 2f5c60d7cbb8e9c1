"""Benchmark: one epoch of partial fine-tuning (cached cut) against full fine-tuning of the same model and batch.

The model is DHCL at 64 bits on EfficientNet-Lite0 (224 px), the data the UC Merced training split (NN 00-79, 1,680
images; the hash task holds out 10 % for validation, so an epoch is 1,512 images), batch 90, AdamW, batch-norm
statistics frozen (the recipe of both profiles). Measured in the same process:

* ``full``: a training step on decoded, augmented images through the whole network (forward, backward, optimiser);
  the median step time over ``--full-steps`` steps is scaled to the epoch's steps (a whole epoch takes a minute or
  more on 2 cores, which is the point);
* ``partial`` at each cut (``stage6``, ``stage7``, ``head``): a whole epoch over the cached activations (one random
  dihedral view per image, ``rswb.data.features.CachedViews``), the pieces from the cut on training;
* the one-off cache build: the frozen trunk over every training image for one view, timed, scaled to ``--views``
  views; its size on disk (float16) per view and for ``--views`` views.

Image decoding is excluded from ``full`` (the images are decoded once up front), so the ratio measures the network,
not JPEG decoding; with decoding the full profile is slower still.

Usage: ``python -m benchmarks.finetune_speed --data ../shared/data/UCMerced_LandUse [--json] [--views 4]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from benchmarks import emit, machine_info

CUTS = ("stage6", "stage7", "head")


def _model(cut: str | None, seed: int = 0):
    import rswb.models  # noqa: F401
    from rswb.registry import create_model

    torch.manual_seed(seed)
    model = create_model("dhcl", backbone="efficientnet_lite0", bits=64, num_classes=21, train_from=cut)
    model.backbone.freeze_bn()
    return model.train()


def _step_fn(model, loss, optimizer):
    def step(batch):
        out = model(batch)
        terms = loss(**out, **batch)
        total = terms["proxy_loss"] + terms["cls_loss"] + 0.1 * terms["quant_loss"]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    return step


def run(data: str, views: int = 4, batch_size: int = 90, full_steps: int = 4, seed: int = 0) -> dict:
    """Time full and partial epochs and the cache build on the UC Merced training split; return the result dict."""
    from rswb.data.features import CachedViews, extract_images, nbytes
    from rswb.data.scenes import SceneFolder
    from rswb.data.transforms import dihedral
    from rswb.losses.hashing import DHCLLoss

    folder = SceneFolder(data, "train", image_size=224)
    n_train = len(folder) - round(0.1 * len(folder))  # the task's held-out share
    steps = -(-n_train // batch_size)
    t0 = time.perf_counter()
    images = torch.stack([folder[i]["image"] for i in range(len(folder))])[:n_train]
    labels = torch.as_tensor(np.asarray(folder.labels)[:n_train])
    decode_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(seed)

    def batch_of(i: int) -> dict:
        idx = torch.randint(0, n_train, (batch_size,), generator=g)
        x = torch.stack([dihedral(im, int(v)) for im, v in zip(images[idx], torch.randint(0, 8, (batch_size,),
                                                                                              generator=g))])
        return {"image": x, "label": labels[idx]}

    # Full fine-tuning: median step time, scaled to the epoch.
    model = _model(None, seed)
    loss = DHCLLoss(21, 64)
    step = _step_fn(model, loss, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad]
                                                   + list(loss.parameters()), lr=1e-4))
    step(batch_of(0))  # warm-up (oneDNN builds its kernels on the first call)
    times = []
    for i in range(full_steps):
        b = batch_of(i)
        t = time.perf_counter()
        step(b)
        times.append(time.perf_counter() - t)
    full_step = statistics.median(times)
    result: dict = {"problem": f"DHCL 64 bits, EfficientNet-Lite0 at 224 px, UC Merced train {n_train} images/epoch, "
                               f"batch {batch_size}", "epoch_steps": steps, "full_step_s": full_step,
                    "full_epoch_s": full_step * steps, "full_steps_measured": full_steps, "decode_s": decode_s,
                    "views": views, "cuts": {}}

    for cut in CUTS:
        model = _model(cut, seed)
        with torch.no_grad():
            t = time.perf_counter()
            cache = extract_images(model.backbone, _Images(images),
                                   lambda b, x, cut=cut: {"cut": b.forward_until(x, cut)["cut"]}, views=1,
                                   dtype=torch.float16, batch_size=64, progress=False)
            build_s = time.perf_counter() - t
        data_set = CachedViews({k: v.expand(-1, views, *v.shape[2:]) for k, v in cache.items()},
                               labels.numpy(), np.arange(n_train), random_view=True)
        loader = torch.utils.data.DataLoader(data_set, batch_size=batch_size, shuffle=True, generator=g)
        loss = DHCLLoss(21, 64)
        step = _step_fn(model, loss, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad]
                                                       + list(loss.parameters()), lr=1e-3))
        step(next(iter(loader)))  # warm-up
        epochs = []
        for _ in range(2):
            t = time.perf_counter()
            for b in loader:
                step(b)
            epochs.append(time.perf_counter() - t)
        epoch_s = statistics.median(epochs)
        per_view = nbytes(cache)
        result["cuts"][cut] = {
            "partial_epoch_s": epoch_s, "speedup_vs_full": full_step * steps / epoch_s,
            "cache_build_one_view_s": build_s, "cache_build_s": build_s * views,
            "cache_mib_one_view": per_view / 2**20, "cache_mib": per_view * views / 2**20,
            "trained_parameters": sum(p.numel() for p in model.parameters() if p.grad is not None),
            "goal_partial_5x_faster": bool(full_step * steps / epoch_s >= 5),
        }
    full_model = _model(None)
    result["all_parameters"] = sum(p.numel() for n, p in full_model.named_parameters() if "_fc" not in n)
    result["machine"] = machine_info()
    return result


class _Images(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i]}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="UC Merced folder")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--full-steps", type=int, default=4)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    res = run(a.data, a.views, full_steps=a.full_steps)
    if a.json:
        print(json.dumps({"finetune_speed": res}, indent=2))
    else:
        emit({"finetune_speed": {k: v for k, v in res.items() if k != "cuts"}}, False)
        for cut, r in res["cuts"].items():
            print(cut, {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()})


if __name__ == "__main__":
    main()
