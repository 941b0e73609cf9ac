"""Curves, AUC, average precision, operating points and the one-call report vs scikit-learn and hand cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from mammokit.metrics import (
    OneClassWarning,
    average_precision,
    binary_curve,
    binary_report,
    confusion_counts,
    roc_auc,
    sens_spec_at,
    threshold_at_sensitivity,
    threshold_at_specificity,
    youden_threshold,
)


def _tied_data(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.round(np.clip(0.3 * y + rng.normal(0.35, 0.2, n), 0, 1), 1)  # rounding makes many ties
    return y, p


def test_auc_hand_computed_cases():
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    # Tied pair (0.5 vs 0.5) counts one half: (0.5 + 1 + 1 + 1) / 4.
    assert roc_auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.2, 0.9])) == pytest.approx(0.875)
    assert roc_auc(np.array([0, 1]), np.array([0.3, 0.3])) == pytest.approx(0.5)
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.8, 0.9])) == pytest.approx(0.0)
    ap = average_precision(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert ap == pytest.approx(0.5 + 0.5 * 2 / 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_ap_and_curve_match_sklearn_with_ties(seed):
    y, p = _tied_data(seed)
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert average_precision(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    curve = binary_curve(y, p)
    np.testing.assert_allclose(curve.fpr, fpr)
    np.testing.assert_allclose(curve.tpr, tpr)
    np.testing.assert_allclose(curve.roc_thresholds[1:], thr[1:])


def test_one_class_gives_nan_with_warning_not_crash():
    with pytest.warns(OneClassWarning, match="only one class"):
        assert np.isnan(roc_auc(np.ones(5, dtype=int), np.linspace(0, 1, 5)))
    with pytest.warns(OneClassWarning):
        assert np.isnan(average_precision(np.zeros(5, dtype=int), np.linspace(0, 1, 5)))
    assert np.isnan(youden_threshold(np.zeros(4, dtype=int), np.linspace(0, 1, 4)))


def test_bad_input_is_rejected_with_clear_message():
    with pytest.raises(ValueError, match="0 or 1"):
        roc_auc(np.array([0, 1, -1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="equal length"):
        roc_auc(np.array([0, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="NaN"):
        roc_auc(np.array([0, 1]), np.array([0.1, np.nan]))


def _brute_force_points(y, p):
    """(threshold, sens, spec) for every candidate threshold (each distinct score and one above the top)."""
    cands = np.concatenate([np.unique(p), [np.nextafter(p.max(), np.inf)]])
    return [(t, *sens_spec_at(y, p, t)) for t in cands]


@pytest.mark.parametrize("seed", [0, 5])
def test_operating_points_match_brute_force(seed):
    y, p = _tied_data(seed, n=200)
    pts = _brute_force_points(y, p)
    t = youden_threshold(y, p)
    best_j = max(s + c - 1 for _, s, c in pts)
    sens, spec = sens_spec_at(y, p, t)
    assert sens + spec - 1 == pytest.approx(best_j)
    for target in (0.8, 0.9):
        t = threshold_at_specificity(y, p, target)
        sens, spec = sens_spec_at(y, p, t)
        assert spec >= target
        assert sens == pytest.approx(max(s for _, s, c in pts if c >= target))
        t = threshold_at_sensitivity(y, p, target)
        sens, spec = sens_spec_at(y, p, t)
        assert sens >= target
        assert spec == pytest.approx(max(c for _, s, c in pts if s >= target))


def test_confusion_counts_and_sens_spec_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.6, 0.2, 0.7, 0.4, 0.1, 0.6])
    assert confusion_counts(y, p, 0.6) == {"tp": 2, "fp": 2, "tn": 2, "fn": 1}
    sens, spec = sens_spec_at(y, p, 0.6)
    assert sens == pytest.approx(2 / 3)
    assert spec == pytest.approx(0.5)
    # Specificity 1.0 needs a threshold above the top negative (0.7): only 0.9 is called positive.
    t = threshold_at_specificity(y, p, 1.0)
    assert 0.7 < t <= 0.9
    assert sens_spec_at(y, p, t) == pytest.approx((1 / 3, 1.0))


def test_binary_report_contents_and_consistency():
    y, p = _tied_data(3, n=240)
    patients = np.repeat(np.arange(60), 4)
    rep = binary_report(y, p, patients, model_threshold=0.5, n_boot=200, seed=1)
    assert rep["n"] == 240 and rep["n_groups"] == 60
    assert rep["auc"]["value"] == pytest.approx(roc_auc_score(y, p))
    assert rep["auc"]["ci_low"] < rep["auc"]["value"] < rep["auc"]["ci_high"]
    assert rep["auprc"]["value"] == pytest.approx(average_precision_score(y, p))
    keys = [pt["key"] for pt in rep["operating_points"]]
    assert keys == ["model", "youden", "spec80", "spec90", "sens80", "sens90"]
    for pt in rep["operating_points"]:
        sens, spec = sens_spec_at(y, p, pt["threshold"])
        assert pt["sensitivity"]["value"] == pytest.approx(sens)
        assert pt["specificity"]["value"] == pytest.approx(spec)
        assert pt["sensitivity"]["ci_low"] <= sens <= pt["sensitivity"]["ci_high"]
    spec90 = rep["operating_points"][3]
    assert spec90["specificity"]["value"] >= 0.9
    cm = rep["confusion_matrix"]
    assert cm["rule"] == "model" and cm["threshold"] == 0.5
    assert cm["tp"] + cm["fp"] + cm["tn"] + cm["fn"] == 240
    assert cm == {"rule": "model", "threshold": 0.5, **confusion_counts(y, p, 0.5)}


def test_binary_report_single_class_is_nan_with_one_warning():
    y = np.zeros(20, dtype=int)
    p = np.linspace(0, 1, 20)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep = binary_report(y, p, n_boot=20)
    assert [w.category for w in caught] == [OneClassWarning]
    assert np.isnan(rep["auc"]["value"]) and np.isnan(rep["auc"]["ci_low"])
    assert rep["n_positive"] == 0
    assert np.isfinite(rep["ece"])
