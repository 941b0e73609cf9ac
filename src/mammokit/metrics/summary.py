"""One call that reports everything for one set of (label, probability) pairs, with clustered-bootstrap CIs.

`binary_report` runs a single bootstrap loop in which each replicate computes AUC, average precision and
every operating point from one sort. Data-driven thresholds (Youden, fixed specificity, fixed
sensitivity) are re-chosen inside each replicate, so their intervals include the uncertainty of choosing
the threshold on the same data; the model's stored threshold is fixed, as it would be in use.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from mammokit.metrics.bootstrap import bootstrap_ci
from mammokit.metrics.calibration import ece, reliability_curve
from mammokit.metrics.curves import OneClassWarning, auc_from_curve, average_precision_from_curve, binary_curve
from mammokit.metrics.operating import (
    confusion_counts,
    sens_spec_from_curve,
    threshold_at_sensitivity_from_curve,
    threshold_at_specificity_from_curve,
    youden_threshold_from_curve,
)


def operating_rules(
    model_threshold: float | None, specificities: Sequence[float], sensitivities: Sequence[float]
) -> list[tuple[str, str, Any]]:
    """(key, human label, rule) triples; rule is "youden", ("spec", s), ("sens", s) or ("fixed", t)."""
    rules: list[tuple[str, str, Any]] = []
    if model_threshold is not None:
        rules.append(("model", "Threshold stored in the model", ("fixed", float(model_threshold))))
    rules.append(("youden", "Youden (max. sensitivity + specificity)", "youden"))
    for s in specificities:
        rules.append((f"spec{round(100 * s)}", f"Specificity fixed at {100 * s:.0f} %", ("spec", float(s))))
    for s in sensitivities:
        rules.append((f"sens{round(100 * s)}", f"Sensitivity fixed at {100 * s:.0f} %", ("sens", float(s))))
    return rules


def _threshold(curve: Any, rule: Any) -> float:
    if rule == "youden":
        return youden_threshold_from_curve(curve)
    kind, value = rule
    if kind == "fixed":
        return value
    if kind == "spec":
        return threshold_at_specificity_from_curve(curve, value)
    return threshold_at_sensitivity_from_curve(curve, value)


def _all_metrics(rules: list[tuple[str, str, Any]]):
    """metric_fn for the bootstrap: [auc, ap, then (threshold, sens, spec) per rule]."""

    def fn(y: np.ndarray, p: np.ndarray) -> np.ndarray:
        curve = binary_curve(y, p)
        out = [auc_from_curve(curve), average_precision_from_curve(curve)]
        for _, _, rule in rules:
            t = _threshold(curve, rule)
            out.extend([t, *sens_spec_from_curve(curve, t)])
        return np.asarray(out, dtype=np.float64)

    return fn


def _ci(est: float, low: float, high: float, valid: int, n_boot: int, alpha: float) -> dict[str, Any]:
    return {
        "value": float(est),
        "ci_low": float(low),
        "ci_high": float(high),
        "ci_level": 1.0 - alpha,
        "n_boot": n_boot,
        "n_boot_valid": int(valid),
    }


def binary_report(
    y: np.ndarray,
    p: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    model_threshold: float | None = None,
    specificities: Sequence[float] = (0.80, 0.90),
    sensitivities: Sequence[float] = (0.80, 0.90),
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    ece_bins: int = 10,
) -> dict[str, Any]:
    """AUC, AUPRC, operating points (each with a clustered-bootstrap CI), confusion matrix and ECE.

    Args:
        y: (n,) 0/1 labels.
        p: (n,) probabilities of malignancy.
        groups: (n,) patient ids for the clustered bootstrap (None: resample single items).
        model_threshold: the threshold stored with the model (reported first and used for the
            confusion matrix); None for ensembles, which then use the Youden threshold.
        specificities, sensitivities: fixed targets for operating points.
        n_boot, seed, alpha: bootstrap replicates, generator seed, 1 - confidence level.
        ece_bins: equal-width bins for the expected calibration error.

    Returns:
        JSON-able dict. With a single class present, AUC and operating points are NaN (one warning).
    """
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    if y.size == 0:
        raise ValueError("no labelled images to evaluate")
    n_pos = int(np.sum(y == 1))
    n_neg = int(np.sum(y == 0))
    if n_pos == 0 or n_neg == 0:
        warnings.warn(
            f"only one class present ({n_pos} positive, {n_neg} negative): AUC and operating points are NaN",
            OneClassWarning,
            stacklevel=2,
        )
    rules = operating_rules(model_threshold, specificities, sensitivities)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OneClassWarning)
        boot = bootstrap_ci(_all_metrics(rules), y, p, groups=groups, n=n_boot, seed=seed, alpha=alpha)
    est, low, high, valid = boot.estimate, boot.low, boot.high, boot.n_valid

    def ci(k: int) -> dict[str, Any]:
        return _ci(est[k], low[k], high[k], valid[k], n_boot, alpha)

    points = []
    for i, (key, label, rule) in enumerate(rules):
        k = 2 + 3 * i
        t = float(est[k])
        entry: dict[str, Any] = {"key": key, "label": label, "threshold": t}
        if rule != "youden" and rule[0] == "fixed":
            entry["threshold_ci"] = None  # fixed in advance: no sampling variability
        else:
            entry["threshold_ci"] = [float(low[k]), float(high[k])]
        entry["sensitivity"] = ci(k + 1)
        entry["specificity"] = ci(k + 2)
        entry["confusion"] = confusion_counts(y, p, t) if np.isfinite(t) else None
        points.append(entry)
    cm_point = points[0]  # model threshold when given, else Youden
    rel = reliability_curve(y, p, ece_bins)
    return {
        "n": int(y.size),
        "n_positive": n_pos,
        "n_negative": n_neg,
        "n_groups": boot.n_groups,
        "prevalence": n_pos / y.size,
        "auc": ci(0),
        "auprc": ci(1),
        "operating_points": points,
        "confusion_matrix": {
            "rule": cm_point["key"],
            "threshold": cm_point["threshold"],
            **(cm_point["confusion"] or {}),
        },
        "ece": ece(y, p, ece_bins),
        "ece_bins": ece_bins,
        "reliability": {k: [float(v) for v in arr] for k, arr in rel.items()},
    }
