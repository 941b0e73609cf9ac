"""A run killed mid-epoch (or between stages) and continued with `resume=True` ends with exactly the
weights and metrics of an uninterrupted run with the same seed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from engine_support import TINY_BACKBONE, make_patch_set, make_tiny_weights, single_thread
from mammokit.data.transforms import AugmentConfig
from mammokit.engine.config import (
    LoaderConfig,
    OptimConfig,
    PatchModelConfig,
    PatchTrainConfig,
    StageConfig,
    TrainerConfig,
)
from mammokit.engine.runner import TrainingError
from mammokit.engine.train import train_patch


class Killed(RuntimeError):
    """Stands in for the process being killed."""


class KillAfter(Callback):
    """Raise after `n` training batches of stage `stage`."""

    def __init__(self, stage: int, n: int) -> None:
        self.stage, self.n, self.seen = stage, n, 0

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:  # type: ignore[no-untyped-def]
        if pl_module.stage == self.stage:
            self.seen += 1
            if self.seen == self.n:
                raise Killed(f"killed in stage {self.stage} after {self.n} batches")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resume")
    patches = make_patch_set(root / "patches", ("background", "benign", "malignant"), {"train": 6, "val": 3})
    return patches, make_tiny_weights(root / "tiny.safetensors")


def _cfg(data: tuple[Path, Path], out: Path, resume: bool = False) -> PatchTrainConfig:
    patches, weights = data
    return PatchTrainConfig(
        data=patches,
        out=out,
        resume=resume,
        seed=7,
        model=PatchModelConfig(backbone=TINY_BACKBONE, pretrained=str(weights), drop_rate=0.3),
        # 18 training patches, batch 4 -> 5 batches per epoch; stage 3 has 2 epochs. The paper's augmentation
        # and class-balanced sampling run in a worker process, so resuming must replay both exactly.
        stages=[StageConfig(1, 1.0), StageConfig(1, 0.5), StageConfig(2, 0.5)],
        optim=OptimConfig(lr=3e-3, lr_plateau_patience=1, early_stop_patience=3),
        loader=LoaderConfig(batch_size=4, workers=1, balance="sampler", augment=AugmentConfig()),
        trainer=TrainerConfig(accelerator="cpu", progress_bar=False, tensorboard=False, checkpoint_every_n_steps=2),
    )


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def _last_state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "stage3_all" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_patch(_cfg(data, tmp_path_factory.mktemp("a") / "run"))


@pytest.mark.parametrize(
    ("stage", "batches"),
    [
        (3, 8),  # second epoch of stage 3, 3 batches in; last checkpoint at step 8 -> resumes mid-epoch
        (2, 1),  # first batch of stage 2, before its first checkpoint -> resumes from the end of stage 1
    ],
)
def test_killed_run_resumes_to_identical_result(
    data: tuple[Path, Path], uninterrupted: Path, tmp_path: Path, stage: int, batches: int
) -> None:
    out = tmp_path / "run"
    with pytest.raises(Killed):
        train_patch(_cfg(data, out), callbacks=[KillAfter(stage, batches)])
    assert not (out / "model.json").exists()
    with pytest.raises(TrainingError, match="--resume"):
        train_patch(_cfg(data, out))  # a plain rerun refuses to clobber the interrupted run
    train_patch(_cfg(data, out, resume=True))

    a_last, b_last = _last_state(uninterrupted), _last_state(out)
    assert a_last.keys() == b_last.keys()
    for key in a_last:
        assert torch.equal(a_last[key], b_last[key]), key
    a_best, b_best = _weights(uninterrupted), _weights(out)
    for key in a_best:
        assert torch.equal(a_best[key], b_best[key]), key
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (uninterrupted, out))
    assert ma["val"] == mb["val"] and ma["best_stage"] == mb["best_stage"] and ma["best_epoch"] == mb["best_epoch"]
    if stage == 3:  # the continuation logged beside the interrupted attempt
        assert (out / "logs" / "stage3_all" / "resumed-1" / "metrics.csv").is_file()
