"""`read_mammogram`: one mammogram file (DICOM, PNG, PGM, JPEG) -> float32 MONOCHROME2 pixels + `MammoMeta`.

DICOM files are handled per the standard (PS3.3 C.11), on the CPU, with pydicom's own transforms:

1. decode the stored values (pydicom and its codec plugins: native RLE, pylibjpeg-libjpeg for JPEG
   baseline/extended/lossless, pyjpegls for JPEG-LS, pylibjpeg-openjpeg for JPEG 2000); pydicom masks
   the bits above BitsStored;
2. remember the Pixel Padding Value range (stored values that mean "no image here");
3. Modality LUT (`apply_modality_lut`: RescaleSlope/Intercept or a Modality LUT Sequence);
4. VOI LUT (`apply_voi` for a VOI LUT Sequence, `apply_windowing` for Window Center/Width with the
   LINEAR, LINEAR_EXACT or SIGMOID function), chosen by `voi` and `window_index`;
5. MONOCHROME1 is inverted within the output range so that brighter = denser (MONOCHROME2);
6. padding pixels are set to the bottom of the output range (background).

The values are *not* normalised: `meta.extra["value_range"]` holds the nominal output range that
follows from BitsStored, the Modality LUT and the VOI transform (e.g. (0, 4095) for an unwindowed
12-bit image), which `prepare_pixels` uses when it does not stretch intensities per image.

Files that are not images, not mammograms (Modality other than MG), multi-frame (tomosynthesis) or
"FOR PROCESSING" (raw detector data; unless `allow_for_processing=True`) are refused with a
`MammogramReadError` that says why. Patient identifiers are never copied into the metadata or logs:
PatientID is only *searched* for the CBIS-DDSM `_LEFT_CC` pattern.

Hardening (docs/security.md): every failure on bad data - a damaged header, an inconsistent LUT, a decoder
error or even a Rust decoder's `PanicException` - is a `MammogramReadError` naming the file and the cause;
the declared image size is checked against `max_pixels` (default 100 Mpixels, environment variable
`MAMMOKIT_MAX_PIXELS`) before anything is decoded; non-finite pixels after the LUTs are refused. A decoder that
*aborts* the process cannot be caught here: batch commands decode in worker processes (`mammokit.utils.pool`).

No torch here: the ONNX prediction path imports this module.
"""

from __future__ import annotations

import io
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mammokit.io.meta import MammoMeta

log = logging.getLogger(__name__)

VoiMode = Literal["auto", "none", "window", "voi_lut"]
VOI_MODES: tuple[str, ...] = ("auto", "none", "window", "voi_lut")

# SOP classes of raw detector data ("FOR PROCESSING"), refused unless explicitly allowed.
FOR_PROCESSING_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.1.2.1": "Digital Mammography X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1.3.1": "Digital Intra-Oral X-Ray Image Storage - For Processing",
}

# CBIS-DDSM names folders and PatientIDs like `Mass-Training_P_00001_LEFT_CC` (also `..._LEFT_CC_1` for ROIs).
_SIDE_VIEW_PATTERN = re.compile(r"_(LEFT|RIGHT)_(CC|MLO)(?=$|[^A-Za-z])", re.IGNORECASE)

# View codes that can appear in ViewPosition (and, in CBIS-DDSM, misused in PatientOrientation).
KNOWN_VIEWS: frozenset[str] = frozenset({"CC", "MLO", "ML", "LM", "LMO", "XCCL", "XCCM", "FB", "SIO", "AT", "CV"})

# ViewCodeSequence (CID 4014): SNOMED code values (old SRT and new SCT) and meanings of the two screening views.
_VIEW_CODES: dict[str, str] = {"R-10242": "CC", "399162004": "CC", "R-10226": "MLO", "399368009": "MLO"}
_VIEW_MEANINGS: dict[str, str] = {
    "cranio-caudal": "CC",
    "medio-lateral oblique": "MLO",
    "medio-lateral": "ML",
    "latero-medial": "LM",
    "exaggerated cranio-caudal": "XCCL",
}

_TRANSFER_SYNTAX_PLUGINS = (
    "install the codec plugins: pylibjpeg + pylibjpeg-libjpeg (JPEG baseline/extended/lossless), "
    "pyjpegls (JPEG-LS), pylibjpeg-openjpeg (JPEG 2000)"
)


