"""Patch sampling for the patch classifier (Shen et al. 2019, sets S1 / S10 / Sn): lesion and background patches.

A prepared dataset folder (`mammokit prepare`) is turned into a patch-set folder::

    PATCHES/
      patches.parquet   one row per patch (columns: `PATCH_COLUMNS`)
      patches.json      scheme, patch size, class list in index order, seed, counts per split x class,
                        source folder and the source PreprocessSpec copied verbatim
      config.yaml       the resolved `PatchConfig`
      errors.csv        images skipped (unreadable image or mask, wrong geometry), with the reason
      images/<patch_id>.png   uint16 crops of the prepared image (values unchanged)

Patches are written to disk once instead of being cut on the fly: a patch set is then inspectable, identical
byte for byte for a given seed, and training reads a 224x224 PNG instead of a whole 1152x896 image plus its
masks per sample (the CPU cost that dominated the original's patch training). The whole folder is built
beside `PATCHES` and renamed into place at the end, so a killed run leaves no half-written patch set.

Sampling rules (`docs/patches.md` has the rationale and the differences from the original code):

* Windows are squares of side `patch_size` lying entirely inside the image (no zero padding).
* Overlap of a window with a lesion mask (seed_spec §4.2, "either ratio"): with `I` mask pixels inside the
  window, `A_roi` mask pixels in the image and `A_patch` the window area, overlap = max(I/A_roi, I/A_patch).
* One patch per lesion (S1): the window centred on the centroid of the mask's largest connected component
  (moved inside the image when the lesion touches the border), no overlap test; the overlap is recorded.
* n > 1 patches per lesion (S10, Sn): n distinct windows drawn uniformly from *all* windows whose overlap is
  >= `min_overlap`, found exactly with a summed-area table rather than by rejection sampling. Fallback when
  no window reaches `min_overlap` (a scattered or thin lesion much larger than the patch): the cutoff is
  lowered in steps of 0.05 until some window qualifies; those patches carry `fallback=True` and the cutoff
  used. Fewer qualifying windows than n: drawn with replacement (the count per lesion is kept).
* Background: windows that contain **no** pixel of **any** lesion mask of the image and whose breast-tissue
  fraction (pixels above `breast_threshold` x the image maximum) is >= `background_breast_fraction`. Images
  with no qualifying window give fewer background patches; the shortfall is counted in `patches.json`.
* Background is only taken from images where it can be trusted: every lesion of the image has a mask, and an
  image without lesions must be a known negative (label 0), so an unannotated cancer is never "background".
* Lesion type "other" is classed as mass (the 5-class scheme has only calcification and mass); a lesion with
  unknown malignancy (-1) gives no lesion patch but still excludes its pixels from background.
* Randomness: one `numpy.random.Generator` per image, seeded from (seed, SHA-256 of the image id), so the
  result does not depend on the number of workers or the order in which images are processed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from mammokit.config import ConfigError, dump_yaml
from mammokit.constants import PATCH_CLASSES_3, PATCH_CLASSES_5
from mammokit.data.manifest import DATASET_JSON, ERRORS_FILE, read_images, read_lesions
from mammokit.io.images import read_png8, read_png16, write_png16
from mammokit.utils.atomic import atomic_write_json, atomic_write_text, atomic_write_with
from mammokit.utils.paths import check_file_stem, inside
from mammokit.version import __version__

log = logging.getLogger(__name__)

PATCHES_FILE = "patches.parquet"
PATCHES_JSON = "patches.json"
CONFIG_FILE = "config.yaml"
PATCH_IMAGES_DIR = "images"

# The paper's patch side (pixels) at its whole-image height; other prepared heights scale it proportionally.
PAPER_PATCH_SIZE = 224
PAPER_IMAGE_HEIGHT = 1152
PAPER_PATCH_MM = 44.8  # 224 px at the paper's effective 0.2 mm per pixel (CBIS-DDSM films resized to 1152 rows)
FALLBACK_STEP = 0.05  # cutoff decrement when no window reaches min_overlap (the original decayed by 0.05 too)

PATCH_COLUMNS: dict[str, str] = {
    "patch_id": "unique id; the PNG is images/<patch_id>.png (str)",
    "image_id": "prepared image the patch was cut from (str)",
    "patient_id": "woman id, copied from the image (str)",
    "split": "split of the image: patches inherit it (str)",
    "lesion_id": "lesion the patch was sampled for; '' for background (str)",
    "lesion_type": "'mass', 'calcification', 'other'; '' for background (str)",
    "kind": "'lesion' or 'background' (str)",
    "class_name": "patch class, one of patches.json 'classes' (str)",
    "class_index": "index of class_name in patches.json 'classes' (int)",
    "y0": "top row of the window in the prepared image (int)",
    "x0": "left column of the window in the prepared image (int)",
    "size": "window side in pixels (int)",
    "overlap": "max(I/A_roi, I/A_patch) with the patch's lesion; for background the max over all lesions (= 0)",
    "overlap_cutoff": "cutoff the window had to reach (min_overlap, or lower for a fallback); NaN for "
    "centred (S1) lesion patches and background",
    "fallback": "True if min_overlap was impossible for this lesion and a lower cutoff was used (bool)",
    "breast_fraction": "fraction of the window's pixels on breast tissue (float)",
    "patch_file": "uint16 PNG relative to the patch-set folder (str)",
}


class PatchSamplingError(ValueError):
    """The patch-sampling request or its input folder is invalid; the message says what to change."""


@dataclass
class PatchConfig:
    """Settings of `mammokit patches` (also the keyword arguments of `sample_patches`)."""

    scheme: str = "s10"  # "s1", "s10", ... "sN": N patches per lesion and N background patches per image
    n_per_lesion: int | None = None  # overrides N of the scheme for lesion patches
    n_background: int | None = None  # overrides N of the scheme for background patches per image
    patch_size: int | None = None  # pixels; wins over patch_mm. None: from patch_mm, else the height rule below
    # Patch side in mm, so S1/S10/Sn cut the same tissue at any resolution. None: the paper's 44.8 mm (224 px at
    # 0.2 mm) when the prepared set is in physical-scale mode; in fixed-size mode round(224 * height / 1152) px.
    patch_mm: float | None = None
    classes: int = 5  # 5: background + (calc, mass) x (benign, malignant); 3: background, benign, malignant
    min_overlap: float = 0.9  # lesion patches: max(I/A_roi, I/A_patch) >= this (paper: 0.9)
    background_breast_fraction: float = 0.5  # background windows need at least this fraction of breast pixels
    breast_threshold: float = 0.05  # breast pixel = value > this x the image's maximum (seed_spec §3.6: 0.05)
    include_normal_images: bool = True  # take background patches from lesion-free images labelled negative
    seed: int = 0
    workers: int = 1  # processes; results do not depend on it

    def validate(self) -> None:
        scheme_n(self.scheme)
        for name in ("n_per_lesion", "n_background"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if self.patch_size is not None and self.patch_size < 8:
            raise ConfigError(f"patch_size must be at least 8 pixels, got {self.patch_size}")
        if self.patch_mm is not None and not 2.0 <= self.patch_mm <= 200.0:
            raise ConfigError(f"patch_mm must be between 2 and 200 mm, got {self.patch_mm}")
        if self.classes not in (3, 5):
            raise ConfigError(f"classes must be 5 or 3, got {self.classes}")
        if not 0.0 < self.min_overlap <= 1.0:
            raise ConfigError(f"min_overlap must be in (0, 1], got {self.min_overlap}")
        if not 0.0 <= self.background_breast_fraction <= 1.0:
            raise ConfigError(f"background_breast_fraction must be in [0, 1], got {self.background_breast_fraction}")
        if not 0.0 <= self.breast_threshold < 1.0:
            raise ConfigError(f"breast_threshold must be in [0, 1), got {self.breast_threshold}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")

    def counts(self) -> tuple[int, int]:
        """(patches per lesion, background patches per image) after applying the overrides."""
        n = scheme_n(self.scheme)
        per_lesion = n if self.n_per_lesion is None else self.n_per_lesion
        background = n if self.n_background is None else self.n_background
        return per_lesion, background


def scheme_n(scheme: str) -> int:
    """'s10' -> 10. Raises ConfigError for anything that is not 's' followed by a positive integer."""
    match = re.fullmatch(r"[sS](\d+)", str(scheme).strip())
    if not match or int(match.group(1)) < 1:
        raise ConfigError(f"scheme must look like s1, s10 or sN (N >= 1 patches per lesion), got {scheme!r}")
    return int(match.group(1))


def default_patch_size(image_height: int) -> int:
    """The paper's 224-pixel patch at 1152 rows, scaled to another prepared height (same field of view)."""
    return max(8, round(PAPER_PATCH_SIZE * image_height / PAPER_IMAGE_HEIGHT))


