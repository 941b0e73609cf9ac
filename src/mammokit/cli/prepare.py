"""`mammokit prepare DATASET --root RAW --out PREPARED`: raw dataset -> prepared folder of canonical 16-bit PNGs.

Reads every image through the dataset's adapter, segments and crops the breast, puts it in canonical
orientation (chest wall left), resizes it (default 1152 x 896) and writes images, lesion masks, the
manifest, `errors.csv` and `dataset.json`; see `mammokit.data.prepare`. Re-running resumes. The exit
status is 0 when every image and lesion was prepared, 1 when any failed (listed in errors.csv), 2 for
usage errors and for a full disk (one line: the folder, the space available and about how much more is needed;
the folder is then not marked complete, and the same command resumes once there is space).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mammokit.cli.common import (
    UserError,
    add_assume_pixel_spacing,
    add_command,
    add_config_args,
    add_out,
    add_seed,
    add_workers,
    load_cli_config,
    spacing_mm,
)

if TYPE_CHECKING:
    from mammokit.data.prepare_config import PrepareConfig

CONFIG_FILE = "config.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "prepare",
        help="raw dataset -> prepared folder (cropped, oriented, resized 16-bit PNGs + manifest)",
        description=(
            "Read a raw dataset through its adapter and write a prepared folder: images/<image_id>.png "
            "(uint16, canonical orientation: chest wall on the left), masks/<lesion_id>.png, manifest.parquet, "
            "lesions.parquet, errors.csv and dataset.json. Bad files are listed in errors.csv and do not stop "
            "the run; re-running the same command resumes and skips finished images. Exit status: 0 all "
            "prepared, 1 some images or lesions failed, 2 usage error or disk full (rerun to resume)."
        ),
    )
    p.add_argument(
        "dataset",
        metavar="DATASET",
        help="dataset adapter: cbis-ddsm, inbreast, mini-mias, vindr-mammo, cmmd, rsna or csv",
    )
    p.add_argument("--root", type=Path, required=True, metavar="RAW", help="folder holding the raw dataset")
    add_out(p, help="prepared dataset folder to write (created; an existing one is resumed)")
    p.add_argument(
        "--height",
        type=int,
        default=None,
        metavar="H",
        help="output rows (default 1152; with --pixel-spacing: 230.4 mm worth, e.g. 384 at 0.6 mm)",
    )
    p.add_argument(
        "--width",
        type=int,
        default=None,
        metavar="W",
        help="output columns (default 896; with --pixel-spacing: 179.2 mm worth, e.g. 299 at 0.6 mm)",
    )
    p.add_argument(
        "--pixel-spacing",
        type=spacing_mm,
        default=None,
        metavar="MM",
        help="physical-scale mode: resample every breast to MM per pixel (e.g. 0.2, the paper's scale) on an "
        "H x W canvas, aspect kept, chest wall left; a breast larger than the canvas is shrunk to fit (recorded as "
        "fit_scale), never refused; default: fixed-size mode (stretch to H x W)",
    )
    add_assume_pixel_spacing(p)
    add_workers(p)
    add_seed(p)
    add_config_args(p)
    p.add_argument(
        "--split-file",
        default=None,
        metavar="CSV",
        help="apply a published patient split exactly (CSV with columns patient_id,split); "
        "the split used is always written to PREPARED/splits.csv",
    )
    p.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace) -> PrepareConfig:
    """Defaults < YAML files (-c) < --set overrides < explicit flags."""
    from mammokit.data.prepare_config import PrepareConfig
    from mammokit.preprocess import PreprocessSpec, canvas_px

    flags = {
        "preprocess": {"height": args.height, "width": args.width, "pixel_spacing": args.pixel_spacing},
        "split": {"seed": args.seed, "split_file": args.split_file},
        "workers": args.workers,
        "assume_pixel_spacing": args.assume_pixel_spacing,
    }
    cfg = load_cli_config(PrepareConfig, args, flags)
    spec = cfg.preprocess
    default = PreprocessSpec()
    if (
        spec.pixel_spacing is not None
        and args.height is None
        and args.width is None
        and (spec.height, spec.width) == (default.height, default.width)
    ):
        # physical scale without a canvas size: the default canvas in mm (DEFAULT_CANVAS_MM), not 1152 x 896 px
        # at whatever spacing (at 0.6 mm that would be a 691 x 538 mm canvas of zeros)
        spec.height, spec.width = canvas_px(spec.pixel_spacing)
    return cfg


def run(args: argparse.Namespace) -> int:
    from mammokit.config import dump_yaml
    from mammokit.data.prepare import PrepareError, prepare_dataset
    from mammokit.data.sources import get_source, list_sources
    from mammokit.utils.atomic import atomic_write_text
    from mammokit.utils.diskfull import disk_full_as

    cfg = resolve_config(args)
    try:
        get_source(args.dataset, **cfg.source_options)
    except KeyError:
        raise UserError(f"unknown dataset {args.dataset!r}; choose one of {', '.join(list_sources())}") from None
    except (TypeError, ValueError) as exc:  # adapters reject unknown or bad options
        raise UserError(f"source_options do not fit the {args.dataset} adapter: {exc}") from None
    if not args.root.is_dir():
        raise UserError(f"--root {args.root} is not a folder; point it at the raw {args.dataset} download")
    with disk_full_as(UserError, args.out):  # ENOSPC/EDQUOT: one line, exit 2, never a traceback
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / CONFIG_FILE, dump_yaml(cfg))
        try:
            report = prepare_dataset(
                args.dataset, args.root, args.out, cfg, progress=not args.no_progress and sys.stderr.isatty()
            )
        except PrepareError as exc:
            raise UserError(str(exc)) from None
    print(report.summary())
    return 0 if report.ok else 1
