"""CBIS-DDSM: the Curated Breast Imaging Subset of DDSM (digitised screen-film mammograms, DICOM).

Citation: Sawyer-Lee R, Gimenez F, Hoogi A, Rubin D (2016) Curated Breast Imaging Subset of DDSM, The Cancer
Imaging Archive, doi:10.7937/K9/TCIA.2016.7O02S9CY; Lee RS et al., "A curated mammography data set for use in
computer-aided detection and diagnosis research", Sci Data 4:170177 (2017); Clark K et al., J Digit Imaging
26:1045 (2013).
Licence: CC BY 3.0.
Download: https://www.cancerimagingarchive.net/collection/cbis-ddsm/ (NBIA Data Retriever; 163.6 GB) plus the four
case-description CSVs (mass/calc x train/test) from the same page.

Expected counts (September 2017 CSVs): 3,568 abnormality rows (mass-train 1,318, mass-test 378, calc-train 1,546,
calc-test 326); 3,032 distinct images keyed by (patient, side, view), 1,347 of them malignant; 1,566 patients.
Official split by image: 2,391 train-only, 612 test-only, 29 views that carry rows in both (calc-train and
mass-test or the reverse); 31 patients cross the official splits. With the default policy (crossing patients
moved to test): train 2,356 images (1,065 malignant) of 1,217 patients, test 676 images (282 malignant) of 349
patients. Counting a doubled view once per official split, as the method description this rebuild followed
did (docs/decisions.md, "CBIS-DDSM split"): train 2,420 images (1,097 malignant), test 641 (262 malignant).

Rules implemented here:

* One image row per (patient, side, view), `image_id` = ``P_xxxxx_LEFT_CC``. A view with both mass and calc rows
  has two full-image DICOMs (a ``Mass-…`` and a ``Calc-…`` series); the first existing one in sorted folder order
  (``Calc-…`` before ``Mass-…``) is used and the other is kept in `alt_paths`. Every lesion records the full
  image its ROI mask was drawn on in `roi_image_path`.
* Label (Shen et al.): a lesion is malignant iff `pathology` starts with ``MALIGNANT``; an image is malignant iff
  any of its lesions is. ``BENIGN_WITHOUT_CALLBACK`` is benign. There are no normal images.
* `exam_id` = patient id: a CBIS patient is one DDSM case, i.e. one screening exam.
* Official split: train/test from the CSV it came from. Patients with rows in both (31) are handled by the
  `cross_split` option: ``"test"`` (default; all their images go to test, so the official test images all stay in
  test and no patient leaks), ``"train"`` or ``"drop"``.
* Crop vs mask is told by content, not by file name (the names are swapped in part of the rows): the mask has the
  full image's size (and is binary), the crop is lesion-sized.
* All three TCIA download layouts are found: classic UID folders with ``000000.dcm``/``000001.dcm``; the same
  tree with ``1-1.dcm``/``1-2.dcm``; and the NBIA "descriptive" names ``<date>-<desc>-<last 5 of StudyUID>/
  <n>-<desc>-<last 5 of SeriesUID>``. Files outside a CBIS folder name are matched by their DICOM header
  (PatientID = folder name, SeriesInstanceUID).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
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
    read_dicom_header,
    relpath,
    warn_count,
)
from mammokit.data.sources.base import DatasetSource, register_source

log = logging.getLogger(__name__)

CROSS_SPLIT_POLICIES = ("test", "train", "drop")
MISSING_IMAGE_POLICIES = ("drop", "keep")

# normalised header (lower case, '_' -> ' ') -> internal column; both the Sep-2017 and the Feb-2017 names
_HEADER_MAP = {
    "patient id": "patient_id",
    "breast density": "density",
    "left or right breast": "side",
    "side": "side",
    "image view": "view",
    "view": "view",
    "abnormality id": "abnormality_id",
    "abn num": "abnormality_id",
    "abnormality type": "abnormality_type",
    "mass shape": "mass_shape",
    "mass margins": "mass_margins",
    "calc type": "calc_type",
    "calc distribution": "calc_distribution",
    "assessment": "assessment",
    "pathology": "pathology",
    "subtlety": "subtlety",
    "image file path": "image_path",
    "od img path": "image_path",
    "cropped image file path": "crop_path",
    "od crop path": "crop_path",
    "roi mask file path": "mask_path",
    "mask path": "mask_path",
}
_REQUIRED = ("patient_id", "side", "view", "abnormality_id", "pathology", "image_path")
_PATHOLOGIES = {"MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK"}
CASE_COLUMNS = (
    "patient_id",
    "side",
    "laterality",
    "view",
    "abnormality_id",
    "lesion_type",
    "density",
    "mass_shape",
    "mass_margins",
    "calc_type",
    "calc_distribution",
    "assessment",
    "pathology",
    "subtlety",
    "image_path",
    "crop_path",
    "mask_path",
    "official_split",
    "table",
)

# a CBIS folder name: full image `Mass-Training_P_00001_LEFT_CC`, ROI series the same plus `_<abnormality id>`
FOLDER_RE = re.compile(r"^(Mass|Calc)-(Training|Test)_(P_\d{5})_(LEFT|RIGHT)_(CC|MLO)(?:_(\d+))?$")


def _table_kind(name: str) -> tuple[str, str]:
    """('mass'|'calcification', 'train'|'test') from a case-description file name."""
    low = name.lower()
    kind = "mass" if "mass" in low else "calcification" if "calc" in low else ""
    split = "train" if "train" in low else "test" if "test" in low else ""
    if not kind or not split:
        raise DatasetError(f"{name}: cannot tell mass/calc and train/test from the file name")
    return kind, split


def find_case_tables(csv_dir: Path) -> list[Path]:
    """The case-description CSVs under `csv_dir` (searched two levels deep), sorted."""
    csv_dir = Path(csv_dir)
    found = sorted(
        p
        for pattern in ("*case_description*.csv", "*/*case_description*.csv", "*/*/*case_description*.csv")
        for p in csv_dir.glob(pattern)
    )
    if not found:
        raise DatasetError(
            f"{csv_dir}: no CBIS-DDSM case-description CSVs (e.g. mass_case_description_train_set.csv) found; "
            "download them from the TCIA CBIS-DDSM page and put them in the dataset folder"
        )
    return found


def read_case_table(path: Path) -> pd.DataFrame:
    """Read one case-description CSV into the normalised abnormality table (columns `CASE_COLUMNS`).

    Handles CRLF endings, the newline embedded in a quoted path, `breast_density` vs `breast density`, the
    Feb-2017 short names and Windows back-slash paths. Rows with unreadable values are reported and dropped.
    """
    kind, split = _table_kind(path.name)
    # the csv module behind pandas handles CRLF and quoted embedded newlines; 'NA' stays a string
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    raw.columns = [_HEADER_MAP.get(re.sub(r"[_\s]+", " ", c.strip().lower()), c) for c in raw.columns]
    missing = [c for c in _REQUIRED if c not in raw.columns]
    if missing:
        raise DatasetError(f"{path.name}: missing columns {missing}; is this a CBIS-DDSM case-description CSV?")
    df = pd.DataFrame({c: raw[c].astype(str).str.strip() if c in raw.columns else "" for c in CASE_COLUMNS})
    for col in ("image_path", "crop_path", "mask_path"):
        df[col] = df[col].str.replace("\\", "/", regex=False).str.strip().str.lstrip("./")
    df["side"] = df["side"].str.upper()
    df["view"] = df["view"].str.upper()
    df["pathology"] = df["pathology"].str.upper()
    df["laterality"] = df["side"].map({"LEFT": "L", "RIGHT": "R"}).fillna("")
    if "abnormality_type" in raw.columns:
        df["lesion_type"] = raw["abnormality_type"].str.strip().str.lower().replace({"calc": "calcification"})
    else:
        df["lesion_type"] = kind
    df["official_split"] = split
    df["table"] = f"{'mass' if kind == 'mass' else 'calc'}-{split}"
    bad = (
        ~df["patient_id"].str.fullmatch(r"P_\d{5}")
        | ~df["side"].isin(["LEFT", "RIGHT"])
        | ~df["view"].isin(["CC", "MLO"])
        | ~df["abnormality_id"].str.fullmatch(r"\d+")
        | ~df["pathology"].isin(_PATHOLOGIES)
        | ~df["lesion_type"].isin(["mass", "calcification"])
        | (df["image_path"] == "")
    )
    if bad.any():
        lines = (np.flatnonzero(bad.to_numpy()) + 2).tolist()  # +2: header line, 1-based
        log.warning(
            "%s: %d rows with unreadable values skipped (CSV records %s)", path.name, int(bad.sum()), lines[:10]
        )
        df = df[~bad]
    df = df.copy()
    df["abnormality_id"] = df["abnormality_id"].astype(int)
    return df.reset_index(drop=True)


def read_case_tables(csv_dir: Path) -> pd.DataFrame:
    """All case-description CSVs under `csv_dir` as one abnormality table (one row per CSV row)."""
    return pd.concat([read_case_table(p) for p in find_case_tables(csv_dir)], ignore_index=True)


def crossing_patients(cases: pd.DataFrame) -> list[str]:
    """Patients with rows in both official splits (31 in the September 2017 release)."""
    n = cases.groupby("patient_id")["official_split"].nunique()
    return sorted(n.index[n > 1])


# ------------------------------------------------------------------------------------------ file index


def _uid_key(part: str) -> str:
    """Last 5 characters identifying a study/series folder: a full UID, or NBIA '<n>-<desc>-<last5>'."""
    return part.rsplit("-", 1)[-1][-5:] if "-" in part else part[-5:]


def _csv_key(csv_path: str) -> tuple[str, str] | None:
    """(CBIS folder, series key) of a path as written in the CSV (a leading 'DOI/' or other prefix is skipped)."""
    parts = [p for p in csv_path.split("/") if p]
    for i, part in enumerate(parts):
        if FOLDER_RE.match(part) and len(parts) > i + 2:
            return part, parts[i + 2][-5:]
    return None


@dataclass
class DicomIndex:
    """DICOM files under a root, grouped by (CBIS folder, last 5 characters of the SeriesInstanceUID)."""

    root: Path
    series: dict[tuple[str, str], list[Path]]

    @classmethod
    def scan(cls, root: Path) -> DicomIndex:
        series: dict[tuple[str, str], list[Path]] = {}
        unplaced = 0
        for path in iter_files(root, (".dcm",)):
            key = cls._key_from_path(path.relative_to(root))
            if key is None:
                key = cls._key_from_header(path)
            if key is None:
                unplaced += 1
                continue
            series.setdefault(key, []).append(path)
        warn_count("DICOM files under the CBIS-DDSM root matched no CBIS folder name or header (ignored)", unplaced)
        return cls(root, series)

    @staticmethod
    def _key_from_path(rel: Path) -> tuple[str, str] | None:
        parts = rel.parts
        for i, part in enumerate(parts):
            if FOLDER_RE.match(part) and len(parts) >= i + 4:  # folder / study / series / file
                return part, _uid_key(parts[i + 2])
        return None

    @staticmethod
    def _key_from_header(path: Path) -> tuple[str, str] | None:
        try:
            ds = read_dicom_header(path)
        except Exception:  # unreadable file: counted as unplaced by the caller
            return None
        folder, series_uid = header_str(ds, "PatientID"), header_str(ds, "SeriesInstanceUID")
        if FOLDER_RE.match(folder) and series_uid:
            return folder, series_uid[-5:]
        return None

    def files(self, csv_path: str) -> list[Path]:
        key = _csv_key(csv_path)
        return sorted(self.series.get(key, [])) if key else []


def _dicom_size(path: Path) -> tuple[int, int] | None:
    try:
        ds = read_dicom_header(path)
        return int(ds.Rows), int(ds.Columns)
    except Exception:
        return None


def _is_binary_mask(path: Path) -> bool:
    """True if the DICOM's pixels take at most two values one of which is 0 (a 0/255 ROI mask).

    The header and any codestream are checked before decoding (bounded inflation, declared size = Rows x Columns
    within the pixel limit: `io.dicom`), since this runs in the process that lists the dataset.
    """
    from mammokit.io.dicom import check_declared_codestream, check_declared_size, dcmread_bounded, max_image_pixels

    try:
        ds = dcmread_bounded(path, force=True)
        check_declared_size(path, int(ds.Rows), int(ds.Columns), max_image_pixels(), int(ds.get("NumberOfFrames") or 1))
        check_declared_codestream(ds, path, max_image_pixels())
        px = ds.pixel_array
    except Exception:
        return False
    values = np.unique(px[:: max(1, px.shape[0] // 512), :: max(1, px.shape[1] // 512)])
    return len(values) <= 2 and values[0] == 0


def classify_roi_files(candidates: list[Path], full_size: tuple[int, int] | None) -> tuple[Path | None, Path | None]:
    """(mask, crop) among an abnormality's ROI files, by content.

    The mask has the full image's size; the crop is lesion-sized. Without the full image's size, or if the size
    does not decide, pixel content decides (a mask is binary 0/255, a crop has a full grey range).
    """
    sizes = {p: _dicom_size(p) for p in candidates}
    mask = crop = None
    if full_size is not None:
        same = [p for p in candidates if sizes[p] == full_size]
        other = [p for p in candidates if sizes[p] is not None and sizes[p] != full_size]
        if len(same) == 1:
            mask = same[0]
            crop = other[0] if other else None
            return mask, crop
    binary = {p: _is_binary_mask(p) for p in candidates}
    masks = [p for p in candidates if binary[p]]
    crops = [p for p in candidates if not binary[p] and sizes[p] is not None]
    if masks:
        # several binary candidates: the largest is the full-size mask
        mask = max(masks, key=lambda p: (sizes[p] or (0, 0))[0] * (sizes[p] or (0, 0))[1])
    if crops:
        crop = crops[0]
    return mask, crop


# ------------------------------------------------------------------------------------------ manifest


def _int_text(values: pd.Series) -> pd.Series:
    """Numbers to '4'-style text, NaN to ''."""
    return values.map(lambda v: "" if pd.isna(v) else str(int(v)))


def cases_to_manifest(
    cases: pd.DataFrame,
    *,
    cross_split: str = "test",
    index: DicomIndex | None = None,
    missing_images: str = "drop",
    skip: Callable[..., None] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Turn the abnormality table into (image table, lesion table).

    `skip(reason, path=, image_id=)` is told about every image left out (the adapter's `DatasetSource.skip`).

    Args:
        cases: output of `read_case_tables`.
        cross_split: what to do with patients in both official splits: 'test', 'train' or 'drop'.
        index: DICOM files found on disk; None builds the manifest from the CSV paths alone.
        missing_images: with an index, 'drop' images whose full DICOM is absent, or 'keep' them with the CSV path.
    """
    if cross_split not in CROSS_SPLIT_POLICIES:
        raise DatasetError(f"cross_split={cross_split!r} is not one of {CROSS_SPLIT_POLICIES}")
    if missing_images not in MISSING_IMAGE_POLICIES:
        raise DatasetError(f"missing_images={missing_images!r} is not one of {MISSING_IMAGE_POLICIES}")
    cases = cases.copy()
    cases["image_id"] = cases["patient_id"] + "_" + cases["side"] + "_" + cases["view"]
    cases["malignant"] = cases["pathology"].str.startswith("MALIGNANT").astype(int)

    crossing = set(crossing_patients(cases))
    dropped_crossing: list[str] = []
    warn_count(
        "CBIS-DDSM patients have rows in both official splits",
        len(crossing),
        {
            "test": "all their images are put in test",
            "train": "all their images are put in train",
            "drop": "they are dropped",
        }[cross_split],
    )

    # vectorised per-image aggregates (a Python function per group is ~50x slower on the 3,032 images)
    cases = cases.sort_values(["image_id", "table", "abnormality_id"], kind="stable")
    grouped = cases.groupby("image_id", sort=True)
    density = cases["density"].where(~cases["density"].isin(["", "NA", "0"]))  # 0 is an invalid code (calc-test)
    subtlety = pd.to_numeric(cases["subtlety"], errors="coerce").where(lambda v: v > 0)  # 0 invalid (mass-train)
    assessment = pd.to_numeric(cases["assessment"], errors="coerce")
    images = grouped.agg(
        patient_id=("patient_id", "first"),
        laterality=("laterality", "first"),
        view=("view", "first"),
        label=("malignant", "max"),
        n_lesions=("abnormality_id", "size"),
    )
    images["density"] = density.groupby(cases["image_id"]).first().reindex(images.index).fillna("")
    images["birads"] = _int_text(assessment.groupby(cases["image_id"]).max().reindex(images.index))
    images["subtlety"] = _int_text(subtlety.groupby(cases["image_id"]).min().reindex(images.index))
    n_splits = grouped["official_split"].nunique()
    images["official_split"] = grouped["official_split"].first().where(n_splits == 1, "test,train")
    paths = cases[["image_id", "image_path"]].drop_duplicates()
    paths = paths.assign(folder=paths["image_path"].str.split("/").str[0]).sort_values(["image_id", "folder"])
    images["candidates"] = paths.groupby("image_id")["image_path"].agg(list)
    images = images.reset_index()
    images["exam_id"] = images["patient_id"]
    images["label_source"] = "pathology (MALIGNANT in any lesion)"
    images["crosses_official_split"] = images["patient_id"].isin(crossing)
    images["split"] = np.where(images["official_split"] == "train", "train", "test")
    if crossing:
        if cross_split == "drop":
            dropped_crossing = images.loc[images["crosses_official_split"], "image_id"].tolist()
            images = images[~images["crosses_official_split"]]
        else:
            images.loc[images["crosses_official_split"], "split"] = cross_split

    # choose one full-image DICOM per view
    paths, alts, keep = [], [], []
    for cands in images["candidates"]:
        if index is None:
            chosen, others = cands[0], cands[1:]
        else:
            found = [(c, index.files(c)) for c in cands]
            existing = [(c, files[0]) for c, files in found if files]
            if existing:
                chosen = relpath(existing[0][1], index.root)
                others = [relpath(f, index.root) for _, f in existing[1:]]
            elif missing_images == "keep":
                chosen, others = cands[0], cands[1:]
            else:
                keep.append(False)
                paths.append("")
                alts.append("")
                continue
        keep.append(True)
        paths.append(chosen)
        alts.append(";".join(others))
    images["path"] = paths
    images["alt_paths"] = alts
    if skip is not None:
        for image_id, cands, kept in zip(images["image_id"], images["candidates"], keep, strict=True):
            if not kept:
                skip("full-mammogram DICOM named in the CBIS-DDSM CSVs not found on disk", path=cands[0],
                     image_id=image_id)  # fmt: skip
        if crossing and cross_split == "drop":
            for image_id in dropped_crossing:
                skip("patient has rows in both official splits and cross_split='drop'", image_id=image_id)
    n_missing = len(keep) - sum(keep)
    images = images[np.array(keep, dtype=bool)].drop(columns=["candidates"])
    if index is not None and n_missing:
        if images.empty:
            raise DatasetError(
                f"{index.root}: none of the CBIS-DDSM full-mammogram DICOMs named in the CSVs were found "
                "(checked the classic UID tree, the 1-1.dcm variant, the NBIA descriptive names and DICOM headers); "
                "point the command at the folder holding the downloaded Mass-*/Calc-* folders, or use "
                "missing_images='keep' to build a CSV-only manifest"
            )
        warn_count("CBIS-DDSM images named in the CSVs were not found on disk (listed in errors.csv)", n_missing)

    lesions = _lesion_table(cases[cases["image_id"].isin(set(images["image_id"]))], images, index)
    return finish_tables(images, lesions, CbisDdsm.name)


