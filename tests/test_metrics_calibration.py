"""ECE, reliability curves, temperature and Platt scaling, and the plain-JSON calibration map."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mammokit.metrics import apply_calibration, ece, fit_platt, fit_temperature, reliability_curve, roc_auc


def _overconfident(n: int = 6000, factor: float = 3.0, shift: float = 0.0, seed: int = 0):
    """Labels drawn from sigmoid(z); the 'model' reports sigmoid(factor * z + shift)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return y, 1 / (1 + np.exp(-(factor * z + shift)))


def test_ece_and_reliability_by_hand():
    y = np.array([0, 0, 1, 0])
    p = np.array([0.15, 0.15, 0.85, 0.85])
    # Bin [0.1, 0.2): mean 0.15, rate 0 -> gap 0.15; bin [0.8, 0.9): mean 0.85, rate 0.5 -> gap 0.35.
    assert ece(y, p) == pytest.approx(0.5 * 0.15 + 0.5 * 0.35)
    rel = reliability_curve(y, p, bins=10)
    assert rel["count"].tolist() == [0, 2, 0, 0, 0, 0, 0, 0, 2, 0]
    assert rel["fraction_positive"][8] == pytest.approx(0.5)
    assert np.isnan(rel["mean_predicted"][0])
    assert ece(np.array([0, 1]), np.array([0.0, 1.0])) == 0.0


def test_temperature_recovers_the_overconfidence_factor():
    y, p = _overconfident(factor=3.0)
    cal = fit_temperature(p, y)
    assert cal["method"] == "temperature"
    assert cal["temperature"] == pytest.approx(3.0, rel=0.1)
    calibrated = apply_calibration(p, cal)
    assert ece(y, calibrated) < 0.5 * ece(y, p)
    assert cal["ece_after"] < cal["ece_before"] and cal["log_loss_after"] < cal["log_loss_before"]
    assert roc_auc(y, calibrated) == pytest.approx(roc_auc(y, p))  # monotone: ranking unchanged


def test_temperature_from_logits_equals_from_probs():
    y, p = _overconfident(n=2000, seed=1)
    logits = np.log(p / (1 - p))
    a = fit_temperature(p, y)["temperature"]
    b = fit_temperature(logits, y, kind="logit")["temperature"]
    assert a == pytest.approx(b, rel=1e-3)
    with pytest.raises(ValueError, match="kind='logit'"):
        fit_temperature(logits, y)


def test_platt_recovers_slope_and_intercept():
    y, p = _overconfident(factor=2.0, shift=1.0, seed=2)
    cal = fit_platt(p, y)
    # model logit u = 2 z + 1, truth z = 0.5 u - 0.5
    assert cal["a"] == pytest.approx(0.5, abs=0.06)
    assert cal["b"] == pytest.approx(-0.5, abs=0.1)
    assert ece(y, apply_calibration(p, cal)) < 0.03


def test_platt_refuses_a_decreasing_map():
    y, p = _overconfident(n=1000, seed=4)
    with pytest.raises(ValueError, match="worse than chance"):
        fit_platt(1 - p, y)


def test_calibration_dict_is_plain_json_and_round_trips():
    y, p = _overconfident(n=1000, seed=5)
    cal = fit_temperature(p, y)
    again = json.loads(json.dumps(cal))
    np.testing.assert_allclose(apply_calibration(p, again), apply_calibration(p, cal))
    assert apply_calibration(0.5, again) == pytest.approx(0.5)  # logit 0 is a fixed point of temperature scaling
    np.testing.assert_array_equal(apply_calibration(p, None), p)
    np.testing.assert_array_equal(apply_calibration(p, {"method": "none"}), p)


def test_apply_calibration_rejects_unknown_or_invalid_maps():
    with pytest.raises(ValueError, match="unknown calibration method"):
        apply_calibration(np.array([0.2]), {"method": "isotonic"})
    with pytest.raises(ValueError, match="temperature must be > 0"):
        apply_calibration(np.array([0.2]), {"method": "temperature", "temperature": 0})
    with pytest.raises(ValueError, match="newer"):
        apply_calibration(np.array([0.2]), {"method": "temperature", "temperature": 1, "format_version": 99})


def test_fit_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        fit_temperature(np.array([0.2, 0.4]), np.array([1, 1]))
