"""Training configuration: one dataclass per command (`train patch`, `train whole`, `finetune`).

Every field has a CPU-friendly default; the paper's settings live in `configs/paper/*.yaml`. Values are
resolved by `mammokit.config.load_config` (defaults < YAML < `--set` < flags) and the resolved object is
written to the run folder as `config.yaml`.

Epoch counts are **per stage** (not the original code's cumulative "final epoch" numbers): the original
scripts' "1 / 5 / 15 cumulative" is written `epochs: 1`, `4`, `10` here. See docs/training.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mammokit.config import ConfigError
from mammokit.data.transforms import AugmentConfig

Balance = Literal["loss", "sampler", "none"]
Precision = Literal["32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true"]


@dataclass
class StageConfig:
    """One stage of a staged schedule: how many epochs and the learning rate relative to `optim.lr`."""

    epochs: int = 1
    lr_multiplier: float = 1.0

    def validate(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"stage epochs must be >= 0, got {self.epochs}")
        if self.lr_multiplier <= 0:
            raise ConfigError(f"stage lr_multiplier must be > 0, got {self.lr_multiplier}")


@dataclass
class OptimConfig:
    """Optimizer, regularisation and the per-stage callbacks (early stopping, LR on plateau)."""

    name: Literal["adam", "adamw", "nadam", "sgd", "rmsprop"] = "adam"
    lr: float = 1e-3  # stage learning rate = lr * stage.lr_multiplier
    momentum: float = 0.9  # SGD (Nesterov) / RMSprop only
    # L2 on the weights of the *new* layers only (patch head; whole-image top layers), never on biases,
    # BatchNorm or the pretrained backbone (docs/decisions.md, L2). `l2_style`: "keras" adds lambda*sum(W^2) to the loss
    # (coupled; implemented as weight_decay = 2*lambda on that parameter group of a plain optimizer, exactly
    # Keras' l2(lambda)); "decoupled" applies AdamW-style decay lambda*lr*W on that group.
    weight_decay: float = 1e-4
    l2_style: Literal["keras", "decoupled"] = "decoupled"
    early_stop_patience: int = 5  # epochs without val_loss improvement before a stage ends (0 = off)
    lr_plateau_patience: int = 2  # ReduceLROnPlateau on val_loss (0 = off); the original used it only with SGD
    lr_plateau_factor: float = 0.5
    grad_clip: float = 0.0  # clip the gradient norm (0 = off)
    # Frozen layers' BatchNorm: "train" = Keras 2.0 behaviour (batch statistics used and running statistics
    # updated even though the weights are frozen); "frozen" = frozen BN runs in eval mode (running stats kept).
    bn_policy: Literal["train", "frozen"] = "train"
    # Which weights the run keeps: "best" = the epoch with the best validation metric over all stages (the
    # paper's checkpointing); "last" = the weights at the end of the schedule. On a small dataset the
    # validation split holds a handful of cancers, its AUC swings by +-0.1 between epochs, and "best" picks
    # noise (often an early, nearly constant model): a fixed schedule with "last" is the sounder choice there.
    keep: Literal["best", "last"] = "best"
    # The learning rate within a stage: "constant" (the paper; ReduceLROnPlateau may still lower it) or
    # "cosine": from the stage's rate down to 0 over the stage's optimizer steps (per step), as a plain
    # fine-tune usually runs (the strong baseline arm of benchmarks/bench_mias_cv.py).
    schedule: Literal["constant", "cosine"] = "constant"

    def validate(self) -> None:
        if self.schedule == "cosine" and self.lr_plateau_patience > 0:
            raise ConfigError(
                "optim.schedule=cosine sets the learning rate every step; switch off optim.lr_plateau_patience (0)"
            )
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 < self.lr_plateau_factor < 1:
            raise ConfigError(f"optim.lr_plateau_factor must be in (0, 1), got {self.lr_plateau_factor}")


@dataclass
class LoaderConfig:
    """Batches, workers, class balancing and augmentation."""

    batch_size: int = 32  # images per step per device (the original: 32 for patches, 2 for whole images)
    eval_batch_size: int = 0  # 0 = same as batch_size
    workers: int = 0  # DataLoader worker processes (0 = load in the training process: best on <= 2 cores)
    # decoded images kept in memory as uint16 per dataset (MiB; at most half the available memory; 0 = off):
    # a set that fits is decoded once instead of every epoch (mammokit.data.datasets)
    cache_mb: int = 2048
    # "loss": the paper's per-batch balancing (batch loss = sum over the classes present of that class's
    # mean loss; docs/training.md); "sampler": draw training samples with probability 1/class frequency (with
    # replacement, one epoch = as many draws as training samples); "none": plain cross-entropy.
    balance: Balance = "loss"
    # training-time augmentation (mammokit.data.transforms; docs/decisions.md); `augment.enabled: false` switches it off
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"loader.batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ConfigError(f"loader.workers must be >= 0, got {self.workers}")
        if self.cache_mb < 0:
            raise ConfigError(f"loader.cache_mb must be >= 0 (0 = no in-memory cache), got {self.cache_mb}")


@dataclass
class TrainerConfig:
    """What Lightning's Trainer provides: device, precision, DDP, accumulation, checkpoints, logs."""

    accelerator: str = "auto"  # auto, cpu, gpu/cuda, mps (set by --device)
    devices: str = "1"  # number of devices per node, "auto", or a list like "0,1"
    num_nodes: int = 1  # multi-node DDP through torchrun
    strategy: str = "auto"  # auto, ddp, ddp_find_unused_parameters_true, ...
    # "bf16-mixed" / "16-mixed" on GPUs. On CPUs with AMX / AVX512-BF16, "bf16-mixed" is not faster for the
    # shipped models (depthwise convolutions and small inputs; docs/training.md, "Speed"), so 32-true stays.
    precision: Precision = "32-true"
    # channels_last (NHWC) model and inputs: oneDNN's and cuDNN's fast convolution layout (docs/training.md)
    channels_last: bool = True
    accumulate_grad_batches: int = 1  # optimizer step every N batches (effective batch = N * batch_size)
    checkpoint_every_n_steps: int = 50  # resume checkpoint every N optimizer steps, and at every epoch end
    log_every_n_steps: int = 10
    progress_bar: bool = True
    tensorboard: bool = True  # also write TensorBoard logs (CSV logs are always written)
    deterministic: bool = True  # torch deterministic algorithms (warn only where an op has none)

    def validate(self) -> None:
        if self.accumulate_grad_batches < 1:
            raise ConfigError(f"trainer.accumulate_grad_batches must be >= 1, got {self.accumulate_grad_batches}")
        if self.checkpoint_every_n_steps < 1:
            raise ConfigError(f"trainer.checkpoint_every_n_steps must be >= 1, got {self.checkpoint_every_n_steps}")

    def lightning_devices(self) -> int | str | list[int]:
        """`devices` in the form Lightning accepts (an int, "auto" or a list of indices)."""
        text = str(self.devices).strip()
        if text == "auto":
            return "auto"
        if "," in text:
            return [int(v) for v in text.split(",") if v.strip()]
        return int(text)


