"""Heatmaps: the fully convolutional patch classifier, the cell-to-pixel mapping, Grad-CAM and overlays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mammokit.infer.heatmap import GradCamRunner, cell_map_to_pixels, last_spatial_module, patch_probability_maps
from mammokit.infer.overlay import render_overlay
from mammokit.models.registry import create_model


@pytest.fixture(scope="module")
def patch_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("patch_classifier", backbone="resnet18", num_classes=5, pretrained=None).eval()


def test_patch_map_over_a_patch_sized_image_is_the_patch_classifier_output(patch_model):
    x = torch.randn(2, 1, 64, 64)
    maps = patch_probability_maps(patch_model, x, (64, 64))  # one window = the whole image
    with torch.inference_mode():
        expected = torch.softmax(patch_model(x), dim=-1).numpy()
    assert maps.shape == (2, 5, 64, 64)
    for b in range(2):
        np.testing.assert_allclose(maps[b, :, 10, 20], expected[b], atol=1e-5)
        np.testing.assert_allclose(maps[b].std(axis=(1, 2)), 0.0, atol=1e-6)  # constant: a single window


def test_patch_maps_are_probabilities_over_classes(patch_model):
    x = torch.randn(1, 1, 192, 128)
    maps = patch_probability_maps(patch_model, x, (64, 64))
    assert maps.shape == (1, 5, 192, 128)
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    np.testing.assert_allclose(maps.sum(axis=1), 1.0, atol=1e-5)


def test_cell_map_lands_on_the_pixels_its_window_covers():
    # trunk stride 32, windows of 2x2 cells (a 64-px patch); the hot window (row 3, col 1) covers
    # rows 96..160 and columns 32..96, so the pixel map must peak at the window centre (128, 64)
    cells = np.zeros((1, 6, 4), dtype=np.float32)
    cells[0, 3, 1] = 1.0
    out = cell_map_to_pixels(cells, (224, 160), stride=(32.0, 32.0), window=(2, 2))
    assert out.shape == (1, 224, 160)
    peak = np.unravel_index(np.argmax(out[0]), out[0].shape)
    assert abs(peak[0] - 127.5) <= 1 and abs(peak[1] - 63.5) <= 1
    assert out[0, :64].max() == 0.0 and out[0, 192:].max() == 0.0  # far from the window: no heat


def _tiny_whole(top: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("whole_image", backbone="resnet18", top=top, pretrained=None).eval()


def test_gradcam_targets_the_top_and_gives_unit_range_maps_at_input_size():
    model = _tiny_whole({"blocks": "resnet", "depths": [16, 16], "repetitions": [1, 1], "enlarge": 2})
    x = torch.randn(2, 1, 256, 192)  # trunk 8x6 -> top 2x2: the top is the last spatial map
    runner = GradCamRunner(model, [1], x)
    assert runner.layer is model.top
    assert not any(p.requires_grad for p in model.trunk.parameters())  # only top + head take part in backward
    maps = runner(x)
    assert maps.shape == (2, 256, 192) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0
    assert maps.reshape(2, -1).std(axis=1).min() > 0  # spatially varying, not a constant map


def test_gradcam_falls_back_to_the_trunk_when_the_top_is_a_single_cell():
    model = _tiny_whole({"blocks": "resnet", "depths": [16, 16], "repetitions": [1, 1], "enlarge": 2})
    x = torch.randn(1, 1, 128, 96)  # trunk 4x3 -> top 1x1: no spatial information left there
    assert last_spatial_module(model, x) is model.trunk


def test_overlay_is_grey_without_heat_and_coloured_with_it():
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 4000, (300, 200)).astype(np.float32)
    heat = np.zeros((300, 200), dtype=np.float32)
    heat[100:200, 50:150] = 1.0
    heat[:10] = np.nan  # no value: drawn as plain grey
    rgb = render_overlay(pixels, heat, alpha=0.6).astype(int)
    assert rgb.shape == (300, 200, 3)
    saturation = rgb.max(-1) - rgb.min(-1)
    assert saturation[heat == 1.0].min() > 40
    assert saturation[np.nan_to_num(heat) == 0.0].max() == 0
    small = render_overlay(pixels, heat, max_side=150)
    assert small.shape == (150, 100, 3)
    with pytest.raises(ValueError, match="differs from image shape"):
        render_overlay(pixels, heat[:-1])
