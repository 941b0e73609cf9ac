"""`evaluate` on fabricated prediction tables: outputs, values, aggregation, ensembles, calibration and errors.

These tests pass precomputed predictions (no network), so they check the evaluation logic quickly; the
end-to-end path through a real saved model is in test_evaluate_model.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mammokit.config import to_dict
from mammokit.data.manifest import write_table
from mammokit.engine.calibrate import CalibrateConfig, calibrate
from mammokit.engine.evaluate import (
    ENSEMBLE,
    EvaluateConfig,
    EvaluationError,
    aggregate_predictions,
    ensemble_predictions,
    evaluate,
    load_split,
)
from mammokit.metrics import apply_calibration, delong_test, ece
from mammokit.run import CALIBRATION_JSON, InputSpec, ModelCard
from mammokit.utils.atomic import atomic_write_json

N_BOOT = 50


def make_manifest(root: Path, n_patients: int = 24, seed: int = 0) -> Path:
    """A prepared-folder manifest (no pixel files: these tests never read images)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_patients):
        split = "val" if i % 3 == 0 else "test"
        for lat in ("L", "R"):
            label = int(rng.random() < 0.35)
            for view in ("CC", "MLO"):
                rows.append(
                    {
                        "image_id": f"p{i}-{lat}-{view}",
                        "patient_id": f"p{i}",
                        "exam_id": f"p{i}-e1",
                        "laterality": lat,
                        "view": view,
                        "path": f"raw/p{i}-{lat}-{view}.dcm",
                        "label": label,
                        "split": split,
                        "dataset": "fab",
                        "image_file": f"images/p{i}-{lat}-{view}.png",
                        "density": "ABCD"[i % 4],
                        "vendor": "V1" if i % 2 else "V2",
                    }
                )
    rows.append({**rows[0], "image_id": "unlabelled", "label": -1, "split": "test"})
    write_table(pd.DataFrame(rows), root / "manifest.parquet")
    return root


def make_run(root: Path, threshold: float = 0.4, task: str = "whole") -> Path:
    """A run folder with model.json only (evaluation with precomputed predictions never loads weights)."""
    card = ModelCard(
        task=task,
        arch="whole_image",
        arch_kwargs={"backbone": "test_resnet", "top": "none"},
        input=InputSpec(height=64, width=48),
        labels=["negative", "malignant"],
        positive_labels=["malignant"],
        threshold=threshold,
        threshold_rule="youden on val",
    )
    atomic_write_json(root / "model.json", to_dict(card))
    return root


