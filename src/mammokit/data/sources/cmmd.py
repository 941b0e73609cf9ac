"""CMMD: The Chinese Mammography Database (TCIA), digital mammograms with breast-level biopsy results.

Citation: Cui C, Li L, Cai H et al. (2021) The Chinese Mammography Database (CMMD): An online mammography database
with biopsy confirmed types for machine diagnosis of breast. The Cancer Imaging Archive,
doi:10.7937/tcia.eqde-4b16.
Licence: CC BY 4.0.
Download: https://www.cancerimagingarchive.net/collection/cmmd/ (NBIA Data Retriever for the DICOMs, plus the
clinical table ``CMMD_clinicaldata_revision.xlsx``).

Expected counts: 1,775 patients, 3,728 images; the clinical table has one row per breast (1,872 rows) with
``classification`` Benign/Malignant.

Rules implemented here:

* The clinical table (xlsx, needs ``openpyxl``; or the same sheet saved as CSV) gives the label per breast:
  ``classification`` Malignant -> 1, Benign -> 0; ``abnormality`` (mass/calcification/both) and ``subtype`` are
  kept as image columns.
* Images: every ``*.dcm`` under the root (NBIA layout ``CMMD/<D1-xxxx>/<study>/<series>/1-1.dcm``). Laterality and
  view come from the DICOM header (ImageLaterality or Laterality; ViewPosition or the ViewCodeSequence meaning),
  the patient from the ``D1-xxxx``/``D2-xxxx`` folder name or else PatientID. Only headers are read.
* `image_id` = ``<patient>_<L|R>_<view>`` (``_2``, ``_3`` ... appended for repeats, in path order); `exam_id` =
  StudyInstanceUID.
* Images of a breast absent from the clinical table: `unlisted` = 'drop' (default, reported) or 'unknown'
  (label -1). CMMD has no lesion outlines: the lesion table is empty.
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
    header_str,
    iter_files,
    norm_laterality,
    read_dicom_header,
    read_excel_or_csv,
    relpath,
    warn_count,
)
from mammokit.data.sources.base import DatasetSource, register_source
from mammokit.io.dicom import laterality_from_header, view_from_header

log = logging.getLogger(__name__)

_PATIENT_RE = re.compile(r"^D[12]-\d{4}$")


def find_clinical_table(root: Path) -> Path:
    """The clinical sheet under `root` (two levels deep): CMMD_clinicaldata_revision.xlsx or a CSV export."""
    for pattern in ("*clinical*.xlsx", "*clinical*.csv", "*/*clinical*.xlsx", "*/*clinical*.csv", "*/*/*clinical*.*"):
        hits = sorted(p for p in root.glob(pattern) if p.suffix.lower() in (".xlsx", ".xls", ".csv"))
        if hits:
            return hits[0]
    raise DatasetError(
        f"{root}: no CMMD clinical table (CMMD_clinicaldata_revision.xlsx) found; download it from the TCIA CMMD page"
    )


def read_clinical(path: Path) -> pd.DataFrame:
    """Clinical rows as patient_id/laterality/label/abnormality/subtype (one row per breast)."""
    raw = read_excel_or_csv(path)
    cols = {c.strip().lower(): c for c in raw.columns}
    missing = [c for c in ("id1", "leftright", "classification") if c not in cols]
    if missing:
        raise DatasetError(f"{path.name}: lacks columns {missing}; found {list(raw.columns)}")
    df = pd.DataFrame(
        {
            "patient_id": raw[cols["id1"]].astype(str).str.strip(),
            "laterality": raw[cols["leftright"]].map(norm_laterality),
            "classification": raw[cols["classification"]].astype(str).str.strip().str.lower(),
            "abnormality": raw[cols["abnormality"]].astype(str).str.strip() if "abnormality" in cols else "",
            "subtype": raw[cols["subtype"]].astype(str).str.strip() if "subtype" in cols else "",
        }
    )
    df = df[df["patient_id"] != ""]
    df["label"] = df["classification"].map({"malignant": 1, "benign": 0}).fillna(-1).astype(int)
    warn_count(
        "CMMD clinical rows have a classification other than Benign/Malignant (label -1)", (df["label"] < 0).sum()
    )
    dup = int(df.duplicated(["patient_id", "laterality"]).sum())
    warn_count("CMMD clinical rows repeat a breast (the first is used)", dup)
    return df.drop_duplicates(["patient_id", "laterality"]).reset_index(drop=True)


def _view_of(ds: Any) -> str:
    return view_from_header(ds)[0] or ""  # the reader's view parser (ViewPosition, then ViewCodeSequence, ...)


@register_source
class Cmmd(DatasetSource):
    """CMMD adapter. Options: `unlisted` ('drop'|'unknown') for images of breasts not in the clinical table."""

    name: ClassVar[str] = "cmmd"
    citation: ClassVar[str] = (
        "Cui C et al. (2021) The Chinese Mammography Database (CMMD). The Cancer Imaging Archive. "
        "doi:10.7937/tcia.eqde-4b16"
    )
    licence: ClassVar[str] = "CC BY 4.0"

    options_allowed: ClassVar[tuple[str, ...]] = ("unlisted",)

    def build_manifest(self, root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
        root = Path(root)
        unlisted = str(self.options.get("unlisted", "drop"))
        if unlisted not in ("drop", "unknown"):
            raise DatasetError(f"unlisted={unlisted!r} must be 'drop' or 'unknown'")
        clinical = read_clinical(find_clinical_table(root)).set_index(["patient_id", "laterality"])

        rows = []
        unreadable = no_side = 0
        for path in iter_files(root, (".dcm",)):
            try:
                ds = read_dicom_header(path)
            except Exception as exc:  # not a DICOM / truncated: counted and listed in errors.csv
                unreadable += 1
                self.skip(f"not a readable DICOM ({type(exc).__name__})", path=relpath(path, root))
                continue
            folder = next((p for p in reversed(path.relative_to(root).parts[:-1]) if _PATIENT_RE.match(p)), "")
            patient = folder or header_str(ds, "PatientID")
            lat = laterality_from_header(ds)[0] or ""  # the reader's rule: ImageLaterality, Laterality, PatientID
            if not patient or not lat:
                no_side += 1
                self.skip("no ImageLaterality/Laterality tag or no patient folder", path=relpath(path, root))
                continue
            rows.append(
                {
                    "patient_id": patient,
                    "exam_id": header_str(ds, "StudyInstanceUID") or patient,
                    "laterality": lat,
                    "view": _view_of(ds),
                    "path": relpath(path, root),
                    "vendor": header_str(ds, "Manufacturer"),
                }
            )
        warn_count("files under the CMMD root are not readable DICOMs (in errors.csv)", unreadable)
        warn_count("CMMD DICOMs have no laterality tag or patient folder (in errors.csv)", no_side)
        if not rows:
            raise DatasetError(f"{root}: no CMMD DICOM with a laterality tag found")
        images = pd.DataFrame(rows).sort_values("path", kind="stable").reset_index(drop=True)
        base = images["patient_id"] + "_" + images["laterality"] + "_" + images["view"].replace("", "NA")
        repeat = base.groupby(base).cumcount()
        images["image_id"] = np.where(repeat == 0, base, base + "_" + (repeat + 1).astype(str))

        keys = list(zip(images["patient_id"], images["laterality"], strict=True))
        listed = np.array([k in clinical.index for k in keys])
        info = clinical.reindex(keys)
        images["label"] = np.where(listed, info["label"].fillna(-1).to_numpy(), -1).astype(int)
        images["abnormality"] = info["abnormality"].fillna("").to_numpy()
        images["subtype"] = info["subtype"].fillna("").to_numpy()
        images["label_source"] = np.where(listed, "clinical classification (biopsy)", "breast not in clinical table")
        images["split"] = ""
        if unlisted == "drop":
            for image_id, path in zip(images.loc[~listed, "image_id"], images.loc[~listed, "path"], strict=True):
                self.skip("breast not in the CMMD clinical table (unlisted='drop')", path=path, image_id=image_id)
            warn_count("CMMD images belong to breasts missing from the clinical table (dropped)", int((~listed).sum()))
            images = images[listed]
        return finish_tables(images, None, self.name)

    def read_image(self, row: pd.Series, root: Path, **reader_options: Any) -> tuple[np.ndarray, Any]:
        pixels, meta = super().read_image(row, root, **reader_options)
        return pixels, fill_meta(meta, str(row["laterality"]), str(row["view"]))