def resolve_patch_size(
    cfg: PatchConfig, spec: dict[str, Any] | None, images: pd.DataFrame, height: int
) -> tuple[int, str]:
    """(patch side in pixels, the rule that gave it, for patches.json); see `PatchConfig.patch_mm`.

    In physical-scale mode every prepared pixel is `spec["pixel_spacing"]` mm, so a side in mm is one pixel
    count for all images. In fixed-size mode the per-image spacing differs; an explicit `patch_mm` then uses the
    median prepared spacing of the manifest (`out_spacing_mm`), which needs every image's spacing to be known.
    """
    if cfg.patch_size is not None:
        return int(cfg.patch_size), "given"
    target = (spec or {}).get("pixel_spacing")
    if target:
        mm = cfg.patch_mm if cfg.patch_mm is not None else PAPER_PATCH_MM
        return max(8, round(mm / float(target))), f"round({mm:g} mm / {float(target):g} mm per pixel)"
    if cfg.patch_mm is None:
        return default_patch_size(height), f"round(224 * {height} / 1152)"
    spacing = pd.to_numeric(images.get("out_spacing_mm", pd.Series(dtype=float)), errors="coerce")
    if len(spacing) == 0 or spacing.isna().any():
        raise PatchSamplingError(
            "patch_mm needs every image's pixel spacing, and the prepared manifest lacks some (out_spacing_mm); "
            "prepare in physical-scale mode (--pixel-spacing) or with --assume-pixel-spacing, or give --patch-size"
        )
    median = float(spacing.median())
    return max(8, round(cfg.patch_mm / median)), f"round({cfg.patch_mm:g} mm / median {median:.4g} mm per pixel)"


