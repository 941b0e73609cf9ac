"""Evaluation: predict a prepared split with one or more runs, then report metrics with patient-clustered CIs.

Pipeline of `evaluate(runs, prepared, split, out)`:

1. `predict_prepared` per run: p(malignant) for every labelled image of the split (optionally the mean over
   the four flips, the paper's "augmented AUC"), raw and after the run's `calibration.json` if any.
2. Optionally fit temperature/Platt scaling on these predictions and store it in each run (`--fit-calibration`,
   meant for the validation split).
3. Several runs: `ensemble_predictions` averages their probabilities (the paper's model averaging).
4. `aggregate_predictions` to breast level (mean or max over views) and exam level (max over breasts).
5. `mammokit.metrics.binary_report` at image/breast/exam level and per subgroup; DeLong between models.
6. Outputs: predictions.csv (+ breast/exam tables), metrics.json, ROC/PR/reliability PNGs, report.html.

The stored model threshold is on the scale of the run's raw p(malignant) (training picks it by Youden on
validation, before any calibration); where a calibration map is applied it is mapped through the same
strictly increasing map, so it calls exactly the same images positive.
"""

from __future__ import annotations

import datetime as _dt
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from mammokit.config import dump_yaml, to_dict
from mammokit.constants import VIEWS
from mammokit.data.manifest import DATASET_JSON, read_images
from mammokit.metrics import (
    OneClassWarning,
    apply_calibration,
    binary_report,
    delong_test,
    ece,
    fit_platt,
    fit_temperature,
)
from mammokit.run import CALIBRATION_JSON, ModelCard, read_calibration, read_card, write_metrics
from mammokit.utils.atomic import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text
from mammokit.version import __version__

log = logging.getLogger(__name__)

# Optional manifest columns reported as subgroups (when present with at least two values).
SUBGROUP_COLUMNS: tuple[str, ...] = ("view", "density", "dataset", "site", "vendor")
ID_COLUMNS: tuple[str, ...] = ("image_id", "patient_id", "exam_id", "laterality", "view", "label", "dataset")
OPTIONAL_COLUMNS: tuple[str, ...] = ("density", "birads", "vendor", "site")
ENSEMBLE = "ensemble"


class EvaluationError(ValueError):
    """The inputs cannot be evaluated as given; the message says what to change."""


@dataclass
class EvaluateConfig:
    """Settings of `mammokit evaluate` (written to the output folder as evaluate.yaml)."""

    split: str = "test"  # which split of the prepared manifest to evaluate
    tta: bool = False  # average p(malignant) over the four flips (none, horizontal, vertical, both)
    aggregate: Literal["mean", "max"] = "mean"  # how the views of one breast are combined
    fit_calibration: Literal["none", "temperature", "platt"] = "none"  # fit on this split, store in each run
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


# ----------------------------------------------------------------------------------------------- prediction


def load_split(prepared: str | Path, split: str) -> tuple[pd.DataFrame, int]:
    """Labelled images of `split` and the number of images skipped for an unknown label (-1)."""
    images = read_images(prepared)
    if "split" not in images.columns or "image_file" not in images.columns:
        raise EvaluationError(f"{prepared}: manifest lacks 'split'/'image_file'; run `mammokit prepare` on it")
    table = images[images["split"].astype(str) == split]
    if table.empty:
        found = sorted(images["split"].astype(str).unique().tolist())
        raise EvaluationError(f"{prepared}: no images in split {split!r}; splits present: {found}")
    known = table[table["label"].astype(int) >= 0].copy()
    if known.empty:
        raise EvaluationError(f"{prepared}: split {split!r} has no labelled images (all labels are -1)")
    for col in ("image_id", "patient_id", "exam_id", "laterality", "view", "dataset"):
        known[col] = known[col].astype(str)
    known["label"] = known["label"].astype(int)
    return known.reset_index(drop=True), int(len(table) - len(known))


