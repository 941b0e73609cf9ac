"""Synthetic mammography DICOMs for tests (importable by any test: `from dicom_factory import ...`).

pydicom ships no Modality MG test file, so every photometric / bit-depth / VOI / compression variant the
reader must handle is written here with pydicom itself. Images are small phantoms: a bright half-ellipse
"breast" against a dark background with the chest wall on the side given by the laterality, the way
mammograms are displayed (left breast: chest wall on the left).

Compression uses pydicom's encoders (`Dataset.compress`): RLE Lossless (native), JPEG-LS lossless and
near-lossless (pyjpegls), JPEG 2000 lossless and lossy (pylibjpeg-openjpeg). pydicom 3 has no encoder for
JPEG Lossless (process 14) or HTJ2K; JPEG Baseline (8-bit) is written here by encapsulating a Pillow JPEG.
"""

from __future__ import annotations

import io
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
        syntax: a key of ENCODABLE_SYNTAXES, "jpeg-baseline" (8-bit data only) or None (uncompressed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if syntax == "jpeg-baseline":
        _encapsulate_jpeg_baseline(ds)
    elif syntax:
        ds.compress(ENCODABLE_SYNTAXES[syntax])
    ds.save_as(path, enforce_file_format=True)
    return path


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