def fake_predictions(images: pd.DataFrame, seed: int, strength: float = 1.5, factor: float = 1.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    z = strength * (images["label"].to_numpy() - 0.4) + rng.normal(0, 1, len(images))
    prob = 1 / (1 + np.exp(-factor * z))
    df = images[["image_id", "patient_id", "exam_id", "laterality", "view", "label", "dataset", "density", "vendor"]]
    df = df.copy()
    df["prob_uncalibrated"] = prob
    df["prob_malignant"] = prob
    return df.reset_index(drop=True)


@pytest.fixture
def setup(tmp_path):
    prepared = make_manifest(tmp_path / "prep")
    run = make_run(tmp_path / "runA")
    images, n_unknown = load_split(prepared, "test")
    return prepared, run, images, n_unknown


def test_load_split_drops_unknown_labels_and_reports_them(setup):
    prepared, _, images, n_unknown = setup
    assert n_unknown == 1 and (images["label"] >= 0).all()
    assert set(images["split"]) == {"test"}
    with pytest.raises(EvaluationError, match="splits present"):
        load_split(prepared, "holdout")


def test_aggregation_by_hand():
    df = pd.DataFrame(
        {
            "image_id": ["a", "b", "c", "d", "e"],
            "patient_id": ["p1", "p1", "p1", "p1", "p2"],
            "exam_id": ["e1"] * 4 + ["e2"],
            "laterality": ["L", "L", "R", "R", "L"],
            "label": [0, 1, 0, 0, 0],
            "prob_malignant": [0.2, 0.6, 0.1, 0.9, 0.3],
        }
    )
    breast_mean = aggregate_predictions(df, "breast", "mean")
    assert breast_mean["prob_malignant"].tolist() == pytest.approx([0.4, 0.5, 0.3])
    assert breast_mean["label"].tolist() == [1, 0, 0]  # a breast is malignant when any of its images is
    breast_max = aggregate_predictions(df, "breast", "max")
    assert breast_max["prob_malignant"].tolist() == pytest.approx([0.6, 0.9, 0.3])
    exam = aggregate_predictions(df, "exam", "mean")
    assert exam["prob_malignant"].tolist() == pytest.approx([0.5, 0.3])  # max over the two breasts' means
    assert exam["label"].tolist() == [1, 0] and exam["n_images"].tolist() == [4, 1]


def test_ensemble_averages_runs_and_refuses_misaligned_frames(setup):
    _, _, images, _ = setup
    a, b = fake_predictions(images, 1), fake_predictions(images, 2)
    ens = ensemble_predictions([a, b], ["a", "b"])
    np.testing.assert_allclose(ens["prob_malignant"], (a["prob_malignant"] + b["prob_malignant"]) / 2)
    np.testing.assert_allclose(ens["prob_a"], a["prob_malignant"])
    with pytest.raises(EvaluationError, match="same images"):
        ensemble_predictions([a, b.iloc[::-1].reset_index(drop=True)], ["a", "b"])


def test_evaluate_writes_all_outputs_with_correct_values(setup, tmp_path):
    prepared, run, images, _ = setup
    preds = fake_predictions(images, 3)
    out = tmp_path / "out"
    run_files = sorted(p.name for p in run.iterdir())
    result = evaluate([run], prepared, out, EvaluateConfig(n_boot=N_BOOT), predictions=[preds])
    for name in ("predictions.csv", "breast_predictions.csv", "exam_predictions.csv", "metrics.json", "roc.png",
                 "pr.png", "reliability.png", "report.html", "evaluate.yaml"):  # fmt: skip
        assert (out / name).is_file(), name
    csv = pd.read_csv(out / "predictions.csv", dtype={"image_id": str, "image_index": str})
    assert list(csv.columns[:7]) == [
        "image_id",
        "patient_id",
        "exam_id",
        "laterality",
        "view",
        "label",
        "prob_malignant",
    ]
    assert list(csv.columns[-3:]) == ["image_index", "malignant_pred", "malignant_label"]  # NYU metarepository
    assert (csv["image_index"] == csv["image_id"]).all() and (csv["malignant_label"] == csv["label"]).all()
    np.testing.assert_allclose(csv["malignant_pred"], preds["prob_malignant"], rtol=1e-5)

    metrics = json.loads((out / "metrics.json").read_text())
    res = metrics["results"]["runA"]
    assert metrics["primary"] == "runA"
    assert res["image"]["auc"]["value"] == pytest.approx(roc_auc_score(preds["label"], preds["prob_malignant"]))
    assert res["image"]["auc"]["ci_low"] <= res["image"]["auc"]["value"] <= res["image"]["auc"]["ci_high"]
    breast = aggregate_predictions(preds, "breast", "mean")
    assert res["breast"]["auc"]["value"] == pytest.approx(roc_auc_score(breast["label"], breast["prob_malignant"]))
    assert res["breast"]["n"] == len(breast) and res["exam"]["n"] == images["patient_id"].nunique()
    assert res["image"]["n_groups"] == images["patient_id"].nunique()  # bootstrap clustered by woman
    model_point = res["image"]["operating_points"][0]
    assert model_point["key"] == "model" and model_point["threshold"] == pytest.approx(0.4)
    assert set(res["subgroups"]) == {"view", "density", "vendor"}  # dataset has a single value: no subgroup
    cc = preds[preds["view"] == "CC"]
    assert res["subgroups"]["view"]["CC"]["auc"]["value"] == pytest.approx(
        roc_auc_score(cc["label"], cc["prob_malignant"])
    )
    assert metrics["data"]["n_images"] == len(images) and metrics["data"]["n_excluded_unknown_label"] == 1
    assert result["out"] == str(out)
    assert sorted(p.name for p in run.iterdir()) == run_files  # nothing written into the evaluated run
    html = (out / "report.html").read_text()
    assert f"{res['image']['auc']['value']:.3f}" in html


def test_default_out_dir_is_outside_the_run(setup, tmp_path, monkeypatch):
    prepared, run, images, _ = setup
    monkeypatch.chdir(tmp_path)
    evaluate([run], prepared, None, EvaluateConfig(n_boot=5), predictions=[fake_predictions(images, 0)])
    assert (tmp_path / "eval" / "runA-prep-test" / "report.html").is_file()
    assert not (run / "eval").exists()


def test_calibrate_stores_plain_json_and_evaluate_maps_the_threshold(setup, tmp_path):
    prepared, run, _, _ = setup
    val, _ = load_split(prepared, "val")
    preds = fake_predictions(val, 4, factor=3.0)  # overconfident
    fitted = calibrate(run, prepared, CalibrateConfig(split="val", method="temperature"), predictions=preds)
    cal = json.loads((run / CALIBRATION_JSON).read_text())  # plain JSON, readable without mammokit
    assert cal["method"] == "temperature" and cal["temperature"] > 1.0
    assert cal["fitted_on"] == "prep / val" and cal["tta"] is False and cal["n_images"] == len(val)
    assert fitted["ece_before"] == pytest.approx(ece(val["label"].to_numpy(), preds["prob_uncalibrated"].to_numpy()))
    assert cal["log_loss_after"] < cal["log_loss_before"]  # the fit's objective
    preds = preds.assign(prob_malignant=apply_calibration(preds["prob_uncalibrated"], cal))  # as predict_split reads it
    cfg = EvaluateConfig(split="val", n_boot=N_BOOT)
    result = evaluate([run], prepared, tmp_path / "cal", cfg, predictions=[preds])
    csv = pd.read_csv(tmp_path / "cal" / "predictions.csv")
    np.testing.assert_allclose(csv["prob_malignant"], apply_calibration(preds["prob_uncalibrated"], cal), rtol=1e-5)
    res = result["results"]["runA"]
    assert res["calibration"]["method"] == "temperature" and res["calibration"]["in_sample"]
    assert np.isfinite(res["calibration"]["ece_calibrated"]) and np.isfinite(res["calibration"]["ece_uncalibrated"])
    # The stored threshold (0.4 on the raw scale) is mapped through the same monotone map: same calls.
    point = res["image"]["operating_points"][0]
    assert point["threshold"] == pytest.approx(float(apply_calibration(0.4, cal)))
    raw_calls = int((preds["prob_uncalibrated"] >= 0.4).sum())
    assert point["confusion"]["tp"] + point["confusion"]["fp"] == raw_calls
    assert any("in-sample" in w for w in result["warnings"])
    on_test = evaluate([run], prepared, tmp_path / "t", EvaluateConfig(n_boot=5), predictions=[fake_predictions(
        load_split(prepared, "test")[0], 1)])  # fmt: skip
    assert not on_test["results"]["runA"]["calibration"]["in_sample"]


def test_two_runs_give_an_ensemble_and_a_delong_test(setup, tmp_path):
    prepared, run_a, images, _ = setup
    run_b = make_run(tmp_path / "runB", threshold=0.5)
    a, b = fake_predictions(images, 5, strength=2.5), fake_predictions(images, 6, strength=0.5)
    result = evaluate([run_a, run_b], prepared, tmp_path / "ens", EvaluateConfig(n_boot=N_BOOT), predictions=[a, b])
    assert result["primary"] == ENSEMBLE and set(result["results"]) == {"runA", "runB", ENSEMBLE}
    mean = (a["prob_malignant"] + b["prob_malignant"]) / 2
    assert result["results"][ENSEMBLE]["image"]["auc"]["value"] == pytest.approx(roc_auc_score(a["label"], mean))
    assert result["results"][ENSEMBLE]["image"]["operating_points"][0]["key"] == "youden"  # no stored threshold
    pair = next(d for d in result["delong"] if {d["a"], d["b"]} == {"runA", "runB"})
    ref = delong_test(a["label"].to_numpy(), a["prob_malignant"].to_numpy(), b["prob_malignant"].to_numpy())
    assert pair["z"] == pytest.approx(ref.z) and pair["p_value"] == pytest.approx(ref.p_value)
    assert len(result["delong"]) == 3  # A-B, A-ensemble, B-ensemble
    csv = pd.read_csv(tmp_path / "ens" / "predictions.csv")
    assert {"prob_runA", "prob_runB"} <= set(csv.columns)
    with pytest.raises(EvaluationError, match="--out"):
        evaluate([run_a, run_b], prepared, None, EvaluateConfig(n_boot=5), predictions=[a, b])


def test_single_class_split_reports_nan_instead_of_crashing(setup, tmp_path):
    prepared, run, images, _ = setup
    negatives = images[images["label"] == 0].reset_index(drop=True)
    table = pd.read_parquet(prepared / "manifest.parquet")
    table = table[(table["split"] != "test") | (table["label"] == 0)]
    write_table(table, prepared / "manifest.parquet")
    result = evaluate(
        [run], prepared, tmp_path / "one", EvaluateConfig(n_boot=5), predictions=[fake_predictions(negatives, 0)]
    )
    assert np.isnan(result["results"]["runA"]["image"]["auc"]["value"])
    assert any("only one class" in w for w in result["warnings"])
    assert (tmp_path / "one" / "report.html").is_file()


def test_patch_runs_are_refused_with_a_clear_message(tmp_path):
    prepared = make_manifest(tmp_path / "prep")
    run = make_run(tmp_path / "patchrun", task="patch")
    with pytest.raises(EvaluationError, match="whole-image run"):
        evaluate([run], prepared, tmp_path / "o", EvaluateConfig(n_boot=5))
