"""`mammokit patches`: sample lesion and background patches (S1, S10, Sn) from a prepared dataset.

Examples:
  mammokit patches --data prepared --out patches-s10 --scheme s10 --classes 5
  mammokit patches --data prepared --out patches-s1 --scheme s1 --classes 3 --seed 1
  mammokit patches --data prepared --out p --scheme s30 --set n_background=10 --min-overlap 0.75

Writes PATCHES/patches.parquet (one row per patch), PATCHES/images/<patch_id>.png (uint16 crops),
PATCHES/patches.json (scheme, classes in index order, counts per split x class, source PreprocessSpec),
config.yaml (the resolved settings) and errors.csv (images skipped, with the reason). See docs/patches.md.
"""

from __future__ import annotations

import argparse
import logging

from mammokit.cli.common import (
    UserError,
    add_command,
    add_config_args,
    add_data,
    add_out,
    add_seed,
    add_workers,
    load_cli_config,
)

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "patches",
        help="sample lesion/background patch sets (S1, S10, Sn) for the patch classifier",
        description=__doc__,
    )
    add_data(p)
    add_out(p, help="patch-set folder to create (must not exist, or be empty)")
    p.add_argument(
        "--scheme",
        metavar="sN",
        help="s1: one patch centred on each lesion + 1 background patch per image; s10: 10 patches per lesion "
        "with overlap >= --min-overlap + 10 background per image; sN likewise (default s10)",
    )
    p.add_argument("--classes", type=int, choices=(5, 3), help="5: background, calc/mass x benign/malignant; "
                   "3: background, benign, malignant (default 5)")  # fmt: skip
    p.add_argument(
        "--patch-size",
        type=int,
        metavar="PX",
        help="patch side in pixels (wins over --patch-mm; default: from --patch-mm in physical-scale mode, "
        "else 224 scaled to the prepared height, round(224 * H / 1152))",
    )
    p.add_argument(
        "--patch-mm",
        type=float,
        metavar="MM",
        help="patch side in millimetres, so S1/S10/Sn cut the same tissue at any resolution (default: the "
        "paper's 44.8 mm = 224 px at 0.2 mm, for a set prepared with --pixel-spacing)",
    )
    p.add_argument(
        "--min-overlap",
        type=float,
        metavar="F",
        help="lesion patches need max(lesion pixels inside / lesion area, lesion pixels inside / patch area) "
        ">= F (default 0.9, the paper's value)",
    )
    p.add_argument(
        "--background-fraction",
        type=float,
        metavar="F",
        help="background patches need at least this fraction of breast-tissue pixels (default 0.5)",
    )
    p.add_argument("--n-per-lesion", type=int, metavar="N", help="override the scheme's patches per lesion")
    p.add_argument("--n-background", type=int, metavar="N", help="override the scheme's background patches per image")
    p.add_argument(
        "--hard-negatives",
        metavar="RUN",
        help="a `train patch` run (same prepared images and patch size) whose highest-scoring lesion-free windows "
        "become part of the background patches (hard negatives; docs/patches.md)",
    )
    p.add_argument(
        "--hard-negative-fraction",
        type=float,
        metavar="F",
        help="share of each image's background patches chosen by --hard-negatives (default 0.5)",
    )
    add_seed(p)
    add_workers(p)
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mammokit.data.patches import PatchConfig, PatchSamplingError, sample_patches
    from mammokit.utils.diskfull import disk_full_as

    flags = {
        "scheme": args.scheme,
        "classes": args.classes,
        "patch_size": args.patch_size,
        "patch_mm": args.patch_mm,
        "min_overlap": args.min_overlap,
        "background_breast_fraction": args.background_fraction,
        "n_per_lesion": args.n_per_lesion,
        "n_background": args.n_background,
        "hard_negative_run": args.hard_negatives,
        "hard_negative_fraction": args.hard_negative_fraction,
        "seed": args.seed,
        "workers": args.workers,
    }
    cfg = load_cli_config(PatchConfig, args, flags)
    # A full disk: one line and exit 2; the patch set is built in a staging folder renamed into place only
    # when complete, so nothing that looks like a patch set is left behind (the staging folder is removed).
    with disk_full_as(UserError, args.out):
        try:
            summary = sample_patches(args.data, args.out, cfg)
        except PatchSamplingError as exc:
            raise UserError(str(exc)) from None
    log.info(
        "%d patches (%s, %d px, %d classes) from %d images, %d skipped",
        summary["n_patches"],
        summary["scheme"],
        summary["patch_size"],
        len(summary["classes"]),
        summary["n_images"],
        summary["n_images_failed"],
    )
    return 1 if summary["n_images_failed"] else 0  # batch rule: exit 1 when any image was skipped (errors.csv)
