"""Evaluation: predict a prepared split with one or more runs, then report metrics with patient-clustered CIs.

Pipeline of `evaluate(runs, prepared, out, cfg)`:

1. `split_predict.predict_split` per run (the inference core): p(malignant) for every labelled image of the
   split (optionally the mean over the four flips, the paper's "augmented AUC"), raw and after the run's
   `calibration.json` if any (fitted beforehand by `mammokit calibrate`).
2. Several runs: `aggregate.ensemble_predictions` averages their probabilities (the paper's model averaging).
3. `aggregate.aggregate_predictions` to breast level (mean or max over views) and exam level (max over breasts).
4. `aggregate.model_results`: `mammokit.metrics.binary_report` at image/breast/exam level and per subgroup;
   DeLong between models.
5. Outputs, all in `out` (never in the run folders evaluated): predictions.csv (+ breast/exam tables),
   metrics.json, ROC/PR/reliability PNGs, report.html, evaluate.yaml.

The stored model threshold is on the scale of the run's raw p(malignant) (training picks it by Youden on
validation, before any calibration); where a calibration map is applied it is mapped through the same
strictly increasing map, so it calls exactly the same images positive.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from mammokit.config import dump_yaml, to_dict
from mammokit.data.geometry import shrink_stats
from mammokit.data.manifest import DATASET_JSON
from mammokit.engine.aggregate import aggregate_predictions, delong_pairs, ensemble_predictions, model_results
from mammokit.engine.split_predict import EvaluationError, check_whole_run, load_split, predict_split
from mammokit.metrics import apply_calibration, ece
from mammokit.run import ModelCard, read_calibration, read_card, unique_run_names
from mammokit.utils.atomic import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text
from mammokit.utils.diskfull import disk_full_guard
from mammokit.version import __version__

__all__ = [
    "ENSEMBLE",
    "EvaluateConfig",
    "EvaluationError",
    "aggregate_predictions",
    "ensemble_predictions",
    "evaluate",
    "load_split",
    "predict_split",
]

log = logging.getLogger(__name__)

ENSEMBLE = "ensemble"


@dataclass
class EvaluateConfig:
    """Settings of `mammokit evaluate` (written to the output folder as evaluate.yaml)."""

    split: str = "test"  # which split of the prepared manifest to evaluate
    tta: bool = False  # average p(malignant) over the four flips (none, horizontal, vertical, both)
    aggregate: Literal["mean", "max"] = "mean"  # how the views of one breast are combined
    n_boot: int = 2000  # bootstrap resamples of women for every CI
    seed: int = 0  # bootstrap seed
    alpha: float = 0.05  # 1 - confidence level
    specificities: list[float] = field(default_factory=lambda: [0.80, 0.90])  # fixed-specificity operating points
    sensitivities: list[float] = field(default_factory=lambda: [0.80, 0.90])  # fixed-sensitivity operating points
    ece_bins: int = 10  # equal-width bins of the expected calibration error
    batch_size: int = 8  # images per forward pass
    workers: int = 0  # DataLoader worker processes
    device: str = "auto"  # auto, cpu, cuda, cuda:1, mps

    def validate(self) -> None:
        from mammokit.config import ConfigError

        if self.n_boot < 1:
            raise ConfigError(f"n_boot must be >= 1, got {self.n_boot}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha must be in (0, 1), got {self.alpha}")
        for v in (*self.specificities, *self.sensitivities):
            if not 0 < v < 1:
                raise ConfigError(f"operating-point targets must be in (0, 1), got {v}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


def _card_summary(name: str, run_dir: Path, card: ModelCard, cal: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "name": name,
        "run_dir": str(run_dir),
        "task": card.task,
        "arch": card.arch,
        "backbone": card.arch_kwargs.get("backbone"),
        "top": card.arch_kwargs.get("top"),
        "input_height": card.input.height,
        "input_width": card.input.width,
        "channels": card.input.channels,
        "pixel_mean": card.input.pixel_mean,
        "pixel_std": card.input.pixel_std,
        "preprocess": to_dict(card.input.preprocess),
        "labels": card.labels,
        "positive_labels": card.positive_labels,
        "threshold": card.threshold,
        "threshold_rule": card.threshold_rule,
        "parent_run": card.parent_run,
        "created": card.created,
        "calibration": cal,
    }


def _data_summary(df: pd.DataFrame, prepared: Path, n_unknown: int) -> dict[str, Any]:
    breasts = df.groupby(["patient_id", "exam_id", "laterality"], observed=True)["label"].max()
    by_column = {}
    for column in ("view", "laterality", "density", "vendor", "site"):
        if column in df.columns and df[column].notna().any():
            by_column[column] = {str(k): int(v) for k, v in df[column].astype(str).value_counts().sort_index().items()}
    return {
        "prepared": str(prepared),
        "datasets": sorted(df["dataset"].astype(str).unique().tolist()),
        "n_images": len(df),
        "n_positive_images": int(df["label"].sum()),
        "n_patients": int(df["patient_id"].nunique()),
        "n_exams": int(df.groupby(["patient_id", "exam_id"]).ngroups),
        "n_breasts": len(breasts),
        "n_positive_breasts": int(breasts.sum()),
        "n_excluded_unknown_label": n_unknown,
        "by_column": by_column,
        **_shrunk_summary(df),
    }


def _shrunk_summary(df: pd.DataFrame) -> dict[str, Any]:
    """How many images had a breast larger than the canvas, shrunk to fit, and by how much (physical scale)."""
    if "fit_scale" not in df.columns:
        return {}
    n, largest, median = shrink_stats(pd.to_numeric(df["fit_scale"], errors="coerce").fillna(1.0))
    return {
        "n_shrunk_to_fit": n,
        "max_fit_scale": round(largest, 3),
        "median_fit_scale_of_shrunk": None if median is None else round(median, 3),
    }


def _nyu_columns(df: pd.DataFrame) -> pd.DataFrame:
    """predictions.csv: our columns plus the NYU mammography metarepository image-level contract."""
    out = df.copy()
    out.insert(0, "image_index", out["image_id"])
    out["malignant_pred"] = out["prob_malignant"]
    out["malignant_label"] = out["label"]
    first = ["image_id", "patient_id", "exam_id", "laterality", "view", "label", "prob_malignant"]
    rest = [c for c in out.columns if c not in first and c not in ("image_index", "malignant_pred", "malignant_label")]
    return out[[*first, *rest, "image_index", "malignant_pred", "malignant_label"]]


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")


def default_out_dir(run_dir: str | Path, prepared: str | Path, split: str) -> Path:
    """eval/<run>-<dataset>-<split> in the working folder, where <dataset> is the prepared folder's name."""
    return Path("eval") / f"{Path(run_dir).resolve().name}-{Path(prepared).resolve().name}-{split}"


