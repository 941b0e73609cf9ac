"""The staged-training runner: one Lightning `Trainer.fit` per stage, exact resume, final predictions.

Why one fit per stage: each stage needs a fresh optimizer, its own early-stopping counter and its own
epoch budget; a separate Trainer gives all three without re-implementing Lightning's loop state, and each
stage's `checkpoints/stageK/last.ckpt` is an ordinary Lightning checkpoint that `Trainer.fit(ckpt_path=...)`
resumes (optimizer moments, LR-on-plateau state, early-stopping counter, loop position, data position).
`checkpoints/progress.json` records which stages are finished and the best validation value so far.

Exactness: every stage starts from `seed_everything(seed + stage)`, the data order and augmentation of
every sample depend only on (seed, stage, epoch, position) (`EpochSampler`), and the RNG of every training
step is re-seeded from (seed, stage, epoch, batch, rank). A run killed at any point and resumed therefore
trains on the same batches with the same random numbers and ends with the same weights.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor
from torch import nn
from torch.utils.data import Dataset

from mammokit.engine.callbacks import LAST_CKPT, BestWeights, ResumeCheckpoint
from mammokit.engine.config import LoaderConfig, OptimConfig, StageConfig, TrainerConfig
from mammokit.engine.module import ClassifierModule
from mammokit.engine.progress import training_progress_bar
from mammokit.engine.schedule import stage_trainable
from mammokit.utils.atomic import atomic_write_json
from mammokit.utils.console import tidy_third_party_output
from mammokit.utils.device import lightning_accelerator

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LOGS = "logs"
PROGRESS_JSON = "progress.json"
BEST_WEIGHTS = "best.safetensors"


class TrainingError(ValueError):
    """Training cannot start or continue as asked; the message says what to do."""


@dataclass
class StagePlan:
    """A stage to run: its settings and the model's stage index whose parameters it trains."""

    config: StageConfig
    model_stage: int
    name: str


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to overwrite a finished or started run unless resuming."""
    ckpt = run_dir / CHECKPOINTS
    started = ckpt.is_dir() and any(ckpt.iterdir())
    if (run_dir / "model.json").is_file() and not resume:
        raise TrainingError(f"{run_dir} already holds a trained model; choose another --out")
    if started and not resume:
        raise TrainingError(
            f"{run_dir} holds an interrupted run ({CHECKPOINTS}/ exists); continue it with --resume "
            "or choose another --out"
        )
    if resume and not started:
        log.warning("--resume: %s has no checkpoints yet; starting from the beginning", run_dir)


def build_trainer(
    cfg: TrainerConfig,
    run_dir: Path,
    stage_name: str,
    max_epochs: int,
    callbacks: list[Callback],
    grad_clip: float,
    resuming: bool = False,
) -> L.Trainer:
    """A Lightning Trainer for one stage: CSV (+ TensorBoard) logs under RUN/logs/<stage>/[resumed-N/]."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    tidy_third_party_output()  # after Lightning's import-time handler setup; the CLI's root handler exists by now
    version = ""
    if resuming:  # keep the interrupted attempt's logs; the continuation logs beside them
        n = 1
        while (run_dir / LOGS / stage_name / f"resumed-{n}").exists():
            n += 1
        version = f"resumed-{n}"
    loggers: list[Any] = [CSVLogger(run_dir / LOGS, name=stage_name, version=version)]
    if cfg.tensorboard:
        try:
            import tensorboard  # noqa: F401

            loggers.append(TensorBoardLogger(run_dir / LOGS / stage_name, name=version, version="tb"))
        except ImportError:
            log.info("tensorboard is not installed; writing CSV logs only")
    bar = training_progress_bar(cfg.progress_bar)  # one compact line per stage, on a terminal only
    trainer = L.Trainer(
        accelerator=lightning_accelerator(cfg.accelerator),
        devices=cfg.lightning_devices(),
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=cfg.precision,
        max_epochs=max_epochs,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        gradient_clip_val=grad_clip or None,
        callbacks=[*callbacks, bar] if bar else callbacks,
        logger=loggers,
        default_root_dir=run_dir,
        enable_progress_bar=bar is not None,
        enable_model_summary=False,
        log_every_n_steps=cfg.log_every_n_steps,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # EpochSampler shards itself, deterministically
        deterministic="warn" if cfg.deterministic else False,
    )
    if cfg.deterministic:
        # Deterministic mode also fills every new tensor with NaN (a debugging aid against reads of uninitialised
        # memory, not part of determinism): ~10 % of a CPU training step. Results are the same without it.
        torch.utils.deterministic.fill_uninitialized_memory = False
    return trainer


def _read_progress(ckpt_dir: Path) -> dict[str, Any]:
    path = ckpt_dir / PROGRESS_JSON
    return json.loads(path.read_text()) if path.is_file() else {"completed_stages": 0}