# The defaults below are those of the shipped configs/patch/default.yaml and configs/whole/default.yaml
# (tests/test_config.py asserts they are equal): small and CPU-friendly, with larger later-stage learning
# rates than the paper recipe's 0.1 / 0.01 multipliers (unconfirmed, docs/decisions.md) because they train for
# a few epochs.
# The paper's settings are in configs/paper/.
def _default_patch_stages() -> list[StageConfig]:
    return [StageConfig(1, 1.0), StageConfig(2, 1.0), StageConfig(3, 0.3)]


def _default_whole_stages() -> list[StageConfig]:
    return [StageConfig(2, 1.0), StageConfig(6, 0.3)]


def _default_whole_top() -> dict[str, Any]:
    # = the vgg_512x1 preset with PyTorch's BN momentum 0.1 (Keras' 0.99 needs thousands of steps)
    return {"blocks": "vgg", "depths": [512, 512], "repetitions": [1, 1], "bn_momentum": 0.1}


@dataclass
class PatchModelConfig:
    """The patch classifier (mammokit.models.create_model("patch_classifier", ...))."""

    backbone: str = "efficientnet_lite0"
    pretrained: str | None = "imagenet"  # None = random init (then a single all-layers stage is run)
    drop_rate: float = 0.5  # dropout before the head