def class_names(classes: int) -> tuple[str, ...]:
    """Patch class names in index order for the 5- or 3-class scheme."""
    if classes == 5:
        return PATCH_CLASSES_5
    if classes == 3:
        return PATCH_CLASSES_3
    raise PatchSamplingError(f"classes must be 5 or 3, got {classes}")


def lesion_class(lesion_type: str, malignant: int, classes: int) -> str | None:
    """Class name of a lesion patch, or None when the lesion's malignancy is unknown (-1).

    "other" lesions (architectural distortion, asymmetry, ...) are classed as mass: the paper's 5 classes
    have only calcification and mass, and these findings are soft-tissue findings like masses.
    """
    if malignant not in (0, 1):
        return None
    status = "malignant" if malignant == 1 else "benign"
    if classes == 3:
        return status
    kind = "calc" if lesion_type == "calcification" else "mass"
    return f"{kind}_{status}"


@dataclass(frozen=True)
class LesionInfo:
    """What the per-image sampler needs to know about one lesion (mask given separately)."""

    lesion_id: str
    lesion_type: str  # 'mass', 'calcification' or 'other'
    malignant: int  # 1, 0 or -1 (unknown)


@dataclass(frozen=True)
class PatchBox:
    """One sampled window of an image and its class."""

    y0: int
    x0: int
    size: int
    kind: str  # 'lesion' or 'background'
    class_name: str
    class_index: int
    lesion_id: str = ""
    lesion_type: str = ""
    overlap: float = 0.0
    overlap_cutoff: float = math.nan
    fallback: bool = False
    breast_fraction: float = 0.0


def window_sums(mask: np.ndarray, size: int) -> np.ndarray:
    """Number of set pixels in every size x size window lying inside the image.

    Args:
        mask: (H, W) bool or 0/1 array.
        size: window side in pixels (<= H and <= W).

    Returns:
        int32 array (H - size + 1, W - size + 1); element [y0, x0] counts the window whose top-left is (y0, x0).
    """
    h, w = mask.shape
    # Summed-area table with a zero first row/column (int32 holds counts up to 2**31 pixels). Row-wise cumulative
    # sums, then a running sum down the rows one row at a time: at 1152x896 that takes 4.5 ms of CPU against
    # 15 ms for numpy's cumsum along axis 0, and these tables are the sampler's main cost besides PNG encoding.
    sat = np.zeros((h + 1, w + 1), dtype=np.int32)
    body = sat[1:, 1:]
    np.cumsum(mask, axis=1, dtype=np.int32, out=body)
    for i in range(1, h):
        np.add(body[i - 1], body[i], out=body[i])
    return sat[size:, size:] - sat[:-size, size:] - sat[size:, :-size] + sat[:-size, :-size]


def _lesion_overlaps(mask: np.ndarray, size: int) -> tuple[np.ndarray, int, int]:
    """Overlap max(I/A_roi, I/A_patch) of the in-image windows that can touch the lesion.

    Only windows intersecting the lesion's bounding box are evaluated (all others have overlap 0), which keeps
    the cost proportional to (lesion extent + patch size)^2 instead of the image area.

    Returns:
        (overlaps, y_offset, x_offset): overlaps[i, j] belongs to the window with top-left (y_offset + i, x_offset + j).
    """
    h, w = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y_lo, y_hi = max(0, int(rows[0]) - size + 1), min(h - size, int(rows[-1]))  # inclusive top-left range
    x_lo, x_hi = max(0, int(cols[0]) - size + 1), min(w - size, int(cols[-1]))
    inside = window_sums(mask[y_lo : y_hi + size, x_lo : x_hi + size], size).astype(np.float64)
    roi_area = float(np.count_nonzero(mask))
    return np.maximum(inside / roi_area, inside / float(size * size)), y_lo, x_lo


