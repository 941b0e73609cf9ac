"""`PreparedDataset.open`: the one reader of a prepared folder (manifest + dataset.json), used by training,
evaluation and patch sampling."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mammokit.config import to_dict
from mammokit.data.manifest import ManifestError, PreparedDataset, write_table
from mammokit.preprocess import PreprocessSpec


def _manifest(tmp_path, **extra_columns):
    rows = {"image_id": ["a", "b", "c"], "split": ["train", "val", "test"], "label": [0, 1, 1],
            "image_file": ["images/a.png", "", None], **extra_columns}  # fmt: skip
    write_table(pd.DataFrame(rows), tmp_path / "manifest.parquet")


def test_open_keeps_prepared_images_and_reads_the_recorded_spec(tmp_path):
    _manifest(tmp_path)
    spec = PreprocessSpec(height=640, width=512, crop_breast=False)
    (tmp_path / "dataset.json").write_text(json.dumps({"source": "csv", "preprocess": to_dict(spec)}))
    prepared = PreparedDataset.open(tmp_path)
    assert prepared.images["image_id"].tolist() == ["a"]  # b and c failed to prepare (no image_file)
    assert prepared.spec == spec
    assert prepared.info["source"] == "csv"
    assert prepared.lesions().empty


def test_open_without_dataset_json_has_no_spec(tmp_path):
    _manifest(tmp_path)
    assert PreparedDataset.open(tmp_path).spec is None


def test_open_says_what_is_missing_and_what_to_run(tmp_path):
    with pytest.raises(ManifestError, match=r"manifest\.parquet not found; run `mammokit prepare`"):
        PreparedDataset.open(tmp_path)
    write_table(pd.DataFrame({"image_id": ["a"], "image_file": ["images/a.png"]}), tmp_path / "manifest.parquet")
    with pytest.raises(ManifestError, match=r"lacks column\(s\) \['label', 'split'\]; re-run `mammokit prepare`"):
        PreparedDataset.open(tmp_path)
    _manifest(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(ManifestError, match=r"dataset\.json is unreadable"):
        PreparedDataset.open(tmp_path)
