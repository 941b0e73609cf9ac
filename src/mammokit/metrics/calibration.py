"""Calibration: expected calibration error, reliability curves, and temperature / Platt scaling.

Both scalings act on the logit of the model's p(malignant), z = log(p / (1 - p)):

* temperature: p' = sigmoid(z / T), one parameter T > 0. For a two-class softmax, z is the difference
  of the two output logits, so this is exactly classic temperature scaling (Guo et al. 2017).
* Platt: p' = sigmoid(a z + b), a > 0 (Platt 1999), fitted by maximum likelihood.

Both are strictly increasing, so they never change AUC or which images a threshold separates; they
only make the probabilities mean what they say. The fitted map is a plain JSON dict (stored as
`RUN/calibration.json`, never a pickle, so it stays readable by any version and any language)::

    {"method": "temperature", "temperature": 1.7, ...provenance...}
    {"method": "platt", "a": 0.8, "b": -0.3, ...provenance...}

`apply_calibration(prob, cal)` is NumPy-only: the prediction and ONNX paths use it without torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from mammokit.metrics.curves import check_binary

CALIBRATION_FORMAT_VERSION = 1
METHODS = ("temperature", "platt")
_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] before taking logits


def prob_to_logit(prob: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) with p clipped away from 0 and 1."""
    p = np.clip(np.asarray(prob, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic function


def _nll(y: np.ndarray, z: np.ndarray) -> float:
    """Mean binary cross-entropy of logits z against labels y (numerically stable form)."""
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def _as_logits(scores: np.ndarray, kind: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if kind == "prob":
        if scores.size and (scores.min() < 0.0 or scores.max() > 1.0):
            raise ValueError("kind='prob' expects probabilities in [0, 1]; pass kind='logit' for logits")
        return prob_to_logit(scores)
    if kind == "logit":
        return scores
    raise ValueError(f"kind must be 'prob' or 'logit', got {kind!r}")


def _check_fit_input(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, scores = check_binary(y, scores)
    if y.size < 2 or y.min() == y.max():
        raise ValueError(
            "calibration needs labelled images of both classes (use the validation split); "
            f"got {int(y.sum())} positive and {int(y.size - y.sum())} negative"
        )
    return y.astype(np.float64), scores


def fit_temperature(scores: np.ndarray, y: np.ndarray, *, kind: str = "prob") -> dict[str, Any]:
    """Fit T > 0 minimising the log loss of sigmoid(logit / T); returns the calibration dict.

    Args:
        scores: (n,) p(malignant) (`kind="prob"`) or binary logits (`kind="logit"`).
        y: (n,) 0/1 labels.
        kind: "prob" or "logit".
    """
    y, scores = _check_fit_input(y, scores)
    z = _as_logits(scores, kind)
    # Optimise log T on a bounded interval: T in [0.01, 100] covers any sane network.
    bounds = (np.log(0.01), np.log(100.0))
    res = minimize_scalar(lambda log_t: _nll(y, z / np.exp(log_t)), bounds=bounds, method="bounded")
    temperature = float(np.exp(res.x))
    return _describe({"method": "temperature", "temperature": temperature}, y, z)


def fit_platt(scores: np.ndarray, y: np.ndarray, *, kind: str = "prob") -> dict[str, Any]:
    """Fit sigmoid(a * logit + b) by maximum likelihood; returns the calibration dict.

    Raises:
        ValueError: if the fitted slope is not positive (the model ranks worse than chance on this data,
            and a decreasing map would silently invert its decisions).
    """
    y, scores = _check_fit_input(y, scores)
    z = _as_logits(scores, kind)

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = theta
        u = a * z + b
        r = _sigmoid(u) - y  # d loss / d u per image
        return _nll(y, u), np.array([np.mean(r * z), np.mean(r)])

    res = minimize(loss_and_grad, x0=np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    a, b = (float(v) for v in res.x)
    if not a > 0.0:
        raise ValueError(
            f"Platt scaling fitted a non-positive slope ({a:.3g}): the model ranks these images worse than chance; "
            "check the labels and the split before calibrating"
        )
    return _describe({"method": "platt", "a": a, "b": b}, y, z)


def _describe(cal: dict[str, Any], y: np.ndarray, z: np.ndarray) -> dict[str, Any]:
    """Add fit diagnostics (log loss and ECE before/after) and the format version."""
    before = _sigmoid(z)
    after = apply_calibration(before, cal)
    cal.update(
        {
            "input": "logit of p(malignant)",
            "n_images": int(y.size),
            "n_positive": int(y.sum()),
            "log_loss_before": _nll(y, z),
            "log_loss_after": _nll(y, prob_to_logit(after)),
            "ece_before": ece(y, before),
            "ece_after": ece(y, after),
            "format_version": CALIBRATION_FORMAT_VERSION,
        }
    )
    return cal


def apply_calibration(prob: np.ndarray | float, cal: dict[str, Any] | None) -> np.ndarray:
    """Map raw p(malignant) through a stored calibration dict (None or {"method": "none"} = unchanged).

    NumPy only; used by evaluation and prediction alike.
    """
    prob = np.asarray(prob, dtype=np.float64)
    if cal is None:
        return prob
    method = cal.get("method")
    if method in (None, "none", "identity"):
        return prob
    version = int(cal.get("format_version", CALIBRATION_FORMAT_VERSION))
    if version > CALIBRATION_FORMAT_VERSION:
        raise ValueError(f"calibration format_version {version} is newer than this mammokit supports; upgrade")
    z = prob_to_logit(prob)
    if method == "temperature":
        t = float(cal["temperature"])
        if not t > 0.0:
            raise ValueError(f"calibration temperature must be > 0, got {t}")
        return _sigmoid(z / t)
    if method == "platt":
        a, b = float(cal["a"]), float(cal["b"])
        if not a > 0.0:
            raise ValueError(f"Platt slope must be > 0, got {a}")
        return _sigmoid(a * z + b)
    raise ValueError(f"unknown calibration method {method!r}; expected one of {list(METHODS)} or 'none'")


def reliability_curve(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, np.ndarray]:
    """Equal-width bins over [0, 1]: per bin the count, mean predicted probability and observed cancer rate.

    Returns dict of (bins,) arrays: "lower", "upper", "count", "mean_predicted", "fraction_positive"
    (NaN for empty bins).
    """
    y, p = check_binary(y, p)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise ValueError("reliability/ECE need probabilities in [0, 1]")
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds (edges[i], edges[i+1]]; p = 0 goes to the first bin.
    which = np.clip(np.searchsorted(edges, p, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    sum_p = np.bincount(which, weights=p, minlength=bins)
    sum_y = np.bincount(which, weights=y.astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / count, np.nan)
        frac = np.where(count > 0, sum_y / count, np.nan)
    return {
        "lower": edges[:-1],
        "upper": edges[1:],
        "count": count,
        "mean_predicted": mean_p,
        "fraction_positive": frac,
    }


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: sum over equal-width bins of (bin share) x |mean p - cancer rate|."""
    curve = reliability_curve(y, p, bins)
    total = curve["count"].sum()
    if total == 0:
        return float("nan")
    used = curve["count"] > 0
    gaps = np.abs(curve["mean_predicted"][used] - curve["fraction_positive"][used])
    return float(np.sum(curve["count"][used] / total * gaps))
