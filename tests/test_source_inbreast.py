"""INbreast adapter on a small release built to the documented format (DICOM + `;` CSV + OsiriX plist XML)."""

from __future__ import annotations

import json
import plistlib
from pathlib import Path

import pandas as pd
import pytest

from mammokit.data.sources import get_source
from mammokit.data.sources._common import DatasetError
from mammokit.data.sources.inbreast import normalise_sheet

# file name, patient hash, laterality, view, acquisition, ACR, BI-RADS
SHEET = [
    ("20586908", "6c613a14b80a8591", "R", "CC", "201001", "2", "1"),
    ("20586934", "6c613a14b80a8591", "R", "MLO", "201001", "2", "4a"),
    ("20586960", "6c613a14b80a8591", "L", "CC", "201001", "  ", "3"),
    ("22678622", "a1b2c3d4e5f60718", "L", "MLO", "200902", "4", "5"),
    ("22678646", "a1b2c3d4e5f60718", "L", "CC", "200902", "4", "6"),
    ("99999999", "ffffffffffffffff", "R", "CC", "200902", "1", "2"),  # in the sheet, no DICOM
]


def _roi(name: str, points: list[tuple[float, float]]) -> dict:
    return {
        "Area": 1.0, "Center": "(0, 0, 0)", "Dev": 0.0, "IndexInImage": 0, "Max": 1.0, "Mean": 1.0, "Min": 0.0,
        "Name": name, "NumberOfPoints": len(points), "Point_mm": [],
        "Point_px": [f"({x}, {y})" for x, y in points], "Total": 1.0, "Type": 15,
    }  # fmt: skip


def make_release(root: Path) -> Path:
    from dicom_factory import write_mammogram

    release = root / "INbreast Release 1.0"
    (release / "AllXML").mkdir(parents=True)
    lines = ["Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads"]
    for name, patient, lat, view, date, acr, birads in SHEET:
        lines.append(f"removed;removed;{lat};{view};{date};{name};{acr};{birads}")
        if name != "99999999":
            write_mammogram(
                release / "AllDICOMs" / f"{name}_{patient}_MG_{lat}_{view}_ANON.dcm",
                image_laterality=lat, view_position=view, manufacturer="SIEMENS",
            )  # fmt: skip
    (release / "INbreast.csv").write_text("\n".join(lines) + "\n")
    rois = [
        _roi("Mass", [(10, 12), (20, 12), (20, 25), (10, 25)]),
        _roi("Calcification", [(30.5, 40.25)]),
        _roi("Cluster", [(5, 5), (9, 5), (9, 9)]),
        _roi("Spiculated Region", [(1, 1), (3, 1), (3, 3)]),
    ]
    plist = {"Images": [{"ImageIndex": 0, "NumberOfROIs": len(rois), "ROIs": rois}]}
    with open(release / "AllXML" / "22678622.xml", "wb") as fh:
        plistlib.dump(plist, fh)
    (release / "AllXML" / "20586908.xml").write_text("not a plist")  # damaged: reported, image kept
    return release


def test_inbreast_end_to_end_default_rule(tmp_path, caplog):
    make_release(tmp_path)
    source = get_source("inbreast")
    images, lesions = source.build_manifest(tmp_path)
    by_id = images.set_index("image_id")
    assert by_id["label"].to_dict() == {"20586908": 0, "20586934": 1, "20586960": 0, "22678622": 1, "22678646": 1}
    assert by_id.loc["20586960", "label_source"] == "birads>=4; birads3->negative"
    assert by_id.loc["20586934", "label_source"] == "birads>=4"
    assert by_id.loc["20586934", "birads"] == "4a" and by_id.loc["20586960", "density"] == ""
    assert by_id["patient_id"].nunique() == 2 and by_id.loc["22678622", "exam_id"] == "a1b2c3d4e5f60718_200902"
    assert "1 INbreast sheet rows have no DICOM" in caplog.text
    assert "1 INbreast XML files could not be parsed" in caplog.text
    # lesions: polygon, single-point circle, cluster -> calcification, unknown names -> other
    les = lesions.set_index("lesion_id")
    assert les["lesion_type"].to_dict() == {
        "22678622_1": "mass", "22678622_2": "calcification", "22678622_3": "calcification", "22678622_4": "other"
    }  # fmt: skip
    assert json.loads(les.loc["22678622_1", "polygon"]) == [[10, 12], [20, 12], [20, 25], [10, 25]]
    assert (les.loc["22678622_2", "roi_kind"], les.loc["22678622_2", "cx"], les.loc["22678622_2", "cy"]) == (
        "circle", 30.5, 40.25
    )  # fmt: skip
    assert (les["malignant"] == -1).all()
    # the ROIs rasterise on the source grid (polygon 10..20 x 12..25, circle of radius 3 around (30.5, 40.25))
    mask = source.lesion_mask(les.reset_index().iloc[0], (64, 48), tmp_path)
    rows, cols = mask.nonzero()
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == pytest.approx((12, 25, 10, 20), abs=1)
    dot = source.lesion_mask(les.reset_index().iloc[1], (64, 48), tmp_path)
    assert dot[40, 30] and 20 <= dot.sum() <= 40  # BI-RADS 5 image: which lesion is the cancer is not given
    pixels, meta = source.read_image(by_id.reset_index().iloc[3], tmp_path)
    assert (meta.laterality, meta.view) == ("L", "MLO") and pixels.ndim == 2


