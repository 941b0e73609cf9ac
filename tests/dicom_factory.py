"""Synthetic mammography DICOMs for tests (importable by any test: `from dicom_factory import ...`).

pydicom ships no Modality MG test file, so every photometric / bit-depth / VOI / compression variant the
reader must handle is written here with pydicom itself. Images are small phantoms: a bright half-ellipse
"breast" against a dark background with the chest wall on the side given by the laterality, the way
mammograms are displayed (left breast: chest wall on the left).

Compression uses pydicom's encoders (`Dataset.compress`): RLE Lossless (native), JPEG-LS lossless and
near-lossless (pyjpegls), JPEG 2000 lossless and lossy (pylibjpeg-openjpeg). pydicom 3 has no encoder for
JPEG Lossless (process 14) or HTJ2K: JPEG Lossless SV1 is written by the small encoder below
(`encode_jpeg_lossless`, ITU-T T.81 Annex H), and JPEG Baseline (8-bit) by encapsulating a Pillow JPEG.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

DM_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
DM_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"

# Transfer syntaxes pydicom 3 can *encode* with the plugins installed in the venv.
ENCODABLE_SYNTAXES = {
    "rle": RLELossless,
    "jpeg-ls": JPEGLSLossless,
    "jpeg-ls-near": JPEGLSNearLossless,
    "jpeg2000-lossless": JPEG2000Lossless,
    "jpeg2000": JPEG2000,
}


def phantom(
    shape: tuple[int, int] = (64, 48),
    *,
    bits: int = 12,
    side: str = "L",
    background: int = 0,
    seed: int = 0,
) -> np.ndarray:
    """A uint16 (H, W) breast phantom: textured half-ellipse, chest wall on the `side` ("L" or "R") edge.

    Values inside the breast span roughly 30-95 % of the `bits` range, the background is `background`.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    # distance from the chest wall edge; the breast reaches 80 % of the width, 90 % of the height
    x = cols if side == "L" else (w - 1 - cols)
    inside = (x / (0.8 * w)) ** 2 + ((rows - h / 2) / (0.45 * h)) ** 2 <= 1.0
    full = 2**bits - 1
    tissue = 0.3 + 0.5 * (1 - x / w) + 0.15 * rng.random((h, w))
    img = np.where(inside, tissue * full, background)
    return np.clip(np.round(img), 0, full).astype(np.uint16)


def make_dataset(
    pixels: np.ndarray,
    *,
    bits_stored: int | None = None,
    photometric: str = "MONOCHROME2",
    modality: str = "MG",
    sop_class: str = DM_FOR_PRESENTATION,
    presentation_intent: str | None = "FOR PRESENTATION",
    image_laterality: str | None = "L",
    laterality: str | None = None,
    view_position: str | None = "CC",
    view_code: tuple[str, str] | None = None,
    patient_orientation: Sequence[str] | str | None = None,
    patient_id: str = "ANON0001",
    windows: Sequence[tuple[float, float]] | None = None,
    voi_function: str | None = None,
    voi_luts: Sequence[tuple[int, int, np.ndarray]] | None = None,
    rescale: tuple[float, float] | None = None,
    padding_value: int | None = None,
    pixel_spacing: tuple[float, float] | None = None,
    imager_pixel_spacing: tuple[float, float] | None = None,
    manufacturer: str | None = "mammokit-tests",
    signed: bool = False,
    frames: int = 1,
    extra: dict[str, Any] | None = None,
) -> Dataset:
    """A complete in-memory DICOM dataset (uncompressed) holding `pixels`.

    Args:
        pixels: (H, W) uint16/int16 (or (F, H, W) with `frames` > 1) stored values.
        windows: [(centre, width), ...] -> WindowCenter/WindowWidth (multi-valued if several).
        voi_luts: [(first_mapped, out_bits, table), ...] -> VOILUTSequence items.
        rescale: (slope, intercept) -> RescaleSlope/RescaleIntercept.
        view_code: (CodeValue, CodeMeaning) -> ViewCodeSequence.
        Other keywords map to the attribute of the same meaning; None leaves it out.
    """
    pixels = np.ascontiguousarray(pixels)
    bits_allocated = 8 if pixels.dtype.itemsize == 1 else 16
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    if modality:
        ds.Modality = modality
    ds.PatientID = patient_id
    ds.PatientName = "Test^Phantom"
    if manufacturer:
        ds.Manufacturer = manufacturer
    if presentation_intent:
        ds.PresentationIntentType = presentation_intent
    if image_laterality:
        ds.ImageLaterality = image_laterality
    if laterality:
        ds.Laterality = laterality
    if view_position:
        ds.ViewPosition = view_position
    if view_code:
        item = Dataset()
        item.CodeValue, item.CodeMeaning = view_code
        item.CodingSchemeDesignator = "SCT"
        ds.ViewCodeSequence = [item]
    if patient_orientation is not None:
        ds.PatientOrientation = patient_orientation
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(pixels.shape[-2]), int(pixels.shape[-1])
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored or bits_allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if windows:
        ds.WindowCenter = [c for c, _ in windows] if len(windows) > 1 else windows[0][0]
        ds.WindowWidth = [w for _, w in windows] if len(windows) > 1 else windows[0][1]
    if voi_function:
        ds.VOILUTFunction = voi_function
    if voi_luts:
        items = []
        for first, out_bits, table in voi_luts:
            item = Dataset()
            item.LUTDescriptor = [len(table), first, out_bits]
            item.LUTExplanation = f"test LUT {len(items)}"
            item.add_new(0x00283006, "US", [int(v) for v in table])  # LUTData; VR is ambiguous (US/OW)
            items.append(item)
        ds.VOILUTSequence = items
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.RescaleType = "US"
    if padding_value is not None:
        ds.PixelPaddingValue = padding_value
    if pixel_spacing:
        ds.PixelSpacing = list(pixel_spacing)
    if imager_pixel_spacing:
        ds.ImagerPixelSpacing = list(imager_pixel_spacing)
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.int16 if signed else pixels.dtype).tobytes()
    return ds


