"""Helpers shared by the dataset adapters: errors, table finishing, BI-RADS labels, file scans, header reads.

Kept free of dataset-specific knowledge; each adapter module holds its own dataset's rules.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mammokit.data.manifest import (
    IMAGE_COLUMNS,
    LESION_COLUMNS,
    OPTIONAL_IMAGE_COLUMNS,
    OPTIONAL_LESION_COLUMNS,
    empty_lesions,
    validate_images,
    validate_lesions,
)

log = logging.getLogger(__name__)


class DatasetError(ValueError):
    """The raw dataset folder is missing a file or holds something the adapter cannot interpret."""


_LATERALITY = {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}


def norm_laterality(value: Any) -> str:
    """'L'/'R' from L, R, LEFT, RIGHT (any case); '' when missing or unrecognised."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return _LATERALITY.get(str(value).strip().upper(), "")


def norm_view(value: Any) -> str:
    """Upper-case view code ('CC', 'MLO', 'ML', ...); '' when missing."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value).strip().upper()


# --------------------------------------------------------------------------------------- BI-RADS labels

BIRADS3_CHOICES = ("negative", "positive", "exclude", "unknown")

_BIRADS_RE = re.compile(r"^\s*(?:BI-?RADS)?\s*([0-6])\s*([ABC])?\s*$", re.IGNORECASE)


def parse_birads(value: Any) -> tuple[int, str] | None:
    """Parse '4a', 'BI-RADS 4', '5', 4.0 into (category 0-6, canonical text such as '4a'); None if unreadable."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip()
    if re.fullmatch(r"\d+\.0", text):  # spreadsheets give 5.0 for 5
        text = text[:-2]
    m = _BIRADS_RE.match(text)
    if not m:
        return None
    cat = int(m.group(1))
    sub = (m.group(2) or "").lower()
    return cat, f"{cat}{sub}"


@dataclass(frozen=True)
class BiradsRule:
    """Image label from a BI-RADS assessment: >= `positive_from` is malignant, BI-RADS 3 per `birads3`.

    `birads3` is one of 'negative' (label 0), 'positive' (1), 'unknown' (-1, kept but unlabelled) or
    'exclude' (the image is dropped). BI-RADS 0 (incomplete) is always unknown.
    """

    positive_from: int = 4
    birads3: str = "negative"

    def __post_init__(self) -> None:
        if self.birads3 not in BIRADS3_CHOICES:
            raise DatasetError(f"birads3={self.birads3!r} is not one of {BIRADS3_CHOICES}")
        if not 1 <= self.positive_from <= 6:
            raise DatasetError(f"positive_birads={self.positive_from} must be between 1 and 6")

    def describe(self) -> str:
        return f"birads>={self.positive_from}"

    def label(self, category: int | None) -> tuple[int | None, str]:
        """(label or None for 'drop this image', label_source text) for one BI-RADS category."""
        if category is None or category == 0:
            return -1, f"{self.describe()}; birads missing/0 -> unknown"
        if category == 3 and self.positive_from > 3:
            mapped = {"negative": 0, "positive": 1, "unknown": -1, "exclude": None}[self.birads3]
            return mapped, f"{self.describe()}; birads3->{self.birads3}"
        return int(category >= self.positive_from), self.describe()


# --------------------------------------------------------------------------------------- tables


