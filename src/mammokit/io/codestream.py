"""The image size a compressed DICOM frame declares *inside* its codestream, read without decoding anything.

A DICOM header may say Rows x Columns = 40 x 32 and pass every limit while the JPEG / JPEG-LS / JPEG 2000
codestream in its Pixel Data declares 60000 x 60000 (or 0 rows): the decoder sizes its buffers from the
codestream, not from the header, and allocates without bound (a decompression bomb; `std::bad_alloc` took the
service down). `mammokit.io.dicom.check_declared_codestream` reads the declared size here and compares it with
the header before any decoder runs.

Small, bounded, pure-Python marker walks, one per family:

* JPEG (ITU-T T.81: baseline, extended, lossless, arithmetic) and JPEG-LS (ITU-T T.87): the marker segments
  from SOI up to the first SOS; the frame header (SOFn, or SOF55 = 0xFFF7 for JPEG-LS) gives the precision,
  rows, columns and components; a JPEG-LS LSE segment of id 4 (oversize image dimension) may replace them.
* JPEG 2000 (ITU-T T.800, also HTJ2K): the SIZ marker segment right after SOC, either in a bare codestream (what
  DICOM stores) or in the `jp2c` box of a JP2 file (seen in the wild), whose `ihdr` box must agree with it.
* RLE Lossless (DICOM PS3.5 Annex G): the 64-byte segment header: segment count and offsets.

The codecs' own header readers (pylibjpeg-openjpeg's `get_parameters`, pylibjpeg-libjpeg's `get_parameters`)
are not used: they run the native parsers this check guards against on the untrusted bytes (OpenJPEG allocates
its per-tile structures while reading SIZ), and pyjpegls has no header-only read. Each walk here touches every
byte at most once, allocates nothing proportional to what the header declares, and stops at the first scan.
Anything it cannot parse - a truncated marker segment, no frame header before the first scan, a wrong marker -
is a `CodestreamError` with the reason.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# DICOM transfer syntax UID -> codestream family (PS3.5 Table A-1, PS3.6 Annex A). Only the syntaxes whose
# pixel data carries its own image size are listed; native, deflated and unknown syntaxes map to None.
_JPEG = "JPEG"
_JPEG_LS = "JPEG-LS"
_J2K = "JPEG 2000"
_RLE = "RLE"
SYNTAX_FAMILIES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": _JPEG,  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": _JPEG,  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57": _JPEG,  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70": _JPEG,  # JPEG Lossless, Non-Hierarchical, First-Order Prediction (SV1)
    "1.2.840.10008.1.2.4.80": _JPEG_LS,  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": _JPEG_LS,  # JPEG-LS Lossy (Near-Lossless)
    "1.2.840.10008.1.2.4.90": _J2K,  # JPEG 2000 Image Compression (Lossless Only)
    "1.2.840.10008.1.2.4.91": _J2K,  # JPEG 2000 Image Compression
    "1.2.840.10008.1.2.4.201": _J2K,  # High-Throughput JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.202": _J2K,  # High-Throughput JPEG 2000 with RPCL Options (Lossless Only)
    "1.2.840.10008.1.2.4.203": _J2K,  # High-Throughput JPEG 2000
    "1.2.840.10008.1.2.5": _RLE,  # RLE Lossless
}

# T.81 Table B.1: start-of-frame markers (0xC4 DHT, 0xC8 JPG and 0xCC DAC are not frames); 0xF7 = SOF55 (T.87).
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
_SOI, _EOI, _SOS, _DHP, _EXP, _LSE = 0xD8, 0xD9, 0xDA, 0xDE, 0xDF, 0xF8
# markers without a length field: TEM and RST0-7 (SOI and EOI are handled on their own)
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})

_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"  # SOC, then SIZ immediately (T.800 A.5.1)
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"  # the JP2 signature box (T.800 I.5.1)
_J2K_MAX_TILES = 65535  # Isot, the tile index of SOT, is 16 bits (T.800 A.4.2): more tiles cannot be coded
_J2K_MAX_COMPONENTS = 16384  # Csiz range (T.800 Table A.9)

RLE_HEADER_BYTES = 64  # 16 little-endian uint32: the segment count, then 15 segment offsets (PS3.5 G.5)
RLE_MAX_SEGMENTS = 15


class CodestreamError(ValueError):
    """The codestream's header cannot be parsed (truncated, out of order, not the expected format)."""


@dataclass(frozen=True)
class DeclaredImage:
    """What a codestream declares about its image: the size a decoder will allocate for."""

    codec: str  # "JPEG", "JPEG-LS" or "JPEG 2000" (what the markers say, which may differ from the syntax)
    rows: int
    columns: int
    components: int
    precision: int  # bits per sample (the largest over the components for JPEG 2000)


