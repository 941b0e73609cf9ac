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
`MAMMOKIT_MAX_PIXELS`) before anything is decoded, and so is the size the compressed codestream itself declares
(JPEG SOFn, JPEG-LS SOF55, JPEG 2000 SIZ, the RLE segment header; `mammokit.io.codestream`), which must equal the
header's; a Deflated Explicit VR Little Endian dataset is inflated through a bounded stream (`dcmread_bounded`);
non-finite pixels after the LUTs are refused. A decoder that *aborts* the process cannot be caught here: batch
commands decode in worker processes (`mammokit.utils.pool`).

No torch here: the ONNX prediction path imports this module.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import re
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Literal

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

DEFLATED_SYNTAX = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian (PS3.5 A.5)
# Bytes of a deflated dataset besides its pixel data: mammogram headers are a few KB, ~1 MB with vendor private
# blocks; 16 MiB is generous and still far below what a decompression bomb inflates to.
DEFLATE_HEADER_ALLOWANCE = 16 * 1024 * 1024
# A deflated dataset must declare its image (Rows, Columns, BitsAllocated before the top-level Pixel Data) within
# this many inflated bytes; it is read there to bound the rest (a mammogram header is KBs, ~1 MB at most).
DEFLATE_HEADER_WINDOW = 4 * 1024 * 1024
_HEADER_MAX_ELEMENTS = 20_000  # top-level elements read in that window: real headers have hundreds; garbage (e.g.
# zeros after a damaged element) parses as one element per 8 bytes, ~3 us and ~200 bytes each in pydicom
# Inflated bytes per pixel a mammogram can need: one sample of BitsAllocated 8 or 16 (Digital Mammography IOD,
# PS3.3 C.8.11.7) in one frame (multi-frame files are refused).
_DEFLATE_BYTES_PER_PIXEL = 2
_INFLATE_STEP = 1 << 20  # bytes inflated per zlib call, the transient on top of what is kept: 1 MiB
_DEFLATED_READ = 1 << 16  # compressed bytes read from the file per step: 64 KiB


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


def deflated_size_limit(max_pixels: int) -> int:
    """Bytes a Deflated Explicit VR Little Endian dataset may inflate to when images may have `max_pixels` pixels.

    Fixed before inflating (the header that declares the image size is itself inside the deflated stream):
    two bytes per pixel plus `DEFLATE_HEADER_ALLOWANCE`. With the default 100 Mpixels: 216.8 MB.
    """
    return int(max_pixels) * _DEFLATE_BYTES_PER_PIXEL + DEFLATE_HEADER_ALLOWANCE


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
def _stage(path: Path, what: str, *, failure: str | None = None) -> Iterator[None]:
    """Turn any failure of one reading step into a MammogramReadError that names the file and the step.

    `failure`: the message for a failure other than memory, `{error}` standing for the exception's description;
    by default "WHAT failed, the file is damaged or inconsistent ({error})".
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
        message = failure or f"{what} failed, the file is damaged or inconsistent ({{error}})"
        raise MammogramReadError(f"{path}: " + message.format(error=_describe(exc))) from None


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


def _dcmread(path: Path, max_pixels: int | None = None) -> Any:
    """pydicom's dataset of `path` (a path or an `_InMemoryFile`), every failure a `MammogramReadError`."""
    return dcmread_bounded(path, max_pixels=max_pixels)