@dataclass
class WholeModelConfig:
    """The whole-image classifier (trunk + top layers)."""

    backbone: str = "efficientnet_lite0"  # only used with --no-patch-init (else the patch run's backbone)
    pretrained: str | None = "imagenet"  # ImageNet weights for --no-patch-init
    top: Any = field(default_factory=_default_whole_top)  # a preset name (resnet_2x | vgg_512x1 | ...) or options
    drop_rate: float = 0.0
    grad_checkpointing: bool = False  # activation checkpointing in the trunk (saves memory at full resolution)
    # Both breasts (docs/models.md): None = one image; "concat" or "subtract" = the model also sees the same
    # view of the other breast and combines the two by that rule (models.whole.BILATERAL_RULES).
    bilateral: str | None = None
    # bilateral only: share of training samples whose partner is replaced by the image itself, so the model
    # learns the fallback used for a view without a partner ("single" context)
    partner_dropout: float = 0.1

    def validate(self) -> None:
        from mammokit.models.whole import BILATERAL_RULES

        if self.bilateral is not None and self.bilateral not in BILATERAL_RULES:
            raise ConfigError(f"model.bilateral must be one of {list(BILATERAL_RULES)} or null, got {self.bilateral!r}")
        if not 0.0 <= self.partner_dropout < 1.0:
            raise ConfigError(f"model.partner_dropout must be in [0, 1), got {self.partner_dropout}")


@dataclass
class PatchTrainConfig:
    """`mammokit train patch`: the 3-stage patch-classifier schedule (docs/training.md)."""

    data: Path | None = None  # patch set folder (mammokit patches)
    out: Path | None = None  # run folder to write
    seed: int = 0
    resume: bool = False
    model: PatchModelConfig = field(default_factory=PatchModelConfig)
    # stage 1 = head only, 2 = last block + head, 3 = all layers; a fresh optimizer per stage.
    stages: list[StageConfig] = field(default_factory=_default_patch_stages)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def validate(self) -> None:
        if not 1 <= len(self.stages) <= 3:
            raise ConfigError(f"patch training has 1 to 3 stages (head, last block, all), got {len(self.stages)}")


@dataclass
class WholeTrainConfig:
    """`mammokit train whole`: the 2-stage whole-image schedule (docs/training.md)."""

    data: Path | None = None  # prepared dataset folder
    out: Path | None = None
    from_patch: Path | None = None  # patch run folder the trunk is taken from
    no_patch_init: bool = False  # baseline: same network from ImageNet weights, no patch stage
    seed: int = 0
    resume: bool = False
    model: WholeModelConfig = field(default_factory=WholeModelConfig)
    # stage 1 = new top layers only, stage 2 = all layers; a fresh optimizer per stage.
    stages: list[StageConfig] = field(default_factory=_default_whole_stages)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=1e-4))
    loader: LoaderConfig = field(default_factory=lambda: LoaderConfig(batch_size=8))
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def validate(self) -> None:
        if not 1 <= len(self.stages) <= 2:
            raise ConfigError(
                f"whole-image training has 1 or 2 stages (top layers, all layers), got {len(self.stages)}"
            )


@dataclass
class FinetuneConfig:
    """`mammokit finetune`: stage-2-only training of a whole-image run on a new dataset (INbreast transfer)."""

    data: Path | None = None  # prepared dataset folder of the new dataset
    out: Path | None = None
    from_run: Path | None = None  # whole-image run folder to start from
    train_patients: int = 0  # train on a random subset of N training patients (0 = all)
    seed: int = 0
    resume: bool = False
    # all layers, lr = optim.lr * stage.lr_multiplier
    stage: StageConfig = field(default_factory=lambda: StageConfig(5, 1.0))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, weight_decay=1e-4))
    loader: LoaderConfig = field(default_factory=lambda: LoaderConfig(batch_size=8))
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def validate(self) -> None:
        if self.train_patients < 0:
            raise ConfigError(f"train_patients must be >= 0, got {self.train_patients}")