@dataclass(frozen=True)
class RleHeader:
    """The RLE segment header of one frame: how many segments, and where each starts (bytes into the frame)."""

    segments: int
    offsets: tuple[int, ...]


def family_of_syntax(transfer_syntax: str) -> str | None:
    """The codestream family ("JPEG", "JPEG-LS", "JPEG 2000", "RLE") of a transfer syntax UID, else None."""
    return SYNTAX_FAMILIES.get(str(transfer_syntax))


def parse_jpeg(frame: bytes) -> DeclaredImage:
    """The frame header of a JPEG (T.81) or JPEG-LS (T.87) codestream: walks the marker segments from SOI to SOS.

    Bytes between marker segments that are not a marker are skipped up to the next 0xFF, as libjpeg does.

    Raises:
        CodestreamError: no SOI, a truncated or malformed marker segment, EOI or SOS before a frame header,
            two frame headers, a hierarchical (DHP) codestream, or the data ends before the first scan.
    """
    frame = bytes(frame)
    view = memoryview(frame)
    n = len(view)
    if n < 2 or view[0] != 0xFF or view[1] != _SOI:
        raise CodestreamError("not a JPEG codestream (it does not start with the SOI marker 0xFFD8)")
    pos = 2
    found: DeclaredImage | None = None
    oversize: tuple[int, int] | None = None  # JPEG-LS LSE id 4: (rows, columns)
    while True:  # every pass moves `pos` forward by at least 2 bytes: at most n / 2 passes, each O(bytes passed)
        if pos >= n:
            raise CodestreamError("the JPEG codestream ends before its first scan (no SOS marker)")
        if view[pos] != 0xFF:  # extraneous bytes: libjpeg skips them to the next 0xFF (with a warning), so do we
            pos = frame.find(b"\xff", pos)
            if pos < 0:
                raise CodestreamError("the JPEG codestream ends before its first scan (no SOS marker)")
        while pos < n and view[pos] == 0xFF:  # any number of 0xFF fill bytes may precede a marker (T.81 B.1.1.2)
            pos += 1
        if pos >= n:
            raise CodestreamError("the JPEG codestream ends inside a marker")
        marker = view[pos]
        pos += 1
        if marker in _STANDALONE:
            continue
        if marker == 0x00 or marker == _SOI:
            raise CodestreamError(f"unexpected JPEG marker 0xFF{marker:02X} at byte {pos - 2}")
        if marker == _EOI:
            raise CodestreamError("the JPEG codestream ends (EOI) before its first scan")
        if pos + 2 > n:
            raise CodestreamError(f"the JPEG marker segment 0xFF{marker:02X} is truncated (no length)")
        length = (view[pos] << 8) | view[pos + 1]  # counts itself, not the marker
        if length < 2 or pos + length > n:
            raise CodestreamError(
                f"the JPEG marker segment 0xFF{marker:02X} at byte {pos - 2} declares {length} bytes but "
                f"{n - pos} remain: it is truncated or damaged"
            )
        body = view[pos + 2 : pos + length]
        if marker in _SOF_MARKERS:
            if found is not None:
                raise CodestreamError("the JPEG codestream has two frame headers (SOF) before its first scan")
            found = _parse_sof(marker, body)
        elif marker in (_DHP, _EXP):
            raise CodestreamError("hierarchical JPEG (a DHP or EXP marker) is not supported")
        elif marker == _LSE and len(body) >= 1 and body[0] == 4:
            oversize = _parse_lse_oversize(body)
        elif marker == _SOS:
            if found is None:
                raise CodestreamError("the JPEG codestream starts a scan (SOS) before any frame header (SOF)")
            break
        pos += length
    assert found is not None  # the loop leaves only through the SOS branch, which requires a frame header
    if oversize is not None:
        # T.87 C.2.4.1.4: the oversize dimensions replace the frame header's; CharLS expects 0 there. A frame
        # header with other non-zero dimensions is a contradiction, whichever a decoder would believe.
        if found.rows and found.columns and (found.rows, found.columns) != oversize:
            raise CodestreamError(
                f"the JPEG-LS frame header declares {found.rows} x {found.columns} and its oversize-dimension "
                f"segment {oversize[0]} x {oversize[1]}"
            )
        found = DeclaredImage(found.codec, oversize[0], oversize[1], found.components, found.precision)
    return found


