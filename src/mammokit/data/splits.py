"""Patient-level train/val/test splits: stratified by patient label, seeded, official splits kept, files in/out.

Every image of a woman lands in the same split (images of one patient are strongly correlated, so an image-level
split leaks). A patient is positive when any of her images is malignant (label 1); the split is stratified on
that, as in Shen et al. (scikit-learn `train_test_split(stratify=patient label)`).

Fractions: `test_fraction` of all patients go to test; `val_fraction` of the remaining (training) patients go to
val, which is how Shen et al. describe it (85/15 train/test, then 10% of training held out for validation). Where a
dataset has an official split (the adapter pre-fills `split`), official test (and val) patients are kept and val
is carved out of the official training patients.

A split file (`export_splits` / `import_splits`) is a CSV `patient_id,split`, one row per patient, so that a
published split can be reproduced exactly on another machine.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from mammokit.utils.atomic import atomic_write_text

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")


class SplitError(ValueError):
    """A split is inconsistent (a patient in two splits) or a split file does not fit the manifest."""


def patient_labels(images: pd.DataFrame) -> pd.Series:
    """1 if any image of the patient is malignant, else 0 (unknown labels, -1, count as not malignant)."""
    return (images["label"].astype(int) == 1).groupby(images["patient_id"].astype(str)).max().astype(int)


def _split_patients(
    patients: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held_out) patient arrays; held_out ~ `fraction` of them, stratified by label where possible."""
    from sklearn.model_selection import train_test_split

    n = len(patients)
    n_out = int(np.ceil(fraction * n)) if fraction > 0 else 0
    if n_out == 0:
        return patients, patients[:0]
    if n_out >= n:
        raise SplitError(f"cannot hold out {fraction:.0%} of {n} patients and keep any for training")
    counts = np.bincount(labels, minlength=2)
    # stratifying needs >= 2 patients per class and room for every class in both parts
    stratify = labels if counts.min() >= 2 and n_out >= 2 and n - n_out >= 2 else None
    if stratify is None and len(set(labels.tolist())) > 1:
        log.warning("split of %d patients is not stratified: too few patients per class", n)
    kept, out = train_test_split(patients, test_size=n_out, stratify=stratify, random_state=seed, shuffle=True)
    return np.sort(kept), np.sort(out)


