"""ROC and precision-recall curves, ROC AUC and average precision for binary labels (NumPy only).

Every figure here derives from one descending sort of the scores (`binary_curve`), so that a
bootstrap replicate costs one sort however many metrics it reports. The definitions are exactly
scikit-learn's (`roc_curve(drop_intermediate=False)`, `roc_auc_score`, `average_precision_score`),
which the tests check on inputs with ties; scikit-learn itself is not called in the loop because it
re-validates and re-sorts its input for every metric.

Conventions: `y` holds 0/1 labels (1 = malignant), `p` holds scores where larger means more likely
malignant; an image is called positive when `p >= threshold`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


class OneClassWarning(UserWarning):
    """A metric that needs both classes got only one; the metric is NaN."""


@dataclass(frozen=True)
class BinaryCurve:
    """Cumulative counts at each distinct score, highest score first.

    `tps[i]`/`fps[i]` = true/false positives when calling positive every score >= `thresholds[i]`.
    """

    thresholds: np.ndarray  # (k,) distinct scores, descending
    tps: np.ndarray  # (k,) float64 cumulative true positives
    fps: np.ndarray  # (k,) float64 cumulative false positives
    n_pos: int
    n_neg: int

    @property
    def tpr(self) -> np.ndarray:
        """Sensitivity at each threshold, with the (0, 0) point (threshold +inf) prepended."""
        return np.concatenate([[0.0], self.tps / self.n_pos]) if self.n_pos else np.full(len(self.tps) + 1, np.nan)

    @property
    def fpr(self) -> np.ndarray:
        """1 - specificity at each threshold, with the (0, 0) point prepended."""
        return np.concatenate([[0.0], self.fps / self.n_neg]) if self.n_neg else np.full(len(self.fps) + 1, np.nan)

    @property
    def roc_thresholds(self) -> np.ndarray:
        """Thresholds matching `tpr`/`fpr` (+inf first: nothing is called positive)."""
        return np.concatenate([[np.inf], self.thresholds])


def check_binary(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert labels/scores to 1-D int/float64 arrays of equal length."""
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 1 or y.shape != p.shape:
        raise ValueError(f"labels and scores must be 1-D arrays of equal length, got {y.shape} and {p.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        bad = sorted(set(np.unique(y).tolist()) - {0, 1})[:5]
        raise ValueError(f"labels must be 0 or 1 (drop unknown labels, -1, first); found {bad}")
    if not np.isfinite(p).all():
        raise ValueError("scores contain NaN or infinite values")
    return y.astype(np.int8, copy=False), p


def binary_curve(y: np.ndarray, p: np.ndarray) -> BinaryCurve:
    """Cumulative TP/FP counts at every distinct score (one O(n log n) sort)."""
    y, p = check_binary(y, p)
    order = np.argsort(p, kind="mergesort")[::-1]
    p_sorted = p[order]
    y_sorted = y[order].astype(np.float64)
    # Last index of each run of equal scores: tied images change the counts together.
    distinct = np.flatnonzero(np.diff(p_sorted)) if p_sorted.size > 1 else np.array([], dtype=np.int64)
    ends = np.r_[distinct, p_sorted.size - 1] if p_sorted.size else np.array([], dtype=np.int64)
    tps = np.cumsum(y_sorted)[ends]
    fps = (1.0 + ends) - tps
    n_pos = int(y_sorted.sum())
    return BinaryCurve(p_sorted[ends], tps, fps, n_pos, int(p_sorted.size) - n_pos)


def _warn_one_class(name: str, curve: BinaryCurve) -> None:
    warnings.warn(
        f"{name} is undefined with only one class present ({curve.n_pos} positive, {curve.n_neg} negative); "
        "returning NaN",
        OneClassWarning,
        stacklevel=3,
    )


def auc_from_curve(curve: BinaryCurve) -> float:
    """ROC AUC by the trapezoidal rule over distinct thresholds (ties count one half)."""
    if curve.n_pos == 0 or curve.n_neg == 0:
        return float("nan")
    return float(np.trapezoid(curve.tpr, curve.fpr))


def average_precision_from_curve(curve: BinaryCurve) -> float:
    """Average precision: sum over thresholds of (recall step) x precision (scikit-learn's definition)."""
    if curve.n_pos == 0:
        return float("nan")
    precision = curve.tps / (curve.tps + curve.fps)
    recall_steps = np.diff(np.concatenate([[0.0], curve.tps])) / curve.n_pos
    return float(np.sum(recall_steps * precision))


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve; NaN with a `OneClassWarning` when only one class is present."""
    curve = binary_curve(y, p)
    if curve.n_pos == 0 or curve.n_neg == 0:
        _warn_one_class("ROC AUC", curve)
    return auc_from_curve(curve)


def average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the precision-recall curve (average precision); NaN with a warning without positives."""
    curve = binary_curve(y, p)
    if curve.n_pos == 0:
        _warn_one_class("average precision", curve)
    return average_precision_from_curve(curve)


def pr_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) points for plotting, starting at recall 0 with the first point's precision."""
    curve = binary_curve(y, p)
    if curve.n_pos == 0:
        return np.array([0.0, 1.0]), np.array([np.nan, np.nan])
    precision = curve.tps / (curve.tps + curve.fps)
    recall = curve.tps / curve.n_pos
    return np.concatenate([[0.0], recall]), np.concatenate([[precision[0]], precision])
