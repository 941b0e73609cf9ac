"""Heatmaps point at the lesion: the localisation metrics, and Grad-CAM of a tiny model trained on phantom masses."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mammokit.metrics.localisation import (
    centre_map,
    mass_inside,
    peak_position,
    pointing_hit,
    random_map,
    wilson_interval,
)

# ----------------------------------------------------------------------------------------------- metrics


def _disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_pointing_game_counts_a_peak_within_the_tolerance_in_millimetres():
    breast = np.ones((100, 100), dtype=bool)
    lesion = _disc((100, 100), (50, 50), 5)
    heat = np.zeros((100, 100), dtype=np.float32)
    heat[50, 57] = 1.0  # 7 px right of the centre = 2 px outside the lesion edge
    assert peak_position(heat, breast) == (50, 57)
    assert pointing_hit(heat, lesion, breast, (1.0, 1.0), tolerance_mm=5.0)  # 2 mm away
    assert not pointing_hit(heat, lesion, breast, (4.0, 4.0), tolerance_mm=5.0)  # 8 mm away
    # anisotropic grid: 2 px along columns at 4 mm/px is 8 mm, although the rows are 1 mm apart
    assert not pointing_hit(heat, lesion, breast, (1.0, 4.0), tolerance_mm=5.0)
    # the peak is searched inside the breast only: a hotter pixel outside it does not count
    heat[0, 0] = 5.0
    assert not pointing_hit(heat, lesion, breast, (1.0, 1.0))
    breast[0, 0] = False
    assert pointing_hit(heat, lesion, breast, (1.0, 1.0))


def test_mass_inside_and_the_baselines():
    breast = _disc((120, 80), (60, 0), 60)  # a half disc against the left edge
    lesion = _disc((120, 80), (30, 30), 6)
    heat = lesion.astype(np.float32) * 3.0
    assert mass_inside(heat, lesion, breast) == pytest.approx(1.0)
    assert math.isnan(mass_inside(np.zeros((120, 80)), lesion, breast))
    centre = centre_map(breast)
    rows, cols = np.nonzero(breast)
    assert peak_position(centre, breast) == (round(rows.mean()), round(cols.mean()))
    rng = np.random.default_rng(0)
    noise = random_map(breast, rng)
    assert noise.max() <= 1.0 and noise[~breast].max() == 0.0 and noise[breast].std() > 0
    # a map that knows nothing puts about the lesion's share of the breast inside it
    expected = lesion.sum() / breast.sum()
    shares = [mass_inside(random_map(breast, rng), lesion, breast) for _ in range(20)]
    assert abs(float(np.mean(shares)) - expected) < 0.5 * expected


def test_wilson_interval_matches_the_textbook_value():
    low, high = wilson_interval(8, 10)  # Wilson (1927): 8/10 -> 0.490 .. 0.943 at 95 %
    assert low == pytest.approx(0.490, abs=1e-3) and high == pytest.approx(0.943, abs=1e-3)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


# ------------------------------------------------------------------------------ Grad-CAM on a trained model

SIZE = (128, 96)  # phantom view (rows, cols)


def _backgrounds(n_women: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """CC views of normal phantom breasts (chest wall on the left, as prepare orients them) and their masks."""
    from mammokit.synth import render_woman, sample_women

    images, breasts = [], []
    for woman in sample_women(n_women, seed=seed, normal_fraction=1.0):
        for view in render_woman(woman, height=SIZE[0], width=SIZE[1], views=("CC",)):
            flip = view.side == "R"
            images.append((view.image[:, ::-1] if flip else view.image).astype(np.float32))
            breasts.append(view.breast_mask[:, ::-1] if flip else view.breast_mask.copy())
    return images, breasts


def _with_masses(
    images: list[np.ndarray], breasts: list[np.ndarray], copies: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each background once plain and `copies` times with a clearly visible malignant mass at a random place.

    Returns images (N, H, W) float32, labels (N,), lesion masks (N, H, W) and breast masks (N, H, W).
    """
    from mammokit.synth.lesions import draw_mass
    from mammokit.synth.model import LesionSpec

    rng = np.random.default_rng(seed)
    out_x, out_y, out_l, out_b = [], [], [], []
    for image, breast in zip(images, breasts, strict=True):
        inner = np.argwhere(_erode(breast, 12))
        for k in range(copies + 1):
            x, lesion = image.copy(), np.zeros(SIZE, dtype=bool)
            if k:
                r, c = inner[rng.integers(len(inner))]
                spec = LesionSpec("mass", "MALIGNANT", 0.5, 0.0, 0.0, 0.06, int(rng.integers(1 << 30)),
                                  shape="IRREGULAR", margins="SPICULATED")  # fmt: skip
                lesion = draw_mass(x, spec, (float(r), float(c)), radius=6.0).mask
            out_x.append(x)
            out_y.append(int(k > 0))
            out_l.append(lesion)
            out_b.append(breast)
    return np.stack(out_x), np.array(out_y), np.stack(out_l), np.stack(out_b)


def _erode(mask: np.ndarray, px: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_erosion(mask, iterations=px)


def _tiny_model():  # returns a local nn.Module subclass
    import torch
    from torch import nn

    def block(c_in: int, c_out: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2))

    class Tiny(nn.Module):
        """trunk: (B, 1, H, W) -> (B, 32, H/8, W/8); head: global max pool -> 2 logits."""

        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Sequential(block(1, 16), block(16, 32), block(32, 32))
            # global max pooling: "is there a mass anywhere" is learnt in a few dozen steps
            self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.trunk(x))

    torch.manual_seed(0)
    return Tiny()


def test_gradcam_of_a_trained_phantom_model_points_at_the_mass_more_often_than_the_centre():
    import torch

    from mammokit.explain.cam import GradCamRunner

    torch.set_num_threads(2)
    # training: 24 backgrounds x (plain + 3 with a mass); test: other women's breasts, plain + 1 with a mass
    x_train, y_train, _, _ = _with_masses(*_backgrounds(12, seed=3), copies=3, seed=3)
    x_test, y_test, lesions, breasts = _with_masses(*_backgrounds(8, seed=4), copies=1, seed=4)
    mean, std = float(x_train.mean()), float(x_train.std())
    xt = torch.from_numpy((x_train - mean) / std)[:, None]
    yt = torch.from_numpy(y_train)
    model = _tiny_model()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(6):  # epochs
        for idx in torch.randperm(len(xt), generator=gen).split(16):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    xv = torch.from_numpy((x_test - mean) / std)[:, None]
    with torch.no_grad():
        accuracy = float((model(xv).argmax(1).numpy() == y_test).mean())
    assert accuracy >= 0.8, f"the tiny model did not learn the masses (accuracy {accuracy:.2f})"

    positive = np.flatnonzero(y_test == 1)
    cams = GradCamRunner(model, [1], xv[:1], layer="trunk")(xv[positive])  # (P, H, W) in [0, 1]
    assert cams.shape == (len(positive), *SIZE)
    spacing = (1.0, 1.0)  # tolerance in pixels of this grid: 3 px
    cam_hits = [pointing_hit(c, lesions[i], breasts[i], spacing, 3.0) for c, i in zip(cams, positive, strict=True)]
    centre_hits = [pointing_hit(centre_map(breasts[i]), lesions[i], breasts[i], spacing, 3.0) for i in positive]
    assert np.mean(cam_hits) >= 0.7, f"Grad-CAM hit {np.mean(cam_hits):.2f} of {len(positive)} masses"
    assert np.mean(cam_hits) >= np.mean(centre_hits) + 0.3
