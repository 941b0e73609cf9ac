"""A breast larger than the canvas is fitted, never refused: prepare, predict and evaluate agree on it.

The hold-out run of the mini-MIAS recipe refused both films of a woman whose breasts fill the film (~205 x 201 mm)
because they did not fit the 206 x 154 mm canvas. Here a real development film is made larger still (mdb133, the
widest development breast, 205 x 185 mm, tiled with its own mirror image across the chest wall into one breast
~370 mm wide), and goes through `prepare` and `predict` like any other: shrunk to fit, its scale recorded in the
manifest, predictions.csv/json and the evaluation's metrics, one warning line naming it, and predict on the raw
file equal to evaluate on the prepared PNG.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammokit.cli import main
from mammokit.config import from_dict
from mammokit.data.geometry import segment_reduced
from mammokit.io.dicom import read_mammogram
from mammokit.preprocess import PreprocessSpec
from mammokit.synth.mias import pgm_bytes
from predict_support import make_tiny_runs

SPACING, HW = 0.6, (344, 299)  # the recipe's canvas: 206 x 179 mm
NAMES = ["mdb001", "mdb002", "mdb133", "mdb134"]


def _large_breast_folder(src: Path, dest: Path) -> Path:
    """mini-MIAS layout: mdb001/002 and mdb134 as they are, mdb133 tiled with its mirror image (twice as wide)."""
    from conftest import mias_subset

    raw = mias_subset(src, dest, NAMES)
    pixels, _ = read_mammogram(src / "mdb133.pgm")
    _, _, x0, x1 = segment_reduced(pixels).crop_box  # the breast's columns, as prepare finds them
    breast = pixels[:, x0:x1]
    chest_wall_right = x1 - pixels.shape[1] > -x0  # the breast touches (nearly) the right edge
    # mirrored across the chest wall: the two halves meet there and make one breast twice as wide
    tiled = np.concatenate([breast, breast[:, ::-1]] if chest_wall_right else [breast[:, ::-1], breast], axis=1)
    (raw / "mdb133.pgm").unlink()
    (raw / "mdb133.pgm").write_bytes(pgm_bytes(np.clip(tiled, 0, 255).astype(np.uint8)))
    return raw


def _predict(run: Path, items: list[tuple[str, Path]], out: Path, tta: bool) -> pd.DataFrame:
    listing = out.parent / f"{out.name}.csv"
    with open(listing, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "image_id"])
        writer.writerows([(path, image_id) for image_id, path in items])
    args = ["predict", str(run), str(listing), "--out", str(out), "--device", "cpu", "--backend", "torch",
            "--assume-pixel-spacing", "0.2", "--no-progress", "--tta" if tta else "--no-tta"]  # fmt: skip
    assert main(args) == 0
    return pd.read_csv(out / "predictions.csv", dtype={"image_id": str}).set_index("image_id")


@pytest.mark.realdata
def test_a_real_film_larger_than_the_canvas_is_fitted_in_prepare_predict_and_evaluate(
    tmp_path: Path, mias_dev_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw = _large_breast_folder(mias_dev_dir, tmp_path / "raw")
    prepared = tmp_path / "prepared"
    args = ["prepare", "mini-mias", "--root", str(raw), "--out", str(prepared), "--pixel-spacing", str(SPACING),
            "--height", str(HW[0]), "--width", str(HW[1]), "--workers", "1", "--no-progress",
            "--set", "split.test_fraction=0", "--set", "split.val_fraction=0"]  # fmt: skip
    with caplog.at_level(logging.WARNING):
        assert main(args) == 0, (prepared / "errors.csv").read_text()  # nothing refused
    table = pd.read_parquet(prepared / "manifest.parquet").set_index("image_id")
    assert sorted(table.index) == NAMES
    fit = table["fit_scale"]
    # ~370 mm wide on a 179 mm canvas; the other films fit (mdb134, 185 mm wide, by 1.03x)
    assert 1.9 < fit["mdb133"] < 2.3 and fit["mdb001"] == 1.0 and fit["mdb134"] < 1.1
    assert table.at["mdb133", "out_spacing_mm"] == pytest.approx(SPACING * fit["mdb133"], rel=0.02)
    shrunk_lines = [r.getMessage() for r in caplog.records if "canvas" in r.getMessage()]
    assert any(m.startswith("mdb133: the breast (205 x 3") and "206 x 179 mm canvas: shrunk by 2." in m
               for m in shrunk_lines), shrunk_lines  # fmt: skip
    counts = json.loads((prepared / "dataset.json").read_text())["counts"]
    assert counts["images_shrunk_to_fit"] == int((fit > 1.0).sum()) and counts["max_fit_scale"] == fit.max()

    spec = from_dict(PreprocessSpec, json.loads((prepared / "dataset.json").read_text())["preprocess"])
    run, _ = make_tiny_runs(tmp_path / "runs", HW, spec=spec)
    items = [(name, raw / f"{name}.pgm") for name in NAMES]
    for tta in (False, True):
        out = tmp_path / f"eval-{tta}"
        args = ["evaluate", str(run), "--data", str(prepared), "--split", "train", "--out", str(out),
                "--bootstrap", "10", "--device", "cpu", "--heatmap", "none"]  # fmt: skip
        assert main(args + (["--tta"] if tta else [])) == 0
        evaluated = pd.read_csv(out / "predictions.csv", dtype={"image_id": str}).set_index("image_id")
        predicted = _predict(run, items, tmp_path / f"pred-{tta}", tta)
        diff = (predicted["prob_malignant"] - evaluated.loc[predicted.index, "prob_malignant"]).abs().max()
        assert diff <= 1e-5, f"predict vs evaluate (tta={tta}): max |dp| = {diff:.2e}"
        assert predicted["prob_malignant"].max() - predicted["prob_malignant"].min() > 1e-3  # not a constant
        # the scale is in every output: predictions.csv/json of predict, predictions.csv and metrics of evaluate
        assert predicted["fit_scale"].to_dict() == pytest.approx(fit.round(4).to_dict(), abs=1e-4)
        assert evaluated["fit_scale"].to_dict() == pytest.approx(fit.to_dict(), abs=1e-6)
        records = json.loads((tmp_path / f"pred-{tta}" / "predictions.json").read_text())
        rows = records["predictions"] if isinstance(records, dict) else records
        assert {r["image_id"]: r["fit_scale"] for r in rows}["mdb133"] == pytest.approx(fit["mdb133"], abs=1e-4)
        data = json.loads((out / "metrics.json").read_text())["data"]
        assert data["n_shrunk_to_fit"] == int((fit > 1.0).sum())
        assert data["max_fit_scale"] == pytest.approx(fit.max(), abs=1e-3)
        assert "Images shrunk to fit the canvas" in (out / "report.html").read_text()
