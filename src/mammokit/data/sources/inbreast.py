"""INbreast: full-field digital mammograms (Siemens MammoNovation), DICOM, with OsiriX XML lesion outlines.

Citation: Moreira IC, Amaral I, Domingues I, Cardoso A, Cardoso MJ, Cardoso JS, "INbreast: toward a full-field
digital mammographic database", Acad Radiol 19(2):236-248 (2012).
Licence: available for research on request to the authors (INESC TEC / Breast Research Group, Porto), under
their data-sharing agreement; not redistributable.
Download: request access from the INbreast authors; the release unpacks to ``INbreast Release 1.0/`` with
``AllDICOMs/``, ``AllXML/``, ``AllROI/``, ``MedicalReports/``, ``INbreast.csv`` and ``INbreast.xls``.

Expected counts: 410 images of 115 women (90 with both breasts); BI-RADS 1: 67, 2: 220, 3: 23, 4a: 13, 4b: 8,
4c: 22, 5: 49, 6: 8, so the default rule (BI-RADS >= 4 malignant, 3 negative) gives 100 malignant and 310
non-malignant images; with ``birads3="exclude"`` 387 images remain.

Rules implemented here:

* Image table from ``INbreast.csv`` (``;``-separated: Patient ID;Patient age;Laterality;View;Acquisition date;
  File Name;ACR;Bi-Rads) or, if there is no CSV, ``INbreast.xls`` (needs ``xlrd``); the sheet's blank and totals
  rows are skipped. ``File Name`` (read as ``22678622.0`` from the xls) is matched to
  ``AllDICOMs/<FileName>_<patient hash>_MG_<L|R>_<view>_ANON.dcm``.
* `patient_id` is the 16-hex patient hash of the DICOM file name (the sheet's Patient ID reads "removed");
  `exam_id` = patient hash + acquisition month.
* Label from BI-RADS (parsed as text: 4a/4b/4c are 4): >= `positive_birads` (default 4) malignant; BI-RADS 3 per
  `birads3`: 'negative' (default, the usual INbreast convention), 'positive', 'unknown' (label -1) or 'exclude'.
  The rule and what happened to BI-RADS 3 are recorded per image in `label_source`.
* Lesions from ``AllXML/<FileName>.xml`` (plist: Images[0].ROIs[*], Name and Point_px "(x, y)" with origin
  top-left): 3+ points -> polygon; 1-2 points (single calcifications) -> circle of `point_radius` pixels (default 3,
  about 0.2 mm at INbreast's 70 µm). Name 'Mass' -> mass, names with 'calc' or 'cluster' -> calcification,
  others -> other (name kept in `roi_name`). INbreast gives no lesion-level pathology: `malignant` is 0 on images
  labelled 0 and -1 (unknown) otherwise.
"""

from __future__ import annotations

import json
import logging
import plistlib
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from mammokit.data.sources._common import (
    BiradsRule,
    DatasetError,
    fill_meta,
    finish_tables,
    norm_laterality,
    norm_view,
    parse_birads,
    read_excel_or_csv,
    relpath,
    warn_count,
)
from mammokit.data.sources.base import DatasetSource, register_source

log = logging.getLogger(__name__)

_DICOM_RE = re.compile(r"^(\d+)_([0-9a-fA-F]+)_MG_([LR])_([A-Z]+)_ANON\.dcm$", re.IGNORECASE)
_POINT_RE = re.compile(r"\(\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*(?:,\s*[-+0-9.eE]+\s*)?\)")


def find_release_root(root: Path) -> Path:
    """`root` itself or the one folder below it that holds ``AllDICOMs`` (e.g. ``INbreast Release 1.0``)."""
    if (root / "AllDICOMs").is_dir():
        return root
    below = [p for p in sorted(root.iterdir()) if p.is_dir() and (p / "AllDICOMs").is_dir()] if root.is_dir() else []
    if len(below) == 1:
        return below[0]
    raise DatasetError(
        f"{root}: no AllDICOMs folder found here or one level below; pass the unpacked 'INbreast Release 1.0' folder"
    )