def _in_sample(cal: dict[str, Any] | None, prepared: Path, split: str) -> bool:
    """Whether a calibration map was fitted on the very images being evaluated (its figures are then optimistic)."""
    return bool(cal) and cal.get("fitted_on") == f"{prepared.resolve().name} / {split}"


def evaluate(
    runs: Sequence[str | Path],
    prepared: str | Path,
    out: str | Path | None = None,
    cfg: EvaluateConfig | None = None,
    *,
    heatmaps: Sequence[tuple[str, bytes | Path]] = (),
    predictions: Sequence[pd.DataFrame] | None = None,
    heatmap_panels: Callable[[pd.DataFrame], Sequence[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Evaluate one run (or an ensemble of runs) on a prepared split and write all outputs to `out`.

    Nothing is written into the run folders: calibration maps are fitted by `mammokit calibrate`
    (`engine.calibrate.calibrate`) and only read here.

    Args:
        runs: run folders; several are also averaged into an ensemble (reported as the headline).
        prepared: prepared dataset folder.
        out: output folder (default for one run: `default_out_dir`, eval/<run>-<dataset>-<split>).
        cfg: settings (split, TTA, aggregation, bootstrap, operating points, inference); default EvaluateConfig().
        heatmaps: (caption, PNG) pairs to inline in the HTML report.
        predictions: precomputed `predict_split` frames, one per run (skips inference; used by tests/demo).
        heatmap_panels: called with the headline predictions; returns the report's heatmap panels
            (`explain.report_panels.report_panels`: explain sits beside engine, so the CLI passes it in).

    Returns:
        The metrics dict also written to `out/metrics.json` (key "out" adds the output folder).
    """
    from mammokit.report import evaluation_plots, render_report

    cfg = cfg if cfg is not None else EvaluateConfig()
    cfg.validate()
    split = cfg.split
    run_dirs = [Path(r) for r in runs]
    if not run_dirs:
        raise EvaluationError("give at least one run folder to evaluate")
    prepared = Path(prepared)
    if out is None:
        if len(run_dirs) > 1:
            raise EvaluationError("several runs form an ensemble: give an output folder (--out)")
        out = default_out_dir(run_dirs[0], prepared, split)
    out = Path(out)
    cards = [read_card(r) for r in run_dirs]
    for run_dir, card in zip(run_dirs, cards, strict=True):
        check_whole_run(card, run_dir)
    names = unique_run_names([run.resolve().name or "run" for run in run_dirs], reserved=(ENSEMBLE,))
    images, n_unknown = load_split(prepared, split)
    notes: list[str] = []

    frames: dict[str, pd.DataFrame] = {}
    cals: dict[str, dict[str, Any] | None] = {}
    for i, (name, run_dir) in enumerate(zip(names, run_dirs, strict=True)):
        if predictions is not None:
            df = predictions[i].copy()
        else:
            df = predict_split(run_dir, prepared, split, tta=cfg.tta, batch_size=cfg.batch_size, device=cfg.device,
                               workers=cfg.workers, images=images)  # fmt: skip
        cal = read_calibration(run_dir)
        if cal and bool(cal.get("tta", cfg.tta)) != cfg.tta:
            notes.append(f"{name}: calibration was fitted with tta={cal.get('tta')} but evaluated with tta={cfg.tta}")
        if _in_sample(cal, prepared, split):
            notes.append(f"{name}: calibration.json was fitted on these images; calibrated figures below are in-sample")
        frames[name] = df
        cals[name] = cal

    results: dict[str, Any] = {}
    for name, card in zip(names, cards, strict=True):
        cal = cals[name]
        threshold = float(apply_calibration(card.threshold, cal)) if cal else float(card.threshold)
        res = model_results(frames[name], threshold, cfg, notes, name)
        raw_ece = ece(frames[name]["label"].to_numpy(), frames[name]["prob_uncalibrated"].to_numpy(), cfg.ece_bins)
        res["calibration"] = {
            "method": cal.get("method") if cal else None,
            "fitted_on": cal.get("fitted_on") if cal else None,
            "ece_uncalibrated": raw_ece,
            "ece_calibrated": res["image"]["ece"] if cal else None,
            "in_sample": _in_sample(cal, prepared, split),
            "model_threshold_raw": float(card.threshold),
        }
        results[name] = res
    primary = names[0]
    if len(names) > 1:
        ens = ensemble_predictions([frames[n] for n in names], names)
        frames[ENSEMBLE] = ens
        results[ENSEMBLE] = model_results(ens, None, cfg, notes, ENSEMBLE)
        results[ENSEMBLE]["calibration"] = {"method": None, "ece_uncalibrated": None, "in_sample": False}
        primary = ENSEMBLE
    delong = delong_pairs(frames, notes) if len(frames) > 1 else []
    panels: Sequence[dict[str, Any]] = []
    if heatmap_panels is not None:
        try:
            panels = heatmap_panels(frames[primary])
        except Exception as exc:  # the metrics are complete without the pictures: report and go on
            log.warning("heatmap panels failed: %s", exc)
            notes.append(f"heatmaps for the report could not be made: {type(exc).__name__}: {exc}")

    metrics: dict[str, Any] = {
        "mammokit_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "split": split,
        # every run is scored by the float32 torch model (split_predict's TorchScorer, no autocast): the same
        # numbers on every CPU; recorded so that a reader can compare with predict/serve, which may use bfloat16
        "precision": "float32",
        "settings": {**to_dict(cfg), "ci_level": 1.0 - cfg.alpha},
        "data": _data_summary(frames[primary], prepared, n_unknown),
        "models": [_card_summary(n, r, c, cals[n]) for n, r, c in zip(names, run_dirs, cards, strict=True)],
        "primary": primary,
        "results": results,
        "delong": delong,
        "warnings": notes,
    }
    dataset_json = prepared / DATASET_JSON
    if dataset_json.is_file():
        metrics["data"]["dataset_json"] = str(dataset_json)
    _write_outputs(
        out,
        metrics,
        lambda: _write_tables_and_report(
            out, metrics, frames, primary, cfg, heatmaps, panels, evaluation_plots, render_report
        ),
    )
    log.info("evaluation written to %s", out)
    return {**metrics, "out": str(out)}


def _write_outputs(out: Path, metrics: dict[str, Any], write_tables_and_report: Callable[[], None]) -> None:
    """predictions.csv, breast/exam tables, plots, evaluate.yaml, report.html (`write_tables_and_report`) and, last,
    metrics.json in `out`.

    metrics.json marks the folder complete: one from an earlier evaluation is removed first, and on a full disk
    (`DiskFullError`: the folder, the space available) it is not written, so no half-written folder looks done.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)
    with disk_full_guard(out, cleanup=[out / "metrics.json"]):
        write_tables_and_report()
        atomic_write_json(out / "metrics.json", metrics)


def _write_tables_and_report(
    out: Path,
    metrics: dict[str, Any],
    frames: dict[str, pd.DataFrame],
    primary: str,
    cfg: EvaluateConfig,
    heatmaps: Sequence[tuple[str, bytes | Path]],
    panels: Sequence[dict[str, Any]],
    evaluation_plots: Any,
    render_report: Any,
) -> None:
    results = metrics["results"]
    pred = frames[primary]
    _write_csv(_nyu_columns(pred), out / "predictions.csv")
    _write_csv(aggregate_predictions(pred, "breast", cfg.aggregate), out / "breast_predictions.csv")
    _write_csv(aggregate_predictions(pred, "exam", cfg.aggregate), out / "exam_predictions.csv")
    reliability = [(n, results[n]["image"]) for n in (frames if len(frames) > 1 else [primary])]
    inputs = _plot_inputs(frames, results, primary, cfg.aggregate)
    plots = evaluation_plots(inputs, results[primary]["image"], reliability)
    for key, png in plots.items():
        atomic_write_bytes(out / f"{key}.png", png)
    atomic_write_text(out / "evaluate.yaml", dump_yaml(cfg))
    render_report(metrics, plots, out / "report.html", heatmaps=heatmaps, heatmap_panels=panels)


def _plot_inputs(
    frames: dict[str, pd.DataFrame], results: dict[str, Any], primary: str, aggregate: str
) -> list[dict[str, Any]]:
    """Curves to draw: every model at image level, or for a single run its image, breast and exam levels."""
    if len(frames) > 1:
        chosen = [(name, frames[name], results[name]["image"]) for name in frames]
    else:
        df = frames[primary]
        chosen = [(f"{primary} (image)", df, results[primary]["image"])]
        for lvl in ("breast", "exam"):
            agg = aggregate_predictions(df, lvl, aggregate)
            chosen.append((f"{primary} ({lvl}, {aggregate})", agg, results[primary][lvl]))
    return [
        {"name": label, "y": df["label"].to_numpy(), "p": df["prob_malignant"].to_numpy(), "report": rep}
        for label, df, rep in chosen
    ]
