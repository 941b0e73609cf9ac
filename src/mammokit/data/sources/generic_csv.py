"""Generic CSV: a user's own images listed in a CSV (path, label, optional patient/laterality/view/...).

Citation / licence: those of the user's data. Download: nothing to download.

Format: a CSV with a header. Column names are matched case-insensitively, with common aliases:

* `path` (required; aliases file, filename, image, image_path, file_path): the image file (DICOM, PNG, PGM,
  JPEG), relative to the CSV's folder or absolute.
* `label` (aliases cancer, malignant, target, class): 1/0/-1, true/false, yes/no, malignant/cancer/positive,
  benign/normal/negative; empty or `unknown` -> -1. Without the column every image is unlabelled (-1).
* `patient_id` (strongly advised; aliases patient, subject, subject_id, woman_id): splits keep a patient's images
  together.
* `laterality` (aliases side, breast, left_right): L/R/LEFT/RIGHT. `view` (alias view_position): CC, MLO, ...
* `image_id` (alias id; default: the path without its suffix), `exam_id` (aliases study_id, study, exam; default:
  patient_id), `split` (train/val/test, kept as given; `mammokit prepare` fills the rest).

Other columns are kept as they are. Rows whose file is missing or whose label cannot be read are reported (by CSV
line number, never by id) and left out. Without `patient_id`, every image is treated as its own patient and a
warning says that splits then cannot keep a woman's images together.

The root given to `build_manifest` is the CSV file itself or a folder holding exactly one CSV (or the one named by
the `csv` option). Paths are stored relative to that folder when the root is a folder, and as absolute paths when
the root is the CSV file, so that `root / path` always finds the image.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from mammokit.data.sources._common import (
    DatasetError,
    fill_meta,
    finish_tables,
    norm_laterality,
    norm_view,
    warn_count,
)
from mammokit.data.sources.base import DatasetSource, register_source

log = logging.getLogger(__name__)

_ALIASES = {
    "path": ("path", "file", "filename", "image", "image_path", "file_path"),
    "label": ("label", "cancer", "malignant", "target", "class"),
    "patient_id": ("patient_id", "patient", "subject", "subject_id", "woman_id"),
    "laterality": ("laterality", "side", "breast", "left_right"),
    "view": ("view", "view_position"),
    "image_id": ("image_id", "id"),
    "exam_id": ("exam_id", "study_id", "study", "exam"),
    "split": ("split",),
}
_LABELS = {
    "1": 1, "1.0": 1, "true": 1, "yes": 1, "malignant": 1, "cancer": 1, "positive": 1, "pos": 1,
    "0": 0, "0.0": 0, "false": 0, "no": 0, "benign": 0, "normal": 0, "negative": 0, "neg": 0,
    "-1": -1, "-1.0": -1, "": -1, "unknown": -1, "nan": -1, "na": -1,
}  # fmt: skip


def find_csv(root: Path, name: str | None = None) -> Path:
    """The CSV to read: `root` itself, `root/name`, or the only *.csv in `root`."""
    if root.is_file():
        return root
    if name:
        path = root / name
        if not path.is_file():
            raise DatasetError(f"{path} not found")
        return path
    csvs = sorted(root.glob("*.csv")) if root.is_dir() else []
    if len(csvs) != 1:
        found = [p.name for p in csvs] or "none"
        raise DatasetError(f"{root}: expected exactly one CSV listing the images (found {found}); pass csv=<name>")
    return csvs[0]


def parse_label(value: Any) -> int | None:
    """0/1/-1 from the accepted spellings; None if unreadable."""
    return _LABELS.get(str(value).strip().lower())


def read_image_list(csv: Path) -> pd.DataFrame:
    """The CSV with canonical column names (see the module docstring); raises on a missing path column."""
    raw = pd.read_csv(csv, dtype=str, keep_default_na=False)
    lower = {c.strip().lower(): c for c in raw.columns}
    rename: dict[str, str] = {}
    for canonical, aliases in _ALIASES.items():
        hit = next((lower[a] for a in aliases if a in lower), None)
        if hit is not None:
            rename[hit] = canonical
    if "path" not in rename.values():
        raise DatasetError(
            f"{csv.name}: no image path column; name one of {_ALIASES['path']} (found {list(raw.columns)})"
        )
    df = raw.rename(columns=rename)
    for col in df.columns:
        df[col] = df[col].astype(str).str.strip()
    return df


@register_source
class GenericCsv(DatasetSource):
    """Adapter for a user's own CSV. Option: `csv` (file name inside the root folder)."""

    name: ClassVar[str] = "csv"
    citation: ClassVar[str] = ""
    licence: ClassVar[str] = ""

    options_allowed: ClassVar[tuple[str, ...]] = ("csv",)

    def build_manifest(self, root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
        root = Path(root)
        csv = find_csv(root, self.options.get("csv"))
        base = csv.parent
        df = read_image_list(csv)
        lines = np.arange(len(df)) + 2  # CSV line numbers (header is line 1) for reports

        labels = df["label"].map(parse_label) if "label" in df.columns else pd.Series(-1, index=df.index)
        bad_label = labels.isna().to_numpy()
        df["path"] = df["path"].str.replace("\\", "/", regex=False)  # Windows-written CSVs
        resolved = [Path(p) if Path(p).is_absolute() else base / p for p in df["path"]]
        missing = np.array([p == "" or not r.is_file() for p, r in zip(df["path"], resolved, strict=True)])
        for i in np.flatnonzero(bad_label | missing):
            given = df["image_id"].iloc[i] if "image_id" in df.columns else ""
            if bad_label[i]:
                label = df["label"].iloc[i][:40]
                reason = (f"{csv.name} line {lines[i]}: unreadable label {label!r}; accepted: 0/1/-1, "
                          "malignant/benign/normal, yes/no, true/false, empty")  # fmt: skip
            elif df["path"].iloc[i] == "":
                reason = f"{csv.name} line {lines[i]}: empty path"
            else:
                reason = f"{csv.name} line {lines[i]}: file not found ({resolved[i]})"
            self.skip(reason, path=df["path"].iloc[i], image_id=given)
        warn_count(f"rows of {csv.name} have an unreadable label (listed in errors.csv)", int(bad_label.sum()))
        warn_count(f"rows of {csv.name} name a file that does not exist (listed in errors.csv)", int(missing.sum()))
        keep = ~(bad_label | missing)
        if not keep.any():
            raise DatasetError(f"{csv}: no usable row (every row has a missing file or an unreadable label)")

        images = df[keep].copy()
        images["label"] = labels[keep].astype(int)
        images["label_source"] = f"{csv.name} label column" if "label" in df.columns else "none (unlabelled)"
        paths = [r for r, k in zip(resolved, keep, strict=True) if k]
        images["path"] = [self._stored_path(p, base, absolute=root.is_file()) for p in paths]
        if "image_id" not in images.columns:
            images["image_id"] = [
                re.sub(r'[\\:*?"<>|\x00-\x1f]', "_", Path(p).with_suffix("").as_posix().lstrip("/").replace("/", "__"))
                for p in images["path"]
            ]
        repeated = images["image_id"].duplicated(keep=False).to_numpy()
        for image_id, path in zip(images["image_id"][repeated], images["path"][repeated], strict=True):
            n = int((images["image_id"] == image_id).sum())
            self.skip(f"image_id {image_id[:80]!r} appears {n} times in {csv.name}; ids must be unique (none of "
                      "these rows is used)", path=path, image_id=image_id)  # fmt: skip
        images = images[~repeated]
        if images.empty:
            raise DatasetError(f"{csv}: no usable row (every image id is repeated)")
        if "patient_id" not in images.columns or (images["patient_id"] == "").any():
            n = len(images) if "patient_id" not in images.columns else int((images["patient_id"] == "").sum())
            log.warning(
                "%s: %d images have no patient_id; each is treated as its own patient, so splits cannot keep a "
                "woman's images together (add a patient_id column)",
                csv.name, n,
            )  # fmt: skip
            if "patient_id" not in images.columns:
                images["patient_id"] = ""
            images["patient_id"] = images["patient_id"].where(images["patient_id"] != "", images["image_id"])
        if "exam_id" not in images.columns:
            images["exam_id"] = images["patient_id"]
        images["laterality"] = images["laterality"].map(norm_laterality) if "laterality" in images.columns else ""
        images["view"] = images["view"].map(norm_view) if "view" in images.columns else ""
        if "split" in images.columns:
            images["split"] = (
                images["split"].str.lower().where(images["split"].str.lower().isin(["train", "val", "test"]), "")
            )
        return finish_tables(images, None, self.name)

    @staticmethod
    def _stored_path(path: Path, base: Path, *, absolute: bool) -> str:
        if absolute:
            return str(path.absolute())
        try:
            return path.relative_to(base).as_posix()
        except ValueError:  # an absolute path elsewhere on disk
            return str(path)

    def read_image(self, row: pd.Series, root: Path, **reader_options: Any) -> tuple[np.ndarray, Any]:
        root = Path(root)
        base = root.parent if root.is_file() else root
        pixels, meta = super().read_image(row, base, **reader_options)
        return pixels, fill_meta(meta, str(row["laterality"]), str(row["view"]))
