"""Benchmark: do the heatmaps point at the lesion? Pointing game and map mass per heatmap kind, with baselines.

On the malignant images of one split of a prepared dataset that have a malignant lesion mask, for a
trained whole-image run (and its patch run), it measures per heatmap kind (`explain.report_panels.MapKind`):

* **pointing game**: the map's maximum within the breast lies within `--tolerance-mm` (5 mm) of the
  union of the image's malignant lesion masks (metrics/localisation.py);
* **mass inside**: the fraction of the map's mass within the breast that falls inside the lesion;

and, in the same run on the same images, two baselines: **centre** (a Gaussian on the breast's centre
of mass) and **random** (smoothed noise in the breast; `--random-draws` maps per image, so its hit
rate is the expected one). Hit rates come with a 95 % interval from a bootstrap over women (clusters
= patient_id) and the Wilson interval (images as independent). Everything is on the prepared grid;
the breast is the prepared image's non-zero pixels (prepare sets everything outside the breast to 0).

Millimetres need the pixel spacing of the original images: `--spacing-mm S` or `--film-height-mm F`
(spacing = F / original rows, for the synthetic phantom, which has no physical scale: 240 = an 18 x 24 cm
film) when given, else the manifest's `spacing_mm` column (mammokit prepare records it).
The prepared grid's spacing follows from the crop and resize recorded in the manifest.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_localisation.py --run demo-output/runs/whole \\
        --data demo-output/prepared --split test --film-height-mm 240 --out loc.json
    PYTHONPATH=src .venv/bin/python benchmarks/bench_localisation.py --cv-root mias-cv --out loc-mias.json

`--cv-root DIR` pools the test splits of the folds of a cross-validation (`DIR/fold*/runs/whole` +
`DIR/fold*/prepared`, as benchmarks/bench_mias_cv.py writes them); each woman is in one test fold.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammokit.data.manifest import read_images, read_lesions
from mammokit.explain.report_panels import MapKind, PreparedHeatmapper, lesion_union
from mammokit.io.images import read_png16
from mammokit.metrics import bootstrap_ci
from mammokit.metrics.localisation import (
    centre_map,
    mass_inside,
    pointing_hit,
    random_map,
    wilson_interval,
)
from mammokit.utils.machine import cpu_name

DEFAULT_KINDS = (
    "gradcam",
    "gradcam++",
    "hirescam",
    "gradcam+flips",
    "hirescam+flips",
    "gradcam@trunk",
    "gradcam@top",
    "patch_malignant",
    "patch_malignant@32",
)
BASELINES = ("baseline: centre", "baseline: random")


def prepared_spacing(row: Any, orig_spacing: tuple[float, float]) -> tuple[float, float]:
    """(row, col) mm per prepared pixel: the original spacing times the crop-to-content scale."""
    content_h = int(row.out_height) - int(getattr(row, "pad_top", 0) or 0) - int(getattr(row, "pad_bottom", 0) or 0)
    content_w = int(row.out_width) - int(getattr(row, "pad_left", 0) or 0) - int(getattr(row, "pad_right", 0) or 0)
    crop_h, crop_w = int(row.crop_y1) - int(row.crop_y0), int(row.crop_x1) - int(row.crop_x0)
    return orig_spacing[0] * crop_h / content_h, orig_spacing[1] * crop_w / content_w


def original_spacing(row: Any, args: argparse.Namespace) -> tuple[float, float]:
    """mm per original pixel: --spacing-mm / --film-height-mm when given (they override), else the manifest's."""
    if args.spacing_mm:
        return (args.spacing_mm, args.spacing_mm)
    if args.film_height_mm:
        s = args.film_height_mm / int(row.orig_height)
        return (s, s)
    for column in ("spacing_mm", "pixel_spacing_mm"):
        value = getattr(row, column, None)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            values = list(np.atleast_1d(np.asarray(value, dtype=float)))
            if values and all(v > 0 for v in values):
                return (values[0], values[-1])
    raise SystemExit("no pixel spacing in the manifest: pass --spacing-mm or --film-height-mm")


