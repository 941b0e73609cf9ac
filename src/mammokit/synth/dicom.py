"""DICOM writers for the phantom: CBIS-DDSM-style secondary captures and INbreast-style FFDM images.

The headers copy what the real files carry (datasets.md §2.5 for CBIS-DDSM, §3 and §7 for full-field
digital mammograms), so that the readers and adapters see the same tags, SOP classes and transfer
syntaxes as on real data. UIDs come from `pydicom.uid.generate_uid(entropy_srcs=...)`: deterministic for a
seed, valid, and under pydicom's root (never the TCIA root, so a phantom file cannot pass for a real one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    DigitalMammographyXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from mammokit.utils.atomic import atomic_path
from mammokit.version import __version__

IMPLEMENTATION_UID = generate_uid(entropy_srcs=["mammokit-synth-implementation"])


def synth_uid(seed: int, *parts: str) -> UID:
    """A valid UID determined by the cohort seed and `parts` (e.g. the folder name and "study")."""
    return generate_uid(entropy_srcs=["mammokit-synth", str(seed), *parts])


def to_uint16(image: np.ndarray, max_value: int = 65535) -> np.ndarray:
    """Float image in [0, 1] -> unsigned integers in [0, max_value] (rounded)."""
    return (np.clip(image, 0.0, 1.0) * max_value + 0.5).astype(np.uint16)


def _file_meta(sop_class: UID, sop_instance: UID, transfer_syntax: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"MAMMOKIT_{__version__}"[:16]
    return meta


def _set_pixels(ds: Dataset, pixels: np.ndarray, *, bits_stored: int, compress: bool) -> None:
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {pixels.shape}")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape)
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if compress:
        # pylibjpeg-rle is ~20x faster than pydicom's pure-Python RLE encoder; both give identical bytes.
        ds.compress(RLELossless, np.ascontiguousarray(pixels), encoding_plugin="pylibjpeg", generate_instance_uid=False)
    else:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()


def write_cbis_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    patient_id: str,
    study_uid: UID,
    series_uid: UID,
    sop_uid: UID,
    series_description: str,
    laterality: str,
    view: str,
    study_date: str,
    series_number: int = 1,
    instance_number: int = 1,
) -> None:
    """Write one CBIS-DDSM-style file (full image, crop or mask) atomically.

    Like the real files: Secondary Capture Image Storage (MATLAB secondary capture of a digitised film),
    Modality MG, RLE Lossless, MONOCHROME2, PatientID = PatientName = the folder name, ImageLaterality and
    ViewPosition absent, Laterality (0020,0060) = L/R and PatientOrientation = CC/MLO, no PixelSpacing.
    `pixels` is uint16 (full images, crops) or uint8 (0/255 masks).
    """
    ds = Dataset()
    ds.file_meta = _file_meta(SecondaryCaptureImageStorage, sop_uid, RLELossless)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date
    ds.ContentDate = study_date
    ds.StudyTime = "120000"
    ds.ContentTime = "120000.000000"
    ds.AccessionNumber = ""
    ds.Modality = "MG"
    ds.ConversionType = "WSD"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = series_description
    ds.PatientName = patient_id
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    # TCIA's CTP private block naming the collection, as in the real files.
    block = ds.private_block(0x0013, "CTP", create=True)
    block.add_new(0x10, "LO", "CBIS-DDSM")
    ds.BodyPartExamined = "BREAST"
    ds.SecondaryCaptureDeviceManufacturer = "mammokit-synth"
    ds.SecondaryCaptureDeviceManufacturerModelName = "phantom"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "DDSM"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = view
    ds.Laterality = laterality
    _set_pixels(ds, pixels, bits_stored=pixels.dtype.itemsize * 8, compress=True)
    ds.SmallestImagePixelValue = int(pixels.min())
    ds.LargestImagePixelValue = int(pixels.max())
    # Smallest/LargestImagePixelValue are US here (unsigned data); set the VR explicitly for the writer.
    ds["SmallestImagePixelValue"].VR = "US"
    ds["LargestImagePixelValue"].VR = "US"
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def write_ffdm_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    patient_id: str,
    study_uid: UID,
    series_uid: UID,
    sop_uid: UID,
    laterality: str,
    view: str,
    acquisition_date: str,
    age: int,
    bits_stored: int = 14,
    pixel_spacing_mm: float = 0.07,
) -> None:
    """Write one INbreast-style full-field digital mammogram atomically.

    Digital Mammography X-Ray Image Storage - For Presentation, Explicit VR Little Endian (uncompressed),
    MONOCHROME2, 16 bits allocated / `bits_stored` stored, ImageLaterality and ViewPosition filled, PixelSpacing
    set (INbreast: 70 µm), manufacturer SIEMENS (the INbreast images come from a Siemens MammoNovation).
    """
    ds = Dataset()
    ds.file_meta = _file_meta(DigitalMammographyXRayImageStorageForPresentation, sop_uid, ExplicitVRLittleEndian)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = acquisition_date
    ds.SeriesDate = acquisition_date
    ds.AcquisitionDate = acquisition_date
    ds.ContentDate = acquisition_date
    ds.StudyTime = "100000"
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "SIEMENS"
    ds.ManufacturerModelName = "Mammomat NovationDR"
    ds.PatientName = ""
    ds.PatientID = patient_id
    ds.PatientAge = f"{int(age):03d}Y"
    ds.PatientSex = "F"
    ds.BodyPartExamined = "BREAST"
    ds.ViewPosition = view
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImageLaterality = laterality
    ds.Laterality = laterality
    # (row direction, column direction): towards the nipple along a row; down = patient right/left (CC) or feet
    # (MLO), with the chest wall on the laterality's side as in the CBIS/INbreast hanging.
    along = "A" if laterality == "L" else "P"
    down = ("R" if laterality == "L" else "L") if view == "CC" else "F"
    ds.PatientOrientation = [along, down]
    ds.PixelSpacing = [pixel_spacing_mm, pixel_spacing_mm]
    ds.ImagerPixelSpacing = [pixel_spacing_mm, pixel_spacing_mm]
    _set_pixels(ds, pixels, bits_stored=bits_stored, compress=False)
    ds.WindowCenter = (1 << bits_stored) // 2
    ds.WindowWidth = 1 << bits_stored
    ds.VOILUTFunction = "LINEAR"
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
