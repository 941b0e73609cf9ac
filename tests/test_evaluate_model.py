"""End to end through a real saved run: a tiny whole-image network, a prepared folder of 16-bit PNGs, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mammokit.cli import main
from mammokit.data.manifest import write_table
from mammokit.engine.evaluate import EvaluationError, predict_split
from mammokit.io.images import read_png16, write_png16
from mammokit.preprocess import PreprocessSpec, to_model_input
from mammokit.run import CALIBRATION_JSON, MODEL_JSON, InputSpec, ModelCard, load_model, save_run
from mammokit.utils.atomic import atomic_write_json

H, W = 64, 48  # prepared image size of the fixture (rows, columns)


@pytest.fixture(scope="module")
def one_thread():
    # Two shared cores: one intra-op thread is several times faster than oversubscribing them.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_thread) -> tuple[Path, Path]:
    """(run folder, prepared folder): timm's `test_resnet` trunk, 6 women x 2 breasts x 2 views, test split."""
    from mammokit.models import create_model

    root = tmp_path_factory.mktemp("e2e")
    torch.manual_seed(0)
    model = create_model("whole_image", backbone="test_resnet", top="none", pretrained=None)
    card = ModelCard(
        task="whole",
        arch="whole_image",
        arch_kwargs=model.arch_kwargs,
        input=InputSpec(height=H, width=W, pixel_mean=0.3, pixel_std=0.2, preprocess=PreprocessSpec(height=H, width=W)),
        labels=["negative", "malignant"],
        positive_labels=["malignant"],
        threshold=0.5,
        threshold_rule="default 0.5",
    )
    run = save_run(root / "run", model, card)
    prepared = root / "prep"
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        for lat in ("L", "R"):
            label = int((i + (lat == "R")) % 3 == 0)
            for view in ("CC", "MLO"):
                image_id = f"w{i}{lat}{view}"
                # A bright blob for cancers, so that the images differ in a label-related way.
                img = rng.integers(2000, 30000, (H, W)).astype(np.uint16)
                if label:
                    img[20:40, 10:30] = 60000
                write_png16(prepared / "images" / f"{image_id}.png", img)
                rows.append({"image_id": image_id, "patient_id": f"w{i}", "exam_id": f"w{i}e", "laterality": lat,
                             "view": view, "path": f"{image_id}.dcm", "label": label, "split": "test",
                             "dataset": "tiny", "image_file": f"images/{image_id}.png"})  # fmt: skip
    write_table(pd.DataFrame(rows), prepared / "manifest.parquet")
    return run, prepared


def _manual_probs(run: Path, prepared: Path, flips: bool) -> np.ndarray:
    """p(malignant) computed independently: read_png16 -> preprocess.to_model_input -> network -> softmax."""
    model, card = load_model(run)
    table = pd.read_parquet(prepared / "manifest.parquet")
    out = []
    with torch.inference_mode():
        for f in table["image_file"]:
            x = torch.from_numpy(to_model_input(read_png16(prepared / f), card.input.pixel_mean, card.input.pixel_std))
            x = x[None]  # (1, 1, H, W)
            views = [x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)] if flips else [x]
            out.append(np.mean([torch.softmax(model(v), 1)[0, 1].item() for v in views]))
    return np.array(out)