def read_sheet(release: Path) -> pd.DataFrame:
    """The image sheet (INbreast.csv, else INbreast.xls) normalised to file_name/laterality/view/date/acr/birads."""
    csvs = sorted(release.glob("INbreast*.csv")) or sorted(release.glob("*.csv"))
    if csvs:
        raw = pd.read_csv(csvs[0], sep=";", dtype=str, keep_default_na=False, skipinitialspace=True)
    else:
        xls = sorted(release.glob("INbreast*.xls*"))
        if not xls:
            raise DatasetError(f"{release}: neither INbreast.csv nor INbreast.xls found")
        raw = read_excel_or_csv(xls[0])
    return normalise_sheet(raw)


def normalise_sheet(raw: pd.DataFrame) -> pd.DataFrame:
    """Map the sheet's columns (csv or xls spelling) and drop rows that are not images (blank, totals)."""
    cols = {re.sub(r"[\s_-]+", "", c.strip().lower()): c for c in raw.columns}
    need = {"filename": "file_name", "laterality": "laterality", "view": "view", "birads": "birads"}
    missing = [k for k in need if k not in cols]
    if missing:
        raise DatasetError(f"INbreast sheet lacks columns {missing}; found {list(raw.columns)}")
    df = pd.DataFrame({new: raw[cols[old]].astype(str).str.strip() for old, new in need.items()})
    df["acquisition"] = raw[cols["acquisitiondate"]].astype(str).str.strip() if "acquisitiondate" in cols else ""
    df["density"] = raw[cols["acr"]].astype(str).str.strip() if "acr" in cols else ""
    df["file_name"] = df["file_name"].str.replace(r"\.0+$", "", regex=True)
    df["acquisition"] = df["acquisition"].str.replace(r"\.0+$", "", regex=True)
    df["density"] = df["density"].str.replace(r"\.0+$", "", regex=True)
    is_image = df["file_name"].str.fullmatch(r"\d{6,}")
    return df[is_image].reset_index(drop=True)


def parse_xml_rois(path: Path) -> list[dict[str, Any]]:
    """ROIs of one INbreast XML (plist): [{'name', 'points': [(x, y), ...]}] in pixels, origin top-left."""
    with open(path, "rb") as fh:
        plist = plistlib.load(fh)
    images = plist.get("Images") or []
    out = []
    for image in images[:1]:
        for roi in image.get("ROIs", []):
            points = []
            for text in roi.get("Point_px", []):
                m = _POINT_RE.search(str(text))
                if m:
                    points.append((float(m.group(1)), float(m.group(2))))
            out.append({"name": str(roi.get("Name", "")).strip(), "points": points})
    return out


def lesion_type_of(name: str) -> str:
    low = name.lower()
    if low.startswith("mass"):
        return "mass"
    if "calc" in low or "cluster" in low:
        return "calcification"
    return "other"


def roi_geometry(points: list[tuple[float, float]], point_radius: float) -> dict[str, Any]:
    """Lesion-table ROI columns for an outline: polygon for 3+ points, else a small circle."""
    if len(points) >= 3:
        return {"roi_kind": "polygon", "polygon": json.dumps([[round(x, 2), round(y, 2)] for x, y in points])}
    if not points:
        return {"roi_kind": "none"}
    xs, ys = zip(*points, strict=True)
    cx, cy = float(np.mean(xs)), float(np.mean(ys))
    half = float(np.hypot(xs[0] - xs[-1], ys[0] - ys[-1])) / 2
    return {"roi_kind": "circle", "cx": cx, "cy": cy, "radius": max(point_radius, half)}


