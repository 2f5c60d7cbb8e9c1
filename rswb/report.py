"""One HTML page for any finished run: ``rswb report RUN`` (or :func:`run_report` from Python).

The page holds what a student otherwise assembles from three scripts: the run's settings and protocol, its
validation and test metrics (per-class accuracies named by their class), the training curves, the confusion matrix
of a classifying task (PHA and hashing runs: the test split's true against predicted class), and the attention maps
that ``benchmarks/explain`` measured against ground truth, on a few test items: LayerCAM of the class cue and of
the hash code (hashing), LayerCAM of the image-caption score (retrieval), integrated gradients of the MS and PAN
pixels (PHA, pixel mode). Figures are embedded as PNG, so the page is one self-contained file that opens offline.

Everything is rebuilt from the run folder with :func:`rswb.engine.experiments.load_run` (the selected weights); the
page is written atomically to ``RUN/report.html`` unless another path is given.
"""

from __future__ import annotations

import base64
import html
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from rswb.engine.device import select_device
from rswb.engine.experiments import LoadedRun, load_run
from rswb.engine.loop import metric_label
from rswb.engine.task import EvalContext
from rswb.io import atomic_write_text
from rswb.metrics.classification import classification_report
from rswb.utils import progress_bars

__all__ = ["run_report"]


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    from rswb.viz.common import fig_png

    data = base64.b64encode(fig_png(fig)).decode("ascii")
    plt.close(fig)
    return f"<img src='data:image/png;base64,{data}' style='max-width:100%'>"


def _fmt(key: str, value: Any) -> str:
    """A metric at the precision that means something: 2 decimals for percentages and ranks, 4 for fractions."""
    from rswb.notebooks import metric_unit

    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return html.escape(str(value))
    if float(value).is_integer() and abs(value) < 1e9:
        return str(int(value))
    unit = metric_unit(key)
    return f"{value:.2f}" if unit in ("percent", "rank") else f"{value:.4f}"


def _metrics_table(run: LoadedRun) -> str:
    final = run.metrics
    val, test = final.get("val") or {}, final.get("test") or {}
    names = run.class_names or final.get("class_names")
    rows = "".join(f"<tr><td class='m'>{html.escape(metric_label(k, names))}</td><td>{_fmt(k, val.get(k, ''))}</td>"
                   f"<td>{_fmt(k, test.get(k, ''))}</td></tr>" for k in sorted(set(val) | set(test)))
    return f"<table><tr><th>metric</th><th>val</th><th>test</th></tr>{rows}</table>"


def _settings_table(run: LoadedRun) -> str:
    final, cfg = run.metrics, run.config
    task = cfg.get("task", {}) or {}
    rows = {"run": run.path.name, "task": cfg.get("task_name", ""), "method": task.get("method", ""),
            "version": task.get("version", ""), "data": task.get("data", "") or "embedded",
            "epochs run": final.get("epochs_run", len(run.history)),
            "selected epoch": f"{final.get('best_epoch')} (by validation {final.get('monitor')})",
            "time": f"{final.get('time_s', 0.0):.1f} s on {final.get('device', '?')}",
            **{f"protocol: {k}": v for k, v in (final.get("protocol") or {}).items()}}
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows.items())
    return f"<table>{body}</table>"


def _curves(run: LoadedRun) -> str:
    import matplotlib.pyplot as plt

    history = run.history
    if not history:
        return "<p>no epoch records (metrics.jsonl is empty)</p>"
    monitor = run.metrics.get("monitor", "")
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(history)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")
    losses = [k for k in history[0] if k.startswith("train_") and k.endswith("loss")]
    for k in losses:
        axes[0].plot(epochs, [r.get(k, np.nan) for r in history], marker=".", label=k[len("train_"):])
    axes[0].set_xlabel("epoch")
    axes[0].set_title("training loss (its terms)")
    if losses:
        axes[0].legend(fontsize="small")
    key = f"val_{monitor}"
    axes[1].plot(epochs, [r.get(key, np.nan) for r in history], marker=".", color="tab:green")
    best = run.metrics.get("best_epoch")
    if best is not None:
        axes[1].axvline(best, color="gray", linestyle="--", label=f"selected epoch {best}")
        axes[1].legend(fontsize="small")
    axes[1].set_xlabel("epoch")
    axes[1].set_title(f"validation {monitor}")
    for ax in axes:
        ax.grid(alpha=0.3)
    return _png(fig)


def _confusion(run: LoadedRun, dev: Any) -> tuple[str, dict[str, Any] | None]:
    """The test confusion matrix of a classifying task (PHA: its predictions; hashing: its classifier's)."""
    from rswb.viz import plot_confusion

    task_name = run.config.get("task_name")
    ctx = EvalContext(dev)
    if task_name == "pha":
        pred = run.task.to(dev).predictions(run.test, ctx, dense=False)
        y_true, y_pred = np.asarray(pred["y_true"]), np.asarray(pred["y_pred"])
    elif task_name == "hash":
        out = run.task.to(dev).collect(run.test, ctx)
        y_true, y_pred = out["label"].numpy(), out["pred"].numpy()
    else:
        return "", None
    names = run.class_names or [f"class {c + 1}" for c in range(int(max(y_true.max(), y_pred.max())) + 1)]
    report = classification_report(y_true, y_pred, num_classes=len(names))
    what = "the test split" if task_name == "pha" else "the query split, by the classifier that writes the cue"
    fig = plot_confusion(report["confusion_matrix"], names, f"{run.path.name}: {what}")
    return _png(fig), {"y_true": y_true, "y_pred": y_pred}


