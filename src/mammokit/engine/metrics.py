"""Training-time classification metrics from softmax outputs (NumPy in, plain Python out).

p(malignant) comes from the inference core (`scoring.core.malignant_from_class_probs`) and the AUC from
`mammokit.metrics` (the one definition; NaN with one class, reported here as None so the JSON stays valid).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix

from mammokit.metrics import OneClassWarning, roc_auc
from mammokit.scoring.core import malignant_from_class_probs


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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OneClassWarning)  # a one-class validation set is warned about once, at start
        auc = roc_auc(positive, malignant_from_class_probs(prob, positive_indices))
    return {
        "n": int(n),
        "loss": loss,
        "acc": float((pred == label).mean()),
        "auc": None if np.isnan(auc) else auc,
        "per_class_acc": per_class,
        "confusion": cm.tolist(),
    }
