"""Physical-scale preprocessing: spacing resolution, resampling to mm per pixel, patch size in mm, and the
real files (mini-MIAS PGMs at 0.2 mm, the 8 real CBIS-DDSM DICOMs) keeping their breast height in mm."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mammokit.data.geometry import (
    SEGMENT_SIDE,
    SpacingError,
    block_mean,
    prepare_pixels,
    resolve_spacing,
    segment_breast,
)
from mammokit.io.meta import MammoMeta
from mammokit.preprocess import PreprocessSpec


def _phantom(rows: int, cols: int, breast_rows: int, breast_cols: int) -> np.ndarray:
    """A half-ellipse breast of `breast_rows` x `breast_cols` pixels against the left edge, on black."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    cy = rows / 2
    inside = ((yy + 0.5 - cy) / (breast_rows / 2)) ** 2 + ((xx + 0.5) / breast_cols) ** 2 < 1
    texture = 1000 + 300 * np.sin(yy / 9.0) * np.cos(xx / 13.0)
    return (inside * texture).astype(np.float32)


def _meta(spacing: tuple[float, float] | None, laterality: str = "L") -> MammoMeta:
    return MammoMeta(source_format="dicom", height=0, width=0, laterality=laterality, spacing_mm=spacing)


def _breast_rows(image: np.ndarray) -> int:
    rows = np.flatnonzero((image > 0).any(axis=1))
    return int(rows[-1] - rows[0] + 1)


# ----------------------------------------------------------------------------------------------- the rule


def test_resolve_spacing_prefers_the_file_then_the_user_then_the_dataset():
    assert resolve_spacing((0.07, 0.07), dataset_default=0.2, assumed=0.1) == ((0.07, 0.07), "file")
    assert resolve_spacing(None, dataset_default=0.2, assumed=0.1) == ((0.1, 0.1), "assumed")
    assert resolve_spacing(None, dataset_default=0.2) == ((0.2, 0.2), "dataset")


def test_unknown_or_implausible_spacing_says_what_to_do():
    with pytest.raises(SpacingError, match="--assume-pixel-spacing"):
        resolve_spacing(None)
    with pytest.raises(SpacingError, match=r"implausible .*0.02-1.0 mm"):
        resolve_spacing((5.0, 5.0))  # a tag in cm, or nonsense
    with pytest.raises(SpacingError, match="implausible"):
        resolve_spacing(None, assumed=0.001)


def test_imager_pixel_spacing_is_corrected_by_the_magnification_factor():
    from pydicom.dataset import Dataset

    from mammokit.io.dicom import _spacing

    ds = Dataset()
    ds.ImagerPixelSpacing = [0.1, 0.1]
    ds.EstimatedRadiographicMagnificationFactor = 1.25
    spacing, source = _spacing(ds)
    assert spacing == pytest.approx((0.08, 0.08)) and "Magnification" in source
    ds.PixelSpacing = [0.085, 0.085]  # already in the patient plane: wins, uncorrected
    assert _spacing(ds) == ((0.085, 0.085), "PixelSpacing")


# ----------------------------------------------------------------------------------------------- geometry


def test_physical_scale_resamples_to_the_target_spacing_and_pads():
    # 480 x 300 px breast at 0.1 mm = 48 x 30 mm; at 0.4 mm that is 120 x 75 px on a 160 x 128 canvas
    pixels = _phantom(600, 400, 480, 300)
    spec = PreprocessSpec(height=160, width=128, pixel_spacing=0.4, aspect="stretch")  # aspect ignored here
    image, geo = prepare_pixels(pixels, _meta((0.1, 0.1)), spec)
    assert image.shape == (160, 128)
    assert _breast_rows(image) * 0.4 == pytest.approx(48.0, rel=0.02)
    assert geo.content_height == pytest.approx(120, abs=2) and geo.content_width == pytest.approx(75, abs=2)
    assert geo.pad_left == 0 and abs(geo.pad_top - geo.pad_bottom) <= 1  # chest wall left, centred vertically
    assert geo.spacing_mm == 0.1 and geo.out_spacing_mm == pytest.approx(0.4, rel=0.02) and geo.fit_scale == 1.0
    # a lesion mask survives the round trip original -> prepared -> original
    mask = np.zeros(pixels.shape, dtype=bool)
    mask[280:320, 100:140] = True
    back = geo.to_original(geo.to_prepared(mask))
    assert (back & mask).sum() / (back | mask).sum() > 0.7
    # the same breast scanned at 0.05 mm (twice the pixels) gives the same prepared image size
    big = _phantom(1200, 800, 960, 600)
    _, geo2 = prepare_pixels(big, _meta((0.05, 0.05)), spec)
    assert abs(geo2.content_height - geo.content_height) <= 1 and abs(geo2.content_width - geo.content_width) <= 1