def write_dicom(path: str | Path, ds: Dataset, syntax: str | None = None) -> Path:
    """Write `ds` to `path` as a DICOM file (preamble + DICM), compressed with `syntax` if given.

    Args:
        syntax: a key of ENCODABLE_SYNTAXES, "jpeg-lossless" (JPEG Lossless SV1, 2-16 bit), "jpeg-baseline"
            (8-bit data only) or None (uncompressed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if syntax == "jpeg-baseline":
        _encapsulate_jpeg_baseline(ds)
    elif syntax == "jpeg-lossless":
        arr = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(ds.Rows, ds.Columns)
        ds.PixelData = encapsulate([encode_jpeg_lossless(arr, int(ds.BitsStored))])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    elif syntax:
        ds.compress(ENCODABLE_SYNTAXES[syntax])
    ds.save_as(path, enforce_file_format=True)
    return path


def encode_jpeg_lossless(arr: np.ndarray, precision: int) -> bytes:
    """A JPEG Lossless (process 14, selection value 1, Pt = 0) codestream of a (H, W) image, per ITU-T T.81.

    Prediction (Annex H.1.2.1): the first sample is predicted by 2^(P-1), the rest of the first row by the
    sample on the left, the first sample of every other row by the sample above, all others by the sample
    on the left (SV1). Differences are taken modulo 2^16 and Huffman-coded by their category SSSS with one
    fixed table (17 symbols, 5-bit codes), followed by SSSS extra bits (H.1.2.2, F.1.2.1.1).
    """
    arr = np.asarray(arr, dtype=np.int64)
    h, w = arr.shape
    pred = np.empty_like(arr)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = arr[0, :-1]
    pred[1:, 0] = arr[:-1, 0]
    pred[1:, 1:] = arr[1:, :-1]
    diff = (arr - pred) % 65536
    diff = np.where(diff >= 32768, diff - 65536, diff)  # signed in [-32768, 32767]

    bits: list[str] = []
    for d in diff.ravel().tolist():
        ssss = 16 if d == -32768 else abs(d).bit_length()
        bits.append(format(ssss, "05b"))  # canonical code of symbol k (all of length 5) is k
        if 0 < ssss < 16:
            bits.append(format(d if d > 0 else d - 1 + (1 << ssss), f"0{ssss}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)  # pad the last byte with 1-bits
    data = bytearray()
    for i in range(0, len(stream), 8):
        byte = int(stream[i : i + 8], 2)
        data.append(byte)
        if byte == 0xFF:
            data.append(0x00)  # byte stuffing
    counts = [0] * 16
    counts[4] = 17  # 17 codes of length 5
    sof = bytes([0xFF, 0xC3, 0, 11, precision, h >> 8, h & 255, w >> 8, w & 255, 1, 1, 0x11, 0])
    dht = bytes([0xFF, 0xC4, 0, 2 + 1 + 16 + 17, 0x00, *counts, *range(17)])
    sos = bytes([0xFF, 0xDA, 0, 8, 1, 1, 0x00, 1, 0, 0x00])  # Ns=1, Cs=1, Td/Ta=0, Ss=1 (predictor), Se=0, Pt=0
    return b"\xff\xd8" + sof + dht + sos + bytes(data) + b"\xff\xd9"


def _encapsulate_jpeg_baseline(ds: Dataset) -> None:
    from PIL import Image

    if ds.BitsAllocated != 8:
        raise ValueError("JPEG baseline holds 8-bit data only")
    arr = np.frombuffer(ds.PixelData, dtype=np.uint8).reshape(ds.Rows, ds.Columns)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit


def write_mammogram(
    path: str | Path, pixels: np.ndarray | None = None, syntax: str | None = None, **kwargs: Any
) -> Path:
    """Shortcut: phantom (or `pixels`) -> make_dataset(**kwargs) -> write_dicom. Returns the path."""
    if pixels is None:
        pixels = phantom(bits=kwargs.get("bits_stored") or 12, side=kwargs.get("image_laterality") or "L")
    return write_dicom(path, make_dataset(pixels, **kwargs), syntax)


# An RLE Lossless frame (2 x 3 pixels, 16-bit: two segments) whose first segment's literal run is longer than the
# image; found by tests/fuzz_corpus.py. pylibjpeg-rle's Rust decoder panics on it ("index out of bounds"), raising
# pyo3's PanicException, a BaseException that `except Exception` misses - the defect of issue 17.
PANIC_RLE_FRAME = bytes.fromhex(
    "0200000040000000640000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "20823cfde6f1c26b30f90ec7dd01e4887534a20f0b0d04c36ed80e71e0fd77b0"
    "7670eb94d533"
)


def write_panic_rle(path: str | Path) -> Path:
    """A 2 x 3 MG DICOM (RLE Lossless) whose pixel data makes the Rust RLE decoder panic."""
    import pydicom

    path = Path(path)
    write_dicom(path, make_dataset(np.full((2, 3), 100, np.uint16), bits_stored=12), "rle")
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([PANIC_RLE_FRAME])
    ds.save_as(path, enforce_file_format=True)
    return path


# --- codestream and deflate bombs (issue 25) ---------------------------------------------------------------------

# JPEG start-of-frame markers (T.81 Table B.1) and JPEG-LS SOF55: where a JPEG codestream declares its size.
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


def first_frame(path: str | Path) -> bytes:
    """The first frame of a compressed DICOM's encapsulated pixel data, as the decoders get it (not decoded)."""
    import pydicom
    from pydicom.encaps import generate_frames

    return next(generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1))


