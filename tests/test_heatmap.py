"""Heatmaps: the fully convolutional patch classifier, the cell-to-pixel mapping, Grad-CAM and overlays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mammokit.explain.cam import GradCamRunner, default_cam_layer, last_spatial_module, resolve_cam_layer
from mammokit.explain.overlay import render_overlay, render_panel, write_raw_map
from mammokit.explain.report_panels import MapKind
from mammokit.models.registry import create_model
from mammokit.scoring.patch_maps import malignant_map, patch_probability_maps
from mammokit.scoring.receptive_field import cell_map_to_pixels, receptive_field_origin
from test_evaluate_model import one_thread, tiny  # noqa: F401 - fixtures: a saved run and a prepared folder


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


def test_gradcam_targets_the_stride_16_trunk_stage_and_gives_unit_range_maps_at_input_size():
    model = _tiny_whole({"blocks": "resnet", "depths": [16, 16], "repetitions": [1, 1], "enlarge": 2})
    x = torch.randn(2, 1, 256, 192)  # trunk 8x6 -> top 2x2; layer3 (stride 16) is 16x12
    runner = GradCamRunner(model, [1], x)
    assert runner.layer_name == "trunk.body.layer3" and runner.layer is model.trunk.body.layer3
    maps = runner(x)
    # only the target layer and what runs after it take part in the backward pass
    assert not any(p.requires_grad for p in model.trunk.body.layer2.parameters())
    assert all(p.requires_grad for p in model.trunk.body.layer4.parameters())
    assert maps.shape == (2, 256, 192) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0
    assert maps.reshape(2, -1).std(axis=1).min() > 0  # spatially varying, not a constant map
    # finer than the old default (the top layers: 2x2 cells)
    top = GradCamRunner(model, [1], x, layer="top")
    top(x)
    assert runner.map_hw == (16, 12) and top.map_hw == (2, 2)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam"])
def test_every_cam_method_gives_a_unit_range_map(method):
    model = _tiny_whole("none")
    x = torch.randn(1, 1, 128, 96)
    maps = GradCamRunner(model, [1], x, method=method)(x)
    assert maps.shape == (1, 128, 96) and maps.min() >= 0.0 and maps.max() == pytest.approx(1.0, abs=1e-5)


def test_cam_layer_rule_per_architecture_and_named_layers():
    assert default_cam_layer(_tiny_whole("none")) == "trunk.body.layer3"
    effnet = create_model("whole_image", backbone="efficientnet_lite0", top="none", pretrained=None)
    assert default_cam_layer(effnet) == "trunk.body.blocks.4"
    vgg = create_model("whole_image", backbone="vgg11", top="none", pretrained=None)
    _, layer = resolve_cam_layer(vgg, "auto")
    assert isinstance(layer, torch.nn.ReLU)  # the last conv block's ReLU at stride 16, before the final pool
    x = torch.randn(1, 1, 128, 96)
    assert GradCamRunner(vgg.eval(), [1], x)(x).max() == pytest.approx(1.0, abs=1e-5)  # parameter-free layer works
    assert resolve_cam_layer(effnet, "top")[1] is effnet.top
    with pytest.raises(ValueError, match=r"did you mean trunk\.body\.blocks\.4"):
        resolve_cam_layer(effnet, "trunk.body.block.4")
    with pytest.raises(ValueError, match="gradcam method"):
        GradCamRunner(effnet, [1], x, method="scorecam")


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


class _MeanBrightness(torch.nn.Module):
    """A stand-in patch classifier: trunk = 32x32 mean pooling (stride 32), head = GAP -> logits (0, 20 * mean).

    Its p(class 1) rises with the mean brightness of the 32-px window, so its map must peak on a bright square.
    """

    def __init__(self) -> None:
        super().__init__()
        self.trunk = torch.nn.AvgPool2d(32)
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(1, 2))
        with torch.no_grad():
            self.head[2].weight.copy_(torch.tensor([[0.0], [20.0]]))
            self.head[2].bias.copy_(torch.tensor([0.0, -10.0]))


def test_a_finer_patch_stride_finds_a_square_between_the_trunk_cells():
    x = torch.zeros(1, 1, 128, 96)
    x[..., 16:48, 16:48] = 1.0  # straddles four 32-px cells of the trunk grid
    model = _MeanBrightness().eval()
    coarse = patch_probability_maps(model, x, (32, 32))[0, 1]
    fine = patch_probability_maps(model, x, (32, 32), stride=16)[0, 1]
    peak = np.unravel_index(np.argmax(fine), fine.shape)
    assert abs(peak[0] - 31.5) <= 1 and abs(peak[1] - 31.5) <= 1  # centred on the square
    assert fine.max() > 0.95 and coarse.max() < 0.1  # only a shifted pass sees the whole square
    with pytest.raises(ValueError, match="must divide"):
        patch_probability_maps(model, x, (32, 32), stride=12)


def test_malignant_map_sums_the_malignant_classes_and_kind_names_parse():
    maps = np.random.default_rng(0).random((5, 4, 3)).astype(np.float32)
    classes = ["background", "calc_benign", "calc_malignant", "mass_benign", "mass_malignant"]
    np.testing.assert_allclose(malignant_map(maps, classes), maps[2] + maps[4])
    with pytest.raises(ValueError, match="no malignant class"):
        malignant_map(maps[:2], ["background", "benign"])
    assert MapKind.parse("gradcam") == MapKind("gradcam", "cam", "gradcam", "auto")
    assert MapKind.parse("hirescam@top").layer == "top"
    assert MapKind.parse("patch_malignant@32").stride == 32 and MapKind.parse("patch_malignant").stride == 16
    with pytest.raises(ValueError, match="unknown heatmap kind"):
        MapKind.parse("saliency")
    flipped = MapKind.parse("hirescam@trunk+flips")
    assert (flipped.method, flipped.layer, flipped.flips) == ("hirescam", "trunk", True)
    assert not MapKind.parse("hirescam").flips
    with pytest.raises(ValueError, match="class activation maps only"):
        MapKind.parse("patch_malignant+flips")


def test_panel_has_caption_colour_bar_and_lesion_outline(tmp_path):
    yy, xx = np.mgrid[0:200, 0:150]
    pixels = (np.exp(-((xx / 120.0) ** 2 + ((yy - 100) / 90.0) ** 2)) * 3000).astype(np.float32)
    heat = np.exp(-((xx - 60) ** 2 + (yy - 80) ** 2) / (2 * 15.0**2)).astype(np.float32)
    lesion = (xx - 60) ** 2 + (yy - 80) ** 2 < 12**2
    panel = render_panel(pixels, heat, caption=["line one", "line two"], scale_label="p", lesion_mask=lesion)
    panel = np.asarray(panel)
    assert panel.shape[0] > 200 and panel.shape[1] > 2 * 150  # caption rows; two halves + colour bar
    cyan = (panel[..., 0] == 0) & (panel[..., 1] == 255) & (panel[..., 2] == 255)
    assert cyan.sum() > 2 * 40  # the outline on both halves
    left, right = cyan[:, : panel.shape[1] // 2], cyan[:, panel.shape[1] // 2 :]
    assert left.any() and right.any()
    # the colour bar: the inferno gradient's bright end (pale yellow) appears right of the overlay
    bar = panel[:, 2 * 150 :]
    assert ((bar[..., 0] > 240) & (bar[..., 1] > 240) & (bar[..., 2] < 200)).any()
    write_raw_map(tmp_path / "m.npy", heat)
    np.testing.assert_array_equal(np.load(tmp_path / "m.npy"), heat)
    with pytest.raises(ValueError, match="lesion mask shape"):
        render_panel(pixels, heat, lesion_mask=lesion[:-1])


def test_evaluate_report_shows_the_top_scoring_images_with_their_heatmaps(tiny, tmp_path):  # noqa: F811
    import re

    import pandas as pd

    from mammokit.cli import main

    run, prepared = tiny
    out = tmp_path / "ev"
    argv = ["evaluate", str(run), "--data", str(prepared), "--bootstrap", "20", "--device", "cpu", "--out", str(out)]
    assert main([*argv, "--heatmap-top", "3"]) == 0
    html = (out / "report.html").read_text()
    assert 'id="heatmaps"' in html and html.count("Highest-scoring") == 2
    assert len(re.findall(r"p\(malignant\) [0-9.]+, label malignant<", html)) == 3
    assert len(re.findall(r"p\(malignant\) [0-9.]+, label not malignant<", html)) == 3
    preds = pd.read_csv(out / "predictions.csv")
    for label in (0, 1):  # the panels show the highest-scoring images of each class
        for image_id in preds[preds["label"] == label].nlargest(3, "prob_malignant")["image_id"]:
            assert f"{image_id}: p(malignant)" in html


def _padded_trunk(stages: int) -> torch.nn.Sequential:
    """`stages` stride-2 3x3 convs with padding 1 and equal positive weights: a stride-2^stages map whose cell i
    looks at pixel 2^stages * i (the padded-trunk geometry of ResNet, VGG and EfficientNet)."""
    layers: list[torch.nn.Module] = []
    for _ in range(stages):
        conv = torch.nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False)
        torch.nn.init.constant_(conv.weight, 1.0 / 9.0)
        layers += [conv, torch.nn.ReLU()]
    return torch.nn.Sequential(*layers)


def test_receptive_field_origin_is_measured_not_assumed():
    # unpadded pooling: cell 0 covers pixels [0, 32): centre 16
    assert receptive_field_origin(torch.nn.AvgPool2d(32)) == pytest.approx((16.0, 16.0), abs=0.01)
    # padded stride-2 convs: cell 0 looks at pixel 0 (centre 0.5), not at 8 (stride 16) as a stretch assumes
    assert receptive_field_origin(_padded_trunk(4).eval()) == pytest.approx((0.5, 0.5), abs=0.05)
    # TF "same" padding (pad after, not before) looks half a pixel further down-right per stage: 0.5 + 7.5
    same = torch.nn.Sequential(torch.nn.ZeroPad2d((0, 1, 0, 1)), torch.nn.AvgPool2d(2))
    assert receptive_field_origin(torch.nn.Sequential(*[same] * 4)) == pytest.approx((8.0, 8.0), abs=0.05)


class _DotDetector(torch.nn.Module):
    """Whole-image stand-in: a padded stride-16 trunk, then logits (0, 10 * max of the map): a bright dot."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = _padded_trunk(4)
        self.top = torch.nn.AdaptiveMaxPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.top(self.trunk(x)).flatten(1)
        return torch.cat([torch.zeros_like(score), 10.0 * score], dim=1)