DEFAULT_MAX_PIXELS = 100_000_000  # 100 Mpixels: 10x the largest clinical mammogram (~4.7k x 5.9k)
MAX_PIXELS_ENV = "MAMMOKIT_MAX_PIXELS"
DICOM_MAGIC_OFFSET = 128  # DICOM Part 10: 128-byte preamble, then b"DICM"


class MammogramReadError(ValueError):
    """A file could not be read as a mammogram; the message names the file and says why."""


def max_image_pixels() -> int:
    """The image-size limit: `MAMMOKIT_MAX_PIXELS` when set (an integer > 0), else `DEFAULT_MAX_PIXELS`."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(text))
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"{MAX_PIXELS_ENV}={text!r}: expected a positive number of pixels, e.g. 100000000")
    return value


def check_declared_size(path: Path, height: int, width: int, max_pixels: int, frames: int = 1) -> None:
    """Refuse an image whose *declared* size is over the limit, before any memory is spent decoding it."""
    n = int(height) * int(width) * max(1, int(frames))
    if n > max_pixels:
        raise MammogramReadError(
            f"{path}: declares {height} x {width} pixels"
            + (f" x {frames} frames" if frames > 1 else "")
            + f" = {n / 1e6:.1f} Mpixels, over the limit of {max_pixels / 1e6:.1f} Mpixels (a damaged header or "
            f"a decompression bomb); if the image is genuine, raise the limit with {MAX_PIXELS_ENV}"
        )


def has_dicom_magic(path: str | Path) -> bool:
    """True when `path` is a DICOM Part 10 file ("DICM" at byte 128); the extension is not trusted either way."""
    try:
        with open(path, "rb") as fh:
            fh.seek(DICOM_MAGIC_OFFSET)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


@contextmanager
def _warnings_to_log(path: Path) -> Iterator[None]:
    """pydicom's warnings about damaged headers go to the debug log, not the user's terminal (our error says it)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught[:20]:
        log.debug("%s: %s: %s", path, w.category.__name__, w.message)


