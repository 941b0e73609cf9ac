"""`mammokit train patch|whole`: train the patch classifier, then the whole-image classifier from it.

Examples:
  mammokit train patch --data patches-s10 --out runs/patch
  mammokit train patch --data patches-s10 --out runs/patch -c configs/paper/patch_resnet50.yaml --device cuda
  mammokit train whole --data prepared --from-patch runs/patch --out runs/whole
  mammokit train whole --data prepared --no-patch-init --out runs/baseline     # ImageNet start, no patch stage
  mammokit train whole ... --set trainer.precision=bf16-mixed --set trainer.accumulate_grad_batches=8
  torchrun --nproc-per-node 4 -m mammokit train whole ... --set trainer.strategy=ddp --set trainer.devices=4

Each run folder holds model.json, model.safetensors, config.yaml (resolved settings), metrics.json
(per-class accuracy + confusion matrix for patch runs, validation/test AUC for whole-image runs), logs/
(CSV + TensorBoard) and checkpoints/ (for --resume). A run killed at any point continues with the same
command plus --resume and ends with the same weights as an uninterrupted run. See docs/training.md.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from mammokit.cli.common import (
    UserError,
    add_command,
    add_compute_flags,
    add_config_args,
    add_data,
    add_out,
    add_seed,
)

log = logging.getLogger(__name__)


def add_training_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by `train patch`, `train whole` and `finetune`."""
    add_out(p, help="run folder to create (or to continue with --resume)")
    add_config_args(p)
    add_seed(p)
    add_compute_flags(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in --out from its last checkpoint (same result as an uninterrupted run)",
    )


def trainer_flags(args: argparse.Namespace) -> dict[str, Any]:
    """Nested config values of the shared flags (None = not given, the config's value stays)."""
    from mammokit.utils.device import trainer_device

    return {
        "out": args.out,
        "seed": args.seed,
        "resume": True if args.resume else None,
        "loader": {"batch_size": args.batch_size, "workers": args.workers},
        "trainer": trainer_device(args.device or "auto"),
    }


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "train",
        help="train the patch classifier or the whole-image classifier",
        description=__doc__,
    )
    stages = p.add_subparsers(dest="stage", metavar="STAGE", required=True)

    patch = stages.add_parser(
        "patch",
        help="3-stage patch-classifier training on a patch set (mammokit patches)",
        description="Train the patch classifier: stage 1 head only, stage 2 last block + head, stage 3 all "
        "layers, a fresh optimizer per stage; early stopping on val loss, best checkpoint by val accuracy.",
    )
    patch.add_argument(
        "--data", type=Path, required=True, metavar="PATCHES", help="patch-set folder (mammokit patches)"
    )
    add_training_flags(patch)
    patch.set_defaults(func=run)

    whole = stages.add_parser(
        "whole",
        help="2-stage whole-image training from a patch run (or from ImageNet with --no-patch-init)",
        description="Train the whole-image classifier with image-level labels: stage 1 new top layers only, "
        "stage 2 all layers; best checkpoint by validation AUC.",
    )
    add_data(whole)
    init = whole.add_mutually_exclusive_group(required=True)
    init.add_argument(
        "--from-patch", type=Path, metavar="PATCH_RUN", help="patch run folder whose trunk starts the model"
    )
    init.add_argument(
        "--no-patch-init",
        action="store_true",
        help="baseline: the same whole-image network from ImageNet weights, without the patch stage",
    )
    add_training_flags(whole)
    whole.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mammokit.config import ConfigError, load_config
    from mammokit.engine.config import PatchTrainConfig, WholeTrainConfig
    from mammokit.engine.runner import TrainingError
    from mammokit.engine.train import train_patch, train_whole
    from mammokit.utils.diskfull import disk_full_as

    flags = trainer_flags(args)
    flags["data"] = args.data
    try:
        if args.stage == "patch":
            cfg = load_config(PatchTrainConfig, args.config, args.set, flags)
            # a full disk (checkpoint, weights, logs): one line naming the folder, exit 2; model.json is written
            # last, so the run folder does not look finished, and `--resume` continues from the last checkpoint
            with disk_full_as(UserError, cfg.out or "runs"):
                out = train_patch(cfg)
        else:
            flags["from_patch"] = args.from_patch
            flags["no_patch_init"] = True if args.no_patch_init else None
            cfg = load_config(WholeTrainConfig, args.config, args.set, flags)
            with disk_full_as(UserError, cfg.out or "runs"):
                out = train_whole(cfg)
    except ConfigError as exc:
        raise UserError(f"configuration: {exc}") from None
    except (TrainingError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    report_trained(out)
    return 0


def report_trained(out: Path) -> None:
    """What `train` and `finetune` say at the end: the run's scores (a result line), then its folder on stdout."""
    from mammokit.engine.runner import global_rank

    if global_rank() == 0:  # under DDP every rank runs the command; one report is enough
        line = result_line(out)
        if line:
            log.info("%s", line)  # the result, on the console (a `mammokit.cli` line) and in the log file
        print(out)  # last, alone on stdout: scripts take the run folder from it


def result_line(run_dir: Path) -> str | None:
    """The trained run's scores from its metrics.json, in one line (None when the run has none)."""
    import json

    try:
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    parts = []
    for split in ("val", "test"):
        m = metrics.get(split) or {}
        scores = [f"{k.upper() if k == 'auc' else k} {m[k]:.3f}" for k in ("auc", "acc") if m.get(k) is not None]
        if scores:
            parts.append(f"{split} " + ", ".join(scores) + f" (n={m.get('n', '?')})")
    if not parts:
        return None
    kept, monitor = metrics.get("kept_weights", "best"), metrics.get("monitor")
    return f"{Path(run_dir).name}: " + "; ".join(parts) + f" (weights kept: {kept}; monitor: {monitor})"