def _flips(x: Any) -> list[Any]:
    """The four flips of a (B, C, H, W) batch: none, horizontal (columns), vertical (rows), both."""
    import torch

    return [x, torch.flip(x, dims=[-1]), torch.flip(x, dims=[-2]), torch.flip(x, dims=[-2, -1])]


def _check_card(card: ModelCard, run_dir: Path) -> None:
    if card.task != "whole":
        raise EvaluationError(
            f"{run_dir} is a {card.task!r} run; `mammokit evaluate` scores whole images, so pass a whole-image run "
            "(`mammokit train whole`)"
        )


def predict_prepared(
    run_dir: str | Path,
    prepared: str | Path,
    split: str,
    *,
    tta: bool = False,
    batch_size: int = 8,
    device: str = "auto",
    workers: int = 0,
    images: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """p(malignant) of one run for every labelled image of a prepared split.

    Args:
        run_dir: run folder (model.json + model.safetensors [+ calibration.json]).
        prepared: prepared dataset folder.
        split: "train", "val" or "test".
        tta: mean over the four flips instead of the image as is.
        batch_size, device, workers: inference settings.
        images: the split's labelled rows (from `load_split`) to avoid re-reading the manifest.

    Returns:
        One row per image: the id columns, optional density/birads/vendor/site, `prob_uncalibrated`
        (sum of softmax over the card's positive labels) and `prob_malignant` (after calibration.json when
        the run has one, else equal to the raw probability).
    """
    import torch
    from torch.utils.data import DataLoader

    from mammokit.data.datasets import WholeImageDataset
    from mammokit.run import load_model
    from mammokit.utils.device import resolve_device

    run_dir = Path(run_dir)
    card = read_card(run_dir)
    _check_card(card, run_dir)
    if images is None:
        images, _ = load_split(prepared, split)
    dev = resolve_device(device)
    model, card = load_model(run_dir, device=dev)
    positive = card.positive_indices
    dataset = WholeImageDataset(prepared, images, mean=card.input.pixel_mean, std=card.input.pixel_std)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    expected = (card.input.height, card.input.width)
    probs: list[np.ndarray] = []
    with torch.inference_mode():
        for batch in loader:
            x = batch["image"].to(dev, non_blocking=True)  # (B, 1, H, W), normalised
            if tuple(x.shape[-2:]) != expected:
                raise EvaluationError(
                    f"{run_dir.name} expects {expected[0]}x{expected[1]} images but {prepared} holds "
                    f"{x.shape[-2]}x{x.shape[-1]}; prepare the data with the run's size (see model.json input)"
                )
            views = _flips(x) if tta else [x]
            p = torch.zeros(x.shape[0], device=dev)
            for v in views:
                p += torch.softmax(model(v).float(), dim=1)[:, positive].sum(dim=1)
            probs.append((p / len(views)).cpu().numpy().astype(np.float64))
    raw = np.concatenate(probs) if probs else np.zeros(0)
    out = dataset.table[[c for c in (*ID_COLUMNS, *OPTIONAL_COLUMNS) if c in dataset.table.columns]].copy()
    out["prob_uncalibrated"] = raw
    out["prob_malignant"] = apply_calibration(raw, read_calibration(run_dir))
    log.info("%s: predicted %d images of split %s (tta=%s)", run_dir.name, len(out), split, tta)
    return out.reset_index(drop=True)


def ensemble_predictions(frames: Sequence[pd.DataFrame], names: Sequence[str]) -> pd.DataFrame:
    """Average several runs' probabilities on the same images (the paper's model averaging).

    Returns the first frame's id columns, `prob_malignant`/`prob_uncalibrated` = means over runs, and one
    `prob_<name>` column per run.
    """
    if len(frames) != len(names) or not frames:
        raise ValueError("ensemble_predictions needs one name per (non-empty list of) prediction frames")
    base = frames[0].drop(columns=["prob_malignant", "prob_uncalibrated"]).copy()
    ids = base["image_id"].tolist()
    cal, raw = [], []
    for name, frame in zip(names, frames, strict=True):
        if frame["image_id"].tolist() != ids or not np.array_equal(frame["label"].to_numpy(), base["label"].to_numpy()):
            raise EvaluationError(f"run {name!r} did not predict the same images in the same order as the others")
        base[f"prob_{name}"] = frame["prob_malignant"].to_numpy()
        cal.append(frame["prob_malignant"].to_numpy())
        raw.append(frame["prob_uncalibrated"].to_numpy())
    base["prob_uncalibrated"] = np.mean(raw, axis=0)
    base["prob_malignant"] = np.mean(cal, axis=0)
    return base


# ----------------------------------------------------------------------------------------------- aggregation


def aggregate_predictions(
    df: pd.DataFrame, level: Literal["breast", "exam"], how: Literal["mean", "max"] = "mean"
) -> pd.DataFrame:
    """Breast level: `how` over the images of (patient, exam, laterality); exam level: max over its breasts.

    A breast (exam) is malignant when any of its images is. Returns patient_id, exam_id, [laterality],
    label, prob_malignant, n_images.
    """
    if how not in ("mean", "max"):
        raise ValueError(f"aggregate must be 'mean' or 'max', got {how!r}")
    keys = ["patient_id", "exam_id", "laterality"]
    breast = (
        df.groupby(keys, sort=True, observed=True)
        .agg(label=("label", "max"), prob_malignant=("prob_malignant", how), n_images=("image_id", "size"))
        .reset_index()
    )
    if level == "breast":
        return breast
    if level != "exam":
        raise ValueError(f"level must be 'breast' or 'exam', got {level!r}")
    return (
        breast.groupby(["patient_id", "exam_id"], sort=True, observed=True)
        .agg(label=("label", "max"), prob_malignant=("prob_malignant", "max"), n_images=("n_images", "sum"))
        .reset_index()
    )


def _subgroup_values(df: pd.DataFrame, column: str) -> pd.Series | None:
    if column not in df.columns:
        return None
    values = df[column]
    if column == "view":
        values = values.astype(str).where(values.astype(str).isin(VIEWS), "other")
    values = values.astype("string").fillna("unknown")
    values = values.where(values.str.strip() != "", "unknown")
    return values if values.nunique() >= 2 else None


# ----------------------------------------------------------------------------------------------- metrics


def _report(df: pd.DataFrame, threshold: float | None, cfg: EvaluateConfig) -> dict[str, Any]:
    return binary_report(
        df["label"].to_numpy(),
        df["prob_malignant"].to_numpy(),
        df["patient_id"].to_numpy(),
        model_threshold=threshold,
        specificities=cfg.specificities,
        sensitivities=cfg.sensitivities,
        n_boot=cfg.n_boot,
        seed=cfg.seed,
        alpha=cfg.alpha,
        ece_bins=cfg.ece_bins,
    )


def model_results(
    df: pd.DataFrame, threshold: float | None, cfg: EvaluateConfig, notes: list[str], name: str
) -> dict[str, Any]:
    """Image/breast/exam reports and per-subgroup image-level reports for one model's predictions."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OneClassWarning)
        result: dict[str, Any] = {"image": _report(df, threshold, cfg)}
    if caught:
        notes.append(f"{name}: the evaluated images contain only one class; AUC and operating points are n/a")
    breast = aggregate_predictions(df, "breast", cfg.aggregate)
    exam = aggregate_predictions(df, "exam", cfg.aggregate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OneClassWarning)  # already reported at image level
        # The model threshold is applied to breast/exam scores too: with "max" a breast is called positive
        # exactly when one of its images is; with "mean" when its views' average reaches the threshold.
        result["breast"] = _report(breast, threshold, cfg)
        result["exam"] = _report(exam, threshold, cfg)
        subgroups: dict[str, dict[str, Any]] = {}
        for column in SUBGROUP_COLUMNS:
            values = _subgroup_values(df, column)
            if values is None:
                continue
            subgroups[column] = {}
            for value in sorted(values.unique()):
                part = df[(values == value).to_numpy()]
                rep = _report(part, threshold, cfg)
                rep.pop("reliability", None)  # keep metrics.json readable; the main table has it
                subgroups[column][str(value)] = rep
        result["subgroups"] = subgroups
    return result


def _delong_pairs(frames: dict[str, pd.DataFrame], notes: list[str]) -> list[dict[str, Any]]:
    names = list(frames)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            y = frames[a]["label"].to_numpy()
            try:
                res = delong_test(y, frames[a]["prob_malignant"].to_numpy(), frames[b]["prob_malignant"].to_numpy())
            except ValueError as exc:
                notes.append(f"DeLong test {a} vs {b} skipped: {exc}")
                continue
            out.append(
                {"a": a, "b": b, "auc_a": res.auc1, "auc_b": res.auc2, "z": res.z, "p_value": res.p_value, "n": len(y)}
            )
    return out


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
    }


def _run_names(runs: Sequence[Path]) -> list[str]:
    names: list[str] = []
    for run in runs:
        base = run.resolve().name or "run"
        name, k = base, 2
        while name in names or name == ENSEMBLE:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def _fit_and_store(kind: str, run_dir: Path, df: pd.DataFrame, prepared: Path, split: str, tta: bool) -> dict[str, Any]:
    fit = fit_temperature if kind == "temperature" else fit_platt
    try:
        cal = fit(df["prob_uncalibrated"].to_numpy(), df["label"].to_numpy())
    except ValueError as exc:
        raise EvaluationError(f"{run_dir.name}: cannot fit {kind} calibration: {exc}") from None
    cal.update(
        {
            "fitted_on": f"{prepared.name} / {split}",
            "tta": bool(tta),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "mammokit_version": __version__,
        }
    )
    atomic_write_json(run_dir / CALIBRATION_JSON, cal)
    log.info("%s: wrote %s (%s)", run_dir.name, CALIBRATION_JSON, kind)
    return cal


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


# ----------------------------------------------------------------------------------------------- entry point


def default_out_dir(run_dir: str | Path, prepared: str | Path, split: str) -> Path:
    """RUN/eval/<dataset>-<split>, where <dataset> is the prepared folder's name."""
    return Path(run_dir) / "eval" / f"{Path(prepared).resolve().name}-{split}"


def evaluate(
    runs: Sequence[str | Path],
    prepared: str | Path,
    split: str = "test",
    out: str | Path | None = None,
    *,
    tta: bool = False,
    aggregate: Literal["mean", "max"] = "mean",
    fit_calibration: Literal["none", "temperature", "platt"] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    specificities: Sequence[float] = (0.80, 0.90),
    sensitivities: Sequence[float] = (0.80, 0.90),
    ece_bins: int = 10,
    batch_size: int = 8,
    device: str = "auto",
    workers: int = 0,
    heatmaps: Sequence[tuple[str, bytes | Path]] = (),
    predictions: Sequence[pd.DataFrame] | None = None,
    heatmap_panels: Callable[[pd.DataFrame], Sequence[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Evaluate one run (or an ensemble of runs) on a prepared split and write all outputs to `out`.

    Args:
        runs: run folders; several are also averaged into an ensemble (reported as the headline).
        prepared: prepared dataset folder.
        split: split of the manifest to evaluate.
        out: output folder (default for one run: RUN/eval/<dataset>-<split>).
        tta: average over the four flips.
        aggregate: "mean" or "max" over the views of a breast.
        fit_calibration: "temperature" or "platt" fits on this split and writes RUN/calibration.json.
        n_boot, seed, alpha: clustered-bootstrap settings.
        specificities, sensitivities: fixed operating-point targets.
        ece_bins: bins of the expected calibration error.
        batch_size, device, workers: inference settings.
        heatmaps: (caption, PNG) pairs to inline in the HTML report.
        predictions: precomputed `predict_prepared` frames, one per run (skips inference; used by tests/demo).
        heatmap_panels: called with the headline predictions; returns the report's heatmap panels
            (`infer.heatmap_report.report_panels`; engine does not import infer, so the CLI passes it in).

    Returns:
        The metrics dict also written to `out/metrics.json` (key "out" adds the output folder).
    """
    from mammokit.report import evaluation_plots, render_report

    cfg = EvaluateConfig(
        split=split,
        tta=tta,
        aggregate=aggregate,
        fit_calibration=fit_calibration or "none",
        n_boot=n_boot,
        seed=seed,
        alpha=alpha,
        specificities=list(specificities),
        sensitivities=list(sensitivities),
        ece_bins=ece_bins,
        batch_size=batch_size,
        workers=workers,
        device=device,
    )
    cfg.validate()
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
        _check_card(card, run_dir)
    names = _run_names(run_dirs)
    images, n_unknown = load_split(prepared, split)
    notes: list[str] = []

    frames: dict[str, pd.DataFrame] = {}
    cals: dict[str, dict[str, Any] | None] = {}
    for i, (name, run_dir) in enumerate(zip(names, run_dirs, strict=True)):
        if predictions is not None:
            df = predictions[i].copy()
        else:
            df = predict_prepared(
                run_dir, prepared, split, tta=tta, batch_size=batch_size, device=device, workers=workers, images=images
            )
        if cfg.fit_calibration != "none":
            cal = _fit_and_store(cfg.fit_calibration, run_dir, df, prepared, split, tta)
            df["prob_malignant"] = apply_calibration(df["prob_uncalibrated"].to_numpy(), cal)
            notes.append(
                f"{name}: {cfg.fit_calibration} calibration was fitted on these images and written to "
                f"{run_dir / CALIBRATION_JSON}; calibrated figures below are in-sample"
            )
        else:
            cal = read_calibration(run_dir)
            if cal and bool(cal.get("tta", tta)) != tta:
                notes.append(f"{name}: calibration was fitted with tta={cal.get('tta')} but evaluated with tta={tta}")
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
            "in_sample": cfg.fit_calibration != "none",
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
    delong = _delong_pairs(frames, notes) if len(frames) > 1 else []

    metrics: dict[str, Any] = {
        "mammokit_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "split": split,
        "settings": {**to_dict(cfg), "ci_level": 1.0 - alpha},
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

    out.mkdir(parents=True, exist_ok=True)
    pred = frames[primary]
    _write_csv(_nyu_columns(pred), out / "predictions.csv")
    _write_csv(aggregate_predictions(pred, "breast", aggregate), out / "breast_predictions.csv")
    _write_csv(aggregate_predictions(pred, "exam", aggregate), out / "exam_predictions.csv")
    reliability = [(n, results[n]["image"]) for n in (frames if len(frames) > 1 else [primary])]
    plots = evaluation_plots(_plot_inputs(frames, results, primary, aggregate), results[primary]["image"], reliability)
    for key, png in plots.items():
        atomic_write_bytes(out / f"{key}.png", png)
    panels: Sequence[dict[str, Any]] = []
    if heatmap_panels is not None:
        try:
            panels = heatmap_panels(pred)
        except Exception as exc:  # the metrics are complete without the pictures: report and go on
            log.warning("heatmap panels failed: %s", exc)
            notes.append(f"heatmaps for the report could not be made: {type(exc).__name__}: {exc}")
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_text(out / "evaluate.yaml", dump_yaml(cfg))
    render_report(metrics, plots, out / "report.html", heatmaps=heatmaps, heatmap_panels=panels)
    for name, run_dir in zip(names, run_dirs, strict=True):
        auc = results[name]["image"]["auc"]
        key = f"eval/{prepared.resolve().name}-{split}" + ("-tta" if tta else "")
        summary = {"auc": auc["value"], "auc_ci": [auc["ci_low"], auc["ci_high"]], "out": str(out)}
        try:
            write_metrics(run_dir, {key: {**summary, "n_images": results[name]["image"]["n"]}})
        except OSError as exc:  # e.g. a read-only, downloaded run folder: the outputs in `out` are complete
            log.warning("could not add the summary to %s/metrics.json: %s", run_dir.name, exc)
    log.info("evaluation written to %s", out)
    return {**metrics, "out": str(out)}


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
