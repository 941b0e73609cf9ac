"""Operating points: thresholds chosen by a rule, and sensitivity/specificity/confusion counts at a threshold.

An image is called positive when `p >= threshold`. Thresholds are always actual score values (or
just above the largest score when the rule calls nothing positive), so applying the returned
threshold to the same data reproduces the reported sensitivity and specificity exactly.
"""

from __future__ import annotations

import numpy as np

from mammokit.metrics.curves import BinaryCurve, binary_curve, check_binary


def _finite_threshold(curve: BinaryCurve, i: int) -> float:
    """Threshold of ROC point `i`; the +inf point becomes the next float above the top score."""
    t = curve.roc_thresholds[i]
    if np.isinf(t):
        top = curve.thresholds[0] if curve.thresholds.size else 0.0
        return float(np.nextafter(top, np.inf))
    return float(t)


def youden_threshold_from_curve(curve: BinaryCurve) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (first, i.e. highest, on ties)."""
    if curve.n_pos == 0 or curve.n_neg == 0:
        return float("nan")
    j = curve.tpr - curve.fpr
    return _finite_threshold(curve, int(np.argmax(j)))


def threshold_at_specificity_from_curve(curve: BinaryCurve, specificity: float) -> float:
    """Lowest threshold whose specificity is still >= `specificity` (the most sensitive such point)."""
    if curve.n_neg == 0:
        return float("nan")
    ok = np.flatnonzero(1.0 - curve.fpr >= specificity - 1e-12)  # fpr is non-decreasing: ok is a prefix
    return _finite_threshold(curve, int(ok[-1]))


def threshold_at_sensitivity_from_curve(curve: BinaryCurve, sensitivity: float) -> float:
    """Highest threshold whose sensitivity reaches `sensitivity` (the most specific such point)."""
    if curve.n_pos == 0:
        return float("nan")
    ok = np.flatnonzero(curve.tpr >= sensitivity - 1e-12)  # tpr is non-decreasing: ok is a suffix
    return _finite_threshold(curve, int(ok[0]))


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity - 1 on (y, p); NaN with one class."""
    return youden_threshold_from_curve(binary_curve(y, p))


def threshold_at_specificity(y: np.ndarray, p: np.ndarray, specificity: float) -> float:
    """Lowest threshold keeping specificity >= `specificity` (e.g. 0.90); NaN without negatives."""
    if not 0.0 <= specificity <= 1.0:
        raise ValueError(f"specificity must be in [0, 1], got {specificity}")
    return threshold_at_specificity_from_curve(binary_curve(y, p), specificity)


def threshold_at_sensitivity(y: np.ndarray, p: np.ndarray, sensitivity: float) -> float:
    """Highest threshold reaching sensitivity >= `sensitivity`; NaN without positives."""
    if not 0.0 <= sensitivity <= 1.0:
        raise ValueError(f"sensitivity must be in [0, 1], got {sensitivity}")
    return threshold_at_sensitivity_from_curve(binary_curve(y, p), sensitivity)


def confusion_counts(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, int]:
    """{"tp", "fp", "tn", "fn"} when calling `p >= threshold` positive."""
    y, p = check_binary(y, p)
    called = p >= threshold
    pos = y == 1
    return {
        "tp": int(np.sum(called & pos)),
        "fp": int(np.sum(called & ~pos)),
        "tn": int(np.sum(~called & ~pos)),
        "fn": int(np.sum(~called & pos)),
    }


def sens_spec_at(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) at `threshold`; each NaN when its class is absent."""
    c = confusion_counts(y, p, threshold)
    n_pos, n_neg = c["tp"] + c["fn"], c["tn"] + c["fp"]
    sens = c["tp"] / n_pos if n_pos else float("nan")
    spec = c["tn"] / n_neg if n_neg else float("nan")
    return sens, spec


def sens_spec_from_curve(curve: BinaryCurve, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) at `threshold` from precomputed cumulative counts (no re-sort)."""
    if np.isnan(threshold):
        return float("nan"), float("nan")
    # thresholds are descending; count the distinct scores >= threshold.
    k = int(np.searchsorted(-curve.thresholds, -threshold, side="right"))
    tp = curve.tps[k - 1] if k else 0.0
    fp = curve.fps[k - 1] if k else 0.0
    sens = tp / curve.n_pos if curve.n_pos else float("nan")
    spec = 1.0 - fp / curve.n_neg if curve.n_neg else float("nan")
    return float(sens), float(spec)
