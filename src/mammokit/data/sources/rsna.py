"""RSNA Screening Mammography Breast Cancer Detection (Kaggle 2022): screening exams with per-breast cancer truth.

Citation: Carr C, Kitamura F, Partridge G et al. (2022) RSNA Screening Mammography Breast Cancer Detection,
Kaggle, https://kaggle.com/competitions/rsna-breast-cancer-detection (data from BreastScreen Victoria and Emory
University).
Licence: competition data rules (non-commercial research and education use; no redistribution).
Download: ``kaggle competitions download -c rsna-breast-cancer-detection`` (after accepting the rules); unpack so
that ``train.csv`` and ``train_images/<patient_id>/<image_id>.dcm`` are in one folder.

Expected counts (not verified on the files): train.csv 54,706 images of 11,913 patients, 1,158 cancer images.

Rules implemented here:

* One image row per row of ``train.csv`` (option `table='test'` reads ``test.csv``, whose labels are unknown, -1).
* `label` = ``cancer`` (0/1 per image, the truth of its breast); `label_source` says so.
* `exam_id` = ``patient_id`` (one screening exam per patient in the release); `site` = ``site_id``; ``BIRADS``,
  ``density``, ``implant``, ``machine_id``, ``biopsy``, ``invasive`` and ``difficult_negative_case`` are kept.
* Image files: ``<images_dir>/<patient_id>/<image_id>.dcm`` (default ``train_images``/``test_images``), or ``.png``
  for the common 16-bit PNG conversions; images without a file are reported and left out.
* No lesion outlines: the lesion table is empty. No official split (the Kaggle test set is hidden).
"""

from __future__ import annotations

import logging
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
    relpath,
    warn_count,
)
from mammokit.data.sources.base import DatasetSource, register_source

log = logging.getLogger(__name__)

_EXTRAS = {
    "BIRADS": "birads",
    "density": "density",
    "implant": "implant",
    "machine_id": "machine_id",
    "biopsy": "biopsy",
    "invasive": "invasive",
    "difficult_negative_case": "difficult_negative_case",
    "prediction_id": "prediction_id",
}


@register_source
class Rsna(DatasetSource):
    """RSNA screening adapter. Options: `table` ('train'|'test'), `images_dir` (default '<table>_images')."""

    name: ClassVar[str] = "rsna"
    citation: ClassVar[str] = (
        "Carr C et al. (2022) RSNA Screening Mammography Breast Cancer Detection. Kaggle. "
        "https://kaggle.com/competitions/rsna-breast-cancer-detection"
    )
    licence: ClassVar[str] = "Kaggle competition rules (non-commercial research use, no redistribution)"

    options_allowed: ClassVar[tuple[str, ...]] = ("table", "images_dir")

    def build_manifest(self, root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
        root = Path(root)
        table = str(self.options.get("table", "train"))
        if table not in ("train", "test"):
            raise DatasetError(f"table={table!r} must be 'train' or 'test'")
        csv = root / f"{table}.csv"
        if not csv.is_file():
            raise DatasetError(f"{root}: {table}.csv not found; pass the unpacked rsna-breast-cancer-detection folder")
        raw = pd.read_csv(csv, dtype=str, keep_default_na=False)
        need = ["patient_id", "image_id", "laterality", "view"] + (["cancer"] if table == "train" else [])
        missing = [c for c in need if c not in raw.columns]
        if missing:
            raise DatasetError(f"{csv.name}: lacks columns {missing}")
        images_dir = root / str(self.options.get("images_dir", f"{table}_images"))
        if not images_dir.is_dir():
            raise DatasetError(f"{images_dir}: image folder not found (set images_dir to where the DICOMs are)")

        paths = []
        for patient, image in zip(raw["patient_id"].str.strip(), raw["image_id"].str.strip(), strict=True):
            found = ""
            for suffix in (".dcm", ".png"):
                candidate = images_dir / patient / f"{image}{suffix}"
                if candidate.is_file():
                    found = relpath(candidate, root)
                    break
            paths.append(found)
        images = pd.DataFrame(
            {
                "image_id": raw["image_id"].str.strip(),
                "patient_id": raw["patient_id"].str.strip(),
                "exam_id": raw["patient_id"].str.strip(),
                "laterality": raw["laterality"].map(norm_laterality),
                "view": raw["view"].map(norm_view),
                "path": paths,
                "split": "",
                "site": raw["site_id"].str.strip() if "site_id" in raw.columns else "",
            }
        )
        if table == "train":
            cancer = pd.to_numeric(raw["cancer"], errors="coerce")
            images["label"] = cancer.where(cancer.isin([0, 1]), -1).fillna(-1).astype(int)
            images["label_source"] = "cancer (breast-level truth)"
            warn_count("RSNA rows have no 0/1 cancer value (label -1)", int((images["label"] < 0).sum()))
        else:
            images["label"] = -1
            images["label_source"] = "unknown (test table)"
        for src, dst in _EXTRAS.items():
            if src in raw.columns:
                images[dst] = raw[src].str.strip()
        missing_files = images["path"] == ""
        for image_id in images.loc[missing_files, "image_id"]:
            self.skip("listed in the RSNA CSV but no file under the image folder", image_id=str(image_id))
        warn_count("RSNA images have no file under the image folder (in errors.csv)", int(missing_files.sum()))
        images = images[~missing_files]
        if images.empty:
            raise DatasetError(f"{images_dir}: none of the images of {csv.name} found as <patient_id>/<image_id>.dcm")
        dup = int(images["image_id"].duplicated().sum())
        if dup:
            raise DatasetError(f"{csv.name}: {dup} repeated image_id values")
        return finish_tables(images, None, self.name)

    def read_image(self, row: pd.Series, root: Path, **reader_options: Any) -> tuple[np.ndarray, Any]:
        pixels, meta = super().read_image(row, root, **reader_options)
        return pixels, fill_meta(meta, str(row["laterality"]), str(row["view"]))
