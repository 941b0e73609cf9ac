"""`mammokit predict RUN --ensemble RUN2` and `infer.ensemble`: the paper's model averaging for new files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from mammokit.preprocess import PreprocessSpec
from predict_support import make_tiny_runs, silhouette_pngs

HW = (128, 96)  # small: three tiny resnet18 runs on a shared 2-core machine


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two whole-image runs with different random weights and the same preprocessing (both folders named whole)."""
    a, _ = make_tiny_runs(tmp_path_factory.mktemp("ens-a"), HW, seed=0)
    b, _ = make_tiny_runs(tmp_path_factory.mktemp("ens-b"), HW, seed=1)
    return a, b


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return silhouette_pngs(tmp_path_factory.mktemp("ens-images"), 3)


def _predictors(runs):
    from mammokit.infer.predictor import Predictor

    return [Predictor.from_run(r, device="cpu", backend="torch") for r in runs]


def test_ensemble_is_the_mean_of_its_members(runs, images):
    from mammokit.infer.ensemble import EnsemblePredictor
    from mammokit.infer.predictor import Prediction

    members = _predictors(runs)
    singles = [[m.predict(p, heatmap="gradcam") for p in images] for m in members]
    ensemble = EnsemblePredictor(members)
    got = [r for r, _ in ensemble.predict_many(images, "gradcam", batch_size=2, workers=1)]
    assert all(isinstance(r, Prediction) for r in got) and len(got) == len(images)
    for i, pred in enumerate(got):
        a, b = singles[0][i], singles[1][i]
        assert abs(a.prob_malignant - b.prob_malignant) > 1e-6  # different weights, so the mean is a real test
        assert pred.prob_malignant == pytest.approx((a.prob_malignant + b.prob_malignant) / 2, abs=1e-6)
        assert pred.prob_uncalibrated == pytest.approx((a.prob_uncalibrated + b.prob_uncalibrated) / 2, abs=1e-6)
        assert pred.call is None and pred.threshold is None  # an ensemble has no stored threshold
        assert [m.prob_uncalibrated for m in pred.members] == pytest.approx(
            [a.prob_uncalibrated, b.prob_uncalibrated], abs=1e-6
        )
        assert pred.heatmap is not None and pred.heatmap.shape == a.heatmap.shape == (300, 200)  # original grid
        np.testing.assert_allclose(pred.heatmaps["gradcam"], (a.heatmaps["gradcam"] + b.heatmaps["gradcam"]) / 2,
                                   atol=1e-5)  # fmt: skip
    record = got[0].to_record()
    assert record["call"] is None and record["threshold"] is None


def test_combine_predictions_of_one_run_is_that_run(runs, images):
    from mammokit.infer.ensemble import combine_predictions

    single = _predictors(runs[:1])[0].predict(images[0])
    assert combine_predictions([single]) is single


def test_cli_ensemble_writes_mean_no_call_and_lists_the_runs(runs, images, tmp_path):
    from mammokit.cli import main

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = tmp_path / "out"
    common = ["--device", "cpu", "--backend", "torch", "--workers", "1", "--batch-size", "2", "--no-progress"]
    inputs = [str(bad), *map(str, images)]
    status = main(
        [
            "predict",
            str(runs[0]),
            *inputs,
            "--ensemble",
            str(runs[1]),
            "--out",
            str(out),
            "--heatmap",
            "gradcam",
            *common,
        ]
    )
    assert status == 1  # the bad file is reported, the others are predicted
    with open(out / "errors.csv", newline="") as fh:
        assert [e["image_id"] for e in csv.DictReader(fh)] == ["broken"]
    with open(out / "predictions.csv", newline="") as fh:
        rows = {r["image_id"]: r for r in csv.DictReader(fh)}
    assert sorted(rows) == sorted(p.stem for p in images)
    members = _predictors(runs)
    for path in images:
        row = rows[path.stem]
        assert row["call"] == "" and row["threshold"] == ""  # no stored threshold for an ensemble
        assert row["model_run"] == "whole;whole-2" and row["backend"] == "torch;torch"
        singles = [m.predict(path, heatmap="gradcam") for m in members]
        assert float(row["prob_malignant"]) == pytest.approx(np.mean([s.prob_malignant for s in singles]), abs=2e-6)
        npy = next(out / f for f in row["heatmaps"].split(";") if f.endswith("_gradcam.npy"))
        mean_map = np.mean([s.heatmaps["gradcam"] for s in singles], axis=0)
        np.testing.assert_allclose(np.load(npy), mean_map, atol=1e-5)
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["ensemble"] is True and summary["threshold"] is None and "no stored threshold" in summary["notes"][0]
    assert [m["name"] for m in summary["models"]] == ["whole", "whole-2"]
    assert [m["run"] for m in summary["models"]] == [str(r) for r in runs]
    row = summary["predictions"][0]
    assert [m["name"] for m in row["models"]] == ["whole", "whole-2"]
    assert all(m["call"] in (0, 1) for m in row["models"])  # each member's own call at its own threshold
    assert row["prob_malignant"] == pytest.approx(np.mean([m["prob_malignant"] for m in row["models"]]), abs=2e-6)