def summarise(per_image: pd.DataFrame, kinds: list[str], n_boot: int, seed: int) -> list[dict[str, Any]]:
    rows = []
    groups = per_image["patient_id"].astype(str).to_numpy()
    for kind in kinds:
        hits = per_image[f"hit:{kind}"].to_numpy(dtype=float)
        mass = per_image[f"mass:{kind}"].to_numpy(dtype=float)
        boot = bootstrap_ci(lambda _y, h: float(np.mean(h)), hits, hits, groups=groups, n=n_boot, seed=seed)
        w_lo, w_hi = wilson_interval(round(float(hits.sum())), len(hits))
        rows.append(
            {
                "kind": kind,
                "n_images": len(hits),
                "n_women": len(set(groups)),
                "hit_rate": float(hits.mean()),
                "hit_ci_women": [float(boot.low), float(boot.high)],
                "hit_ci_wilson": [w_lo, w_hi],
                "mass_inside": float(np.nanmean(mass)),
                "ms_per_image": float(per_image[f"ms:{kind}"].mean()) if f"ms:{kind}" in per_image else None,
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| heatmap | pointing-game hit rate | 95% CI (women bootstrap) | 95% CI (Wilson) | mass inside lesion "
        "| ms/image |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ms = f"{r['ms_per_image']:.0f}" if r.get("ms_per_image") else "-"
        lines.append(
            f"| {r['kind']} | {r['hit_rate']:.3f} | {r['hit_ci_women'][0]:.2f}-{r['hit_ci_women'][1]:.2f} | "
            f"{r['hit_ci_wilson'][0]:.2f}-{r['hit_ci_wilson'][1]:.2f} | {r['mass_inside']:.3f} | {ms} |"
        )
    return "\n".join(lines)


def measure(
    mapper: PreparedHeatmapper, data: Path, kinds: list[MapKind], args: argparse.Namespace, rng: np.random.Generator
) -> tuple[list[dict[str, Any]], int]:
    """Per-image hits and mass fractions of every kind and both baselines on one prepared split."""
    images = read_images(data)
    lesions = read_lesions(data)
    chosen = images[(images["split"].astype(str) == args.split) & (images["label"].astype(int) == 1)]
    records, skipped = [], 0
    for row in chosen.itertuples(index=False):
        u16 = read_png16(data / row.image_file)
        lesion = lesion_union(data, lesions, str(row.image_id), u16.shape)
        breast = u16 > 0
        if lesion is None or not breast.any():
            skipped += 1  # malignant by label but no malignant lesion outline (e.g. a calcification without ROI)
            continue
        spacing = prepared_spacing(row, original_spacing(row, args))
        rec: dict[str, Any] = {"image_id": str(row.image_id), "patient_id": str(row.patient_id)}
        for kind in kinds:
            t0 = time.perf_counter()
            heat = mapper.maps(u16, [kind])[kind.name]
            rec[f"ms:{kind.name}"] = 1000.0 * (time.perf_counter() - t0)
            rec[f"hit:{kind.name}"] = float(pointing_hit(heat, lesion, breast, spacing, args.tolerance_mm))
            rec[f"mass:{kind.name}"] = mass_inside(heat, lesion, breast)
        centre = centre_map(breast)
        rec["hit:baseline: centre"] = float(pointing_hit(centre, lesion, breast, spacing, args.tolerance_mm))
        rec["mass:baseline: centre"] = mass_inside(centre, lesion, breast)
        draws = [random_map(breast, rng) for _ in range(args.random_draws)]
        rec["hit:baseline: random"] = float(
            np.mean([pointing_hit(d, lesion, breast, spacing, args.tolerance_mm) for d in draws])
        )
        rec["mass:baseline: random"] = float(np.mean([mass_inside(d, lesion, breast) for d in draws]))
        records.append(rec)
    return records, skipped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=None, help="whole-image run folder")
    p.add_argument("--cv-root", type=Path, default=None, help="pool the folds DIR/fold*/{runs/whole,prepared}")
    p.add_argument("--patch-run", type=Path, default=None, help="patch run (default: the whole run's parent_run)")
    p.add_argument("--data", type=Path, default=None, help="prepared dataset the run was trained on")
    p.add_argument("--split", default="test")
    p.add_argument("--kinds", nargs="+", default=list(DEFAULT_KINDS), help="heatmap kinds (MapKind names)")
    p.add_argument("--tolerance-mm", type=float, default=5.0)
    p.add_argument("--spacing-mm", type=float, default=None, help="original pixel spacing (mm) if not in the manifest")
    p.add_argument("--film-height-mm", type=float, default=None, help="phantom: spacing = this / original rows")
    p.add_argument("--random-draws", type=int, default=20, help="random maps per image (expected hit rate)")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="write the results here (JSON; a .md table beside it)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    kinds = [MapKind.parse(k) for k in args.kinds]
    if args.cv_root:
        pairs = [(f / "runs" / "whole", f / "prepared") for f in sorted(args.cv_root.glob("fold*"))]
        pairs = [(r, d) for r, d in pairs if (r / "model.json").is_file() and (d / "manifest.parquet").is_file()]
    elif args.run and args.data:
        pairs = [(args.run, args.data)]
    else:
        raise SystemExit("give --run and --data, or --cv-root")
    rng = np.random.default_rng(args.seed)
    records, skipped, layers = [], 0, set()
    for run, data in pairs:
        mapper = PreparedHeatmapper(run, args.patch_run if len(pairs) == 1 else None, args.device)
        layers.add(mapper.layer_name("auto"))
        done, missed = measure(mapper, data, kinds, args, rng)
        records += done
        skipped += missed
        print(f"{run}: {len(done)} image(s) measured", flush=True)
    if not records:
        raise SystemExit(f"no malignant image with a lesion mask in split {args.split!r}")
    per_image = pd.DataFrame(records)
    names = [k.name for k in kinds] + list(BASELINES)
    rows = summarise(per_image, names, args.bootstrap, args.seed)
    result = {
        "runs": [str(r) for r, _ in pairs],
        "data": [str(d) for _, d in pairs],
        "split": args.split,
        "tolerance_mm": args.tolerance_mm,
        "n_images": len(per_image),
        "n_skipped_without_mask": skipped,
        "cam_layer_auto": sorted(layers),
        "cpu": f"{cpu_name()} ({sys.platform}; shared machine, timings are indicative)",
        "results": rows,
    }
    table = markdown(rows)
    print(json.dumps({k: v for k, v in result.items() if k != "results"}, indent=1))
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        args.out.with_suffix(".md").write_text(table + "\n")
        per_image.to_csv(args.out.with_suffix(".csv"), index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