def dcmread_bounded(
    source: str | Path | BinaryIO,
    *,
    max_pixels: int | None = None,
    stop_before_pixels: bool = False,
    force: bool = False,
) -> Any:
    """`pydicom.dcmread` that inflates a deflated dataset through a bounded stream; failures are MammogramReadErrors.

    pydicom inflates Deflated Explicit VR Little Endian datasets with one `zlib.decompress` of the whole file,
    even with `stop_before_pixels`: 432 KB of deflated zeros become 400 MB in memory. Here the stream is inflated
    1 MiB at a time and refused as soon as it passes `deflated_size_limit(max_pixels)`, or - once
    `DEFLATE_HEADER_WINDOW` bytes are inflated and the header in them declares its image - what that image needs
    plus `DEFLATE_HEADER_ALLOWANCE`; a dataset larger than the window that declares no image there is refused at
    the window. Memory stays within those bounds, and pydicom never parses more than the window of a damaged
    header. The inflated dataset then goes to pydicom (its file meta information keeps the deflated transfer
    syntax). Other transfer syntaxes are read by `pydicom.dcmread` as they are.

    Args:
        source: a path, or a binary file object positioned at the start of the file (messages name it by `str()`).
        max_pixels: the image-size limit; None = `max_image_pixels()`.
        stop_before_pixels: as for `pydicom.dcmread`.
        force: as for `pydicom.dcmread`: also read a file without the 128-byte preamble and "DICM" (older exports).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = source if not isinstance(source, str) else Path(source)
    limit = max_image_pixels() if max_pixels is None else int(max_pixels)
    inflated: io.BytesIO | None = None
    with _stage(path, "reading the DICOM file", failure="unreadable DICOM, probably truncated or corrupt ({error})"):
        try:
            inflated = _inflate_if_deflated(path, limit, force)
            ds = pydicom.dcmread(path if inflated is None else inflated, stop_before_pixels=stop_before_pixels,
                                 force=force)  # fmt: skip
        except InvalidDicomError as exc:
            raise MammogramReadError(f"{path}: not a valid DICOM file ({exc})") from None
    if inflated is not None:
        ds.file_meta.TransferSyntaxUID = DEFLATED_SYNTAX  # what the file holds (pydicom read the inflated copy)
    return ds


def _inflate_if_deflated(path: Path | BinaryIO, limit_pixels: int, force: bool = False) -> io.BytesIO | None:
    """Inflate a Deflated Explicit VR Little Endian file within `deflated_size_limit`; None for other syntaxes.

    The preamble and file meta information are parsed by pydicom's own reader (`read_preamble`,
    `_read_file_meta_info`: what `dcmread` runs first). Anything that fails there returns None, so that
    `pydicom.dcmread` reports it as it always has.
    """
    from pydicom.filereader import _read_file_meta_info, read_preamble

    with ExitStack() as stack:
        if hasattr(path, "read"):
            fh: BinaryIO = path  # type: ignore[assignment]
            stack.callback(fh.seek, 0)  # the caller reads the in-memory file again from its start
        else:
            fh = stack.enter_context(open(path, "rb"))  # type: ignore[arg-type]
        try:
            preamble = read_preamble(fh, force)
            file_meta = _read_file_meta_info(fh)
        except Exception:
            return None
        if str(file_meta.get("TransferSyntaxUID", "")) != DEFLATED_SYNTAX:
            return None
        chunks = _inflate_bounded(fh, path, deflated_size_limit(limit_pixels))
    return _reassemble(path, preamble, file_meta, chunks)


def _inflate_bounded(fh: BinaryIO, path: Path | BinaryIO, limit: int) -> list[bytes]:
    """The raw deflate stream (PS3.5 A.5: no zlib header) from `fh`'s position, refused past the limit.

    `limit` (from `max_pixels`) holds from the first byte. Once `DEFLATE_HEADER_WINDOW` bytes are inflated, the
    header in them is read (`_declared_need`): the limit drops to what the declared image needs plus
    `DEFLATE_HEADER_ALLOWANCE` (a bomb behind a 40 x 32 header stops after ~17 MB, not after `limit`), and a
    dataset that declares no image there stops at the window.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    chunks: list[bytes] = []
    total = 0
    peeked = False
    pixels = (limit - DEFLATE_HEADER_ALLOWANCE) // _DEFLATE_BYTES_PER_PIXEL
    bound = (  # what the limit stands for, in the message
        f"the most an image of {pixels / 1e6:.1f} Mpixels and its header can need (a decompression bomb); nothing "
        f"more was inflated. If the image is genuine, raise the limit with {MAX_PIXELS_ENV}"
    )
    while not inflater.eof:
        data = inflater.unconsumed_tail or fh.read(_DEFLATED_READ)
        try:
            out = inflater.decompress(data, _INFLATE_STEP)  # data == b"" at the end of the file: pending output
        except zlib.error as exc:
            raise MammogramReadError(f"{path}: the deflated dataset is corrupt ({exc})") from None
        if not data and not out:
            raise MammogramReadError(f"{path}: the deflated dataset is truncated (its deflate stream ends early)")
        chunks.append(out)
        total += len(out)
        if not peeked and total >= DEFLATE_HEADER_WINDOW:
            peeked = True
            declared = _declared_need(b"".join(chunks))
            if declared is None:
                raise MammogramReadError(
                    f"{path}: the deflated dataset declares no image (Rows, Columns and BitsAllocated before its "
                    f"Pixel Data) in its first {DEFLATE_HEADER_WINDOW / 1e6:.1f} MB: a damaged header, not an "
                    "image, or a decompression bomb; nothing more was inflated"
                )
            if declared[0] < limit:
                limit = declared[0]
                bound = (
                    f"the most the {declared[1]} image its header declares can need with "
                    f"{DEFLATE_HEADER_ALLOWANCE / 1e6:.1f} MB of header (a decompression bomb or a damaged "
                    "header); nothing more was inflated"
                )
        if total > limit:
            raise MammogramReadError(
                f"{path}: the deflated dataset inflates to more than {limit / 1e6:.1f} MB, {bound}"
            )
    return chunks