def test_members_with_different_preprocessing_are_refused(runs, tmp_path, capsys):
    from mammokit.cli import main
    from mammokit.infer.ensemble import EnsembleError, EnsemblePredictor

    other, _ = make_tiny_runs(tmp_path, HW, seed=2, spec=PreprocessSpec(height=HW[0], width=HW[1], crop_breast=False))
    with pytest.raises(EnsembleError, match=r"input\.preprocess\.crop_breast: True vs False") as info:
        EnsemblePredictor(_predictors([runs[0], other]))
    assert str(runs[0]) in str(info.value) and str(other) in str(info.value)
    image = silhouette_pngs(tmp_path / "img", 1)[0]
    args = ["predict", str(runs[0]), str(image), "--ensemble", str(other), "--out", str(tmp_path / "o")]
    assert main([*args, "--device", "cpu", "--backend", "torch", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "crop_breast" in err and str(other) in err
    assert not (tmp_path / "o" / "predictions.csv").exists()


def test_serve_forms_its_ensemble_by_the_same_rule_and_refuses_what_predict_refuses(runs, tmp_path):
    """`mammokit serve RUN RUN2` is an adapter over `EnsemblePredictor`: runs that prepare differently are refused
    at load with predict's message (it used to read and prepare per member and serve them anyway), and an accepted
    pair predicts as `predict --ensemble` does."""
    pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
    from mammokit.infer.ensemble import EnsembleError, EnsemblePredictor
    from mammokit.serve.models import ServedModels
    from mammokit.serve.uploads import UploadedFile

    other, _ = make_tiny_runs(tmp_path, HW, seed=2, spec=PreprocessSpec(height=HW[0], width=HW[1], crop_breast=False))
    with pytest.raises(EnsembleError, match=r"input\.preprocess\.crop_breast: True vs False"):
        ServedModels.load([runs[0], other], device="cpu", backend="torch")
    served = ServedModels.load(list(runs), device="cpu", backend="torch")
    assert isinstance(served.models, EnsemblePredictor) and served.names == ["whole", "whole-2"]
    image = silhouette_pngs(tmp_path / "img", 1)[0]
    body = served.predict_exam([UploadedFile(0, image.name, image.read_bytes())], heatmap="none")
    expected = EnsemblePredictor(_predictors(runs)).predict(image)
    view = body["views"][0]
    assert view["prob_malignant"] == pytest.approx(expected.prob_malignant, abs=2e-6)
    assert [m["prob_malignant"] for m in view["models"]] == pytest.approx(
        [m.prob_malignant for m in expected.members], abs=2e-6
    )
    assert [m["name"] for m in body["models"]] == ["whole", "whole-2"]
    assert all(m["precision"] == "float32" and m["mammokit_version"] for m in body["models"])


def test_provenance_only_fields_do_not_split_an_ensemble(runs, tmp_path):
    from mammokit.infer.ensemble import check_same_preprocessing

    spec = PreprocessSpec(height=HW[0], width=HW[1], extra={"source": "cbis-ddsm"})
    other, _ = make_tiny_runs(tmp_path, HW, seed=3, spec=spec)
    check_same_preprocessing(_predictors([runs[0], other]))  # `extra` is provenance: no error
