"""The phantom renderer: determinism, anatomy, orientation, lesions in both views, learnable lesion appearance."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mammokit.synth import render_view, render_woman, sample_woman, sample_women

H, W = 256, 192


def _woman_with(kind: str, malignant: bool, seed: int = 7):
    for i in range(200):
        woman = sample_woman(i, seed, normal_fraction=0.0, second_lesion_fraction=0.0)
        lesion = woman.breasts[0].lesions[0]
        if lesion.kind == kind and lesion.malignant == malignant:
            return woman
    raise AssertionError("no such woman in 200 draws")


def test_sampling_is_deterministic_and_independent_of_cohort_size():
    a = sample_women(5, seed=3)
    b = sample_women(8, seed=3)
    assert a == b[:5]
    assert sample_women(5, seed=4) != a


def test_render_is_deterministic_and_seed_dependent():
    woman = sample_woman(0, 11)
    v1 = render_view(woman, "L", "MLO", height=H, width=W)
    v2 = render_view(woman, "L", "MLO", height=H, width=W)
    assert np.array_equal(v1.image, v2.image)
    other = render_view(sample_woman(0, 12), "L", "MLO", height=H, width=W)
    assert not np.array_equal(v1.image, other.image)


def test_views_shapes_ranges_and_orientation():
    woman = sample_woman(2, 5)
    views = render_woman(woman, height=H, width=W)
    assert [(v.side, v.view) for v in views] == [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]
    for v in views:
        assert v.image.dtype == np.float32 and v.image.shape == (H, W)
        assert v.image.min() >= 0.0 and v.image.max() <= 1.0
        frac = v.breast_mask.mean()
        assert 0.3 < frac < 0.9, frac
        # Chest wall on the image side matching the laterality: the breast touches that edge, not the other.
        left_col, right_col = v.breast_mask[:, 0].mean(), v.breast_mask[:, -1].mean()
        if v.side == "L":
            assert left_col > 0.5 and right_col == 0.0
        else:
            assert right_col > 0.5 and left_col == 0.0
        # Breast brighter than background.
        assert v.image[v.breast_mask].mean() > v.image[~v.breast_mask].mean() + 0.2


def test_pectoral_muscle_only_on_mlo():
    woman = sample_woman(1, 9)
    cc = render_view(woman, "L", "CC", height=H, width=W)
    mlo = render_view(woman, "L", "MLO", height=H, width=W)
    # Top-left corner (chest wall side): background on CC, bright muscle on MLO.
    corner = (slice(0, H // 16), slice(0, W // 16))
    assert cc.image[corner].mean() < 0.1
    assert mlo.image[corner].mean() > 0.5


@pytest.mark.parametrize("kind", ["mass", "calcification"])
def test_lesion_appears_in_both_views_of_its_breast_only(kind):
    woman = _woman_with(kind, malignant=True)
    side = woman.breasts[0].side
    other = "R" if side == "L" else "L"
    views = {(v.side, v.view): v for v in render_woman(woman, height=H, width=W)}
    for view in ("CC", "MLO"):
        v = views[(side, view)]
        assert len(v.lesions) == 1 and v.malignant
        lesion = v.lesions[0]
        assert lesion.mask.any()
        assert (lesion.mask & v.breast_mask).sum() >= 0.9 * lesion.mask.sum()  # inside the breast
        # The lesion is brighter than its surroundings.
        ring = _ring(lesion.mask, 6) & v.breast_mask
        assert v.image[lesion.mask].mean() > v.image[ring].mean() + 0.05
    if woman.breast(other).normal:
        assert not views[(other, "CC")].lesions and not views[(other, "MLO")].lesions
    # Same depth from the chest wall in both views (± 15 % of the width).
    cc, mlo = views[(side, "CC")].lesions[0], views[(side, "MLO")].lesions[0]
    assert abs(cc.center[1] - mlo.center[1]) < 0.15 * W


def _ring(mask: np.ndarray, width: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=width) & ~mask


def test_lesions_mirror_with_the_image():
    woman = _woman_with("mass", malignant=False)
    side = woman.breasts[0].side
    v = render_view(woman, side, "CC", height=H, width=W)
    lesion = v.lesions[0]
    cy, cx = lesion.center
    assert lesion.mask[round(cy), round(cx)]
    # polygon (x=col, y=row) surrounds the centre and lies on the mask boundary region
    assert lesion.polygon[:, 0].min() < cx < lesion.polygon[:, 0].max()
    assert lesion.polygon[:, 1].min() < cy < lesion.polygon[:, 1].max()


def test_density_varies_between_women_and_follows_acr():
    women = sample_women(40, seed=21, normal_fraction=1.0)
    dense = {}
    for woman in women:
        v = render_view(woman, "L", "CC", height=128, width=96)
        frac = float((v.image[v.breast_mask] > 0.45).mean())
        dense.setdefault(woman.density, []).append(frac)
    means = [np.mean(dense[d]) for d in sorted(dense)]
    assert len(means) >= 3
    assert all(a < b for a, b in itertools.pairwise(means)), means


def test_malignant_and_benign_lesions_differ_locally():
    """Proxy of learnability: simple local features separate malignant from benign lesions of each kind."""
    from scipy import ndimage

    women = sample_women(60, seed=2, normal_fraction=0.0, second_lesion_fraction=0.0)
    feats: dict[str, list[tuple[float, bool]]] = {"mass": [], "calcification": []}
    for woman in women:
        breast = woman.breasts[0]
        v = render_view(woman, breast.side, "CC", height=H, width=W)
        lesion = v.lesions[0]
        r = lesion.radius
        cy, cx = (round(c) for c in lesion.center)
        win = (slice(max(cy - int(2.5 * r), 0), cy + int(2.5 * r)), slice(max(cx - int(2.5 * r), 0), cx + int(2.5 * r)))
        image, mask = v.image[win], lesion.mask[win]
        if lesion.spec.kind == "mass":
            # spiculation / ill-defined margin: brightness just outside the body, relative to the mass contrast
            dist = ndimage.distance_transform_edt(~mask)
            near = image[(dist > 0.15 * r) & (dist < 0.6 * r)].mean()
            far = image[(dist > 1.4 * r) & (dist < 2.0 * r)].mean()
            feats["mass"].append((float((near - far) / (image[mask].mean() - far)), lesion.spec.malignant))
        else:
            # fine specks: much edge (Laplacian) energy per unit of excess brightness; coarse ones: little
            r0, c0, r1, c1 = lesion.bbox
            patch = v.image[r0:r1, c0:c1]
            excess = np.clip(patch - np.median(patch), 0.0, None).sum()
            feats["calcification"].append((float(np.abs(ndimage.laplace(patch)).sum() / excess), lesion.spec.malignant))
    for kind, rows in feats.items():
        x = np.array([r[0] for r in rows])
        y = np.array([r[1] for r in rows])
        assert 0 < y.sum() < len(y), kind
        assert _auc(y, x) > 0.85, kind


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    """Probability that a positive outscores a negative (Mann-Whitney AUC), ties counting one half."""
    pos, neg = score[y][:, None], score[~y][None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())
