"""Non-DICOM mammograms: PNG (8/16-bit), PGM (8/16-bit) and JPEG, read with Pillow.

These formats carry no acquisition metadata, so the returned `MammoMeta` holds only what the file
itself says (format, size, bit depth) plus laterality/view when the file path follows the CBIS-DDSM
naming pattern (`..._LEFT_CC...`). Pixels are returned as float32 (H, W) in the file's own value
range, with `meta.extra["value_range"]` set to the nominal range of the bit depth ((0, 255) or
(0, 65535)).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from mammokit.io.dicom import (
    MAX_PIXELS_ENV,
    MammogramReadError,
    check_declared_size,
    laterality_view_from_text,
    max_image_pixels,
)
from mammokit.io.meta import MammoMeta

# Pillow modes of single-channel images and the bit depth they hold.
_GREY_MODES: dict[str, int] = {"L": 8, "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 16, "1": 1}
_FORMAT_NAMES: dict[str, str] = {"PNG": "png", "PPM": "pgm", "JPEG": "jpeg", "MPO": "jpeg"}


class RasterReadError(MammogramReadError):
    """A PNG/PGM/JPEG file could not be read as a grayscale mammogram; the message says why."""


def read_raster(path: str | Path | BinaryIO, *, max_pixels: int | None = None) -> tuple[np.ndarray, MammoMeta]:
    """Read a grayscale PNG, PGM or JPEG mammogram.

    Args:
        path: the image file, or a binary file object (e.g. `io.dicom.read_mammogram_bytes`'s in-memory file).
        max_pixels: refuse images whose declared width x height exceeds this, before decoding (None: the
            `MAMMOKIT_MAX_PIXELS` environment variable or 100 Mpixels). Pillow's own decompression-bomb
            check is replaced by this one, so the error is always a `RasterReadError`.

    Returns:
        `(pixels, meta)`: float32 array (H, W), brighter = denser (these formats have no
        MONOCHROME1), and its `MammoMeta`.

    Raises:
        RasterReadError: the file is not a readable image, is empty, too large, or is a colour image.
    """
    path = path if hasattr(path, "read") else Path(path)  # type: ignore[arg-type]
    limit = max_image_pixels() if max_pixels is None else int(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked below
            im = Image.open(path)
        with im:
            try:
                check_declared_size(path, im.height, im.width, limit)
            except MammogramReadError as exc:
                raise RasterReadError(str(exc)) from None
            fmt = _FORMAT_NAMES.get(im.format or "", (im.format or "unknown").lower())
            mode = im.mode
            if mode in ("RGB", "RGBA", "LA", "P"):
                arr = np.asarray(im.convert("RGB"))
                if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
                    raise RasterReadError(
                        f"{path}: colour image (mode {mode}); mammograms must be grayscale - convert it first"
                    )
                arr = arr[..., 0]
                bits = 8
            elif mode in _GREY_MODES:
                arr = np.asarray(im)
                bits = _GREY_MODES[mode]
            else:
                raise RasterReadError(f"{path}: unsupported image mode {mode!r}; expected 8- or 16-bit grayscale")
    except Image.DecompressionBombError as exc:  # over twice Pillow's own limit: refused in Image.open
        found = re.search(r"\((\d+) pixels\)", str(exc))
        declared = f"declares {int(found.group(1)) / 1e6:.1f} Mpixels, " if found else ""
        raise RasterReadError(
            f"{path}: {declared}over the limit of {limit / 1e6:.1f} Mpixels (a damaged header or a decompression "
            f"bomb); if the image is genuine, raise the limit with {MAX_PIXELS_ENV}"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        # Pillow raises OSError for truncated data and SyntaxError for malformed headers (e.g. PGM).
        raise RasterReadError(f"{path}: not a readable PNG/PGM/JPEG image ({exc})") from None
    if arr.ndim != 2 or arr.size == 0:
        raise RasterReadError(f"{path}: image has no pixels (shape {arr.shape})")
    if mode == "I" and arr.size and int(arr.max()) > 65535:
        bits = 32
    if mode == "1":
        arr = arr.astype(np.uint8) * 255
        bits = 8
    pixels = arr.astype(np.float32)
    hi = float(2**bits - 1)
    laterality, view, source = laterality_view_from_text(str(path))
    extra: dict = {"value_range": (0.0, hi)}
    if source:
        extra["laterality_source"] = extra["view_source"] = source
    meta = MammoMeta(
        source_format=fmt,
        height=int(pixels.shape[0]),
        width=int(pixels.shape[1]),
        bits_stored=bits,
        photometric="MONOCHROME2",
        laterality=laterality,
        view=view,
        voi_applied="none",
        extra=extra,
    )
    return pixels, meta
