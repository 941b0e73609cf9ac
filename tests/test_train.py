"""End-to-end `mammokit train patch`, `train whole` (from the patch run and the no-patch-init baseline) and
`finetune` through the CLI, on tiny fixture data with a tiny timm trunk (1 epoch per stage)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from engine_support import (
    TINY_BACKBONE,
    TINY_TOP,
    make_patch_set,
    make_prepared,
    make_tiny_weights,
    single_thread,
    tiny_whole_argv,
)
from mammokit.cli import main
from mammokit.run import load_model, read_card

COMMON = [
    "--device",
    "cpu",
    "--set",
    "loader.augment.enabled=false",
    "--set",
    "trainer.progress_bar=false",
    "--set",
    "trainer.tensorboard=false",
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


ONE_EPOCH_WHOLE = ["--set", "stages=[{epochs: 1}, {epochs: 1, lr_multiplier: 0.1}]"]


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("patch")
    classes = ("background", "calc_benign", "calc_malignant", "mass_benign", "mass_malignant")
    patches = make_patch_set(root / "patches", classes, {"train": 4, "val": 2, "test": 2})
    weights = make_tiny_weights(root / "tiny.safetensors")
    out = root / "run"
    rc = main(
        [
            "train",
            "patch",
            "--data",
            str(patches),
            "--out",
            str(out),
            "--batch-size",
            "8",
            *COMMON,
            "--set",
            f"model.backbone={TINY_BACKBONE}",
            "--set",
            f"model.pretrained={weights}",
            "--set",
            "stages=[{epochs: 1}, {epochs: 1, lr_multiplier: 0.1}, {epochs: 1, lr_multiplier: 0.01}]",
        ]
    )
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("prep") / "prepared", {"train": 8, "val": 4, "test": 4})


def test_patch_run_folder_contract(patch_run: Path) -> None:
    card = read_card(patch_run)
    assert card.task == "patch" and card.arch == "patch_classifier"
    assert card.labels[0] == "background" and card.positive_labels == ["calc_malignant", "mass_malignant"]
    assert (card.input.height, card.input.width, card.input.channels) == (32, 32, 1)
    assert card.input.preprocess.height == 128  # copied from patches.json
    assert "youden" in card.threshold_rule
    metrics = json.loads((patch_run / "metrics.json").read_text())
    assert metrics["monitor"] == "val_acc" and metrics["best_stage"] in (1, 2, 3)
    for split in ("val", "test"):
        per_class = metrics[split]["per_class_acc"]
        assert list(per_class) == card.labels
        counts = metrics[split]["confusion_matrix"]["counts"]
        assert len(counts) == 5 and sum(map(sum, counts)) == 10  # 2 patches x 5 classes
        assert metrics[split]["acc"] == pytest.approx(sum(counts[k][k] for k in range(5)) / 10)
    # every stage logged and left a resume checkpoint; the resolved config was written
    for stage in ("stage1_head", "stage2_last_block", "stage3_all"):
        assert (patch_run / "logs" / stage / "metrics.csv").is_file()
        assert (patch_run / "checkpoints" / stage / "last.ckpt").is_file()
    assert "lr_multiplier: 0.01" in (patch_run / "config.yaml").read_text()
    model, _ = load_model(patch_run)
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 5)


def test_train_refuses_to_overwrite_a_run(patch_run: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["train", "patch", "--data", str(patch_run), "--out", str(patch_run), *COMMON])
    assert rc == 2
    assert "already holds a trained model" in capsys.readouterr().err


def test_whole_from_patch_then_finetune(patch_run: Path, prepared: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    rc = main(
        [
            "train",
            "whole",
            "--data",
            str(prepared),
            "--from-patch",
            str(patch_run),
            "--out",
            str(whole),
            *COMMON,
            "--batch-size",
            "4",
            "--set",
            f"model.top={json.dumps(TINY_TOP)}",
            *ONE_EPOCH_WHOLE,
        ]
    )
    assert rc == 0
    card = read_card(whole)
    assert card.task == "whole" and card.parent_run == str(patch_run)
    assert card.labels == ["negative", "malignant"] and card.positive_labels == ["malignant"]
    assert (card.input.height, card.input.width) == (64, 48)
    patch_card = read_card(patch_run)
    assert card.input.pixel_mean == patch_card.input.pixel_mean  # the patch run's normalisation is kept
    metrics = json.loads((whole / "metrics.json").read_text())
    assert metrics["monitor"] == "val_auc"
    # The final metrics and the stored threshold come from the same float32 probabilities `mammokit evaluate`
    # computes on the saved run (the inference core), whatever the training precision.
    from mammokit.engine.split_predict import predict_split
    from mammokit.metrics import roc_auc, youden_threshold

    for split in ("val", "test"):
        df = predict_split(whole, prepared, split, device="cpu")
        y, p = df["label"].to_numpy(), df["prob_uncalibrated"].to_numpy()
        assert 0 < y.sum() < len(y), f"the fixture's {split} split needs both classes"
        assert metrics[split]["auc"] == pytest.approx(roc_auc(y, p), abs=1e-6)
        if split == "val":
            assert card.threshold == pytest.approx(youden_threshold(y, p), abs=1e-6)
    model, _ = load_model(whole)
    assert model(torch.zeros(2, 1, 64, 48)).shape == (2, 2)

    tuned = tmp_path / "tuned"
    rc = main(
        [
            "finetune",
            "--from",
            str(whole),
            "--data",
            str(prepared),
            "--out",
            str(tuned),
            "--train-patients",
            "2",
            *COMMON,
            "--batch-size",
            "4",
            "--set",
            "stage.epochs=1",
        ]
    )
    assert rc == 0
    tuned_card = read_card(tuned)
    assert tuned_card.parent_run == str(whole) and tuned_card.arch_kwargs == card.arch_kwargs
    assert tuned_card.notes["train_patients"] == 2
    assert (tuned / "logs" / "stage2_all" / "metrics.csv").is_file()


def test_whole_no_patch_init_baseline(prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "baseline"
    rc = main(tiny_whole_argv(prepared, out, "--set", "loader.augment.enabled=false", "--batch-size", "4"))
    assert rc == 0
    card = read_card(out)
    assert card.parent_run is None and "no patch stage" in card.notes["init"]
    # the result on the console: the scores metrics.json holds, then the run folder alone on stdout for scripts
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == str(out)
    val = json.loads((out / "metrics.json").read_text())["val"]
    assert f"baseline: val AUC {val['auc']:.3f}, acc {val['acc']:.3f} (n={val['n']})" in captured.err


def test_finetune_rejects_too_many_patients(tmp_path: Path, prepared: Path, patch_run: Path, capsys) -> None:
    """More training patients asked for than the split holds: a usage error that says how many there are (the
    check runs before the starting run is loaded, so the patch run given here is never reached)."""
    import pandas as pd

    images = pd.read_parquet(prepared / "manifest.parquet")
    n_train = images.loc[images["split"] == "train", "patient_id"].nunique()
    argv = ["finetune", "--from", str(patch_run), "--data", str(prepared), "--out", str(tmp_path / "x"), *COMMON,
            "--train-patients", str(n_train + 1)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--train-patients {n_train + 1}: the training split has only {n_train} patients" in err
    assert not (tmp_path / "x" / "model.json").exists()


def test_select_patients_is_seeded_and_keeps_other_splits(prepared: Path) -> None:
    import pandas as pd

    from mammokit.engine.runner import TrainingError
    from mammokit.engine.train import select_patients

    images = pd.read_parquet(prepared / "manifest.parquet")
    a, b = select_patients(images, 2, seed=1), select_patients(images, 2, seed=1)
    assert a.equals(b)
    assert a.loc[a["split"] == "train", "patient_id"].nunique() == 2
    assert (a["split"] != "train").sum() == (images["split"] != "train").sum()
    with pytest.raises(TrainingError, match="only 4 patients"):
        select_patients(images, 5, seed=1)