def overlap_map(mask: np.ndarray, size: int) -> np.ndarray:
    """Overlap max(I/A_roi, I/A_patch) of every in-image window with one lesion mask (seed_spec §4.2).

    Returns:
        float64 array (H - size + 1, W - size + 1) indexed by the window's top-left corner.
    """
    h, w = mask.shape
    full = np.zeros((h - size + 1, w - size + 1), dtype=np.float64)
    if mask.any():
        sub, y0, x0 = _lesion_overlaps(mask, size)
        full[y0 : y0 + sub.shape[0], x0 : x0 + sub.shape[1]] = sub
    return full


def breast_mask(image: np.ndarray, threshold: float) -> np.ndarray:
    """Breast pixels: value > threshold x the image's maximum (the paper's low-intensity segmentation rule)."""
    return image > threshold * float(image.max())


def _centred_window(mask: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left of the window centred on the centroid of the mask's largest connected component, kept inside."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # label only the lesion's bounding box
    labels, n = ndimage.label(box)
    if n > 1:  # ignore stray specks, as the original kept the largest contour
        areas = np.bincount(labels.ravel())[1:]
        component = labels == (int(np.argmax(areas)) + 1)
    else:
        component = box
    cy, cx = ndimage.center_of_mass(component)
    h, w = mask.shape
    y0 = min(max(round(rows[0] + cy - size / 2), 0), h - size)
    x0 = min(max(round(cols[0] + cx - size / 2), 0), w - size)
    return int(y0), int(x0)


def _draw(rng: np.random.Generator, candidates: np.ndarray, n: int) -> np.ndarray:
    """n distinct flat indices from `candidates` (with replacement only when there are fewer than n)."""
    chosen = rng.choice(candidates, size=n, replace=candidates.size < n)
    return np.sort(chosen)  # row-major order: patches of one lesion are listed top to bottom


def sample_image_patches(
    image: np.ndarray,
    masks: Sequence[np.ndarray],
    lesions: Sequence[LesionInfo],
    rng: np.random.Generator,
    *,
    n_per_lesion: int,
    n_background: int,
    patch_size: int,
    classes: int = 5,
    min_overlap: float = 0.9,
    background_breast_fraction: float = 0.5,
    breast_threshold: float = 0.05,
    take_background: bool = True,
) -> list[PatchBox]:
    """Choose the lesion and background windows of one image (pure: no I/O; all randomness from `rng`).

    Args:
        image: (H, W) prepared image (any numeric dtype; only used for the breast mask).
        masks: one (H, W) bool/uint8 mask per entry of `lesions` (non-zero = lesion), same geometry as `image`.
        lesions: the image's lesions, in the order of `masks`.
        rng: the image's random generator.
        n_per_lesion: patches per lesion; 1 = the single centred patch of S1.
        n_background: background patches wanted for this image.
        patch_size: window side in pixels.
        classes: 5 or 3.
        min_overlap: lesion windows need max(I/A_roi, I/A_patch) >= this.
        background_breast_fraction: background windows need at least this fraction of breast pixels.
        breast_threshold: breast pixel = value > this x image maximum.
        take_background: False when background cannot be trusted on this image (see module docstring).

    Returns:
        Lesion patches (lesion by lesion, in input order) followed by background patches.

    Raises:
        PatchSamplingError: the image is smaller than a patch, a mask has another shape or is empty.
    """
    if image.ndim != 2:
        raise PatchSamplingError(f"expected a 2-D image, got shape {image.shape}")
    h, w = image.shape
    size = int(patch_size)
    if size > h or size > w:
        raise PatchSamplingError(f"image {h}x{w} is smaller than the {size}-pixel patch; use a smaller --patch-size")
    if len(masks) != len(lesions):
        raise PatchSamplingError(f"{len(masks)} masks for {len(lesions)} lesions")
    names = class_names(classes)
    bool_masks = []
    for lesion, mask in zip(lesions, masks, strict=True):
        if mask.shape != image.shape:
            raise PatchSamplingError(
                f"mask of lesion {lesion.lesion_id} is {mask.shape[0]}x{mask.shape[1]} but the image is {h}x{w}"
            )
        m = mask > 0
        if not m.any():
            raise PatchSamplingError(f"mask of lesion {lesion.lesion_id} is empty, so its location is unknown")
        bool_masks.append(m)

    breast = breast_mask(image, breast_threshold) if image.max() > 0 else np.zeros(image.shape, dtype=bool)
    breast_fraction = window_sums(breast, size) / float(size * size)  # (H-size+1, W-size+1)
    n_cols = w - size + 1
    boxes: list[PatchBox] = []

    for lesion, m in zip(lesions, bool_masks, strict=True):
        name = lesion_class(lesion.lesion_type, lesion.malignant, classes)
        if name is None or n_per_lesion == 0:
            continue
        common = {
            "size": size,
            "kind": "lesion",
            "class_name": name,
            "class_index": names.index(name),
            "lesion_id": lesion.lesion_id,
            "lesion_type": lesion.lesion_type,
        }
        overlaps, oy, ox = _lesion_overlaps(m, size)

        def overlap_at(y0: int, x0: int, overlaps=overlaps, oy=oy, ox=ox) -> float:
            i, j = y0 - oy, x0 - ox
            inside = 0 <= i < overlaps.shape[0] and 0 <= j < overlaps.shape[1]
            return float(overlaps[i, j]) if inside else 0.0

        if n_per_lesion == 1:
            y0, x0 = _centred_window(m, size)
            boxes.append(
                PatchBox(
                    y0=y0,
                    x0=x0,
                    overlap=overlap_at(y0, x0),
                    breast_fraction=float(breast_fraction[y0, x0]),
                    **common,
                )
            )
            continue
        cutoff, fallback = min_overlap, False
        best = float(overlaps.max())  # > 0: the lesion is non-empty and inside the image
        if best < min_overlap:
            # No window reaches min_overlap: lower the cutoff in FALLBACK_STEP steps to the first value reached.
            steps = math.ceil(round((min_overlap - best) / FALLBACK_STEP, 9))
            cutoff, fallback = min_overlap - steps * FALLBACK_STEP, True
            if cutoff <= 0.0 or best < cutoff:  # a lesion too sparse for any step, or float round-off at a step
                cutoff = best
        candidates = np.flatnonzero(overlaps >= cutoff - 1e-12)
        for flat in _draw(rng, candidates, n_per_lesion):
            i, j = divmod(int(flat), overlaps.shape[1])
            y0, x0 = oy + i, ox + j
            boxes.append(
                PatchBox(
                    y0=y0,
                    x0=x0,
                    overlap=float(overlaps[i, j]),
                    overlap_cutoff=float(cutoff),
                    fallback=fallback,
                    breast_fraction=float(breast_fraction[y0, x0]),
                    **common,
                )
            )

    if take_background and n_background > 0:
        any_lesion = np.zeros(image.shape, dtype=bool)
        for m in bool_masks:
            any_lesion |= m
        lesion_free = window_sums(any_lesion, size) == 0  # no pixel of any lesion of the image
        ok = lesion_free & (breast_fraction >= background_breast_fraction)
        candidates = np.flatnonzero(ok)
        if candidates.size:
            chosen = np.sort(rng.choice(candidates, size=min(n_background, candidates.size), replace=False))
            for flat in chosen:
                y0, x0 = divmod(int(flat), n_cols)
                boxes.append(
                    PatchBox(
                        y0=y0,
                        x0=x0,
                        size=size,
                        kind="background",
                        class_name=names[0],
                        class_index=0,
                        breast_fraction=float(breast_fraction[y0, x0]),
                    )
                )
    return boxes


def image_rng(seed: int, image_id: str) -> np.random.Generator:
    """The random generator of one image: a function of (seed, image id) only, never of processing order."""
    digest = hashlib.sha256(str(image_id).encode("utf-8")).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])