def assign_splits(
    images: pd.DataFrame,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.15,
    keep_official: bool = True,
) -> pd.DataFrame:
    """Fill the `split` column patient by patient.

    Args:
        images: image table with `patient_id`, `label` and (optionally pre-filled) `split`.
        seed: random seed; the same seed, table and fractions give the same split on any machine.
        val_fraction: fraction of the training patients (after test is set aside) held out for validation.
        test_fraction: fraction of all patients put in test (only for patients without an official split).
        keep_official: keep a pre-filled official split ('test'/'val' kept, val carved from 'train').

    Returns:
        A copy of `images` with `split` in {'train', 'val', 'test'} for every row.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise SplitError(f"{name}={value} must be in [0, 1)")
    if images.empty:
        raise SplitError("cannot split an empty image table")
    out = images.copy()
    pid = out["patient_id"].astype(str)
    labels = patient_labels(out)
    official = (
        out["split"].fillna("").astype(str)
        if (keep_official and "split" in out.columns)
        else pd.Series("", index=out.index)
    )
    bad = set(official.unique()) - {"", *SPLIT_NAMES}
    if bad:
        raise SplitError(f"unknown split names {sorted(bad)} in the `split` column; use {SPLIT_NAMES} or ''")
    per_patient = official.groupby(pid).agg(lambda s: set(s) - {""})
    conflicting = [p for p, s in per_patient.items() if len(s) > 1]
    if conflicting:
        raise SplitError(
            f"{len(conflicting)} patients have images in more than one official split; resolve them first "
            "(e.g. the CBIS-DDSM adapter's cross_split option) or call with keep_official=False"
        )
    official_of = {p: next(iter(s)) if s else "" for p, s in per_patient.items()}

    assigned: dict[str, str] = {p: s for p, s in official_of.items() if s in ("val", "test")}
    official_train = np.array(sorted(p for p, s in official_of.items() if s == "train"), dtype=object)
    free = np.array(sorted(p for p, s in official_of.items() if s == ""), dtype=object)

    def lab(ps: np.ndarray) -> np.ndarray:
        return labels.reindex(ps).to_numpy(dtype=int)

    # patients without an official split: test first, then val from what is left (together with official train)
    train_pool = official_train
    if len(free):
        keep, test = _split_patients(free, lab(free), test_fraction, seed)
        assigned.update(dict.fromkeys(test, "test"))
        train_pool = np.sort(np.concatenate([official_train, keep]))
    if len(train_pool) > 1:
        train, val = _split_patients(train_pool, lab(train_pool), val_fraction, seed)
    else:
        train, val = train_pool, train_pool[:0]
    assigned.update(dict.fromkeys(val, "val"))
    assigned.update(dict.fromkeys(train, "train"))
    out["split"] = pid.map(assigned)
    check_no_patient_crosses(out)
    return out


def crossing_patients(images: pd.DataFrame) -> list[str]:
    """Patients whose images are in more than one split (value of `split`, '' included)."""
    n = images["split"].fillna("").astype(str).groupby(images["patient_id"].astype(str)).nunique()
    return sorted(n.index[n > 1])


def check_no_patient_crosses(images: pd.DataFrame) -> None:
    """Raise SplitError if any patient has images in more than one split.

    The message gives the count and the split combinations only (patient ids can identify people); call
    `crossing_patients` for the ids.
    """
    crossing = crossing_patients(images)
    if crossing:
        combos = (
            images[images["patient_id"].astype(str).isin(crossing)]
            .groupby(images["patient_id"].astype(str))["split"]
            .agg(lambda s: "+".join(sorted(set(s.fillna("").astype(str).replace("", "<none>")))))
            .value_counts()
        )
        detail = ", ".join(f"{k}: {v}" for k, v in combos.items())
        raise SplitError(
            f"{len(crossing)} patients have images in more than one split ({detail}); a patient's images must "
            "all be in one split, or the test score is inflated by near-duplicate views of the same woman"
        )


def split_summary(images: pd.DataFrame) -> pd.DataFrame:
    """Per split: images, patients, malignant images, malignant patients."""
    df = images.assign(_mal=(images["label"].astype(int) == 1).astype(int))
    per_image = df.groupby("split").agg(
        images=("image_id", "size"), patients=("patient_id", "nunique"), malignant_images=("_mal", "sum")
    )
    per_patient = df.groupby(["split", "patient_id"])["_mal"].max().groupby("split").sum()
    per_image["malignant_patients"] = per_patient
    return per_image.reindex(
        [s for s in SPLIT_NAMES if s in per_image.index] + sorted(set(per_image.index) - set(SPLIT_NAMES))
    )


def export_splits(images: pd.DataFrame, path: str | Path) -> None:
    """Write the patient -> split map as CSV `patient_id,split` (sorted by patient; written atomically)."""
    check_no_patient_crosses(images)
    table = (
        images[["patient_id", "split"]].astype(str).drop_duplicates().sort_values("patient_id").reset_index(drop=True)
    )
    unsplit = int((table["split"] == "").sum())
    if unsplit:
        raise SplitError(f"{unsplit} patients have no split yet; run assign_splits (or import_splits) first")
    atomic_write_text(path, table.to_csv(index=False, lineterminator="\n"))


def import_splits(images: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """Apply a published split file exactly; every patient of `images` must be in it.

    Patients in the file but not in `images` are allowed (the file may cover a larger release) and counted in a
    log message.
    """
    path = Path(path)
    if not path.is_file():
        raise SplitError(f"split file {path} not found")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.columns = [c.strip() for c in table.columns]
    if not {"patient_id", "split"} <= set(table.columns):
        raise SplitError(f"{path}: needs the columns patient_id,split; found {list(table.columns)}")
    table["patient_id"] = table["patient_id"].str.strip()
    table["split"] = table["split"].str.strip().str.lower()
    bad = sorted(set(table["split"]) - set(SPLIT_NAMES))
    if bad:
        raise SplitError(f"{path}: unknown split names {bad}; expected {SPLIT_NAMES}")
    table = table.drop_duplicates()
    dup = int(table["patient_id"].duplicated().sum())
    if dup:
        raise SplitError(f"{path}: {dup} patients are listed with more than one split")
    mapping = dict(zip(table["patient_id"], table["split"], strict=True))
    pid = images["patient_id"].astype(str)
    missing = sorted(set(pid) - set(mapping))
    if missing:
        raise SplitError(
            f"{path}: {len(missing)} of {pid.nunique()} patients of the manifest are not in the split file; "
            "a published split must cover every patient (was it made for another dataset or version?)"
        )
    extra = len(set(mapping) - set(pid))
    if extra:
        log.info("%s: %d patients of the split file are not in this manifest (ignored)", path.name, extra)
    out = images.copy()
    out["split"] = pid.map(mapping)
    return out