def _lesion_table(cases: pd.DataFrame, images: pd.DataFrame, index: DicomIndex | None) -> pd.DataFrame:
    lesions = pd.DataFrame(
        {
            "lesion_id": cases["image_id"] + "_" + cases["lesion_type"].str[:4] + cases["abnormality_id"].astype(str),
            "image_id": cases["image_id"],
            "lesion_type": cases["lesion_type"],
            "pathology": cases["pathology"],
            "malignant": cases["malignant"],
            "roi_kind": "mask",
            "roi_path": cases["mask_path"],
            "abnormality_id": cases["abnormality_id"],
            "assessment": cases["assessment"],
            "subtlety": cases["subtlety"],
            "mass_shape": cases["mass_shape"].where(cases["lesion_type"] == "mass", ""),
            "mass_margins": cases["mass_margins"].where(cases["lesion_type"] == "mass", ""),
            "calc_type": cases["calc_type"].where(cases["lesion_type"] == "calcification", ""),
            "calc_distribution": cases["calc_distribution"].where(cases["lesion_type"] == "calcification", ""),
            "crop_path": cases["crop_path"],
            "roi_image_path": cases["image_path"],
        }
    ).reset_index(drop=True)
    if index is None:
        return lesions
    unresolved = 0
    size_cache: dict[str, tuple[int, int] | None] = {}
    for i in range(len(lesions)):
        row = cases.iloc[i]
        full_files = index.files(row["image_path"])
        full = full_files[0] if full_files else None
        if full is not None:
            lesions.at[i, "roi_image_path"] = relpath(full, index.root)
            key = str(full)
            if key not in size_cache:
                size_cache[key] = _dicom_size(full)
        candidates = sorted(set(index.files(row["crop_path"])) | set(index.files(row["mask_path"])))
        mask, crop = classify_roi_files(candidates, size_cache.get(str(full)) if full else None)
        lesions.at[i, "roi_path"] = relpath(mask, index.root) if mask else ""
        lesions.at[i, "crop_path"] = relpath(crop, index.root) if crop else ""
        if mask is None:
            lesions.at[i, "roi_kind"] = "none"
            unresolved += 1
    warn_count("CBIS-DDSM lesions have no ROI mask file on disk (roi_kind='none')", unresolved)
    # a mask drawn on the other DICOM of a doubled view: flag it so prepare can check the sizes agree
    chosen = images.set_index("image_id")["path"]
    lesions["roi_on_chosen_image"] = (
        lesions["roi_image_path"].to_numpy() == chosen.reindex(lesions["image_id"]).to_numpy()
    )
    return lesions


