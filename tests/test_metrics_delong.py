"""DeLong's test: the fast mid-rank algorithm against a direct O(n^2) placement-value computation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from mammokit.metrics import delong_auc_ci, delong_covariance, delong_test


def _reference_delong(y, scores):
    """DeLong et al. (1988) written out literally: psi kernel over all (cancer, non-cancer) pairs."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    v10 = np.empty((len(scores), m))
    v01 = np.empty((len(scores), n))
    aucs = np.empty(len(scores))
    for r in range(len(scores)):
        psi = (pos[r][:, None] > neg[r][None, :]).astype(float) + 0.5 * (pos[r][:, None] == neg[r][None, :])
        aucs[r] = psi.mean()
        v10[r] = psi.mean(axis=1)
        v01[r] = psi.mean(axis=0)
    s10 = np.cov(v10)
    s01 = np.cov(v01)
    return aucs, s10 / m + s01 / n


@pytest.fixture
def fixture_scores():
    rng = np.random.default_rng(11)
    n = 150
    y = rng.integers(0, 2, n)
    latent = y + rng.normal(0, 1, n)
    p1 = np.round(1 / (1 + np.exp(-latent)), 2)  # rounded: ties inside and across classes
    p2 = np.round(1 / (1 + np.exp(-(0.5 * latent + rng.normal(0, 1, n)))), 2)
    return y, p1, p2


def test_fast_covariance_matches_direct_computation(fixture_scores):
    y, p1, p2 = fixture_scores
    aucs, cov = delong_covariance(y, np.vstack([p1, p2]))
    ref_aucs, ref_cov = _reference_delong(y, np.vstack([p1, p2]))
    np.testing.assert_allclose(aucs, ref_aucs, rtol=1e-12)
    np.testing.assert_allclose(aucs, [roc_auc_score(y, p1), roc_auc_score(y, p2)], rtol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-10)


def test_delong_test_statistic_and_p_value(fixture_scores):
    y, p1, p2 = fixture_scores
    res = delong_test(y, p1, p2)
    ref_aucs, ref_cov = _reference_delong(y, np.vstack([p1, p2]))
    z = (ref_aucs[0] - ref_aucs[1]) / np.sqrt(ref_cov[0, 0] + ref_cov[1, 1] - 2 * ref_cov[0, 1])
    assert res.auc1 > res.auc2  # p2 is a noisier version of the same signal
    assert res.z == pytest.approx(z)
    assert res.p_value == pytest.approx(2 * norm.sf(abs(z)))
    assert res.p_value < 0.05
    auc1, auc2, z2, p2v = delong_test(y, p2, p1)  # unpacks like the tuple the API promises
    assert (auc1, auc2) == (res.auc2, res.auc1)
    assert z2 == pytest.approx(-res.z) and p2v == pytest.approx(res.p_value)


def test_identical_models_give_z_zero_p_one(fixture_scores):
    y, p1, _ = fixture_scores
    res = delong_test(y, p1, p1)
    assert res.z == 0.0 and res.p_value == pytest.approx(1.0)
    # A strictly increasing transform ranks the images identically: same AUC, no difference.
    res = delong_test(y, p1, p1**3)
    assert res.auc1 == pytest.approx(res.auc2) and res.p_value == pytest.approx(1.0)


def test_hand_computed_variance_small_case():
    # 2 cancers (0.8, 0.4), 2 non-cancers (0.6, 0.2): placements v10 = [1, 0.5], v01 = [0.5, 1].
    y = np.array([1, 1, 0, 0])
    p = np.array([0.8, 0.4, 0.6, 0.2])
    aucs, cov = delong_covariance(y, p[None])
    assert aucs[0] == pytest.approx(0.75)
    assert cov[0, 0] == pytest.approx(np.var([1, 0.5], ddof=1) / 2 + np.var([0.5, 1], ddof=1) / 2)
    auc, lo, hi = delong_auc_ci(y, p)
    assert lo < auc < hi <= 1.0


def test_delong_needs_two_of_each_class():
    with pytest.raises(ValueError, match="at least 2 positive"):
        delong_test(np.array([1, 0, 0]), np.array([0.2, 0.3, 0.1]), np.array([0.5, 0.1, 0.2]))
