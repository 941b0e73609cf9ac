"""Issue 25 (items 1, 2): sizes declared inside compressed pixel data, and deflate bombs, are refused before
any memory is spent on them.

* A codestream (JPEG SOFn, JPEG-LS SOF55, JPEG 2000 SIZ, bare or in a JP2 wrapper) declaring 0 x N, 60000 x 60000
  or a size other than Rows x Columns, and an RLE segment header inconsistent with the image, are a
  `MammogramReadError` naming the file, the header's size and the codestream's, raised before the decoder runs:
  `mammokit.io.dicom._decode` (the reader's only way into pydicom's and pylibjpeg's decoders) is replaced by a
  function that records any call, and the test fails if there was one.
* A Deflated Explicit VR Little Endian file whose pixel data inflates far beyond its header is refused while
  inflating, with a traced peak far below its inflated size.
* Good compressed and deflated files still read, with the pixels pydicom decodes.
"""

from __future__ import annotations

import contextlib
import re
import struct
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

import mammokit.io.dicom as dicom
from dicom_factory import (
    first_frame,
    jp2_wrap,
    make_dataset,
    phantom,
    replace_frame,
    rle_with_header,
    sof_offset,
    with_declared_size,
    write_deflate_bomb,
    write_deflated,
    write_dicom,
)
from mammokit.io.codestream import CodestreamError, parse_j2k, parse_jpeg, parse_rle_header
from mammokit.io.dicom import MammogramReadError, read_mammogram, read_mammogram_bytes, read_mask_file

SHAPE = (40, 32)
# name -> (dicom_factory syntax, 8-bit data?, codestream family in messages)
SYNTAXES = {
    "jpeg-baseline": ("jpeg-baseline", True, "JPEG"),
    "jpeg-lossless": ("jpeg-lossless", False, "JPEG"),
    "jpeg-ls": ("jpeg-ls", False, "JPEG-LS"),
    "jpeg2000": ("jpeg2000-lossless", False, "JPEG 2000"),
}
BAD_SIZES = [(0, 32), (40, 0), (60000, 60000), (41, 32), (32, 40)]


def _good(folder: Path, name: str) -> Path:
    syntax, eight_bit, _ = SYNTAXES[name]
    image = phantom(SHAPE, bits=12, seed=7)
    pixels = (image >> 4).astype(np.uint8) if eight_bit else image
    return write_dicom(folder / f"good-{name}.dcm", make_dataset(pixels, bits_stored=8 if eight_bit else 12), syntax)


