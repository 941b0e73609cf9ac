"""One compact progress bar per training stage, on a terminal only.

Lightning's default bar (Rich, when installed) lists every logged metric and, in an 80-column terminal, wraps them
over five lines; it also leaves one finished bar per stage behind and, without a terminal (CI logs, a pipe), prints
its last frame. This bar is Lightning's tqdm bar with three documented customisations: it shows the loss and one
validation metric, the validation pass has no bar of its own, and a finished bar is cleared (`leave=False`), so the
console keeps the command's step lines. Without a terminal there is no bar at all (`training_progress_bar` returns
None): the log file has the per-epoch lines.
"""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

# the one validation metric shown, in order of preference (whole-image runs log val_auc, patch runs both)
VAL_METRICS = ("val_auc", "val_acc")


class CompactProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, one line: `Epoch 0: 100%|████| 13/13 [00:09<00:00, 1.4it/s, loss=0.52, val_auc=0.81]`."""

    def init_train_tqdm(self) -> Tqdm:
        bar = super().init_train_tqdm()
        bar.leave = False  # cleared when the stage ends: the step's "done" line is what stays
        return bar

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)  # the validation pass is part of the epoch the main bar shows

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        shown: dict[str, Any] = {}
        loss = items.get("train_loss_step", items.get("train_loss"))
        if loss is not None:
            shown["loss"] = loss
        val = next((k for k in VAL_METRICS if k in items), None)
        if val is not None:
            shown[val] = items[val]
        return shown


def training_progress_bar(enabled: bool = True) -> CompactProgressBar | None:
    """The bar for a Trainer, or None (no bar) when disabled or when stderr is not a terminal."""
    return CompactProgressBar() if enabled and sys.stderr.isatty() else None
