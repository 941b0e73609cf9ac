"""Prepared-image PNG I/O: lossless round trips through the OpenCV encoder and the Pillow fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mammokit.io.images as images
from mammokit.io.images import encode_png, read_png8, read_png16, write_png8, write_png16


def _mammogram_like(seed: int = 0) -> np.ndarray:
    """uint16 (96, 72): black background, a textured bright region, a saturated corner."""
    rng = np.random.default_rng(seed)
    img = np.zeros((96, 72), np.uint16)
    img[10:90, :50] = rng.integers(15000, 50000, (80, 50), dtype=np.uint16)
    img[:4, -4:] = 65535
    return img


@pytest.mark.parametrize("encoder", ["default", "pillow"])
def test_png16_and_png8_round_trip_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoder: str) -> None:
    if encoder == "pillow":
        monkeypatch.setattr(images, "_cv2", lambda: None)  # as without OpenCV installed
    img = _mammogram_like()
    write_png16(tmp_path / "a.png", img)
    back = read_png16(tmp_path / "a.png")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, img)
    with Image.open(tmp_path / "a.png") as im:  # an ordinary 16-bit grayscale PNG for any reader
        assert im.mode.startswith("I") and im.size == (72, 96)
    mask = (img > 20000).astype(np.uint8) * 255
    write_png8(tmp_path / "m.png", mask)
    np.testing.assert_array_equal(read_png8(tmp_path / "m.png"), mask)


def test_opencv_and_pillow_encodings_decode_to_the_same_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("cv2")
    import io

    img = _mammogram_like(1)
    fast = encode_png(img)
    monkeypatch.setattr(images, "_cv2", lambda: None)
    slow = encode_png(img)
    decoded = [np.asarray(Image.open(io.BytesIO(b))) for b in (fast, slow)]
    np.testing.assert_array_equal(decoded[0], img)
    np.testing.assert_array_equal(decoded[1], img)


def test_write_png16_refuses_other_dtypes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2-D uint16"):
        write_png16(tmp_path / "x.png", np.zeros((4, 4), np.float32))