def test_a_breast_larger_than_the_canvas_is_shrunk_to_fit_and_recorded_never_refused():
    pixels = _phantom(600, 400, 560, 300)  # 56 mm tall at 0.1 mm
    spec = PreprocessSpec(height=128, width=128, pixel_spacing=0.5)  # canvas 64 x 64 mm
    _, geo = prepare_pixels(pixels, _meta((0.1, 0.1)), spec)
    assert geo.fit_scale == 1.0 and not geo.shrunk and geo.fit_message() is None
    tight = PreprocessSpec(height=100, width=128, pixel_spacing=0.5)  # 50 mm: 1.12x too small
    image, geo = prepare_pixels(pixels, _meta((0.1, 0.1)), tight)
    assert 1.05 < geo.fit_scale < 1.2 and geo.out_spacing_mm == pytest.approx(0.5 * geo.fit_scale, rel=0.02)
    assert _breast_rows(image) <= 100
    # 2.3x too large (the old rule refused anything beyond 1.25x): fitted, aspect kept, and said in one line
    image, geo = prepare_pixels(pixels, _meta((0.1, 0.1)), PreprocessSpec(height=48, width=128, pixel_spacing=0.5))
    assert image.shape == (48, 128) and geo.shrunk and geo.fit_scale == pytest.approx(56 / 24, rel=0.05)
    assert _breast_rows(image) <= 48
    crop_h, crop_w = geo.crop_shape
    assert geo.content_width / geo.content_height == pytest.approx(crop_w / crop_h, rel=0.05)  # aspect kept
    message = geo.fit_message()
    assert message is not None and "shrunk by 2.3" in message and "24 x 64 mm canvas" in message


def test_old_specs_with_the_retired_max_downscale_key_still_load():
    from mammokit.config import from_dict

    spec = from_dict(PreprocessSpec, {"height": 64, "width": 64, "pixel_spacing": 0.5, "max_downscale": 1.25})
    assert spec.pixel_spacing == 0.5 and not hasattr(spec, "max_downscale")
    with pytest.raises(Exception, match="unknown configuration key 'max_downscal'"):
        from_dict(PreprocessSpec, {"max_downscal": 1.25})  # a typo is still an error


def test_physical_scale_needs_a_spacing_fixed_size_does_not():
    pixels = _phantom(300, 200, 240, 150)
    with pytest.raises(SpacingError, match="--assume-pixel-spacing"):
        prepare_pixels(pixels, _meta(None), PreprocessSpec(height=128, width=96, pixel_spacing=0.5))
    image, geo = prepare_pixels(pixels, _meta(None), PreprocessSpec(height=128, width=96))
    assert image.shape == (128, 96) and geo.spacing_mm is None and geo.out_spacing_mm is None
    # an implausible tag is not an error in fixed-size mode, and is not recorded as if it were true
    _, geo = prepare_pixels(pixels, _meta((7.0, 7.0)), PreprocessSpec(height=128, width=96))
    assert geo.spacing_mm is None


def test_spec_validation_rejects_implausible_target_spacing():
    from mammokit.config import ConfigError

    with pytest.raises(ConfigError, match="pixel_spacing"):
        PreprocessSpec(pixel_spacing=3.0).validate()


# ------------------------------------------------------------------------------ batch behaviour and patches


