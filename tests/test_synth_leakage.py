"""The label must not leak through image-wide statistics of the phantom.

A logistic regression on global features (mean and std of intensity, breast area, dense-tissue fraction, ACR
density) over 400 images must not predict "malignant": its cross-validated AUC lies within 0.5 +/- 0.1.
Folds are grouped by woman (her four views never straddle train and test). A control adds a small global
brightness shift to the malignant images and checks that the same test then flags the leak, so the test can
fail.
"""

from __future__ import annotations

import numpy as np
import pytest

from mammokit.synth import render_woman, sample_women

H, W = 128, 96  # small: 400 renders take ~2 s; the statistics do not depend on the size
N_WOMEN = 100  # x 4 views = 400 images


def _features(image: np.ndarray, density: int) -> list[float]:
    breast = image > 0.12  # the background sits at ~0.03, the thinnest breast tissue above ~0.15
    inside = image[breast]
    return [
        float(image.mean()),
        float(image.std()),
        float(breast.mean()),  # breast area (fraction of the image)
        float((inside > 0.45).mean()),  # dense-tissue fraction of the breast
        float(density),  # ACR density of the woman
    ]


def _cohort(normal_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    women = sample_women(N_WOMEN, seed=123, normal_fraction=normal_fraction)
    feats, labels, groups, images = [], [], [], []
    for woman in women:
        for view in render_woman(woman, height=H, width=W):
            feats.append(_features(view.image, woman.density))
            labels.append(int(view.malignant))
            groups.append(woman.index)
            images.append(view.image)
    return np.array(feats), np.array(labels), np.array(groups), images


def _cv_auc(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    folds = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0)
    prob = cross_val_predict(model, x, y, groups=groups, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, prob))


@pytest.fixture(scope="module")
def cohort():
    return _cohort(normal_fraction=0.4)


def test_global_features_do_not_predict_malignancy(cohort):
    x, y, groups, _ = cohort
    assert len(y) == 400
    assert 0.15 < y.mean() < 0.5  # both classes well represented
    auc = _cv_auc(x, y, groups)
    assert 0.4 <= auc <= 0.6, f"global features predict malignancy: cross-validated AUC {auc:.3f}"


def test_global_features_do_not_separate_malignant_from_benign_lesions():
    """The CBIS-DDSM situation: every image has a lesion; malignant vs benign-lesion images."""
    x, y, groups, _ = _cohort(normal_fraction=0.0)
    auc = _cv_auc(x, y, groups)
    assert 0.4 <= auc <= 0.6, f"global features separate malignant from benign images: AUC {auc:.3f}"


def test_the_leakage_test_detects_a_small_global_leak(cohort):
    """Control: brighten malignant images by 0.02 (a fraction of the between-women spread) -> AUC well above 0.6."""
    _, y, groups, images = cohort
    density = cohort[0][:, 4]
    leaky = np.array(
        [_features(np.clip(img + 0.02 * label, 0, 1), d) for img, label, d in zip(images, y, density, strict=True)]
    )
    assert _cv_auc(leaky, y, groups) > 0.65