@pytest.mark.parametrize(
    ("birads3", "n_images", "label"), [("exclude", 4, None), ("unknown", 5, -1), ("positive", 5, 1)]
)
def test_inbreast_birads3_choices(tmp_path, birads3, n_images, label):
    make_release(tmp_path)
    images, _ = get_source("inbreast", birads3=birads3).build_manifest(tmp_path)
    assert len(images) == n_images
    if label is not None:
        row = images.set_index("image_id").loc["20586960"]
        assert row["label"] == label and row["label_source"] == f"birads>=4; birads3->{birads3}"


def test_inbreast_rule_is_validated(tmp_path):
    make_release(tmp_path)
    with pytest.raises(DatasetError, match="birads3='drop' is not one of"):
        get_source("inbreast", birads3="drop").build_manifest(tmp_path)
    images, _ = get_source("inbreast", positive_birads=5).build_manifest(tmp_path)
    assert images.set_index("image_id")["label"].to_dict()["20586934"] == 0  # 4a < 5


def test_xls_sheet_rows_are_normalised():
    """The xls reads File Name as a float and ends with a blank and a totals row."""
    raw = pd.DataFrame(
        {
            "Patient ID": ["removed", "removed", "", ""],
            "Laterality": ["R", "L", "", ""],
            "View": ["CC", "FB", "", ""],
            "Acquisition date": ["201001.0", "200902", "", ""],
            "File Name": ["22678622.0", "20586908", "", "410"],
            "ACR": ["2.0", "", "", ""],
            "Bi-Rads": ["4c", "2", "", ""],
            "Mass ": ["X", "", "", ""],
        }
    )
    sheet = normalise_sheet(raw)
    assert sheet["file_name"].tolist() == ["22678622", "20586908"]
    assert sheet["acquisition"].tolist() == ["201001", "200902"] and sheet["density"].tolist() == ["2", ""]


def test_wrong_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="no AllDICOMs folder"):
        get_source("inbreast").build_manifest(tmp_path)


def test_synth_inbreast_layout_end_to_end(tmp_path):
    from test_source_cbis_ddsm import synth_or_skip

    summary = synth_or_skip("inbreast", tmp_path / "inb", women=4, seed=1, height=96, width=64)
    source = get_source("inbreast")
    images, lesions = source.build_manifest(tmp_path / "inb")
    assert len(images) == summary["images"]
    assert images["label"].sum() == summary["malignant_images"]
    assert images["patient_id"].nunique() == summary["women"]
    # like the real XMLs, a calcification cluster is written as many single-point ROIs: >= one row per lesion
    assert len(lesions) >= summary["lesions"] and set(lesions["roi_kind"]) <= {"polygon", "circle"}
    assert set(images.loc[images["label"] == 1, "image_id"]) <= set(lesions["image_id"])
    for _, les in lesions.iterrows():
        assert source.lesion_mask(les, (96, 64), tmp_path / "inb").any()
    row = images.iloc[0]
    pixels, meta = source.read_image(row, tmp_path / "inb")
    assert pixels.shape == (96, 64) and (meta.laterality, meta.view) == (row["laterality"], row["view"])