# ----------------------------------------------------------------------------------------------------------
# Folder-level driver


@dataclass
class _ImageTask:
    """Everything one worker needs for one image (plain values, cheap to pickle)."""

    prepared: str
    out: str
    image: dict[str, Any]
    lesions: list[dict[str, Any]]
    n_per_lesion: int
    n_background: int
    patch_size: int
    classes: int
    min_overlap: float
    background_breast_fraction: float
    breast_threshold: float
    include_normal_images: bool
    seed: int


def _text(value: Any) -> str:
    """Table cell -> str, with NA/None as ''."""
    return "" if value is None or pd.isna(value) else str(value)


def _int(value: Any, default: int = -1) -> int:
    """Table cell -> int, with NA/None as `default` (e.g. unknown malignancy)."""
    return default if value is None or pd.isna(value) else int(value)


def _process_image(task: _ImageTask) -> tuple[list[dict[str, Any]], list[dict[str, str]], int]:
    """Sample and write the patches of one image. Returns (patch rows, error rows, background shortfall)."""
    row = task.image
    image_id = _text(row["image_id"])
    try:
        # the prepared folder may come from someone else: its ids name our files, its paths must stay inside it
        check_file_stem(image_id, "image_id")
        image_file = _text(row.get("image_file")) or f"images/{image_id}.png"
        image = read_png16(inside(Path(task.prepared), image_file, "image_file"))
        if image.max() == 0:
            raise PatchSamplingError("the image is blank (all pixels 0)")
        infos, masks = [], []
        all_masked = True
        for lesion in task.lesions:
            mask_file = _text(lesion.get("mask_file"))
            if not mask_file:
                all_masked = False  # no ROI: its pixels are unknown, so no background can be trusted
                continue
            masks.append(read_png8(inside(Path(task.prepared), mask_file, "mask_file")))
            infos.append(
                LesionInfo(
                    lesion_id=_text(lesion["lesion_id"]),
                    lesion_type=_text(lesion.get("lesion_type")),
                    malignant=_int(lesion.get("malignant")),
                )
            )
        label = _int(row.get("label"))
        # Background needs every lesion's pixels known; a lesion-free image must be a known negative.
        take_background = all_masked if task.lesions else (task.include_normal_images and label == 0)
        boxes = sample_image_patches(
            image,
            masks,
            infos,
            image_rng(task.seed, image_id),
            n_per_lesion=task.n_per_lesion,
            n_background=task.n_background,
            patch_size=task.patch_size,
            classes=task.classes,
            min_overlap=task.min_overlap,
            background_breast_fraction=task.background_breast_fraction,
            breast_threshold=task.breast_threshold,
            take_background=take_background,
        )
    except (OSError, ValueError) as exc:  # unreadable/missing file, wrong geometry, empty mask
        return [], [{"image_id": image_id, "reason": f"{type(exc).__name__}: {exc}"}], 0

    rows: list[dict[str, Any]] = []
    counters: dict[str, int] = {}
    for box in boxes:
        # Ids built from the image id (unique, file-name safe: prepare already uses it as a file name).
        lesion_index = next((i for i, info in enumerate(infos) if info.lesion_id == box.lesion_id), -1)
        key = f"l{lesion_index:02d}" if box.kind == "lesion" else "bg"
        counters[key] = counters.get(key, 0) + 1
        patch_id = f"{image_id}_{key}_{counters[key] - 1:03d}"
        patch_file = f"{PATCH_IMAGES_DIR}/{patch_id}.png"
        crop = np.ascontiguousarray(image[box.y0 : box.y0 + box.size, box.x0 : box.x0 + box.size])
        write_png16(Path(task.out) / patch_file, crop, durable=False)  # the folder is renamed into place at the end
        rows.append(
            {
                "patch_id": patch_id,
                "image_id": image_id,
                "patient_id": _text(row.get("patient_id")),
                "split": _text(row.get("split")),
                "lesion_id": box.lesion_id,
                "lesion_type": box.lesion_type,
                "kind": box.kind,
                "class_name": box.class_name,
                "class_index": box.class_index,
                "y0": box.y0,
                "x0": box.x0,
                "size": box.size,
                "overlap": box.overlap,
                "overlap_cutoff": box.overlap_cutoff,
                "fallback": box.fallback,
                "breast_fraction": box.breast_fraction,
                "patch_file": patch_file,
            }
        )
    n_bg = sum(1 for b in boxes if b.kind == "background")
    shortfall = task.n_background - n_bg if take_background else 0
    return rows, [], shortfall


