"""Per-image patch sampling for the patch classifier (Shen et al. 2019, sets S1 / S10 / Sn): which windows of
one prepared image become lesion and background patches. The folder-level driver is `mammokit.data.patches`.

Sampling rules (`docs/patches.md` has the rationale and the differences from the original code):

* Windows are squares of side `patch_size` lying entirely inside the image (no zero padding).
* Overlap of a window with a lesion mask (the paper's "either ratio"): with `I` mask pixels inside the
  window, `A_roi` mask pixels in the image and `A_patch` the window area, overlap = max(I/A_roi, I/A_patch).
* One patch per lesion (S1): the window centred on the centroid of the mask's largest connected component
  (moved inside the image when the lesion touches the border), no overlap test; the overlap is recorded.
* n > 1 patches per lesion (S10, Sn): n distinct windows drawn uniformly from *all* windows whose overlap is
  >= `min_overlap`, found exactly with a summed-area table rather than by rejection sampling. Fallback when
  no window reaches `min_overlap` (a scattered or thin lesion much larger than the patch): the cutoff is
  lowered in steps of 0.05 until some window qualifies; those patches carry `fallback=True` and the cutoff
  used. Fewer qualifying windows than n: drawn with replacement (the count per lesion is kept).
* Background: windows that contain **no** pixel of **any** lesion mask of the image and whose breast-tissue
  fraction (pixels of `data.geometry.segment_breast(image, breast_threshold)`: the largest bright component
  above `breast_threshold` of the intensity range, as in `prepare`) is >= `background_breast_fraction`. Images
  with no qualifying window give fewer background patches; the shortfall is counted in `patches.json`.
* Background is only taken from images where it can be trusted: every lesion of the image has a mask, and an
  image without lesions must be a known negative (label 0), so an unannotated cancer is never "background".
* Hard negatives (optional, not in the paper): given a score for every window (a first patch classifier's
  p(not background) at the window's centre) and a fraction f, round(f x n) of an image's background patches
  are the highest-scoring qualifying windows, greedily, each at least half a patch away (in y or x) from the
  hard windows already taken; the rest are drawn uniformly from the remaining qualifying windows. They teach
  the classifier the normal tissue it mistakes for lesions. Without scores the draw is exactly the uniform one.
* Lesion type "other" is classed as mass (the 5-class scheme has only calcification and mass); a lesion with
  unknown malignancy (-1) gives no lesion patch but still excludes its pixels from background.
* Randomness: one `numpy.random.Generator` per image, seeded from (seed, SHA-256 of the image id), so the
  result does not depend on the number of workers or the order in which images are processed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mammokit.constants import PATCH_CLASSES_3, PATCH_CLASSES_5
from mammokit.data.geometry import segment_breast

FALLBACK_STEP = 0.05  # cutoff decrement when no window reaches min_overlap (the original decayed by 0.05 too)


class PatchSamplingError(ValueError):
    """The patch-sampling request or its input folder is invalid; the message says what to change."""


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
    hard_negative: bool = False  # a background window chosen for its high lesion score (module docstring)


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
    """Overlap max(I/A_roi, I/A_patch) of every in-image window with one lesion mask (the paper's rule).

    Returns:
        float64 array (H - size + 1, W - size + 1) indexed by the window's top-left corner.
    """
    h, w = mask.shape
    full = np.zeros((h - size + 1, w - size + 1), dtype=np.float64)
    if mask.any():
        sub, y0, x0 = _lesion_overlaps(mask, size)
        full[y0 : y0 + sub.shape[0], x0 : x0 + sub.shape[1]] = sub
    return full


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
    window_scores: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    hard_fraction: float = 0.0,
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
        breast_threshold: the breast mask is `data.geometry.segment_breast(image, breast_threshold)`.
        take_background: False when background cannot be trusted on this image (see module docstring).
        window_scores: (y0, x0) arrays of window corners -> their lesion scores (higher = more lesion-like);
            with `hard_fraction` > 0 the top-scoring qualifying windows become hard-negative background.
        hard_fraction: share of the background patches that are hard negatives (0 = all uniform).

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

    breast = segment_breast(image, breast_threshold)  # the one breast mask (prepare crops with it too)
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
        n_hard = round(n_background * hard_fraction) if window_scores is not None else 0
        hard = _hard_windows(candidates, n_cols, size, n_hard, window_scores) if n_hard else np.array([], int)
        if hard.size:
            candidates = np.setdiff1d(candidates, hard, assume_unique=True)
        n_uniform = min(n_background - hard.size, candidates.size)
        if n_uniform > 0:
            uniform = np.sort(rng.choice(candidates, size=n_uniform, replace=False))
        else:
            uniform = np.array([], dtype=int)
        for flat, is_hard in [(f, True) for f in hard] + [(f, False) for f in uniform]:
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
                    hard_negative=is_hard,
                )
            )
    return boxes


def _hard_windows(
    candidates: np.ndarray,
    n_cols: int,
    size: int,
    n: int,
    window_scores: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    """Up to `n` flat window indices among `candidates`: highest score first, each at least size // 2 (in y or
    x) from those already taken, so that one bright spot does not give n near-copies of the same patch."""
    if candidates.size == 0:
        return np.array([], dtype=int)
    ys, xs = np.divmod(candidates, n_cols)
    scores = np.asarray(window_scores(ys, xs), dtype=np.float64)
    if scores.shape != candidates.shape or not np.isfinite(scores).all():
        raise PatchSamplingError(f"window scores must be {candidates.size} finite numbers, got shape {scores.shape}")
    gap = max(1, size // 2)
    taken: list[int] = []
    for k in np.argsort(-scores, kind="stable"):  # ties: lower flat index (top-left) first
        y, x = ys[k], xs[k]
        if all(abs(y - ys[t]) >= gap or abs(x - xs[t]) >= gap for t in taken):
            taken.append(int(k))
            if len(taken) == n:
                break
    return candidates[taken]


def image_rng(seed: int, image_id: str) -> np.random.Generator:
    """The random generator of one image: a function of (seed, image id) only, never of processing order."""
    digest = hashlib.sha256(str(image_id).encode("utf-8")).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])
