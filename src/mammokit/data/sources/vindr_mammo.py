"""VinDr-Mammo: full-field digital mammography screening exams from Vietnam, with BI-RADS and finding boxes.

Citation: Nguyen HT, Nguyen HQ, Pham HH et al., "VinDr-Mammo: A large-scale benchmark dataset for computer-aided
diagnosis in full-field digital mammography", Sci Data 10:277 (2023); PhysioNet, doi:10.13026/br2v-7517.
Licence: PhysioNet Restricted Health Data License 1.0.0 (credentialed access, data use agreement).
Download: https://physionet.org/content/vindr-mammo/ (after credentialing); the release holds
``breast-level_annotations.csv``, ``finding_annotations.csv``, ``metadata.csv`` and
``images/<study_id>/<image_id>.dicom``.

Expected counts: 5,000 studies, 20,000 images (4 per study); official split 4,000 training / 1,000 test studies.

Rules implemented here:

* One image row per row of ``breast-level_annotations.csv`` (it has one row per image); `patient_id` = `exam_id`
  = ``study_id`` (the release has no patient id; each study is one woman's four-view exam).
* Official split: ``training`` -> 'train', ``test`` -> 'test'.
* Label: VinDr-Mammo has no pathology, so the image label comes from ``breast_birads`` with the same rule as
  INbreast: BI-RADS >= `positive_birads` (default 4) malignant, BI-RADS 3 per `birads3` (default 'negative');
  recorded in `label_source`.
* Lesions: every row of ``finding_annotations.csv`` with a finding other than "No Finding". Type: 'Mass' ->
  mass, 'Suspicious Calcification' -> calcification, else other (all categories kept in `finding_categories`).
  ROI = box (xmin, ymin, xmax, ymax in pixels, origin top-left), clipped to the image (a few xmin < 0);
  findings without a box get roi_kind 'none'. Lesion `malignant` applies the BI-RADS rule to ``finding_birads``.
"""

from __future__ import annotations

import ast
import logging
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
    relpath,
    warn_count,
)
from mammokit.data.sources.base import DatasetSource, register_source

log = logging.getLogger(__name__)

BREAST_CSV = "breast-level_annotations.csv"
FINDING_CSV = "finding_annotations.csv"
_SPLITS = {"training": "train", "train": "train", "test": "test"}


def find_release_root(root: Path) -> Path:
    """The folder holding the annotation CSVs: `root` or up to two levels below (PhysioNet unpacks to x/1.0.0/)."""
    for pattern in (BREAST_CSV, f"*/{BREAST_CSV}", f"*/*/{BREAST_CSV}", FINDING_CSV, f"*/{FINDING_CSV}"):
        hits = sorted(root.glob(pattern))
        if hits:
            return hits[0].parent
    raise DatasetError(f"{root}: neither {BREAST_CSV} nor {FINDING_CSV} found here or two levels below")


def parse_categories(text: str) -> list[str]:
    """ "['Mass', 'Suspicious Calcification']" -> ['Mass', 'Suspicious Calcification'] (a Python list literal)."""
    text = str(text).strip()
    if not text:
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return [text]
    return [str(v).strip() for v in value] if isinstance(value, list | tuple) else [str(value).strip()]


def _lesion_type(categories: list[str]) -> str:
    low = [c.lower() for c in categories]
    if "mass" in low:
        return "mass"
    if any("calcification" in c for c in low):
        return "calcification"
    return "other"


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