def _read_dataset_json(prepared: Path) -> dict[str, Any]:
    """dataset.json of the prepared folder, or {} when absent/unreadable (it is provenance, not input)."""
    path = prepared / DATASET_JSON
    if not path.is_file():
        log.warning("%s not found: the patch set will not record the source preprocessing", path)
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s): the patch set will not record the source preprocessing", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _preprocess_spec(dataset: dict[str, Any]) -> dict[str, Any] | None:
    """The PreprocessSpec stored by prepare, whichever key it was written under."""
    for key in ("preprocess", "preprocess_spec", "spec"):
        value = dataset.get(key)
        if isinstance(value, dict):
            return value
    return None


def _prepared_height(prepared: Path, spec: dict[str, Any] | None, images: pd.DataFrame) -> int:
    """Prepared image height: from the PreprocessSpec, else from the first image that can be read."""
    if spec and isinstance(spec.get("height"), int | float) and spec["height"] > 0:
        return int(spec["height"])
    for _, row in images.iterrows():
        path = prepared / (_text(row.get("image_file")) or f"images/{row['image_id']}.png")
        try:
            return int(read_png16(path).shape[0])
        except (OSError, ValueError):
            continue
    raise PatchSamplingError(f"{prepared}: no readable image to take the patch size from; give --patch-size")


