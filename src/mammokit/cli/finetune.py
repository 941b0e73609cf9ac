"""`mammokit finetune`: train a whole-image run further on a new dataset (the paper's CBIS-DDSM -> INbreast transfer).

Examples:
  mammokit finetune --from runs/whole --data prepared-inbreast --out runs/inbreast
  mammokit finetune --from runs/whole --data prepared-inbreast --out runs/inbreast-20 --train-patients 20

Stage 2 only (all layers), image-level labels only: no lesion annotations of the new dataset are needed.
`--train-patients N` trains on a random subset of N training patients (seeded by --seed) to measure how
performance grows with the amount of new data. The new run records its parent in model.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mammokit.cli.common import UserError, add_command, add_data


def register(sub: argparse._SubParsersAction) -> None:
    from mammokit.cli.train import add_training_flags

    p = add_command(
        sub,
        "finetune",
        help="stage-2 training of a whole-image run on a new prepared dataset (transfer)",
        description=__doc__,
    )
    p.add_argument("--from", dest="from_run", type=Path, required=True, metavar="RUN", help="whole-image run folder")
    add_data(p)
    p.add_argument(
        "--train-patients",
        type=int,
        metavar="N",
        help="train on N randomly chosen training patients (default: all)",
    )
    add_training_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mammokit.cli.train import report_trained, trainer_flags
    from mammokit.config import ConfigError, load_config
    from mammokit.engine.config import FinetuneConfig
    from mammokit.engine.runner import TrainingError
    from mammokit.engine.train import finetune
    from mammokit.utils.diskfull import disk_full_as

    flags = trainer_flags(args)
    flags.update({"data": args.data, "from_run": args.from_run, "train_patients": args.train_patients})
    try:
        cfg = load_config(FinetuneConfig, args.config, args.set, flags)
        with disk_full_as(UserError, cfg.out or "runs"):  # one line naming the folder, exit 2 (as train)
            out = finetune(cfg)
    except ConfigError as exc:
        raise UserError(f"configuration: {exc}") from None
    except (TrainingError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    report_trained(out)
    return 0