@register_source
class VindrMammo(DatasetSource):
    """VinDr-Mammo adapter. Options: `positive_birads` (4), `birads3` ('negative'|'positive'|'unknown'|'exclude')."""

    name: ClassVar[str] = "vindr-mammo"
    citation: ClassVar[str] = (
        "Nguyen HT et al. VinDr-Mammo: A large-scale benchmark dataset for computer-aided diagnosis in "
        "full-field digital mammography. Sci Data 10:277 (2023). doi:10.13026/br2v-7517"
    )
    licence: ClassVar[str] = "PhysioNet Restricted Health Data License 1.0.0"

    options_allowed: ClassVar[tuple[str, ...]] = ("positive_birads", "birads3")

    def build_manifest(self, root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
        root = Path(root)
        release = find_release_root(root)
        rule = BiradsRule(int(self.options.get("positive_birads", 4)), str(self.options.get("birads3", "negative")))
        read = {"dtype": str, "keep_default_na": False}
        findings = pd.read_csv(release / FINDING_CSV, **read) if (release / FINDING_CSV).is_file() else None
        if (release / BREAST_CSV).is_file():
            breast = pd.read_csv(release / BREAST_CSV, **read)
        elif findings is not None:
            log.warning("%s not found: image rows taken from %s", BREAST_CSV, FINDING_CSV)
            breast = findings.drop_duplicates("image_id")
        else:  # find_release_root guarantees one of the two
            raise DatasetError(f"{release}: no annotation CSV")
        need = ["study_id", "image_id", "laterality", "view_position", "breast_birads"]
        missing = [c for c in need if c not in breast.columns]
        if missing:
            raise DatasetError(f"{release}: annotation CSV lacks columns {missing}")

        image_rows = []
        no_file = excluded = 0
        for _, row in breast.iterrows():
            path = self._image_path(release, row["study_id"], row["image_id"])
            if path is None:
                no_file += 1
                expected = f"images/{row['study_id']}/{row['image_id']}.dicom"
                reason = "listed in the annotation CSV but no DICOM under images/<study_id>/"
                self.skip(reason, path=expected, image_id=str(row["image_id"]))
                continue
            parsed = parse_birads(row["breast_birads"])
            label, label_source = rule.label(parsed[0] if parsed else None)
            if label is None:
                excluded += 1
                continue
            image_rows.append(
                {
                    "image_id": row["image_id"],
                    "patient_id": row["study_id"],
                    "exam_id": row["study_id"],
                    "laterality": norm_laterality(row["laterality"]),
                    "view": norm_view(row["view_position"]),
                    "path": relpath(path, root),
                    "label": label,
                    "split": _SPLITS.get(str(row.get("split", "")).strip().lower(), ""),
                    "density": str(row.get("breast_density", "")).replace("DENSITY", "").strip(),
                    "birads": parsed[1] if parsed else "",
                    "label_source": label_source,
                    "source_height": _float(row.get("height")),
                    "source_width": _float(row.get("width")),
                }
            )
        warn_count("VinDr-Mammo images listed in the CSV have no DICOM under images/ (in errors.csv)", no_file)
        warn_count("VinDr-Mammo BI-RADS 3 images excluded (birads3='exclude')", excluded)
        if not image_rows:
            raise DatasetError(f"{release}: no image of the annotation CSV was found under images/<study_id>/")
        images = pd.DataFrame(image_rows)
        lesions = self._lesions(findings, images, rule) if findings is not None else None
        return finish_tables(images, lesions, self.name)

    @staticmethod
    def _image_path(release: Path, study: str, image: str) -> Path | None:
        for suffix in (".dicom", ".dcm"):
            path = release / "images" / study / f"{image}{suffix}"
            if path.is_file():
                return path
        return None

    @staticmethod
    def _lesions(findings: pd.DataFrame, images: pd.DataFrame, rule: BiradsRule) -> pd.DataFrame:
        size = images.set_index("image_id")[["source_height", "source_width"]]
        rows = []
        counter: dict[str, int] = {}
        for _, row in findings[findings["image_id"].isin(set(images["image_id"]))].iterrows():
            categories = parse_categories(row.get("finding_categories", ""))
            if not categories or categories == ["No Finding"]:
                continue
            image_id = row["image_id"]
            counter[image_id] = counter.get(image_id, 0) + 1
            box = [_float(row.get(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            parsed = parse_birads(row.get("finding_birads", ""))
            malignant, _ = rule.label(parsed[0] if parsed else None)
            lesion: dict[str, Any] = {
                "lesion_id": f"{image_id}_{counter[image_id]}",
                "image_id": image_id,
                "lesion_type": _lesion_type(categories),
                "pathology": str(row.get("finding_birads", "")).strip() or "UNKNOWN",
                "malignant": -1 if malignant is None else malignant,
                "roi_kind": "none",
                "finding_categories": "; ".join(categories),
            }
            if not any(np.isnan(box)):
                h, w = size.loc[image_id, "source_height"], size.loc[image_id, "source_width"]
                x0, y0, x1, y1 = box
                if not np.isnan(w):  # clip to the image (a few boxes start at xmin < 0)
                    x0, x1 = float(np.clip(x0, 0, w)), float(np.clip(x1, 0, w))
                if not np.isnan(h):
                    y0, y1 = float(np.clip(y0, 0, h)), float(np.clip(y1, 0, h))
                lesion.update({"roi_kind": "box", "x0": x0, "y0": y0, "x1": x1, "y1": y1})
            rows.append(lesion)
        return pd.DataFrame(rows)

    def read_image(self, row: pd.Series, root: Path, **reader_options: Any) -> tuple[np.ndarray, Any]:
        pixels, meta = super().read_image(row, root, **reader_options)
        return pixels, fill_meta(meta, str(row["laterality"]), str(row["view"]))
