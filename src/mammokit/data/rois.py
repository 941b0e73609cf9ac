"""Rasterise one lesion's region of interest onto its image's source pixel grid.

The lesion table (`mammokit.data.manifest.LESION_COLUMNS`) describes an ROI in one of four ways, all in
source-image pixels with the origin at the top-left corner (adapters convert, e.g. mini-MIAS's
bottom-left origin):

* `mask`: a mask file (`roi_path`; DICOM of any modality, PNG or PGM), lesion = non-zero;
* `polygon`: a JSON list of `[x, y]` vertices (x = column, y = row), filled including its outline;
* `circle`: centre (`cx`, `cy`) and `radius`, pixels whose centre lies within the circle;
* `box`: `x0, y0, x1, y1` (left, top, right, bottom; right/bottom exclusive, clipped to the image).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

# A mask file whose size differs from its image by at most this fraction per axis is resized onto the
# image grid (CBIS-DDSM has ROI masks a few pixels off their mammogram); larger differences are errors.
MASK_SIZE_TOLERANCE = 0.02


class RoiError(ValueError):
    """A lesion's ROI cannot be rasterised; the message says which lesion and why."""


def rasterize_roi(lesion: Any, shape: tuple[int, int], root: str | Path | None = None) -> np.ndarray:
    """Boolean mask (rows, cols) = `shape` of one lesion's ROI on its image's source pixel grid.

    Args:
        lesion: a lesion-table row (pandas Series or mapping) with `roi_kind` and that kind's columns.
        shape: (rows, cols) of the source image.
        root: folder that relative `roi_path` values are relative to.

    Raises:
        RoiError: unknown or missing ROI, unreadable mask file, or an ROI that misses the image.
    """
    kind = str(_get(lesion, "roi_kind") or "none")
    lesion_id = _get(lesion, "lesion_id") or "?"
    h, w = int(shape[0]), int(shape[1])
    if kind == "mask":
        mask = _mask_from_file(lesion, (h, w), root, lesion_id)
    elif kind == "polygon":
        mask = _polygon(_get(lesion, "polygon"), (h, w), lesion_id)
    elif kind == "circle":
        cx, cy, r = _numbers(lesion, ("cx", "cy", "radius"), lesion_id)
        mask = _circle(cx, cy, r, (h, w))
    elif kind == "box":
        x0, y0, x1, y1 = _numbers(lesion, ("x0", "y0", "x1", "y1"), lesion_id)
        mask = np.zeros((h, w), dtype=bool)
        mask[max(0, math.floor(y0)) : max(0, math.ceil(y1)), max(0, math.floor(x0)) : max(0, math.ceil(x1))] = True
    elif kind == "none":
        raise RoiError(f"lesion {lesion_id}: has no ROI (roi_kind='none')")
    else:
        raise RoiError(f"lesion {lesion_id}: unknown roi_kind {kind!r}; expected mask, polygon, circle, box or none")
    if not mask.any():
        raise RoiError(f"lesion {lesion_id}: the {kind} ROI does not cover any pixel of the {h}x{w} image")
    return mask


def _get(row: Any, key: str) -> Any:
    value = row.get(key) if hasattr(row, "get") else None
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _numbers(row: Any, keys: tuple[str, ...], lesion_id: Any) -> list[float]:
    values = [_get(row, k) for k in keys]
    try:
        numbers = [float(v) for v in values]  # type: ignore[arg-type]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != len(keys) or not all(math.isfinite(v) for v in numbers):
        got = dict(zip(keys, values, strict=True))
        raise RoiError(f"lesion {lesion_id}: ROI needs numeric {', '.join(keys)}; got {got}")
    return numbers


def _circle(cx: float, cy: float, r: float, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    mask = np.zeros(shape, dtype=bool)
    if r <= 0:
        r = 0.5  # a point: the pixel containing the centre
    # only the bounding square is evaluated (images are ~15 Mpx, lesions ~100 px across)
    y0, y1 = max(0, math.floor(cy - r)), min(h, math.ceil(cy + r) + 1)
    x0, x1 = max(0, math.floor(cx - r)), min(w, math.ceil(cx + r) + 1)
    if y0 >= y1 or x0 >= x1:
        return mask
    yy, xx = np.ogrid[y0:y1, x0:x1]
    mask[y0:y1, x0:x1] = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    return mask


def _polygon(value: Any, shape: tuple[int, int], lesion_id: Any) -> np.ndarray:
    try:
        points = json.loads(value) if isinstance(value, str) else value
        vertices = [(float(p[0]), float(p[1])) for p in points]
    except (TypeError, ValueError, IndexError, json.JSONDecodeError) as exc:
        raise RoiError(f"lesion {lesion_id}: polygon must be a JSON list of [x, y] pairs ({exc})") from None
    if not vertices:
        raise RoiError(f"lesion {lesion_id}: polygon has no vertices")
    h, w = shape
    canvas = Image.new("1", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    if len(vertices) == 1:
        draw.point(vertices, fill=1)
    elif len(vertices) == 2:
        draw.line(vertices, fill=1)
    else:
        draw.polygon(vertices, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def _mask_from_file(lesion: Any, shape: tuple[int, int], root: str | Path | None, lesion_id: Any) -> np.ndarray:
    from mammokit.io.dicom import MammogramReadError, read_mask_file

    roi_path = _get(lesion, "roi_path")
    if not roi_path:
        raise RoiError(f"lesion {lesion_id}: roi_kind='mask' but roi_path is empty")
    path = Path(str(roi_path).strip())
    if not path.is_absolute() and root is not None:
        path = Path(root) / path
    try:
        mask = read_mask_file(path)
    except MammogramReadError as exc:
        raise RoiError(f"lesion {lesion_id}: {exc}") from None
    if mask.shape != shape:
        dh, dw = abs(mask.shape[0] - shape[0]) / shape[0], abs(mask.shape[1] - shape[1]) / shape[1]
        if max(dh, dw) > MASK_SIZE_TOLERANCE:
            raise RoiError(
                f"lesion {lesion_id}: mask {path.name} is {mask.shape[0]}x{mask.shape[1]} but its image is "
                f"{shape[0]}x{shape[1]}; is it the mask of another image (or a lesion crop)?"
            )
        log.warning("lesion %s: mask size %s resized to the image size %s", lesion_id, mask.shape, shape)
        resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.Resampling.NEAREST)
        mask = np.asarray(resized) > 127
    return mask
