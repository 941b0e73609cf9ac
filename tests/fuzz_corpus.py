"""Seed corpus and mutator for fuzzing `read_mammogram` (used by tests/test_fuzz_reader.py and
benchmarks/fuzz_reader.py).

Seeds: small mammography DICOMs in every transfer syntax the reader supports (explicit/implicit little endian,
big endian, RLE, JPEG baseline, JPEG lossless SV1, JPEG-LS lossless/near-lossless, JPEG 2000 lossless/lossy),
with the header features whose parsing can fail (windows, VOI LUT, rescale, padding, spacing, view code,
MONOCHROME1, signed data), plus 8/16-bit PNG, PGM and JPEG. Mutations are deterministic for a given
`random.Random`: byte flips, random bytes, truncation, chunk duplication/deletion, and "header-aware" ones that
overwrite the value of a known tag (Rows, Columns, BitsAllocated, RescaleSlope, ...) with extreme values, since
those reach the decoders with inconsistent sizes.
"""

from __future__ import annotations

import io
import random
import struct
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from dicom_factory import make_dataset, phantom, write_dicom

# (tag group, element) little-endian bytes of header elements worth corrupting
_TAGS = {
    "Rows": b"\x28\x00\x10\x00",
    "Columns": b"\x28\x00\x11\x00",
    "BitsAllocated": b"\x28\x00\x00\x01",
    "BitsStored": b"\x28\x00\x01\x01",
    "HighBit": b"\x28\x00\x02\x01",
    "PixelRepresentation": b"\x28\x00\x03\x01",
    "SamplesPerPixel": b"\x28\x00\x02\x00",
    "NumberOfFrames": b"\x28\x00\x08\x00",
    "RescaleSlope": b"\x28\x00\x53\x10",
    "RescaleIntercept": b"\x28\x00\x52\x10",
    "WindowCenter": b"\x28\x00\x50\x10",
    "WindowWidth": b"\x28\x00\x51\x10",
    "PixelSpacing": b"\x28\x00\x30\x00",
    "PixelPaddingValue": b"\x28\x00\x20\x01",
    "PixelData": b"\xe0\x7f\x10\x00",
}
_EXTREME_US = [0, 1, 2, 3, 7, 8, 15, 16, 17, 32, 64, 255, 4096, 32767, 32768, 65535]
_EXTREME_DS = [b"NaN ", b"inf ", b"-inf", b"1e308", b"-1e308", b"0   ", b"-0  ", b"1e-40", b"abcd", b"\\\\  "]


def _dicom_seeds(folder: Path) -> list[Path]:
    image = phantom((40, 32), bits=12, side="L", background=5, seed=3)
    rich = dict(windows=[(2047, 4095), (1000, 2000)], rescale=(1.0, 0.0), padding_value=0, pixel_spacing=(0.1, 0.1))
    specs: list[tuple[str, dict, str | None]] = [
        ("native", rich, None),
        ("mono1", {"photometric": "MONOCHROME1", "view_code": ("399162004", "cranio-caudal")}, None),
        ("voilut", {"voi_luts": [(0, 12, np.linspace(0, 4095, 4096).astype(np.uint16))]}, None),
        ("signed", {"signed": True, "rescale": (2.0, -100.0)}, None),
        ("rle", rich, "rle"),
        ("jpeg-ls", {}, "jpeg-ls"),
        ("jpeg-ls-near", {}, "jpeg-ls-near"),
        ("j2k-lossless", {}, "jpeg2000-lossless"),
        ("j2k", {}, "jpeg2000"),
        ("jpeg-lossless", {}, "jpeg-lossless"),
    ]
    paths = []
    for name, kwargs, syntax in specs:
        pixels = image if not kwargs.get("signed") else (image.astype(np.int16) - 2048)
        ds = make_dataset(pixels, bits_stored=12, **kwargs)
        if syntax == "jpeg-ls-near":
            from dicom_factory import ENCODABLE_SYNTAXES

            ds.compress(ENCODABLE_SYNTAXES[syntax], jls_error=2)
            syntax = None
        elif syntax == "jpeg2000":
            from dicom_factory import ENCODABLE_SYNTAXES

            ds.compress(ENCODABLE_SYNTAXES[syntax], j2k_cr=[5])
            syntax = None
        paths.append(write_dicom(folder / f"{name}.dcm", ds, syntax))
    # 8-bit JPEG baseline, implicit VR and big endian (pydicom writes them from the same dataset)
    ds8 = make_dataset((image >> 4).astype(np.uint8), bits_stored=8)
    paths.append(write_dicom(folder / "jpeg-baseline.dcm", ds8, "jpeg-baseline"))
    for name, uid in (("implicit", ImplicitVRLittleEndian), ("bigendian", ExplicitVRBigEndian)):
        ds = make_dataset(image, bits_stored=12)
        ds.file_meta.TransferSyntaxUID = uid
        if uid == ExplicitVRBigEndian:
            ds.PixelData = image.astype(">u2").tobytes()
        path = folder / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True, implicit_vr=uid == ImplicitVRLittleEndian,
                   little_endian=uid != ExplicitVRBigEndian)  # fmt: skip
        paths.append(path)
    return paths


