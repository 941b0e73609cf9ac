"""`mammokit calibrate RUN --data PREPARED --split val`: fit temperature/Platt scaling and store it in the run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mammokit.cli.common import (
    UserError,
    add_command,
    add_compute_flags,
    add_config_args,
    add_data,
    device_flag,
    load_cli_config,
    require_data_and_runs,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "calibrate",
        help="fit temperature or Platt scaling on a validation split and store it in the run (calibration.json)",
        description=(
            "Predict one split (normally val) of a prepared dataset with a whole-image run, fit temperature or "
            "Platt scaling of p(malignant) on it, and write RUN/calibration.json. `mammokit predict` and "
            "`mammokit evaluate` then report calibrated probabilities; the stored threshold calls the same images "
            "positive (the maps are strictly increasing). Fit on a split you do not report (not test)."
        ),
    )
    p.add_argument("run", type=Path, metavar="RUN", help="whole-image run folder (calibration.json is written here)")
    add_data(p)
    p.add_argument("--split", default=None, help="split to fit on (default val)")
    p.add_argument(
        "--method", choices=("temperature", "platt"), default=None, help="calibration map (default temperature)"
    )
    p.add_argument(
        "--tta",
        action="store_true",
        default=None,
        help="fit on flip-averaged probabilities (prediction then uses TTA by default)",
    )
    add_compute_flags(p)
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mammokit.config import ConfigError
    from mammokit.data.manifest import ManifestError
    from mammokit.engine.calibrate import CalibrateConfig, calibrate
    from mammokit.engine.split_predict import EvaluationError
    from mammokit.run import RunFolderError

    flags: dict[str, Any] = {
        "split": args.split,
        "method": args.method,
        "tta": args.tta,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "device": device_flag(args),
    }
    cfg = load_cli_config(CalibrateConfig, args, flags)
    require_data_and_runs(args.data, [args.run])
    try:
        cal = calibrate(args.run, args.data, cfg)
    except (EvaluationError, RunFolderError, ManifestError, ConfigError) as exc:
        raise UserError(str(exc)) from None
    print(
        f"{cal['method']} calibration fitted on {cal['n_images']} images ({cal['fitted_on']}, tta={cal['tta']}): "
        f"ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}; written to {args.run / 'calibration.json'}"
    )
    return 0