def _png_csv(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        img = (_phantom(300, 200, 240, 150 + 10 * i) * 40).astype(np.uint16)
        Image.fromarray(img).save(folder / f"im{i}.png")
        rows.append({"path": f"im{i}.png", "label": i % 2, "patient_id": f"w{i}", "laterality": "L", "view": "CC"})
    pd.DataFrame(rows).to_csv(folder / "list.csv", index=False)
    return folder


def test_prepare_without_known_spacing_lists_every_image_in_errors_csv_and_the_assumption_fixes_it(tmp_path):
    from mammokit.cli import main

    raw = _png_csv(tmp_path / "raw")
    common = ["--root", str(raw), "--height", "96", "--width", "64", "--pixel-spacing", "0.5", "--workers", "1"]
    common += ["--no-progress", "--set", "split.test_fraction=0", "--set", "split.val_fraction=0"]
    assert main(["prepare", "csv", "--out", str(tmp_path / "a"), *common]) == 1
    errors = pd.read_csv(tmp_path / "a/errors.csv")
    assert len(errors) == 3 and set(errors["stage"]) == {"spacing"}
    assert errors["reason"].str.contains("--assume-pixel-spacing").all()

    assert main(["prepare", "csv", "--out", str(tmp_path / "b"), *common, "--assume-pixel-spacing", "0.2"]) == 0
    manifest = pd.read_parquet(tmp_path / "b/manifest.parquet")
    assert (manifest["spacing_source"] == "assumed").all() and (manifest["spacing_mm"] == 0.2).all()
    dataset = json.loads((tmp_path / "b/dataset.json").read_text())
    assert dataset["preprocess"]["pixel_spacing"] == 0.5 and dataset["assume_pixel_spacing"] == 0.2

    # patch side in mm: 20 mm at 0.5 mm per pixel = 40 px
    assert main(["patches", "--data", str(tmp_path / "b"), "--out", str(tmp_path / "p"), "--patch-mm", "20"]) == 0
    summary = json.loads((tmp_path / "p/patches.json").read_text())
    assert summary["patch_size"] == 40 and summary["patch_mm"] == pytest.approx(20.0)


def test_patch_mm_in_fixed_size_mode_needs_known_spacing(tmp_path):
    from mammokit.data.patches import PatchConfig, PatchSamplingError, sample_patches

    raw = _png_csv(tmp_path / "raw")
    from mammokit.data.prepare import prepare_dataset
    from mammokit.data.prepare_config import PrepareConfig, SplitConfig

    split = SplitConfig(val_fraction=0, test_fraction=0)
    fixed = PrepareConfig(preprocess=PreprocessSpec(height=96, width=64), split=split, workers=1)
    prepare_dataset("csv", raw, tmp_path / "fixed", fixed, progress=False)
    with pytest.raises(PatchSamplingError, match="pixel spacing"):
        sample_patches(tmp_path / "fixed", tmp_path / "p", PatchConfig(patch_mm=20.0))
    prepare_dataset(
        "csv", raw, tmp_path / "known", dataclasses.replace(fixed, assume_pixel_spacing=0.2), progress=False
    )
    summary = sample_patches(tmp_path / "known", tmp_path / "p2", PatchConfig(patch_mm=20.0))
    spacing = pd.read_parquet(tmp_path / "known/manifest.parquet")["out_spacing_mm"].median()
    assert summary["patch_size"] == round(20.0 / spacing)


def test_predict_applies_the_spacing_rule_of_a_physical_scale_run(tmp_path):
    from mammokit.cli import main
    from predict_support import silhouette_pngs, tiny_runs

    whole, _ = tiny_runs()
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    card = json.loads((run / "model.json").read_text())
    card["input"]["preprocess"]["pixel_spacing"] = 0.5  # same 256 x 192 canvas, now in mm: 128 x 96 mm
    (run / "model.json").write_text(json.dumps(card))
    (run / "model.json").chmod(0o644)
    pngs = silhouette_pngs(tmp_path / "in")
    argv = ["predict", str(run), *map(str, pngs), "--device", "cpu", "--backend", "torch"]  # no backend selection
    assert main([*argv, "--out", str(tmp_path / "a")]) == 1
    errors = pd.read_csv(tmp_path / "a/errors.csv")
    assert len(errors) == 2 and errors["error"].str.contains("--assume-pixel-spacing").all()
    assert main([*argv, "--out", str(tmp_path / "b"), "--assume-pixel-spacing", "0.2"]) == 0
    assert len(pd.read_csv(tmp_path / "b/predictions.csv")) == 2


# ------------------------------------------------------------------------------------------- real files


def _source_breast_height_mm(pixels: np.ndarray, spacing: float) -> float:
    """Breast height (mm) measured on the source pixels, with the segmentation prepare uses (same reduction)."""
    k = max(1, min(pixels.shape) // SEGMENT_SIDE)
    mask = segment_breast(block_mean(pixels, k, k))
    rows = np.flatnonzero(mask.any(axis=1))
    return (rows[-1] - rows[0] + 1) * k * spacing


@pytest.mark.realdata
def test_real_mini_mias_at_0_2_mm_keeps_the_breast_height(tmp_path):
    from conftest import mias_subset, shared_data_dir
    from mammokit.cli import main
    from mammokit.io.dicom import read_mammogram
    from mammokit.io.images import read_png16

    src = shared_data_dir("mini-mias-dev")
    names = ["mdb001", "mdb002", "mdb005", "mdb006"]  # two women, both breasts
    root = mias_subset(src, tmp_path / "mias", names)
    out = tmp_path / "out"
    argv = ["prepare", "mini-mias", "--root", str(root), "--out", str(out), "--pixel-spacing", "0.2"]
    argv += ["--height", "1152", "--width", "896", "--workers", "1", "--no-progress"]
    argv += ["--set", "split.test_fraction=0", "--set", "split.val_fraction=0"]
    assert main(argv) == 0
    manifest = pd.read_parquet(out / "manifest.parquet").set_index("image_id")
    assert set(manifest.index) == set(names)
    for name in names:
        row = manifest.loc[name]
        assert row["spacing_source"] == "dataset" and row["spacing_mm"] == 0.2
        pixels, _ = read_mammogram(src / f"{name}.pgm")
        prepared = read_png16(out / row["image_file"])
        height_mm = _breast_rows(prepared) * row["out_spacing_mm"]
        assert height_mm == pytest.approx(_source_breast_height_mm(pixels, 0.2), rel=0.02), name


@pytest.mark.realdata
def test_real_cbis_ddsm_dicoms_at_0_2_mm_keep_the_breast_height(tmp_path):
    from mammokit.cli import main
    from mammokit.data.sources import get_source
    from mammokit.io.images import read_png16
    from test_source_cbis_ddsm import _mammograms_root

    root = _mammograms_root(tmp_path)
    out = tmp_path / "out"
    argv = ["prepare", "cbis-ddsm", "--root", str(root), "--out", str(out), "--pixel-spacing", "0.2"]
    argv += ["--height", "1280", "--width", "896", "--workers", "2", "--no-progress"]
    # exit 1: the CSVs name ~3,000 images that are not among the 8 files, and each is an errors.csv row
    assert main(argv) == 1
    errors = pd.read_csv(out / "errors.csv")
    assert set(errors["stage"]) == {"manifest"}, errors[errors["stage"] != "manifest"].head().to_string()
    manifest = pd.read_parquet(out / "manifest.parquet").set_index("image_id")
    assert len(manifest) == 8 and (manifest["spacing_source"] == "dataset").all()
    assert (manifest["spacing_mm"] == 0.05).all()  # the documented CBIS-DDSM value (no tag in the files)
    source = get_source("cbis-ddsm")
    images, _ = source.build_manifest(root)
    for image_id, row in manifest.iterrows():
        pixels, _ = source.read_image(images.set_index("image_id").loc[image_id].rename(image_id), root)
        height_mm = _breast_rows(read_png16(out / row["image_file"])) * row["out_spacing_mm"]
        assert height_mm == pytest.approx(_source_breast_height_mm(pixels, 0.05), rel=0.02), image_id


def test_prepare_with_a_spacing_and_no_size_gets_the_default_canvas_in_mm(tmp_path: Path) -> None:
    from mammokit.cli import build_parser
    from mammokit.cli.prepare import resolve_config

    def canvas(*extra: str) -> tuple[int, int]:
        args = build_parser().parse_args(["prepare", "mini-mias", "--root", str(tmp_path), "--out", str(tmp_path / "o"),
                                          *extra])  # fmt: skip
        spec = resolve_config(args).preprocess
        return spec.height, spec.width

    assert canvas("--pixel-spacing", "0.6") == (384, 299)  # 230.4 x 179.2 mm, not 1152 x 896 px at 0.6 mm
    assert canvas("--pixel-spacing", "0.2") == (1152, 896)
    assert canvas("--pixel-spacing", "0.6", "--height", "344") == (344, 896)  # a size given is kept as given
    assert canvas() == (1152, 896)  # fixed-size mode as before