@register_source
class Inbreast(DatasetSource):
    """INbreast adapter. Options: `positive_birads` (4), `birads3` ('negative'|'positive'|'unknown'|'exclude'),
    `point_radius` (3.0 px)."""

    name: ClassVar[str] = "inbreast"
    citation: ClassVar[str] = (
        "Moreira IC et al. INbreast: toward a full-field digital mammographic database. "
        "Acad Radiol 19(2):236-248 (2012)"
    )
    licence: ClassVar[str] = "research use under the INbreast data-sharing agreement (not redistributable)"

    options_allowed: ClassVar[tuple[str, ...]] = ("positive_birads", "birads3", "point_radius")

    def build_manifest(self, root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
        release = find_release_root(Path(root))
        rule = BiradsRule(int(self.options.get("positive_birads", 4)), str(self.options.get("birads3", "negative")))
        point_radius = float(self.options.get("point_radius", 3.0))
        sheet = read_sheet(release)

        dicoms: dict[str, tuple[Path, re.Match[str]]] = {}
        odd_names = 0
        for path in sorted((release / "AllDICOMs").glob("*.dcm")):
            m = _DICOM_RE.match(path.name)
            if m:
                dicoms[m.group(1)] = (path, m)
            else:
                odd_names += 1
        warn_count("files in AllDICOMs do not follow <FileName>_<hash>_MG_<L|R>_<view>_ANON.dcm (ignored)", odd_names)

        image_rows, lesion_rows = [], []
        no_dicom = unreadable_birads = excluded = bad_xml = 0
        for _, row in sheet.iterrows():
            if row["file_name"] not in dicoms:
                no_dicom += 1
                self.skip("listed in the INbreast sheet but no DICOM in AllDICOMs", image_id=str(row["file_name"]))
                continue
            path, m = dicoms[row["file_name"]]
            parsed = parse_birads(row["birads"])
            if parsed is None:
                unreadable_birads += 1
            label, label_source = rule.label(parsed[0] if parsed else None)
            if label is None:
                excluded += 1
                continue
            patient = m.group(2).lower()
            image_id = row["file_name"]
            image_rows.append(
                {
                    "image_id": image_id,
                    "patient_id": patient,
                    "exam_id": f"{patient}_{row['acquisition']}" if row["acquisition"] else patient,
                    "laterality": norm_laterality(row["laterality"]) or m.group(3).upper(),
                    "view": norm_view(row["view"]) or m.group(4).upper(),
                    "path": relpath(path, Path(root)),
                    "label": label,
                    "split": "",
                    "density": row["density"],
                    "birads": parsed[1] if parsed else row["birads"],
                    "vendor": "Siemens",
                    "label_source": label_source,
                }
            )
            xml = release / "AllXML" / f"{image_id}.xml"
            if not xml.is_file():
                continue
            try:
                rois = parse_xml_rois(xml)
            except Exception:  # a damaged plist: report and keep the image without lesions
                bad_xml += 1
                continue
            for k, roi in enumerate(rois, start=1):
                lesion_rows.append(
                    {
                        "lesion_id": f"{image_id}_{k}",
                        "image_id": image_id,
                        "lesion_type": lesion_type_of(roi["name"]),
                        "pathology": f"BI-RADS {parsed[1] if parsed else '?'} (image)",
                        "malignant": 0 if label == 0 else -1,
                        "roi_name": roi["name"],
                        **roi_geometry(roi["points"], point_radius),
                    }
                )
        warn_count("INbreast sheet rows have no DICOM in AllDICOMs (in errors.csv)", no_dicom)
        warn_count("INbreast images have an unreadable BI-RADS (label -1)", unreadable_birads)
        warn_count("INbreast BI-RADS 3 images excluded (birads3='exclude')", excluded)
        warn_count("INbreast XML files could not be parsed (their lesions are missing)", bad_xml)
        if not image_rows:
            raise DatasetError(f"{release}: no image of the INbreast sheet was found in AllDICOMs")
        return finish_tables(pd.DataFrame(image_rows), pd.DataFrame(lesion_rows), self.name)

    def read_image(self, row: pd.Series, root: Path, **reader_options: Any) -> tuple[np.ndarray, Any]:
        pixels, meta = super().read_image(row, root, **reader_options)
        return pixels, fill_meta(meta, str(row["laterality"]), str(row["view"]))
