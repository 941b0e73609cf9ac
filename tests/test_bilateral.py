"""The bilateral whole-image model (both breasts): the pairing rule, the two combination rules, training
through the CLI and evaluation with the `context` column."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from engine_support import TINY_BACKBONE, TINY_TOP, make_prepared, single_thread, tiny_whole_argv
from mammokit.cli import main
from mammokit.data.datasets import WholeImageDataset
from mammokit.data.pairs import contexts, partner_positions, table_partners, with_self_fallback
from mammokit.models.whole import BILATERAL_RULES, WholeImageClassifier
from mammokit.run import load_model, read_card


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


# ------------------------------------------------------------------------------------------- pairing


def test_partner_is_same_woman_same_view_other_side() -> None:
    rows = pd.DataFrame(
        {
            "image_id": ["a_rcc", "a_lcc", "a_rmlo", "a_lmlo", "b_rcc", "c_lcc", "d_xcc"],
            "patient_id": ["A", "A", "A", "A", "B", "C", "D"],
            "view": ["CC", "cc ", "MLO", "MLO", "CC", "CC", "CC"],
            "laterality": ["R", "L", "R", "l", "R", "L", "?"],
        }
    )
    got = table_partners(rows)
    assert got.tolist() == [1, 0, 3, 2, -1, -1, -1]  # B's right CC never pairs with C's left CC
    assert contexts(got) == ["contralateral"] * 4 + ["single"] * 3
    assert with_self_fallback(got).tolist() == [1, 0, 3, 2, 4, 5, 6]


def test_partner_prefers_the_same_exam_then_the_smallest_id_whatever_the_row_order() -> None:
    ids = ["r_2019", "l_2018", "l_2019b", "l_2019a"]
    patients, views, sides = ["P"] * 4, ["CC"] * 4, ["R", "L", "L", "L"]
    exams = ["2019", "2018", "2019", "2019"]
    got = partner_positions(patients, views, sides, ids, exams)
    assert ids[got[0]] == "l_2019a"  # same exam first, then the smallest image id
    order = [3, 1, 0, 2]
    shuffled = partner_positions(*([v[i] for i in order] for v in (patients, views, sides, ids, exams)))
    assert [ids[order[j]] for j in shuffled][order.index(0)] == "l_2019a"


def test_a_table_without_laterality_pairs_nothing() -> None:
    table = pd.DataFrame({"image_id": ["x", "y"], "patient_id": ["P", "P"]})
    assert table_partners(table).tolist() == [-1, -1]


# --------------------------------------------------------------------------------------------- model


def _model(rule: str | None) -> WholeImageClassifier:
    torch.manual_seed(0)
    return WholeImageClassifier(TINY_BACKBONE, top=TINY_TOP, bilateral=rule).eval()


@pytest.mark.parametrize("rule", BILATERAL_RULES)
def test_bilateral_model_takes_two_channels_and_features_compose(rule: str) -> None:
    model = _model(rule)
    x = torch.rand(3, 2, 64, 48)
    assert model.input_channels == 2 and model.arch_kwargs["bilateral"] == rule
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (3, 2)
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), logits)
        # the partner matters (except where the rule starts blind to it: concat's difference weights are 0)
        other = x.clone()
        other[:, 1] = torch.rand(3, 64, 48)
        changed = not torch.allclose(model(other), logits)
    assert changed == (rule == "subtract")


def test_concat_starts_as_the_single_image_model_and_learns_the_difference() -> None:
    single, pair = _model(None), _model("concat")
    # same trunk/top; the head differs in width
    pair.load_state_dict({k: v for k, v in single.state_dict().items() if not k.startswith("head.")}, strict=False)
    with torch.no_grad():
        d = single.head.fc.in_features
        pair.head.fc.weight[:, :d] = single.head.fc.weight
        pair.head.fc.bias.copy_(single.head.fc.bias)
    x = torch.rand(2, 1, 64, 48)
    pairs = torch.cat([x, torch.rand(2, 1, 64, 48)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(pair(pairs), single(x))
    pair.train()
    loss = pair(pairs).logsumexp(1).sum()
    loss.backward()
    assert pair.head.fc.weight.grad[:, d:].abs().sum() > 0  # the difference half is trained


def test_subtract_rule_is_own_minus_a_times_partner() -> None:
    model = _model("subtract")
    x = torch.rand(2, 1, 64, 48)
    y = torch.rand(2, 1, 64, 48)
    with torch.no_grad():
        head = model.head
        own = head.fc(head.pooled(model.top(model.trunk(x))))
        other = head.fc(head.pooled(model.top(model.trunk(y))))
        torch.testing.assert_close(model(torch.cat([x, y], 1)), own - 0.5 * other, atol=1e-4, rtol=1e-4)
    assert head.other_weight == pytest.approx(0.5, abs=1e-3)


def test_bilateral_rule_is_checked() -> None:
    with pytest.raises(ValueError, match="bilateral must be one of"):
        WholeImageClassifier(TINY_BACKBONE, top=TINY_TOP, bilateral="average")


# ----------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def paired(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture's prepared set with two films (R, L MLO) per woman; the last test woman has one film."""
    root = make_prepared(tmp_path_factory.mktemp("bilateral") / "prepared", {"train": 8, "val": 4, "test": 5})
    table = pd.read_parquet(root / "manifest.parquet")
    table["laterality"] = ["R", "L"] * (len(table) // 2) + ["R"] * (len(table) % 2)
    table["view"], table["exam_id"] = "MLO", table["patient_id"]
    table.to_parquet(root / "manifest.parquet", index=False)
    return root


def test_dataset_gives_each_image_with_its_partner(paired: Path) -> None:
    table = pd.read_parquet(paired / "manifest.parquet")
    test = table[table["split"] == "test"]
    ds = WholeImageDataset(paired, test, mean=0.4, std=0.2, bilateral=True, cache_mb=0)
    assert ds.contexts == ["contralateral"] * 4 + ["single"]
    s0, s1, s4 = ds[0]["image"], ds[1]["image"], ds[4]["image"]
    assert s0.shape == (2, 64, 48)
    torch.testing.assert_close(s0[1], s1[0])  # image 0's partner is image 1, and the other way round
    torch.testing.assert_close(s1[1], s0[0])
    torch.testing.assert_close(s4[1], s4[0])  # no partner: itself
    dropped = WholeImageDataset(paired, test, mean=0.4, std=0.2, bilateral=True, cache_mb=0, partner_dropout=0.999)
    torch.testing.assert_close(dropped[(0, 7)]["image"][1], dropped[(0, 7)]["image"][0])  # seeded: always own
    assert not torch.equal(dropped[0]["image"][1], dropped[0]["image"][0])  # never without a training seed


@pytest.mark.parametrize("rule", BILATERAL_RULES)
def test_train_whole_bilateral_then_evaluate_flags_context(paired: Path, tmp_path: Path, rule: str) -> None:
    out = tmp_path / f"run-{rule}"
    extra = ["--set", "loader.augment.enabled=false", "--set", f"model.bilateral={rule}", "--batch-size", "4"]
    rc = main(tiny_whole_argv(paired, out, *extra))
    assert rc == 0
    card = read_card(out)
    assert card.input.channels == 2 and card.arch_kwargs["bilateral"] == rule
    model, _ = load_model(out)
    assert model.input_channels == 2
    ev = tmp_path / f"eval-{rule}"
    assert main(["evaluate", str(out), "--data", str(paired), "--out", str(ev), "--device", "cpu"]) == 0
    pred = pd.read_csv(ev / "predictions.csv")
    assert pred["context"].tolist() == ["contralateral"] * 4 + ["single"]
    # evaluate's probabilities are the network's on (image, partner) pairs, the single one on (image, image)
    table = pd.read_parquet(paired / "manifest.parquet")
    test = table[table["split"] == "test"].reset_index(drop=True)
    from mammokit.scoring.core import TorchScorer

    scorer = TorchScorer.from_run(out, "cpu")
    from mammokit.io.images import read_png16

    imgs = [read_png16(paired / f) for f in test["image_file"]]
    pairs = np.stack([np.stack([imgs[i], imgs[j]]) for i, j in enumerate([1, 0, 3, 2, 4])])
    np.testing.assert_allclose(pred["prob_uncalibrated"], scorer.score(pairs), atol=1e-5)


# ------------------------------------------------------------------------------- predict == evaluate, ONNX

HW = (128, 96)


def _phantom(tmp_path: Path) -> tuple[Path, Path]:
    """Raw phantom DICOMs (CBIS-DDSM layout, both breasts, CC and MLO) and their prepared folder."""
    raw, prepared = tmp_path / "raw", tmp_path / "prepared"
    assert main(["synth", "--layout", "cbis-ddsm", "--women", "4", "--height", "256", "--width", "192",
                 "--out", str(raw)]) == 0  # fmt: skip
    assert main(["prepare", "cbis-ddsm", "--root", str(raw), "--out", str(prepared), "--height", str(HW[0]),
                 "--width", str(HW[1]), "--workers", "1", "--no-progress"]) == 0  # fmt: skip
    return raw, prepared


def _listing(prepared: Path, raw: Path, split: str, path: Path, *, drop: str | None = None) -> pd.DataFrame:
    """A CSV input list of the split's raw files with the woman/side/view columns a bilateral model pairs by."""
    table = pd.read_parquet(prepared / "manifest.parquet")
    table = table[(table["split"] == split) & (table["label"] >= 0)]
    rows = pd.DataFrame({
        "path": [str(p if Path(p).is_absolute() else raw / p) for p in table["path"].astype(str)],
        "image_id": table["image_id"].astype(str), "patient_id": table["patient_id"].astype(str),
        "laterality": table["laterality"].astype(str), "view": table["view"].astype(str),
    })  # fmt: skip
    if drop is not None:
        rows = rows[rows["image_id"] != drop]
    rows.to_csv(path, index=False)
    return rows


def test_predict_pairs_raw_files_as_evaluate_pairs_prepared_ones(tmp_path: Path) -> None:
    from mammokit.config import from_dict
    from mammokit.preprocess import PreprocessSpec
    from predict_support import make_tiny_runs

    raw, prepared = _phantom(tmp_path)
    spec = from_dict(PreprocessSpec, json.loads((prepared / "dataset.json").read_text())["preprocess"])
    run, _ = make_tiny_runs(tmp_path / "runs", HW, spec=spec, bilateral="concat")
    table = pd.read_parquet(prepared / "manifest.parquet")
    split = str(table[table["label"] >= 0]["split"].value_counts().idxmax())
    rows = _listing(prepared, raw, split, tmp_path / "list.csv")
    assert len(rows) >= 6
    for tta in (False, True):
        ev = tmp_path / f"eval-{tta}"
        args = ["evaluate", str(run), "--data", str(prepared), "--split", split, "--out", str(ev), "--bootstrap",
                "10", "--device", "cpu", "--heatmap", "none"]  # fmt: skip
        assert main(args + (["--tta"] if tta else [])) == 0
        evaluated = pd.read_csv(ev / "predictions.csv", dtype={"image_id": str}).set_index("image_id")
        out = tmp_path / f"pred-{tta}"
        args = ["predict", str(run), str(tmp_path / "list.csv"), "--out", str(out), "--device", "cpu",
                "--backend", "torch", "--no-progress", "--batch-size", "3", "--tta" if tta else "--no-tta"]  # fmt: skip
        assert main(args) == 0
        predicted = pd.read_csv(out / "predictions.csv", dtype={"image_id": str}).set_index("image_id")
        assert (predicted["context"] == evaluated.loc[predicted.index, "context"]).all()
        assert (predicted["context"] == "contralateral").sum() >= 4
        diff = (predicted["prob_malignant"] - evaluated.loc[predicted.index, "prob_malignant"]).abs().max()
        assert diff <= 1e-5, f"tta={tta}: predict vs evaluate max |dp| = {diff:.2e}"
        assert np.ptp(predicted["prob_malignant"]) > 1e-3  # the images do get different scores

    # a film whose partner is not in the call: scored with itself, flagged single, and it scores differently
    paired = pd.read_csv(tmp_path / "pred-False" / "predictions.csv", dtype={"image_id": str}).set_index("image_id")
    alone = paired.index[paired["context"] == "contralateral"][0]
    me = rows.set_index("image_id").loc[alone]
    partner = rows[(rows["patient_id"] == me["patient_id"]) & (rows["view"] == me["view"])
                   & (rows["laterality"] != me["laterality"])]["image_id"].iloc[0]  # fmt: skip
    _listing(prepared, raw, split, tmp_path / "list-1.csv", drop=partner)
    out = tmp_path / "pred-single"
    assert main(["predict", str(run), str(tmp_path / "list-1.csv"), "--out", str(out), "--device", "cpu",
                 "--backend", "torch", "--no-progress", "--no-tta"]) == 0  # fmt: skip
    single = pd.read_csv(out / "predictions.csv", dtype={"image_id": str}).set_index("image_id")
    assert single.loc[alone, "context"] == "single"
    assert abs(single.loc[alone, "prob_malignant"] - paired.loc[alone, "prob_malignant"]) > 1e-4
    records = {r["image_id"]: r for r in _records(json.loads((out / "predictions.json").read_text()))}
    assert records[alone]["context"] == "single"


def _records(obj: object) -> list[dict]:
    """The per-image records of a predictions.json, wherever they sit in it."""
    if isinstance(obj, list):
        return [r for r in obj if isinstance(r, dict) and "image_id" in r]
    if isinstance(obj, dict):
        for value in obj.values():
            found = _records(value)
            if found:
                return found
    return []


def test_onnx_takes_the_pair_as_two_inputs_and_matches_torch(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'mammokit[onnx]')")
    from mammokit.infer.onnx import OnnxBackend
    from mammokit.infer.pairing import attach_partners
    from mammokit.infer.predictor import Predictor
    from predict_support import make_tiny_runs

    raw, prepared = _phantom(tmp_path)
    from mammokit.config import from_dict
    from mammokit.preprocess import PreprocessSpec

    spec = from_dict(PreprocessSpec, json.loads((prepared / "dataset.json").read_text())["preprocess"])
    run, _ = make_tiny_runs(tmp_path / "runs", HW, spec=spec, bilateral="subtract")
    assert main(["export", str(run)]) == 0
    assert OnnxBackend(run / "model.onnx").input_names == ["image", "contralateral"]
    table = pd.read_parquet(prepared / "manifest.parquet")
    rows = _listing(prepared, raw, str(table["split"].value_counts().idxmax()), tmp_path / "list.csv")
    from mammokit.infer.inputs import collect_inputs

    for tta in (False, True):
        torch_pred = Predictor.from_run(run, device="cpu", backend="torch", tta=tta)
        onnx_pred = Predictor.from_run(run, device="cpu", backend="onnx", tta=tta)
        batch = [torch_pred.load_image(item) for item in collect_inputs([tmp_path / "list.csv"])]
        attach_partners(batch)
        assert sum(p.context == "contralateral" for p in batch) >= 4 and len(batch) == len(rows)
        p_torch = np.array([r.prob_uncalibrated for r in torch_pred.predict_prepared(batch)])
        p_onnx = np.array([r.prob_uncalibrated for r in onnx_pred.predict_prepared(batch)])
        assert np.ptp(p_torch) > 1e-3
        assert np.abs(p_onnx - p_torch).max() <= 1e-4, f"tta={tta}"


def test_serve_pairs_the_views_of_one_upload_and_equals_predict(tmp_path: Path) -> None:
    pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
    from fastapi.testclient import TestClient

    from mammokit.infer.predictor import Predictor
    from mammokit.serve.app import create_app
    from mammokit.serve.settings import ServeConfig
    from predict_support import make_tiny_runs
    from serve_support import SERVE_HW, make_exam, multipart, wait_ready

    run, _ = make_tiny_runs(tmp_path / "runs", SERVE_HW, bilateral="concat")
    exam = make_exam(tmp_path / "exam")  # four FFDM DICOMs of one woman (L/R x CC/MLO)
    app = create_app([str(run)], ServeConfig(queue=2, workers=1, timeout_s=900, cache_dir=tmp_path / "cache"))
    with TestClient(app) as client:
        wait_ready(client)
        body = client.post("/v1/predict", files=multipart(exam), data={"heatmap": "none"}).json()
        assert [v["context"] for v in body["views"]] == ["contralateral"] * 4
        predictor = Predictor.from_run(run, device="cpu", backend="torch")
        expected = {r.image_id: r.prob_malignant for r in predictor.predict_many(exam) for r in [r[0]]}
        for v, path in zip(body["views"], exam, strict=True):
            assert abs(v["prob_malignant"] - expected[path.stem]) <= 1e-5
        # three views: the one whose other-breast film is missing is seen alone, flagged, and the note says so
        body = client.post("/v1/predict", files=multipart(exam[:3]), data={"heatmap": "none"}).json()
        contexts_ = [v["context"] for v in body["views"]]
        assert contexts_.count("single") == 1 and contexts_.count("contralateral") == 2
        assert any("other breast" in n for n in body["notes"])