def load_checkpoint(ckpt_path: Path) -> dict[str, Any]:
    """A Lightning checkpoint of ours, unpickled with `weights_only=True` (tensors and plain containers only).

    Raises:
        TrainingError: the file is unreadable, truncated, or holds anything else (e.g. pickled code from a
            crafted or foreign checkpoint), which is refused instead of executed.
    """
    try:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for refused globals, RuntimeError/EOFError for damaged files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(
            f"{ckpt_path}: not a usable mammokit checkpoint ({type(exc).__name__}: {first_line}); checkpoints are "
            "loaded with weights_only=True and anything but tensors and plain values is refused. Delete the "
            "file (training restarts that stage) or train without --resume"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise TrainingError(f"{ckpt_path}: not a Lightning checkpoint (no 'state_dict'); delete it or drop --resume")
    return state


def _load_module_weights(model: nn.Module, ckpt_path: Path) -> None:
    """Copy the model weights of a Lightning checkpoint (keys 'model.*') into `model`."""
    # weights_only=True: a checkpoint is something a user can be handed, and a full unpickler would run any code
    # it holds. Our checkpoints keep only tensors and plain containers/numbers (loop, optimizer, callback state).
    state = load_checkpoint(ckpt_path)["state_dict"]
    model.load_state_dict({k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")})


def run_stages(
    *,
    run_dir: Path,
    model: nn.Module,
    plans: Sequence[StagePlan],
    optim: OptimConfig,
    loader: LoaderConfig,
    trainer_cfg: TrainerConfig,
    seed: int,
    resume: bool,
    train_set: Dataset,
    val_set: Dataset,
    train_labels: np.ndarray,
    num_classes: int,
    positive_indices: list[int],
    monitor: str,
    extra_callbacks: Sequence[Callback] = (),
) -> tuple[BestWeights, bool]:
    """Train `model` through `plans`; returns the best-weights tracker and whether this is global rank 0.

    On return (rank 0) `model` holds the best weights seen on validation (or the final weights when no
    validation ran, or when `optim.keep` is "last"). With `trainer.channels_last` its convolution weights stay
    in channels_last memory format (same values): the evaluation that follows runs ~1.4x faster that way on a
    CPU, and `run.save_run` writes contiguous copies.
    """
    ckpt_dir = run_dir / CHECKPOINTS
    progress = _read_progress(ckpt_dir) if resume else {"completed_stages": 0}
    completed = int(progress["completed_stages"])
    best = BestWeights(monitor, ckpt_dir / BEST_WEIGHTS, mode="max")
    if completed and progress.get("best"):
        best.load_state_dict(progress["best"])
    if completed:
        # the weights at the end of the last completed stage that trained (stages with 0 epochs leave no file)
        for plan in reversed(plans[:completed]):
            done_ckpt = ckpt_dir / plan.name / LAST_CKPT
            if done_ckpt.is_file():
                _load_module_weights(model, done_ckpt)
                break
        log.info("resuming after %d completed stage(s)", completed)

    is_zero = global_rank() == 0
    if trainer_cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # in place: conv weights NHWC for the fast kernels
    for k, plan in enumerate(plans, start=1):
        if k <= completed:
            continue
        stage_dir = ckpt_dir / plan.name
        if plan.config.epochs > 0:
            L.seed_everything(seed + k, workers=True, verbose=False)
            trainable = stage_trainable(model, plan.model_stage)
            lr = optim.lr * plan.config.lr_multiplier
            module = ClassifierModule(
                model,
                trainable=trainable,
                train_set=train_set,
                val_set=val_set,
                train_labels=train_labels,
                num_classes=num_classes,
                positive_indices=positive_indices,
                optim=optim,
                lr=lr,
                loader=loader,
                seed=seed,
                stage=k,
                channels_last=trainer_cfg.channels_last,
            )
            callbacks: list[Callback] = [best, ResumeCheckpoint(stage_dir, trainer_cfg.checkpoint_every_n_steps)]
            if optim.early_stop_patience > 0:
                callbacks.append(EarlyStopping("val_loss", patience=optim.early_stop_patience, mode="min"))
            callbacks.append(LearningRateMonitor(logging_interval="epoch"))
            callbacks.extend(extra_callbacks)
            ckpt_path = stage_dir / LAST_CKPT
            resuming = resume and ckpt_path.is_file()
            if resuming:
                load_checkpoint(ckpt_path)  # refuse a foreign/damaged file with a clear error before Lightning reads it
            trainer = build_trainer(
                trainer_cfg, run_dir, plan.name, plan.config.epochs, callbacks, optim.grad_clip, resuming
            )
            log.info(
                "stage %d (%s): %d epoch(s), lr %.3g, %d trainable tensors",
                k,
                plan.name,
                plan.config.epochs,
                lr,
                len(trainable),
            )
            trainer.fit(module, ckpt_path=ckpt_path if resuming else None, weights_only=True)
            if trainer.interrupted:
                raise KeyboardInterrupt(f"training interrupted in stage {k}; continue with --resume")
            is_zero = trainer.is_global_zero
        if is_zero:
            atomic_write_json(ckpt_dir / PROGRESS_JSON, {"completed_stages": k, "best": best.state_dict()})

    if is_zero and optim.keep == "best" and (ckpt_dir / BEST_WEIGHTS).is_file():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(ckpt_dir / BEST_WEIGHTS)))
    return best, is_zero


def global_rank() -> int:
    """This process's global rank under torchrun/Lightning DDP (0 when not distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)) or 0)


def finite_or_none(value: Any) -> Any:
    """NaN/inf -> None so metrics.json stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