def _tasks(
    prepared: Path, out: Path, images: pd.DataFrame, lesions: pd.DataFrame, cfg: PatchConfig, patch_size: int
) -> Iterator[_ImageTask]:
    n_per_lesion, n_background = cfg.counts()
    by_image: dict[str, list[dict[str, Any]]] = {}
    for record in lesions.to_dict("records"):
        by_image.setdefault(str(record["image_id"]), []).append(record)
    for record in images.to_dict("records"):
        yield _ImageTask(
            prepared=str(prepared),
            out=str(out),
            image=record,
            lesions=by_image.get(str(record["image_id"]), []),
            n_per_lesion=n_per_lesion,
            n_background=n_background,
            patch_size=patch_size,
            classes=cfg.classes,
            min_overlap=cfg.min_overlap,
            background_breast_fraction=cfg.background_breast_fraction,
            breast_threshold=cfg.breast_threshold,
            include_normal_images=cfg.include_normal_images,
            seed=cfg.seed,
        )


def _run_tasks(tasks: list[_ImageTask], workers: int) -> list[tuple[list[dict[str, Any]], list[dict[str, str]], int]]:
    """`_process_image` of every task in task order, in worker processes (`mammokit.utils.pool`): a prepared
    folder may come from someone else, and a decoder that panics or aborts must cost one image, not the set."""
    from mammokit.utils.pool import TaskFailed, run_isolated

    results = []
    for index, result in run_isolated(_process_image, tasks, workers=workers, ordered=True):
        if isinstance(result, TaskFailed):
            result = ([], [{"image_id": _text(tasks[index].image["image_id"]), "reason": result.reason}], 0)
        results.append(result)
    return results


def _empty_patch_table() -> pd.DataFrame:
    dtypes = {"class_index": "int64", "y0": "int64", "x0": "int64", "size": "int64", "fallback": "bool"}
    dtypes |= {"overlap": "float64", "overlap_cutoff": "float64", "breast_fraction": "float64"}
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, "object")) for c in PATCH_COLUMNS})