def _parse_sof(marker: int, body: memoryview) -> DeclaredImage:
    """SOFn / SOF55 body (after the length): P(1) Y(2) X(2) Nf(1), then Nf x (C, H/V, Tq) (T.81 B.2.2)."""
    if len(body) < 6:
        raise CodestreamError(f"the JPEG frame header (0xFF{marker:02X}) is truncated ({len(body)} bytes)")
    precision, rows, columns, components = body[0], (body[1] << 8) | body[2], (body[3] << 8) | body[4], body[5]
    if components < 1 or len(body) != 6 + 3 * components:
        raise CodestreamError(
            f"the JPEG frame header declares {components} components but holds {len(body)} bytes "
            f"(expected {6 + 3 * components})"
        )
    codec = _JPEG_LS if marker == 0xF7 else _JPEG
    return DeclaredImage(codec, rows, columns, components, precision)


def _parse_lse_oversize(body: memoryview) -> tuple[int, int]:
    """JPEG-LS LSE id 4 (T.87 C.2.4.1.4): Wxy(1) = bytes per value, then Y and X of Wxy bytes each."""
    if len(body) < 2:
        raise CodestreamError("the JPEG-LS oversize-dimension segment (LSE id 4) is truncated")
    width = body[1]
    if width not in (2, 3, 4) or len(body) != 2 + 2 * width:
        raise CodestreamError(f"the JPEG-LS oversize-dimension segment (LSE id 4) is malformed (Wxy={width})")
    rows = int.from_bytes(body[2 : 2 + width], "big")
    columns = int.from_bytes(body[2 + width : 2 + 2 * width], "big")
    return rows, columns


def parse_j2k(frame: bytes) -> DeclaredImage:
    """The SIZ marker segment of a JPEG 2000 codestream, bare (SOC + SIZ) or in the `jp2c` box of a JP2 file.

    Image size: Ysiz - YOsiz rows, Xsiz - XOsiz columns (the reference grid minus its offset, T.800 B.2), 0 when
    an offset is not below the size.

    Raises:
        CodestreamError: neither SOC + SIZ nor a JP2 signature, a truncated or inconsistent SIZ (tile size 0,
            more than 65535 tiles, a component subsampling of 0), or a JP2 file whose `ihdr` box disagrees.
    """
    data = bytes(frame[: len(_JP2_SIGNATURE)])
    if data.startswith(_J2K_SOC_SIZ):
        return _parse_siz(memoryview(frame))
    if data == _JP2_SIGNATURE:
        return _parse_jp2(memoryview(frame))
    raise CodestreamError(
        "not a JPEG 2000 codestream (it starts with neither SOC + SIZ, 0xFF4F 0xFF51, nor a JP2 signature box)"
    )


