"""mini-MIAS adapter: the real development set, listing quirks, bottom-left circle origin, woman = file pair."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mammokit.data.sources import get_source
from mammokit.data.sources._common import DatasetError
from mammokit.data.sources.mini_mias import parse_info, woman_of
from mammokit.data.splits import assign_splits, check_no_patient_crosses


def _contrast(image: np.ndarray, cx: float, cy: float, r: float) -> float:
    """Mean of the inner half-radius disc minus mean of the ring r..2r (a mass is brighter than its rim)."""
    y0, y1 = int(max(0, cy - 2 * r)), int(min(image.shape[0], cy + 2 * r + 1))
    x0, x1 = int(max(0, cx - 2 * r)), int(min(image.shape[1], cx + 2 * r + 1))
    yy, xx = np.mgrid[y0:y1, x0:x1]
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    sub = image[y0:y1, x0:x1]
    return float(sub[d2 <= (0.5 * r) ** 2].mean() - sub[(d2 > r**2) & (d2 <= (2 * r) ** 2)].mean())


@pytest.mark.realdata
def test_real_dev_set_parses(mias_dev_dir):
    images, lesions = get_source("mini-mias").build_manifest(mias_dev_dir)
    assert len(images) == 214 and images["patient_id"].nunique() == 107
    # every woman is a left/right pair: even number left, odd number right
    assert (images.groupby("patient_id")["laterality"].agg(lambda s: "".join(sorted(s))) == "LR").all()
    num = images["image_id"].str[3:].astype(int)
    assert ((num % 2 == 0) == (images["laterality"] == "L")).all()
    assert (images["view"] == "MLO").all() and set(images["density"]) == {"F", "G", "D"}
    # 218 listing rows: the NORM rows become label-0 images, the others 80 lesions (79 circles, mdb245 has none)
    listing = parse_info((mias_dev_dir / "Info.txt").read_text())
    assert len(listing) == 218
    assert len(lesions) == (listing["cls"] != "NORM").sum() == 80
    assert lesions["roi_kind"].value_counts().to_dict() == {"circle": 79, "none": 1}
    assert lesions.loc[lesions["roi_kind"] == "none", "image_id"].tolist() == ["mdb245"]
    # label: malignant iff any row has severity M
    malignant_refs = set(listing.loc[listing["severity"] == "M", "ref"])
    assert set(images.loc[images["label"] == 1, "image_id"]) == malignant_refs
    assert images["label"].sum() == len(malignant_refs) == 35
    # several rows for one image: mdb132 (two benign CIRC) and mdb144 (one benign, one malignant MISC)
    assert sorted(lesions.loc[lesions["image_id"] == "mdb144", "malignant"]) == [0, 1]
    assert images.set_index("image_id").loc["mdb144", "label"] == 1
    assert (lesions["image_id"] == "mdb132").sum() == 2
    # circle centre rows are 1024 - Y
    row = lesions.set_index("lesion_id").loc["mdb001_1"]
    assert (row["cx"], row["cy"], row["radius"]) == (535.0, 1024 - 425.0, 197.0)
    disc = get_source("mini-mias").lesion_mask(row, (1024, 1024), mias_dev_dir)
    assert disc[599, 535] and not disc[425 - 197 - 5, 535] and abs(disc.sum() / (np.pi * 197**2) - 1) < 0.02
    check_no_patient_crosses(assign_splits(images, seed=0))


@pytest.mark.realdata
def test_real_circles_land_on_the_masses(mias_dev_dir):
    """At (X, 1024 - Y) the masses stand out from their rim; at the unflipped (X, Y) they mostly do not."""
    _, lesions = get_source("mini-mias").build_manifest(mias_dev_dir)
    masses = lesions[(lesions["lesion_type"] == "mass") & (lesions["roi_kind"] == "circle")]
    # only circles whose flipped position is clearly elsewhere
    masses = masses[(1024 - 2 * masses["cy"]).abs() >= 2 * masses["radius"]]
    assert len(masses) >= 30
    wins, right = 0, []
    for _, les in masses.iterrows():
        image = np.asarray(Image.open(mias_dev_dir / f"{les['image_id']}.pgm"), dtype=np.float64)
        here = _contrast(image, les["cx"], les["cy"], les["radius"])
        flipped = _contrast(image, les["cx"], 1024 - les["cy"], les["radius"])
        wins += here > flipped
        right.append(here)
    assert wins / len(masses) >= 0.9
    assert np.median(right) > 10  # grey levels (0-255): the circle is on a bright blob


# NORM rows carry a trailing space, as in the real Info.txt
MINI_INFO = "\n".join(
    [
        "MIAS README (shortened)",
        "=" * 65,
        "mdb001 G CIRC B 535 425 197",
        "mdb002 G CIRC B 522 280 69",
        "mdb003 D NORM ",
        "mdb004 D NORM ",
        "mdb005 F CALC M *NOTE 3*",
        "mdb005 F CIRC B 100 900 20",
        "mdb006 F SPIC M",
        "mdb007 F NORM ",
        "",
        "=" * 65,
        "",
    ]
)


def _pgm(path: Path, size: int = 64) -> None:
    Image.fromarray(np.full((size, size), 40, np.uint8)).save(path)


def test_listing_quirks_and_missing_files(tmp_path, caplog):
    (tmp_path / "Info.txt").write_text(MINI_INFO)
    for n in (1, 2, 3, 4, 5, 6, 8):  # mdb007 listed but absent; mdb008 present but unlisted
        _pgm(tmp_path / f"mdb{n:03d}.pgm")
    source = get_source("mini-mias")
    images, lesions = source.build_manifest(tmp_path)
    assert images["image_id"].tolist() == ["mdb001", "mdb002", "mdb003", "mdb004", "mdb005", "mdb006"]
    # both left-out items are recorded for errors.csv (batch rule), with their reason
    skipped = {s["image_id"]: s["reason"] for s in source.skipped}
    assert set(skipped) == {"mdb007", "mdb008"}
    assert "no PGM file" in skipped["mdb007"] and "not listed" in skipped["mdb008"]
    assert "1 mini-MIAS images listed in Info.txt have no PGM" in caplog.text
    assert "1 mini-MIAS PGM files are not listed" in caplog.text
    assert images.set_index("image_id")["label"].to_dict() == {
        "mdb001": 0, "mdb002": 0, "mdb003": 0, "mdb004": 0, "mdb005": 1, "mdb006": 1
    }  # fmt: skip
    by_id = lesions.set_index("lesion_id")
    assert by_id.loc["mdb005_1", "roi_kind"] == "none" and by_id.loc["mdb005_1", "malignant"] == 1
    assert by_id.loc["mdb005_2", "cy"] == 64 - 900  # uses the PGM height; 1024 in the real files
    assert by_id.loc["mdb006_1", "roi_kind"] == "none" and by_id.loc["mdb006_1", "lesion_type"] == "mass"
    assert images.set_index("image_id")["patient_id"].to_dict()["mdb006"] == woman_of(5) == "mdb005_006"


def test_missing_listing_is_a_clear_error(tmp_path):
    _pgm(tmp_path / "mdb001.pgm")
    with pytest.raises(DatasetError, match=r"Info\.txt"):
        get_source("mini-mias").build_manifest(tmp_path)


def test_synth_mini_mias_layout_end_to_end(tmp_path):
    from test_source_cbis_ddsm import synth_or_skip

    summary = synth_or_skip("mini-mias", tmp_path / "mias", women=4, seed=1, height=96, width=64)
    source = get_source("mini-mias")
    images, lesions = source.build_manifest(tmp_path / "mias")
    assert len(images) == summary["images"] and images["patient_id"].nunique() == summary["women"]
    assert images["label"].sum() == summary["malignant_images"]
    assert (images["abnormality_classes"] == "NORM").sum() == summary["normal_images"]
    assert len(lesions) == summary["lesions"] and (lesions["roi_kind"] == "circle").all()
    side = summary["height"]  # square PGM
    for _, les in lesions.iterrows():
        assert source.lesion_mask(les, (side, side), tmp_path / "mias").any()
    row = images.iloc[1]
    pixels, meta = source.read_image(row, tmp_path / "mias")
    assert pixels.shape == (side, side) and (meta.laterality, meta.view) == ("L", "MLO")
