"""DeLong's test for two correlated ROC AUCs measured on the same images (NumPy/SciPy only).

DeLong, DeLong & Clarke-Pearson (1988) estimate the covariance of the Mann-Whitney AUC estimators
from "structural components" (placement values): for each cancer, the fraction of non-cancers it
outranks, and for each non-cancer, the fraction of cancers that outrank it (ties count one half).
The fast algorithm of Sun & Xu (2014, IEEE SPL 21:1389) gets all placement values from three
mid-rank computations, O(n log n) instead of O(n^2).

Assumption: images are independent. With several images per woman the test is somewhat liberal;
the clustered bootstrap CIs in `bootstrap.py` do not make that assumption.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.stats import norm, rankdata

from mammokit.metrics.curves import check_binary


class DeLongResult(NamedTuple):
    auc1: float
    auc2: float
    z: float
    p_value: float  # two-sided


def delong_covariance(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix for k score vectors on the same images.

    Args:
        y: (n,) 0/1 labels, both classes present.
        scores: (k, n) scores of k models.

    Returns:
        (aucs (k,), covariance (k, k)).
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    for row in scores:
        y, _ = check_binary(y, row)
    pos = scores[:, y == 1]  # (k, m)
    neg = scores[:, y == 0]  # (k, n)
    m, n = pos.shape[1], neg.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 positive and 2 negative images, got {m} and {n}")
    rank_pos = rankdata(pos, axis=1)
    rank_neg = rankdata(neg, axis=1)
    rank_all = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    aucs = (rank_all[:, :m].sum(axis=1) / m - (m + 1) / 2.0) / n
    # Placement values: v10[i] = P(neg < pos_i) + 0.5 P(tie); v01[j] = P(pos > neg_j) + 0.5 P(tie).
    v10 = (rank_all[:, :m] - rank_pos) / n
    v01 = 1.0 - (rank_all[:, m:] - rank_neg) / m
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return aucs, s10 / m + s01 / n


def delong_test(y: np.ndarray, p1: np.ndarray, p2: np.ndarray) -> DeLongResult:
    """Two-sided DeLong test of AUC(p1) == AUC(p2) on the same labelled images."""
    aucs, cov = delong_covariance(y, np.vstack([p1, p2]))
    diff = aucs[0] - aucs[1]
    var = cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]
    # Zero variance (identical rankings, or both separate perfectly): no evidence unless the AUCs differ.
    degenerate = 0.0 if abs(diff) < 1e-15 else float(np.sign(diff) * np.inf)
    z = degenerate if var <= 1e-15 else float(diff / np.sqrt(var))
    p_value = float(2.0 * norm.sf(abs(z)))
    return DeLongResult(float(aucs[0]), float(aucs[1]), z, p_value)


def delong_auc_ci(y: np.ndarray, p: np.ndarray, alpha: float = 0.05) -> tuple[float, float, float]:
    """(auc, low, high): normal-approximation CI from the DeLong variance, clipped to [0, 1]."""
    aucs, cov = delong_covariance(y, np.asarray(p)[None])
    half = norm.ppf(1.0 - alpha / 2.0) * np.sqrt(max(cov[0, 0], 0.0))
    auc = float(aucs[0])
    return auc, max(0.0, auc - half), min(1.0, auc + half)