def _spread(labels: np.ndarray, n: int) -> list[int]:
    """``n`` item indices of as many different classes as possible (the first item of each class in turn)."""
    order, seen = [], set()
    for i, y in enumerate(labels.tolist()):
        if y not in seen:
            seen.add(y)
            order.append(i)
    rest = [i for i in range(len(labels)) if i not in set(order)]
    return (order + rest)[:n]


def _maps(run: LoadedRun, dev: Any, items: int, pred: dict[str, Any] | None) -> str:
    """The measured attention maps of the run's task on ``items`` test items."""
    from rswb.viz import plot_cam_overlays

    task_name = run.config.get("task_name")
    if task_name == "hash":
        from rswb.infer import hash_grad_cam

        idx = _spread(pred["y_true"], items) if pred is not None else list(range(items))
        cams = hash_grad_cam(run.path, idx, device=str(dev))
        names = cams["class_names"]
        titles = [f"{names[t]}\npredicted {names[p]}" for t, p in zip(cams["label"], cams["pred"])]
        fig = plot_cam_overlays(cams["images"], {f"cue ({cams['method']})": cams["cue"],
                                                 f"code ({cams['method']})": cams["code"]}, titles=titles)
        return _png(fig)
    if task_name == "retrieval":
        from rswb.infer import word_region_maps

        test = run.test
        firsts = sorted({int(i): c for c, i in reversed(list(enumerate(test.caption_to_image)))}.items())[:items]
        images, maps, titles = [], [], []
        for img, cap in firsts:
            words = word_region_maps(run.task.to(dev), test, img, test.captions[cap])
            images.append(words["image"])
            maps.append(words["caption_cam"])
            titles.append(textwrap.fill(test.captions[cap], 34))
        how = f"{'LayerCAM' if words['method'] == 'layercam' else 'Grad-CAM'} of the image-caption score"
        fig = plot_cam_overlays(np.stack(images), {how: np.stack(maps)}, titles=titles)
        return _png(fig)
    if task_name == "pha":
        from rswb.infer import pha_attributions
        from rswb.viz import plot_pixel_attributions

        sampler = getattr(run.test, "sampler", None)
        model = run.task.model
        if sampler is None or model.feature_dims is not None or len(model.modalities) != 2:
            return ("<p>Pixel attributions need a two-branch PHA version on an MS+PAN scene (pixel mode); this run "
                    "classifies images or encoder features, or has one branch.</p>")
        idx = _spread(np.asarray(run.test.pixel_labels), items)
        attr = pha_attributions(model, sampler, run.test.rows[idx], run.test.cols[idx], device=str(dev))
        return _png(plot_pixel_attributions(attr, run.test.pixel_labels[idx], run.class_names))
    return ""


def run_report(run_dir: str | Path, out: str | Path | None = None, device: str | None = None,
               items: int = 4) -> Path:
    """Write the HTML page of a finished run (see the module docstring) and return its path.

    Args:
        run_dir: a finished run folder (``rswb train ...``, a notebook's run).
        out: the page (default: ``run_dir/report.html``).
        device: where to run the model (None: the best available).
        items: test items shown with their attention maps.

    Raises:
        FileNotFoundError: not a run folder, or the run has no selected weights (unfinished).
    """
    with progress_bars(False):  # rebuilding a run is not the work the user asked about: no loading bars
        run = load_run(run_dir)
    if not run.metrics:
        raise FileNotFoundError(f"{run_dir}: the run has not finished (no metrics.json)")
    dev = select_device(device)
    confusion, pred = _confusion(run, dev)
    sections = [("Settings and protocol", _settings_table(run)), ("Metrics", _metrics_table(run)),
                ("Training curves", _curves(run))]
    if confusion:
        sections.append(("Confusion matrix (rows: true class; colour: share of the row; numbers: counts)", confusion))
    maps = _maps(run, dev, items, pred)
    if maps:
        sections.append(("Where the model looks (the methods measured in benchmarks/results/explain.md)", maps))
    body = "\n".join(f"<h2>{html.escape(title)}</h2>\n{content}" for title, content in sections)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>rswb run {html.escape(run.path.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:0.5em 0}}
td,th{{border:1px solid #ccc;padding:3px 9px;text-align:left}}td.m{{font-family:monospace}}</style>
</head><body>
<h1>Run {html.escape(run.path.name)}</h1>
{body}
</body></html>
"""
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    atomic_write_text(page, path)
    return path