def finish_tables(
    images: pd.DataFrame, lesions: pd.DataFrame | None, dataset: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fill the fixed columns, order columns (required, optional, extras), validate both tables.

    Lesions whose image is not in the image table are dropped (their image was excluded).
    """
    images = images.copy()
    images["dataset"] = dataset
    if "split" not in images.columns:
        images["split"] = ""
    images["split"] = images["split"].fillna("").astype(str)
    order = [c for c in IMAGE_COLUMNS if c in images.columns]
    order += [c for c in OPTIONAL_IMAGE_COLUMNS if c in images.columns]
    order += [c for c in images.columns if c not in order]
    images = validate_images(images[order].reset_index(drop=True))

    if lesions is None or lesions.empty:
        lesions = empty_lesions()
    else:
        lesions = lesions[lesions["image_id"].isin(set(images["image_id"]))].copy()
        order = [c for c in LESION_COLUMNS if c in lesions.columns]
        order += [c for c in OPTIONAL_LESION_COLUMNS if c in lesions.columns]
        order += [c for c in lesions.columns if c not in order]
        lesions = lesions[order].reset_index(drop=True)
        n_dup = int(lesions["lesion_id"].duplicated().sum())
        if n_dup:
            raise DatasetError(f"{dataset}: {n_dup} duplicated lesion ids; the annotation tables list a lesion twice")
    return images, validate_lesions(lesions)


def warn_count(what: str, count: int, hint: str = "") -> None:
    """Log a count of skipped/changed items (never the ids: they can identify patients)."""
    if count:
        log.warning("%d %s%s", count, what, f"; {hint}" if hint else "")


# --------------------------------------------------------------------------------------- files


def iter_files(root: Path, suffixes: Iterable[str]) -> Iterator[Path]:
    """Every file under `root` whose lower-cased name ends with one of `suffixes`, in sorted order."""
    suffixes = tuple(s.lower() for s in suffixes)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(suffixes) and not name.startswith("."):
                yield Path(dirpath) / name


def relpath(path: Path, root: Path) -> str:
    """`path` relative to `root` with forward slashes (manifests stay portable across machines)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def find_one(root: Path, names: Iterable[str], what: str) -> Path:
    """The first of `names` that exists directly under `root` (case-insensitive), else DatasetError."""
    names = list(names)
    present = {p.name.lower(): p for p in root.iterdir()} if root.is_dir() else {}
    for name in names:
        if name.lower() in present:
            return present[name.lower()]
    raise DatasetError(f"{root}: no {what} found (looked for {names}); is this the dataset's root folder?")


def read_dicom_header(path: Path) -> Any:
    """pydicom Dataset without pixel data (fast: reads only the header); DatasetError if it is not an image DICOM.

    Files without the 128-byte preamble (older exports) are accepted; a file that then has neither
    SOPClassUID nor Rows is not a DICOM image. Read through `io.dicom.dcmread_bounded`, as every DICOM the
    project reads: a deflated dataset inflates through a bounded stream (a 400 KB deflate bomb is refused, not
    inflated to 400 MB in the process that lists the dataset).
    """
    from mammokit.io.dicom import MammogramReadError, dcmread_bounded

    try:
        ds = dcmread_bounded(path, stop_before_pixels=True, force=True)
    except MammogramReadError as exc:
        raise DatasetError(f"{path.name}: {str(exc).removeprefix(str(path) + ': ')}") from None
    if "SOPClassUID" not in ds and "Rows" not in ds:
        raise DatasetError(f"{path.name}: not a DICOM image")
    return ds


def header_str(ds: Any, keyword: str) -> str:
    """A DICOM attribute as a stripped string, '' when absent or empty."""
    value = ds.get(keyword, None)
    if value is None:
        return ""
    if hasattr(value, "value"):
        value = value.value
    if isinstance(value, list | tuple):  # multi-valued: e.g. PatientOrientation ['A', 'R']
        value = "\\".join(str(v) for v in value)
    return str(value).strip()


def read_excel_or_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    """Read a table given as .csv, .xlsx or .xls, with a clear message if the Excel engine is missing."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False, **kwargs)
    engine = "xlrd" if suffix == ".xls" else "openpyxl"
    try:
        return pd.read_excel(path, dtype=str, keep_default_na=False, engine=engine, **kwargs)
    except ImportError as exc:
        raise DatasetError(
            f"{path}: reading {suffix} files needs the '{engine}' package (pip install {engine}), "
            "or save the sheet as CSV next to it"
        ) from exc


def fill_meta(meta: Any, laterality: str, view: str, *, override: bool = False) -> Any:
    """Set MammoMeta laterality/view from the manifest where the file carried none (PGM, PNG, CBIS DICOM).

    `override=True` makes the manifest win even over tags in the file (for datasets whose tables are the
    reference, such as CBIS-DDSM folder names).
    """
    if laterality in ("L", "R") and (override or not getattr(meta, "laterality", None)):
        meta.laterality = laterality
    if view and (override or not getattr(meta, "view", None)):
        meta.view = view
    return meta
