"""Seed corpus and mutator for fuzzing `read_mammogram` (used by tests/test_fuzz_reader.py and
benchmarks/fuzz_reader.py).

Seeds: small mammography DICOMs in every transfer syntax the reader supports (explicit/implicit little endian,
big endian, deflated, RLE, JPEG baseline, JPEG lossless SV1, JPEG-LS lossless/near-lossless, JPEG 2000
lossless/lossy, JPEG 2000 in a JP2 wrapper), with the header features whose parsing can fail (windows, VOI LUT,
rescale, padding, spacing, view code, MONOCHROME1, signed data), plus 8/16-bit PNG, PGM and JPEG. Mutations are
deterministic for a given `random.Random`: byte flips, random bytes, truncation, chunk duplication/deletion,
"header-aware" ones that overwrite the value of a known tag (Rows, Columns, BitsAllocated, RescaleSlope, ...)
with extreme values, since those reach the decoders with inconsistent sizes, "codestream-aware" ones that do the
same to the sizes declared inside the compressed pixel data (JPEG/JPEG-LS frame header, JPEG 2000 SIZ, RLE
segment header: 0, huge, off by one, truncated marker segments; issue 25), and a deflate bomb (a deflated
dataset whose Pixel Data inflates to up to 400 MB from a file of a few hundred KB).
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from dicom_factory import first_frame, jp2_wrap, make_dataset, phantom, replace_frame, write_deflated, write_dicom

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
    # JPEG 2000 in a JP2 file wrapper (not what DICOM prescribes, but seen in the wild and decoded)
    j2k = next(p for p in paths if p.name == "j2k-lossless.dcm")
    paths.append(replace_frame(j2k, jp2_wrap(first_frame(j2k), *image.shape), folder / "jp2.dcm"))
    paths.append(write_deflated(folder / "deflated.dcm", make_dataset(image, bits_stored=12, **rich)))
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


# mutation kinds, see apply_mutation: 0-5 byte-level, then the structure-aware ones
OP_TAG, OP_CODESTREAM, OP_DEFLATE = 6, 7, 8
N_OPS = 9
OP_NAMES = ("bitflip", "overwrite", "truncate", "delete", "duplicate", "extreme-u16", "tag", "codestream", "deflate")


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
    elif op == OP_TAG:  # a header-aware mutation: an extreme value in a known tag
        _overwrite_tag(data, where, value)
    elif op == OP_CODESTREAM:  # an extreme size inside the compressed pixel data
        mutate_codestream(data, where, value)
    else:  # a deflated dataset whose pixel data inflates huge
        make_deflate_bomb(data, value)


# --- codestream-aware mutations (issue 25) ----------------------------------------------------------------------

# Values for the declared sizes: 0, tiny, off by one from the seeds' 40 x 32, the 16-bit maximum, and (for 32-bit
# fields) 60000 x 60000-scale and 2^31 - 1 / 2^32 - 1.
_EXTREME_SIZES = [0, 1, 2, 31, 33, 39, 41, 60000, 65535, 1 << 16, 1 << 20, 0x7FFFFFFF, 0xFFFFFFFF]
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


def _marker_segments(data: bytearray, soi: int) -> list[tuple[int, int]]:
    """(offset, marker) of the JPEG marker segments from the SOI at `soi` up to and including SOS (at most 64)."""
    found: list[tuple[int, int]] = []
    pos = soi + 2
    while pos + 4 <= len(data) and len(found) < 64 and data[pos] == 0xFF:
        marker = data[pos + 1]
        found.append((pos, marker))
        if marker == 0xDA:
            break
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return found


def _mutate_jpeg(data: bytearray, soi: int, where: int, value: int) -> None:
    segments = _marker_segments(data, soi)
    sofs = [pos for pos, marker in segments if marker in _SOF_MARKERS]
    field = where % 6
    if field < 4 and sofs:  # the frame header: Y, X, P or Nf
        at = sofs[0] + {0: 5, 1: 7, 2: 4, 3: 9}[field]
        width = 2 if field < 2 else 1
        size = _EXTREME_SIZES[value % len(_EXTREME_SIZES)] & (0xFFFF if width == 2 else 0xFF)
        data[at : at + width] = size.to_bytes(width, "big")
    elif segments:  # a marker segment length: 0, 1, one short, one long, past the end
        pos, _ = segments[where // 6 % len(segments)]
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        lengths = [0, 1, max(0, length - 1), min(0xFFFF, length + 1), 0xFFFF]
        data[pos + 2 : pos + 4] = lengths[value % len(lengths)].to_bytes(2, "big")


def _mutate_j2k(data: bytearray, soc: int, where: int, value: int) -> None:
    # SIZ fields after SOC(2) SIZ(2): Lsiz(2) Rsiz(2) Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz XTOsiz YTOsiz (4) Csiz(2)
    offsets = [(4, 2), (8, 4), (12, 4), (16, 4), (20, 4), (24, 4), (28, 4), (40, 2), (42, 1)]
    rel, width = offsets[where % len(offsets)]
    at = soc + rel
    if at + width > len(data):
        return
    size = _EXTREME_SIZES[value % len(_EXTREME_SIZES)] & ((1 << (8 * width)) - 1)
    data[at : at + width] = size.to_bytes(width, "big")
    if where // len(offsets) % 2 and rel in (8, 12):  # also the tile size, so that the image stays one tile
        data[at + 16 : at + 20] = size.to_bytes(4, "big")


def _rle_frame(data: bytearray) -> int:
    """Offset of the first RLE frame (after the Basic Offset Table item) of an encapsulated Pixel Data, or -1."""
    pos = data.rfind(_TAGS["PixelData"])
    if pos < 0 or pos + 28 > len(data) or data[pos + 12 : pos + 16] != b"\xfe\xff\x00\xe0":
        return -1
    bot_length = struct.unpack_from("<I", data, pos + 16)[0]
    frame = pos + 20 + bot_length + 8  # BOT item header + value, then the frame's item header
    return frame if frame + 64 <= len(data) else -1


def mutate_codestream(data: bytearray, where: int, value: int) -> None:
    """Overwrite a size declared inside compressed pixel data: a JPEG / JPEG-LS frame header field or marker
    segment length, a JPEG 2000 SIZ field, or the RLE segment count / an offset. No-op for other files."""
    if data[128:132] != b"DICM":
        return
    soc = data.find(b"\xff\x4f\xff\x51", 132)
    if soc >= 0:
        _mutate_j2k(data, soc, where, value)
        return
    soi = data.find(b"\xff\xd8\xff", 132)
    if soi >= 0:
        _mutate_jpeg(data, soi, where, value)
        return
    frame = _rle_frame(data)
    if frame >= 0 and b"1.2.840.10008.1.2.5" in data[132:400]:
        k = where % 16  # the segment count (0) or one of the 15 offsets
        struct.pack_into("<I", data, frame + 4 * k, _EXTREME_SIZES[value % len(_EXTREME_SIZES)])


# --- deflate bombs (issue 25) -------------------------------------------------------------------------------------

_DEFLATED_UID = b"1.2.840.10008.1.2.1.99"  # 22 characters: even, no padding
_EXPLICIT_LE_UID = b"1.2.840.10008.1.2.1\x00"
_BOMB_PIXEL_BYTES = [1 << 20, 20_000_000, 100_000_000, 400_000_000, 0xFFFFFFFE]
_ZERO_BLOCK_BYTES = 1 << 20


def _zero_blocks() -> tuple[bytes, bytes]:
    """(1 MiB of zeros as self-contained, byte-aligned non-final deflate blocks; an empty final block).

    Blocks from a fresh compressor reference nothing before them, so they can follow any byte-aligned deflate
    data: a 400 MB bomb is 400 copies of ~1 KB, built in no time.
    """
    zeros = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = zeros.compress(bytes(_ZERO_BLOCK_BYTES)) + zeros.flush(zlib.Z_SYNC_FLUSH)
    final = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return block, final.flush(zlib.Z_FINISH)


_ZERO_BLOCK, _FINAL_BLOCK = _zero_blocks()


def _meta_end(data: bytearray) -> int:
    """End of the file meta group from its group length (0002,0000), or -1."""
    if len(data) < 144 or data[128:132] != b"DICM" or data[132:140] != b"\x02\x00\x00\x00UL\x04\x00":
        return -1
    end = 144 + struct.unpack_from("<I", data, 140)[0]
    return end if end <= len(data) else -1


def make_deflate_bomb(data: bytearray, value: int) -> None:
    """Turn a deflated or Explicit VR Little Endian DICOM into a deflated one whose Pixel Data (the last element)
    declares and inflates to one of `_BOMB_PIXEL_BYTES` zeros. No-op for other files."""
    meta_end = _meta_end(data)
    if meta_end < 0:
        return
    ts_at = data.find(b"\x02\x00\x10\x00UI", 144, meta_end)
    if ts_at < 0:
        return
    ts_len = struct.unpack_from("<H", data, ts_at + 6)[0]
    ts = bytes(data[ts_at + 8 : ts_at + 8 + ts_len])
    body = bytes(data[meta_end:])
    if ts == _DEFLATED_UID:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            body = inflater.decompress(body, 1 << 22)  # the seed's dataset: a few KB (4 MiB is plenty)
        except zlib.error:
            return
    elif ts != _EXPLICIT_LE_UID:
        return
    pixel_at = body.rfind(_TAGS["PixelData"])
    if pixel_at < 0:
        return
    pixel_bytes = _BOMB_PIXEL_BYTES[value % len(_BOMB_PIXEL_BYTES)]
    head = body[:pixel_at] + _TAGS["PixelData"] + b"OW\x00\x00" + struct.pack("<I", pixel_bytes)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = deflater.compress(head) + deflater.flush(zlib.Z_SYNC_FLUSH)
    stream += _ZERO_BLOCK * -(-min(pixel_bytes, 400_000_000) // _ZERO_BLOCK_BYTES) + _FINAL_BLOCK
    meta = bytearray(data[:meta_end])
    if ts != _DEFLATED_UID:  # the UID grows by 2 bytes: the element length and the group length follow
        meta[ts_at + 8 : ts_at + 8 + ts_len] = _DEFLATED_UID
        struct.pack_into("<H", meta, ts_at + 6, len(_DEFLATED_UID))
        struct.pack_into("<I", meta, 140, struct.unpack_from("<I", meta, 140)[0] + len(_DEFLATED_UID) - ts_len)
    data[:] = meta + stream


def mutate(seed: bytes, rng: random.Random, ops: list[int] | None = None) -> bytes:
    """One mutated copy of `seed`: 1-4 random mutations (the long-running fuzzer's generator); the kinds that
    changed the data are appended to `ops` when given."""
    data = bytearray(seed)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(N_OPS)
        before = bytes(data) if ops is not None else b""
        apply_mutation(data, op, rng.randrange(1 << 30), rng.randrange(1 << 30))
        if ops is not None and data != before:
            ops.append(op)
    return bytes(data)


# mutation kinds whose inputs the fuzzers also count on their own: the structure-aware ones of issue 25
TRACKED = {OP_CODESTREAM: "codestream", OP_DEFLATE: "deflate"}


def mutant(seeds: list[Path], rng_seed: int) -> tuple[Path, bytes, list[int]]:
    """Input number `rng_seed` of a fuzz run: (its seed file, the mutated bytes, the mutation kinds applied).

    The one numbering both fuzzers use (benchmarks/fuzz_reader.py reads the bytes, benchmarks/fuzz_service.py
    uploads them), so an input is replayed by its seed file name and number in either.
    """
    seed_path = seeds[rng_seed % len(seeds)]
    ops: list[int] = []
    return seed_path, mutate(seed_path.read_bytes(), random.Random(rng_seed), ops), ops
