"""File <-> array: DICOM/PNG/PGM/JPEG mammograms in, prepared 16-bit PNGs out."""
