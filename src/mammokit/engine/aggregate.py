"""Scoring of prediction tables: model averaging, breast/exam aggregation, per-level and per-subgroup reports
with patient-clustered CIs, and DeLong tests between models. Tables in, JSON-able dicts out (no model, no files).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from mammokit.constants import VIEWS
from mammokit.engine.split_predict import EvaluationError
from mammokit.metrics import OneClassWarning, binary_report, delong_test
from mammokit.metrics.levels import EXAM_AGGREGATE, check_aggregate

if TYPE_CHECKING:
    from mammokit.engine.evaluate import EvaluateConfig

# Optional manifest columns reported as subgroups (when present with at least two values).
SUBGROUP_COLUMNS: tuple[str, ...] = ("view", "density", "dataset", "site", "vendor")


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


def aggregate_predictions(
    df: pd.DataFrame, level: Literal["breast", "exam"], how: Literal["mean", "max"] = "mean"
) -> pd.DataFrame:
    """Breast level: `how` over the images of (patient, exam, laterality); exam level: max over its breasts
    (`metrics.levels`, the rule serve applies to one upload).

    A breast (exam) is malignant when any of its images is. Returns patient_id, exam_id, [laterality],
    label, prob_malignant, n_images.
    """
    check_aggregate(how)
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
        .agg(label=("label", "max"), prob_malignant=("prob_malignant", EXAM_AGGREGATE), n_images=("n_images", "sum"))
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


def delong_pairs(frames: dict[str, pd.DataFrame], notes: list[str]) -> list[dict[str, Any]]:
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
