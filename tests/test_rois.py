"""`rasterize_roi`: mask files (DICOM/PNG), polygons, circles and boxes on the source grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dicom_factory import SECONDARY_CAPTURE, make_dataset, write_dicom
from mammokit.data.rois import RoiError, rasterize_roi

SHAPE = (60, 40)


def _row(**kw) -> pd.Series:
    return pd.Series({"lesion_id": "les-1", **kw})


def test_circle_origin_top_left() -> None:
    mask = rasterize_roi(_row(roi_kind="circle", cx=10.0, cy=20.0, radius=5.0), SHAPE)
    assert mask.shape == SHAPE and mask[20, 10] and mask[20, 15] and not mask[20, 16] and not mask[26, 10]
    assert mask.sum() == pytest.approx(np.pi * 25, rel=0.15)


def test_circle_clipped_at_the_border_and_zero_radius() -> None:
    assert rasterize_roi(_row(roi_kind="circle", cx=0.0, cy=0.0, radius=4.0), SHAPE)[0, 0]
    assert rasterize_roi(_row(roi_kind="circle", cx=5.2, cy=7.7, radius=0.0), SHAPE).sum() >= 1


def test_polygon_filled_with_outline() -> None:
    poly = json.dumps([[5, 5], [20, 5], [20, 30], [5, 30]])
    mask = rasterize_roi(_row(roi_kind="polygon", polygon=poly), SHAPE)
    assert mask[5:31, 5:21].all() and mask.sum() == 26 * 16
    single = rasterize_roi(_row(roi_kind="polygon", polygon="[[3, 4]]"), SHAPE)
    assert single.sum() == 1 and single[4, 3]


def test_box_right_bottom_exclusive_and_clipped() -> None:
    mask = rasterize_roi(_row(roi_kind="box", x0=-3.0, y0=10.0, x1=8.0, y1=20.0), SHAPE)
    assert mask[10:20, 0:8].all() and mask.sum() == 80


@pytest.mark.parametrize("fmt", ["png", "dcm"])
def test_mask_file(tmp_path: Path, fmt: str) -> None:
    arr = np.zeros(SHAPE, dtype=np.uint8)
    arr[10:20, 5:15] = 255
    if fmt == "png":
        Image.fromarray(arr).save(tmp_path / "m.png")
    else:  # ROI mask DICOMs need not be Modality MG
        write_dicom(tmp_path / "m.dcm", make_dataset(arr, bits_stored=8, modality="OT", sop_class=SECONDARY_CAPTURE))
    mask = rasterize_roi(_row(roi_kind="mask", roi_path=f"m.{fmt}"), SHAPE, tmp_path)
    assert mask.sum() == 100 and mask[10:20, 5:15].all()


def test_mask_slightly_off_size_is_resized_but_other_image_refused(tmp_path: Path) -> None:
    arr = np.zeros((61, 40), dtype=np.uint8)  # one row more than the image (CBIS-DDSM quirk)
    arr[10:20, 5:15] = 255
    Image.fromarray(arr).save(tmp_path / "near.png")
    assert rasterize_roi(_row(roi_kind="mask", roi_path="near.png"), SHAPE, tmp_path).shape == SHAPE
    Image.fromarray(np.full((20, 20), 255, np.uint8)).save(tmp_path / "crop.png")
    with pytest.raises(RoiError, match="is it the mask of another image"):
        rasterize_roi(_row(roi_kind="mask", roi_path="crop.png"), SHAPE, tmp_path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (dict(roi_kind="none"), "has no ROI"),
        (dict(roi_kind="ellipse"), "unknown roi_kind 'ellipse'"),
        (dict(roi_kind="circle", cx=1.0, cy=float("nan"), radius=2.0), "needs numeric cx, cy, radius"),
        (dict(roi_kind="circle", cx=500.0, cy=500.0, radius=2.0), "does not cover any pixel"),
        (dict(roi_kind="polygon", polygon="not json"), "JSON list of"),
        (dict(roi_kind="mask", roi_path=""), "roi_path is empty"),
        (dict(roi_kind="mask", roi_path="absent.png"), "mask file not found"),
    ],
)
def test_bad_rois(tmp_path: Path, row: dict, message: str) -> None:
    with pytest.raises(RoiError, match=message) as info:
        rasterize_roi(_row(**row), SHAPE, tmp_path)
    assert "les-1" in str(info.value)
