"""`read_mammogram` on PNG (8/16-bit), PGM (8/16-bit) and JPEG files, and the real mini-MIAS PGMs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import shared_data_dir
from dicom_factory import phantom
from mammokit.io.dicom import MammogramReadError, read_mammogram


def _pgm16(path: Path, arr: np.ndarray) -> None:
    # binary PGM, maxval 65535: big-endian 16-bit samples (Netpbm spec)
    path.write_bytes(f"P5\n{arr.shape[1]} {arr.shape[0]}\n65535\n".encode() + arr.astype(">u2").tobytes())


CASES = [
    ("png8", "img.png", 8, lambda p, a: Image.fromarray(a).save(p), True),
    ("png16", "img.png", 16, lambda p, a: Image.fromarray(a).save(p), True),
    ("pgm8", "img.pgm", 8, lambda p, a: Image.fromarray(a).save(p), True),
    ("pgm16", "img.pgm", 16, _pgm16, True),
    ("jpeg", "img.jpg", 8, lambda p, a: Image.fromarray(a).save(p, quality=95), False),
    ("grey-rgb-png", "img.png", 8, lambda p, a: Image.fromarray(np.stack([a] * 3, -1)).save(p), True),
]


@pytest.mark.parametrize(("name", "file", "bits", "write", "exact"), CASES, ids=[c[0] for c in CASES])
def test_raster_formats(tmp_path: Path, name: str, file: str, bits: int, write, exact: bool) -> None:
    arr = phantom(bits=bits).astype(np.uint8 if bits == 8 else np.uint16)
    path = tmp_path / file
    write(path, arr)
    pixels, meta = read_mammogram(path)
    assert pixels.dtype == np.float32 and pixels.shape == arr.shape
    assert meta.bits_stored == bits and meta.extra["value_range"] == (0.0, float(2**bits - 1))
    assert meta.source_format == file.split(".")[1].replace("jpg", "jpeg")
    if exact:
        np.testing.assert_array_equal(pixels, arr.astype(np.float32))
    else:
        assert np.abs(pixels - arr).mean() < 3.0


def test_cbis_style_path_gives_laterality_and_view(tmp_path: Path) -> None:
    path = tmp_path / "Mass-Training_P_00001_LEFT_MLO.png"
    Image.fromarray(phantom(bits=8).astype(np.uint8)).save(path)
    _, meta = read_mammogram(path)
    assert (meta.laterality, meta.view, meta.extra["laterality_source"]) == ("L", "MLO", "pattern")


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        (
            "colour",
            lambda p: Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), np.uint8)).save(p),
            "colour image",
        ),
        ("truncated", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20), "not a readable PNG/PGM/JPEG"),
    ],
)
def test_bad_raster_files(tmp_path: Path, name: str, make, message: str) -> None:
    path = tmp_path / f"{name}.png"
    make(path)
    with pytest.raises(MammogramReadError, match=message):
        read_mammogram(path)


@pytest.mark.realdata
def test_real_mini_mias_pgm() -> None:
    path = shared_data_dir("mini-mias-dev") / "mdb001.pgm"
    pixels, meta = read_mammogram(path)
    assert pixels.shape == (1024, 1024) and meta.source_format == "pgm" and meta.bits_stored == 8
    assert 0 <= pixels.min() < pixels.max() <= 255