def replace_frame(path: str | Path, frame: bytes, out: str | Path | None = None) -> Path:
    """Re-encapsulate the DICOM at `path` with `frame` as its only frame; header untouched. Writes `out` or `path`."""
    import pydicom

    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([frame])
    out = Path(out or path)
    ds.save_as(out, enforce_file_format=True)
    return out


def sof_offset(codestream: bytes) -> int:
    """Byte offset of the SOFn / SOF55 marker of a JPEG or JPEG-LS codestream (walks the marker segments)."""
    pos = 2
    while pos + 4 <= len(codestream):
        marker, length = codestream[pos + 1], int.from_bytes(codestream[pos + 2 : pos + 4], "big")
        if marker in _SOF_MARKERS:
            return pos
        pos += 2 + length
    raise ValueError("no SOF marker")


def with_declared_size(codestream: bytes, rows: int, columns: int) -> bytes:
    """A copy of a JPEG / JPEG-LS / JPEG 2000 codestream whose header declares `rows` x `columns` instead.

    JPEG: Y and X of the frame header (16 bits each). JPEG 2000: Ysiz and Xsiz of SIZ (image offsets kept; also
    the tile size when the image is one tile, so the tile count stays 1). The entropy-coded data is unchanged.
    """
    data = bytearray(codestream)
    if data[:2] == b"\xff\xd8":
        at = sof_offset(codestream) + 5  # marker(2) Lf(2) P(1), then Y(2) X(2)
        data[at : at + 4] = rows.to_bytes(2, "big") + columns.to_bytes(2, "big")
        return bytes(data)
    if data[:4] == b"\xff\x4f\xff\x51":
        xsiz, ysiz, xo, yo, xt, yt = struct.unpack_from(">IIIIII", data, 8)
        single_tile = xt >= xsiz and yt >= ysiz
        struct.pack_into(">II", data, 8, xo + columns, yo + rows)
        if single_tile:
            struct.pack_into(">II", data, 24, max(xt, xo + columns), max(yt, yo + rows))
        return bytes(data)
    raise ValueError("not a JPEG, JPEG-LS or JPEG 2000 codestream")


