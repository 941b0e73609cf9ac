"""`prepare_dataset` and `mammokit prepare` on a tiny dataset of generated files, read by a test adapter."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dicom_factory import phantom, write_mammogram
from mammokit.cli import main
from mammokit.data.geometry import Geometry
from mammokit.data.prepare import GEOMETRY_COLUMNS, PrepareError, prepare_dataset
from mammokit.data.prepare_config import PrepareConfig, SplitConfig
from mammokit.data.sources import DatasetSource, register_source
from mammokit.io.images import read_png8, read_png16
from mammokit.preprocess import PreprocessSpec

SPEC = PreprocessSpec(height=64, width=48)
SHAPE = (120, 90)  # source images (rows, cols)


def config(spec: PreprocessSpec = SPEC, *, workers: int = 1, **split: float) -> PrepareConfig:
    """A PrepareConfig with one worker process (the tests' default) and the given split fractions."""
    return PrepareConfig(preprocess=spec, split=SplitConfig(**split), workers=workers)


@register_source
class TinySource(DatasetSource):
    """Test adapter: `images.csv` and `lesions.csv` in the root, in manifest columns."""

    name = "tiny-test"
    citation = "Tiny test set (generated)"
    licence = "test"

    def build_manifest(self, root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
        images = pd.read_csv(root / "images.csv", dtype=str, keep_default_na=False)
        images["label"] = images["label"].astype(int)
        lesions = pd.read_csv(root / "lesions.csv", keep_default_na=False)
        return images, lesions


def _image_row(image_id: str, patient: str, lat: str, path: str, label: int) -> dict:
    return {"image_id": image_id, "patient_id": patient, "exam_id": patient, "laterality": lat, "view": "CC",
            "path": path, "label": label, "split": "", "dataset": "tiny-test"}  # fmt: skip


def _lesion_row(lesion_id: str, image_id: str, kind: str, **roi) -> dict:
    base = {"lesion_id": lesion_id, "image_id": image_id, "lesion_type": "mass", "pathology": "MALIGNANT",
            "malignant": 1, "roi_kind": kind, "roi_path": "", "cx": "", "cy": "", "radius": "", "polygon": "",
            "x0": "", "y0": "", "x1": "", "y1": ""}  # fmt: skip
    return {**base, **roi}


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    """8 patients: 7 good images (DICOM L/R with empty adapter laterality, PNG) and 2 bad ones."""
    root = tmp_path / "raw"
    root.mkdir()
    rows, lesions = [], []
    for i in range(6):
        side = "L" if i % 2 == 0 else "R"
        name = f"img{i}.dcm"
        write_mammogram(root / name, phantom(SHAPE, bits=12, side=side, seed=i), bits_stored=12, image_laterality=side)
        # the adapter leaves laterality empty for img0/img1: it must be filled from the DICOM tags
        rows.append(_image_row(f"img{i}", f"p{i}", "" if i < 2 else side, name, i % 2))
    Image.fromarray((phantom(SHAPE, bits=8, side="L") // 1).astype(np.uint8)).save(root / "img6.png")
    rows.append(_image_row("img6", "p6", "L", "img6.png", 0))
    data = write_mammogram(root / "broken.dcm", bits_stored=12).read_bytes()
    (root / "broken.dcm").write_bytes(data[: len(data) // 2])  # a truncated DICOM
    rows.append(_image_row("broken", "p7", "L", "broken.dcm", 0))
    write_mammogram(root / "ct.dcm", bits_stored=12, modality="CT")
    rows.append(_image_row("ct", "p8", "L", "ct.dcm", 0))

    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[50:70, 60:80] = 255  # near the chest wall of the right breast img1
    Image.fromarray(mask).save(root / "mask1.png")
    lesions += [
        _lesion_row("les-circle", "img0", "circle", cx=20.0, cy=60.0, radius=8.0),
        _lesion_row("les-mask", "img1", "mask", roi_path="mask1.png"),
        _lesion_row("les-box", "img2", "box", x0=10.0, y0=40.0, x1=30.0, y1=60.0),
        _lesion_row("les-poly", "img3", "polygon", polygon=json.dumps([[70, 40], [85, 40], [85, 60]])),
        _lesion_row("les-missing", "img4", "mask", roi_path="absent.png"),
        _lesion_row("les-none", "img5", "none"),
        _lesion_row("les-of-broken", "broken", "circle", cx=5.0, cy=5.0, radius=2.0),
    ]
    pd.DataFrame(rows).to_csv(root / "images.csv", index=False)
    pd.DataFrame(lesions).to_csv(root / "lesions.csv", index=False)
    return root


def test_prepare_end_to_end(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    report = prepare_dataset("tiny-test", raw, out, config(val_fraction=0.2, test_fraction=0.25), progress=False)
    assert not report.ok and (report.n_failed, report.n_lesion_failed) == (2, 1)
    assert report.n_written == 7 and report.n_reused == 0 and report.n_masks == 4

    manifest = pd.read_parquet(out / "manifest.parquet")
    assert list(manifest["image_id"]) == [f"img{i}" for i in range(7)]
    assert set(manifest["split"]) <= {"train", "val", "test"} and (manifest["split"] != "").all()
    assert list(manifest["laterality"][:2]) == ["L", "R"]  # filled from ImageLaterality
    assert list(manifest["flipped"]) == [False, True, False, True, False, True, False]
    assert (manifest[["orig_height", "orig_width"]].to_numpy() == SHAPE).all()
    assert not manifest["orientation_disagrees"].any()
    geo = Geometry.from_dict({c: manifest.iloc[1][c] for c in GEOMETRY_COLUMNS})  # prepared -> source grid
    assert geo.flipped and geo.to_original(np.ones((64, 48), bool)).shape == SHAPE
    for f in manifest["image_file"]:
        img = read_png16(out / f)
        assert img.shape == (64, 48) and img.max() == 65535
        assert img[:, :24].astype(float).sum() > img[:, 24:].astype(float).sum()  # chest wall left

    lesions = pd.read_parquet(out / "lesions.parquet").set_index("lesion_id")
    assert "les-of-broken" not in lesions.index  # its image failed
    assert lesions.loc["les-missing", "mask_file"] == "" and lesions.loc["les-none", "mask_file"] == ""
    m = read_png8(out / lesions.loc["les-mask", "mask_file"])
    assert set(np.unique(m)) == {0, 255}
    xs = np.nonzero(m)[1]
    assert xs.mean() < 20  # right-breast lesion near the chest wall: on the left after the flip
    for lid in ("les-circle", "les-box", "les-poly"):
        assert read_png8(out / lesions.loc[lid, "mask_file"]).any()

    errors = pd.read_csv(out / "errors.csv", keep_default_na=False)
    by_id = {(r.image_id, r.lesion_id): r for r in errors.itertuples()}
    assert "Modality is 'CT'" in by_id[("ct", "")].reason and by_id[("ct", "")].stage == "read"
    assert "truncated or corrupt" in by_id[("broken", "")].reason
    assert "mask file not found" in by_id[("img4", "les-missing")].reason

    info = json.loads((out / "dataset.json").read_text())
    assert info["counts"]["images"] == 7 and info["counts"]["images_failed"] == 2
    assert info["counts"]["lesion_masks"] == 4 and info["citation"] == "Tiny test set (generated)"
    assert info["preprocess"]["height"] == 64 and len(info["config_hash"]) == 16


def test_resume_skips_valid_outputs_and_redoes_damaged_ones(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    prepare_dataset("tiny-test", raw, out, config(), progress=False)
    first_manifest = pd.read_parquet(out / "manifest.parquet")
    first_json = (out / "dataset.json").read_text()
    first_pixels = read_png16(out / "images/img3.png")

    again = prepare_dataset("tiny-test", raw, out, config(), progress=False)
    # img4 has a failed lesion, so it is retried; everything else is reused
    assert (again.n_reused, again.n_written, again.n_failed) == (6, 1, 2)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "manifest.parquet"), first_manifest)
    assert (out / "dataset.json").read_text() == first_json  # idempotent

    # a killed run: one record missing, one image half-written, a temporary file left behind
    (out / "records/img2.json").unlink()
    data = (out / "images/img3.png").read_bytes()
    (out / "images/img3.png").write_bytes(data[:10])
    (out / "images/.img5.abc.tmp.png").write_bytes(b"partial")
    resumed = prepare_dataset("tiny-test", raw, out, config(), progress=False)
    assert (resumed.n_reused, resumed.n_written) == (4, 3)  # img2, img3 redone (+ img4 retried)
    np.testing.assert_array_equal(read_png16(out / "images/img3.png"), first_pixels)
    assert not list((out / "images").glob(".*tmp*"))

    # another configuration invalidates every record
    changed = prepare_dataset("tiny-test", raw, out, config(dataclasses.replace(SPEC, aspect="pad")), progress=False)
    assert (changed.n_reused, changed.n_written) == (0, 7)


def test_two_workers_give_the_same_result(raw: Path, tmp_path: Path) -> None:
    one = prepare_dataset("tiny-test", raw, tmp_path / "one", config(workers=1), progress=False)
    two = prepare_dataset("tiny-test", raw, tmp_path / "two", config(workers=2), progress=False)
    assert (two.n_written, two.n_failed, two.config_hash) == (one.n_written, one.n_failed, one.config_hash)
    for i in range(7):
        a = read_png16(tmp_path / f"one/images/img{i}.png")
        np.testing.assert_array_equal(a, read_png16(tmp_path / f"two/images/img{i}.png"))


@register_source
class CrashingSource(TinySource):
    """Kills the worker process (as an out-of-memory kill or a codec segfault would) on image img3."""

    name = "tiny-test-crashing"

    def read_image(self, row: pd.Series, root: Path, **options):
        if row["image_id"] == "img3" and os.getpid() != self.options["parent_pid"]:
            os._exit(1)
        return super().read_image(row, root, **options)


def test_a_dying_worker_fails_only_its_image(raw: Path, tmp_path: Path) -> None:
    report = prepare_dataset(
        "tiny-test-crashing",
        raw,
        tmp_path / "out",
        dataclasses.replace(config(workers=2), source_options={"parent_pid": os.getpid()}),
        progress=False,
    )
    crashed = [e for e in report.errors if e["image_id"] == "img3"]
    assert len(crashed) == 1 and "worker process died" in crashed[0]["reason"]
    # images finished just before the crash may be re-checked and then count as reused
    assert report.n_written + report.n_reused == 6 and report.n_failed == 3  # img3 + the two bad files


def test_no_images_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    pd.DataFrame(columns=list(_image_row("a", "b", "L", "c", 0))).to_csv(root / "images.csv", index=False)
    pd.DataFrame(columns=list(_lesion_row("a", "b", "none"))).to_csv(root / "lesions.csv", index=False)
    with pytest.raises(PrepareError, match="no images found"):
        prepare_dataset("tiny-test", root, tmp_path / "out", config(), progress=False)


def test_cli_prepare_exit_status_and_config(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    args = ["prepare", "tiny-test", "--root", str(raw), "--out", str(out), "--height", "64", "--width", "48"]
    status = main([*args, "--workers", "1", "--set", "preprocess.aspect=pad", "--seed", "3"])
    assert status == 1  # two bad files
    assert "FAILED: 2 image(s), 1 lesion(s)" in capsys.readouterr().out
    config = (out / "config.yaml").read_text()
    assert "aspect: pad" in config and "seed: 3" in config and "height: 64" in config
    assert json.loads((out / "dataset.json").read_text())["preprocess"]["aspect"] == "pad"

    # only good files -> exit 0
    images = pd.read_csv(raw / "images.csv", dtype=str, keep_default_na=False)
    images[~images["image_id"].isin(["ct", "broken"])].to_csv(raw / "images.csv", index=False)
    lesions = pd.read_csv(raw / "lesions.csv", keep_default_na=False)
    lesions[lesions["lesion_id"] != "les-missing"].to_csv(raw / "lesions.csv", index=False)
    assert main([*args, "--workers", "1"]) == 0

    assert main(["prepare", "no-such-set", "--root", str(raw), "--out", str(out)]) == 2
    assert "unknown dataset" in capsys.readouterr().err
    assert main(["prepare", "mini-mias", "--root", str(raw), "--out", str(out), "--set", "source_options.x=1"]) == 2
    assert "source_options do not fit the mini-mias adapter" in capsys.readouterr().err
    assert main(["prepare", "tiny-test", "--root", str(tmp_path / "absent"), "--out", str(out)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main([*args, "--set", "preprocess.aspectt=pad"]) == 2
    assert "did you mean 'preprocess.aspect'" in capsys.readouterr().err


@pytest.mark.realdata
def test_prepare_real_mini_mias_pair(tmp_path: Path) -> None:
    from conftest import mias_subset, shared_data_dir

    # one woman: right (odd) and left (even) MLO
    root = mias_subset(shared_data_dir("mini-mias-dev"), tmp_path / "mias", ["mdb001", "mdb002"])
    spec = PreprocessSpec(height=144, width=112)
    report = prepare_dataset(
        "mini-mias", root, tmp_path / "out", config(spec, val_fraction=0.0, test_fraction=0.0), progress=False
    )
    assert report.ok and report.n_written == 2
    manifest = pd.read_parquet(tmp_path / "out/manifest.parquet").set_index("image_id")
    assert manifest.loc["mdb001", "flipped"] and not manifest.loc["mdb002", "flipped"]
    lesions = pd.read_parquet(tmp_path / "out/lesions.parquet").set_index("lesion_id")
    # mdb001: CIRC B 535 425 197 (origin bottom-left) -> a large circle in the lower-middle of the breast
    mask = read_png8(tmp_path / "out" / lesions.loc["mdb001_1", "mask_file"]) > 0
    assert 0.1 < mask.mean() < 0.5
    for image_id in manifest.index:
        img = read_png16(tmp_path / "out" / manifest.loc[image_id, "image_file"])
        assert img[:, :56].astype(float).sum() > img[:, 56:].astype(float).sum()  # chest wall on the left


def test_split_file_reproduces_a_published_split(tmp_path):
    """prepare writes splits.csv; feeding it back with --split-file gives exactly the same split."""
    from mammokit.cli import main

    raw = tmp_path / "raw"
    from mammokit.synth import SynthConfig, generate

    generate(raw, SynthConfig(layout="mini-mias", women=12, seed=3, height=128, width=128))
    first, second = tmp_path / "a", tmp_path / "b"
    common = ["--root", str(raw), "--height", "64", "--width", "48", "--workers", "1", "--no-progress"]
    assert main(["prepare", "mini-mias", "--out", str(first), "--seed", "1", *common]) == 0
    published = first / "splits.csv"
    assert published.is_file()
    # a different seed would give another split, but the split file wins
    argv = ["prepare", "mini-mias", "--out", str(second), "--seed", "99", "--split-file", str(published), *common]
    assert main(argv) == 0
    a = pd.read_parquet(first / "manifest.parquet").set_index("image_id")["split"].sort_index()
    b = pd.read_parquet(second / "manifest.parquet").set_index("image_id")["split"].sort_index()
    assert a.equals(b)
    assert set(a) >= {"train", "test"}