def test_gradcam_peak_lands_on_the_dot_the_padded_trunk_saw():
    # the dot sits where stride-16 cell (6, 4) looks (pixel 96, 64); a plain stretch draws that cell at (104, 72)
    x = torch.zeros(1, 1, 192, 128)
    x[..., 95:98, 63:66] = 1.0
    runner = GradCamRunner(_DotDetector().eval(), [1], x, layer="trunk")
    for flips in (False, True):  # the flipped passes, flipped back, must agree on where the dot is
        cam = runner(x, flips=flips)[0]
        peak = np.unravel_index(np.argmax(cam), cam.shape)
        assert abs(peak[0] - 96) <= 2 and abs(peak[1] - 64) <= 2, (flips, peak)
        assert cam.max() == pytest.approx(1.0) and cam.min() >= 0.0


def test_patch_map_peak_lands_on_the_square_a_padded_trunk_saw():
    class Patch(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = _padded_trunk(5)  # stride 32; cell 3 looks at pixel 96
            self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(1, 2))
            with torch.no_grad():
                self.head[2].weight.copy_(torch.tensor([[0.0], [40.0]]))
                self.head[2].bias.copy_(torch.tensor([0.0, -2.0]))

    x = torch.zeros(1, 1, 256, 192)
    x[..., 88:105, 56:73] = 1.0  # centred on (96, 64)
    fine = patch_probability_maps(Patch().eval(), x, (32, 32), stride=16)[0, 1]
    peak = np.unravel_index(np.argmax(fine), fine.shape)
    assert abs(peak[0] - 96) <= 3 and abs(peak[1] - 64) <= 3, peak  # unaligned: (112, 80)


