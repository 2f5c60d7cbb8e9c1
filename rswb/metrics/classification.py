"""Classification metrics from a confusion matrix: overall accuracy, average accuracy and Cohen's kappa.

Conventions (docs/methods.md, "Evaluation protocols"):

* The confusion matrix ``M`` has rows = true class and columns = predicted class, in the order of ``labels``.
* ``OA = trace(M) / N``; per-class accuracy is the *producer's* accuracy ``M[i, i] / sum(M[i, :])`` (recall);
  the *user's* accuracy is ``M[i, i] / sum(M[:, i])`` (precision).
* ``AA`` is the mean producer's accuracy over the classes that occur in ``y_true`` (a class with no true sample
  has no defined producer's accuracy; this matches :func:`sklearn.metrics.balanced_accuracy_score`).
* ``kappa = (p_o - p_e) / (1 - p_e)`` with ``p_o = OA`` and ``p_e = sum_i row_i * col_i / N^2``.
* Every score is a fraction in ``[0, 1]`` (kappa in ``[-1, 1]``), not a percentage: multiply by 100 for tables.

Unlabelled samples never count. ``ignore_index`` names the value of ``y_true`` that marks them, and the class set
skips it. The two usual label conventions both work:

* 0-based class indices ``0..C-1`` (the output of ``argmax``): keep the default ``ignore_index=-1``.
* label-map values ``1..C`` with ``0 = unlabelled`` (the MS+PAN ``train.npy`` / ``test.npy`` maps): pass
  ``ignore_index=0``; the classes are then ``1..C`` and the matrix is ``C x C``.

``num_classes=C`` fixes the class set to the first ``C`` non-negative integers other than ``ignore_index`` (so
classes absent from both arrays still get a row and a column); ``labels`` gives the class values explicitly.
A prediction (or a true label) that is not one of the classes raises :class:`ValueError` instead of being dropped,
because dropping it would silently raise the accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor

__all__ = [
    "class_scores",
    "class_labels",
    "classification_metrics",
    "classification_report",
    "confusion_matrix",
    "report_from_confusion",
    "scores_from_confusion",
]


def _as_int_tensor(x: ArrayLike | Sequence[int], name: str) -> torch.Tensor:
    """Flatten ``x`` into a 1-D int64 tensor on its own device (numpy arrays are wrapped without a copy)."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.is_floating_point() or t.is_complex():
        # Float labels (e.g. a label map read as float32) are accepted only when they hold whole numbers.
        if not bool(torch.all(t == torch.round(t))):
            raise ValueError(f"{name} must hold integer class labels, got non-integer values")
    elif t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class labels, got booleans")
    return t.reshape(-1).to(torch.int64)


