"""The LightningModule shared by the patch and whole-image stages (one instance per training stage).

Lightning supplies the loop, mixed precision, DDP, gradient accumulation, checkpoint format/restore and
logging; this module supplies the loss, the optimizer of its stage, the data loaders (seeded, DDP-sharded,
resumable) and the validation metrics (accuracy, per-class accuracy, confusion matrix, AUC of
p(malignant)), computed over the whole validation set gathered from every rank.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mammokit.data.datasets import EpochSampler
from mammokit.engine.config import LoaderConfig, OptimConfig
from mammokit.engine.losses import classification_loss
from mammokit.engine.metrics import classification_metrics
from mammokit.engine.schedule import build_optimizer, regularised_parameters
from mammokit.models.utils import apply_bn_policy
from mammokit.scoring.core import class_probabilities

log = logging.getLogger(__name__)


class ResumableLoader(DataLoader):
    """A DataLoader over an `EpochSampler` that Lightning can checkpoint and resume mid-epoch.

    Lightning stores `state_dict()` in its checkpoints and calls `load_state_dict()` before it creates
    the iterator of a resumed run. The position saved is the number of batches the trainer has
    *processed* in the current epoch (read through `progress`, set by the module), not the number the
    loader has produced (workers prefetch ahead).
    """

    def __init__(self, *args: Any, progress: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress  # () -> (epoch, batches processed in that epoch)

    @property
    def epoch_sampler(self) -> EpochSampler:
        sampler = self.batch_sampler.sampler if self.batch_sampler is not None else self.sampler
        assert isinstance(sampler, EpochSampler)
        return sampler

    def state_dict(self) -> dict[str, int]:
        epoch, batches = self.progress() if self.progress is not None else (self.epoch_sampler.epoch, 0)
        return {"epoch": int(epoch), "batches": int(batches)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):  # saved at the end of the epoch: the next iteration is a new epoch
            self.epoch_sampler.set_epoch(epoch + 1)
            return
        self.epoch_sampler.set_epoch(epoch)
        self.epoch_sampler.skip_next(batches * int(self.batch_size or 1))
        log.info("resuming epoch %d at batch %d", epoch, batches)


def collate_samples(samples: list[dict]) -> dict[str, torch.Tensor]:
    """Dataset samples -> {"image": (B, 1, H, W), "label": (B,), "index": (B,)}.

    Image ids stay out of batches: they are never needed on the device and never logged.
    """
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "label": torch.as_tensor([s["label"] for s in samples], dtype=torch.long),
        "index": torch.as_tensor([s["index"] for s in samples], dtype=torch.long),
    }


class ClassifierModule(L.LightningModule):
    """One stage of staged training of a classifier (patch or whole image).

    Args:
        model: the network; outputs (B, C) logits.
        trainable: the parameters trained in this stage (already `requires_grad=True`).
        train_set, val_set: datasets returning dicts with image/label/index.
        num_classes: C.
        positive_indices: output units that mean malignant (AUC of their summed softmax).
        optim: optimizer settings; `lr` is this stage's learning rate.
        loader: batch size, workers, balancing.
        seed: base seed; (seed, stage, epoch, batch, rank) seeds every training step's RNG.
        stage: 1-based stage index (for seeding and logging).
        channels_last: hand the images to the model in channels_last (NHWC) memory format; the model
            itself is converted by the runner.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        trainable: list[nn.Parameter],
        train_set: Dataset,
        val_set: Dataset,
        train_labels: np.ndarray,
        num_classes: int,
        positive_indices: list[int],
        optim: OptimConfig,
        lr: float,
        loader: LoaderConfig,
        seed: int,
        stage: int,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.trainable = trainable
        self.train_set, self.val_set = train_set, val_set
        self.train_labels = np.asarray(train_labels)
        self.num_classes = num_classes
        self.positive_indices = list(positive_indices)
        self.optim_cfg, self.lr, self.loader_cfg = optim, lr, loader
        self.seed, self.stage = seed, stage
        self.channels_last = bool(channels_last)
        self.regularised = regularised_parameters(model)
        self.val_metrics: dict[str, Any] = {}
        self._val_outputs: list[dict[str, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # ---- data -------------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, sampler: EpochSampler, batch_size: int, train: bool) -> DataLoader:
        workers = self.loader_cfg.workers
        common: dict[str, Any] = {
            "batch_size": batch_size,
            "sampler": sampler,
            "num_workers": workers,
            "collate_fn": collate_samples,
            "pin_memory": self.device.type == "cuda",
            "persistent_workers": False,  # workers are re-created each epoch with the epoch's sampler state
            "drop_last": False,
        }
        if train:
            return ResumableLoader(dataset, progress=self._progress, **common)
        return DataLoader(dataset, **common)

    def _progress(self) -> tuple[int, int]:
        fit_loop = self.trainer.fit_loop
        return fit_loop.epoch_progress.current.processed, fit_loop.epoch_loop.batch_progress.current.processed

    def train_dataloader(self) -> DataLoader:
        sampler = EpochSampler(
            self.train_labels,
            shuffle=True,
            balanced=self.loader_cfg.balance == "sampler",
            seed=self.seed * 100 + self.stage,
            rank=self.global_rank,
            world_size=self.trainer.world_size,
        )
        return self._loader(self.train_set, sampler, self.loader_cfg.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        labels = np.zeros(len(self.val_set), dtype=np.int64)  # order only; labels unused when not balanced
        sampler = EpochSampler(labels, shuffle=False, rank=self.global_rank, world_size=self.trainer.world_size)
        return self._loader(self.val_set, sampler, self.loader_cfg.eval_batch_size or self.loader_cfg.batch_size, False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.channels_last and batch["image"].dim() == 4:
            # (B, 1, H, W) with C = 1 is already NHWC in memory; the flag makes oneDNN/cuDNN pick NHWC kernels
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        return batch

    # ---- training ---------------------------------------------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Dropout (and anything else random in the step) draws from a seed that depends only on the
        # position in the schedule, so a resumed run replays the same random numbers.
        step_seed = hash((self.seed, self.stage, self.current_epoch, batch_idx, self.global_rank)) % (2**31)
        torch.manual_seed(step_seed)
        # Lightning puts the module back in train mode after each validation; re-apply the policy.
        apply_bn_policy(self.model, self.optim_cfg.bn_policy)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self.model(batch["image"])
        loss = classification_loss(logits, batch["label"], balanced=self.loader_cfg.balance == "loss")
        acc = (logits.argmax(1) == batch["label"]).float().mean()
        bs = batch["label"].shape[0]
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs, sync_dist=True)
        self.log("train_acc", acc, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.trainable, self.regularised, self.optim_cfg, self.lr)
        if self.optim_cfg.schedule == "cosine":
            # this stage's optimizer steps (Lightning counts accumulation and the stage's max_epochs)
            steps = max(1, int(self.trainer.estimated_stepping_batches))
            cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine, "interval": "step", "frequency": 1}}
        if self.optim_cfg.lr_plateau_patience <= 0:
            return optimizer
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=self.optim_cfg.lr_plateau_factor, patience=self.optim_cfg.lr_plateau_patience
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss", "interval": "epoch", "frequency": 1},
        }

    # ---- validation -------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        prob = class_probabilities(self.model(batch["image"]))  # (B, C) float32, as the inference core
        self._val_outputs.append({"prob": prob.detach(), "label": batch["label"], "index": batch["index"]})

    def on_validation_epoch_end(self) -> None:
        if self._val_outputs:
            prob = torch.cat([o["prob"] for o in self._val_outputs])
            label = torch.cat([o["label"] for o in self._val_outputs])
            index = torch.cat([o["index"] for o in self._val_outputs])
        else:  # this rank had no validation batches
            prob = torch.zeros(0, self.num_classes, device=self.device)
            label = index = torch.zeros(0, dtype=torch.long, device=self.device)
        if self.trainer.world_size > 1:  # every rank holds the same count (the sampler pads by wrapping)
            prob = self.all_gather(prob).reshape(-1, self.num_classes)
            label = self.all_gather(label).reshape(-1)
            index = self.all_gather(index).reshape(-1)
        prob_np, label_np, index_np = prob.cpu().numpy(), label.cpu().numpy(), index.cpu().numpy()
        _, first = np.unique(index_np, return_index=True)  # drop the wrap-around duplicates
        prob_np, label_np = prob_np[first], label_np[first]
        metrics = classification_metrics(prob_np, label_np, self.positive_indices)
        self.val_metrics = metrics
        self._val_outputs = []
        # Every rank computed the same numbers from the gathered set; sync_dist averages identical values.
        for key in ("loss", "acc", "auc"):
            value = metrics[key]
            value = float("nan") if value is None else float(value)
            self.log(f"val_{key}", value, prog_bar=key != "loss", sync_dist=self.trainer.world_size > 1)
