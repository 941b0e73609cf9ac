"""`MammoMeta`: what the reader learned about an image besides its pixels (no patient identifiers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class MammoMeta:
    """Per-image metadata returned by `read_mammogram` next to the pixels.

    Patient-identifying DICOM attributes (names, IDs, dates of birth) are deliberately *not* copied
    here, so logs and outputs built from a MammoMeta cannot leak them. Dataset adapters take the
    ids they need from file/folder names or their own tables.
    """

    source_format: str  # "dicom", "png", "pgm", "jpeg"
    height: int  # rows of the returned pixel array
    width: int  # columns of the returned pixel array
    bits_stored: int | None = None  # e.g. 12, 14, 16 (DICOM); 8 or 16 for PNG
    photometric: str | None = None  # as stored in the file; pixels are always returned as MONOCHROME2
    laterality: str | None = None  # "L" / "R" or None when unknown
    view: str | None = None  # "CC", "MLO", other DICOM view codes, or None
    spacing_mm: tuple[float, float] | None = None  # (row, column) pixel spacing in millimetres
    manufacturer: str | None = None
    presentation_intent: str | None = None  # "FOR PRESENTATION" / "FOR PROCESSING"
    transfer_syntax: str | None = None
    voi_applied: str | None = None  # which VOI transform was applied, e.g. "window(c=2047,w=4095,LINEAR)"
    extra: dict[str, Any] = field(default_factory=dict)
