"""Lightning callbacks: the resume checkpoint and the best-weights tracker that persists across stages."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, Checkpoint

from mammokit.run import state_dict_for_saving
from mammokit.utils.atomic import atomic_path, commit_file

log = logging.getLogger(__name__)

LAST_CKPT = "last.ckpt"


class ResumeCheckpoint(Checkpoint):
    """Write `last.ckpt` (Lightning's full training state) every N optimizer steps and after every validation.

    Lightning's own ModelCheckpoint ties "last" saves to its top-k logic; this callback only keeps the one
    file that `--resume` needs, replaced atomically so a kill during the write leaves the previous one.
    Being a `Checkpoint`, Lightning runs it after the other callbacks, so their state is final when saved.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_steps = int(every_n_steps)
        self._last_saved_step = -1

    @property
    def path(self) -> Path:
        return self.dirpath / LAST_CKPT

    def _write(self, trainer: L.Trainer) -> None:
        tmp = self.dirpath / f".{LAST_CKPT}.tmp"
        trainer.save_checkpoint(tmp)  # collective: every rank calls it, global rank 0 writes
        if trainer.is_global_zero:
            commit_file(tmp, self.path)  # fsync + rename: a power loss never leaves an empty last.ckpt
        trainer.strategy.barrier("ResumeCheckpoint")
        self._last_saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        # global_step counts optimizer steps; with gradient accumulation a step spans several batches,
        # and the checkpoint is written only at the batch that completed a step.
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_saved_step:
            self._write(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._write(trainer)


class BestWeights(Callback):
    """Keep the weights with the best validation metric across all stages (the paper's rule).

    The value is checked after every validation; on improvement global rank 0 writes the model's state dict
    to `path` (safetensors, atomic). The best value travels in Lightning checkpoints (`state_dict`), so a
    resumed run compares against the same best as an uninterrupted one. The same instance is handed to
    every stage's Trainer, so "best" persists from stage to stage.
    """

    def __init__(self, monitor: str, path: str | Path, mode: str = "max") -> None:
        self.monitor, self.path, self.mode = monitor, Path(path), mode
        self.best: float | None = None
        self.best_stage: int | None = None
        self.best_epoch: int | None = None
        self.best_metrics: dict[str, Any] = {}

    @property
    def state_key(self) -> str:
        return f"BestWeights[{self.monitor}]"

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = getattr(pl_module, "val_metrics", {})
        value = metrics.get(self.monitor)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            # AUC undefined (one class in validation): fall back to saving the latest weights once.
            if self.best is not None:
                return
            value = -math.inf if self.mode == "max" else math.inf
        if not self._improved(float(value)):
            return
        self.best, self.best_stage, self.best_epoch = float(value), pl_module.stage, trainer.current_epoch
        self.best_metrics = dict(metrics)
        if trainer.is_global_zero:
            from safetensors.torch import save_file

            with atomic_path(self.path) as tmp:
                save_file(state_dict_for_saving(pl_module.model), str(tmp))
            log.info("stage %d epoch %d: new best %s = %.4f", self.best_stage, self.best_epoch, self.monitor, value)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_stage": self.best_stage,
            "best_epoch": self.best_epoch,
            "best_metrics": self.best_metrics,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")
        self.best_stage = state_dict.get("best_stage")
        self.best_epoch = state_dict.get("best_epoch")
        self.best_metrics = dict(state_dict.get("best_metrics") or {})
