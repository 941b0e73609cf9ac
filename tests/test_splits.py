"""Patient-level splits: stratified, seeded, official split kept, split files round-trip, no patient crosses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mammokit.data.splits import (
    SplitError,
    assign_splits,
    check_no_patient_crosses,
    crossing_patients,
    export_splits,
    import_splits,
    patient_labels,
    split_summary,
)


def _images(n_patients: int = 200, seed: int = 1, official: bool = False) -> pd.DataFrame:
    """Four views per patient; ~30% of patients have one malignant image."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        positive = rng.random() < 0.3
        split = ("test" if p % 5 == 0 else "train") if official else ""
        for k, (lat, view) in enumerate([("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]):
            rows.append(
                {
                    "image_id": f"p{p:04d}_{lat}{view}",
                    "patient_id": f"p{p:04d}",
                    "laterality": lat,
                    "view": view,
                    "label": int(positive and k < 2),
                    "split": split,
                }
            )
    return pd.DataFrame(rows)


def test_assign_splits_is_patient_level_stratified_and_seeded():
    images = _images()
    out = assign_splits(images, seed=3)
    check_no_patient_crosses(out)
    assert set(out["split"]) == {"train", "val", "test"}
    summary = split_summary(out)
    n_pat = images["patient_id"].nunique()
    # test = ceil(15% of 200) patients; val = ceil(10% of the other 170)
    assert summary.loc["test", "patients"] == 30
    assert summary.loc["val", "patients"] == 17
    assert summary.loc["train", "patients"] == n_pat - 47
    # stratified: each split's share of positive patients is within one patient of the overall share
    overall = patient_labels(images).mean()
    for split, row in summary.iterrows():
        assert abs(row["malignant_patients"] - overall * row["patients"]) <= 1.0, split
    # same seed -> same split, independent of row order; another seed -> another split
    again = assign_splits(images.sample(frac=1.0, random_state=0), seed=3).set_index("image_id")["split"]
    assert again.reindex(out["image_id"]).tolist() == out["split"].tolist()
    other = assign_splits(images, seed=4)
    assert other["split"].tolist() != out["split"].tolist()


def test_assign_splits_keeps_official_test_and_carves_val_from_train():
    images = _images(official=True)
    out = assign_splits(images, seed=0, val_fraction=0.2)
    check_no_patient_crosses(out)
    was_test = images["split"] == "test"
    assert (out.loc[was_test, "split"] == "test").all()
    assert set(out.loc[~was_test, "split"]) == {"train", "val"}
    n_train_pat = images.loc[~was_test, "patient_id"].nunique()
    assert out.loc[out["split"] == "val", "patient_id"].nunique() == int(np.ceil(0.2 * n_train_pat))
    # keep_official=False re-splits everyone
    fresh = assign_splits(images, seed=0, keep_official=False)
    assert (fresh.loc[was_test, "split"] != "test").any()


def test_assign_splits_rejects_patients_in_two_official_splits():
    images = _images(n_patients=10, official=True)
    images.loc[images["patient_id"] == "p0000", "split"] = ["train", "test", "test", "test"]
    with pytest.raises(SplitError, match="1 patients have images in more than one official split"):
        assign_splits(images)


def test_check_no_patient_crosses_reports_count_without_ids():
    images = _images(n_patients=6)
    images["split"] = "train"
    images.loc[images["image_id"] == "p0002_RCC", "split"] = "test"
    with pytest.raises(SplitError) as err:
        check_no_patient_crosses(images)
    assert "1 patients" in str(err.value) and "test+train: 1" in str(err.value)
    assert "p0002" not in str(err.value)
    assert crossing_patients(images) == ["p0002"]


def test_split_file_round_trip_reproduces_split_exactly(tmp_path):
    images = _images(n_patients=40)
    out = assign_splits(images, seed=7)
    path = tmp_path / "splits.csv"
    export_splits(out, path)
    text = path.read_text().splitlines()
    assert text[0] == "patient_id,split" and len(text) == 41
    again = import_splits(images.assign(split=""), path)
    assert again["split"].tolist() == out["split"].tolist()


def test_import_splits_errors_on_missing_patients_and_bad_names(tmp_path):
    images = _images(n_patients=5)
    path = tmp_path / "s.csv"
    path.write_text("patient_id,split\np0000,train\np0001,test\np0002,val\n")
    with pytest.raises(SplitError, match="2 of 5 patients of the manifest are not in the split file"):
        import_splits(images, path)
    path.write_text("patient_id,split\n" + "".join(f"p{i:04d},holdout\n" for i in range(5)))
    with pytest.raises(SplitError, match="unknown split names"):
        import_splits(images, path)
    # extra patients in the file are fine (a published split may cover a larger release)
    path.write_text("patient_id,split\n" + "".join(f"p{i:04d},{'test' if i % 2 else 'train'}\n" for i in range(9)))
    assert import_splits(images, path)["split"].tolist()[:4] == ["train"] * 4


def test_export_refuses_unsplit_patients(tmp_path):
    with pytest.raises(SplitError, match="no split yet"):
        export_splits(_images(n_patients=3), tmp_path / "s.csv")