@pytest.fixture
def no_decoder(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any call of the reader's decoder entry point fails the test: the refusal must come first.

    Recorded and asserted after the test, not raised: the reader turns every exception of its decoding step,
    pytest's own `Failed` included, into a MammogramReadError, which the test expects anyway.
    """
    calls: list[str] = []

    def decode(ds, path):  # type: ignore[no-untyped-def]
        calls.append(str(path))
        raise RuntimeError("the decoder must not run")

    monkeypatch.setattr(dicom, "_decode", decode)
    yield
    assert not calls, f"the decoder ran on {calls}"


@pytest.mark.parametrize("name", list(SYNTAXES))
@pytest.mark.parametrize("rows,cols", BAD_SIZES)
def test_codestream_size_other_than_the_header_is_refused_before_decoding(tmp_path, no_decoder, name, rows, cols):
    good = _good(tmp_path, name)
    bad = replace_frame(good, with_declared_size(first_frame(good), rows, cols), tmp_path / "bad.dcm")
    codec = SYNTAXES[name][2]
    with pytest.raises(MammogramReadError) as info:
        read_mammogram(bad)
    message = str(info.value)
    assert str(bad) in message
    assert (
        f"the header declares 40 x 32 pixels (Rows x Columns) but its {codec} codestream declares {rows} x {cols}"
        in message
    )
    assert ("over the limit" in message) == (rows * cols > 100_000_000)
    # the in-memory reader of the HTTP service refuses it the same way
    with pytest.raises(MammogramReadError, match=f"codestream declares {rows} x {cols}"):
        read_mammogram_bytes(bad.read_bytes(), name="upload.dcm")


@pytest.mark.parametrize("rows,cols", [(0, 32), (60000, 60000), (41, 32)])
def test_jp2_wrapped_codestream_is_checked_too(tmp_path, no_decoder, rows, cols):
    good = _good(tmp_path, "jpeg2000")
    codestream = with_declared_size(first_frame(good), rows, cols)
    bad = replace_frame(good, jp2_wrap(codestream, rows, cols), tmp_path / "jp2.dcm")
    with pytest.raises(MammogramReadError, match=f"40 x 32 pixels .* JPEG 2000 codestream declares {rows} x {cols}"):
        read_mammogram(bad)
    # an ihdr box that agrees with the header cannot hide the codestream's size
    liar = replace_frame(good, jp2_wrap(codestream, 40, 32), tmp_path / "liar.dcm")
    with pytest.raises(MammogramReadError, match="JP2 image header box declares 40 x 32"):
        read_mammogram(liar)


def test_jpeg_ls_oversize_dimension_segment_is_checked(tmp_path, no_decoder):
    """JPEG-LS may put the size in an LSE segment (id 4) with 0 x 0 in SOF55: that size is what counts."""
    good = _good(tmp_path, "jpeg-ls")
    frame = with_declared_size(first_frame(good), 0, 0)
    at = sof_offset(frame)
    end = at + 2 + int.from_bytes(frame[at + 2 : at + 4], "big")
    lse = b"\xff\xf8" + struct.pack(">HBBII", 2 + 2 + 8, 4, 4, 60000, 60000)  # id 4, Wxy = 4 bytes per value
    bad = replace_frame(good, frame[:end] + lse + frame[end:], tmp_path / "lse.dcm")
    with pytest.raises(MammogramReadError, match=r"JPEG-LS codestream declares 60000 x 60000 = 3600\.0 Mpixels, over"):
        read_mammogram(bad)


def test_components_and_precision_must_fit_the_header(tmp_path, no_decoder):
    good = _good(tmp_path, "jpeg-lossless")
    frame = bytearray(first_frame(good))
    at = sof_offset(bytes(frame))
    frame[at + 4] = 17  # precision 17 > BitsAllocated 16
    bad = replace_frame(good, bytes(frame), tmp_path / "precision.dcm")
    with pytest.raises(MammogramReadError, match="BitsAllocated 16 but its JPEG codestream a precision of 17"):
        read_mammogram(bad)
    frame[at + 4] = 12
    # three components (Lf grows by 6 bytes): a colour codestream under a grayscale header
    length = int.from_bytes(frame[at + 2 : at + 4], "big")
    sof = bytes(frame[at : at + 2]) + (length + 6).to_bytes(2, "big") + bytes(frame[at + 4 : at + 9]) + b"\x03"
    sof += bytes(frame[at + 10 : at + 13]) + b"\x02\x11\x00\x03\x11\x00"
    bad = replace_frame(good, bytes(frame[:at]) + sof + bytes(frame[at + 2 + length :]), tmp_path / "rgb.dcm")
    with pytest.raises(MammogramReadError, match="1 sample\\(s\\) per pixel but its JPEG codestream 3 component"):
        read_mammogram(bad)


def _without_sof(frame: bytes) -> bytes:
    at = sof_offset(frame)
    return frame[:at] + frame[at + 2 + int.from_bytes(frame[at + 2 : at + 4], "big") :]


@pytest.mark.parametrize(
    "damage,reason",
    [
        (lambda f: f[: sof_offset(f) + 6], "truncated"),  # cut inside the frame header
        (_without_sof, "scan \\(SOS\\) before any frame header"),
        (lambda f: b"\x00\x00" + f[2:], "does not start with the SOI marker"),
        (lambda f: f[:2] + b"\xff\xd9" + f[2:], "ends \\(EOI\\) before its first scan"),
        (lambda f: f[: sof_offset(f) + 2] + b"\xff\xff" + f[sof_offset(f) + 4 :], "truncated or damaged"),
    ],
    ids=["truncated-sof", "no-sof", "no-soi", "eoi-first", "length-past-end"],
)
def test_unparsable_jpeg_codestream_is_a_read_error(tmp_path, no_decoder, damage, reason):
    good = _good(tmp_path, "jpeg-lossless")
    bad = replace_frame(good, damage(first_frame(good)), tmp_path / "bad.dcm")
    with pytest.raises(MammogramReadError, match=f"cannot be checked before decoding: .*{reason}") as info:
        read_mammogram(bad)
    assert str(bad) in str(info.value)


def test_unparsable_j2k_codestream_is_a_read_error(tmp_path, no_decoder):
    good = _good(tmp_path, "jpeg2000")
    frame = first_frame(good)
    for damaged, reason in (
        (frame[:30], "SIZ marker segment is truncated"),
        (b"\xff\x4f\xff\x52" + frame[4:], "starts with neither SOC \\+ SIZ"),
        (frame[:24] + bytes(4) + frame[28:], "tile size of 0"),
    ):
        bad = replace_frame(good, damaged, tmp_path / "bad.dcm")
        with pytest.raises(MammogramReadError, match=f"cannot be checked before decoding: .*{reason}"):
            read_mammogram(bad)


@pytest.mark.parametrize(
    "segments,offsets,reason",
    [
        (0, None, "declares 0 segments but the image needs 2"),
        (0xFFFFFFFF, None, "declares 4294967295 segments but the image needs 2"),
        (1, None, "declares 1 segments but the image needs 2"),
        (3, None, "declares 3 segments but the image needs 2"),
        (2, [64, 1 << 30], "past the end of the"),
        (2, [64, 64], "offsets do not increase"),
        (2, [0, 100], "first RLE segment starts at byte 0"),
    ],
)
def test_inconsistent_rle_header_is_refused_before_decoding(tmp_path, no_decoder, segments, offsets, reason):
    good = write_dicom(tmp_path / "good.dcm", make_dataset(phantom(SHAPE), bits_stored=12), "rle")
    bad = replace_frame(good, rle_with_header(first_frame(good), segments, offsets), tmp_path / "bad.dcm")
    with pytest.raises(MammogramReadError, match=reason) as info:
        read_mammogram(bad)
    assert str(bad) in str(info.value) and "RLE Lossless pixel data" in str(info.value)


@pytest.mark.parametrize("name", [*SYNTAXES, "jpeg2000-jp2", "rle", "jpeg-ls-near"])
def test_good_compressed_files_still_read_with_the_same_pixels(tmp_path, name):
    if name == "rle" or name == "jpeg-ls-near":
        image = phantom(SHAPE, bits=12, seed=7)
        ds = make_dataset(image, bits_stored=12)
        if name == "jpeg-ls-near":
            ds.compress(pydicom.uid.JPEGLSNearLossless, jls_error=2)
        path = write_dicom(tmp_path / f"{name}.dcm", ds, "rle" if name == "rle" else None)
    elif name == "jpeg2000-jp2":
        good = _good(tmp_path, "jpeg2000")
        path = replace_frame(good, jp2_wrap(first_frame(good), *SHAPE), tmp_path / "jp2.dcm")
    else:
        path = _good(tmp_path, name)
    expected = pydicom.dcmread(path).pixel_array  # pydicom's own decode, no check in the way
    pixels, meta = read_mammogram(path, voi="none")
    assert (meta.height, meta.width) == SHAPE
    np.testing.assert_array_equal(pixels, expected.astype(np.float32))
    if name in ("jpeg-lossless", "jpeg-ls", "jpeg2000", "jpeg2000-jp2", "rle"):  # lossless: the original phantom
        np.testing.assert_array_equal(pixels, phantom(SHAPE, bits=12, seed=7).astype(np.float32))


def test_mask_reader_checks_the_codestream_too(tmp_path, no_decoder):
    good = _good(tmp_path, "jpeg-ls")
    bad = replace_frame(good, with_declared_size(first_frame(good), 60000, 60000), tmp_path / "mask.dcm")
    with pytest.raises(MammogramReadError, match="JPEG-LS codestream declares 60000 x 60000"):
        read_mask_file(bad)


# --- the parsers on their own ----------------------------------------------------------------------------------


def test_j2k_tile_count_is_bounded():
    """A SIZ with 1 x 1 tiles over 1000 x 1000 pixels: OpenJPEG would allocate per-tile state for 10^6 tiles."""
    siz = struct.pack(">HHIIIIIIIIH", 41, 0, 1000, 1000, 0, 0, 1, 1, 0, 0, 1) + b"\x0b\x01\x01"
    with pytest.raises(CodestreamError, match="1000000 tiles, more than 65535"):
        parse_j2k(b"\xff\x4f\xff\x51" + siz + b"\xff\x90")


def test_parsers_never_read_past_the_data():
    """Every prefix of a valid codestream is either parsed or a CodestreamError, never another exception."""
    jpeg = b"\xff\xd8\xff\xe0\x00\x04ab\xff\xc0\x00\x0b\x08\x00\x28\x00\x20\x01\x01\x11\x00\xff\xda\x00\x02"
    assert parse_jpeg(jpeg).rows == 40
    siz = struct.pack(">HHIIIIIIIIH", 41, 0, 32, 40, 0, 0, 32, 40, 0, 0, 1) + b"\x0b\x01\x01"
    j2k = b"\xff\x4f\xff\x51" + siz
    assert (parse_j2k(j2k).rows, parse_j2k(j2k).columns, parse_j2k(j2k).precision) == (40, 32, 12)
    jp2 = jp2_wrap(j2k, 40, 32)
    assert parse_j2k(jp2).rows == 40
    rle = struct.pack("<16I", 2, 64, 70, *[0] * 13) + bytes(10)
    assert parse_rle_header(rle, 2).offsets == (64, 70)
    for data, parse in (
        (jpeg, parse_jpeg),
        (j2k, parse_j2k),
        (jp2, parse_j2k),
        (rle, lambda d: parse_rle_header(d, 2)),
    ):
        for cut in range(len(data) - 1):
            with contextlib.suppress(CodestreamError):
                parse(data[:cut])


# --- deflate ---------------------------------------------------------------------------------------------------


def _traced_peak(fn) -> int:  # type: ignore[no-untyped-def]
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _refused_with_peak(path: Path) -> tuple[int, str]:
    """(peak traced bytes, message) of `read_mammogram(path)`, which must refuse the file with MammogramReadError."""
    errors: list[str] = []

    def read() -> None:
        with pytest.raises(MammogramReadError) as info:
            read_mammogram(path)
        errors.append(str(info.value))

    return _traced_peak(read), errors[0]


def test_good_deflated_file_still_reads(tmp_path):
    image = phantom(SHAPE, bits=12, seed=3)
    plain = write_dicom(tmp_path / "plain.dcm", make_dataset(image, bits_stored=12, windows=[(2047, 4095)]))
    deflated = write_deflated(tmp_path / "deflated.dcm", make_dataset(image, bits_stored=12, windows=[(2047, 4095)]))
    assert deflated.stat().st_size < plain.stat().st_size
    expected, _ = read_mammogram(plain)
    pixels, meta = read_mammogram(deflated)
    np.testing.assert_array_equal(pixels, expected)
    assert meta.transfer_syntax == "1.2.840.10008.1.2.1.99" and meta.view == "CC"
    np.testing.assert_array_equal(read_mammogram_bytes(deflated.read_bytes(), name="up.dcm")[0], expected)
    # a larger genuine image (past the 4 MiB window in which the header is read) inflates fully
    big = phantom((2048, 1536), bits=12, seed=5)
    path = write_deflated(tmp_path / "big.dcm", make_dataset(big, bits_stored=12))
    np.testing.assert_array_equal(read_mammogram(path, voi="none")[0], big.astype(np.float32))


def test_deflate_bomb_is_refused_while_inflating(tmp_path):
    """400 MB of zeros deflate to ~390 KB; the header declares 40 x 32: refused after ~17 MB, not 400 MB."""
    inflated = 400_000_000
    bomb = write_deflate_bomb(tmp_path / "bomb.dcm", inflated)
    assert bomb.stat().st_size < 500_000
    peak, error = _refused_with_peak(bomb)
    assert peak < 30e6, f"peak {peak / 1e6:.0f} MB while refusing a {inflated / 1e6:.0f} MB bomb"
    assert str(bomb) in error and "40 x 32 (16-bit) image its header declares" in error
    assert "decompression bomb" in error
    # the in-memory path (HTTP uploads) too
    data = bomb.read_bytes()

    def read_bytes() -> None:
        with pytest.raises(MammogramReadError, match=r"bomb\.dcm: the deflated dataset inflates to more than"):
            read_mammogram_bytes(data, name="bomb.dcm")

    assert _traced_peak(read_bytes) < 30e6


def test_deflate_limit_follows_max_pixels_when_the_header_is_no_help(tmp_path, monkeypatch):
    """A header declaring a large image (or one not readable from the first MiB): the fixed limit from
    MAMMOKIT_MAX_PIXELS holds from the first byte: 2 bytes per pixel + 16 MiB."""
    monkeypatch.setenv("MAMMOKIT_MAX_PIXELS", "1000000")
    bomb = write_deflate_bomb(tmp_path / "bomb.dcm", 100_000_000, rows=4000, columns=3000)
    peak, error = _refused_with_peak(bomb)
    limit = dicom.deflated_size_limit(1_000_000)
    assert limit == 2_000_000 + dicom.DEFLATE_HEADER_ALLOWANCE
    assert peak < limit + 8e6, f"peak {peak / 1e6:.0f} MB, limit {limit / 1e6:.0f} MB"
    assert f"more than {limit / 1e6:.1f} MB" in error and "1.0 Mpixels" in error
    assert "MAMMOKIT_MAX_PIXELS" in error


def test_deflated_dataset_without_a_declared_image_stops_at_the_header_window(tmp_path):
    """No Rows (or a damaged header) within the first 4 MiB: refused there, before pydicom parses the rest (zeros
    after a damaged element parse as one element per 8 bytes: seconds and hundreds of MB for 20 MB)."""
    bomb = write_deflate_bomb(tmp_path / "bomb.dcm", 20_000_000, drop=["Rows"])
    peak, error = _refused_with_peak(bomb)
    assert "declares no image (Rows, Columns and BitsAllocated before its Pixel Data) in its first 4.2 MB" in error
    assert peak < 3 * dicom.DEFLATE_HEADER_WINDOW + 4e6, f"peak {peak / 1e6:.0f} MB"
    # a small dataset without Rows is read (the reader then says what is missing)
    small = write_deflate_bomb(tmp_path / "small.dcm", 2560, drop=["Rows"])
    with pytest.raises(MammogramReadError, match="zero-size image"):
        read_mammogram(small)


def test_truncated_or_corrupt_deflate_stream_is_a_read_error(tmp_path):
    path = write_deflated(tmp_path / "d.dcm", make_dataset(phantom(SHAPE), bits_stored=12))
    data = path.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[:-20])
    with pytest.raises(MammogramReadError, match="truncated"):
        read_mammogram(truncated)
    corrupt = tmp_path / "corrupt.dcm"
    corrupt.write_bytes(data[:-300] + b"\xff" * 300)
    with pytest.raises(MammogramReadError, match=re.escape(str(corrupt))):
        read_mammogram(corrupt)


def test_dataset_listing_reads_headers_and_roi_masks_through_the_bounded_reader(tmp_path, monkeypatch):
    """`prepare`'s main process reads every file's header (adapters) and decodes CBIS-DDSM ROI files to tell the
    mask from the crop: a deflate bomb is a DatasetError at ~17 MB, and a codestream declaring 60000 x 60000 is
    never handed to pydicom's decoder (the file is then simply not a mask)."""
    from mammokit.data.sources._common import DatasetError, read_dicom_header
    from mammokit.data.sources.cbis_ddsm import _is_binary_mask

    bomb = write_deflate_bomb(tmp_path / "bomb.dcm", 400_000_000)
    errors: list[str] = []

    def header() -> None:
        with pytest.raises(DatasetError) as info:
            read_dicom_header(bomb)
        errors.append(str(info.value))

    peak = _traced_peak(header)
    assert peak < 30e6, f"peak {peak / 1e6:.0f} MB while listing a 400 MB bomb"
    assert errors[0].startswith("bomb.dcm: ") and "decompression bomb" in errors[0]
    assert str(tmp_path) not in errors[0]  # the file's name only, as the adapters' messages
    good = _good(tmp_path, "jpeg2000")
    bad = replace_frame(good, with_declared_size(first_frame(good), 60000, 60000), tmp_path / "bad.dcm")
    decoded: list[str] = []
    real_pixel_array = pydicom.dataset.Dataset.pixel_array
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array",
                        property(lambda ds: decoded.append("x") or real_pixel_array.fget(ds)))  # fmt: skip
    assert _is_binary_mask(bad) is False and decoded == []
    assert _is_binary_mask(good) is False and decoded == ["x"]  # a grey image is decoded, and is not a mask