def class_labels(num_classes: int, ignore_index: int = -1) -> np.ndarray:
    """The first ``num_classes`` non-negative integers other than ``ignore_index``.

    Args:
        num_classes: number of real classes ``C``.
        ignore_index: the value that marks unlabelled samples.

    Returns:
        Class values ``[C]`` (int64): ``0..C-1`` for ``ignore_index=-1`` (or any value outside that range, such as
        255), ``1..C`` for ``ignore_index=0``.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    values = np.arange(num_classes + 1, dtype=np.int64)
    return values[values != ignore_index][:num_classes]


def confusion_matrix(
    y_true: ArrayLike | Sequence[int],
    y_pred: ArrayLike | Sequence[int],
    *,
    num_classes: int | None = None,
    labels: Sequence[int] | np.ndarray | None = None,
    ignore_index: int | None = -1,
) -> np.ndarray:
    """Count (true class, predicted class) pairs, skipping samples whose true label is ``ignore_index``.

    Args:
        y_true: true labels of any shape (a label map is fine); numpy array or tensor (any device).
        y_pred: predicted labels, same number of elements as ``y_true``.
        num_classes: number of classes ``C``; the classes are :func:`class_labels` ``(C, ignore_index)``.
        labels: explicit class values in matrix order (overrides ``num_classes``).
        ignore_index: value of ``y_true`` that marks unlabelled samples (``None``: every sample counts). With
            neither ``labels`` nor ``num_classes`` the classes are the sorted values present in the labelled part of
            ``y_true`` and ``y_pred``, minus ``ignore_index``.

    Returns:
        Confusion matrix ``[C, C]`` (int64, numpy), rows = true class, columns = predicted class.

    Raises:
        ValueError: on a size mismatch, non-integer labels, no labelled sample, or a label that is not a class.
    """
    return _confusion(y_true, y_pred, num_classes=num_classes, labels=labels, ignore_index=ignore_index)[0]


def _confusion(
    y_true: ArrayLike | Sequence[int],
    y_pred: ArrayLike | Sequence[int],
    *,
    num_classes: int | None,
    labels: Sequence[int] | np.ndarray | None,
    ignore_index: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`confusion_matrix` plus the class values ``[C]`` it used."""
    t = _as_int_tensor(y_true, "y_true")
    p = _as_int_tensor(y_pred, "y_pred").to(t.device)
    if t.numel() != p.numel():
        raise ValueError(f"y_true has {t.numel()} elements but y_pred has {p.numel()}")
    if ignore_index is not None:
        keep = t != ignore_index
        t, p = t[keep], p[keep]
    if t.numel() == 0:
        raise ValueError("no labelled sample: every y_true value equals ignore_index (or the input is empty)")

    if labels is not None:
        classes = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(np.unique(classes)) != len(classes):
            raise ValueError(f"labels must be distinct, got {classes.tolist()}")
    elif num_classes is not None:
        classes = class_labels(num_classes, -1 if ignore_index is None else ignore_index)
    else:
        present = torch.unique(torch.cat([t, p])).cpu().numpy()
        classes = present[present != ignore_index] if ignore_index is not None else present
    if len(classes) == 0:
        raise ValueError("no class left: every prediction equals ignore_index; pass labels or num_classes")

    # Map class values to matrix positions with a sorted lookup (works for any integer values, not just 0..C-1).
    order = np.argsort(classes, kind="stable")
    sorted_vals = torch.as_tensor(classes[order], device=t.device)
    position = torch.as_tensor(order, device=t.device)
    ti, pi = _positions(t, sorted_vals, position, "y_true"), _positions(p, sorted_vals, position, "y_pred")
    c = len(classes)
    counts = torch.bincount(ti * c + pi, minlength=c * c)
    return counts.reshape(c, c).cpu().numpy().astype(np.int64), classes


def _positions(values: torch.Tensor, sorted_vals: torch.Tensor, position: torch.Tensor, name: str) -> torch.Tensor:
    """Matrix position of every value; raises when a value is not a class."""
    idx = torch.searchsorted(sorted_vals, values).clamp_(max=len(sorted_vals) - 1)
    bad = sorted_vals[idx] != values
    if bool(bad.any()):
        stray = torch.unique(values[bad]).cpu().tolist()
        raise ValueError(
            f"{name} contains values {stray[:10]} that are not classes {sorted_vals.cpu().tolist()[:20]}; "
            "pass labels/num_classes that cover them, or the right ignore_index"
        )
    return position[idx]


def scores_from_confusion(cm: np.ndarray | torch.Tensor) -> dict[str, float]:
    """``OA``, ``AA`` and ``kappa`` of a confusion matrix (rows = true, columns = predicted).

    Useful to sum matrices over batches or tiles first and score once.

    Args:
        cm: confusion matrix ``[C, C]`` of counts.

    Returns:
        ``{"OA", "AA", "kappa"}`` as floats (fractions). ``kappa`` is NaN when ``p_e = 1`` (one class only in both
        truth and prediction), where it is undefined (scikit-learn's default answer too).
    """
    m = _as_float_matrix(cm)
    n = m.sum()
    if n <= 0:
        raise ValueError("the confusion matrix is empty (no sample)")
    rows, cols, diag = m.sum(axis=1), m.sum(axis=0), np.diag(m)
    oa = float(diag.sum() / n)
    present = rows > 0
    aa = float(np.mean(diag[present] / rows[present]))
    p_e = float(np.dot(rows, cols) / (n * n))
    kappa = float((oa - p_e) / (1.0 - p_e)) if p_e < 1.0 else float("nan")
    return {"OA": oa, "AA": aa, "kappa": kappa}