def test_a_long_caption_wraps_inside_a_narrow_panel():
    from PIL import ImageFont  # noqa: F401 - Pillow's default font is what the panel uses when no TTF is found

    pixels = np.random.default_rng(0).random((256, 96)).astype(np.float32)
    caption = ["P_00004_LEFT_CC: HiResCAM at trunk.body.blocks.4 of p(malignant), mean over the 4 flips, scaled"]
    one = render_panel(pixels, np.zeros_like(pixels), caption=caption[:0])
    wrapped = render_panel(pixels, np.zeros_like(pixels), caption=caption)
    assert wrapped.width == one.width  # the text fits the figure instead of running off its edge
    assert wrapped.height - one.height >= 2 * round(max(11, round(256 / 28)) * 1.35)  # at least two lines


def test_flip_averaged_maps_flips_each_map_back():
    from mammokit.scoring.core import flip_averaged_maps

    x = torch.arange(2 * 6 * 4, dtype=torch.float32).reshape(2, 1, 6, 4)
    seen: list[torch.Tensor] = []

    def position_map(t: torch.Tensor) -> np.ndarray:  # a map that is the input itself: flipping back undoes the flip
        seen.append(t)
        return t[:, 0].numpy()

    np.testing.assert_array_equal(flip_averaged_maps(position_map, x), x[:, 0].numpy())
    assert len(seen) == 4 and torch.equal(seen[1], x.flip(-1)) and torch.equal(seen[3], x.flip(-2, -1))
