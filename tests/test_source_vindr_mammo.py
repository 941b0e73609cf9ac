"""VinDr-Mammo adapter on a small release built to the documented CSV formats and tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from mammokit.data.sources import get_source
from mammokit.data.sources._common import DatasetError
from mammokit.data.splits import assign_splits, check_no_patient_crosses

BREAST_HEADER = "study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,breast_density,split"
FINDING_HEADER = (
    "study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,breast_density,"
    "finding_categories,finding_birads,xmin,ymin,xmax,ymax,split"
)


def _hex(n: int) -> str:
    return f"{n:032x}"


def make_release(root: Path) -> Path:
    from dicom_factory import write_mammogram

    release = root / "vindr-mammo" / "1.0.0"
    breast, findings = [BREAST_HEADER], [FINDING_HEADER]
    # study 1 (training): right breast BI-RADS 4 with a mass and a calcification box; left BI-RADS 1
    # study 2 (test): left BI-RADS 3 (no box), right BI-RADS 2; the R MLO file is missing on disk
    images = [
        (1, 10, "R", "CC", "BI-RADS 4", "training"),
        (1, 11, "R", "MLO", "BI-RADS 4", "training"),
        (1, 12, "L", "CC", "BI-RADS 1", "training"),
        (1, 13, "L", "MLO", "BI-RADS 1", "training"),
        (2, 20, "L", "CC", "BI-RADS 3", "test"),
        (2, 21, "R", "MLO", "BI-RADS 2", "test"),
    ]
    for study, image, lat, view, birads, split in images:
        common = f"{_hex(study)},{_hex(100 + study)},{_hex(image)},{lat},{view},64,48"
        breast.append(f"{common},{birads},DENSITY C,{split}")
        if image == 10:
            findings.append(f"{common},{birads},DENSITY C,['Mass'],BI-RADS 4,-3.5,10.0,20.0,30.0,{split}")
            findings.append(
                f"{common},{birads},DENSITY C,\"['Suspicious Calcification', 'Focal Asymmetry']\",BI-RADS 3,"
                f"30.0,40.0,60.0,70.0,{split}"
            )
        elif image == 20:
            findings.append(f"{common},{birads},DENSITY C,['Global Asymmetry'],BI-RADS 3,,,,,{split}")
        else:
            findings.append(f"{common},{birads},DENSITY C,['No Finding'],,,,,,{split}")
        if image != 21:
            write_mammogram(
                release / "images" / _hex(study) / f"{_hex(image)}.dicom",
                image_laterality=lat, view_position=view, photometric="MONOCHROME1" if image == 12 else "MONOCHROME2",
            )  # fmt: skip
    (release / "breast-level_annotations.csv").write_text("\n".join(breast) + "\n")
    (release / "finding_annotations.csv").write_text("\n".join(findings) + "\n")
    return release


def test_vindr_end_to_end(tmp_path, caplog):
    make_release(tmp_path)
    source = get_source("vindr-mammo")
    images, lesions = source.build_manifest(tmp_path)
    assert len(images) == 5 and "1 VinDr-Mammo images listed in the CSV have no DICOM" in caplog.text
    by_id = images.set_index("image_id")
    assert by_id["label"].tolist() == [1, 1, 0, 0, 0]
    assert by_id["split"].tolist() == ["train"] * 4 + ["test"]
    assert set(by_id["density"]) == {"C"} and by_id["birads"].tolist() == ["4", "4", "1", "1", "3"]
    assert by_id.loc[_hex(20), "label_source"] == "birads>=4; birads3->negative"
    assert (by_id["patient_id"] == by_id["exam_id"]).all() and by_id["patient_id"].nunique() == 2
    les = lesions.set_index("lesion_id")
    mass, calc, other = les.loc[f"{_hex(10)}_1"], les.loc[f"{_hex(10)}_2"], les.loc[f"{_hex(20)}_1"]
    assert (mass["lesion_type"], mass["roi_kind"], mass["x0"], mass["y1"], mass["malignant"]) == (
        "mass",
        "box",
        0.0,
        30.0,
        1,
    )  # fmt: skip  (xmin -3.5 clipped to the image)
    assert (calc["lesion_type"], calc["malignant"], calc["finding_categories"]) == (
        "calcification", 0, "Suspicious Calcification; Focal Asymmetry"
    )  # fmt: skip
    assert (other["lesion_type"], other["roi_kind"]) == ("other", "none")
    box = source.lesion_mask(lesions.set_index("lesion_id").loc[f"{_hex(10)}_1"].rename("x"), (64, 48), tmp_path)
    assert box[10:30, 0:20].all() and box.sum() == 20 * 20
    check_no_patient_crosses(assign_splits(images))
    pixels, meta = source.read_image(by_id.reset_index().iloc[2], tmp_path)
    assert (meta.laterality, meta.view) == ("L", "CC") and pixels.shape == (64, 48)


def test_vindr_missing_csv_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match=r"breast-level_annotations\.csv"):
        get_source("vindr-mammo").build_manifest(tmp_path)
