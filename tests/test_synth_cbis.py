"""`generate(layout="cbis-ddsm")`: a DICOM tree and case-description CSVs in the format of the real release."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from mammokit.config import ConfigError, load_config
from mammokit.synth import SynthConfig, generate
from mammokit.synth.cbis import CALC_HEADER, CSV_NAMES, MASS_HEADER

H, W = 160, 128


@pytest.fixture(scope="module")
def cbis(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("cbis") / "CBIS-DDSM"
    summary = generate(
        out, SynthConfig(layout="cbis-ddsm", women=8, seed=1, height=H, width=W, mask_quirk_fraction=0.3)
    )
    return out, summary


def _read(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / name, keep_default_na=False, dtype=str)


def test_csvs_have_the_real_headers_crlf_and_embedded_newline(cbis):
    out, summary = cbis
    assert set(summary["csv"]) == set(CSV_NAMES.values())
    for name in CSV_NAMES.values():
        raw = (out / name).read_bytes()
        header = raw.split(b"\r\n", 1)[0].decode()
        assert header == ",".join(MASS_HEADER if name.startswith("mass") else CALC_HEADER)
        # every record ends with CRLF; the only bare LF is the one inside the quoted path
        assert raw.endswith(b"\r\n")
        n_rows = len(_read(out, name))
        assert raw.count(b'\n"') == n_rows
        assert raw.count(b"\r\n") == n_rows + 1


def test_csvs_match_the_real_files(cbis, cbis_csv_dir):
    """Same header line, same value sets (our values are a subset of the real ones)."""
    out, _ = cbis
    for name in CSV_NAMES.values():
        real = _read(cbis_csv_dir, name)
        ours = _read(out, name)
        assert list(ours.columns) == list(real.columns)
        assert (cbis_csv_dir / name).read_bytes().split(b"\r\n", 1)[0] == (out / name).read_bytes().split(b"\r\n", 1)[0]
        for col in real.columns[1:11]:
            extra = set(ours[col]) - set(real[col])
            assert not extra, (name, col, extra)
        # the newline-bearing path column is the same one as in the real file
        for col in real.columns[11:]:
            assert real[col].str.endswith("\n").any() == ours[col].str.endswith("\n").any() or ours.empty


def test_every_path_exists_and_patient_id_is_the_folder(cbis):
    out, summary = cbis
    n_rows = 0
    for name in CSV_NAMES.values():
        df = _read(out, name)
        n_rows += len(df)
        assert df["patient_id"].str.fullmatch(r"P_\d{5}").all()
        for _, row in df.iterrows():
            full = row["image file path"].strip()
            folder, study, series, fname = full.split("/")
            kind = "Mass" if name.startswith("mass") else "Calc"
            split = "Training" if "train" in name else "Test"
            assert folder == f"{kind}-{split}_{row['patient_id']}_{row['left or right breast']}_{row['image view']}"
            ds = pydicom.dcmread(out / full)
            assert ds.PatientID == folder == str(ds.PatientName)
            assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, fname) == (study, series, "000000.dcm")
            for col in ("cropped image file path", "ROI mask file path"):
                path = row[col].strip()
                assert path.split("/")[0] == f"{folder}_{row['abnormality id']}"
                assert (out / path).is_file()
    assert n_rows == summary["lesions"]


def test_dicom_headers_as_in_the_real_files(cbis):
    out, _ = cbis
    df = _read(out, CSV_NAMES[("mass", "Training")])
    ds = pydicom.dcmread(out / df["image file path"].iloc[0].strip())
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert ds.Modality == "MG" and ds.PhotometricInterpretation == "MONOCHROME2"
    assert (ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (16, 16, 0)
    assert "ImageLaterality" not in ds and "ViewPosition" not in ds and "PixelSpacing" not in ds
    assert ds.Laterality == df["left or right breast"].iloc[0][0]
    assert ds.PatientOrientation == df["image view"].iloc[0]
    assert ds.SeriesDescription == "full mammogram images"
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
        assert uid.is_valid
    px = ds.pixel_array
    assert px.dtype == np.uint16 and px.shape == (H, W)


def test_orientation_follows_laterality(cbis):
    out, _ = cbis
    for name in CSV_NAMES.values():
        for _, row in _read(out, name).iterrows():
            px = pydicom.dcmread(out / row["image file path"].strip()).pixel_array.astype(float)
            left, right = px[:, : W // 8].mean(), px[:, -W // 8 :].mean()
            assert (left > right) == (row["left or right breast"] == "LEFT")


def test_masks_and_crops_tell_apart_by_content_and_quirks_present(cbis):
    out, _ = cbis
    quirks = {"mass": 0, "calc": 0}
    for name in CSV_NAMES.values():
        kind = "mass" if name.startswith("mass") else "calc"
        for _, row in _read(out, name).iterrows():
            full = pydicom.dcmread(out / row["image file path"].strip()).pixel_array
            mask = pydicom.dcmread(out / row["ROI mask file path"].strip()).pixel_array
            crop = pydicom.dcmread(out / row["cropped image file path"].strip()).pixel_array
            assert mask.shape == full.shape and set(np.unique(mask)) == {0, 255}
            assert crop.shape[0] < full.shape[0] and crop.dtype == np.uint16 and len(np.unique(crop)) > 20
            crop_name = row["cropped image file path"].strip().rsplit("/", 1)[1]
            mask_name = row["ROI mask file path"].strip().rsplit("/", 1)[1]
            if kind == "mass":
                assert crop_name == "000000.dcm"
                quirks["mass"] += mask_name == "000000.dcm"
            else:
                assert mask_name == "000000.dcm"
                quirks["calc"] += crop_name == "000000.dcm"
            same_dir = (
                row["cropped image file path"].strip().rsplit("/", 1)[0]
                == row["ROI mask file path"].strip().rsplit("/", 1)[0]
            )
            assert same_dir == (crop_name != mask_name)
            # the lesion lies in the breast and is brighter than its surroundings
            assert full[mask > 0].mean() > np.median(full)
    assert quirks["mass"] + quirks["calc"] > 0


def test_splits_disjoint_within_type_and_no_normal_images(cbis):
    out, summary = cbis
    for kind in ("mass", "calcification"):
        train = set(_read(out, CSV_NAMES[(kind, "Training")])["patient_id"])
        test = set(_read(out, CSV_NAMES[(kind, "Test")])["patient_id"])
        assert not train & test
    assert summary["normal_images"] == 0
    assert summary["images"] >= 2 * summary["women"]


def test_same_seed_gives_identical_pixels_and_files(tmp_path, cbis):
    out, _ = cbis
    again = tmp_path / "again"
    generate(again, SynthConfig(layout="cbis-ddsm", women=8, seed=1, height=H, width=W, mask_quirk_fraction=0.3))
    first = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    second = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert first == second
    for rel in first:
        if rel.suffix == ".dcm":
            a, b = pydicom.dcmread(out / rel), pydicom.dcmread(again / rel)
            assert a.PixelData == b.PixelData
        assert (out / rel).read_bytes() == (again / rel).read_bytes()
    other = tmp_path / "other"
    generate(other, SynthConfig(layout="cbis-ddsm", women=2, seed=2, height=H, width=W))
    df = _read(other, CSV_NAMES[("mass", "Training")])
    assert not (set(df["image file path"]) & set(_read(out, CSV_NAMES[("mass", "Training")])["image file path"]))


def _digests(out: Path) -> dict[str, str]:
    """sha256 of every file under `out`, by relative path."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}