@register_source
class CbisDdsm(DatasetSource):
    """CBIS-DDSM adapter. Options: `cross_split` ('test'|'train'|'drop'), `missing_images` ('drop'|'keep'),
    `csv_dir` (folder of the four CSVs; default: searched under the root)."""

    name: ClassVar[str] = "cbis-ddsm"
    citation: ClassVar[str] = (
        "Sawyer-Lee R, Gimenez F, Hoogi A, Rubin D (2016) Curated Breast Imaging Subset of DDSM. TCIA. "
        "doi:10.7937/K9/TCIA.2016.7O02S9CY; Lee RS et al. Sci Data 4:170177 (2017)"
    )
    licence: ClassVar[str] = "CC BY 3.0"

    options_allowed: ClassVar[tuple[str, ...]] = ("cross_split", "missing_images", "csv_dir")
    # CBIS-DDSM DICOMs carry no spacing tag. DDSM films were scanned at 42 um (DBA), 43.5 um (Howtek) or
    # 50 um (Lumisys); CBIS does not say which scanner made which image. 0.05 mm is chosen because the real
    # CBIS DICOMs have 4432-4736 rows, i.e. a 24 cm film at ~50 um (4800 rows; at 43.5 um it would be ~5500).
    # Error for a Howtek/DBA image: <= 16 %. docs/real-data.md has the reasoning; --assume-pixel-spacing overrides.
    pixel_spacing_mm: ClassVar[float | None] = 0.05

    def build_manifest(self, root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{root}: not a folder; pass the CBIS-DDSM download folder")
        csv_dir = Path(self.options.get("csv_dir") or root)
        cases = read_case_tables(csv_dir)
        log.info("CBIS-DDSM: %d abnormality rows read from %s", len(cases), csv_dir)
        index = DicomIndex.scan(root)
        return cases_to_manifest(
            cases,
            cross_split=self.options.get("cross_split", "test"),
            index=index,
            missing_images=self.options.get("missing_images", "drop"),
            skip=self.skip,
        )

    def read_image(self, row: pd.Series, root: Path, **reader_options: Any) -> tuple[np.ndarray, Any]:
        # CBIS DICOMs carry no ImageLaterality/ViewPosition: the manifest's values come from the folder name
        pixels, meta = super().read_image(row, root, **reader_options)
        return pixels, fill_meta(meta, str(row["laterality"]), str(row["view"]), override=True)