def _parse_siz(cs: memoryview) -> DeclaredImage:
    """SIZ (T.800 A.5.1): Lsiz(2) Rsiz(2) Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz XTOsiz YTOsiz (4 each) Csiz(2), then
    Csiz x (Ssiz, XRsiz, YRsiz), one byte each; `cs` starts at SOC."""
    if len(cs) < 42:  # SOC(2) SIZ(2) then 38 bytes up to and including Csiz
        raise CodestreamError(f"the JPEG 2000 SIZ marker segment is truncated ({len(cs)} bytes of codestream)")
    lsiz, _rsiz, xsiz, ysiz, xo, yo, xt, yt, xto, yto, csiz = struct.unpack_from(">HHIIIIIIIIH", cs, 4)
    if not 1 <= csiz <= _J2K_MAX_COMPONENTS or lsiz != 38 + 3 * csiz:
        raise CodestreamError(f"the JPEG 2000 SIZ marker segment is malformed (Lsiz={lsiz}, Csiz={csiz})")
    if len(cs) < 4 + lsiz:
        raise CodestreamError(f"the JPEG 2000 SIZ marker segment declares {lsiz} bytes but is truncated")
    if xt == 0 or yt == 0:
        raise CodestreamError("the JPEG 2000 SIZ marker segment declares a tile size of 0")
    if xto > xo or yto > yo or xto + xt <= xo or yto + yt <= yo:
        raise CodestreamError("the JPEG 2000 SIZ marker segment's first tile does not cover the image origin")
    tiles = -(-max(xsiz - xto, 0) // xt) * -(-max(ysiz - yto, 0) // yt)  # ceil divisions (T.800 B.3)
    if tiles > _J2K_MAX_TILES:
        raise CodestreamError(f"the JPEG 2000 codestream declares {tiles} tiles, more than {_J2K_MAX_TILES}")
    precision = 0
    for k in range(csiz):
        ssiz, xr, yr = cs[42 + 3 * k], cs[43 + 3 * k], cs[44 + 3 * k]
        if xr == 0 or yr == 0:
            raise CodestreamError(f"the JPEG 2000 component {k} has a subsampling factor of 0")
        precision = max(precision, (ssiz & 0x7F) + 1)  # Ssiz: bit depth - 1, top bit = signed
    return DeclaredImage(_J2K, max(ysiz - yo, 0), max(xsiz - xo, 0), csiz, precision)


def _parse_jp2(data: memoryview) -> DeclaredImage:
    """Walk the top-level boxes of a JP2 file to the contiguous codestream box `jp2c`; check `ihdr` against it."""
    ihdr: tuple[int, int, int] | None = None
    pos, n = 0, len(data)
    while pos + 8 <= n:  # each box is at least 8 bytes long: at most n / 8 passes
        box_len, box_type = struct.unpack_from(">I4s", data, pos)
        header = 8
        if box_len == 1:  # XLBox: a 64-bit length follows the type
            if pos + 16 > n:
                break
            box_len, header = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif box_len == 0:  # the last box: runs to the end of the data
            box_len = n - pos
        if box_len < header or pos + box_len > n:
            raise CodestreamError(f"the JP2 box {bytes(box_type)!r} at byte {pos} is truncated or malformed")
        content = data[pos + header : pos + box_len]
        if box_type == b"jp2h":
            ihdr = _parse_ihdr(content)
        elif box_type == b"jp2c":
            if not bytes(content[:4]) == _J2K_SOC_SIZ:
                raise CodestreamError("the JP2 codestream box does not start with SOC + SIZ")
            found = _parse_siz(content)
            if ihdr is not None and ihdr != (found.rows, found.columns, found.components):
                raise CodestreamError(
                    f"the JP2 image header box declares {ihdr[0]} x {ihdr[1]} x {ihdr[2]} components but its "
                    f"codestream {found.rows} x {found.columns} x {found.components}"
                )
            return found
        pos += box_len
    raise CodestreamError("the JP2 file has no codestream box (jp2c), or it is truncated")


def _parse_ihdr(jp2h: memoryview) -> tuple[int, int, int] | None:
    """(height, width, components) of the `ihdr` box, the first box inside the `jp2h` super box (T.800 I.5.3.1)."""
    if len(jp2h) < 8 + 14 or bytes(jp2h[4:8]) != b"ihdr":
        raise CodestreamError("the JP2 header box (jp2h) does not start with an image header box (ihdr)")
    height, width, components = struct.unpack_from(">IIH", jp2h, 8)
    return height, width, components


def parse_rle_header(frame: bytes, expected_segments: int) -> RleHeader:
    """The segment header of one RLE Lossless frame, checked against the segment count the DICOM header implies.

    Args:
        frame: the whole frame (header + segments).
        expected_segments: SamplesPerPixel x BitsAllocated / 8 (one segment per byte of each sample).

    Raises:
        CodestreamError: a frame shorter than its header, a segment count other than `expected_segments` (or
            outside 1..15), a first offset other than 64, offsets that do not increase or point past the frame.
    """
    if len(frame) < RLE_HEADER_BYTES:
        raise CodestreamError(f"the RLE frame is {len(frame)} bytes, shorter than its {RLE_HEADER_BYTES}-byte header")
    count, *offsets = struct.unpack_from("<16I", frame, 0)
    if not 1 <= count <= RLE_MAX_SEGMENTS or count != expected_segments:
        raise CodestreamError(
            f"the RLE header declares {count} segments but the image needs {expected_segments} "
            "(SamplesPerPixel x BitsAllocated / 8)"
        )
    used = tuple(offsets[:count])
    if used[0] != RLE_HEADER_BYTES:
        raise CodestreamError(f"the first RLE segment starts at byte {used[0]}, not right after the header (64)")
    for k in range(1, count):
        if used[k] <= used[k - 1]:
            raise CodestreamError(f"the RLE segment offsets do not increase (segment {k} starts at {used[k]})")
    if used[-1] >= len(frame):
        raise CodestreamError(
            f"the RLE segment {count - 1} starts at byte {used[-1]}, past the end of the {len(frame)}-byte frame"
        )
    return RleHeader(count, used)


def declared_image(frame: bytes, family: str) -> DeclaredImage:
    """The declared image of one frame of a "JPEG", "JPEG-LS" or "JPEG 2000" transfer syntax.

    JPEG and JPEG-LS share the marker walk (and some decoders read either), so the codec in the result is the
    one the frame header names.
    """
    if family in (_JPEG, _JPEG_LS):
        return parse_jpeg(frame)
    if family == _J2K:
        return parse_j2k(frame)
    raise ValueError(f"no declared image size in {family!r} frames")
