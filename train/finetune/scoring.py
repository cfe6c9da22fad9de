"""Matbench's scores: the per-fold regression and classification metrics and the fold
statistics every summary gives."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

REGRESSION_METRICS = ("mae", "rmse", "mape", "max_error")
"""Matbench's per-fold regression scores (``matbench.constants.REG_METRICS``)."""
CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "f1", "rocauc")
"""Matbench's per-fold classification scores (``matbench.constants.CLF_METRICS``)."""
HIGHER_IS_BETTER = frozenset({"accuracy", "balanced_accuracy", "f1", "rocauc"})


def score_regression(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    """Matbench's regression scores: mae, rmse, mape, max_error (floats)."""
    truth = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(y_pred, dtype=np.float64)
    error = pred - truth
    # sklearn's MAPE guards zero targets with machine epsilon; so does Matbench.
    denominator = np.maximum(np.abs(truth), np.finfo(np.float64).eps)
    return {
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mape": float(np.mean(np.abs(error) / denominator)),
        "max_error": float(np.max(np.abs(error))),
    }


def score_classification(
    y_true: Sequence[int], probabilities: np.ndarray, n_classes: int
) -> dict[str, float]:
    """accuracy, balanced_accuracy, f1 (binary: of class 1; else macro) and rocauc
    (binary; one-vs-rest mean for more classes) from class probabilities [N, C]."""
    truth = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probabilities, dtype=np.float64).reshape(len(truth), n_classes)
    pred = probs.argmax(axis=1)
    recalls, f1s = [], []
    for c in range(n_classes):
        true_c, pred_c = truth == c, pred == c
        tp = float(np.sum(true_c & pred_c))
        if true_c.any():
            recalls.append(tp / float(true_c.sum()))
        denominator = float(true_c.sum() + pred_c.sum())
        f1s.append(2 * tp / denominator if denominator else 0.0)
    aucs = [roc_auc(truth == c, probs[:, c]) for c in range(n_classes)]
    return {
        "accuracy": float(np.mean(pred == truth)),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan"),
        "f1": f1s[1] if n_classes == 2 else float(np.mean(f1s)),
        "rocauc": aucs[1] if n_classes == 2 else float(np.nanmean(aucs)),
    }


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged); NaN with one class."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(np.asarray(score, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fold_statistics(values: Sequence[float]) -> dict[str, float]:
    """Matbench's fold-distribution statistics: mean, max, min, std (population)."""
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "max": float(array.max()),
        "min": float(array.min()),
        "std": float(array.std()),
    }