def test_predict_split_matches_an_independent_computation(tiny):
    run, prepared = tiny
    plain = predict_split(run, prepared, "test", batch_size=5, device="cpu")
    assert len(plain) == 24 and list(plain["image_id"]) == list(
        pd.read_parquet(prepared / "manifest.parquet")["image_id"]
    )
    np.testing.assert_allclose(plain["prob_malignant"], _manual_probs(run, prepared, flips=False), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(plain["prob_malignant"], plain["prob_uncalibrated"])  # no calibration.json
    tta = predict_split(run, prepared, "test", tta=True, batch_size=8, device="cpu")
    np.testing.assert_allclose(tta["prob_malignant"], _manual_probs(run, prepared, flips=True), rtol=1e-4, atol=1e-6)


def test_stored_calibration_is_applied_at_prediction(tiny, tmp_path):
    run, prepared = tiny
    calibrated_run = Path(shutil.copytree(run, tmp_path / "run-cal"))
    atomic_write_json(calibrated_run / CALIBRATION_JSON, {"method": "temperature", "temperature": 4.0})
    df = predict_split(calibrated_run, prepared, "test", device="cpu")
    raw = df["prob_uncalibrated"].to_numpy()
    logit = np.log(raw / (1 - raw))
    np.testing.assert_allclose(df["prob_malignant"], 1 / (1 + np.exp(-logit / 4.0)), rtol=1e-6)


def test_wrong_input_size_is_refused(tiny, tmp_path):
    run, prepared = tiny
    other = Path(shutil.copytree(run, tmp_path / "run-big"))
    card = json.loads((other / MODEL_JSON).read_text())
    card["input"]["height"] = 128
    atomic_write_json(other / MODEL_JSON, card)
    with pytest.raises(EvaluationError, match="expects 128x48"):
        predict_split(other, prepared, "test", device="cpu")


def test_cli_evaluate_end_to_end(tiny, capsys, tmp_path, monkeypatch):
    run, prepared = tiny
    monkeypatch.chdir(tmp_path)
    status = main(["evaluate", str(run), "--data", str(prepared), "--bootstrap", "30", "--device", "cpu", "--tta",
                   "--aggregate", "max", "--batch-size", "6"])  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    assert "image AUC" in printed and "95% CI" in printed
    out = tmp_path / "eval" / "run-prep-test"  # the default output folder: outside the run
    metrics = json.loads((out / "metrics.json").read_text())
    preds = pd.read_csv(out / "predictions.csv")
    assert metrics["settings"]["tta"] is True and metrics["settings"]["aggregate"] == "max"
    np.testing.assert_allclose(preds["prob_malignant"], _manual_probs(run, prepared, flips=True), rtol=1e-4, atol=1e-6)
    from sklearn.metrics import roc_auc_score

    assert metrics["results"]["run"]["image"]["auc"]["value"] == pytest.approx(
        roc_auc_score(preds["label"], preds["prob_malignant"]), abs=1e-6
    )
    breast = pd.read_csv(out / "breast_predictions.csv")
    assert len(breast) == 12 and breast["n_images"].eq(2).all()
    for name in ("report.html", "roc.png", "pr.png", "reliability.png", "evaluate.yaml", "mammokit.log"):
        assert (out / name).is_file()
    assert "mammokit.engine" in (out / "mammokit.log").read_text()  # the default folder gets the log file too


def test_cli_reports_user_mistakes_without_traceback(tiny, capsys):
    run, prepared = tiny
    assert main(["evaluate", str(run), "--data", str(prepared), "--split", "val", "--bootstrap", "5"]) == 2
    assert "no images in split 'val'" in capsys.readouterr().err
    assert main(["evaluate", str(prepared), "--data", str(prepared)]) == 2
    assert "model.json is missing" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--data", str(prepared), "--set", "n_bootz=3"]) == 2
    assert "did you mean" in capsys.readouterr().err


@pytest.mark.gpu
def test_cuda_prediction_matches_cpu(tiny, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    run, prepared = tiny
    cpu = predict_split(run, prepared, "test", tta=True, device="cpu")
    gpu = predict_split(run, prepared, "test", tta=True, device="cuda", batch_size=16)
    # cuDNN may use TF32 convolutions: agreement to ~1e-3, not bit-exact.
    np.testing.assert_allclose(gpu["prob_malignant"], cpu["prob_malignant"], atol=2e-3)
    from mammokit.engine.evaluate import EvaluateConfig, evaluate

    result = evaluate([run], prepared, tmp_path / "gpu", EvaluateConfig(tta=True, n_boot=50, device="cuda"))
    assert (tmp_path / "gpu" / "report.html").is_file()
    assert result["results"]["run"]["image"]["n"] == 24


def test_cli_calibrate_writes_the_map_that_evaluate_then_applies(tiny, tmp_path, capsys):
    run, prepared = tiny
    run = Path(shutil.copytree(run, tmp_path / "run"))
    # the fixture has a test split only; calibrating on it here just exercises the command
    argv = ["calibrate", str(run), "--data", str(prepared), "--split", "test", "--method", "temperature", "--tta",
            "--device", "cpu", "--batch-size", "6"]  # fmt: skip
    assert main(argv) == 0
    assert "temperature calibration fitted on 24 images" in capsys.readouterr().out
    cal = json.loads((run / CALIBRATION_JSON).read_text())
    assert cal["method"] == "temperature" and cal["tta"] is True and cal["fitted_on"] == "prep / test"
    df = predict_split(run, prepared, "test", tta=True, device="cpu")
    from mammokit.metrics import apply_calibration

    np.testing.assert_allclose(df["prob_malignant"], apply_calibration(df["prob_uncalibrated"].to_numpy(), cal))
    assert main(["evaluate", str(run), "--data", str(prepared), "--fit-calibration", "platt"]) == 2
    assert "mammokit calibrate RUN --data PREPARED --split val --method platt" in capsys.readouterr().err
