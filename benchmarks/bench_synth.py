"""Benchmark of `mammokit synth`: 100 images at 1152 x 896 on one core (target: under 30 s).

Measures, in one process:
* baseline: one 1/f^3 texture field per image (one inverse real FFT), the floor of any such renderer;
* render: `render_woman` for 25 women x 4 views (float images, breast and lesion masks);
* cbis-ddsm: `generate(out, SynthConfig(layout="cbis-ddsm"))` writing DICOMs (RLE) + CSVs for the same number
  of views (fsync'ed, atomic writes), reported per full image.
Reports seconds and the ratio to the baseline (ratios travel between machines better than seconds).

Usage: .venv/bin/python benchmarks/bench_synth.py [--images 100] [--height 1152] [--width 896] [--strict]
(--strict: exit 1 when rendering 100 images takes 30 s or more.)
"""

from __future__ import annotations

import os

# One core: pin the BLAS/OpenMP pools before numpy is imported (scipy.fft is called with workers=1).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from mammokit.synth import SynthConfig, generate, render_woman, sample_women  # noqa: E402
from mammokit.synth.render import power_law_noise  # noqa: E402

TARGET_S = 30.0  # for 100 images at 1152 x 896


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100, help="number of images (multiple of 4)")
    parser.add_argument("--height", type=int, default=1152)
    parser.add_argument("--width", type=int, default=896)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strict", action="store_true", help="exit 1 if the render target is missed")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    n_women = max(args.images // 4, 1)
    n_images = 4 * n_women
    size = (args.height, args.width)
    women = sample_women(n_women, args.seed)
    render_woman(women[0], height=64, width=64)  # warm imports

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(n_images):
        power_law_noise(rng, size, beta=3.0)
    baseline = time.perf_counter() - t0

    t0 = time.perf_counter()
    n_lesion_views = 0
    for woman in women:
        for view in render_woman(woman, height=args.height, width=args.width):
            n_lesion_views += bool(view.lesions)
    render = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        # CBIS-DDSM holds only views with lesions: ask for enough women to write about n_images full images.
        cfg = SynthConfig(layout="cbis-ddsm", women=n_women * 2, seed=args.seed, height=args.height, width=args.width)
        summary = generate(Path(tmp) / "cbis", cfg)
        write_per_image = summary["seconds"] / summary["images"]

    scaled_100 = render / n_images * 100
    print(f"synth benchmark: {n_images} images at {args.height} x {args.width}, one core")
    print(f"{'step':<34}{'seconds':>10}{'per image':>12}{'x baseline':>12}")
    print(f"{'baseline (one 1/f^3 field)':<34}{baseline:>10.2f}{baseline / n_images:>12.3f}{1.0:>12.2f}")
    print(f"{'render (render_woman)':<34}{render:>10.2f}{render / n_images:>12.3f}{render / baseline:>12.2f}")
    print(
        f"{'cbis-ddsm write (' + str(summary['images']) + ' full images)':<34}{summary['seconds']:>10.2f}"
        f"{write_per_image:>12.3f}{write_per_image * n_images / baseline:>12.2f}"
    )
    met = scaled_100 < TARGET_S
    print(f"render time for 100 images: {scaled_100:.1f} s (target < {TARGET_S:.0f} s): {'met' if met else 'MISSED'}")
    print(f"cbis-ddsm layout, 100 full images incl. ROI DICOMs and CSVs: {write_per_image * 100:.1f} s")
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
