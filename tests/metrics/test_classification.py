"""rswb.metrics.classification against scikit-learn on seeded random labels, plus a hand-computed case."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from rswb.metrics import (
    class_labels,
    classification_metrics,
    classification_report,
    confusion_matrix,
    scores_from_confusion,
)


def _sklearn_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    with warnings.catch_warnings():
        # balanced_accuracy warns when y_pred holds a class absent from y_true (and then skips it, as AA does).
        warnings.simplefilter("ignore")
        return {
            "OA": skm.accuracy_score(y_true, y_pred),
            "AA": skm.balanced_accuracy_score(y_true, y_pred),
            "kappa": skm.cohen_kappa_score(y_true, y_pred),
        }


@pytest.mark.parametrize("seed", range(8))
def test_matches_sklearn_with_ignore_index(seed):
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(50, 400)), int(rng.integers(2, 9))
    y_true = rng.integers(0, c, n)
    # Mostly right predictions drawn from a smaller class range, so some classes are never predicted.
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, max(1, c - 2), n))
    y_true[rng.random(n) < 0.2] = -1  # unlabelled
    keep = y_true != -1

    got = classification_metrics(y_true, y_pred)
    ref = _sklearn_scores(y_true[keep], y_pred[keep])
    assert got.keys() == {"OA", "AA", "kappa"}
    for key in ref:
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key

    labels = np.unique(np.concatenate([y_true[keep], y_pred[keep]]))
    np.testing.assert_array_equal(
        confusion_matrix(y_true, y_pred), skm.confusion_matrix(y_true[keep], y_pred[keep], labels=labels)
    )

    # The same data as a label map (0 = unlabelled, classes 1..C) with ignore_index=0 scores identically.
    got_map = classification_metrics((y_true + 1).reshape(1, -1), y_pred + 1, ignore_index=0)
    assert got_map == pytest.approx(got, abs=1e-15)


@pytest.mark.parametrize("seed", range(4))
def test_report_matches_sklearn_per_class(seed):
    rng = np.random.default_rng(100 + seed)
    c = 6
    y_true = rng.integers(0, c - 1, 300)  # class 5 never occurs in y_true
    y_pred = np.where(rng.random(300) < 0.5, y_true, rng.integers(0, c, 300))
    rep = classification_report(y_true, y_pred, num_classes=c)
    np.testing.assert_array_equal(rep["labels"], np.arange(c))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        recall = skm.recall_score(y_true, y_pred, labels=range(c), average=None, zero_division=np.nan)
        precision = skm.precision_score(y_true, y_pred, labels=range(c), average=None, zero_division=np.nan)
    np.testing.assert_allclose(rep["per_class_accuracy"], recall, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(rep["users_accuracy"], precision, atol=1e-12, equal_nan=True)
    assert np.isnan(rep["per_class_accuracy"][c - 1])
    # AA averages only the classes present in y_true.
    aa = classification_metrics(y_true, y_pred, num_classes=c)["AA"]
    assert aa == pytest.approx(np.nanmean(rep["per_class_accuracy"]), abs=1e-12)


def test_hand_computed_three_classes():
    # Confusion matrix written out by hand (rows true, columns predicted):
    #        pred0 pred1 pred2   row
    # true0    3     1     0      4
    # true1    1     2     1      4
    # true2    0     0     2      2
    # col      4     3     3     10
    y_true = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    y_pred = [0, 0, 0, 1, 0, 1, 1, 2, 2, 2]
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred), [[3, 1, 0], [1, 2, 1], [0, 0, 2]])
    got = classification_metrics(y_true, y_pred)
    # OA = 7/10; AA = (3/4 + 2/4 + 2/2)/3 = 0.75; p_e = (4*4 + 4*3 + 2*3)/100 = 0.34;
    # kappa = (0.7 - 0.34)/(1 - 0.34) = 0.36/0.66 = 6/11.
    assert got["OA"] == pytest.approx(0.7, abs=1e-15)
    assert got["AA"] == pytest.approx(0.75, abs=1e-15)
    assert got["kappa"] == pytest.approx(6 / 11, abs=1e-15)
    rep = classification_report(y_true, y_pred)
    np.testing.assert_allclose(rep["per_class_accuracy"], [3 / 4, 2 / 4, 1.0])
    np.testing.assert_allclose(rep["users_accuracy"], [3 / 4, 2 / 3, 2 / 3])
    np.testing.assert_array_equal(rep["support"], [4, 4, 2])
    np.testing.assert_array_equal(rep["predicted_count"], [4, 3, 3])


def test_label_map_with_unlabelled_zero():
    truth = np.array([[0, 1, 1], [2, 2, 0], [3, 0, 3]], dtype=np.uint8)
    pred = np.array([[2, 1, 2], [2, 2, 1], [3, 3, 1]], dtype=np.uint8)  # predictions on unlabelled pixels ignored
    rep = classification_report(truth, pred, ignore_index=0)
    np.testing.assert_array_equal(rep["labels"], [1, 2, 3])
    np.testing.assert_array_equal(rep["confusion_matrix"], [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert classification_metrics(truth, pred, ignore_index=0)["OA"] == pytest.approx(4 / 6)


def test_num_classes_and_class_labels():
    np.testing.assert_array_equal(class_labels(3), [0, 1, 2])
    np.testing.assert_array_equal(class_labels(3, ignore_index=0), [1, 2, 3])
    np.testing.assert_array_equal(class_labels(3, ignore_index=255), [0, 1, 2])
    cm = confusion_matrix([1, 2, 2], [1, 2, 1], num_classes=4, ignore_index=0)
    assert cm.shape == (4, 4) and cm.sum() == 3 and cm[0, 0] == 1  # row/column 0 is class 1


def test_torch_and_numpy_agree():
    rng = np.random.default_rng(7)
    y_true, y_pred = rng.integers(-1, 5, 500), rng.integers(0, 5, 500)
    a = classification_metrics(y_true, y_pred)
    b = classification_metrics(torch.from_numpy(y_true), torch.from_numpy(y_pred).to(torch.int32))
    assert a == b
    c = classification_metrics(y_true.astype(np.float32), y_pred.astype(np.float64))
    assert a == c


def test_scores_from_summed_confusion_matrices():
    rng = np.random.default_rng(3)
    y_true, y_pred = rng.integers(0, 4, 1000), rng.integers(0, 4, 1000)
    total = sum(confusion_matrix(y_true[i : i + 100], y_pred[i : i + 100], num_classes=4) for i in range(0, 1000, 100))
    assert scores_from_confusion(total) == pytest.approx(classification_metrics(y_true, y_pred), abs=1e-15)


def test_degenerate_and_invalid_inputs():
    # One class in truth and prediction: kappa is undefined (NaN), as in scikit-learn.
    got = classification_metrics([2, 2, 2], [2, 2, 2])
    assert got["OA"] == 1.0 and got["AA"] == 1.0 and np.isnan(got["kappa"])
    with pytest.raises(ValueError, match="not classes"):
        classification_metrics([1, 2], [1, 0], ignore_index=0)  # predicting "unlabelled" is an error, not a skip
    with pytest.raises(ValueError, match="not classes"):
        classification_metrics([0, 5], [0, 1], num_classes=3)
    with pytest.raises(ValueError, match="no labelled sample"):
        classification_metrics([-1, -1], [0, 1])
    with pytest.raises(ValueError, match="elements"):
        classification_metrics([0, 1], [0])
    with pytest.raises(ValueError, match="integer"):
        classification_metrics([0.5, 1.0], [0, 1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs_match_cpu():
    rng = np.random.default_rng(8)
    y_true, y_pred = rng.integers(0, 6, (50, 40)), rng.integers(1, 6, (50, 40))
    cpu = classification_report(y_true, y_pred, ignore_index=0)
    gpu = classification_report(
        torch.from_numpy(y_true).to("cuda"), torch.from_numpy(y_pred).to("cuda"), ignore_index=0
    )
    for key in cpu:
        np.testing.assert_array_equal(gpu[key], cpu[key])
