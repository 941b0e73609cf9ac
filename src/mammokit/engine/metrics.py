"""Training-time classification metrics from softmax outputs (NumPy in, plain Python out)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve


def malignancy_scores(prob: np.ndarray, positive_indices: list[int]) -> np.ndarray:
    """p(malignant) = sum of the softmax over the malignant output units. prob: (N, C) -> (N,)."""
    return prob[:, positive_indices].sum(axis=1)


def binary_auc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC AUC, or None when only one class is present (AUC undefined)."""
    if len(np.unique(positive)) < 2:
        return None
    return float(roc_auc_score(positive, score))


def youden_threshold(score: np.ndarray, positive: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity - 1 on (score, positive); 0.5 when undefined."""
    if len(np.unique(positive)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(positive, score)
    # roc_curve's first threshold is +inf (nothing called positive): choose among the real scores only.
    best = 1 + int(np.argmax((tpr - fpr)[1:]))
    return float(thr[best])


def classification_metrics(prob: np.ndarray, label: np.ndarray, positive_indices: list[int]) -> dict[str, Any]:
    """Loss, accuracy, per-class accuracy (recall), confusion matrix and malignancy AUC.

    Args:
        prob: (N, C) softmax probabilities.
        label: (N,) true class indices.
        positive_indices: the classes that count as malignant for the AUC.

    Returns:
        {"n", "loss", "acc", "auc", "per_class_acc": [C floats or None], "confusion": C x C list (rows = truth)}.
    """
    n, c = prob.shape
    if n == 0:
        return {"n": 0, "loss": None, "acc": None, "auc": None, "per_class_acc": [None] * c, "confusion": []}
    eps = 1e-12
    loss = float(-np.log(np.clip(prob[np.arange(n), label], eps, 1.0)).mean())
    pred = prob.argmax(axis=1)
    cm = confusion_matrix(label, pred, labels=list(range(c)))
    per_class = [float(cm[k, k] / cm[k].sum()) if cm[k].sum() > 0 else None for k in range(c)]
    positive = np.isin(label, positive_indices).astype(int)
    return {
        "n": int(n),
        "loss": loss,
        "acc": float((pred == label).mean()),
        "auc": binary_auc(malignancy_scores(prob, positive_indices), positive),
        "per_class_acc": per_class,
        "confusion": cm.tolist(),
    }
