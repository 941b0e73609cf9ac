"""The patient-clustered bootstrap: same draws as a reference loop; wider intervals with duplicated patients."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mammokit.metrics import bootstrap_ci, roc_auc
from mammokit.metrics.bootstrap import ClusterSampler


def _patients(n_patients: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n_patients)
    p = 1 / (1 + np.exp(-(1.2 * y + rng.normal(0, 1, n_patients))))
    return y, p


def test_image_level_bootstrap_equals_reference_loop_with_sklearn():
    y, p = _patients(80)
    res = bootstrap_ci(roc_auc, y, p, n=120, seed=7)
    rng = np.random.default_rng(7)
    ref = []
    for _ in range(120):
        idx = rng.integers(0, len(y), len(y))
        if len(np.unique(y[idx])) == 2:
            ref.append(roc_auc_score(y[idx], p[idx]))
    lo, hi = np.quantile(ref, [0.025, 0.975])
    assert res.estimate == pytest.approx(roc_auc_score(y, p))
    assert res.low == pytest.approx(lo) and res.high == pytest.approx(hi)
    assert res.n_valid == len(ref)


def test_cluster_sampler_takes_whole_patients():
    groups = np.array(["b", "a", "c", "a", "b", "a"])  # a has 3 images, b 2, c 1
    sampler = ClusterSampler(groups, len(groups))
    assert sampler.n_groups == 3
    rng = np.random.default_rng(0)
    for _ in range(20):
        drawn = groups[sampler.draw(rng)]
        copies = {g: np.sum(drawn == g) / np.sum(groups == g) for g in np.unique(drawn)}
        # Every drawn patient contributes all of its images, as many times as it was drawn; 3 draws in total.
        assert all(c == int(c) for c in copies.values())
        assert sum(copies.values()) == 3


def test_duplicated_patients_widen_the_interval_against_an_image_bootstrap():
    y, p = _patients(60, seed=3)
    copies = 4  # each woman contributes four (here identical) images
    y4, p4 = np.repeat(y, copies), np.repeat(p, copies)
    patient = np.repeat(np.arange(60), copies)
    per_image = bootstrap_ci(roc_auc, y4, p4, groups=None, n=400, seed=0)
    clustered = bootstrap_ci(roc_auc, y4, p4, groups=patient, n=400, seed=0)
    unique = bootstrap_ci(roc_auc, y, p, n=400, seed=0)
    width = {k: r.high - r.low for k, r in {"image": per_image, "cluster": clustered, "unique": unique}.items()}
    assert clustered.n_groups == 60 and per_image.n_groups == 240
    assert clustered.estimate == pytest.approx(per_image.estimate)
    # Copies carry no new information: the clustered interval matches the 60-woman one, the image one is ~half.
    assert width["cluster"] > 1.5 * width["image"]
    assert width["cluster"] == pytest.approx(width["unique"], rel=0.25)


def test_vector_metric_and_seed_reproducibility():
    y, p = _patients(50)

    def two(yy, pp):
        return np.array([roc_auc(yy, pp), float(np.mean(pp))])

    a = bootstrap_ci(two, y, p, n=100, seed=3)
    b = bootstrap_ci(two, y, p, n=100, seed=3)
    c = bootstrap_ci(two, y, p, n=100, seed=4)
    np.testing.assert_array_equal(a.low, b.low)
    assert not np.array_equal(a.low, c.low)
    assert a.estimate.shape == (2,) and np.all(a.low <= a.estimate) and np.all(a.estimate <= a.high)


def test_bootstrap_rejects_bad_arguments():
    y, p = _patients(10)
    with pytest.raises(ValueError, match="one entry per image"):
        bootstrap_ci(roc_auc, y, p, groups=np.arange(3))
    with pytest.raises(ValueError, match="replicates"):
        bootstrap_ci(roc_auc, y, p, n=0)