def report_from_confusion(cm: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
    """Per-class arrays of a confusion matrix (rows = true, columns = predicted).

    Args:
        cm: confusion matrix ``[C, C]`` of counts.

    Returns:
        ``per_class_accuracy`` (producer's accuracy, NaN for a class with no true sample), ``users_accuracy`` (NaN
        for a class never predicted), ``support`` (true count) and ``predicted_count``, each ``[C]``.
    """
    m = _as_float_matrix(cm)
    rows, cols, diag = m.sum(axis=1), m.sum(axis=0), np.diag(m)
    with np.errstate(divide="ignore", invalid="ignore"):
        producers = np.where(rows > 0, diag / rows, np.nan)
        users = np.where(cols > 0, diag / cols, np.nan)
    return {
        "per_class_accuracy": producers,
        "users_accuracy": users,
        "support": rows.astype(np.int64),
        "predicted_count": cols.astype(np.int64),
    }


def _as_float_matrix(cm: np.ndarray | torch.Tensor) -> np.ndarray:
    m = cm.detach().cpu().numpy() if isinstance(cm, torch.Tensor) else np.asarray(cm)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"a confusion matrix must be square [C, C], got shape {m.shape}")
    return m.astype(np.float64)


def classification_metrics(
    y_true: ArrayLike | Sequence[int],
    y_pred: ArrayLike | Sequence[int],
    *,
    num_classes: int | None = None,
    labels: Sequence[int] | np.ndarray | None = None,
    ignore_index: int | None = -1,
) -> dict[str, float]:
    """Overall accuracy, average accuracy and Cohen's kappa, skipping unlabelled samples.

    Example: a test map with ``0 = unlabelled`` and classes ``1..C`` against a prediction map in the same values::

        classification_metrics(test_map, pred_map, ignore_index=0)

    while class indices from ``logits.argmax(1)`` use the default ``ignore_index=-1``.

    Args:
        y_true: true labels of any shape; numpy array or tensor.
        y_pred: predicted labels, same number of elements.
        num_classes: number of classes (see :func:`confusion_matrix`).
        labels: explicit class values (see :func:`confusion_matrix`).
        ignore_index: value of ``y_true`` that marks unlabelled samples (``None``: none).

    Returns:
        ``{"OA", "AA", "kappa"}``: fractions (not percentages), see :func:`scores_from_confusion`.
    """
    cm = confusion_matrix(y_true, y_pred, num_classes=num_classes, labels=labels, ignore_index=ignore_index)
    return scores_from_confusion(cm)


def classification_report(
    y_true: ArrayLike | Sequence[int],
    y_pred: ArrayLike | Sequence[int],
    *,
    num_classes: int | None = None,
    labels: Sequence[int] | np.ndarray | None = None,
    ignore_index: int | None = -1,
) -> dict[str, np.ndarray]:
    """Per-class arrays next to the confusion matrix they come from.

    Args:
        y_true: true labels of any shape; numpy array or tensor.
        y_pred: predicted labels, same number of elements.
        num_classes: number of classes (see :func:`confusion_matrix`).
        labels: explicit class values (see :func:`confusion_matrix`).
        ignore_index: value of ``y_true`` that marks unlabelled samples (``None``: none).

    Returns:
        ``labels`` (class values ``[C]``), ``confusion_matrix`` ``[C, C]`` and the arrays of
        :func:`report_from_confusion`: ``per_class_accuracy``, ``users_accuracy``, ``support``, ``predicted_count``.
    """
    cm, classes = _confusion(y_true, y_pred, num_classes=num_classes, labels=labels, ignore_index=ignore_index)
    return {"labels": classes, "confusion_matrix": cm, **report_from_confusion(cm)}


def class_scores(labels: np.ndarray, pred: np.ndarray, num_classes: int) -> dict[str, float]:
    """OA, AA, kappa (fractions) and ``acc_<k>``, the accuracy of class value k (1..C, as in the label maps).

    Classes without a sample in ``labels`` get no ``acc_<k>`` entry (their accuracy is undefined), so every value
    is a finite float that the run's ``metrics.json`` can hold.
    """
    cm = confusion_matrix(labels, pred, num_classes=num_classes)
    out = {k: float(v) for k, v in scores_from_confusion(cm).items()}
    report = report_from_confusion(cm)
    for k, (acc, n) in enumerate(zip(report["per_class_accuracy"], report["support"])):
        if n > 0:
            out[f"acc_{k + 1}"] = float(acc)
    return out
