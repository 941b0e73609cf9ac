"""Generic CSV adapter: a user's own PNG/DICOM files listed with path, label and optional columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mammokit.data.sources import get_source
from mammokit.data.sources._common import DatasetError


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.arange(32 * 24).reshape(32, 24) * 80).astype(np.uint16)).save(path)


def test_generic_csv_end_to_end(tmp_path, caplog):
    from dicom_factory import write_mammogram

    _png(tmp_path / "imgs" / "a_lcc.png")
    _png(tmp_path / "imgs" / "a_lmlo.png")
    write_mammogram(tmp_path / "imgs" / "b_rcc.dcm", image_laterality="R", view_position="CC")
    _png(tmp_path / "imgs" / "c.png")
    (tmp_path / "labels.csv").write_text(
        "File,Cancer,Patient,Side,View,site\n"
        "imgs/a_lcc.png,malignant,A,left,cc,x\n"
        "imgs\\a_lmlo.png,1,A,LEFT,MLO,x\n"
        "imgs/b_rcc.dcm,0,B,R,CC,y\n"
        "imgs/missing.png,0,B,R,MLO,y\n"
        "imgs/c.png,maybe,C,R,CC,y\n"
    )
    source = get_source("csv")
    images, lesions = source.build_manifest(tmp_path)
    assert images["image_id"].tolist() == ["imgs__a_lcc", "imgs__a_lmlo", "imgs__b_rcc"]
    assert images["label"].tolist() == [1, 1, 0] and images["patient_id"].tolist() == ["A", "A", "B"]
    assert images["laterality"].tolist() == ["L", "L", "R"] and images["view"].tolist() == ["CC", "MLO", "CC"]
    assert images["site"].tolist() == ["x", "x", "y"] and lesions.empty
    # every row left out is recorded for errors.csv with its line and reason (batch rule)
    reasons = {e["path"]: e["reason"] for e in source.skipped}
    assert reasons["imgs/missing.png"].startswith("labels.csv line 5: file not found")
    assert reasons["imgs/c.png"].startswith("labels.csv line 6: unreadable label 'maybe'")
    assert "1 rows of labels.csv name a file that does not exist" in caplog.text
    pixels, meta = source.read_image(images.iloc[0], tmp_path)
    assert pixels.shape == (32, 24) and (meta.laterality, meta.view) == ("L", "CC")
    # the CSV file itself as root: paths stored absolute, same images
    again, _ = get_source("csv").build_manifest(tmp_path / "labels.csv")
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in again["path"])
    pixels, _ = source.read_image(again.iloc[2], tmp_path / "labels.csv")
    assert pixels.ndim == 2


def test_generic_csv_without_patient_or_label(tmp_path, caplog):
    _png(tmp_path / "x.png")
    _png(tmp_path / "y.png")
    (tmp_path / "list.csv").write_text("path\nx.png\ny.png\n")
    images, _ = get_source("csv").build_manifest(tmp_path)
    assert images["label"].tolist() == [-1, -1] and images["patient_id"].tolist() == ["x", "y"]
    assert "each is treated as its own patient" in caplog.text


def test_generic_csv_errors(tmp_path):
    (tmp_path / "a.csv").write_text("filename_typo,label\nx.png,1\n")
    with pytest.raises(DatasetError, match="no image path column"):
        get_source("csv").build_manifest(tmp_path)
    (tmp_path / "b.csv").write_text("path,label\n")
    with pytest.raises(DatasetError, match="expected exactly one CSV"):
        get_source("csv").build_manifest(tmp_path)


@pytest.mark.parametrize(
    ("name", "option", "hint"),
    [("inbreast", "birads_3", "birads3"), ("cbis-ddsm", "cross_splits", "cross_split"), ("mini-mias", "x", None)],
)
def test_unknown_adapter_options_are_refused_with_a_hint(name, option, hint):
    with pytest.raises(TypeError, match=f"has no option '{option}'") as err:
        get_source(name, **{option: 1})
    if hint:
        assert f"did you mean '{hint}'" in str(err.value)
