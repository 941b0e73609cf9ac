"""RSNA screening adapter on a small fixture built to the Kaggle train.csv / train_images layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from mammokit.data.sources import get_source
from mammokit.data.sources._common import DatasetError
from mammokit.data.splits import assign_splits, check_no_patient_crosses

HEADER = (
    "site_id,patient_id,image_id,laterality,view,age,cancer,biopsy,invasive,BIRADS,implant,density,machine_id,"
    "difficult_negative_case"
)


def make_release(root: Path) -> Path:
    from dicom_factory import write_mammogram

    rows = [HEADER]
    for patient, cancer_side in ((10006, None), (10011, "L"), (10025, "R")):
        for k, (lat, view) in enumerate([("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]):
            image = patient * 10 + k
            cancer = int(lat == cancer_side)
            rows.append(f"2,{patient},{image},{lat},{view},61.0,{cancer},{cancer},{cancer},,0,B,29,False")
            if image != 100253:  # one file missing on disk
                write_mammogram(
                    root / "train_images" / str(patient) / f"{image}.dcm",
                    image_laterality=None, view_position=None, syntax="jpeg2000-lossless",
                )  # fmt: skip
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root


def test_rsna_end_to_end(tmp_path, caplog):
    make_release(tmp_path)
    source = get_source("rsna")
    images, lesions = source.build_manifest(tmp_path)
    assert len(images) == 11 and "1 RSNA images have no file" in caplog.text
    assert images.groupby("patient_id")["label"].sum().to_dict() == {"10006": 0, "10011": 2, "10025": 1}
    assert set(images["site"]) == {"2"} and set(images["machine_id"]) == {"29"} and lesions.empty
    check_no_patient_crosses(assign_splits(images, seed=1))
    # the files carry no laterality/view tags (JPEG 2000 compressed): the table fills them
    row = images.set_index("image_id").loc["100111"].rename("100111")
    pixels, meta = source.read_image(row, tmp_path)
    assert (meta.laterality, meta.view) == ("L", "MLO") and pixels.ndim == 2


def test_rsna_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"train\.csv not found"):
        get_source("rsna").build_manifest(tmp_path)
    with pytest.raises(DatasetError, match="table='valid'"):
        get_source("rsna", table="valid").build_manifest(tmp_path)