def _staging_dir(out: Path) -> Path:
    """An empty folder beside `out` (same filesystem, so the final rename is atomic)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PatchSamplingError(
            f"{out} already exists and is not empty; choose another --out or delete it (patch sets are never merged)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))


def sample_patches(
    prepared: str | Path,
    out: str | Path,
    *,
    scheme: str = "s10",
    n_per_lesion: int | None = None,
    n_background: int | None = None,
    patch_size: int | None = None,
    patch_mm: float | None = None,
    classes: int = 5,
    min_overlap: float = 0.9,
    background_breast_fraction: float = 0.5,
    breast_threshold: float = 0.05,
    include_normal_images: bool = True,
    seed: int = 0,
    workers: int = 1,
) -> dict[str, Any]:
    """Sample a patch set from a prepared dataset folder and write it to `out` (see the module docstring).

    Args:
        prepared: prepared dataset folder (`mammokit prepare`).
        out: patch-set folder to create (must not exist or be empty).
        scheme: "s1", "s10" or "sN".
        n_per_lesion: override N for lesion patches.
        n_background: override N for background patches per image.
        patch_size: window side in pixels; None = from patch_mm (`resolve_patch_size`).
        patch_mm: window side in mm; None = 44.8 mm in physical-scale mode, else round(224 * height / 1152) px.
        classes: 5 or 3.
        min_overlap: lesion-window overlap cutoff (paper 0.9).
        background_breast_fraction: minimum breast fraction of a background window.
        breast_threshold: breast pixel = value > this x image maximum.
        include_normal_images: take background patches from lesion-free negative images too.
        seed: random seed.
        workers: worker processes (the result does not depend on it).

    Returns:
        The summary written to patches.json.

    Raises:
        PatchSamplingError: bad settings, missing manifest, or `out` not empty. A bad image or mask is not an
            error: it is listed in errors.csv and skipped.
    """
    cfg = PatchConfig(
        scheme=scheme,
        n_per_lesion=n_per_lesion,
        n_background=n_background,
        patch_size=patch_size,
        patch_mm=patch_mm,
        classes=classes,
        min_overlap=min_overlap,
        background_breast_fraction=background_breast_fraction,
        breast_threshold=breast_threshold,
        include_normal_images=include_normal_images,
        seed=seed,
        workers=workers,
    )
    try:
        cfg.validate()
    except ConfigError as exc:
        raise PatchSamplingError(str(exc)) from None
    prepared, out = Path(prepared), Path(out)
    try:
        images = read_images(prepared)
    except ValueError as exc:
        raise PatchSamplingError(str(exc)) from None
    for column in ("image_id", "patient_id", "split"):
        if column not in images.columns:
            raise PatchSamplingError(f"{prepared}/manifest.parquet lacks column '{column}'; re-run `mammokit prepare`")
    lesions = read_lesions(prepared)
    if len(lesions) and "mask_file" not in lesions.columns:
        raise PatchSamplingError(
            f"{prepared}/lesions.parquet has no mask_file column: lesion patches need rasterised ROI masks "
            "(re-run `mammokit prepare`)"
        )
    dataset = _read_dataset_json(prepared)
    spec = _preprocess_spec(dataset)
    height = _prepared_height(prepared, spec, images)
    size, size_rule = resolve_patch_size(cfg, spec, images, height)
    n_per_lesion_, n_background_ = cfg.counts()

    staging = _staging_dir(out)
    try:
        (staging / PATCH_IMAGES_DIR).mkdir()
        tasks = list(_tasks(prepared, staging, images, lesions, cfg, size))
        log.info("sampling %s patches (size %d) from %d images, %d worker(s)", cfg.scheme, size, len(tasks), workers)
        results = _run_tasks(tasks, workers)

        rows = [r for result in results for r in result[0]]
        errors = [e for result in results for e in result[1]]
        shortfall_images = sum(1 for result in results if result[2] > 0)
        table = pd.DataFrame(rows, columns=list(PATCH_COLUMNS)) if rows else _empty_patch_table()
        if table["patch_id"].duplicated().any():  # cannot happen with unique image ids; guard the contract
            raise PatchSamplingError("duplicate patch ids: image_id must be unique in manifest.parquet")
        names = class_names(cfg.classes)
        counts = {
            split: {name: int(((table["split"] == split) & (table["class_name"] == name)).sum()) for name in names}
            for split in sorted(table["split"].unique())
        }
        summary: dict[str, Any] = {
            "format_version": 1,
            "mammokit_version": __version__,
            "scheme": cfg.scheme.lower(),
            "n_per_lesion": n_per_lesion_,
            "n_background": n_background_,
            "patch_size": size,
            "patch_size_rule": size_rule,
            "patch_mm": size * float(spec["pixel_spacing"]) if spec and spec.get("pixel_spacing") else cfg.patch_mm,
            "classes": list(names),
            "seed": cfg.seed,
            "min_overlap": cfg.min_overlap,
            "background_breast_fraction": cfg.background_breast_fraction,
            "breast_threshold": cfg.breast_threshold,
            "n_patches": len(table),
            "counts": counts,
            "n_images": len(tasks),
            "n_images_failed": len(errors),
            "n_images_short_of_background": shortfall_images,
            "n_fallback_lesions": int(table.loc[table["fallback"].astype(bool), "lesion_id"].nunique()),
            "source": {
                "prepared": str(prepared.resolve()),
                "dataset": dataset.get("source", dataset.get("dataset", "")),
                "image_height": height,
                "preprocess": spec,
            },
        }
        atomic_write_with(staging / PATCHES_FILE, lambda tmp: table.to_parquet(tmp, index=False))
        pd.DataFrame(errors, columns=["image_id", "reason"]).to_csv(staging / ERRORS_FILE, index=False)
        atomic_write_text(staging / CONFIG_FILE, dump_yaml(cfg))
        atomic_write_json(staging / PATCHES_JSON, summary)
        if out.exists():
            out.rmdir()  # checked empty in _staging_dir
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if errors:
        log.warning("%d image(s) skipped; reasons in %s", len(errors), out / ERRORS_FILE)
    if shortfall_images:
        log.warning("%d image(s) had too little lesion-free breast tissue for all background patches", shortfall_images)
    log.info("wrote %d patches to %s", len(table), out)
    return summary


def read_patch_set(folder: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a patch-set folder: (patches table, patches.json summary)."""
    folder = Path(folder)
    table_path, json_path = folder / PATCHES_FILE, folder / PATCHES_JSON
    if not table_path.is_file() or not json_path.is_file():
        raise PatchSamplingError(
            f"{folder} is not a patch set (no {PATCHES_FILE}/{PATCHES_JSON}); run `mammokit patches`"
        )
    return pd.read_parquet(table_path), json.loads(json_path.read_text())