def _declared_need(prefix: bytes) -> tuple[int, str] | None:
    """Bytes the dataset beginning with `prefix` (inflated, Explicit VR Little Endian) can need - its declared
    Rows x Columns x frames x samples x bytes per sample, plus `DEFLATE_HEADER_ALLOWANCE` - and the image in words.

    None when the prefix does not reach the top-level Pixel Data element within `_HEADER_MAX_ELEMENTS` elements,
    or the header before it lacks a positive Rows, Columns or BitsAllocated.
    """
    from pydicom.filereader import read_dataset

    seen = [0, False]  # top-level elements read, Pixel Data reached

    def stop(tag: Any, vr: Any, length: int) -> bool:  # pydicom's stop_when: called for top-level elements only
        seen[0] += 1
        seen[1] = tag == 0x7FE00010
        return seen[1] or seen[0] > _HEADER_MAX_ELEMENTS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a prefix cut inside an element: None below
            header = read_dataset(io.BytesIO(prefix), False, True, stop_when=stop)
            if not seen[1]:
                return None
            rows, cols = int(header.Rows), int(header.Columns)
            frames = int(header.get("NumberOfFrames", 1) or 1)
            samples = int(header.get("SamplesPerPixel", 1) or 1)
            bits = int(header.BitsAllocated)
    except Exception:
        return None
    if min(rows, cols, frames, samples, bits) < 1:
        return None
    need = rows * cols * frames * samples * -(-bits // 8) + DEFLATE_HEADER_ALLOWANCE
    return need, f"{rows} x {cols}" + (f" x {frames} frames" if frames > 1 else "") + f" ({bits}-bit)"


def _reassemble(path: Path | BinaryIO, preamble: bytes | None, file_meta: Any, chunks: list[bytes]) -> io.BytesIO:
    """preamble + DICM + the file meta with transfer syntax Explicit VR Little Endian + the inflated dataset."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset(file_meta)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian  # the inflated bytes are Explicit VR Little Endian (A.5)
    if "FileMetaInformationGroupLength" in meta:
        del meta.FileMetaInformationGroupLength  # stale once the UID's length changed; pydicom reads without it
    encoded = DicomBytesIO()
    encoded.is_little_endian, encoded.is_implicit_VR = True, False
    write_file_meta_info(encoded, meta, enforce_standard=False)
    head = (preamble or bytes(DICOM_MAGIC_OFFSET)) + b"DICM" + encoded.getvalue()
    data = b"".join([head, *chunks])
    chunks.clear()  # the pieces are in `data` now: drop them before pydicom copies the pixel data out of it
    return _InMemoryFile(data, str(path))


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


def check_declared_codestream(ds: Any, path: Path, max_pixels: int) -> None:
    """Refuse compressed pixel data whose codestream declares another image than the header, before decoding.

    Decoders size their buffers from the codestream (JPEG SOFn, JPEG-LS SOF55, JPEG 2000 SIZ), not from
    Rows/Columns: a 40 x 32 header over a codestream declaring 60000 x 60000 passes `check_declared_size` and
    then allocates gigabytes. For every frame (at most NumberOfFrames) the declared rows and columns must equal
    the header's and fit `max_pixels`, the component count must equal SamplesPerPixel and the precision must be
    between 1 and BitsAllocated (JPEG files with a precision other than BitsStored exist, so only BitsAllocated is
    a hard bound). RLE frames: the segment count must be SamplesPerPixel x BitsAllocated / 8 and the offsets
    within the frame. Native and deflated data (no codestream) and unknown syntaxes pass unchecked; frames are
    taken from the encapsulated Pixel Data as pydicom's decoders take them, without decoding.

    Raises:
        MammogramReadError: naming the file, what the header says and what the codestream says; also for
            encapsulated data whose frames or codestream header cannot be parsed.
    """
    from pydicom.encaps import generate_frames

    from mammokit.io.codestream import CodestreamError, declared_image, family_of_syntax, parse_rle_header

    ts = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    family = family_of_syntax(str(ts)) if ts is not None else None
    if family is None or "PixelData" not in ds:
        return
    rows, cols = _int_attr(ds, path, "Rows", 0), _int_attr(ds, path, "Columns", 0)
    frames = max(1, _int_attr(ds, path, "NumberOfFrames", 1))
    samples = _int_attr(ds, path, "SamplesPerPixel", 1)
    bits_allocated = _int_attr(ds, path, "BitsAllocated", 0)
    extended, where = None, ""
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:  # pydicom's decoders use it too
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        frame_iter = generate_frames(ds.PixelData, number_of_frames=frames, extended_offsets=extended)
        for index, frame in enumerate(itertools.islice(frame_iter, frames)):
            where = f"frame {index + 1}: " if frames > 1 else ""
            if family == "RLE":
                if bits_allocated <= 0 or bits_allocated % 8:
                    raise CodestreamError(f"RLE needs BitsAllocated in whole bytes, the header says {bits_allocated}")
                parse_rle_header(frame, samples * bits_allocated // 8)
                continue
            found = declared_image(frame, family)
            _compare_declared(path, where, found, rows, cols, samples, bits_allocated, max_pixels)
    except CodestreamError as exc:
        raise MammogramReadError(
            f"{path}: the {getattr(ts, 'name', str(ts))} pixel data cannot be checked before decoding: "
            f"{where}{exc}; the file is truncated, damaged or crafted"
        ) from None


def _compare_declared(
    path: Path, where: str, found: Any, rows: int, cols: int, samples: int, bits_allocated: int, max_pixels: int
) -> None:
    """The checks of `check_declared_codestream` on one frame's `DeclaredImage`."""
    what = f"{path}: {where}the header declares"
    pixels = found.rows * found.columns
    if (found.rows, found.columns) != (rows, cols) or pixels > max_pixels:
        over = (
            f" = {pixels / 1e6:.1f} Mpixels, over the limit of {max_pixels / 1e6:.1f} Mpixels"
            if pixels > max_pixels
            else ""
        )
        raise MammogramReadError(
            f"{what} {rows} x {cols} pixels (Rows x Columns) but its {found.codec} codestream declares "
            f"{found.rows} x {found.columns}{over}: a damaged file or a decompression bomb; nothing was decoded"
        )
    if found.components != samples:
        raise MammogramReadError(
            f"{what} {samples} sample(s) per pixel but its {found.codec} codestream {found.components} "
            "component(s); nothing was decoded"
        )
    if not 1 <= found.precision <= bits_allocated:
        raise MammogramReadError(
            f"{what} BitsAllocated {bits_allocated} but its {found.codec} codestream a precision of "
            f"{found.precision} bits; nothing was decoded"
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
    decoding = f"the {ts_name} pixel data could not be decoded: the file is truncated or corrupt"
    decoding += " (decoder error {error})"
    with _stage(path, f"decoding the {ts_name} pixel data", failure=decoding), _stderr_to_log(path):
        arr = _decode_rle_direct(ds)
        if arr is None:
            arr = ds.pixel_array
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

    ds = _dcmread(path, max_pixels)
    with _stage(path, "checking the DICOM header"):
        _check_is_mammogram(ds, path, allow_for_processing, max_pixels)
    with _stage(path, "checking the compressed pixel data"):
        check_declared_codestream(ds, path, max_pixels)
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


def _pair_key(ds: Any) -> str | None:
    """Which films belong together for a bilateral model (`infer.pairing`): one exam of one woman.

    A one-way digest of (StudyInstanceUID, PatientID), never the values themselves: MammoMeta carries no patient
    identifier (it is never logged or written out; the digest only groups the files of one call). None when the
    file has neither.
    """
    import hashlib

    study, patient = str(ds.get("StudyInstanceUID", "") or ""), str(ds.get("PatientID", "") or "")
    if not (study or patient):
        return None
    return hashlib.sha256(f"mammokit-pair\0{study}\0{patient}".encode()).hexdigest()[:16]


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
    key = _pair_key(ds)
    if key is not None:
        extra["pair_key"] = key
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
                                max_image_pixels(), _int_attr(ds, path, "NumberOfFrames", 1))  # fmt: skip
            check_declared_codestream(ds, path, max_image_pixels())
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
