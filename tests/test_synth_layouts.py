"""INbreast and mini-MIAS layouts of the phantom, and the `mammokit synth` command."""

from __future__ import annotations

import hashlib
import json
import os
import plistlib
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from mammokit.cli import main
from mammokit.synth import SynthConfig, generate, render_view, sample_women
from mammokit.synth.mias import refnum

H, W = 160, 128


# ------------------------------------------------------------------------------------------------ INbreast


@pytest.fixture(scope="module")
def inbreast(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("inbreast") / "INbreast"
    return out, generate(out, SynthConfig(layout="inbreast", women=5, seed=4, height=H, width=W, normal_fraction=0.3))


def test_inbreast_csv_format_and_labels(inbreast):
    out, summary = inbreast
    raw = (out / "INbreast.csv").read_bytes()
    assert raw.split(b"\r\n", 1)[0] == b"Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads"
    df = pd.read_csv(out / "INbreast.csv", sep=";", dtype=str, keep_default_na=False)
    assert len(df) == summary["images"] == 20
    assert set(df["Patient ID"]) == {"removed"} and set(df["Patient age"]) == {"removed"}
    assert set(df["Laterality"]) <= {"L", "R"} and set(df["View"]) <= {"CC", "MLO"}
    assert df["File Name"].str.fullmatch(r"\d{8}").all() and df["File Name"].is_unique
    assert df["Acquisition date"].str.fullmatch(r"20(08|09|10)(0[1-9]|1[0-2])").all()
    assert set(df["ACR"]) <= {"1", "2", "3", "4"}
    assert set(df["Bi-Rads"]) <= {"1", "2", "3", "4a", "4b", "4c", "5", "6"}
    malignant = df["Bi-Rads"].str[0].astype(int) >= 4
    assert malignant.sum() == summary["malignant_images"]
    assert (df["Bi-Rads"] == "1").sum() == summary["normal_images"] > 0


def test_inbreast_dicoms_and_xml(inbreast):
    out, _ = inbreast
    df = pd.read_csv(out / "INbreast.csv", sep=";", dtype=str, keep_default_na=False)
    files = sorted((out / "AllDICOMs").glob("*.dcm"))
    assert len(files) == len(df)
    pattern = re.compile(r"^(\d{8})_([0-9a-f]{16})_MG_([LR])_(CC|MLO)_ANON\.dcm$")
    n_xml = 0
    for path in files:
        m = pattern.match(path.name)
        assert m, path.name
        row = df[df["File Name"] == m.group(1)].iloc[0]
        assert (row["Laterality"], row["View"]) == (m.group(3), m.group(4))
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == pydicom.uid.DigitalMammographyXRayImageStorageForPresentation
        assert ds.Modality == "MG" and ds.PhotometricInterpretation == "MONOCHROME2"
        assert (ds.ImageLaterality, ds.ViewPosition, ds.PatientID) == (m.group(3), m.group(4), m.group(2))
        px = ds.pixel_array
        assert px.shape == (H, W) and px.max() < 2**ds.BitsStored
        # chest wall on the laterality's side
        assert (px[:, :8].mean() > px[:, -8:].mean()) == (m.group(3) == "L")
        xml = out / "AllXML" / f"{m.group(1)}.xml"
        assert xml.exists() == (row["Bi-Rads"] != "1")
        if xml.exists():
            n_xml += 1
            _check_plist(xml, px)
    assert n_xml == int((df["Bi-Rads"] != "1").sum()) > 0  # one XML per image with findings, and there are some


def _check_plist(path: Path, px: np.ndarray) -> None:
    with open(path, "rb") as fh:
        image = plistlib.load(fh)["Images"][0]
    assert image["ImageIndex"] == 0 and image["NumberOfROIs"] == len(image["ROIs"]) > 0
    for i, roi in enumerate(image["ROIs"]):
        assert list(roi) == sorted(roi) and roi["IndexInImage"] == i
        assert roi["Name"] in {"Mass", "Calcification", "Cluster"}
        assert roi["NumberOfPoints"] == len(roi["Point_px"]) == len(roi["Point_mm"])
        assert (roi["NumberOfPoints"] == 1) == (roi["Name"] == "Calcification")
        for text in roi["Point_px"]:
            x, y = (float(v) for v in text.strip("()").split(", "))
            assert 0 <= x < px.shape[1] + 2 and 0 <= y < px.shape[0] + 2
    # Positional parsers: children [1], [3], [5] of the image dict are ImageIndex, NumberOfROIs and ROIs.
    text = path.read_text()
    keys = re.findall(r"<key>(\w+)</key>", text)
    assert keys[:4] == ["Images", "ImageIndex", "NumberOfROIs", "ROIs"]


# ------------------------------------------------------------------------------------------------ mini-MIAS


@pytest.fixture(scope="module")
def mias(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("mias") / "mini-mias"
    return out, generate(out, SynthConfig(layout="mini-mias", women=6, seed=2, height=H, width=W, normal_fraction=0.4))


def _listing(out: Path) -> list[str]:
    lines = (out / "Info.txt").read_text().split("\n")
    rules = [i for i, line in enumerate(lines) if line.startswith("=====")]
    return [line for line in lines[rules[-2] + 1 : rules[-1]] if line.strip()]


def test_mias_pgm_files_and_pairs(mias):
    out, summary = mias
    side = max(H, W)
    names = sorted(p.stem for p in out.glob("*.pgm"))
    assert names == [f"mdb{i:03d}" for i in range(1, 13)] and summary["images"] == 12
    for name in names:
        raw = (out / f"{name}.pgm").read_bytes()
        header = f"P5\n{side} {side}\n255\n".encode()
        assert raw.startswith(header) and len(raw) == len(header) + side * side
        px = np.frombuffer(raw[len(header) :], dtype=np.uint8).reshape(side, side)
        # odd numbers are right breasts (chest wall right), even numbers left
        number = int(name[3:])
        assert (px[:, : side // 4].mean() > px[:, -side // 4 :].mean()) == (number % 2 == 0)


def test_mias_info_listing_matches_the_real_format(mias):
    out, summary = mias
    text = (out / "Info.txt").read_text()
    assert "\r" not in text and text.isascii()
    rows = _listing(out)
    row_re = re.compile(r"^mdb\d{3} [FGD] ((CALC|CIRC|SPIC|MISC) [BM] \d+ \d+ \d+|NORM )$")
    assert all(row_re.match(r) for r in rows), rows
    assert sum(r.endswith("NORM ") for r in rows) == summary["normal_images"] > 0
    assert sum(" M " in r for r in rows) == summary["malignant_lesions"]
    assert {r.split()[0] for r in rows} == {p.stem for p in out.glob("*.pgm")}


def test_mias_coordinates_have_a_bottom_left_origin(mias, tmp_path):
    out, _ = mias
    women = sample_women(6, seed=2, normal_fraction=0.4)
    side = max(H, W)
    left_pad = (side - W) // 2
    for row in _listing(out):
        parts = row.split()
        if parts[2] == "NORM":
            continue
        number = int(parts[0][3:])
        woman, lat = women[(number - 1) // 2], "R" if number % 2 else "L"
        assert refnum(woman.index, lat) == parts[0]
        view = render_view(woman, lat, "MLO", height=H, width=W)
        x, y = int(parts[4]), int(parts[5])
        hits = [les for les in view.lesions if les.mask[side - y, x - left_pad]]
        assert hits, row


def test_mias_refuses_more_women_than_three_digit_numbers_allow(tmp_path):
    with pytest.raises(ValueError, match="at most 499 women"):
        generate(tmp_path / "m", SynthConfig(layout="mini-mias", women=500, seed=0, height=H, width=W))
    assert not (tmp_path / "m").exists()


def test_mias_adapter_reads_the_phantom(mias):
    from mammokit.data.sources import get_source

    out, summary = mias
    images, lesions = get_source("mini-mias").build_manifest(out)
    assert len(images) == summary["images"]
    assert int(images["label"].sum()) == summary["malignant_images"]
    assert len(lesions) == summary["lesions"]


def test_inbreast_adapter_reads_the_phantom(inbreast):
    from mammokit.data.sources import get_source

    out, summary = inbreast
    images, _ = get_source("inbreast").build_manifest(out)
    assert len(images) == summary["images"]
    assert int((images["label"] == 1).sum()) == summary["malignant_images"]


# ------------------------------------------------------------------------------------------------ workers


def _digests(out: Path) -> dict[str, str]:
    """sha256 of every file under `out`, by relative path."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}


def _comparable(summary: dict, out: Path) -> dict:
    """The summary without its timing and with the output folder taken out of the paths."""
    rest = {k: v for k, v in summary.items() if k not in ("seconds", "out", "csv")}
    return {**rest, "csv": {name: str(Path(path).relative_to(out)) for name, path in summary["csv"].items()}}


@pytest.mark.parametrize(
    ("layout", "fixture", "women", "seed", "normal_fraction"),
    [("inbreast", "inbreast", 5, 4, 0.3), ("mini-mias", "mias", 6, 2, 0.4)],
)
def test_workers_write_the_same_files_and_summary(tmp_path, request, layout, fixture, women, seed, normal_fraction):
    """Women rendered and written in 2 processes: the same files, byte for byte, and the same counts."""
    out, summary = request.getfixturevalue(fixture)
    parallel = tmp_path / "parallel"
    cfg = SynthConfig(layout=layout, women=women, seed=seed, height=H, width=W, normal_fraction=normal_fraction)
    parallel_summary = generate(parallel, cfg, workers=2)
    assert _digests(parallel) == _digests(out)
    assert _comparable(parallel_summary, parallel) == _comparable(summary, out)


def _index_and_pid(woman) -> tuple[int, int]:
    time.sleep(0.2 if woman.index == 0 else 0.0)  # the first woman finishes last
    return woman.index, os.getpid()


def _fail_on_second(woman) -> int:
    if woman.index == 1:
        raise RuntimeError(f"woman {woman.index} failed")
    return woman.index


def test_map_women_keeps_cohort_order_uses_processes_and_raises():
    from mammokit.synth.parallel import map_women

    cohort = sample_women(7, seed=0)
    inline = list(map_women(_index_and_pid, cohort, 1))
    assert inline == [(i, os.getpid()) for i in range(7)]
    parallel = list(map_women(_index_and_pid, cohort, 2))
    assert [index for index, _ in parallel] == list(range(7))
    assert os.getpid() not in {pid for _, pid in parallel}
    with pytest.raises(RuntimeError, match="woman 1 failed"):
        list(map_women(_fail_on_second, cohort, 2))


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--layout", "--out", "--women", "--seed", "--height", "--width", "--malignant-fraction", "--normal-fraction",
        "--mass-fraction", "--second-lesion-fraction", "--test-fraction", "--cross-fraction",
        "--mask-quirk-fraction", "--overwrite", "--workers", "--config", "--set",
    ):  # fmt: skip
        assert flag in text
    assert "default 576" in text and "cbis-ddsm" in text and "mini-mias" in text


def test_cli_writes_the_layout_and_synth_json(tmp_path, capsys):
    out = tmp_path / "cbis"
    argv = ["synth", "--layout", "cbis-ddsm", "--out", str(out), "--women", "2", "--seed", "1"]
    assert main([*argv, "--height", "96", "--width", "64", "--set", "mask_quirk_fraction=1.0"]) == 0
    meta = json.loads((out / "synth.json").read_text())
    assert meta["config"]["seed"] == 1 and meta["config"]["mask_quirk_fraction"] == 1.0
    assert meta["summary"]["women"] == 2 and meta["summary"]["height"] == 96
    assert (out / "mass_case_description_train_set.csv").exists()
    assert not (out / ".mammokit-synth-partial").exists()
    # a second run into the same folder is refused with a clear message, exit status 2
    assert main([*argv, "--height", "96", "--width", "64"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main([*argv, "--height", "96", "--width", "64", "--overwrite", "--workers", "2"]) == 0
    assert json.loads((out / "synth.json").read_text())["summary"]["women"] == 2
    assert main(["synth", "--out", str(tmp_path / "x"), "--malignant-fraction", "1.5"]) == 2
    assert "malignant_fraction" in capsys.readouterr().err


@pytest.mark.slow
def test_issue_command_cbis_20_women(tmp_path):
    """`mammokit synth --layout cbis-ddsm --out DIR --women 20 --seed 1` at the CLI's default size, twice."""
    from mammokit.synth.cbis import CSV_NAMES, MASS_HEADER

    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert main(["synth", "--layout", "cbis-ddsm", "--out", str(out), "--women", "20", "--seed", "1"]) == 0
    frames = [pd.read_csv(outs[0] / name, keep_default_na=False, dtype=str) for name in CSV_NAMES.values()]
    assert list(frames[0].columns) == list(MASS_HEADER)
    rows = pd.concat(frames)
    assert rows["patient_id"].nunique() == 20
    for path in rows["image file path"].str.strip():
        a, b = pydicom.dcmread(outs[0] / path), pydicom.dcmread(outs[1] / path)
        assert a.pixel_array.shape == (576, 448) and a.PixelData == b.PixelData