def _raster_seeds(folder: Path) -> list[Path]:
    image = phantom((40, 32), bits=8, side="R", background=0, seed=4).astype(np.uint8)
    paths = []
    for name, arr, fmt in (
        ("png8.png", image, "PNG"),
        ("png16.png", image.astype(np.uint16) * 257, "PNG"),
        ("pgm.pgm", image, "PPM"),
        ("jpeg.jpg", image, "JPEG"),
    ):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt)
        path = folder / name
        path.write_bytes(buf.getvalue())
        paths.append(path)
    return paths


def build_seeds(folder: Path) -> list[Path]:
    """Write the seed corpus into `folder`; returns the files (every one reads cleanly)."""
    folder.mkdir(parents=True, exist_ok=True)
    return _dicom_seeds(folder) + _raster_seeds(folder)


N_OPS = 7  # mutation kinds, see apply_mutation


def _overwrite_tag(data: bytearray, which: int, value: int) -> None:
    name, tag = list(_TAGS.items())[which % len(_TAGS)]
    pos = data.find(tag, 132)
    if pos < 0 or pos + 12 > len(data):
        return
    # explicit VR: tag(4) VR(2) len(2) value; implicit VR: tag(4) len(4) value. Guess from the VR letters.
    explicit = data[pos + 4 : pos + 6].isalpha()
    if name == "PixelData":  # corrupt the declared length (after 'OB/OW' + 2 reserved bytes, or implicit)
        at = pos + 8 if explicit else pos + 4
        struct.pack_into("<I", data, at, [0, 1, 2, 0xFFFFFFFF, 0x7FFFFFFF, value & 0xFFFFF][value % 6])
        return
    if explicit:
        length, value_at = struct.unpack_from("<H", data, pos + 6)[0], pos + 8
    else:
        length, value_at = struct.unpack_from("<I", data, pos + 4)[0], pos + 8
    if value_at + length > len(data):
        return
    if length == 2:
        struct.pack_into("<H", data, value_at, _EXTREME_US[value % len(_EXTREME_US)])
    elif 0 < length <= 64:
        data[value_at : value_at + length] = _EXTREME_DS[value % len(_EXTREME_DS)][:length].ljust(length, b" ")


def apply_mutation(data: bytearray, op: int, where: int, value: int) -> None:
    """Apply one mutation in place. `op` in range(N_OPS); `where` and `value` are any non-negative ints (taken
    modulo the file length / the table sizes), so hypothesis can draw and shrink them freely."""
    n = len(data)
    if n < 2:
        return
    at = where % n
    op %= N_OPS
    if op == 0:  # flip one bit
        data[at] ^= 1 << (value % 8)
    elif op == 1:  # overwrite 4 bytes
        data[at : at + 4] = value.to_bytes(8, "little")[:4]
    elif op == 2:  # truncate (keep at least a quarter: the interesting part is past the header)
        del data[max(n // 4, at) :]
    elif op == 3:  # delete a chunk
        del data[at : at + 1 + value % 64]
    elif op == 4:  # duplicate a chunk
        data[at:at] = data[at : at + 1 + value % 64]
    elif op == 5:  # an extreme 16-bit integer past the preamble
        at = min(132, n - 2) + where % max(1, n - 133)
        struct.pack_into("<H", data, min(at, n - 2), _EXTREME_US[value % len(_EXTREME_US)])
    else:  # a header-aware mutation: an extreme value in a known tag
        _overwrite_tag(data, where, value)


def mutate(seed: bytes, rng: random.Random) -> bytes:
    """One mutated copy of `seed`: 1-4 random mutations (the long-running fuzzer's generator)."""
    data = bytearray(seed)
    for _ in range(rng.randint(1, 4)):
        apply_mutation(data, rng.randrange(N_OPS), rng.randrange(1 << 30), rng.randrange(1 << 30))
    return bytes(data)
