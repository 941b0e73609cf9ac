"""Breast geometry: segment, crop, orient and resize a mammogram, and map arrays between the two pixel grids.

`prepare_pixels(pixels, meta, spec)` is the single preprocessing path: `mammokit prepare` runs it on
every training image and `mammokit predict` on every new file, so train and predict inputs are made
identically. Steps, for a float32 (H, W) MONOCHROME2 image:

1. **Reduce early.** A block-averaged copy with short side ~`SEGMENT_SIDE` px is used for segmentation
   and orientation (a 3000 x 5000 scan is ~270 x 450), which keeps connected-component labelling cheap.
2. **Segment** (`segment_breast`): threshold at `spec.breast_threshold` of the image's intensity range
   (paper: 5 % of the max), cut thin bridges (film borders) by a morphological opening, keep the
   largest 8-connected component, fill its holes.
3. **Crop** to the component's bounding box (`spec.crop_breast`), in original pixels.
4. **Orient**: chest wall on the left (`spec.canonical_side="left"`): right breasts are mirrored. When
   laterality is unknown, the side holding more breast is taken as the chest wall. Both are recorded.
5. **Resize** the crop to `spec.height x spec.width` with area averaging (integer block means, then a
   Pillow box filter for the fractional remainder): "stretch" (paper) or "pad" (keep aspect, content
   against the chest-wall edge, centred vertically, zero padding). In physical-scale mode
   (`spec.pixel_spacing` set) the crop is instead resampled from its own pixel spacing (`resolve_spacing`)
   to `spec.pixel_spacing` mm per pixel and placed like "pad" on the `spec.height x spec.width` canvas,
   so a 10 mm mass is the same number of pixels in every dataset; a breast larger than the canvas is
   shrunk to fit, aspect kept, never refused (the factor is recorded as `fit_scale`, `fit_message` words it).
6. **Intensity**: "minmax" maps the breast's 0.5-99.5 percentile range to 0..65535 (robust to film
   labels and single hot pixels); "none" maps the reader's nominal `value_range` (BitsStored/VOI-aware)
   to 0..65535. When cropping, pixels outside the breast are set to 0 (burned-in labels and markers are
   not breast and must not become a shortcut for the classifier).

`Geometry` records everything needed to go back: `to_original` puts a prepared-grid array (heatmap,
mask) on the original pixel grid; `to_prepared` brings an original-grid mask (lesion ROI) to the
prepared grid. NumPy/SciPy/Pillow only (no torch): the ONNX prediction path imports this module.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from mammokit.io.meta import MammoMeta
from mammokit.preprocess import SPACING_RANGE_MM, U16_MAX, PreprocessSpec

log = logging.getLogger(__name__)

SEGMENT_SIDE = 256  # short side (px) of the reduced copy used for segmentation and orientation
PERCENTILES = (0.5, 99.5)  # breast intensity range mapped to 0..65535 by intensity="minmax"


class PreprocessError(ValueError):
    """An image cannot be preprocessed (e.g. it is blank); the message says why."""


class SpacingError(PreprocessError):
    """The pixel spacing of an image is unknown or implausible (outside 0.02-1.0 mm)."""


SpacingMM = tuple[float, float]  # (row, column) mm per pixel


def _plausible(spacing: SpacingMM, source: str) -> SpacingMM:
    lo, hi = SPACING_RANGE_MM
    if not all(lo <= float(v) <= hi for v in spacing):
        raise SpacingError(
            f"pixel spacing {spacing[0]:g} x {spacing[1]:g} mm (from {source}) is implausible for a mammogram "
            f"(expected {lo}-{hi} mm); check the file, or prepare it in fixed-size mode (without --pixel-spacing)"
        )
    return float(spacing[0]), float(spacing[1])


def resolve_spacing(
    from_file: SpacingMM | None,
    *,
    dataset_default: float | None = None,
    assumed: float | None = None,
) -> tuple[SpacingMM, str]:
    """The source pixel spacing of an image and where it came from, by the documented rule.

    1. the file's own tags (`read_mammogram`: PixelSpacing, else ImagerPixelSpacing corrected by the
       EstimatedRadiographicMagnificationFactor);
    2. the user's `assumed` value (`--assume-pixel-spacing`), which also takes precedence over
    3. the dataset adapter's documented value (mini-MIAS 0.2 mm; CBIS-DDSM 0.0435 mm, see docs/real-data.md).

    Raises:
        SpacingError: no source gives a spacing, or the one found is outside 0.02-1.0 mm.
    """
    if from_file is not None:
        return _plausible(from_file, "the file's pixel-spacing tag"), "file"
    if assumed is not None:
        return _plausible((assumed, assumed), "--assume-pixel-spacing"), "assumed"
    if dataset_default is not None:
        return _plausible((dataset_default, dataset_default), "the dataset's documented value"), "dataset"
    raise SpacingError(
        "the pixel spacing is unknown (no PixelSpacing/ImagerPixelSpacing tag, no documented value for this "
        "source) and physical-scale preprocessing needs it; pass it in mm with --assume-pixel-spacing MM "
        "(e.g. 0.05 for a 50-micron film scan), or prepare without --pixel-spacing (fixed-size mode)"
    )


@dataclass
class Geometry:
    """How a prepared image relates to its source image (all boxes half-open, y1/x1 exclusive).

    Order of operations: crop (original pixels) -> mirror left-right if `flipped` -> resize to the
    content box -> place the content box at (pad_top, pad_left) in an out_height x out_width canvas.
    """

    orig_height: int
    orig_width: int
    crop_y0: int
    crop_y1: int
    crop_x0: int
    crop_x1: int
    flipped: bool
    out_height: int
    out_width: int
    pad_top: int = 0
    pad_bottom: int = 0
    pad_left: int = 0
    pad_right: int = 0
    orientation_source: str = "none"  # "laterality", "content" (laterality unknown) or "none" (no canonicalisation)
    breast_on_right: bool = False  # where the segmented breast mass sits in the *original* image
    intensity_range: tuple[float, float] = (0.0, 0.0)  # source values mapped to 0 and 65535
    spacing_mm: float | None = None  # source mm per pixel (row direction) when known
    out_spacing_mm: float | None = None  # prepared mm per pixel (row direction) when the source spacing is known
    fit_scale: float = 1.0  # physical-scale mode: > 1 when the breast was shrunk by this factor to fit the canvas
    target_spacing_mm: float | None = None  # physical-scale mode: the model's mm per pixel (spec.pixel_spacing)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def shrunk(self) -> bool:
        """True when the breast was larger than the canvas and was shrunk to fit it (physical-scale mode)."""
        return is_shrunk(self.fit_scale)

    def fit_message(self) -> str | None:
        """One line saying how much a breast larger than the canvas was shrunk (None when it was not).

        Sizes only: no file name or header value, so the caller decides what names the image in a log.
        """
        if not self.shrunk or not self.spacing_mm or not self.out_spacing_mm:
            return None
        breast_h = (self.crop_y1 - self.crop_y0) * self.spacing_mm
        breast_w = (self.crop_x1 - self.crop_x0) * self.spacing_mm
        target = self.target_spacing_mm or self.out_spacing_mm / self.fit_scale  # the model's mm per pixel
        return (
            f"the breast ({breast_h:.0f} x {breast_w:.0f} mm) is larger than the "
            f"{self.out_height * target:.0f} x {self.out_width * target:.0f} mm canvas: shrunk by "
            f"{self.fit_scale:.2f}x to fit ({self.out_spacing_mm:.3g} mm per pixel instead of {target:.3g})"
        )

    @property
    def content_height(self) -> int:
        return self.out_height - self.pad_top - self.pad_bottom

    @property
    def content_width(self) -> int:
        return self.out_width - self.pad_left - self.pad_right

    @property
    def crop_shape(self) -> tuple[int, int]:
        return self.crop_y1 - self.crop_y0, self.crop_x1 - self.crop_x0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["intensity_range"] = [float(v) for v in self.intensity_range]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Geometry:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        if "intensity_range" in kwargs:
            kwargs["intensity_range"] = tuple(kwargs["intensity_range"])
        return cls(**kwargs)

    def to_prepared(self, mask_orig: np.ndarray) -> np.ndarray:
        """Original-grid boolean mask (orig_height, orig_width) -> prepared-grid mask (out_height, out_width).

        An output pixel is set when at least half of its area is covered; a lesion so small that no
        output pixel reaches half coverage keeps its best-covered pixels, so it never disappears.
        """
        if mask_orig.shape != (self.orig_height, self.orig_width):
            raise ValueError(
                f"mask shape {mask_orig.shape} does not match the source image ({self.orig_height}, {self.orig_width})"
            )
        crop = mask_orig[self.crop_y0 : self.crop_y1, self.crop_x0 : self.crop_x1].astype(np.float32)
        if self.flipped:
            crop = crop[:, ::-1]
        cover = resize(crop, (self.content_height, self.content_width), "area")
        inside = cover >= 0.5
        if not inside.any() and cover.max() > 0:
            inside = cover >= 0.5 * cover.max()
        out = np.zeros((self.out_height, self.out_width), dtype=bool)
        out[self.pad_top : self.pad_top + self.content_height, self.pad_left : self.pad_left + self.content_width] = (
            inside
        )
        return out

    def to_original(self, array_out: np.ndarray, *, fill: float = 0.0) -> np.ndarray:
        """Prepared-grid array -> original pixel grid (orig_height, orig_width).

        `array_out` may be (out_height, out_width) or any coarser map covering the whole prepared image
        (e.g. a heatmap); it is resized to the prepared size first. Float arrays are interpolated
        bilinearly, boolean ones by nearest neighbour; pixels outside the crop box get `fill`.

        Returns:
            float32 array, or bool for a boolean input.
        """
        if array_out.ndim != 2:
            raise ValueError(f"expected a 2-D array, got shape {array_out.shape}")
        is_bool = array_out.dtype == bool
        method = "nearest" if is_bool else "bilinear"
        arr = array_out.astype(np.float32)
        if arr.shape != (self.out_height, self.out_width):
            arr = resize(arr, (self.out_height, self.out_width), method)
        rows = slice(self.pad_top, self.pad_top + self.content_height)
        content = arr[rows, self.pad_left : self.pad_left + self.content_width]
        if self.flipped:
            content = content[:, ::-1]
        back = resize(np.ascontiguousarray(content), self.crop_shape, method)
        out = np.full((self.orig_height, self.orig_width), fill, dtype=np.float32)
        out[self.crop_y0 : self.crop_y1, self.crop_x0 : self.crop_x1] = back
        return out > 0.5 if is_bool else out


# --- resizing -------------------------------------------------------------------------------------------------


def _exact_in_float32(arr: np.ndarray) -> bool:
    """True for integer arrays whose every value float32 holds exactly (8/16-bit integers, bool)."""
    return arr.dtype.kind in "uib" and arr.dtype.itemsize <= 2


def block_mean(arr: np.ndarray, ky: int, kx: int) -> np.ndarray:
    """Average non-overlapping ky x kx blocks (exact area downsampling by integer factors); returns float32.

    Trailing rows/columns that do not fill a block are dropped. Implemented as strided sums, which
    is several times faster than `reshape(...).mean()` on large float32 images. An 8/16-bit integer input
    (a decoded DICOM without LUTs) is summed into float32 as it is read, without a float32 copy of the whole
    image first: the same values in the same order, so the result is identical, at half the memory traffic.
    """
    arr = np.asarray(arr)
    if not _exact_in_float32(arr) or (ky == 1 and kx == 1):
        arr = np.asarray(arr, dtype=np.float32)
    if ky > 1:
        n = arr.shape[0] // ky
        acc = arr[0 : n * ky : ky].astype(np.float32)  # a new array: the accumulator
        for i in range(1, ky):
            acc += arr[i : n * ky : ky]
        arr = acc
    if kx > 1:
        n = arr.shape[1] // kx
        acc = arr[:, 0 : n * kx : kx].astype(np.float32)
        for i in range(1, kx):
            acc += arr[:, i : n * kx : kx]
        arr = acc
    if ky * kx > 1:
        arr *= np.float32(1.0 / (ky * kx))
    return arr


_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
}


def resize(arr: np.ndarray, size: tuple[int, int], method: str = "area") -> np.ndarray:
    """Resize a 2-D float array to `size` = (rows, cols); returns float32.

    method: "area" (area averaging when shrinking: integer block means, then Pillow's box filter for
    the fractional rest; bilinear on any axis that grows), "bilinear", "bicubic" (Pillow, antialiased
    when shrinking) or "nearest".
    """
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"cannot resize to {size}")
    arr = np.asarray(arr)
    if arr.shape == (h, w):
        return arr.astype(np.float32)  # always a new array
    if method == "area":
        ky, kx = max(1, arr.shape[0] // h), max(1, arr.shape[1] // w)
        if ky > 1 or kx > 1:
            arr = block_mean(arr, ky, kx)  # integer input: converted while it is summed (block_mean)
    arr = np.asarray(arr, dtype=np.float32)
    if method == "area":
        if arr.shape == (h, w):
            return arr
        shrinking = arr.shape[0] >= h and arr.shape[1] >= w
        method = "box" if shrinking else "bilinear"
    image = Image.fromarray(np.ascontiguousarray(arr))  # float32 -> mode "F"
    return np.asarray(image.resize((w, h), _PIL_FILTERS[method]), dtype=np.float32)


# --- segmentation -----------------------------------------------------------------------------------------------


def segment_breast(pixels: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """Boolean mask of the breast: the largest bright connected component, holes filled.

    Thin bright structures touching the breast (the film borders of digitised DDSM scans, rulers) would
    join it into one component spanning the image, so the thresholded image is first opened with a
    square of side ~1/32 of its short side; the largest 8-connected component of the opened image is
    then grown back within the thresholded pixels by the same radius, which restores the skin line
    without re-attaching the borders.

    Args:
        pixels: (H, W) MONOCHROME2 image (any scale; meant for a reduced copy of ~256 px short side).
        threshold: fraction of the image's intensity range (min..max) above which a pixel is tissue.

    Returns:
        bool (H, W); all False for a constant image.
    """
    lo, hi = float(np.min(pixels)), float(np.max(pixels))
    if hi <= lo:
        return np.zeros(pixels.shape, dtype=bool)
    binary = pixels > lo + threshold * (hi - lo)
    side = 2 * max(1, round(min(pixels.shape) / 64)) + 1
    # min/max filters with a square are separable, ~10x faster than binary_opening with the same square
    opened = ndimage.maximum_filter(ndimage.minimum_filter(binary, size=side, mode="constant", cval=0), size=side)
    if not opened.any():  # everything bright is thinner than the opening: fall back to the raw threshold
        opened = binary
    labels, n = ndimage.label(opened, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return binary
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = labels == int(np.argmax(sizes))
    grown = ndimage.maximum_filter(largest, size=side) & binary
    return ndimage.binary_fill_holes(grown)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


@dataclass(frozen=True)
class ReducedSegmentation:
    """The breast found on an area-reduced copy of an image (`segment_reduced`)."""

    factor: int  # the reduced copy is the image block-averaged by factor x factor pixels
    mask: np.ndarray  # bool (H // factor, W // factor): the breast on the reduced copy
    crop_box: tuple[int, int, int, int]  # (y0, y1, x0, x1), half-open, in original pixels, rounded outwards

    def size_mm(self, spacing: SpacingMM) -> tuple[float, float]:
        """(height, width) of the breast's bounding box in mm, for a (row, column) mm-per-pixel spacing."""
        y0, y1, x0, x1 = self.crop_box
        return (y1 - y0) * spacing[0], (x1 - x0) * spacing[1]


