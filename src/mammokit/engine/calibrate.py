"""`calibrate(run, prepared, cfg)`: fit temperature or Platt scaling on a (validation) split, store it in the run.

The one command that writes `RUN/calibration.json` (plain JSON, read by `evaluate` and `predict`). The map is
fitted on the run's raw p(malignant) of the split's labelled images, predicted through the inference core with
the TTA setting that prediction will use (recorded as `"tta"`, so `Predictor` follows it by default).
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from mammokit.engine.split_predict import EvaluationError, check_whole_run, predict_split
from mammokit.metrics import apply_calibration, ece, fit_platt, fit_temperature
from mammokit.run import CALIBRATION_JSON, read_card
from mammokit.utils.atomic import atomic_write_json
from mammokit.version import __version__

log = logging.getLogger(__name__)


@dataclass
class CalibrateConfig:
    """Settings of `mammokit calibrate`."""

    split: str = "val"  # the split to fit on: never the one you report (test)
    method: Literal["temperature", "platt"] = "temperature"  # temperature: 1 parameter; platt: slope + intercept
    tta: bool = False  # fit on flip-averaged probabilities (then predict with TTA too)
    ece_bins: int = 10  # equal-width bins of the ECE reported before/after
    batch_size: int = 8  # images per forward pass
    workers: int = 0  # DataLoader worker processes
    device: str = "auto"  # auto, cpu, cuda, cuda:1, mps

    def validate(self) -> None:
        from mammokit.config import ConfigError

        if self.method not in ("temperature", "platt"):
            raise ConfigError(f"method must be 'temperature' or 'platt', got {self.method!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


def calibrate(
    run_dir: str | Path,
    prepared: str | Path,
    cfg: CalibrateConfig | None = None,
    *,
    predictions: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Fit the calibration map on `cfg.split` of `prepared` and write it to `run_dir/calibration.json`.

    Args:
        run_dir: a whole-image run folder (it is written to: calibration.json is replaced).
        prepared: prepared dataset folder.
        cfg: settings; default CalibrateConfig() (temperature scaling on the validation split).
        predictions: a precomputed `predict_split` frame of this run and split (skips inference; for tests).

    Returns:
        The stored map (method, parameters, fit statistics, fitted_on, tta) plus n_images and the ECE before
        and after on the fitting images.
    """
    cfg = cfg if cfg is not None else CalibrateConfig()
    cfg.validate()
    run_dir, prepared = Path(run_dir), Path(prepared)
    check_whole_run(read_card(run_dir), run_dir)
    df = predictions if predictions is not None else predict_split(
        run_dir, prepared, cfg.split, tta=cfg.tta, batch_size=cfg.batch_size, device=cfg.device, workers=cfg.workers
    )  # fmt: skip
    raw, y = df["prob_uncalibrated"].to_numpy(), df["label"].to_numpy()
    fit = fit_temperature if cfg.method == "temperature" else fit_platt
    try:
        cal = fit(raw, y)
    except ValueError as exc:
        raise EvaluationError(f"{run_dir.name}: cannot fit {cfg.method} calibration on {cfg.split!r}: {exc}") from None
    cal.update(
        {
            "fitted_on": f"{prepared.resolve().name} / {cfg.split}",
            "tta": bool(cfg.tta),
            "n_images": len(df),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "mammokit_version": __version__,
        }
    )
    atomic_write_json(run_dir / CALIBRATION_JSON, cal)
    log.info("%s: wrote %s (%s, fitted on %d images)", run_dir.name, CALIBRATION_JSON, cfg.method, len(df))
    return {
        **cal,
        "ece_before": ece(y, raw, cfg.ece_bins),
        "ece_after": ece(y, apply_calibration(raw, cal), cfg.ece_bins),
    }