def jp2_wrap(codestream: bytes, rows: int, columns: int, components: int = 1, bits: int = 12) -> bytes:
    """A JP2 file (signature, ftyp, jp2h with ihdr + colr, jp2c) around a J2K codestream (T.800 Annex I)."""

    def box(kind: bytes, content: bytes) -> bytes:
        return struct.pack(">I", 8 + len(content)) + kind + content

    ihdr = struct.pack(">IIHBBBB", rows, columns, components, bits - 1, 7, 0, 0)  # BPC, C=7 (JPEG 2000), UnkC, IPR
    colr = struct.pack(">BBBI", 1, 0, 0, 17)  # enumerated colour space 17: greyscale
    return (
        box(b"jP  ", b"\r\n\x87\n")
        + box(b"ftyp", b"jp2 " + b"\x00\x00\x00\x00" + b"jp2 ")
        + box(b"jp2h", box(b"ihdr", ihdr) + box(b"colr", colr))
        + box(b"jp2c", codestream)
    )


def rle_with_header(frame: bytes, segments: int, offsets: Sequence[int] | None = None) -> bytes:
    """A copy of an RLE frame whose 64-byte header declares `segments` segments (and `offsets`, if given)."""
    data = bytearray(frame)
    struct.pack_into("<I", data, 0, segments & 0xFFFFFFFF)
    if offsets is not None:
        struct.pack_into("<15I", data, 4, *[o & 0xFFFFFFFF for o in (list(offsets) + [0] * 15)[:15]])
    return bytes(data)


def write_deflated(path: str | Path, ds: Dataset) -> Path:
    """Write an uncompressed `ds` as Deflated Explicit VR Little Endian (pydicom deflates it when writing)."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    path = Path(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def write_deflate_bomb(
    path: str | Path, pixel_bytes: int, rows: int = 40, columns: int = 32, drop: Sequence[str] = ()
) -> Path:
    """A small Deflated Explicit VR Little Endian MG file whose Pixel Data is `pixel_bytes` zeros (a deflate bomb).

    The header declares `rows` x `columns` 16-bit pixels (without the attributes named in `drop`); the deflated
    stream is built piece by piece (1 MiB of zeros at a time), so writing a 400 MB bomb needs a few MB of memory
    and ~1 s: deflate shrinks zeros ~1000x.
    """
    import zlib

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    path = Path(path)
    ds = make_dataset(np.zeros((rows, columns), np.uint16), bits_stored=12)
    del ds.PixelData
    for keyword in drop:
        delattr(ds, keyword)
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    write_file_meta_info(meta, ds.file_meta)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    pixel_header = b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", pixel_bytes)  # (7FE0,0010) OW, 4-byte length
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)  # raw deflate, PS3.5 A.5
    zeros = bytes(1 << 20)
    with open(path, "wb") as fh:
        fh.write(bytes(128) + b"DICM" + meta.getvalue())
        fh.write(deflater.compress(body.getvalue() + pixel_header))
        left = pixel_bytes
        while left > 0:
            fh.write(deflater.compress(zeros[: min(left, len(zeros))]))
            left -= len(zeros)
        fh.write(deflater.flush())
    return path