def _comparable(summary: dict, out: Path) -> dict:
    """The summary without its timing and with the output folder taken out of the paths."""
    rest = {k: v for k, v in summary.items() if k not in ("seconds", "out", "csv")}
    return {**rest, "csv": {name: str(Path(path).relative_to(out)) for name, path in summary["csv"].items()}}


def test_workers_write_the_same_files_and_summary(tmp_path, cbis):
    """Women rendered and written in 2 processes: the same files, byte for byte, and the same counts."""
    out, summary = cbis
    parallel = tmp_path / "parallel"
    cfg = SynthConfig(layout="cbis-ddsm", women=8, seed=1, height=H, width=W, mask_quirk_fraction=0.3)
    parallel_summary = generate(parallel, cfg, workers=2)
    assert _digests(parallel) == _digests(out)
    assert _comparable(parallel_summary, parallel) == _comparable(summary, out)


def test_csv_parses_with_the_csv_module_into_14_fields(cbis):
    out, _ = cbis
    with open(out / CSV_NAMES[("calcification", "Training")], newline="") as fh:
        rows = list(csv.reader(fh))
    assert all(len(r) == 14 for r in rows)


def test_bad_arguments_are_reported(tmp_path):
    with pytest.raises(ValueError, match="unknown layout"):
        generate(tmp_path / "x", SynthConfig(layout="ddsm", women=1, seed=0, height=H, width=W))
    with pytest.raises(ValueError, match="mask_quirk_fraction must lie in"):
        generate(tmp_path / "x", SynthConfig(women=1, height=H, width=W, mask_quirk_fraction=1.5))
    with pytest.raises(ValueError, match="normal_fraction"):
        generate(tmp_path / "x", SynthConfig(women=1, height=H, width=W, normal_fraction=-0.1))
    with pytest.raises(ConfigError, match="colour"):  # an unknown key in a YAML file or --set
        load_config(SynthConfig, overrides=["colour=1"])
    with pytest.raises(ValueError, match="at least 1"):
        generate(tmp_path / "x", SynthConfig(layout="cbis-ddsm", women=0, seed=0, height=H, width=W))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        generate(tmp_path / "full", SynthConfig(layout="cbis-ddsm", women=1, seed=0, height=H, width=W))


def test_synth_config_defaults_are_the_sampler_and_writer_defaults():
    """`SynthConfig()` draws the same cohort as the sampler and the CBIS-DDSM writer do by default."""
    import dataclasses
    import inspect

    from mammokit.synth.cbis import CbisOptions
    from mammokit.synth.config import CBIS_OPTIONS, SAMPLING_OPTIONS
    from mammokit.synth.sampling import sample_woman

    cfg = SynthConfig()
    sampler = inspect.signature(sample_woman).parameters
    assert cfg.sampling_options() == {name: sampler[name].default for name in SAMPLING_OPTIONS}
    assert tuple(f.name for f in dataclasses.fields(CbisOptions)) == CBIS_OPTIONS
    assert cfg.layout_options() == dataclasses.asdict(CbisOptions())
    assert SynthConfig(layout="inbreast").layout_options() == {}