def segment_reduced(pixels: np.ndarray, threshold: float = 0.05) -> ReducedSegmentation:
    """Segment the breast on a block-averaged copy (short side ~`SEGMENT_SIDE` px) and box it in original pixels.

    The steps 1-3 of `prepare_pixels`, also used on their own to measure breast sizes
    (`benchmarks/breast_sizes.py`), so that what is measured is exactly what `prepare` crops.

    Raises:
        PreprocessError: the image is blank (constant intensity).
    """
    H, W = pixels.shape
    k = max(1, min(H, W) // SEGMENT_SIDE)
    small = block_mean(pixels, k, k)
    breast_small = segment_breast(small, threshold)
    if not breast_small.any():
        raise PreprocessError("the image is blank (constant intensity): no breast to segment")
    sh, sw = small.shape
    r0, r1, c0, c1 = _bbox(breast_small)
    # the edge blocks absorb the rows/columns that block_mean dropped
    box = (r0 * k, H if r1 == sh else r1 * k, c0 * k, W if c1 == sw else c1 * k)
    return ReducedSegmentation(factor=k, mask=breast_small, crop_box=box)


def guess_laterality(pixels: np.ndarray, threshold: float = 0.05) -> str:
    """ "L" or "R" from the image alone: the side of the image holding more breast is the chest wall's side.

    In the standard presentation of a mammogram a right breast's chest wall is at the image's right edge and a
    left breast's at the left edge (the nipple points to the middle of a hanging). Right on all 222 real films at
    hand (214 mini-MIAS, whose numbering gives the side; the 8 CBIS-DDSM DICOMs, whose header does). A guess: a
    film stored mirrored fools it, so every output that uses it says so (`laterality_source="guess"`).

    Raises:
        PreprocessError: the image is blank.
    """
    return "R" if mass_on_right(segment_reduced(pixels, threshold).mask) else "L"


def mass_on_right(mask: np.ndarray) -> bool:
    """True when the right half of a breast mask holds more breast than the left half (the chest wall's side)."""
    half = mask.shape[1] // 2
    return int(mask[:, mask.shape[1] - half :].sum()) > int(mask[:, :half].sum())


def is_shrunk(fit_scale: float) -> bool:
    """True for a `fit_scale` that means the breast was shrunk to fit the canvas (1 = not shrunk)."""
    return float(fit_scale) > 1.0 + 1e-6


def shrink_stats(fit_scales: Any) -> tuple[int, float, float | None]:
    """(how many were shrunk, the largest factor (1.0 if none), the median factor of those shrunk (None if none))."""
    values = np.asarray(fit_scales, dtype=np.float64)
    shrunk = values[values > 1.0 + 1e-6]
    if not len(shrunk):
        return 0, 1.0, None
    return len(shrunk), float(shrunk.max()), float(np.median(shrunk))


def _content_box(
    crop_h: int, crop_w: int, spec: PreprocessSpec, spacing: SpacingMM | None
) -> tuple[int, int, int, int, int, int, float]:
    """(content_h, content_w, pad_top, pad_bottom, pad_left, pad_right, fit_scale) for the size policy."""
    fit = 1.0
    if spec.pixel_spacing is not None:
        if spacing is None:  # prepare_pixels resolves it first; kept as a guard for direct callers
            raise SpacingError("physical-scale preprocessing needs the source pixel spacing")
        # output pixels = source pixels x (source mm per pixel / target mm per pixel), per axis
        want_h = crop_h * spacing[0] / spec.pixel_spacing
        want_w = crop_w * spacing[1] / spec.pixel_spacing
        # A breast larger than the canvas is shrunk to fit, aspect kept, by however much it takes: a screening
        # tool must score every film, and a large breast is a common, normal finding. The factor is recorded
        # (Geometry.fit_scale, the manifest, every prediction output) and the caller warns once per image.
        fit = max(1.0, want_h / spec.height, want_w / spec.width)
        ch = min(spec.height, max(1, round(want_h / fit)))
        cw = min(spec.width, max(1, round(want_w / fit)))
    elif spec.aspect == "stretch":
        return spec.height, spec.width, 0, 0, 0, 0, fit
    else:
        scale = min(spec.height / crop_h, spec.width / crop_w)
        ch = min(spec.height, max(1, round(crop_h * scale)))
        cw = min(spec.width, max(1, round(crop_w * scale)))
    top = (spec.height - ch) // 2
    # chest wall on the left: content against the left edge; without canonical orientation: centred
    left = 0 if spec.canonical_side == "left" else (spec.width - cw) // 2
    return ch, cw, top, spec.height - ch - top, left, spec.width - cw - left, fit


def prepare_pixels(
    pixels: np.ndarray,
    meta: MammoMeta | None,
    spec: PreprocessSpec,
    *,
    spacing: SpacingMM | None = None,
) -> tuple[np.ndarray, Geometry]:
    """Raw MONOCHROME2 pixels -> canonical uint16 image (spec.height, spec.width) and its `Geometry`.

    Args:
        pixels: float (H, W) from `read_mammogram`, or its 8/16-bit integer pixels (`read_mammogram(...,
            keep_integers=True)`): the same result without a float32 copy of the whole image.
        meta: its MammoMeta (laterality for the orientation, value_range for intensity="none"); None
            when unknown (orientation then comes from the image content).
        spec: the PreprocessSpec stored with the dataset / model.
        spacing: the source (row, column) mm per pixel as resolved by `resolve_spacing`; None = the file's
            own `meta.spacing_mm`. Required in physical-scale mode; recorded in the Geometry when known.

    Raises:
        PreprocessError: the image is blank (constant) or not 2-D.
        SpacingError: physical-scale mode and the spacing is unknown or implausible.
    """
    if pixels.ndim != 2 or min(pixels.shape) < 2:
        raise PreprocessError(f"expected a 2-D image of at least 2x2 pixels, got shape {pixels.shape}")
    if not _exact_in_float32(pixels):  # 8/16-bit integers stay as they are: every step below reads them exactly
        pixels = np.asarray(pixels, dtype=np.float32)
    H, W = pixels.shape
    if spacing is None and meta is not None and meta.spacing_mm:
        spacing = (float(meta.spacing_mm[0]), float(meta.spacing_mm[1]))
    if spec.pixel_spacing is not None:
        spacing = resolve_spacing(spacing)[0]  # SpacingError (with the how-to) when unknown or implausible
    elif spacing is not None and not all(SPACING_RANGE_MM[0] <= v <= SPACING_RANGE_MM[1] for v in spacing):
        spacing = None  # fixed-size mode does not use it; an implausible tag is not recorded as if it were true

    # 1-3. segmentation on an area-reduced copy, crop box in original pixels
    seg = segment_reduced(pixels, spec.breast_threshold)
    k, breast_small = seg.factor, seg.mask
    y0, y1, x0, x1 = seg.crop_box if spec.crop_breast else (0, H, 0, W)

    # 4. orientation
    breast_on_right = mass_on_right(breast_small)
    laterality = (meta.laterality if meta is not None else None) or None
    extra: dict[str, Any] = {}
    if spec.canonical_side == "none":
        flipped, source = False, "none"
    elif laterality in ("L", "R"):
        flipped, source = laterality == "R", "laterality"
        if breast_on_right != flipped:  # content disagrees with the laterality tag: worth a look in QA
            extra["orientation_disagrees"] = True
    else:
        flipped, source = breast_on_right, "content"

    # 5. resize image and breast mask to the content box
    ch, cw, top, bottom, left, right, fit = _content_box(y1 - y0, x1 - x0, spec, spacing)
    content = resize(pixels[y0:y1, x0:x1], (ch, cw), spec.interpolation)
    # the reduced mask covering the crop, dilated by one reduced pixel so the skin line is never cut
    ms = ndimage.binary_dilation(breast_small)[y0 // k : -(-y1 // k), x0 // k : -(-x1 // k)]
    mask = resize(ms.astype(np.float32), (ch, cw), "bilinear") >= 0.5
    if flipped:
        content = content[:, ::-1]
        mask = mask[:, ::-1]

    # 6. intensity -> 0..65535
    if spec.intensity == "minmax":
        values = content[mask] if mask.any() else content.ravel()
        lo, hi = (float(v) for v in np.percentile(values, PERCENTILES))
    else:
        value_range = meta.extra.get("value_range") if meta is not None else None
        lo, hi = (float(v) for v in value_range) if value_range else (float(pixels.min()), float(pixels.max()))
    if hi <= lo:
        hi = lo + 1.0
    scaled = (content - np.float32(lo)) * np.float32(U16_MAX / (hi - lo))
    np.clip(scaled, 0.0, U16_MAX, out=scaled)
    if spec.crop_breast:
        scaled[~mask] = 0.0
    image = np.zeros((spec.height, spec.width), dtype=np.uint16)
    image[top : top + ch, left : left + cw] = np.rint(scaled).astype(np.uint16)

    geometry = Geometry(
        orig_height=H,
        orig_width=W,
        crop_y0=y0,
        crop_y1=y1,
        crop_x0=x0,
        crop_x1=x1,
        flipped=bool(flipped),
        out_height=spec.height,
        out_width=spec.width,
        pad_top=top,
        pad_bottom=bottom,
        pad_left=left,
        pad_right=right,
        orientation_source=source,
        breast_on_right=bool(breast_on_right),
        intensity_range=(lo, hi),
        spacing_mm=spacing[0] if spacing else None,
        out_spacing_mm=spacing[0] * (y1 - y0) / ch if spacing else None,
        fit_scale=float(fit),
        target_spacing_mm=spec.pixel_spacing,
        extra=extra,
    )
    return image, geometry
