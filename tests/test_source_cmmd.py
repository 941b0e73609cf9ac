"""CMMD adapter on a small NBIA-layout fixture with a clinical table (xlsx and CSV)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mammokit.data.sources import get_source
from mammokit.data.sources._common import DatasetError

CLINICAL = pd.DataFrame(
    {
        "ID1": ["D1-0001", "D1-0002", "D2-0001"],
        "LeftRight": ["L", "R", "L"],
        "Age": ["44", "61", "50"],
        "number": ["2", "2", "2"],
        "abnormality": ["calcification", "mass", "both"],
        "classification": ["Benign", "Malignant", "Malignant"],
        "subtype": ["", "Luminal A", "HER2-enriched"],
    }
)


def make_release(root: Path, clinical_format: str = "xlsx") -> Path:
    from dicom_factory import write_mammogram

    base = root / "manifest-1616439774198" / "CMMD"
    shots = [
        ("D1-0001", "L", "CC", {"view_position": "CC"}),
        ("D1-0001", "L", "MLO", {"view_position": None, "view_code": ("399368009", "medio-lateral oblique")}),
        ("D1-0002", "R", "CC", {"view_position": "CC"}),
        ("D1-0002", "R", "MLO", {"view_position": "MLO"}),
        ("D2-0001", "L", "CC", {"view_position": "CC"}),
        ("D2-0001", "R", "CC", {"view_position": "CC"}),  # breast not in the clinical table
    ]
    for k, (patient, lat, _view, kwargs) in enumerate(shots):
        series = base / patient / "07-18-2010-NA-NA-79377" / f"1.000000-NA-{70244 + k}"
        write_mammogram(series / "1-1.dcm", image_laterality=lat, patient_id=patient, manufacturer="GE", **kwargs)
    (base / "D1-0001" / "notes.dcm").write_text("not a dicom")
    if clinical_format == "xlsx":
        CLINICAL.to_excel(root / "CMMD_clinicaldata_revision.xlsx", index=False)
    else:
        CLINICAL.to_csv(root / "CMMD_clinicaldata_revision.csv", index=False)
    return root


@pytest.mark.parametrize("clinical_format", ["xlsx", "csv"])
def test_cmmd_end_to_end(tmp_path, caplog, clinical_format):
    if clinical_format == "xlsx":
        pytest.importorskip("openpyxl")
    make_release(tmp_path, clinical_format)
    source = get_source("cmmd")
    images, lesions = source.build_manifest(tmp_path)
    by_id = images.set_index("image_id")
    assert by_id["label"].to_dict() == {
        "D1-0001_L_CC": 0, "D1-0001_L_MLO": 0, "D1-0002_R_CC": 1, "D1-0002_R_MLO": 1, "D2-0001_L_CC": 1
    }  # fmt: skip
    assert by_id.loc["D1-0002_R_CC", "subtype"] == "Luminal A" and by_id.loc["D2-0001_L_CC", "abnormality"] == "both"
    assert set(by_id["vendor"]) == {"GE"} and lesions.empty
    assert "1 CMMD images belong to breasts missing from the clinical table (dropped)" in caplog.text
    assert "1 files under the CMMD root are not readable DICOMs" in caplog.text
    pixels, meta = source.read_image(by_id.reset_index().iloc[1], tmp_path)
    assert (meta.laterality, meta.view) == ("L", "MLO") and pixels.ndim == 2
    unknown, _ = get_source("cmmd", unlisted="unknown").build_manifest(tmp_path)
    assert unknown.set_index("image_id").loc["D2-0001_R_CC", "label"] == -1


def test_cmmd_without_clinical_table_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="no CMMD clinical table"):
        get_source("cmmd").build_manifest(tmp_path)
