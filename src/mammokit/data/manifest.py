"""The manifest: one schema for every dataset (an image table and a lesion table, stored as Parquet).

Adapters (`mammokit.data.sources.*`) produce both tables in *raw* coordinates (pixel positions in the
source file). `mammokit prepare` adds the prepared-geometry columns (`image_file`, crop box, flip,
`mask_file`) and writes them under the prepared folder. Every later stage reads only these tables.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from mammokit.utils.atomic import atomic_write_with

if TYPE_CHECKING:
    from mammokit.preprocess import PreprocessSpec

IMAGES_FILE = "manifest.parquet"
LESIONS_FILE = "lesions.parquet"
DATASET_JSON = "dataset.json"
ERRORS_FILE = "errors.csv"

# Required image-table columns and their meaning. Optional source fields may be NA.
IMAGE_COLUMNS: dict[str, str] = {
    "image_id": "unique id of the image within the dataset (str); used for file names and outputs",
    "patient_id": "woman id (str); splits are made over this column",
    "exam_id": "study/exam id (str); several images of one screening visit",
    "laterality": "'L' or 'R'",
    "view": "'CC', 'MLO' or another view code",
    "path": "source image file, absolute or relative to the raw root (str)",
    "label": "image-level malignancy: 1 malignant, 0 not malignant, -1 unknown (int)",
    "split": "'train', 'val', 'test' or '' before splitting",
    "dataset": "source dataset name (str)",
}
OPTIONAL_IMAGE_COLUMNS: dict[str, str] = {
    "density": "ACR breast density as given by the source (str)",
    "birads": "BI-RADS assessment (str)",
    "subtlety": "CBIS-DDSM subtlety 1-5 (str)",
    "vendor": "manufacturer (str)",
    "site": "acquisition site (str)",
    "label_source": "how `label` was derived (str), e.g. 'pathology', 'birads>=4'",
    # added by `mammokit prepare` (prepared geometry):
    "image_file": "prepared 16-bit PNG, relative to the prepared folder",
    "orig_height": "rows of the source image",
    "orig_width": "columns of the source image",
    "crop_y0": "crop box in source pixels (top row, inclusive)",
    "crop_y1": "crop box bottom row (exclusive)",
    "crop_x0": "crop box left column (inclusive)",
    "crop_x1": "crop box right column (exclusive)",
    "flipped": "True if the image was mirrored left-right into canonical orientation",
    "out_height": "rows of the prepared image",
    "out_width": "columns of the prepared image",
    "pad_top": "rows of zero padding added on top (aspect='pad'; likewise pad_bottom, pad_left, pad_right)",
    "orientation_source": "what decided the flip: 'laterality' (tag or adapter) or 'content' (more breast on a side)",
    "orientation_disagrees": "True if the laterality tag and the image content disagree (flag for review)",
    "spacing_mm": "source mm per pixel (row direction); NaN when unknown",
    "spacing_source": "where spacing_mm came from: 'file' (DICOM tag), 'assumed' (--assume-pixel-spacing), "
    "'dataset' (the adapter's documented value) or '' (unknown)",
    "out_spacing_mm": "prepared mm per pixel (row direction); NaN when the source spacing is unknown",
    "fit_scale": "physical-scale mode: factor by which a breast larger than the canvas was shrunk (1 = none)",
    "n_lesions": "number of lesion-table rows of the image",
}

LESION_COLUMNS: dict[str, str] = {
    "lesion_id": "unique id of the abnormality (str)",
    "image_id": "image it belongs to (str)",
    "lesion_type": "'mass', 'calcification' or 'other'",
    "pathology": "source pathology text (str), e.g. MALIGNANT, BENIGN, BENIGN_WITHOUT_CALLBACK",
    "malignant": "1 / 0 / -1 unknown (int)",
    "roi_kind": "'mask', 'polygon', 'circle', 'box' or 'none'",
}
OPTIONAL_LESION_COLUMNS: dict[str, str] = {
    "roi_path": "source mask file for roi_kind='mask' (str)",
    "polygon": "JSON list of [x, y] source-pixel vertices for roi_kind='polygon' (str)",
    "cx": "circle centre column, source pixels (float)",
    "cy": "circle centre row, source pixels, origin top-left (float)",
    "radius": "circle radius, source pixels (float)",
    "x0": "box left (float)",
    "y0": "box top (float)",
    "x1": "box right (float)",
    "y1": "box bottom (float)",
    "mask_file": "prepared 8-bit mask PNG (0/255), relative to the prepared folder (added by prepare)",
}


class ManifestError(ValueError):
    """A manifest table does not follow the schema."""


def validate_images(df: pd.DataFrame) -> pd.DataFrame:
    """Check the image table; returns it with normalised dtypes."""
    missing = [c for c in IMAGE_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"image table lacks columns {missing}; required: {list(IMAGE_COLUMNS)}")
    if df["image_id"].duplicated().any():
        dup = df.loc[df["image_id"].duplicated(), "image_id"].iloc[:5].tolist()
        raise ManifestError(f"image_id must be unique; duplicated: {dup}")
    bad = set(df["label"].unique()) - {0, 1, -1}
    if bad:
        raise ManifestError(f"label must be 0, 1 or -1; found {sorted(bad)}")
    out = df.copy()
    for col in ("image_id", "patient_id", "exam_id", "laterality", "view", "path", "split", "dataset"):
        out[col] = out[col].astype(str)
    out["label"] = out["label"].astype(int)
    return out


def validate_lesions(df: pd.DataFrame) -> pd.DataFrame:
    """Check the lesion table; returns it with normalised dtypes."""
    missing = [c for c in LESION_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"lesion table lacks columns {missing}; required: {list(LESION_COLUMNS)}")
    out = df.copy()
    for col in ("lesion_id", "image_id", "lesion_type", "pathology", "roi_kind"):
        out[col] = out[col].astype(str)
    out["malignant"] = out["malignant"].astype(int)
    return out


def empty_lesions() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in LESION_COLUMNS}).astype({"malignant": int})


def write_table(df: pd.DataFrame, path: str | Path) -> None:
    """Atomically write a table as Parquet."""
    atomic_write_with(path, lambda tmp: df.to_parquet(tmp, index=False))


def read_images(prepared: str | Path) -> pd.DataFrame:
    """Read the image table of a prepared dataset folder."""
    path = Path(prepared) / IMAGES_FILE
    if not path.is_file():
        raise ManifestError(f"{prepared}: {IMAGES_FILE} not found; run `mammokit prepare` first")
    return pd.read_parquet(path)


def read_lesions(prepared: str | Path) -> pd.DataFrame:
    """Read the lesion table of a prepared dataset folder (empty table if the dataset has none)."""
    path = Path(prepared) / LESIONS_FILE
    return pd.read_parquet(path) if path.is_file() else empty_lesions()


@dataclass
class PreparedDataset:
    """A prepared dataset folder (`mammokit prepare`), opened once: the one reader of its files.

    Attributes:
        root: the folder.
        images: the manifest's rows that have a prepared image (`image_file`); failed images are left out.
        info: dataset.json ({} when absent: it is provenance, not input).
    """

    root: Path
    images: pd.DataFrame
    info: dict[str, Any]

    @classmethod
    def open(cls, root: str | Path, *, require: Sequence[str] = ("split", "label", "image_file")) -> PreparedDataset:
        """Read manifest.parquet and dataset.json; ManifestError naming what is missing and what to run."""
        root = Path(root)
        images = read_images(root)
        missing = sorted(set(require) - set(images.columns))
        if missing:
            raise ManifestError(f"{root / IMAGES_FILE} lacks column(s) {missing}; re-run `mammokit prepare`")
        if "image_file" in images.columns:
            images = images[images["image_file"].notna() & (images["image_file"].astype(str) != "")]
        info: dict[str, Any] = {}
        path = root / DATASET_JSON
        if path.is_file():
            try:
                loaded = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ManifestError(f"{path} is unreadable ({exc}); re-run `mammokit prepare`") from None
            info = loaded if isinstance(loaded, dict) else {}
        return cls(root, images.reset_index(drop=True), info)

    @property
    def spec(self) -> PreprocessSpec | None:
        """The PreprocessSpec the images were prepared with (dataset.json "preprocess"), or None if not recorded."""
        from mammokit.config import from_dict
        from mammokit.preprocess import PreprocessSpec

        value = self.info.get("preprocess")
        return from_dict(PreprocessSpec, value) if isinstance(value, dict) else None

    def lesions(self) -> pd.DataFrame:
        """The lesion table (empty when the dataset has none)."""
        return read_lesions(self.root)
