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


# --- prepare: the workers stop writing when the parent is killed ---------------------------------------------------

_SLOW_PREPARE = r"""
import sys, time
from pathlib import Path

import pandas as pd

from mammokit.data.prepare import prepare_dataset
from mammokit.data.prepare_config import PrepareConfig
from mammokit.data.sources import DatasetSource, register_source
from mammokit.preprocess import PreprocessSpec


@register_source
class SlowSource(DatasetSource):
    name = "slow-test"

    def build_manifest(self, root):
        images = pd.read_csv(root / "images.csv", dtype=str, keep_default_na=False)
        images["label"] = images["label"].astype(int)
        return images, pd.DataFrame()

    def read_image(self, row, root, **options):
        time.sleep(0.25)  # a slow decoder: each worker writes an image about every 0.25 s
        return super().read_image(row, root, **options)


cfg = PrepareConfig(preprocess=PreprocessSpec(height=64, width=48), workers=4)
prepare_dataset("slow-test", Path(sys.argv[1]), Path(sys.argv[2]), cfg, progress=False)
"""


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder`, temporaries included: relative path -> (size, mtime in ns)."""
    out = {}
    for p in folder.rglob("*"):
        try:
            st = p.stat()
        except FileNotFoundError:  # removed while listing: shows up as a difference between two listings
            continue
        if p.is_file():
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.timeout(180)
def test_prepare_workers_write_nothing_after_the_parent_is_killed(tmp_path: Path) -> None:
    """Issue 25 point 7: after `kill -9` of prepare, its workers used to write a few more files (the watchdog
    looked every 0.5 s). Now the kernel kills them with the parent (PR_SET_PDEATHSIG) and every atomic write
    checks the parent first, so the output folder is frozen at the moment of the kill."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import numpy as np
    import pandas as pd
    from PIL import Image

    from dicom_factory import phantom

    raw, out = tmp_path / "raw", tmp_path / "prepared"
    raw.mkdir()
    rows = []
    for i in range(80):
        Image.fromarray(phantom((120, 90), bits=8, side="L", seed=i).astype(np.uint8)).save(raw / f"img{i}.png")
        ids = {"image_id": f"img{i}", "patient_id": f"p{i}", "exam_id": f"p{i}", "dataset": "t"}
        rows.append({**ids, "laterality": "L", "view": "CC", "path": f"img{i}.png", "label": i % 2, "split": ""})
    pd.DataFrame(rows).to_csv(raw / "images.csv", index=False)
    script = tmp_path / "slow_prepare.py"
    script.write_text(_SLOW_PREPARE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), *sys.path])}
    parent = subprocess.Popen([sys.executable, str(script), str(raw), str(out)], env=env)
    try:
        deadline = time.monotonic() + 120
        while len(list((out / "records").glob("*.json"))) < 4:  # mid-run: some images done, most to go
            assert parent.poll() is None, "prepare ended before it could be killed mid-run"
            assert time.monotonic() < deadline, "prepare wrote no records within 120 s"
            time.sleep(0.02)
        workers = [int(pid) for pid in Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()]
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
    finally:
        if parent.poll() is None:
            parent.kill()
    at_kill = _listing(out)
    time.sleep(1.5)  # three watchdog periods, and ~6 images' worth of reads per worker
    assert _listing(out) == at_kill
    assert len(list((out / "records").glob("*.json"))) < 80  # it was stopped mid-run
    assert not (out / "dataset.json").exists()
    assert workers and not any(Path(f"/proc/{pid}").exists() and _state(pid) not in "ZX" for pid in workers)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except (OSError, IndexError):
        return "X"


# --- training on a full disk ----------------------------------------------------------------------------------------


def test_a_full_disk_at_the_end_of_training_leaves_no_model_json_and_resume_finishes(
    data: tuple[Path, Path], uninterrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """model.json marks a run complete: written last, so ENOSPC on the config or metrics leaves none (issue 25)."""
    import errno
    import os

    from mammokit.utils import atomic
    from mammokit.utils.diskfull import is_disk_full

    real_commit = atomic.commit_file

    def full_at_config(tmp: object, path: object, *, durable: bool = True) -> None:
        if Path(str(path)).name == "config.yaml":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
        real_commit(tmp, path, durable=durable)

    monkeypatch.setattr(atomic, "commit_file", full_at_config)
    out = tmp_path / "run"
    with pytest.raises(OSError) as info:
        train_patch(_cfg(data, out))
    assert is_disk_full(info.value) and not (out / "model.json").exists()
    monkeypatch.setattr(atomic, "commit_file", real_commit)  # space freed
    train_patch(_cfg(data, out, resume=True))
    assert (out / "model.json").is_file()
    a_best, b_best = _weights(uninterrupted), _weights(out)
    for key in a_best:
        assert torch.equal(a_best[key], b_best[key]), key
