r"""DHCL recipe ingredients side by side: validation (which selects), test, the gap, cost per epoch and cache size.

Reads result JSONs of ``benchmarks.dhcl_ucmd`` (one code length, several seeds each) and writes one table, a row per
recipe: mean +- sample sd over seeds of the validation mAP@20 at the selected epoch, the test mAP@20 with and without
the semantic cue, the test class accuracy, the mean validation - test gap, the selected epochs, the median training
seconds per epoch and the size of the training cache (images x cached views x the cut's activation, float16, from
the recipe's options and one forward pass of the backbone at its image size). The recipe with the highest mean
validation score is marked: the selection never reads a test number.

Usage::

    python -m benchmarks.dhcl_ablation --bits 64 --out dhcl_ablation_summary \\
        --row "head, 4 test-time views" benchmarks/results/dhcl_ablation_tta4.json \\
        --row "+ mixup 0.2" benchmarks/results/dhcl_ablation_mixup.json

Writes ``benchmarks/results/<out>.json`` and ``<out>_table.md`` (the command first).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cache_mib(options: dict, n_images: int) -> float:
    """MiB of the training cache a recipe builds: ``n_images`` x (views + crop views) x the cut's activation x 2 B."""
    import torch

    from rswb.models.backbones import make_backbone

    cut = options.get("train_from")
    if cut is None:
        raise ValueError("only --train-from recipes cache cut activations")
    backbone = make_backbone(options.get("backbone", "efficientnet_lite0"), pretrained=False).eval()
    size = int(options.get("image_size", 224))
    with torch.no_grad():
        numel = backbone.forward_until(torch.zeros(1, 3, size, size), cut)["cut"][0].numel()
    views = int(options.get("views", 4)) + int(options.get("crop_views", 0))
    return n_images * views * numel * 2 / 2**20


def row(label: str, path: str | Path, bits: int) -> dict:
    """One recipe: the summary of its runs at ``bits`` (metrics in points).

    Raises:
        ValueError: no run of ``path`` has ``bits``, or a run lacks its validation metrics.
    """
    from rswb.data.scenes import SceneFolder

    data = json.loads(Path(path).read_text())
    runs = [r for r in data["runs"] if int(r["bits"]) == int(bits)]
    if not runs:
        raise ValueError(f"{path}: no run with {bits} bits")
    if any("mAP@20" not in (r.get("val") or {}) for r in runs):
        raise ValueError(f"{path}: a run has no validation mAP@20 (a refit or a run without validation)")
    epochs = int(data["options"].get("epochs", data["epochs"]))
    val = [100 * r["val"]["mAP@20"] for r in runs]
    test = [100 * r["test"]["mAP@20"] for r in runs]
    out = {
        "label": label, "file": str(path), "options": data["options"], "seeds": [r["seed"] for r in runs],
        "val_mAP@20": _mean_sd(val), "test_mAP@20": _mean_sd(test),
        "test_mAP@20_nocue": _mean_sd([100 * r["test"]["mAP@20_nocue"] for r in runs]),
        "test_class_acc": _mean_sd([100 * r["test"]["class_acc"] for r in runs]),
        "gap": statistics.fmean(v - t for v, t in zip(val, test)),
        "best_epochs": [r["best_epoch"] for r in runs],
        "s_per_epoch": statistics.median(r["train_time_s"] for r in runs) / epochs,
    }
    n_train = len(SceneFolder(data["data"], "train"))
    out["cache_mib"] = cache_mib(data["options"], n_train)
    return out


def table(rows: list[dict]) -> str:
    """The markdown table; the row with the best mean validation score in bold."""
    best = max(range(len(rows)), key=lambda i: rows[i]["val_mAP@20"][0])
    head = ("| recipe | validation mAP@20 (selects) | test mAP@20 (cue) | test mAP@20 (no cue) | test class accuracy "
            "| validation - test | selected epochs | s / epoch | training cache |\n" + "|---" * 9 + "|\n")
    lines = []
    for i, r in enumerate(rows):
        def ms(key: str, r: dict = r) -> str:
            return "{:.2f} +- {:.2f}".format(*r[key])

        label = f"**{r['label']}** (selected)" if i == best else r["label"]
        lines.append(f"| {label} | {ms('val_mAP@20')} | {ms('test_mAP@20')} | {ms('test_mAP@20_nocue')} | "
                     f"{ms('test_class_acc')} | {r['gap']:+.2f} | {', '.join(map(str, r['best_epochs']))} | "
                     f"{r['s_per_epoch']:.1f} | {r['cache_mib']:.0f} MiB |")
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--row", nargs=2, action="append", metavar=("LABEL", "FILE"), required=True)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--out", default="dhcl_ablation_summary")
    a = ap.parse_args(argv)
    rows = [row(label, path, a.bits) for label, path in a.row]
    (RESULTS / f"{a.out}.json").write_text(json.dumps({"bits": a.bits, "rows": rows}, indent=2) + "\n")
    cmd = "python -m benchmarks.dhcl_ablation " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = f"Command: `{cmd}`\n\n" + table(rows)
    (RESULTS / f"{a.out}_table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