@contextmanager
def _stage(path: Path, what: str) -> Iterator[None]:
    """Turn any failure of one reading step into a MammogramReadError that names the file and the step.

    BaseException on purpose: a Rust decoder's pyo3 `PanicException` is one. Only interpreter-level exits pass.
    """
    try:
        yield
    except (MammogramReadError, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except MemoryError:
        raise MammogramReadError(f"{path}: out of memory while {what}; the file is too large or damaged") from None
    except BaseException as exc:
        log.debug("%s: %s failed", path, what, exc_info=True)
        raise MammogramReadError(
            f"{path}: {what} failed, the file is damaged or inconsistent ({_describe(exc)})"
        ) from None


def laterality_view_from_text(text: str) -> tuple[str | None, str | None, str | None]:
    """Find a CBIS-DDSM style `_LEFT_CC` / `_RIGHT_MLO` pattern in `text` (a path or an id).

    Returns:
        `(laterality "L"/"R" or None, view "CC"/"MLO" or None, "pattern" or None)`.
    """
    match = _SIDE_VIEW_PATTERN.search(text)
    if not match:
        return None, None, None
    return match.group(1).upper()[0], match.group(2).upper(), "pattern"


def read_mammogram(
    path: str | Path,
    *,
    voi: VoiMode = "auto",
    window_index: int = 0,
    allow_for_processing: bool = False,
    max_pixels: int | None = None,
    keep_integers: bool = False,
) -> tuple[np.ndarray, MammoMeta]:
    """Read one mammogram file.

    Args:
        path: a DICOM (recognised by the `DICM` marker), PNG, PGM or JPEG file.
        voi: DICOM VOI handling. "auto" (default) applies a VOI LUT Sequence if the file has one, else
            its Window Center/Width, else nothing - what a viewer shows by default; "none" skips VOI;
            "window" requires Window Center/Width; "voi_lut" requires a VOI LUT Sequence.
            Ignored for PNG/PGM/JPEG.
        window_index: which of several windows / VOI LUTs to use (0 = the first, the default view).
        allow_for_processing: accept "FOR PROCESSING" (raw detector) DICOMs instead of refusing them.
        max_pixels: refuse images whose declared rows x columns exceed this, before decoding; None = the
            `MAMMOKIT_MAX_PIXELS` environment variable or 100 Mpixels.
        keep_integers: return a DICOM's decoded 8/16-bit integer array itself when nothing changes its values
            (no Modality/VOI LUT applied, MONOCHROME2, no padding pixels), instead of a float32 copy of it:
            what `prepare` does, as `prepare_pixels` reads integers exactly without the 4-byte-per-pixel copy.

    Returns:
        `(pixels, meta)`: float32 array (H, W), MONOCHROME2 (brighter = denser), after the Modality and
        VOI LUTs, not normalised (uint8/uint16 with `keep_integers` when no LUT applies); and its `MammoMeta`.

    Raises:
        MammogramReadError: the file is missing, unreadable, too large, damaged or not an acceptable
            mammogram; the message names the file and says which check failed. Nothing else is raised for
            bad data (the fuzz suite, tests/test_fuzz_reader.py, holds the reader to that).
    """
    path = Path(path)
    if voi not in VOI_MODES:
        raise ValueError(f"voi must be one of {VOI_MODES}, got {voi!r}")
    limit = max_image_pixels() if max_pixels is None else int(max_pixels)
    if path.is_dir():
        raise MammogramReadError(f"{path}: is a folder, not an image file")
    if not path.is_file():
        raise MammogramReadError(f"{path}: file not found")
    with _stage(path, "opening the file"):
        kind = sniff_format(path)
    if kind == "dicom":
        with _warnings_to_log(path):
            return _read_dicom(
                path,
                voi=voi,
                window_index=window_index,
                allow_for_processing=allow_for_processing,
                max_pixels=limit,
                keep_integers=keep_integers,
            )
    if kind in ("png", "pgm", "jpeg"):
        from mammokit.io.raster import read_raster

        with _stage(path, f"reading the {kind.upper()} image"):
            return read_raster(path, max_pixels=limit)
    raise MammogramReadError(
        f"{path}: not a DICOM, PNG, PGM or JPEG file (no 'DICM' marker at byte 128 and no image signature); "
        "check that the path points at an image"
    )


def sniff_format(path: Path) -> str | None:
    """'dicom', 'png', 'pgm', 'jpeg' from the file's first bytes, or None."""
    with open(path, "rb") as fh:
        head = fh.read(DICOM_MAGIC_OFFSET + 4)
    return sniff_bytes(head)


def sniff_bytes(head: bytes) -> str | None:
    """'dicom', 'png', 'pgm', 'jpeg' from a file's first 132 bytes (the content decides, never a file name)."""
    if head[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:2] in (b"P2", b"P5"):
        return "pgm"
    if head.startswith(b"\xff\xd8"):
        return "jpeg"
    return None


def _dcmread(path: Path) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise MammogramReadError(f"{path}: not a valid DICOM file ({exc})") from None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        log.debug("%s: dcmread failed", path, exc_info=True)
        raise MammogramReadError(
            f"{path}: unreadable DICOM, probably truncated or corrupt ({_describe(exc)})"
        ) from None


def _int_attr(ds: Any, path: Path, keyword: str, default: int) -> int:
    value = ds.get(keyword, default)
    try:
        return int(value if value not in (None, "") else default)
    except (TypeError, ValueError, OverflowError):
        raise MammogramReadError(
            f"{path}: {keyword} is not an integer ({str(value)[:40]!r}); the header is damaged"
        ) from None


def _check_is_mammogram(ds: Any, path: Path, allow_for_processing: bool, max_pixels: int) -> None:
    """Refuse what is not a single-frame, for-presentation MG image of an acceptable size, saying why."""
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise MammogramReadError(
                f"{path}: holds float pixel data (Float/Double Float Pixel Data); mammograms store integer "
                "Pixel Data, this is not a supported image"
            )
        sop = ds.get("SOPClassUID")
        sop_name = getattr(sop, "name", None) or "unknown SOP class"
        raise MammogramReadError(
            f"{path}: has no pixel data (not an image, or a file truncated before its pixels; SOP class: {sop_name})"
        )
    modality = str(ds.get("Modality", "") or "").upper()
    if not modality:
        raise MammogramReadError(f"{path}: has no Modality attribute; only mammograms (Modality 'MG') are accepted")
    if modality != "MG":
        raise MammogramReadError(
            f"{path}: Modality is {modality!r}, not 'MG' (mammography); only mammograms are accepted"
        )
    rows, cols = _int_attr(ds, path, "Rows", 0), _int_attr(ds, path, "Columns", 0)
    if rows <= 0 or cols <= 0:
        raise MammogramReadError(f"{path}: zero-size image (Rows={rows}, Columns={cols})")
    frames = _int_attr(ds, path, "NumberOfFrames", 1)
    check_declared_size(path, rows, cols, max_pixels, frames)
    if frames > 1:
        raise MammogramReadError(
            f"{path}: multi-frame image ({frames} frames, e.g. tomosynthesis); only 2-D mammograms are supported"
        )
    samples = _int_attr(ds, path, "SamplesPerPixel", 1)
    photometric = str(ds.get("PhotometricInterpretation", "") or "")
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise MammogramReadError(
            f"{path}: not a grayscale image (PhotometricInterpretation={photometric!r}, SamplesPerPixel={samples})"
        )
    intent = str(ds.get("PresentationIntentType", "") or "").upper()
    sop = str(ds.get("SOPClassUID", ""))
    if (intent == "FOR PROCESSING" or sop in FOR_PROCESSING_SOP_CLASSES) and not allow_for_processing:
        raise MammogramReadError(
            f"{path}: a 'FOR PROCESSING' image (raw detector data, not meant for display); use the "
            "'FOR PRESENTATION' image of the same view, or pass allow_for_processing=True to read it anyway"
        )


def _decoder_problem(ts: Any) -> str | None:
    """Why pixel data in transfer syntax `ts` cannot be decoded here at all (None when a decoder is available)."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(ts)
    except (NotImplementedError, ValueError):
        return f"transfer syntax {str(ts)!r} is unknown or not supported for pixel data"
    if not decoder.is_available:
        return f"no decoder installed for transfer syntax {getattr(ts, 'name', str(ts))!r}; {_TRANSFER_SYNTAX_PLUGINS}"
    return None


@contextmanager
def _stderr_to_log(path: Path) -> Iterator[None]:
    """Send what native decoders print on stderr (a Rust panic message and backtrace) to the debug log.

    File-descriptor level: the text is written by native code, not through `sys.stderr`. Batch commands decode
    in worker processes, so redirecting this process's stderr for the duration of one decode is harmless. Only
    in the main thread: fd 2 is process-wide, and threads decoding at once (`mammokit serve`) would race on it.
    The capture is an in-memory file (memfd) where the OS has one, so nothing is written to disk.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    memfd = getattr(os, "memfd_create", None)
    with os.fdopen(memfd("mammokit-stderr"), "w+b") if memfd else tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read(4000).decode("utf-8", "replace").strip()
            if text:
                log.debug("%s: the decoder wrote on stderr: %s", path, text)


def _rle_decoder() -> Any:
    """pylibjpeg-rle's frame decoder (`rle.utils.decode_pixel_data`), or None when it is not installed."""
    try:
        from rle.utils import decode_pixel_data
    except ImportError:
        return None
    return decode_pixel_data


def _decode_rle_direct(ds: Any) -> np.ndarray | None:
    """Decode a single-frame, unsigned 8/16-bit grayscale RLE Lossless image with pylibjpeg-rle; else None.

    pydicom 3 already picks pylibjpeg-rle (its "pylibjpeg" plugin) before its NumPy RLE decoder, but its
    generic path copies the decoded frame into a second, preallocated array: ~40 % of the decode time on a
    4600 x 2900 CBIS-DDSM frame (docs/preprocessing.md, "Speed"). Here the Rust decoder writes little-endian
    samples into one bytearray that becomes the array without a copy. The result equals `ds.pixel_array`
    (bits above BitsStored are cleared, as pydicom does; tests/test_io_dicom.py compares both). Anything
    else (other syntaxes, several frames, signed or 1/32-bit samples, pylibjpeg-rle missing) returns None
    and goes through `ds.pixel_array`.
    """
    from pydicom.uid import RLELossless

    ts = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    bits_allocated = int(ds.get("BitsAllocated", 0) or 0)
    if (
        ts != RLELossless
        or bits_allocated not in (8, 16)
        or int(ds.get("PixelRepresentation", 0) or 0) != 0
        or int(ds.get("SamplesPerPixel", 1) or 1) != 1
        or int(ds.get("NumberOfFrames", 1) or 1) != 1
    ):
        return None
    decode = _rle_decoder()
    if decode is None:
        return None
    from pydicom.encaps import generate_frames

    rows, cols = int(ds.Rows), int(ds.Columns)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    # version 2: a bytearray in the requested byte order (the Rust decoder checks the segment count and lengths)
    buf = decode(frame, version=2, rows=rows, columns=cols, bits_allocated=bits_allocated, byteorder="<")
    arr = np.frombuffer(buf, dtype=np.uint8 if bits_allocated == 8 else "<u2")
    if arr.size != rows * cols:
        raise ValueError(f"the RLE frame decodes to {arr.size} samples, expected {rows} x {cols}")
    arr = arr.reshape(rows, cols)  # writable: a view of the decoder's bytearray
    bits_stored = int(ds.get("BitsStored", bits_allocated) or bits_allocated)
    if 0 < bits_stored < bits_allocated:
        np.bitwise_and(arr, arr.dtype.type((1 << bits_stored) - 1), out=arr)  # what pydicom's unused-bit fix does
    return arr


def _decode(ds: Any, path: Path) -> np.ndarray:
    ts = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    ts_name = getattr(ts, "name", str(ts))
    if ts is None:
        raise MammogramReadError(f"{path}: the file meta information has no Transfer Syntax UID")
    problem = _decoder_problem(ts)
    if problem:
        raise MammogramReadError(f"{path}: {problem}")
    try:
        with _stderr_to_log(path):
            arr = _decode_rle_direct(ds)
            if arr is None:
                arr = ds.pixel_array
    except (KeyboardInterrupt, SystemExit):
        raise
    except MemoryError:
        raise MammogramReadError(f"{path}: out of memory decoding the {ts_name} pixel data") from None
    except BaseException as exc:
        log.debug("%s: pixel_array failed", path, exc_info=True)
        raise MammogramReadError(
            f"{path}: the {ts_name} pixel data could not be decoded: the file is truncated or corrupt "
            f"(decoder error {_describe(exc)})"
        ) from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.size == 0:
        raise MammogramReadError(
            f"{path}: decoded pixel data has shape {getattr(arr, 'shape', None)}, expected a 2-D image"
        )
    return arr


def _stored_range(ds: Any) -> tuple[float, float]:
    """Nominal range of the stored values from BitsStored and PixelRepresentation."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    return 0.0, float(2**bits - 1)


def _modality_range(ds: Any) -> tuple[float, float]:
    """Nominal range after the Modality LUT (mirrors the output-range rule of pydicom's apply_windowing)."""
    seq = ds.get("ModalityLUTSequence")
    if seq:
        return 0.0, float(2 ** int(seq[0].LUTDescriptor[2]) - 1)
    lo, hi = _stored_range(ds)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        a, b = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
        return min(a, b), max(a, b)
    return lo, hi


def _padding_mask(ds: Any, stored: np.ndarray) -> np.ndarray | None:
    """Pixels whose *stored* value is the Pixel Padding Value (or within its range limit)."""
    pad = ds.get("PixelPaddingValue")
    if pad is None:
        return None
    pad = int.from_bytes(pad, "little") if isinstance(pad, bytes) else int(pad)
    limit = ds.get("PixelPaddingRangeLimit")
    if limit is None:
        return stored == pad
    limit = int.from_bytes(limit, "little") if isinstance(limit, bytes) else int(limit)
    lo, hi = min(pad, limit), max(pad, limit)
    return (stored >= lo) & (stored <= hi)


def _window_count(ds: Any) -> int:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return 0
    return int(ds["WindowCenter"].VM)


def _apply_voi(
    arr: np.ndarray, ds: Any, path: Path, voi: str, index: int, value_range: tuple[float, float]
) -> tuple[np.ndarray, str, tuple[float, float]]:
    """Apply the chosen VOI transform; returns (pixels, description, new nominal range)."""
    from pydicom.pixels.processing import apply_voi, apply_windowing

    lut_seq = ds.get("VOILUTSequence")
    n_luts = len(lut_seq) if lut_seq else 0
    n_windows = _window_count(ds)
    if voi == "auto":
        voi = "voi_lut" if n_luts else ("window" if n_windows else "none")
    if voi == "none":
        return arr, "none", value_range
    if voi == "voi_lut":
        if not n_luts:
            raise MammogramReadError(f"{path}: voi='voi_lut' but the file has no VOI LUT Sequence; use voi='auto'")
        if not 0 <= index < n_luts:
            raise MammogramReadError(f"{path}: window_index={index} but the file has {n_luts} VOI LUT(s)")
        item = lut_seq[index]
        out_bits = int(item.LUTDescriptor[2])
        explanation = str(item.get("LUTExplanation", "") or "")
        desc = f"voi_lut[{index}]" + (f"({explanation})" if explanation else "")
        return apply_voi(arr, ds, index), desc, (0.0, float(2**out_bits - 1))
    # voi == "window"
    if not n_windows:
        raise MammogramReadError(
            f"{path}: voi='window' but the file has no Window Center/Width; use voi='auto' or voi='none'"
        )
    if not 0 <= index < n_windows:
        raise MammogramReadError(f"{path}: window_index={index} but the file has {n_windows} window(s)")
    func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    centre = ds["WindowCenter"].value
    width = ds["WindowWidth"].value
    centre = float(centre[index] if ds["WindowCenter"].VM > 1 else centre)
    width = float(width[index] if ds["WindowWidth"].VM > 1 else width)
    try:
        out = apply_windowing(arr, ds, index)
    except ValueError as exc:
        raise MammogramReadError(f"{path}: invalid VOI window ({exc})") from None
    return out, f"window(c={centre:g},w={width:g},{func})", value_range


def laterality_from_header(ds: Any, path: str | Path | None = None) -> tuple[str | None, str | None]:
    """The laterality ("L"/"R") of a DICOM dataset and where it was found, or (None, None).

    Order: ImageLaterality, Laterality (L, R, LEFT or RIGHT, any case), then the `_LEFT_CC` pattern in
    PatientID or `path`. The one laterality parser for DICOM headers (the reader and the CMMD adapter use it).
    """
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value in ("L", "R", "LEFT", "RIGHT"):
            return value[0], keyword
    texts = [("PatientID pattern", str(ds.get("PatientID", "") or ""))]
    if path is not None:
        texts.append(("path pattern", str(path)))
    for source, text in texts:
        lat, _, found = laterality_view_from_text(text)
        if found:
            return lat, source
    return None, None


def view_from_header(ds: Any, path: str | Path | None = None) -> tuple[str | None, str | None]:
    """The view ("CC", "MLO", ...) of a DICOM dataset and where it was found, or (None, None).

    Order: ViewPosition, ViewCodeSequence (SNOMED code or meaning), PatientOrientation misused as a view code
    (CBIS-DDSM), then the `_LEFT_CC` pattern in PatientID or `path`. The one view parser of the project
    (the reader and the dataset adapters use it).
    """
    value = str(ds.get("ViewPosition", "") or "").strip().upper()
    if value:
        return value, "ViewPosition"
    for item in ds.get("ViewCodeSequence", None) or []:
        code = str(item.get("CodeValue", "") or "").strip()
        meaning = str(item.get("CodeMeaning", "") or "").strip().lower()
        view = _VIEW_CODES.get(code) or _VIEW_MEANINGS.get(meaning)
        if view:
            return view, "ViewCodeSequence"
    orientation = ds.get("PatientOrientation")
    if orientation:
        parts = [str(p).strip().upper() for p in (orientation if not isinstance(orientation, str) else [orientation])]
        for part in parts:
            if part in KNOWN_VIEWS:  # CBIS-DDSM stores the view here instead of row/column directions
                return part, "PatientOrientation"
    texts = [("PatientID pattern", str(ds.get("PatientID", "") or ""))]
    if path is not None:
        texts.append(("path pattern", str(path)))
    for source, text in texts:
        _, view, found = laterality_view_from_text(text)
        if found:
            return view, source
    return None, None


def _spacing(ds: Any) -> tuple[tuple[float, float] | None, str | None]:
    """(row, column) mm per pixel in the breast's plane, and the tag it came from.

    PixelSpacing, when present, is already calibrated to the patient plane. ImagerPixelSpacing is the
    detector pitch; a magnified breast (the detector sits below it) is smaller than it looks there, so it is
    divided by EstimatedRadiographicMagnificationFactor (0018,1114) when that is given (typically ~1.05-1.1;
    1.5-1.8 for magnification views).
    """
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is None or len(value) != 2:
            continue
        try:
            row, col = float(value[0]), float(value[1])
        except (TypeError, ValueError):
            continue
        if not (row > 0 and col > 0):
            continue
        if keyword == "ImagerPixelSpacing":
            try:
                factor = float(ds.get("EstimatedRadiographicMagnificationFactor") or 0)
            except (TypeError, ValueError):
                factor = 0.0
            if factor >= 1.0:  # < 1 would mean the breast is smaller than the detector: not physical
                return (row / factor, col / factor), "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
        return (row, col), keyword
    return None, None


def _read_dicom(
    path: Path,
    *,
    voi: str,
    window_index: int,
    allow_for_processing: bool,
    max_pixels: int,
    keep_integers: bool = False,
) -> tuple[np.ndarray, MammoMeta]:
    from pydicom.pixels.processing import apply_modality_lut

    ds = _dcmread(path)
    with _stage(path, "checking the DICOM header"):
        _check_is_mammogram(ds, path, allow_for_processing, max_pixels)
    with _stage(path, "decoding the pixel data"):
        stored = _decode(ds, path)
    with _stage(path, "applying the Pixel Padding Value"):
        padding = _padding_mask(ds, stored)
    with _stage(path, "applying the Modality LUT (RescaleSlope/Intercept)"):
        arr = apply_modality_lut(stored, ds)
        value_range = _modality_range(ds)
    with _stage(path, "applying the VOI LUT / window"):
        arr, voi_desc, value_range = _apply_voi(arr, ds, path, voi, window_index, value_range)
        # integers (no LUT, or an integer LUT) are finite by construction: only float results need the check
        from_integers = arr.dtype.kind in "iub"
        unchanged = (
            keep_integers
            and arr is stored
            and stored.dtype in (np.uint8, np.uint16)
            and str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME2"
            and (padding is None or not padding.any())
        )
        pixels = arr if unchanged else np.asarray(arr, dtype=np.float32)
    if unchanged:  # the caller reads integers (prepare_pixels): no float32 copy, nothing to invert or pad
        with _stage(path, "reading the image metadata"):
            return pixels, _dicom_meta(ds, path, pixels, padding, value_range, voi_desc)
    if pixels is stored or np.shares_memory(pixels, stored):
        pixels = pixels.copy()  # never hand out (or modify) pydicom's decoded buffer
    lo, hi = value_range
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise MammogramReadError(
            f"{path}: the Modality/VOI LUT gives a non-finite value range ({lo}, {hi}); RescaleSlope/Intercept "
            "or the window values are damaged"
        )
    finite = True if from_integers else np.isfinite(pixels)
    if finite is not True and not finite.all():
        raise MammogramReadError(
            f"{path}: {int(pixels.size - finite.sum())} of {pixels.size} pixels are NaN or infinite after the "
            "Modality/VOI LUTs; RescaleSlope/Intercept, the VOI LUT or the window values are damaged"
        )
    with _stage(path, "reading the image metadata"):
        return pixels, _dicom_meta(ds, path, pixels, padding, (lo, hi), voi_desc)


def _dicom_meta(
    ds: Any, path: Path, pixels: np.ndarray, padding: np.ndarray | None, value_range: tuple[float, float], voi: str
) -> MammoMeta:
    """Finish the pixels (MONOCHROME1 inversion, padding -> background) and collect the metadata."""
    lo, hi = value_range
    photometric = str(ds.PhotometricInterpretation)
    if photometric == "MONOCHROME1":
        # MONOCHROME1: the minimum is displayed white; mirror within the output range so dense tissue is bright.
        np.subtract(np.float32(lo + hi), pixels, out=pixels)
    extra: dict[str, Any] = {"value_range": (float(lo), float(hi))}
    if padding is not None:
        n_pad = int(padding.sum())
        if n_pad:
            pixels[padding] = np.float32(lo)  # padding = no image here = background
        extra["padding_pixels"] = n_pad

    laterality, lat_source = laterality_from_header(ds, path)
    view, view_source = view_from_header(ds, path)
    spacing, spacing_source = _spacing(ds)
    extra.update(
        laterality_source=lat_source,
        view_source=view_source,
        spacing_source=spacing_source,
        sop_class=str(ds.get("SOPClassUID", "")),
        n_windows=_window_count(ds),
        n_voi_luts=len(ds.get("VOILUTSequence") or []),
    )
    ts = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    bits = ds.get("BitsStored")
    return MammoMeta(
        source_format="dicom",
        height=int(pixels.shape[0]),
        width=int(pixels.shape[1]),
        bits_stored=int(bits) if bits is not None else None,
        photometric=photometric,
        laterality=laterality,
        view=view,
        spacing_mm=spacing,
        manufacturer=str(ds.get("Manufacturer", "") or "") or None,
        presentation_intent=str(ds.get("PresentationIntentType", "") or "") or None,
        transfer_syntax=str(ts) if ts else None,
        voi_applied=voi,
        extra=extra,
    )


def read_mask_file(path: str | Path) -> np.ndarray:
    """Read a lesion mask file (DICOM of any modality, PNG, PGM) as a boolean (H, W) array.

    Mask DICOMs (e.g. CBIS-DDSM ROI masks) are binary images that are not necessarily Modality MG, so
    they skip the mammogram checks and all LUTs: a pixel is lesion when its stored value is nonzero
    (MONOCHROME2) or below the stored full scale (MONOCHROME1). PNG/PGM masks: nonzero; JPEG masks: above
    127 (half the range, above the compression noise around 0).

    Raises:
        MammogramReadError: the file is missing, unreadable or not a 2-D single-channel image.
    """
    path = Path(path)
    if not path.is_file():
        raise MammogramReadError(f"{path}: mask file not found")
    with _stage(path, "opening the mask file"):
        kind = sniff_format(path)
    if kind == "dicom":
        ds = _dcmread(path)
        if "PixelData" not in ds:
            raise MammogramReadError(f"{path}: mask DICOM has no pixel data")
        with _stage(path, "checking the mask header"):
            check_declared_size(path, _int_attr(ds, path, "Rows", 0), _int_attr(ds, path, "Columns", 0),
                                max_image_pixels())  # fmt: skip
        with _stage(path, "decoding the mask pixel data"):
            arr = _decode(ds, path)
        if arr.ndim != 2:
            raise MammogramReadError(f"{path}: mask DICOM is not a 2-D single-channel image (shape {arr.shape})")
        with _stage(path, "thresholding the mask"):
            if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
                return arr < _stored_range(ds)[1]  # MONOCHROME1: lesion is darker than full white
            return arr > 0
    if kind in ("png", "pgm", "jpeg"):
        from mammokit.io.raster import read_raster

        with _stage(path, "reading the mask image"):
            pixels, _ = read_raster(path, max_pixels=max_image_pixels())
        # JPEG masks carry compression noise around 0; half the range separates lesion from background.
        threshold = 0.0 if kind != "jpeg" else 127.0
        return pixels > threshold
    raise MammogramReadError(f"{path}: not a DICOM, PNG, PGM or JPEG mask file")


class _InMemoryFile(io.BytesIO):
    """A file's bytes held in memory, read by pydicom and Pillow like a file; `str()` names it in messages."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name


def read_mammogram_bytes(
    data: bytes,
    *,
    name: str = "upload",
    voi: VoiMode = "auto",
    window_index: int = 0,
    allow_for_processing: bool = False,
    max_pixels: int | None = None,
) -> tuple[np.ndarray, MammoMeta]:
    """`read_mammogram` for a file held in memory (the HTTP service writes nothing to disk): same checks, same result.

    Args:
        data: the whole file.
        name: how messages name the file (also searched for the CBIS-DDSM `_LEFT_CC` pattern, like a path).
        voi, window_index, allow_for_processing, max_pixels: as for `read_mammogram`.
    """
    if voi not in VOI_MODES:
        raise ValueError(f"voi must be one of {VOI_MODES}, got {voi!r}")
    if not data:
        raise MammogramReadError(f"{name}: empty file (0 bytes)")
    limit = max_image_pixels() if max_pixels is None else int(max_pixels)
    kind = sniff_bytes(bytes(data[: DICOM_MAGIC_OFFSET + 4]))
    source = _InMemoryFile(bytes(data), name)
    if kind == "dicom":
        with _warnings_to_log(source):  # type: ignore[arg-type]
            return _read_dicom(
                source,  # type: ignore[arg-type]
                voi=voi,
                window_index=window_index,
                allow_for_processing=allow_for_processing,
                max_pixels=limit,
            )
    if kind in ("png", "pgm", "jpeg"):
        from mammokit.io.raster import read_raster

        with _stage(source, f"reading the {kind.upper()} image"):  # type: ignore[arg-type]
            return read_raster(source, max_pixels=limit)
    raise MammogramReadError(
        f"{name}: not a DICOM, PNG, PGM or JPEG file (no 'DICM' marker at byte 128 and no image signature)"
    )
